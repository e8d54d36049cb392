"""The files of ``python -m rirn.predict``: case folders in, masks and probability maps out.

:func:`segment_case` is one case from its NIfTI files to its written outputs, shared by the
single-checkpoint and the bundle modes: :func:`rirn.data.io.preprocess_case` (the brain mask and
z-score come from the files in ``case.images``), :func:`rirn.inference.predict_case` on the
model's channels, labels of the output scheme (:func:`output_scheme`), and files written
atomically with the geometry of a reference input file (:func:`write_like`).

Outputs, ``<out>`` being ``output``:

* ``<out>/<case>_pred.nii.gz`` (``naming=brats``: ``<case>.nii.gz``): ``uint8`` labels, the
  reference's affine, header and shape;
* ``<out>/<case>_prob.nii.gz`` (``save_probabilities=true``): WT, TC, ET probabilities as a 4-D
  ``(X, Y, Z, 3)`` volume. NIfTI has no float16 type, so the values are stored in 16 bits as
  ``int16`` with ``scl_slope = 1/32767`` (every NIfTI reader applies it and returns floats;
  resolution 3e-5, finer than float16's near 1); 0 outside the brain box.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from rirn.data.discovery import CaseFiles, modality_files, read_case_folder
from rirn.data.io import preprocess_case
from rirn.data.modalities import channel_indices
from rirn.errors import ConfigError, DataError
from rirn.inference import InferenceSettings, predict_case, predict_case_with_probs
from rirn.labels import get_scheme, labels_to_regions, regions_to_labels

NAMINGS: tuple[str, ...] = ("pred", "brats")
#: File-name tokens of the BraTS 2023+ naming (``<case>-t1n.nii.gz``, ...).
NAMES_2023: dict[str, str] = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w"}
#: Probabilities are stored as ``int16`` times this slope (see the module docstring).
PROB_SLOPE = 1.0 / 32767


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


def find_case(folder: Path, subset: tuple[str, ...]) -> CaseFiles:
    """The input files of one case for ``subset``, ignoring any segmentation.

    Raises:
        DataError: a needed modality is missing (the message names the case, the file names
            expected and the modalities found), or a modality has several files.
    """
    try:
        case = read_case_folder(folder, subset)
    except DataError as exc:
        found = list(modality_files(folder))  # modalities with at least one file
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


def output_scheme(case: CaseFiles, model_scheme: str, option: str = "auto") -> str:
    """Label scheme of a case's prediction (see :mod:`rirn.predict`): ``option`` if not
    ``"auto"``, ``"brats2023"`` for 2023-named input files, else ``model_scheme`` (the scheme
    of the model's training data)."""
    if option != "auto":
        return get_scheme(option).name
    names_2023 = {_token(p) for p in case.images.values()} & set(NAMES_2023.values())
    return "brats2023" if names_2023 else model_scheme


def output_path(out_dir: Path, case_id: str, naming: str) -> Path:
    """``<out>/<case>_pred.nii.gz`` (``naming="pred"``) or ``<out>/<case>.nii.gz``."""
    return out_dir / (f"{case_id}.nii.gz" if naming == "brats" else f"{case_id}_pred.nii.gz")


def probability_path(out_dir: Path, case_id: str) -> Path:
    """``<out>/<case>_prob.nii.gz``."""
    return out_dir / f"{case_id}_prob.nii.gz"


def _save_atomic(image: nib.Nifti1Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{secrets.token_hex(4)}.{path.name}")
    try:
        nib.save(image, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_like(path: Path, labels: np.ndarray, reference: Path) -> Path:
    """Write ``labels`` (uint8, the reference's shape) with the reference file's affine and
    header (data type set to uint8; nibabel writes no intensity scaling for uint8 data);
    atomic (temporary file + rename)."""
    ref = nib.load(str(reference))
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    return _save_atomic(type(ref)(labels.astype(np.uint8), ref.affine, header), path)


def write_probabilities(path: Path, probs: np.ndarray, reference: Path) -> Path:
    """Write ``probs`` ``(3, *S)`` float in ``[0, 1]`` as ``(*S, 3)`` int16 with scl_slope
    :data:`PROB_SLOPE`, the reference's affine and header otherwise; atomic."""
    ref = nib.load(str(reference))
    header = ref.header.copy()
    header.set_data_dtype(np.int16)
    stored = np.rint(np.clip(np.moveaxis(probs, 0, -1), 0.0, 1.0) / PROB_SLOPE).astype(np.int16)
    image = type(ref)(stored, ref.affine, header)
    image.header.set_slope_inter(PROB_SLOPE, 0.0)
    return _save_atomic(image, path)


def voxel_ml(reference: Path) -> float:
    """Volume of one voxel in mL, from the reference file's header (``pixdim``, mm)."""
    zooms = nib.load(str(reference)).header.get_zooms()[:3]
    return float(np.prod([float(z) for z in zooms])) / 1000.0


@dataclasses.dataclass(frozen=True)
class CaseOutput:
    """What :func:`segment_case` wrote.

    Attributes:
        mask: the label file.
        probabilities: the probability file, or ``None``.
        scheme: the label scheme of the mask.
        volumes_ml: WT, TC, ET volumes of the written labels in mL.
    """

    mask: Path
    probabilities: Path | None
    scheme: str
    volumes_ml: tuple[float, float, float]


def segment_case(
    case: CaseFiles,
    subset: tuple[str, ...],
    net: torch.nn.Module,
    settings: InferenceSettings,
    model_scheme: str,
    out_dir: Path,
    naming: str = "pred",
    scheme_option: str = "auto",
    save_probabilities: bool = False,
) -> CaseOutput:
    """Predict one case with ``net`` (input ``subset``) and write its files (module docstring).

    Args:
        case: its files; the brain mask comes from all of ``case.images`` (a superset of
            ``subset``), as :func:`rirn.data.io.preprocess_case` defines it.
        subset: the model's input modalities, canonical order; the mask and probability files
            take the geometry of ``case.images[subset[0]]``.
        net: the network in eval mode.
        settings: how to predict (:class:`rirn.inference.InferenceSettings`).
        model_scheme: label scheme of the model's training data.
        out_dir: the output folder.
        naming, scheme_option: ``naming`` and ``scheme`` of ``configs/predict.yaml``.
        save_probabilities: also write ``<case>_prob.nii.gz``.

    Raises:
        DataError: unreadable or inconsistent input files (:func:`preprocess_case`).
    """
    scheme = output_scheme(case, model_scheme, scheme_option)
    release = "brats2023" if scheme == "brats2023" else "brats2021"
    image, _, meta = preprocess_case(case, release, scheme)
    x = image[channel_indices(subset)]
    # An all-zero volume (a placeholder for a modality not acquired) normalises to zeros: the
    # network would segment without it and say nothing. A bundle skips such files itself.
    blank = [m for m, channel in zip(subset, x, strict=True) if not np.any(channel)]
    if blank:
        files = ", ".join(case.images[m].name for m in blank)
        raise DataError(
            f"case {case.case_id}: {' and '.join(blank)} is all zeros ({files}); this model "
            "needs it (a bundle picks the student of the modalities that are there)"
        )
    if save_probabilities:
        regions, probs = predict_case_with_probs(net, x, meta, settings)
    else:
        regions, probs = predict_case(net, x, meta, settings), None
    labels = regions_to_labels(regions, get_scheme(scheme))
    reference = case.images[subset[0]]
    mask = write_like(output_path(out_dir, case.case_id, naming), labels, reference)
    prob_path = None
    if probs is not None:
        prob_path = write_probabilities(probability_path(out_dir, case.case_id), probs, reference)
    counts = labels_to_regions(labels, get_scheme(scheme)).reshape(3, -1).sum(1)
    volumes = tuple(float(c) * voxel_ml(reference) for c in counts)
    return CaseOutput(mask, prob_path, scheme, volumes)  # type: ignore[arg-type]
