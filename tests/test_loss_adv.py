"""Tests of rirn.losses.adv (Eq. 8): values against log-sigmoid by hand, gradient routing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rirn.losses import adversarial_loss, discriminator_loss


def _tiny_disc(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv3d(3, 4, 3, stride=2, padding=1), nn.LeakyReLU(0.2), nn.Conv3d(4, 1, 3, padding=1)
    )


def _probs(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 6, 6, 4, generator=g)


def test_losses_equal_log_sigmoid_formulas():
    disc = _tiny_disc()
    probs_t, probs_s = _probs(1), _probs(2)
    with torch.no_grad():
        real, fake = disc(probs_t), disc(probs_s)
    # -mean log sigmoid(x) and -mean log(1 - sigmoid(x)) written out element by element.
    minus_log_real = sum(-math.log(1 / (1 + math.exp(-x))) for x in real.flatten().tolist())
    minus_log_fake = sum(-math.log(1 - 1 / (1 + math.exp(-x))) for x in fake.flatten().tolist())
    expected_d = minus_log_real / real.numel() + minus_log_fake / fake.numel()
    fool = sum(-math.log(1 / (1 + math.exp(-x))) for x in fake.flatten().tolist()) / fake.numel()
    assert discriminator_loss(disc, probs_t, probs_s).item() == pytest.approx(expected_d, rel=1e-5)
    assert adversarial_loss(disc, probs_s).item() == pytest.approx(fool, rel=1e-5)


def test_undecided_discriminator_gives_log2_values():
    disc = _tiny_disc()
    for p in disc.parameters():
        nn.init.zeros_(p)  # logits 0 everywhere: D(x) = 1/2
    probs = _probs(3)
    assert discriminator_loss(disc, probs, probs).item() == pytest.approx(2 * math.log(2))
    assert adversarial_loss(disc, probs).item() == pytest.approx(math.log(2))


def test_discriminator_loss_trains_only_the_discriminator():
    disc = _tiny_disc()
    probs_t = _probs(4).requires_grad_(True)
    probs_s = _probs(5).requires_grad_(True)
    discriminator_loss(disc, probs_t, probs_s).backward()
    assert probs_t.grad is None and probs_s.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())


def test_adversarial_loss_trains_only_the_student():
    disc = _tiny_disc()
    probs_s = _probs(6).requires_grad_(True)
    loss = adversarial_loss(disc, probs_s)
    loss.backward()
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())  # module state untouched
    assert probs_s.grad is not None and probs_s.grad.abs().sum() > 0

    # The student's gradient is that of -mean log sigmoid(D(x)) with D's own weights.
    x = probs_s.detach().clone().requires_grad_(True)
    (-torch.nn.functional.logsigmoid(disc(x)).mean()).backward()
    torch.testing.assert_close(probs_s.grad, x.grad)


def test_a_training_step_of_each_side_moves_its_objective():
    # The sign convention: one SGD step on D lowers L_D; one step on the student lowers L_adv.
    disc = _tiny_disc()
    probs_t, student_logits = _probs(7), torch.randn(2, 3, 6, 6, 4, requires_grad=True)
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.5)
    before = discriminator_loss(disc, probs_t, student_logits.sigmoid())
    before.backward()
    opt_d.step()
    assert discriminator_loss(disc, probs_t, student_logits.sigmoid()).item() < before.item()

    opt_s = torch.optim.SGD([student_logits], lr=5.0)
    fool_before = adversarial_loss(disc, student_logits.sigmoid())
    fool_before.backward()
    opt_s.step()
    assert adversarial_loss(disc, student_logits.sigmoid()).item() < fool_before.item()


def test_adv_is_fp32_under_autocast():
    disc = _tiny_disc()
    probs_t, probs_s = _probs(8), _probs(9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = discriminator_loss(disc, probs_t, probs_s)
        a = adversarial_loss(disc, probs_s)
    assert d.dtype == torch.float32 and a.dtype == torch.float32
    assert torch.isfinite(d) and torch.isfinite(a)
