"""Synthetic BraTS-like dataset: the built-in default data, so that every command runs without a
BraTS download (docs/data.md).

Each case is a skull-stripped brain with a glioma, written in the BraTS 2020 layout::

    <out_dir>/Synth_000/Synth_000_{flair,t1,t1ce,t2,seg}.nii.gz
    <out_dir>/synthetic.json        # written last: parameters and case list of a complete set

Images are ``int16 (X, Y, Z)`` (default 240x240x155), 1 mm voxels with the affine BraTS ships;
the segmentation is ``uint8`` with labels 0 (background), 1 (necrosis, or non-enhancing tumour
in low-grade-like cases), 2 (oedema), 4 (enhancing tumour). The four modalities carry
different information as in real MRI (only T1ce shows the enhancing rim, FLAIR and T2 outline
the whole tumour), so a single-modality student really lacks something the teacher sees.

A case depends only on ``(seed, index)`` (and the shape): the same arguments give
byte-identical arrays, and generating ``N + 1`` cases reproduces the first ``N``.

Command line (Hydra, ``configs/synthetic.yaml``)::

    python -m rirn.data.synthetic out_dir=DIR num_cases=N shape=[96,96,64] seed=S
"""

from __future__ import annotations

import gzip
import json
import operator
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import nibabel as nib
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from rirn.config import CONFIG_DIR
from rirn.data.modalities import MODALITIES
from rirn.data.synthetic_anatomy import (
    Lesion,
    draw_brain,
    draw_lesion,
    plan_lesions,
    tumour_labels,
)
from rirn.data.synthetic_mri import render_mri
from rirn.errors import ConfigError, DataError, cli_errors

#: Bumped whenever the generator's output changes, so stale datasets are regenerated.
GENERATOR_VERSION = 1
DEFAULT_SHAPE: tuple[int, int, int] = (240, 240, 155)
#: Smallest side length that still fits a brain with a tumour.
MIN_SIZE = 16
CASE_PREFIX = "Synth_"
MARKER = "synthetic.json"
#: Parameters of a run in progress (written first, removed once ``MARKER`` exists), so that an
#: interrupted run can be resumed without regenerating its finished cases.
PENDING = ".synthetic.pending.json"
FILE_KINDS: tuple[str, ...] = (*MODALITIES, "seg")

_CASE_RE = re.compile(rf"^{CASE_PREFIX}\d+$")


@dataclass
class SyntheticCase:
    """One generated case with its ground truth.

    Attributes:
        images: modality -> ``int16 (X, Y, Z)``, in ``MODALITIES`` order.
        seg: ``uint8 (X, Y, Z)`` BraTS 2018-2021 labels (0, 1, 2, 4).
        tissue: ``uint8 (X, Y, Z)`` :class:`~rirn.data.synthetic_anatomy.Tissue` map (anatomy
            and tumour classes), the ground truth behind the intensities.
        lesions: the drawn lesions (centre, size, grade).
    """

    images: dict[str, np.ndarray]
    seg: np.ndarray
    tissue: np.ndarray
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def low_grade(self) -> bool:
        """True for a low-grade-like case (no enhancing tumour, no necrosis)."""
        return bool(self.lesions) and self.lesions[0].low_grade


def case_id(index: int) -> str:
    """Case identifier of the ``index``-th case: ``Synth_000``, ``Synth_001``, ..."""
    return f"{CASE_PREFIX}{index:03d}"


