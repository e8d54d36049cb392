"""``python -m rirn.predict``: segment new cases with one checkpoint, or with a bundle of students.

Examples::

    python -m rirn.predict checkpoint=outputs/t1ce/RUN/checkpoints/best.pt \\
        input=/data/new_cases output=/data/masks [naming=brats] [model=teacher]
    python -m rirn.predict bundle=/models/rirn-bundle input=/data/clinic output=/data/masks \\
        [save_probabilities=true]

``model=student|teacher`` is the documented spelling; the config key is ``network`` because
``model`` is also a Hydra config group in ``configs/`` (the architecture), which Hydra would
try to load. :func:`cli` renames the argument before Hydra parses the command line, so both
``model=teacher`` and ``network=teacher`` work.

``input`` is one case folder (it holds NIfTI files) or a folder of case folders (any BraTS
layout, ``HGG/``/``LGG/`` too); segmentation files in them are ignored. Exactly one of:

* ``checkpoint=``: every case needs the checkpoint's modalities (all four for the teacher);
  other files are ignored. A case lacking one is reported before any prediction starts, e.g.
  ``case X: needs t1ce (X_t1ce.nii.gz or X-t1c.nii.gz), found only: t1, t2``.
* ``bundle=`` (written by ``python -m rirn.export``, :mod:`rirn.bundle`): refused with one line
  when a weights file does not match its checksum in ``manifest.json``. Each case is segmented
  by the student of the modalities it has (:mod:`rirn.evaluation.bundle_predict`: present,
  readable, not all zeros; else the largest available sub-subset) and gets a row in
  ``<output>/predictions.csv``; a case that nothing can segment or whose files are bad fails
  alone, and the command then exits with status 1. ``model=teacher`` uses the bundle's teacher
  (``python -m rirn.export teacher=true``) for the cases with all four modalities.

Preprocessing is the training one (:func:`rirn.data.io.preprocess_case`): z-score per modality
over the brain voxels, crop to the brain box. The brain mask ("any modality non-zero") is taken
from the modalities read (the checkpoint's; with a bundle all usable ones of the case), so it
can differ slightly from training, where all four defined it; BraTS volumes are skull-stripped
with one mask, so in practice it is the same. Prediction is the Gaussian sliding window with
the training crop (``inference.*`` as in ``python -m rirn.evaluate``), pasted back into the
full volume (:mod:`rirn.inference`).

Output (:mod:`rirn.evaluation.predict_files`): ``<output>/<case>_pred.nii.gz``
(``naming=brats``: ``<case>.nii.gz``, the challenge's submission name), ``uint8``, with the
affine, header and shape of the model's first input file; ``save_probabilities=true`` adds
``<case>_prob.nii.gz``. Labels follow the input's release: the model's label scheme (0/1/2/4
for a model trained on BraTS 2018-2021), except that input files named the BraTS 2023 way
(``t1n``/``t1c``/``t2w``/``t2f``) get the 2023 labels 0/1/2/3. An unlabelled case has no label
values to inspect, and the 2023 names are the only naming unique to one scheme (2018-2021
names are shared by many re-packagings), so naming decides only in that direction;
``scheme=brats|brats2023`` forces it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from rirn.bundle import open_bundle
from rirn.config import CONFIG_DIR
from rirn.data.modalities import MODALITIES
from rirn.errors import CasesFailed, ConfigError, cli_errors
from rirn.evaluation.bundle_predict import CSV_NAME, predict_folders
from rirn.evaluation.predict_files import NAMINGS, case_folders, find_case, segment_case
from rirn.evaluation.runs import open_checkpoint
from rirn.evaluation.settings import amp_dtype, inference_settings, resolve_device
from rirn.inference import InferenceSettings
from rirn.labels import SCHEMES

MODELS: tuple[str, ...] = ("student", "teacher")
_USAGE = "python -m rirn.predict checkpoint=PATH|bundle=DIR input=DIR output=DIR"


def _given(cfg: DictConfig, key: str) -> bool:
    return not OmegaConf.is_missing(cfg, key) and cfg[key] not in (None, "")


def _check(cfg: DictConfig) -> None:
    sources = [k for k in ("checkpoint", "bundle") if _given(cfg, k)]
    if len(sources) != 1:
        given = f" (got {' and '.join(sources)})" if sources else ""
        raise ConfigError(f"exactly one of checkpoint or bundle is required{given}: {_USAGE}")
    for key in ("input", "output"):
        if not _given(cfg, key):
            raise ConfigError(f"{key} is required: {_USAGE}")
    for key, valid in (("network", MODELS), ("naming", NAMINGS), ("scheme", ("auto", *SCHEMES))):
        if str(cfg[key]) not in valid:
            raise ConfigError(f"{key}={cfg[key]!r} is not one of {', '.join(valid)}")


def _settings(
    cfg: DictConfig, crop: Sequence[int], model_cfg, device: torch.device
) -> InferenceSettings:
    return inference_settings(
        cfg.inference,
        cfg.postprocess.et_min_voxels,
        crop,
        model_cfg,
        amp_dtype(device, bool(cfg.amp)),
        nested=cfg.postprocess.nested,
    )


def _run_checkpoint(cfg: DictConfig) -> list[Path]:
    ckpt_path = Path(str(cfg.checkpoint)).expanduser()
    if not ckpt_path.is_file():
        raise ConfigError(f"checkpoint={ckpt_path} does not exist or is not a file")
    ckpt = open_checkpoint(ckpt_path)
    subset = ckpt.modalities if cfg.network == "student" else MODALITIES
    cases = [find_case(folder, subset) for folder in case_folders(cfg.input)]  # fail fast
    device = resolve_device(cfg.device)
    settings = _settings(cfg, ckpt.crop_size, ckpt.config["model"], device)
    net = ckpt.network(str(cfg.network), device)
    out_dir = Path(str(cfg.output)).expanduser()
    written = []
    bar = tqdm(cases, desc="predict", unit="case", disable=None if cfg.progress else True)
    for case in bar:
        out = segment_case(
            case,
            subset,
            net,
            settings,
            ckpt.scheme,
            out_dir,
            str(cfg.naming),
            str(cfg.scheme),
            bool(cfg.save_probabilities),
        )
        written.append(out.mask)
    print(f"{len(written)} mask(s) written to {out_dir}", flush=True)
    return written


def _run_bundle(cfg: DictConfig) -> list[Path]:
    bundle = open_bundle(str(cfg.bundle))  # checksums first: a bad bundle runs nothing
    if cfg.network == "teacher":
        if bundle.teacher is None:
            raise ConfigError(
                f"model=teacher but bundle {bundle.path} has no teacher "
                "(python -m rirn.export ... teacher=true stores it)"
            )
        models = {MODALITIES: bundle.teacher}
    else:
        models = bundle.students
    folders = case_folders(cfg.input)
    device = resolve_device(cfg.device)
    settings = {s: _settings(cfg, m.crop_size, m.entry["model"], device) for s, m in models.items()}
    out_dir = Path(str(cfg.output)).expanduser()
    results = predict_folders(
        folders,
        models,
        settings,
        out_dir,
        device,
        str(cfg.naming),
        str(cfg.scheme),
        bool(cfg.save_probabilities),
    )
    written = [r.mask for r in results if r.mask is not None]
    print(
        f"{len(written)} mask(s) written to {out_dir}, one row per case in {CSV_NAME}", flush=True
    )
    failed = [r.case for r in results if r.mask is None]
    if failed:
        raise CasesFailed(
            f"{len(failed)} of {len(results)} case(s) failed ({', '.join(failed)}); "
            f"see {out_dir / CSV_NAME}"
        )
    return written


def run(cfg: DictConfig) -> list[Path]:
    """Predict every case of ``cfg.input`` into ``cfg.output``; returns the written masks.

    Raises:
        ConfigError, DataError: bad options, checkpoint, bundle or (``checkpoint=``) a case.
        CasesFailed: (``bundle=``) some cases failed; the others and ``predictions.csv`` are
            written.
    """
    _check(cfg)
    return _run_bundle(cfg) if _given(cfg, "bundle") else _run_checkpoint(cfg)


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
