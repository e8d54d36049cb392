"""rirn.inference against direct forward passes and hand-computed blends."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from rirn.errors import ConfigError
from rirn.evaluation.settings import et_threshold_setting, inference_settings, nested_setting
from rirn.inference import (
    InferenceSettings,
    case_regions,
    center_crop_inference,
    importance_map,
    probs_to_regions,
    sliding_window_inference,
    window_starts,
)
from rirn.labels import SCHEMES, labels_to_regions, regions_to_labels
from rirn.metrics import remove_small_et

ATOL = 1e-6


class Output(NamedTuple):
    logits: torch.Tensor
    features: torch.Tensor


class TupleModel(nn.Module):
    """Returns an ``Output`` NamedTuple, like ``UNet3D`` returns ``UNetOutput``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return Output(self.net(x), x)


class Recorder(nn.Module):
    """Wraps a model and records the shape of every input and whether autocast was on."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.shapes: list[tuple[int, ...]] = []
        self.autocast: list[bool] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        self.autocast.append(torch.is_autocast_enabled(x.device.type))
        return self.net(x)


def conv_stack(seed: int = 0, symmetric: bool = False) -> nn.Module:
    """Two 3x3x3 conv layers (zero padding). ``symmetric`` averages every kernel over the 8
    axis flips, which makes the network commute with flipping the volume."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 3, padding=1))
    if symmetric:
        with torch.no_grad():
            for conv in (net[0], net[2]):
                w = conv.weight
                flips = [c for n in range(4) for c in itertools.combinations((2, 3, 4), n)]
                w.copy_(sum(w.flip(f) for f in flips) / len(flips))
    return net.eval()


def pointwise(seed: int = 0) -> nn.Module:
    """A 1x1x1 conv: commutes with translation, so any window tiling gives the same output."""
    torch.manual_seed(seed)
    return nn.Conv3d(2, 3, 1).eval()


def image(*shape, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def direct(model, x):
    with torch.no_grad():
        out = model(x)
    return torch.sigmoid(out.logits if isinstance(out, tuple) else out)


def test_window_starts_by_hand():
    assert window_starts(20, 8, 0.5) == [0, 4, 8, 12]
    assert window_starts(17, 8, 0.5) == [0, 3, 6, 9]  # 3 strides of 3 <= 4 spread evenly
    assert window_starts(8, 8, 0.5) == [0]
    assert window_starts(9, 8, 0.0) == [0, 1]
    with pytest.raises(ValueError):
        window_starts(7, 8, 0.5)


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8])
def test_window_starts_cover_the_axis(overlap):
    for size, roi in itertools.product(range(8, 40), (4, 7, 8)):
        starts = window_starts(size, roi, overlap)
        covered = np.zeros(size, dtype=bool)
        for s in starts:
            covered[s : s + roi] = True
        assert covered.all() and starts[0] == 0 and starts[-1] == size - roi
        assert max(np.diff(starts), default=0) <= max(int(roi * (1 - overlap)), 1)


def test_importance_map():
    roi = (6, 5, 4)
    w = importance_map(roi, sigma_scale=0.125)
    assert w.shape == roi and w.dtype == torch.float32
    for axes in [(0,), (1,), (2,), (0, 1, 2)]:
        torch.testing.assert_close(w.flip(axes), w)
    sigma = 0.125 * np.array(roi)
    offset = np.array([0, 4, 1]) - (np.array(roi) - 1) / 2
    expected = np.exp(-0.5 * np.sum((offset / sigma) ** 2))
    assert float(w[0, 4, 1]) == pytest.approx(expected, rel=1e-6)
    assert torch.equal(importance_map(roi, "constant"), torch.ones(roi))


@pytest.mark.parametrize("wrap", [False, True])
def test_single_window_equals_direct_pass(wrap):
    net = conv_stack()
    model = TupleModel(net) if wrap else net
    x = image(2, 2, 12, 10, 8)
    probs = sliding_window_inference(model, x, (12, 10, 8))
    assert probs.dtype == torch.float32 and probs.shape == (2, 3, 12, 10, 8)
    torch.testing.assert_close(probs, direct(net, x), atol=ATOL, rtol=0)


