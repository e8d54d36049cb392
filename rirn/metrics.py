"""Segmentation metrics for one binary region: Dice, HD95, sensitivity, specificity.

All functions are pure and work on numpy arrays of any spatial rank; inputs are converted with
``np.asarray(..., dtype=bool)`` (so ``uint8`` 0/1 masks are fine). ``pred`` and ``gt`` must have
the same shape. Results are Python ``float``.

Convention: BraTS 2018-2021 challenge scoring (CaPTk-era, as nnU-Net v1 reproduces it; see
reference.md §4). A score whose denominator is zero is **1.0 when the prediction agrees with the
ground truth and 0.0 otherwise**:

===============  ==========================  ==============================================
metric           formula                     zero denominator
===============  ==========================  ==============================================
Dice             2 TP / (2 TP + FP + FN)     both empty -> 1 (and one empty -> 0 follows)
sensitivity      TP / (TP + FN)              GT empty -> 1 if pred empty, else 0
specificity      TN / (TN + FP)              GT covers every voxel -> 1 if pred does, else 0
HD95             see :func:`hd95`            both empty -> 0; exactly one empty ->
                                             :data:`HD95_EMPTY` (373.13)
===============  ==========================  ==============================================

Specificity counts every voxel of the array it is given, background outside the brain included,
so it depends on the field of view: compute it on the full 240x240x155 volume to be comparable
with BraTS numbers.

HD95 matches MONAI's ``HausdorffDistanceMetric(percentile=95, directed=False)`` /
``compute_hausdorff_distance``: surfaces are ``mask XOR binary_erosion(mask)`` (face
connectivity, voxels outside the array count as background), the directed distances are exact
Euclidean distances in physical units from each surface voxel of one mask to the nearest surface
voxel of the other, and HD95 is the larger of the two directed 95th percentiles (linear
interpolation, ``np.percentile``'s default). MedPy and panoptica take the percentile of the
pooled distances instead, which gives different numbers.

:func:`remove_small_et` is the mmFormer/RFNet "ET post-processing".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from rirn.labels import BRATS_SHAPE, REGIONS

#: HD95 when exactly one of prediction and ground truth is empty: the diagonal of the BraTS
#: 240x240x155 volume, sqrt(240^2 + 240^2 + 155^2) = 373.129..., rounded as BraTS reports it.
HD95_EMPTY: float = 373.13

#: mmFormer/RFNet: a predicted ET with fewer voxels than this is removed (see remove_small_et).
ET_MIN_VOXELS: int = 500


def _pair(pred, gt) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    return pred, gt


def _counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int, int]:
    """Confusion counts ``(TP, FP, FN, TN)`` of two same-shape bool arrays."""
    tp = int(np.count_nonzero(pred & gt))
    n_pred = int(np.count_nonzero(pred))
    n_gt = int(np.count_nonzero(gt))
    fp, fn = n_pred - tp, n_gt - tp
    return tp, fp, fn, pred.size - tp - fp - fn


def _ratio(num: int, den: int, agree: bool) -> float:
    # 0/0 means the metric has nothing to measure: score agreement with the ground truth.
    return num / den if den else float(agree)


def _dice(tp: int, fp: int, fn: int, tn: int) -> float:
    return _ratio(2 * tp, 2 * tp + fp + fn, True)


def _sensitivity(tp: int, fp: int, fn: int, tn: int) -> float:
    return _ratio(tp, tp + fn, fp == 0)


def _specificity(tp: int, fp: int, fn: int, tn: int) -> float:
    return _ratio(tn, tn + fp, fn == 0)


def dice(pred, gt) -> float:
    """Dice similarity coefficient ``2|P∩G| / (|P| + |G|)``.

    Args:
        pred: predicted mask, bool (or 0/1) array of shape ``S``.
        gt: ground-truth mask, same shape.

    Returns:
        Dice in ``[0, 1]``; 1.0 when both masks are empty, 0.0 when exactly one is (the same as
        MONAI ``DiceMetric(ignore_empty=False)``).
    """
    return _dice(*_counts(*_pair(pred, gt)))


def sensitivity(pred, gt) -> float:
    """Sensitivity (recall, true-positive rate) ``TP / (TP + FN)``.

    Args:
        pred: predicted mask, bool (or 0/1) array of shape ``S``.
        gt: ground-truth mask, same shape.

    Returns:
        Sensitivity in ``[0, 1]``. When the ground truth is empty it is 1.0 if the prediction is
        empty too and 0.0 if it has any voxel (a false alarm is punished, as by Dice).
    """
    return _sensitivity(*_counts(*_pair(pred, gt)))


def specificity(pred, gt) -> float:
    """Specificity (true-negative rate) ``TN / (TN + FP)`` over every voxel of the array.

    Args:
        pred: predicted mask, bool (or 0/1) array of shape ``S``.
        gt: ground-truth mask, same shape.

    Returns:
        Specificity in ``[0, 1]``. When the ground truth has no negative voxel it is 1.0 if the
        prediction has none either and 0.0 otherwise (mirror of the :func:`sensitivity` rule).
    """
    return _specificity(*_counts(*_pair(pred, gt)))


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the ``True`` voxels of a non-empty mask, grown by ``margin`` voxels and
    clipped to the array."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _surface(mask: np.ndarray) -> np.ndarray:
    # scipy's defaults are MONAI's: face connectivity, border_value=0 (outside = background).
    return mask ^ ndimage.binary_erosion(mask)


def _directed_hd95(from_surface: np.ndarray, to_surface: np.ndarray, spacing) -> float:
    distance_to = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return float(np.percentile(distance_to[from_surface], 95))


def hd95(pred, gt, spacing: Sequence[float] = (1.0, 1.0, 1.0), crop: bool = True) -> float:
    """95th-percentile symmetric Hausdorff distance between the surfaces of two masks.

    ``max(P95(d(∂P -> ∂G)), P95(d(∂G -> ∂P)))`` where ``∂M = M XOR erode(M)`` and ``d`` is the
    Euclidean distance in physical units to the nearest surface voxel of the other mask; equal to
    MONAI's ``compute_hausdorff_distance(percentile=95, directed=False, spacing=spacing)``.

    Args:
        pred: predicted mask, bool (or 0/1) array of shape ``S`` (any rank).
        gt: ground-truth mask, same shape.
        spacing: voxel size per axis (``len(spacing) == pred.ndim``), e.g. millimetres.
        crop: compute on the bounding box of ``pred | gt`` grown by one voxel. The result is
            identical (everything outside is background, and erosion treats the array border as
            background too); only the run time differs. ``False`` exists for testing.

    Returns:
        HD95 in the units of ``spacing``; 0.0 when both masks are empty and :data:`HD95_EMPTY`
        when exactly one is.
    """
    pred, gt = _pair(pred, gt)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != pred.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing must be {pred.ndim} positive numbers, got {spacing}")
    pred_empty, gt_empty = not pred.any(), not gt.any()
    if pred_empty and gt_empty:
        return 0.0
    if pred_empty or gt_empty:
        return HD95_EMPTY
    if crop:
        box = _bbox(pred | gt, margin=1)
        pred, gt = pred[box], gt[box]
    pred_surface, gt_surface = _surface(pred), _surface(gt)
    return max(
        _directed_hd95(pred_surface, gt_surface, spacing),
        _directed_hd95(gt_surface, pred_surface, spacing),
    )


def region_metrics(
    pred, gt, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> dict[str, dict[str, float | bool]]:
    """All metrics of :data:`rirn.labels.REGIONS` for one case.

    Args:
        pred: predicted region masks ``(3, *S)`` bool (or 0/1), channels ``WT, TC, ET``.
        gt: ground-truth region masks, same shape.
        spacing: voxel size per spatial axis (``len(spacing) == len(S)``).

    Returns:
        ``{region: {"dice", "hd95", "sensitivity", "specificity": float,
        "gt_empty", "pred_empty": bool}}`` for ``region`` in ``("WT", "TC", "ET")``. The
        ``*_empty`` flags let a table apply another empty-case convention afterwards (e.g.
        nnU-Net's NaN for both-empty).
    """
    pred, gt = _pair(pred, gt)
    if pred.ndim < 2 or pred.shape[0] != len(REGIONS):
        raise ValueError(f"expected region masks of shape (3, *S), got {pred.shape}")
    out: dict[str, dict[str, float | bool]] = {}
    for name, p, g in zip(REGIONS, pred, gt, strict=True):
        counts = _counts(p, g)
        out[name] = {
            "dice": _dice(*counts),
            "hd95": hd95(p, g, spacing),
            "sensitivity": _sensitivity(*counts),
            "specificity": _specificity(*counts),
            "gt_empty": counts[0] + counts[2] == 0,
            "pred_empty": counts[0] + counts[1] == 0,
        }
    return out


def scaled_et_min_voxels(shape: Sequence[int], min_voxels: int = ET_MIN_VOXELS) -> int:
    """``postprocess.et_min_voxels=auto``: mmFormer's threshold for a case of grid ``shape``.

    The threshold keeps the share of the scan that ``min_voxels`` is of a BraTS case
    (:data:`rirn.labels.BRATS_SHAPE`, 8,928,000 voxels):
    ``round(min_voxels * prod(shape) / prod(BRATS_SHAPE))``, at least 1. A BraTS case gets
    500; a synthetic 64x64x48 case (the CPU demo's: a whole brain in about 45x fewer voxels)
    gets 11. It scales by voxel count, not by millimetres, because the synthetic cases carry
    1 mm spacing whatever their grid.

    Args:
        shape: the case's original grid ``(X, Y, Z)`` (``meta["shape"]``), not its brain box.
        min_voxels: the threshold at the BraTS grid.
    """
    ratio = math.prod(int(s) for s in shape) / math.prod(BRATS_SHAPE)
    return max(1, round(min_voxels * ratio))


def remove_small_et(regions, min_voxels: int = ET_MIN_VOXELS) -> np.ndarray:
    """mmFormer/RFNet ET post-processing of one predicted case.

    If the predicted ET (channel 2) has fewer than ``min_voxels`` voxels in the whole volume,
    every ET voxel is relabelled to necrosis (NCR): it leaves ET and is added to TC and WT (it
    already is in both when the prediction is nested). Otherwise the masks are returned
    unchanged. In label-map terms this is exactly mmFormer's ``pred[pred == ET] = NCR`` applied
    to :func:`rirn.labels.regions_to_labels` of the masks. It lifts ET Dice on cases without
    ET (a few false-positive voxels would otherwise score 0) and is reported separately as
    "ET post-processed" (reference.md §4).

    Args:
        regions: predicted region masks ``(3, *S)`` bool (or 0/1), channels ``WT, TC, ET``.
        min_voxels: ET is removed when its voxel count is strictly below this.

    Returns:
        A new ``bool`` array ``(3, *S)``; the input is not modified.
    """
    regions = np.array(regions, dtype=bool)  # a copy
    if regions.ndim < 2 or regions.shape[0] != len(REGIONS):
        raise ValueError(f"expected region masks of shape (3, *S), got {regions.shape}")
    et = regions[2]
    if np.count_nonzero(et) < min_voxels:
        regions[0] |= et
        regions[1] |= et
        regions[2] = False
    return regions
