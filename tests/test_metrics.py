"""rirn.metrics: hand-computed values, every empty-mask rule, and MONAI as an oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from rirn.labels import REGIONS, SCHEMES, labels_to_regions, nest_regions, regions_to_labels
from rirn.metrics import (
    ET_MIN_VOXELS,
    HD95_EMPTY,
    dice,
    hd95,
    region_metrics,
    remove_small_et,
    scaled_et_min_voxels,
    sensitivity,
    specificity,
)

SPACING = (1.0, 1.5, 2.0)
SEEDS = range(6)


def blob(shape, seed: int, fraction: float = 0.15, sigma: float = 2.5) -> np.ndarray:
    """A few smooth random blobs covering about ``fraction`` of the volume (never empty)."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return field > np.quantile(field, 1.0 - fraction)


def empty(shape=(6, 7, 8)) -> np.ndarray:
    return np.zeros(shape, dtype=bool)


def test_hd95_empty_constant_is_the_brats_volume_diagonal():
    assert round(math.sqrt(240**2 + 240**2 + 155**2), 2) == HD95_EMPTY


def test_dice_by_hand():
    pred, gt = empty(), empty()
    pred[1, 1, 1:3] = True  # 2 voxels
    gt[1, 1, 2:5] = True  # 3 voxels, 1 shared
    assert dice(pred, gt) == pytest.approx(2 * 1 / (2 + 3))
    assert dice(gt, gt) == 1.0


def test_sensitivity_specificity_by_hand():
    pred, gt = empty(), empty()  # 336 voxels
    gt[0, 0, :4] = True  # 4 positives
    pred[0, 0, 1:6] = True  # TP 3, FP 2, FN 1
    tn = 336 - 3 - 2 - 1
    assert sensitivity(pred, gt) == pytest.approx(3 / 4)
    assert specificity(pred, gt) == pytest.approx(tn / (tn + 2))


@pytest.mark.parametrize(
    ("pred_any", "gt_any", "expected"),
    [
        (False, False, {"dice": 1.0, "hd95": 0.0, "sens": 1.0}),
        (True, False, {"dice": 0.0, "hd95": HD95_EMPTY, "sens": 0.0}),
        (False, True, {"dice": 0.0, "hd95": HD95_EMPTY, "sens": 0.0}),
    ],
)
def test_empty_rules(pred_any, gt_any, expected):
    pred, gt = empty(), empty()
    pred[2, 3, 4] = pred_any
    gt[1, 1, 1] = gt_any
    assert dice(pred, gt) == expected["dice"]
    assert hd95(pred, gt, SPACING) == expected["hd95"]
    assert sensitivity(pred, gt) == expected["sens"]


def test_specificity_when_gt_has_no_negative():
    full = ~empty()
    assert specificity(full, full) == 1.0
    partial = full.copy()
    partial[0, 0, 0] = False
    assert specificity(partial, full) == 0.0
    # with no positive in pred either, TN/(TN+FP) is well defined and the rule is not used
    assert specificity(empty(), empty()) == 1.0


def test_hd95_two_points_uses_spacing():
    pred, gt = empty((5, 5, 9)), empty((5, 5, 9))
    pred[2, 2, 2] = True
    gt[2, 2, 6] = True
    assert hd95(pred, gt, SPACING) == pytest.approx(4 * 2.0)
    assert hd95(pred, gt) == pytest.approx(4.0)


def test_hd95_is_the_larger_directed_percentile():
    # 2-D: a line of 21 pixels (all surface) against its first pixel. pred->gt distances are
    # all 0; gt->pred distances are 0..20 rows, whose linear 95th percentile is 19 rows.
    gt = np.zeros((30, 5), dtype=bool)
    gt[0:21, 2] = True
    pred = np.zeros_like(gt)
    pred[0, 2] = True
    assert hd95(pred, gt, (1.0, 1.0)) == pytest.approx(19.0)
    assert hd95(gt, pred, (0.5, 3.0)) == pytest.approx(19.0 * 0.5)


def test_hd95_cube_against_its_centre_by_hand():
    # A 3x3x3 cube erodes to its centre voxel, so its surface is the other 26 voxels: 6 at
    # distance 1 from the centre, 12 at sqrt 2, 8 at sqrt 3. The reverse direction gives 1.
    cube = empty((7, 7, 7))
    cube[2:5, 2:5, 2:5] = True
    centre = empty((7, 7, 7))
    centre[3, 3, 3] = True
    offsets = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    distances = np.linalg.norm(offsets[np.abs(offsets).sum(1) > 0], axis=1)
    assert hd95(cube, centre) == pytest.approx(np.percentile(distances, 95))


