"""Tests of rirn.losses.dice (Eq. 1) against hand-computed values and a direct loop."""

from __future__ import annotations

import pytest
import torch

from rirn.losses import DiceLoss, dice_loss


def _region(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).reshape(2, 2, 1)


def test_dice_hand_values():
    # One sample, three regions of four voxels; expected numbers worked out on paper.
    zero = _region([0, 0, 0, 0])
    probs = torch.stack([_region([1, 0.5, 0, 0]), zero, _region([0.5] * 4)])[None]
    target = torch.stack([_region([1, 1, 0, 0]), zero, zero])[None]
    # eps = 1: WT 1 - (2*1.5 + 1) / (3.5 + 1) = 1/9; TC (both empty) 1 - 1/1 = 0;
    # ET (empty truth, predicted mass 2) 1 - 1/(2 + 1) = 2/3.
    expected = (1 / 9 + 0 + 2 / 3) / 3
    assert dice_loss(probs, target).item() == pytest.approx(expected, abs=1e-7)
    # eps = 1e-3 on WT alone: 1 - (3 + 1e-3) / (3.5 + 1e-3).
    wt = dice_loss(probs[:, :1], target[:, :1], eps=1e-3).item()
    assert wt == pytest.approx(1 - 3.001 / 3.501, abs=1e-7)


def test_dice_matches_direct_loop_over_batch_and_regions():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 3, 5, 4, 3, generator=g)
    target = (torch.rand(3, 3, 5, 4, 3, generator=g) > 0.6).float()
    target[1, 2] = 0  # an empty region
    eps = 0.5
    losses = []
    for b in range(3):
        for r in range(3):
            p, t = probs[b, r].tolist(), target[b, r].tolist()
            flat_p = [v for plane in p for row in plane for v in row]
            flat_t = [v for plane in t for row in plane for v in row]
            inter = sum(a * c for a, c in zip(flat_p, flat_t, strict=True))
            losses.append(1 - (2 * inter + eps) / (sum(flat_p) + sum(flat_t) + eps))
    expected = sum(losses) / len(losses)
    assert dice_loss(probs, target, eps=eps).item() == pytest.approx(expected, rel=1e-6)
    assert DiceLoss(eps=eps)(probs, target.bool()).item() == pytest.approx(expected, rel=1e-6)


def test_dice_perfect_and_empty_cases_are_finite():
    target = torch.zeros(2, 3, 4, 4, 4)
    target[0, 0, :2] = 1
    probs = target.clone().requires_grad_(True)
    loss = dice_loss(probs, target)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert torch.isfinite(probs.grad).all()
    empty = torch.zeros(1, 3, 4, 4, 4)
    assert dice_loss(empty, empty).item() == 0.0


def test_dice_is_fp32_under_autocast_and_for_bf16_inputs():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(1, 3, 8, 8, 8, generator=g).bfloat16()
    target = (torch.rand(1, 3, 8, 8, 8, generator=g) > 0.5).float()
    reference = dice_loss(probs.float(), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dice_loss(probs, target)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference.item(), rel=1e-6)


def test_dice_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="must both be"):
        dice_loss(torch.rand(1, 3, 4, 4, 4), torch.rand(1, 3, 4, 4, 5))