def test_image_smaller_than_window_is_padded_and_cropped_back():
    # One conv layer with zero padding sees the same zeros whether they come from the conv's
    # own padding or from the padded canvas.
    torch.manual_seed(0)
    model = Recorder(nn.Conv3d(2, 3, 3, padding=1).eval())
    x = image(1, 2, 7, 9, 6)
    probs = sliding_window_inference(model, x, (10, 9, 8))
    assert model.shapes == [(1, 2, 10, 9, 8)]
    torch.testing.assert_close(probs, direct(model.net, x), atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_many_windows_on_translation_equivariant_model(mode):
    model = Recorder(pointwise())
    x = image(2, 2, 20, 17, 13)
    probs = sliding_window_inference(model, x, 8, overlap=0.5, mode=mode, batch_size=3)
    n_windows = 4 * 4 * 3  # window_starts: [0,4,8,12], [0,3,6,9], [0,2.5->2,5]
    assert sum(s[0] for s in model.shapes) == n_windows * 2
    assert model.shapes[0] == (3 * 2, 2, 8, 8, 8)
    torch.testing.assert_close(probs, direct(model.net, x), atol=ATOL, rtol=0)


class WindowConstant(nn.Module):
    """Predicts one constant probability per call: 0.2 on the first window, 0.9 on the second."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        p = (0.2, 0.9)[self.calls]
        self.calls += 1
        logit = float(np.log(p / (1 - p)))
        return torch.full((x.shape[0], 1, *x.shape[2:]), logit)


def test_overlap_is_the_gaussian_weighted_mean_of_window_probabilities():
    # Along axis 0 the windows start at 0 and 4; voxels 4..7 are in both.
    x = image(1, 1, 12, 3, 2)
    probs = sliding_window_inference(WindowConstant(), x, (8, 3, 2), overlap=0.5)[0, 0]
    w = importance_map((8, 3, 2)).double()
    for i in range(12):
        w0 = w[i] if i < 8 else torch.zeros_like(w[0])
        w1 = w[i - 4] if i >= 4 else torch.zeros_like(w[0])
        expected = (0.2 * w0 + 0.9 * w1) / (w0 + w1)
        torch.testing.assert_close(probs[i].double(), expected, atol=ATOL, rtol=0)
    assert probs[4:8].min() > 0.2 and probs[4:8].max() < 0.9


def test_center_crop_pastes_the_crop_prediction_back():
    model = Recorder(conv_stack())
    x = image(2, 2, 20, 16, 11)
    probs = center_crop_inference(model, x, (8, 10, 6))
    assert model.shapes == [(2, 2, 8, 10, 6)]
    inside = (slice(6, 14), slice(3, 13), slice(2, 8))  # offsets (S - roi) // 2
    expected = torch.zeros(2, 3, 20, 16, 11)
    expected[(..., *inside)] = direct(model.net, x[(..., *inside)])
    torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)


def test_center_crop_pads_short_axes():
    model = Recorder(TupleModel(conv_stack()))
    x = image(1, 2, 5, 16, 12)
    probs = center_crop_inference(model, x, 8)
    assert model.shapes == [(1, 2, 8, 8, 8)]
    window = torch.zeros(1, 2, 8, 8, 8)
    window[:, :, 1:6] = x[:, :, :, 4:12, 2:10]  # axis 0 padded 1 + 2, the others cropped
    expected = torch.zeros(1, 3, 5, 16, 12)
    expected[:, :, :, 4:12, 2:10] = direct(model.net, window)[:, :, 1:6]
    torch.testing.assert_close(probs, expected, atol=ATOL, rtol=0)


def test_flip_tta_on_flip_equivariant_model_changes_nothing():
    model = conv_stack(symmetric=True)
    x = image(1, 2, 14, 12, 10)
    plain = sliding_window_inference(model, x, 8, overlap=0.5)
    tta = sliding_window_inference(model, x, 8, overlap=0.5, tta_flip=True)
    torch.testing.assert_close(tta, plain, atol=ATOL, rtol=0)
    torch.testing.assert_close(
        center_crop_inference(model, x, 8, tta_flip=True),
        center_crop_inference(model, x, 8),
        atol=ATOL,
        rtol=0,
    )


def test_flip_tta_is_the_mean_over_the_8_flips():
    model = Recorder(conv_stack())
    x = image(1, 2, 8, 7, 6)
    tta = sliding_window_inference(model, x, (8, 7, 6), tta_flip=True)
    assert len(model.shapes) == 8
    flips = [c for n in range(4) for c in itertools.combinations((2, 3, 4), n)]
    expected = sum(direct(model.net, x.flip(f)).flip(f) for f in flips) / 8
    torch.testing.assert_close(tta, expected, atol=ATOL, rtol=0)
    assert not torch.allclose(tta, direct(model.net, x), atol=1e-3)


def test_autocast_bfloat16_only_when_asked():
    model = Recorder(conv_stack())
    x = image(1, 2, 8, 8, 8)
    full = sliding_window_inference(model, x, 8)
    low = sliding_window_inference(model, x, 8, amp_dtype=torch.bfloat16)
    assert model.autocast == [False, True]
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, atol=2e-2, rtol=0)


def test_bad_model_output():
    with pytest.raises(TypeError, match="logits"):
        sliding_window_inference(lambda x: (x,), image(1, 2, 4, 4, 4), 4)


def test_probs_to_regions():
    probs = torch.tensor([0.2, 0.5, 0.51, 0.9])
    assert probs_to_regions(probs).tolist() == [False, False, True, True]
    assert probs_to_regions(probs, threshold=0.3).tolist() == [False, True, True, True]
    assert probs_to_regions(probs.numpy()).dtype == np.bool_


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("AUTO", "auto"), (None, None), ("", None), (500, 500), ("11", 11)],
)
def test_et_threshold_setting(value, expected):
    assert et_threshold_setting(value) == expected


@pytest.mark.parametrize("value", [0, -3, "abc", 2.5, "10 voxels"])
def test_et_threshold_setting_rejects_with_the_key(value):
    with pytest.raises(ConfigError, match="postprocess.et_min_voxels"):
        et_threshold_setting(value)


def _settings(et_min_voxels, nested: bool = True) -> InferenceSettings:
    return InferenceSettings(
        mode="sliding_window", roi_size=(4, 4, 4), et_min_voxels=et_min_voxels, nested=nested
    )


def test_case_regions_thresholds_then_drops_small_et_of_the_case_grid():
    # A box of probabilities: WT and TC everywhere above 0.5, ET on n voxels only.
    def probs(n_et: int) -> torch.Tensor:
        p = torch.full((3, 6, 6, 6), 0.9)
        p[2] = 0.1
        p[2].view(-1)[:n_et] = 0.8
        return p

    grid = (64, 64, 48)  # auto: 11 voxels
    assert _settings("auto").et_threshold(grid) == 11
    assert _settings(7).et_threshold(grid) == 7 and _settings(None).et_threshold(grid) is None
    kept = case_regions(probs(11), _settings("auto"), grid)
    assert kept.dtype == np.bool_ and kept[2].sum() == 11 and kept[:2].all()
    dropped = case_regions(probs(10), _settings("auto"), grid)
    assert dropped[2].sum() == 0 and dropped[:2].all()  # ET became necrosis: still TC and WT
    assert case_regions(probs(10), _settings(None), grid)[2].sum() == 10
    # BraTS grid: the same 10 voxels (and 499) fall under mmFormer's 500
    assert case_regions(probs(200), _settings("auto"), (240, 240, 155))[2].sum() == 0
    np.testing.assert_array_equal(
        case_regions(probs(5).numpy(), _settings(None), grid), probs(5).numpy() > 0.5
    )


def _label_map_route(probs: np.ndarray, min_voxels: int | None, scheme) -> np.ndarray:
    """What BraTS scores of the file rirn.predict writes: threshold, the label map, mmFormer's
    ``pred[pred == ET] = NCR`` when ET is small, and the regions read back from the map."""
    labels = regions_to_labels(probs > 0.5, scheme)
    if min_voxels is not None and np.count_nonzero(labels == scheme.et) < min_voxels:
        labels[labels == scheme.et] = scheme.ncr
    return labels_to_regions(labels, scheme)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("seed", range(4))
def test_nested_case_regions_are_the_regions_of_the_written_label_map(scheme, seed):
    # Independent random channels: ET outside TC, TC outside WT, and an ET count (about 80 of
    # 6x6x6 voxels) on either side of the thresholds below.
    probs = np.random.default_rng(seed).random((3, 6, 6, 6)).astype(np.float32)
    probs[2] *= 0.8
    grid = (64, 64, 48)  # auto: 11 voxels
    raw = probs > 0.5
    assert (raw[1] & ~raw[0]).any() and (raw[2] & ~raw[1]).any()
    n_et = int(raw[2].sum())
    for et_min, min_voxels in ((None, None), ("auto", 11), (n_et, n_et), (n_et + 1, n_et + 1)):
        ours = case_regions(torch.from_numpy(probs), _settings(et_min), grid)
        expected = _label_map_route(probs, min_voxels, SCHEMES[scheme])
        np.testing.assert_array_equal(ours, expected)
    assert case_regions(probs, _settings(n_et + 1), grid)[2].sum() == 0  # ET was dropped


def test_unnested_case_regions_are_the_masks_as_thresholded():
    # nested=False: rirn before session 30; each region's own threshold, ET post-processing on it
    probs = np.random.default_rng(7).random((3, 6, 6, 6)).astype(np.float32)
    raw = probs > 0.5
    assert (raw[1] & ~raw[0]).any() and (raw[2] & ~raw[1]).any()
    np.testing.assert_array_equal(case_regions(probs, _settings(None, nested=False), ()), raw)
    big = int(raw[2].sum()) + 1
    np.testing.assert_array_equal(
        case_regions(probs, _settings(big, nested=False), ()), remove_small_et(raw, big)
    )
    # ...which is not what the label map holds: nesting adds TC and WT voxels, ET unchanged
    nested = case_regions(probs, _settings(None), ())
    assert (nested[:2] & ~raw[:2]).any() and not (raw & ~nested).any()
    np.testing.assert_array_equal(nested[2], raw[2])


def test_describe_postprocess():
    nested = "masks nested as in the written label map (ET in TC in WT)"
    assert _settings(None, nested=False).describe_postprocess() == "none"
    assert _settings(None).describe_postprocess() == nested
    assert _settings(20, nested=False).describe_postprocess() == "ET < 20 voxels relabelled to NCR"
    assert _settings(20).describe_postprocess() == f"ET < 20 voxels relabelled to NCR; {nested}"
    assert _settings("auto", nested=False).describe_postprocess() == (
        "ET < 500 voxels per 240x240x155 scan (scaled to the case's grid) relabelled to NCR"
    )
    assert _settings("auto").describe_postprocess().endswith(f"relabelled to NCR; {nested}")


def test_nested_setting_and_its_record():
    model = {"widths": [16, 32, 64, 128], "nonlocal_scale": 8}
    assert nested_setting(True) is True and nested_setting(False) is False
    default = inference_settings({}, "auto", (64, 64, 64), model, None)
    raw = inference_settings({}, "auto", (64, 64, 64), model, None, nested=False)
    assert default.nested is True and raw.nested is False
    assert InferenceSettings(mode="sliding_window", roi_size=(4, 4, 4)).nested is True
    # the record rirn.evaluate compares before reusing results: a change is not current
    assert default.as_dict()["nested"] is True and raw.as_dict()["nested"] is False
    for value in ("maybe", "true", 1, 0, None):
        with pytest.raises(ConfigError, match=r"^postprocess.nested=.* must be true or false$"):
            inference_settings({}, "auto", (64, 64, 64), model, None, nested=value)


def test_inference_settings_read_a_cube_and_name_a_bad_key():
    model = {"widths": [16, 32, 64, 128], "nonlocal_scale": 8}
    settings = inference_settings({"roi_size": 32}, "auto", (64, 64, 64), model, None)
    assert settings.roi_size == (32, 32, 32)  # one number is a cube, as MONAI reads it
    for bad, message in (
        ({"overlap": "abc"}, "inference.overlap='abc' must be a number"),
        ({"sw_batch_size": "a"}, "inference.sw_batch_size='a' must be a number"),
        ({"roi_size": 30}, "inference.roi_size=.30, 30, 30. cannot fit"),
    ):
        with pytest.raises(ConfigError, match=message):
            inference_settings(bad, "auto", (64, 64, 64), model, None)