@pytest.mark.parametrize("seed", SEEDS)
def test_crop_equals_uncropped(seed):
    shape = (30, 26, 22)
    pred, gt = blob(shape, seed), blob(shape, seed + 100)
    assert hd95(pred, gt, SPACING, crop=True) == pytest.approx(
        hd95(pred, gt, SPACING, crop=False), rel=1e-12
    )


def test_crop_equals_uncropped_at_the_border_and_far_apart():
    pred, gt = empty((20, 20, 20)), empty((20, 20, 20))
    pred[0:4, 0:3, 0:5] = True  # touches three faces of the volume
    gt[15:20, 16:20, 12:20] = True  # the opposite corner
    gt[9, 9, 9] = True  # and an isolated voxel
    assert hd95(pred, gt, SPACING, crop=True) == pytest.approx(
        hd95(pred, gt, SPACING, crop=False), rel=1e-12
    )


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation, not ours
@pytest.mark.parametrize("seed", SEEDS)
def test_against_monai(seed):
    pytest.importorskip("monai")
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, compute_hausdorff_distance

    shape = (32, 28, 24)
    pred = blob(shape, seed, fraction=0.1 + 0.03 * seed)
    gt = blob(shape, seed + 50, fraction=0.12)
    y_pred = torch.from_numpy(pred[None, None].astype(np.float32))
    y = torch.from_numpy(gt[None, None].astype(np.float32))

    dice_metric = DiceMetric(include_background=True, ignore_empty=False)
    assert dice(pred, gt) == pytest.approx(float(dice_metric(y_pred, y)), rel=1e-6)

    ours = hd95(pred, gt, SPACING)
    functional = compute_hausdorff_distance(
        y_pred, y, include_background=True, percentile=95, spacing=SPACING
    )
    metric = HausdorffDistanceMetric(include_background=True, percentile=95, directed=False)
    assert ours == pytest.approx(float(functional), rel=1e-5)
    assert ours == pytest.approx(float(metric(y_pred, y, spacing=SPACING)), rel=1e-5)
    # spacing matters here: the unit-spacing value differs
    assert hd95(pred, gt) == pytest.approx(
        float(compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95)),
        rel=1e-5,
    )


@pytest.mark.parametrize(("pred_any", "gt_any"), [(False, False), (True, False), (False, True)])
def test_dice_empty_rules_match_monai_ignore_empty_false(pred_any, gt_any):
    pytest.importorskip("monai")
    import torch
    from monai.metrics import DiceMetric

    pred, gt = empty(), empty()
    pred[1:3, 1:3, 1:3] = pred_any
    gt[2:4, 2:4, 2:4] = gt_any
    expected = DiceMetric(include_background=True, ignore_empty=False)(
        torch.from_numpy(pred[None, None]).float(), torch.from_numpy(gt[None, None]).float()
    )
    assert dice(pred, gt) == float(expected)


def test_region_metrics():
    shape = (24, 20, 16)
    gt = np.stack([blob(shape, 1, 0.2), blob(shape, 2, 0.08), empty(shape)])
    pred = np.stack([blob(shape, 3, 0.2), empty(shape), blob(shape, 4, 0.02)])
    out = region_metrics(pred.astype(np.uint8), gt, SPACING)
    assert list(out) == list(REGIONS)
    for (name, result), p, g in zip(out.items(), pred, gt, strict=True):
        assert result == {
            "dice": dice(p, g),
            "hd95": hd95(p, g, SPACING),
            "sensitivity": sensitivity(p, g),
            "specificity": specificity(p, g),
            "gt_empty": not g.any(),
            "pred_empty": not p.any(),
        }, name
    assert out["TC"]["dice"] == 0.0 and out["TC"]["hd95"] == HD95_EMPTY
    assert out["ET"]["gt_empty"] and not out["ET"]["pred_empty"]


