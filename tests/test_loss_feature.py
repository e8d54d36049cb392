"""Tests of rirn.losses.feature (FitNets-style feature KD): values against numpy, per-channel
standardisation by hand, the gradient's closed form, and no gradient to the teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rirn.losses import FEATURE_NORM_EPS, FeatureLoss, feature_loss

from .conftest import compose_config


def _feat(seed: int, shape=(2, 4, 5, 3, 2)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.relu(torch.randn(*shape, generator=g, dtype=torch.float64)) * 2 + 0.1


def _standardise_numpy(x: np.ndarray, eps: float) -> np.ndarray:
    b, c = x.shape[:2]
    out = np.empty((b, c, x[0, 0].size))
    for i in range(b):
        for j in range(c):
            v = x[i, j].ravel()
            out[i, j] = (v - v.mean()) / np.sqrt(v.var() + eps)  # np.var: divisor N
    return out


def test_mse_against_numpy():
    s, t = _feat(1), _feat(2)
    expected = float(((s.numpy() - t.numpy()) ** 2).mean())
    assert feature_loss(s, t).item() == pytest.approx(expected, rel=1e-12)
    assert FeatureLoss()(s, t).item() == pytest.approx(expected, rel=1e-12)


def test_a_two_voxel_case_worked_out_on_paper():
    # One channel, two voxels: student (1, 3), teacher (0, 1) -> (1^2 + 2^2) / 2 = 2.5.
    s = torch.tensor([[[1.0, 3.0]]], dtype=torch.float64)
    t = torch.tensor([[[0.0, 1.0]]], dtype=torch.float64)
    assert feature_loss(s, t).item() == pytest.approx(2.5)
    # Standardised: student mean 2, var 1 -> (-1, 1) / sqrt(1 + eps); teacher mean 0.5, var
    # 0.25 -> (-0.5, 0.5) / sqrt(0.25 + eps); both voxels differ by the same d.
    eps = FEATURE_NORM_EPS
    d = 1 / np.sqrt(1 + eps) - 0.5 / np.sqrt(0.25 + eps)
    assert feature_loss(s, t, normalize=True).item() == pytest.approx(d * d, abs=1e-14)


def test_normalised_mse_against_numpy_standardisation():
    s, t = _feat(3), _feat(4)
    eps = 1e-3
    expected = float(
        ((_standardise_numpy(s.numpy(), eps) - _standardise_numpy(t.numpy(), eps)) ** 2).mean()
    )
    assert feature_loss(s, t, normalize=True, eps=eps).item() == pytest.approx(expected, rel=1e-10)


def test_normalised_loss_ignores_a_positive_scale_and_offset_per_channel():
    t = _feat(5)
    scale = torch.tensor([0.5, 2.0, 3.0, 10.0], dtype=torch.float64).view(1, 4, 1, 1, 1)
    s = scale * t + 7.0
    assert feature_loss(s, t).item() > 1.0
    assert feature_loss(s, t, normalize=True, eps=1e-12).item() < 1e-12


def test_dead_channels_stay_finite():
    # A teacher channel that is 0 everywhere (dead ReLU), a constant student channel.
    t = _feat(6)
    t[:, 1] = 0.0
    s = _feat(7)
    s[:, 1] = 0.3
    s.requires_grad_(True)
    loss = feature_loss(s, t, normalize=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    # Both standardise to 0 there: that channel adds nothing.
    ref = feature_loss(s.detach()[:, [0, 2, 3]], t[:, [0, 2, 3]], normalize=True)
    assert loss.item() == pytest.approx(ref.item() * 3 / 4, rel=1e-10)


def test_gradient_is_2_diff_over_numel_and_reaches_only_the_student():
    s = _feat(8).requires_grad_(True)
    t = _feat(9).requires_grad_(True)
    feature_loss(s, t).backward()
    assert torch.allclose(s.grad, 2 * (s.detach() - t.detach()) / s.numel(), rtol=1e-12)
    assert t.grad is None
    s.grad = None
    feature_loss(s, t, normalize=True).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


def test_low_precision_inputs_are_computed_in_float32():
    s, t = _feat(10).float(), _feat(11).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = feature_loss(s.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(feature_loss(s, t).item(), rel=2e-2)


def test_width_mismatch_is_an_error():
    with pytest.raises(ValueError, match="model.widths"):
        feature_loss(torch.zeros(1, 16, 4), torch.zeros(1, 8, 4))


def test_teacher_and_student_penultimate_widths_match():
    from rirn.models import build_unet

    cfg = compose_config("train", ["loss=feature"])
    teacher, student = build_unet(cfg.model, 4), build_unet(cfg.model, 1)
    x = torch.zeros(1, 4, 16, 16, 16)
    with torch.no_grad():
        f_t, f_s = teacher(x).features, student(x[:, :1]).features
    assert f_t.shape == f_s.shape
    assert cfg.loss.feature and cfg.loss.feature_norm is False
