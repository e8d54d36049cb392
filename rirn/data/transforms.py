"""Array transforms: z-score, brain bounding box, crops with zero padding, flips, paste-back.

Pure functions on numpy arrays. Spatial axes are always the *last three* axes, so the same
function serves an image ``(C, X, Y, Z)``, a region-bit map ``(X, Y, Z)`` or masks
``(3, X, Y, Z)``. A box is a list of three ``(lo, hi)`` pairs, ``hi`` exclusive.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = list[tuple[int, int]]


def brain_mask(image: np.ndarray) -> np.ndarray:
    """Brain mask ``(*S)`` bool: voxels where any modality of ``image (C, *S)`` is non-zero."""
    return np.any(np.asarray(image) != 0, axis=0)


def bounding_box(mask: np.ndarray) -> Box:
    """Tight box ``[(lo, hi)] * ndim`` (``hi`` exclusive) around the true voxels of ``mask``.

    Raises:
        ValueError: the mask is empty.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("bounding box of an empty mask")
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return box


def crop_to_box(array: np.ndarray, box: Sequence[Sequence[int]]) -> np.ndarray:
    """View of ``array (..., *S)`` inside ``box`` (no copy)."""
    return array[(..., *(slice(lo, hi) for lo, hi in box))]


def zscore(image: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Z-score each channel of ``image (C, *S)`` over the ``mask`` voxels; 0 outside the mask.

    Args:
        image: any real dtype.
        mask: ``(*S)`` bool; default :func:`brain_mask` (any modality non-zero).

    Returns:
        float32 ``(C, *S)``: inside the mask each channel has mean 0 and (population) std 1; a
        channel that is constant inside the mask becomes 0 there. Statistics are computed in
        float64 because sums over ~10^6 int16 voxels lose precision in float32.
    """
    image = np.asarray(image)
    mask = brain_mask(image) if mask is None else np.asarray(mask, dtype=bool)
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(image.shape[0]):
        values = image[c][mask].astype(np.float64)
        std = values.std()
        out[c][mask] = (values - values.mean()) / (std if std > 0 else 1.0)
    return out


def _overlap(start: Sequence[int], size: Sequence[int], shape: Sequence[int]):
    """Slices of the overlap of window ``[start, start+size)`` with ``[0, shape)``.

    Returns ``(volume_slices, window_slices)``.
    """
    vol, win = [], []
    for s, n, dim in zip(start, size, shape, strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        hi = max(hi, lo)
        vol.append(slice(lo, hi))
        win.append(slice(lo - s, hi - s))
    return tuple(vol), tuple(win)


def _full(array, shape: tuple[int, ...], fill):
    # torch tensors are accepted too (paste-back of predictions) without importing torch here.
    if hasattr(array, "new_full"):
        return array.new_full(shape, fill)
    return np.full(shape, fill, dtype=array.dtype)


def crop_pad(
    array, start: Sequence[int], size: Sequence[int], fill=0, flip_axes: Sequence[int] = ()
):
    """Window of ``array (..., *S)`` at ``start`` of ``size``; zeros (``fill``) outside ``S``.

    ``start`` may be negative or the window may extend past ``S`` (the volume is smaller than
    the crop): those voxels are ``fill``. Only the overlapping slice of ``array`` is read, so
    on a memory map this touches the crop, not the whole volume.

    Args:
        flip_axes: spatial axes (0=X, 1=Y, 2=Z) along which the window is also flipped, i.e.
            ``flip(crop_pad(a, s, n), axes)`` in one copy instead of two (numpy only).

    Returns:
        A new contiguous array (or tensor) ``(..., *size)`` of ``array``'s dtype.
    """
    spatial = tuple(array.shape[-3:])
    out = _full(array, (*array.shape[:-3], *size), fill)
    # Writing into a flipped view of ``out`` leaves ``out`` itself flipped and contiguous.
    view = np.flip(out, axis=tuple(a - 3 for a in flip_axes)) if flip_axes else out
    vol, win = _overlap(start, size, spatial)
    view[(..., *win)] = array[(..., *vol)]
    return out


def paste_pad(array, start: Sequence[int], shape: Sequence[int], fill=0):
    """Inverse of :func:`crop_pad`: put ``array (..., *W)`` at ``start`` in a ``fill`` volume.

    Returns ``(..., *shape)``; parts of ``array`` falling outside ``shape`` are dropped.
    """
    window = tuple(array.shape[-3:])
    out = _full(array, (*array.shape[:-3], *shape), fill)
    vol, win = _overlap(start, window, shape)
    out[(..., *vol)] = array[(..., *win)]
    return out


def random_crop_start(
    shape: Sequence[int], size: Sequence[int], rng: np.random.Generator
) -> tuple[int, ...]:
    """Uniform random window start per axis.

    Where ``shape >= size`` the window lies inside the volume; where the volume is smaller the
    start is negative and the volume lands at a random place inside the (zero padded) window.
    """
    return tuple(
        int(rng.integers(min(0, d - n), max(0, d - n) + 1))
        for d, n in zip(shape, size, strict=True)
    )


def centred_crop_start(
    shape: Sequence[int], size: Sequence[int], centre: Sequence[int]
) -> tuple[int, ...]:
    """Start of the window of ``size`` centred on voxel ``centre``, shifted (per axis) to lie
    inside the volume where the volume is large enough, into the same range of starts as
    :func:`random_crop_start` otherwise. The centre voxel is inside the window in both cases.
    """
    return tuple(
        int(min(max(c - n // 2, min(0, d - n)), max(0, d - n)))
        for d, n, c in zip(shape, size, centre, strict=True)
    )


def center_crop_start(shape: Sequence[int], size: Sequence[int]) -> tuple[int, ...]:
    """Start of the centred window (negative where the volume is smaller: centred padding).

    Odd differences round towards the volume's start on both sides (crop: ``(d - n) // 2``;
    pad: ``-((n - d) // 2)``), the same placement as ``rirn.inference.center_crop_inference``,
    so a centre-cropped dataset item and a centre-crop prediction line up voxel for voxel.
    """
    return tuple(
        (d - n) // 2 if d >= n else -((n - d) // 2) for d, n in zip(shape, size, strict=True)
    )


def random_flip_axes(rng: np.random.Generator, prob: float = 0.5, ndim: int = 3) -> tuple[int, ...]:
    """Spatial axes (0..ndim-1) to flip, each independently with probability ``prob``."""
    draws = rng.random(ndim)
    return tuple(a for a in range(ndim) if draws[a] < prob)


def flip(array: np.ndarray, axes: Sequence[int]) -> np.ndarray:
    """Flip ``array (..., X, Y, Z)`` along spatial ``axes`` (0=X, 1=Y, 2=Z); contiguous copy."""
    if not axes:
        return np.ascontiguousarray(array)
    return np.ascontiguousarray(np.flip(array, axis=tuple(a - 3 for a in axes)))


def uncrop_to_original(array, meta: dict, fill=0):
    """Paste a bbox-space array back into the original volume.

    Args:
        array: ``(..., *B)`` numpy array or torch tensor, in the brain-bounding-box space of a
            case (as :class:`~rirn.data.dataset.EvalDataset` returns it), e.g. ``(C, *B)``
            probabilities or a ``(*B)`` label map. If the evaluation data were also centre
            cropped, ``meta["crop_start"]`` (relative to the box) says where the crop lies.
        meta: the case's meta dict (``"bbox"``, ``"shape"``, optional ``"crop_start"``).
        fill: value outside the box (0: background).

    Returns:
        ``(..., *meta["shape"])``, aligned voxel-for-voxel with the original NIfTI files.
    """
    offset = meta.get("crop_start", (0, 0, 0))
    start = [int(lo) + int(o) for (lo, _), o in zip(meta["bbox"], offset, strict=True)]
    return paste_pad(array, start, [int(s) for s in meta["shape"]], fill)
