"""Reading and validating BraTS NIfTI files, and turning a case into rirn's arrays.

:func:`preprocess_case` is the single definition of a preprocessed case; the cache
(:mod:`rirn.data.cache`) stores exactly its output and :class:`NiftiSource` returns it on the
fly, so both sources give identical arrays.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from rirn.data.discovery import CaseFiles, discover_cases
from rirn.data.modalities import MODALITIES
from rirn.data.transforms import bounding_box, brain_mask, crop_to_box, zscore
from rirn.errors import DataError
from rirn.labels import LabelScheme, get_scheme, invalid_labels, labels_to_bits

# What nibabel and gzip raise on truncated, corrupt or non-NIfTI files.
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
)


def read_nifti(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read a 3D NIfTI file (``.nii`` / ``.nii.gz``).

    Returns:
        ``(array, image)``: the voxel array ``(X, Y, Z)`` in the file's own dtype (scaling
        applied by nibabel when the header asks for it) and the nibabel image (affine, header).
        A trailing singleton 4th axis is dropped.

    Raises:
        DataError: missing, unreadable or corrupt file; not 3D; NaN or Inf voxels.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        image = nib.load(str(path))
        array = np.asarray(image.dataobj)
    except _READ_ERRORS as exc:
        # nibabel often repeats the path in its message; say it once.
        detail = str(exc).replace(f"File {path} ", "").replace(str(path), "the file")
        raise DataError(f"{path}: unreadable or corrupt NIfTI ({detail})") from exc
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {tuple(array.shape)}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise DataError(f"{path}: {bad} NaN/Inf voxel(s)")
    return array, image


def _read_seg(path: Path, scheme: LabelScheme) -> np.ndarray:
    seg, _ = read_nifti(path)
    if np.issubdtype(seg.dtype, np.floating):
        if not np.array_equal(seg, np.round(seg)):
            raise DataError(f"{path}: segmentation has non-integer values")
    elif not np.issubdtype(seg.dtype, np.integer):
        raise DataError(f"{path}: segmentation has dtype {seg.dtype}, expected integers")
    bad = invalid_labels(seg, scheme)
    if bad:
        raise DataError(
            f"{path}: segmentation labels {bad} are outside the {scheme.name!r} label set "
            f"{list(scheme.valid_labels)} (wrong release?)"
        )
    return seg.astype(np.uint8)


def read_case(
    case: CaseFiles, scheme: str | LabelScheme
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, tuple[float, float, float]]:
    """Read and validate the raw volumes of one case.

    Args:
        case: its files (any subset of modalities).
        scheme: the release's label scheme (name or :class:`~rirn.labels.LabelScheme`).

    Returns:
        ``(image, seg, affine, spacing)``: ``image`` float32 ``(4, X, Y, Z)`` in canonical
        modality order (channels of modalities not in ``case.images`` are 0), ``seg`` uint8
        ``(X, Y, Z)`` release labels or ``None``, the first modality's 4x4 ``affine`` (float64)
        and voxel ``spacing`` in mm.

    Raises:
        DataError: see :func:`read_nifti`; also volumes of different shapes and segmentation
            labels outside the scheme.
    """
    scheme = get_scheme(scheme) if isinstance(scheme, str) else scheme
    if not case.images:
        raise DataError(f"case {case.case_id}: no modality files")
    image = None
    shapes: dict[str, tuple[int, ...]] = {}
    for modality, path in case.images.items():
        array, nii = read_nifti(path)
        shapes[modality] = tuple(array.shape)
        if image is None:
            image = np.zeros((len(MODALITIES), *array.shape), dtype=np.float32)
            affine = np.asarray(nii.affine, dtype=np.float64)
            spacing = tuple(float(z) for z in nii.header.get_zooms()[:3])
        elif shapes[modality] != image.shape[1:]:
            break
        image[MODALITIES.index(modality)] = array
    seg = None
    if case.seg is not None and len(set(shapes.values())) == 1:
        seg = _read_seg(case.seg, scheme)
        shapes["seg"] = tuple(seg.shape)
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {v}" for k, v in shapes.items())
        raise DataError(f"case {case.case_id} ({case.folder}): volumes differ in shape: {listed}")
    return image, seg, affine, spacing


def preprocess_case(
    case: CaseFiles, release: str, scheme: str
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read one case and turn it into rirn's preprocessed form (the cache format).

    The brain mask is "any modality non-zero" (together with any labelled voxel, so no tumour
    is lost to the crop); the volumes are cropped to its bounding box ``B`` and each modality
    is z-scored over the brain voxels, background 0 (:func:`~rirn.data.transforms.zscore`).

    Returns:
        ``(image, bits, meta)``: ``image`` float32 ``(4, *B)``, ``bits`` uint8 ``(*B)``
        region bits (:func:`rirn.labels.labels_to_bits`) or ``None`` without segmentation,
        ``meta`` the dict of docs/architecture.md (``case_id, release, scheme, shape, bbox,
        affine, spacing``).

    Raises:
        DataError: bad files (:func:`read_case`), or every modality is zero.
    """
    image, seg, affine, spacing = read_case(case, scheme)
    mask = brain_mask(image)
    if not mask.any():
        raise DataError(f"case {case.case_id} ({case.folder}): every modality is all zeros")
    box = bounding_box(mask if seg is None else mask | (seg > 0))
    image = zscore(crop_to_box(image, box), crop_to_box(mask, box))
    bits = None if seg is None else labels_to_bits(crop_to_box(seg, box), get_scheme(scheme))
    meta = {
        "case_id": case.case_id,
        "release": release,
        "scheme": scheme,
        "shape": [int(s) for s in mask.shape],
        "bbox": [[int(lo), int(hi)] for lo, hi in box],
        "affine": affine.tolist(),
        "spacing": list(spacing),
    }
    return image, bits, meta


class NiftiSource:
    """Cases read from the BraTS NIfTI files and preprocessed on the fly.

    Same interface and identical output as :class:`rirn.data.cache.CacheSource`, without a
    cache (slow: every :meth:`load` decompresses five ``.nii.gz`` files).

    Args:
        root: the dataset root (any layout of :mod:`rirn.data.discovery`).
        release: ``"auto"`` or a release name.
        require_seg: every case must be labelled.

    Attributes:
        case_ids: sorted case IDs. ``release``, ``scheme``: as detected.
    """

    def __init__(self, root: str | Path, release: str = "auto", require_seg: bool = True):
        self.index = discover_cases(root, release, require_seg=require_seg)
        self.release = self.index.release
        self.scheme = self.index.scheme
        self.case_ids = self.index.case_ids

    def __len__(self) -> int:
        return len(self.case_ids)

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """``(image float32 (4, *B), bits uint8 (*B) or None, meta)`` of one case."""
        return preprocess_case(self.index.case(case_id), self.release, self.scheme)