def case_affine(shape) -> np.ndarray:
    """The voxel-to-world affine BraTS 2020 ships (1 mm, x and y flipped), for ``shape``."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = float(shape[1] - 1)
    return affine


def check_shape(shape) -> tuple[int, int, int]:
    """Validate a volume shape: 3 integers >= :data:`MIN_SIZE` (raises ``ConfigError``)."""
    try:
        values = tuple(operator.index(s) for s in shape if not isinstance(s, bool))
        ok = len(values) == len(shape) == 3 and min(values) >= MIN_SIZE
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"shape must be 3 integers >= {MIN_SIZE}, e.g. [96,96,64]; got {shape!r}")
    return values


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def simulate_case(index: int, shape=DEFAULT_SHAPE, seed: int = 0) -> SyntheticCase:
    """Generate case ``index`` of the dataset with seed ``seed``, with its tissue ground truth.

    Args:
        index: case number (>= 0).
        shape: volume shape ``(X, Y, Z)``, each side >= :data:`MIN_SIZE`.
        seed: dataset seed (>= 0).

    Returns:
        A :class:`SyntheticCase`. The random stream is seeded with ``(seed, index)`` only.
    """
    shape = check_shape(shape)
    index = _check_int("index", index, 0)
    seed = _check_int("seed", seed, 0)
    # Independent streams for anatomy, tumour and MRI: the grade (first draw of the tumour
    # stream) does not depend on the shape, and cases of different shapes stay alike.
    streams = np.random.SeedSequence([seed, index]).spawn(3)
    anatomy_rng, tumour_rng, mri_rng = (np.random.default_rng(s) for s in streams)
    tissue = draw_brain(anatomy_rng, shape)
    lesions = plan_lesions(tumour_rng, tissue)
    for lesion in lesions:
        draw_lesion(tumour_rng, tissue, lesion)
    seg = tumour_labels(tissue)
    images = render_mri(mri_rng, tissue)
    return SyntheticCase(images=images, seg=seg, tissue=tissue, lesions=lesions)


def generate_case(
    index: int, shape=DEFAULT_SHAPE, seed: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Images and segmentation of case ``index`` (see :func:`simulate_case`).

    Returns:
        ``(images, seg)``: modality -> ``int16 (X, Y, Z)`` and ``uint8 (X, Y, Z)`` labels.
    """
    case = simulate_case(index, shape, seed)
    return case.images, case.seg


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 bytes; a fixed gzip timestamp makes equal arrays give equal files."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def write_case(out_dir: str | Path, index: int, shape=DEFAULT_SHAPE, seed: int = 0) -> Path:
    """Generate case ``index`` and write it to ``out_dir/<case_id>/`` atomically.

    The files are written into a hidden temporary directory that is renamed into place, so an
    interrupted run never leaves a half-written case; an existing case directory is replaced.

    Returns:
        The case directory.
    """
    out_dir = Path(out_dir)
    cid = case_id(index)
    images, seg = generate_case(index, shape, seed)
    affine = case_affine(seg.shape)
    tmp = out_dir / f".tmp-{cid}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        for kind in FILE_KINDS:
            array = seg if kind == "seg" else images[kind]
            (tmp / f"{cid}_{kind}.nii.gz").write_bytes(_nifti_bytes(array, affine))
        final = out_dir / cid
        if final.exists():
            old = out_dir / f".old-{cid}-{secrets.token_hex(4)}"
            final.rename(old)
            shutil.rmtree(old)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def case_complete(out_dir: str | Path, index: int) -> bool:
    """True when all five files of case ``index`` exist under ``out_dir``."""
    cid = case_id(index)
    return all((Path(out_dir) / cid / f"{cid}_{kind}.nii.gz").is_file() for kind in FILE_KINDS)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _same_source(params: dict | None, other: dict) -> bool:
    """True when two parameter sets generate identical cases (``num_cases`` aside)."""
    keys = ("generator", "version", "shape", "seed")
    return params is not None and all(params.get(k) == other[k] for k in keys)