def test_shape_errors():
    with pytest.raises(ValueError, match="same shape"):
        dice(empty((3, 3, 3)), empty((3, 3, 4)))
    with pytest.raises(ValueError, match="spacing"):
        hd95(empty((3, 3, 3)), empty((3, 3, 3)), (1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(3, \*S\)"):
        region_metrics(empty((2, 3, 3)), empty((2, 3, 3)))


def regions_with_et(n_et: int, shape=(20, 20, 20)) -> np.ndarray:
    regions = np.zeros((3, *shape), dtype=bool)
    regions[0, 2:18, 2:18, 2:18] = True
    regions[1, 5:15, 5:15, 5:15] = True
    regions[2].reshape(-1)[np.flatnonzero(regions[1])[:n_et]] = True
    return regions


def test_remove_small_et_threshold():
    assert ET_MIN_VOXELS == 500
    kept = regions_with_et(500)
    np.testing.assert_array_equal(remove_small_et(kept), kept)
    small = regions_with_et(499)
    out = remove_small_et(small)
    assert not out[2].any()
    np.testing.assert_array_equal(out[:2], small[:2])  # ET voxels stay in TC and WT
    assert small[2].sum() == 499  # input untouched
    assert remove_small_et(regions_with_et(10), min_voxels=10)[2].sum() == 10


def test_remove_small_et_is_mmformer_relabel_to_ncr():
    # mmFormer works on label maps: pred[pred == ET] = NCR. A non-nested ET voxel (outside
    # TC and WT) must end up as NCR as well.
    regions = regions_with_et(30)
    regions[2, 0, 0, 0] = True
    scheme = SCHEMES["brats"]
    labels = regions_to_labels(regions, scheme)
    labels[labels == scheme.et] = scheme.ncr
    np.testing.assert_array_equal(regions_to_labels(remove_small_et(regions), scheme), labels)


def random_regions(seed: int, shape=(7, 6, 5)) -> np.ndarray:
    """Three independent random masks, so many voxels are not nested (TC outside WT, ...)."""
    fractions = np.array([0.5, 0.35, 0.25]).reshape(3, *(1,) * len(shape))
    return np.random.default_rng(seed).random((3, *shape)) < fractions


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("seed", SEEDS)
def test_nest_regions_is_the_label_map_round_trip(scheme, seed):
    regions = random_regions(seed)
    assert (regions[1] & ~regions[0]).any() and (regions[2] & ~regions[1]).any()  # un-nested
    before = regions.copy()
    nested = nest_regions(regions)
    round_trip = labels_to_regions(regions_to_labels(regions, SCHEMES[scheme]), SCHEMES[scheme])
    np.testing.assert_array_equal(nested, round_trip)
    assert nested.dtype == np.bool_ and nested.shape == regions.shape
    np.testing.assert_array_equal(regions, before)  # input untouched
    # nested already: unchanged; and the label map it writes is the same as before nesting
    np.testing.assert_array_equal(nest_regions(nested), nested)
    labels = regions_to_labels(regions, SCHEMES[scheme])
    np.testing.assert_array_equal(regions_to_labels(nested, SCHEMES[scheme]), labels)


def test_nest_regions_by_hand():
    # one voxel per combination of (WT, TC, ET): bit r of the voxel index is region r
    regions = np.array([[(v >> r) & 1 for v in range(8)] for r in range(3)], dtype=np.uint8)
    nested = nest_regions(regions)
    assert nested[0].tolist() == [False] + [True] * 7  # any region at all
    assert nested[1].tolist() == [False, False, True, True, True, True, True, True]  # TC or ET
    assert nested[2].tolist() == [bool(v & 4) for v in range(8)]  # ET as it was
    with pytest.raises(ValueError, match=r"\(3, \*S\)"):
        nest_regions(np.zeros((2, 4), bool))


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((240, 240, 155), 500),  # BraTS: mmFormer's own threshold
        ((64, 64, 48), 11),  # 500 * 196608 / 8928000 = 11.01
        ((96, 96, 64), 33),  # 500 * 589824 / 8928000 = 33.03
        ((48, 48, 32), 4),  # 500 * 73728 / 8928000 = 4.13
        ((8, 8, 8), 1),  # 0.03 voxels: never below 1
    ],
)
def test_scaled_et_min_voxels_by_hand(shape, expected):
    assert scaled_et_min_voxels(shape) == expected
    doubled = max(1, round(1000 * math.prod(shape) / 8928000))
    assert scaled_et_min_voxels(shape, min_voxels=1000) == doubled
