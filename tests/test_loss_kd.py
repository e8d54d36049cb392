"""Tests of rirn.losses.kd (logit KD, Hinton et al. 2015, for sigmoid outputs): values against
the binary KL written out with ``math`` element by element, the gradient against its closed
form, and that the teacher never gets a gradient."""

from __future__ import annotations

import math

import pytest
import torch

from rirn.losses import DEFAULT_KD_TEMPERATURE, KDLoss, kd_loss

from .conftest import compose_config


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _naive_kd(z_s: list[float], z_t: list[float], t: float) -> float:
    """T^2 * mean of KL(Bern(q) || Bern(p)), q = sigmoid(z_t/T), p = sigmoid(z_s/T), with the
    0 log 0 = 0 convention for a saturated teacher."""
    total = 0.0
    for s, tt in zip(z_s, z_t, strict=True):
        p, q = _sigmoid(s / t), _sigmoid(tt / t)
        kl = (q * math.log(q / p) if q > 0 else 0.0) + (
            (1 - q) * math.log((1 - q) / (1 - p)) if q < 1 else 0.0
        )
        total += kl
    return t * t * total / len(z_s)


def _logits(seed: int, shape=(2, 3, 4, 3, 2)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_equals_the_binary_kl_by_hand(temperature):
    z_s, z_t = _logits(1), _logits(2)
    expected = _naive_kd(z_s.flatten().tolist(), z_t.flatten().tolist(), temperature)
    got = kd_loss(z_s, z_t, temperature)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, rel=1e-10)
    assert KDLoss(temperature)(z_s, z_t).item() == pytest.approx(expected, rel=1e-10)


def test_a_two_voxel_case_worked_out_on_paper():
    # T = 2: teacher logits (2, 0) -> q = (sigmoid(1), 1/2); student logits 0 -> p = 1/2.
    # KL(q||1/2) = q log 2q + (1-q) log 2(1-q); the second voxel matches: 0.
    q = 1 / (1 + math.exp(-1))
    first = q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q))
    expected = 4 * first / 2  # T^2 = 4, mean over the 2 voxels
    z_s = torch.zeros(1, 1, 2)
    z_t = torch.tensor([[[2.0, 0.0]]])
    assert kd_loss(z_s, z_t, 2.0).item() == pytest.approx(expected, rel=1e-6)
    # q = 0.731059: 0.731059 log 1.462117 + 0.268941 log 0.537883 = 0.277717 - 0.166773
    assert expected == pytest.approx(4 * 0.110944 / 2, abs=1e-5)


def test_teacher_entropy_is_subtracted_so_a_perfect_match_costs_nothing():
    z = _logits(3)
    assert kd_loss(z, z.clone(), 2.0).item() == 0.0
    # Plain BCE (Hinton's cross-entropy form) = kd / T^2 + H(q): larger by the teacher entropy.
    z_s, z_t, t = _logits(4), _logits(5), 3.0
    q = torch.sigmoid(z_t / t)
    bce = -(q * torch.log(torch.sigmoid(z_s / t)) + (1 - q) * torch.log(1 - torch.sigmoid(z_s / t)))
    entropy = -(q * torch.log(q) + (1 - q) * torch.log(1 - q))
    assert kd_loss(z_s, z_t, t).item() == pytest.approx(
        t * t * (bce.mean() - entropy.mean()).item(), rel=1e-10
    )


def test_empty_region_of_a_saturated_teacher_is_finite():
    # ET empty: the teacher's logits -1e4 give q = 0 exactly in float32, so KL = -log(1 - p) =
    # log(1 + exp(z_s / T)); WT and TC match the student. T = 2, 4 voxels per region.
    t = 2.0
    z_s = torch.zeros(1, 3, 4)
    z_s[0, 2] = torch.tensor([0.0, 2.0, -2.0, 4.0])
    z_t = z_s.clone()
    z_t[0, 2] = -1e4
    z_s.requires_grad_(True)
    loss = kd_loss(z_s, z_t, t)
    per_voxel = [math.log1p(math.exp(v / t)) for v in (0.0, 2.0, -2.0, 4.0)]
    assert loss.item() == pytest.approx(t * t * sum(per_voxel) / 12, rel=1e-6)
    loss.backward()
    assert torch.isfinite(z_s.grad).all()
    # d/dz_s = T (p - q) / numel with q = 0 on ET, 0 where the logits match.
    p = torch.sigmoid(z_s.detach()[0, 2] / t)
    assert torch.allclose(z_s.grad[0, 2], t * p / 12, rtol=1e-6)
    assert z_s.grad[0, :2].abs().max().item() == 0.0


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_gradient_is_t_times_p_minus_q_and_reaches_only_the_student(temperature):
    z_s = _logits(6).requires_grad_(True)
    z_t = _logits(7).requires_grad_(True)
    kd_loss(z_s, z_t, temperature).backward()
    p = torch.sigmoid(z_s.detach() / temperature)
    q = torch.sigmoid(z_t.detach() / temperature)
    expected = temperature * (p - q) / z_s.numel()
    assert torch.allclose(z_s.grad, expected, rtol=1e-10, atol=1e-15)
    assert z_t.grad is None


def test_t_squared_keeps_the_gradient_scale_at_high_temperature():
    # For T >> |z|: T (sigmoid(b) - sigmoid(a)) ~ (z_s - z_t) / 4, whatever T.
    z_s, z_t = torch.tensor([[[0.3]]], requires_grad=True), torch.tensor([[[-0.5]]])
    kd_loss(z_s, z_t, 100.0).backward()
    assert z_s.grad.item() == pytest.approx((0.3 + 0.5) / 4, rel=1e-3)


def test_low_precision_inputs_are_computed_in_float32():
    z_s, z_t = _logits(8).float(), _logits(9).float()
    ref = kd_loss(z_s, z_t, 2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = kd_loss(z_s.bfloat16(), z_t.bfloat16(), 2.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="differ"):
        kd_loss(torch.zeros(1, 3, 4), torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), 0.0)


def test_config_default_temperature_is_the_documented_one():
    cfg = compose_config("train", ["loss=kd"])
    assert cfg.loss.kd_temperature == DEFAULT_KD_TEMPERATURE
    assert cfg.loss.kd and not (cfg.loss.crr or cfg.loss.car or cfg.loss.adv or cfg.loss.feature)
