"""``python -m rirn.predict``: segment new cases with a trained student (or teacher).

Example::

    python -m rirn.predict checkpoint=outputs/t1ce/RUN/checkpoints/best.pt \\
        input=/data/new_cases output=/data/masks [naming=brats] [model=teacher]

``model=student|teacher`` is the documented spelling; the config key is ``network`` because
``model`` is also a Hydra config group in ``configs/`` (the architecture), which Hydra would
try to load. :func:`cli` renames the argument before Hydra parses the command line, so both
``model=teacher`` and ``network=teacher`` work.

``input`` is one case folder (it holds NIfTI files) or a folder of case folders (any BraTS
layout, ``HGG/``/``LGG/`` too). Each case needs only the modalities of the checkpoint's subset
(all four for the teacher); other files, a segmentation included, are ignored. A case
lacking one is reported before any prediction starts, e.g. ``case X: needs t1ce
(X_t1ce.nii.gz or X-t1c.nii.gz), found only: t1, t2``.

Preprocessing is the training one (:func:`rirn.data.io.preprocess_case`): z-score per modality
over the brain voxels, crop to the brain box. The brain mask ("any modality non-zero") is taken
from the *available* modalities only, so it can differ slightly from training, where all four
defined it; BraTS volumes are skull-stripped with one mask, so in practice it is the same.
Prediction is the Gaussian sliding window with the training crop (``inference.*`` as in
``python -m rirn.evaluate``), pasted back into the full volume.

Output: ``<output>/<case>_pred.nii.gz`` (``naming=brats``: ``<case>.nii.gz``, the challenge's
submission name), ``uint8``, with the affine, header and shape of the case's first input file.
Labels follow the input's release: the checkpoint's label scheme (0/1/2/4 for a model trained
on BraTS 2018-2021), except that input files named the BraTS 2023 way (``t1n``/``t1c``/``t2w``/
``t2f``) get the 2023 labels 0/1/2/3. An unlabelled case has no label values to inspect, and
the 2023 names are the only naming unique to one scheme (2018-2021 names are shared by many
re-packagings), so naming decides only in that direction; ``scheme=brats|brats2023`` forces it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import sys
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rirn.config import CONFIG_DIR
from rirn.data.discovery import CaseFiles, read_case_folder
from rirn.data.io import preprocess_case
from rirn.data.modalities import MODALITIES, channel_indices
from rirn.errors import ConfigError, DataError, cli_errors
from rirn.evaluation.infer import amp_dtype, inference_settings, predict_case, resolve_device
from rirn.evaluation.runs import open_checkpoint
from rirn.labels import SCHEMES, get_scheme, regions_to_labels

NAMINGS: tuple[str, ...] = ("pred", "brats")
MODELS: tuple[str, ...] = ("student", "teacher")
#: File-name tokens of the BraTS 2023+ naming (``<case>-t1n.nii.gz``, ...).
NAMES_2023: dict[str, str] = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}


def _has_nifti(folder: Path) -> bool:
    return any(
        p.is_file() and not p.name.startswith(".") and p.name.lower().endswith((".nii", ".nii.gz"))
        for p in folder.iterdir()
    )


def case_folders(input_dir: str | Path) -> list[Path]:
    """The case folders of ``input``: itself if it holds NIfTI files, else its subfolders that
    do, looking one level deeper for folders without NIfTI files (``HGG/``, ``LGG/``).

    Raises:
        ConfigError: ``input`` is not a folder.
        DataError: no case folder found.
    """
    root = Path(input_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"input={root} does not exist or is not a folder")
    if _has_nifti(root):
        return [root]
    found = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if _has_nifti(sub):
            found.append(sub)
        else:
            found += [d for d in sorted(sub.iterdir()) if d.is_dir() and _has_nifti(d)]
    if not found:
        raise DataError(f"input={root}: no case folder with NIfTI files found")
    return found


def _available(folder: Path) -> list[str]:
    """Modalities with exactly one file in ``folder`` (asked one at a time)."""
    found = []
    for m in MODALITIES:
        try:
            read_case_folder(folder, (m,))
        except DataError:
            continue
        found.append(m)
    return found


def find_case(folder: Path, subset: tuple[str, ...]) -> CaseFiles:
    """The input files of one case for ``subset``, ignoring any segmentation.

    Raises:
        DataError: a needed modality is missing (the message names the case, the file names
            expected and the modalities found), or a modality has several files.
    """
    try:
        case = read_case_folder(folder, subset)
    except DataError as exc:
        found = _available(folder)
        missing = [m for m in subset if m not in found]
        if not missing:
            raise  # another problem (several files of a modality): its own message says it
        cid = folder.name
        needs = " and ".join(
            f"{m} ({cid}_{m}.nii.gz or {cid}-{NAMES_2023[m]}.nii.gz)" for m in missing
        )
        has = f"found only: {', '.join(found)}" if found else "found no modality file"
        raise DataError(f"case {cid} ({folder}): needs {needs}, {has}") from exc
    # The bbox must not depend on a ground truth that happens to sit in the folder.
    return dataclasses.replace(case, seg=None)


def _token(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz").removesuffix(".nii")
    return re.split(r"[_\-.\s]+", name)[-1]


def output_scheme(case: CaseFiles, checkpoint_scheme: str, option: str = "auto") -> str:
    """Label scheme of a case's prediction (see the module docstring): ``option`` if not
    ``"auto"``, ``"brats2023"`` for 2023-named input files, else ``checkpoint_scheme``."""
    if option != "auto":
        return get_scheme(option).name
    names_2023 = {_token(p) for p in case.images.values()} & set(NAMES_2023.values())
    return "brats2023" if names_2023 else checkpoint_scheme


def output_path(out_dir: Path, case_id: str, naming: str) -> Path:
    """``<out>/<case>_pred.nii.gz`` (``naming="pred"``) or ``<out>/<case>.nii.gz``."""
    return out_dir / (f"{case_id}.nii.gz" if naming == "brats" else f"{case_id}_pred.nii.gz")


def write_like(path: Path, labels: np.ndarray, reference: Path) -> Path:
    """Write ``labels`` (uint8, the reference's shape) with the reference file's affine and
    header (data type set to uint8; nibabel writes no intensity scaling for uint8 data);
    atomic (temporary file + rename)."""
    ref = nib.load(str(reference))
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    image = type(ref)(labels.astype(np.uint8), ref.affine, header)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{secrets.token_hex(4)}.{path.name}")
    try:
        nib.save(image, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _check(cfg: DictConfig) -> None:
    for key in ("checkpoint", "input", "output"):
        if OmegaConf.is_missing(cfg, key) or cfg[key] in (None, ""):
            raise ConfigError(
                f"{key} is required: python -m rirn.predict checkpoint=PATH input=DIR output=DIR"
            )
    for key, valid in (("network", MODELS), ("naming", NAMINGS), ("scheme", ("auto", *SCHEMES))):
        if str(cfg[key]) not in valid:
            raise ConfigError(f"{key}={cfg[key]!r} is not one of {', '.join(valid)}")


def run(cfg: DictConfig) -> list[Path]:
    """Predict every case of ``cfg.input`` into ``cfg.output``; returns the written files."""
    _check(cfg)
    ckpt_path = Path(str(cfg.checkpoint)).expanduser()
    if not ckpt_path.is_file():
        raise ConfigError(f"checkpoint={ckpt_path} does not exist or is not a file")
    ckpt = open_checkpoint(ckpt_path)
    subset = ckpt.modalities if cfg.network == "student" else MODALITIES
    cases = [find_case(folder, subset) for folder in case_folders(cfg.input)]  # fail fast
    device = resolve_device(cfg.device)
    settings = inference_settings(
        cfg.inference,
        cfg.postprocess.et_min_voxels,
        ckpt.crop_size,
        ckpt.config["model"],
        amp_dtype(device, bool(cfg.amp)),
    )
    net = ckpt.network(str(cfg.network), device)
    out_dir = Path(str(cfg.output)).expanduser()
    written = []
    bar = tqdm(cases, desc="predict", unit="case", disable=None if cfg.progress else True)
    for case in bar:
        scheme = output_scheme(case, ckpt.scheme, str(cfg.scheme))
        release = "brats2023" if scheme == "brats2023" else "brats2021"
        image, _, meta = preprocess_case(case, release, scheme)
        regions = predict_case(net, image[channel_indices(subset)], meta, settings)
        labels = regions_to_labels(regions, get_scheme(scheme))
        path = output_path(out_dir, case.case_id, str(cfg.naming))
        written.append(write_like(path, labels, case.images[subset[0]]))
    print(f"{len(written)} mask(s) written to {out_dir}", flush=True)
    return written


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
@cli_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


def model_alias(argv: list[str]) -> list[str]:
    """Command-line arguments with ``model=X`` renamed to ``network=X`` (see module docstring)."""
    return [f"network={a[len('model=') :]}" if a.startswith("model=") else a for a in argv]


def cli() -> None:
    """``python -m rirn.predict``: :func:`main` after :func:`model_alias`."""
    sys.argv = model_alias(sys.argv)
    main()


if __name__ == "__main__":
    cli()