def _generate(
    out_dir: str | Path, num_cases: int, shape, seed: int, progress: bool, reuse: bool
) -> Path:
    out_dir = Path(out_dir)
    shape = check_shape(shape)
    num_cases = _check_int("num_cases", num_cases, 1)
    seed = _check_int("seed", seed, 0)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"synthetic data directory {out_dir} exists and is not a directory")
    params = {
        "generator": "rirn.data.synthetic",
        "version": GENERATOR_VERSION,
        "num_cases": num_cases,
        "shape": list(shape),
        "seed": seed,
        "layout": "brats2020",
        "scheme": "brats",
        "cases": [case_id(i) for i in range(num_cases)],
    }
    marker = _read_json(out_dir / MARKER)
    known = marker if marker is not None else _read_json(out_dir / PENDING)
    reusable = reuse and _same_source(known, params)
    todo = [i for i in range(num_cases) if not (reusable and case_complete(out_dir, i))]
    if reusable and marker == params and not todo:
        return out_dir

    out_dir.mkdir(parents=True, exist_ok=True)
    # From here on the directory no longer matches its marker until the new one is written.
    (out_dir / MARKER).unlink(missing_ok=True)
    _write_json(out_dir / PENDING, params)
    # Temporary folders of an interrupted write_case.
    for pattern in (f".tmp-{CASE_PREFIX}*", f".old-{CASE_PREFIX}*"):
        for leftover in out_dir.glob(pattern):
            shutil.rmtree(leftover, ignore_errors=True)
    bar = tqdm(todo, desc="synthetic cases", unit="case", disable=True if not progress else None)
    for index in bar:
        write_case(out_dir, index, shape, seed)
    # Cases of an earlier, larger run would otherwise be picked up as part of this dataset.
    for cid in (known or {}).get("cases", []):
        if _CASE_RE.match(str(cid)) and cid not in params["cases"]:
            shutil.rmtree(out_dir / str(cid), ignore_errors=True)
    _write_json(out_dir / MARKER, params)
    (out_dir / PENDING).unlink(missing_ok=True)
    return out_dir


def generate_dataset(
    out_dir: str | Path, num_cases: int, shape=DEFAULT_SHAPE, seed: int = 0, progress: bool = True
) -> Path:
    """Generate ``num_cases`` cases into ``out_dir`` (all of them, replacing existing ones).

    Args:
        out_dir: dataset directory (created). Only ``Synth_*`` case directories and the marker
            files are touched.
        num_cases: number of cases (>= 1); IDs ``Synth_000`` ... in order.
        shape: volume shape ``(X, Y, Z)``.
        seed: dataset seed (>= 0).
        progress: show a tqdm bar (on a terminal).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    return _generate(out_dir, num_cases, shape, seed, progress, reuse=False)


def ensure_synthetic(
    out_dir: str | Path, num_cases: int, shape=DEFAULT_SHAPE, seed: int = 0, progress: bool = True
) -> Path:
    """Make sure ``out_dir`` holds the synthetic dataset with these parameters; reuse what exists.

    A complete dataset with the same parameters (``synthetic.json``) is returned untouched.
    Otherwise, cases already generated with the same seed, shape and generator version
    (recorded in ``synthetic.json`` or by an interrupted run) are kept, missing or incomplete
    ones are generated, cases beyond ``num_cases`` are removed and the marker is written last.
    Cases of other parameters are regenerated.

    Arguments and return value as in :func:`generate_dataset`.
    """
    return _generate(out_dir, num_cases, shape, seed, progress, reuse=True)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="synthetic")
@cli_errors
def main(cfg: DictConfig) -> None:
    """``python -m rirn.data.synthetic``: write (or complete) a synthetic dataset."""
    if cfg.get("out_dir") in (None, ""):
        raise ConfigError("out_dir is required, e.g. out_dir=data/synthetic")
    shape = OmegaConf.to_container(cfg.shape) if OmegaConf.is_list(cfg.shape) else cfg.shape
    make = generate_dataset if cfg.get("force", False) else ensure_synthetic
    path = make(str(cfg.out_dir), cfg.num_cases, shape, cfg.seed, progress=bool(cfg.progress))
    print(f"synthetic BraTS-like dataset ({cfg.num_cases} cases) in {path.resolve()}", flush=True)


if __name__ == "__main__":
    main()
