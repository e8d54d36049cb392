"""Tiny fake BraTS datasets in every release layout, for tests (import from other test files).

Each case is a small int16 volume with a "brain" ellipsoid (non-zero, distinct random values per
modality), zeros around it so the brain box is smaller than the volume, and a tumour ball with
oedema / core / enhancing labels of the release's scheme.

Example::

    root, ids = make_dataset(tmp_path / "data", layout="brats2023", n_cases=3)
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from rirn.data.modalities import MODALITIES

#: The real BraTS 2021 case shipped beside the checkout (may be absent).
SAMPLE_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2021-sample"
SAMPLE_CASE = "BraTS2021_00006"

LAYOUTS = ("brats2018", "brats2019", "brats2020", "brats2021", "brats2023")
SHAPE = (20, 24, 16)
#: 2023+ file tokens of the canonical modalities.
NEW_NAMES = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}
#: The misnamed segmentation of BraTS20_Training_355 in some BraTS 2020 copies.
MISNAMED_SEG = "W39_1998.09.19_Segm.nii"

AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Write ``array`` (its own dtype) as NIfTI; ``.nii`` or ``.nii.gz`` from the name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def synthetic_case(
    shape: tuple[int, int, int] = SHAPE, seed: int = 0, et_label: int = 4
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Arrays of one fake case: ``({modality: int16 (*shape)}, seg uint8 (*shape))``.

    Labels: 2 oedema shell, 1 core, ``et_label`` (4, or 3 for 2023+) at the centre.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    centre = np.array(shape) / 2 - 0.5 + rng.uniform(-1, 1, 3)
    radii = np.array(shape) * 0.35
    brain = (((grid - centre) / radii) ** 2).sum(-1) <= 1
    images = {}
    for i, m in enumerate(MODALITIES):
        values = rng.integers(1, 1000 * (i + 1), size=shape).astype(np.int16)
        images[m] = np.where(brain, values, 0).astype(np.int16)
    dist = np.sqrt(((grid - centre) ** 2).sum(-1))
    r = min(shape) * 0.3
    seg = np.zeros(shape, np.uint8)
    seg[brain & (dist <= r)] = 2
    seg[brain & (dist <= r * 0.6)] = 1
    seg[brain & (dist <= r * 0.3)] = et_label
    return images, seg


def case_id_for(layout: str, i: int) -> str:
    """A realistic case ID of ``layout`` (the ``i``-th case)."""
    return {
        "brats2018": f"Brats18_TCIA01_{i:03d}_1",
        "brats2019": f"BraTS19_TCIA01_{i:03d}_1",
        "brats2020": f"BraTS20_Training_{i:03d}",
        "brats2021": f"BraTS2021_{i:05d}",
        "brats2023": f"BraTS-GLI-{i:05d}-000",
    }[layout]


def file_name(case_id: str, key: str, layout: str, ext: str = ".nii.gz") -> str:
    """File name of modality/``"seg"`` ``key`` of a case in ``layout``."""
    if layout == "brats2023":
        return f"{case_id}-{NEW_NAMES[key]}{ext}"
    return f"{case_id}_{key}{ext}"


def write_case(
    folder: str | Path,
    layout: str = "brats2021",
    images: dict[str, np.ndarray] | None = None,
    seg: np.ndarray | None = None,
    ext: str = ".nii.gz",
    seg_name: str | None = None,
    skip: tuple[str, ...] = (),
    seed: int = 0,
) -> Path:
    """Write one case folder (its name is the case ID); returns it.

    Args:
        folder: the case folder to create.
        images, seg: arrays to write (default :func:`synthetic_case` with ``seed``).
        ext: ``.nii.gz`` or ``.nii``.
        seg_name: a file name for the segmentation instead of the release's.
        skip: keys (modalities or ``"seg"``) not to write.
    """
    folder = Path(folder)
    if images is None:
        images, default_seg = synthetic_case(seed=seed, et_label=3 if layout == "brats2023" else 4)
        seg = default_seg if seg is None else seg
    for m, array in images.items():
        if m not in skip:
            write_nifti(folder / file_name(folder.name, m, layout, ext), array)
    if seg is not None and "seg" not in skip:
        write_nifti(folder / (seg_name or file_name(folder.name, "seg", layout, ext)), seg)
    return folder


def make_dataset(
    root: str | Path,
    layout: str = "brats2021",
    n_cases: int = 3,
    shape: tuple[int, int, int] = SHAPE,
    ext: str = ".nii.gz",
    quirks: bool = False,
) -> tuple[Path, list[str]]:
    """Write ``n_cases`` fake cases in ``layout`` under ``root``; returns ``(root, sorted ids)``.

    2018/2019 cases alternate between ``HGG/`` and ``LGG/`` (written in reverse ID order, so
    sorting is tested). ``quirks=True`` with ``brats2020`` gives the last case the misnamed
    ``W39_1998.09.19_Segm.nii`` segmentation and the first a ``_seg.nii`` one.
    """
    root = Path(root)
    ids = []
    for i in reversed(range(n_cases)):
        case_id = case_id_for(layout, i + 1)
        parent = root / ("HGG" if i % 2 == 0 else "LGG") if layout in LAYOUTS[:2] else root
        et = 3 if layout == "brats2023" else 4
        images, seg = synthetic_case(shape, seed=i, et_label=et)
        seg_name = None
        if quirks and layout == "brats2020" and i == n_cases - 1:
            seg_name = MISNAMED_SEG
        elif quirks and layout == "brats2020" and i == 0:
            seg_name = f"{case_id}_seg.nii"
        write_case(parent / case_id, layout, images, seg, ext=ext, seg_name=seg_name)
        ids.append(case_id)
    return root, sorted(ids)


def replicate_sample(dst: str | Path, n: int) -> Path:
    """A dataset root with ``n`` symlinked copies of the real sample case (needs it present).

    Copy ``k`` is a folder ``BraTS2021_9000k`` whose files link to the sample's files.
    """
    dst = Path(dst)
    for k in range(n):
        case_id = f"BraTS2021_{90000 + k:05d}"
        (dst / case_id).mkdir(parents=True, exist_ok=True)
        for src in sorted((SAMPLE_ROOT / SAMPLE_CASE).iterdir()):
            target = dst / case_id / src.name.replace(SAMPLE_CASE, case_id)
            if not target.exists():
                os.symlink(src, target)
    return dst
