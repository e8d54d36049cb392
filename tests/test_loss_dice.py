"""Tests of rirn.losses.dice (Eq. 1, batch Dice, Dice + BCE) against hand-computed values, a
direct loop and MONAI."""

from __future__ import annotations

import math

import pytest
import torch

from rirn.losses import DiceLoss, bce_loss, dice_bce_loss, dice_loss, segmentation_loss


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


# --------------------------------------------------------------- batch Dice, BCE, Dice + BCE


def test_batch_dice_sums_over_the_batch_before_the_ratio():
    # Two samples of one region, two voxels each: sample 0 has the region, sample 1 has none
    # but predicts 0.5 on one voxel.
    probs = torch.tensor([[[1.0, 0.0]], [[0.5, 0.0]]])
    target = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    # batch: 1 - (2*1 + 1) / ((1 + 0.5) + 1 + 1) = 1 - 3/3.5
    assert dice_loss(probs, target, batch=True).item() == pytest.approx(1 - 3 / 3.5, abs=1e-7)
    # per sample: sample 0 is perfect (0); sample 1 is 0.5 / 1.5 -> mean 1/6
    assert dice_loss(probs, target).item() == pytest.approx(1 / 6, abs=1e-7)


def test_bce_matches_the_formula_by_hand():
    logits = torch.tensor([[[2.0, -1.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0, 1.0]]])
    # -log sigmoid(2), -log(1 - sigmoid(-1)) = -log sigmoid(1), -log sigmoid(0) = log 2
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0)) + math.log(2.0)) / 3
    assert bce_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def _random_case(seed: int, shape=(2, 3, 6, 5, 4)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g) * 3
    target = (torch.rand(*shape, generator=g) > 0.7).float()
    target[1, 2] = 0  # an empty region (a case without ET)
    return logits, target


@pytest.mark.parametrize("batch", [False, True])
def test_dice_bce_matches_monai_dice_ce_per_region(batch):
    monai_losses = pytest.importorskip("monai.losses")
    logits, target = _random_case(2)
    eps = 1.0
    # MONAI's DiceCELoss takes BCE only for a single-channel input (several channels get a
    # softmax cross-entropy), so it is applied region by region and averaged over regions.
    oracle = monai_losses.DiceCELoss(sigmoid=True, smooth_nr=eps, smooth_dr=eps, batch=batch)
    expected = sum(oracle(logits[:, r : r + 1], target[:, r : r + 1]) for r in range(3)) / 3
    ours = dice_bce_loss(logits, target, batch_dice=batch, eps=eps)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dice_bce_weights_and_the_config_switch():
    logits, target = _random_case(3)
    dice = dice_loss(torch.sigmoid(logits), target)
    bce = bce_loss(logits, target)
    weighted = dice_bce_loss(logits, target, dice_weight=0.5, bce_weight=2.0)
    assert weighted.item() == pytest.approx(0.5 * dice.item() + 2.0 * bce.item(), rel=1e-6)
    paper = segmentation_loss(logits, target, {"seg": "dice"})
    assert paper.item() == pytest.approx(dice.item(), rel=1e-6)
    compound = {"seg": "dice_bce", "seg_weight": {"dice": 0.5, "bce": 2.0}}
    assert segmentation_loss(logits, target, compound).item() == pytest.approx(weighted.item())
    batch = segmentation_loss(logits, target, {"seg": "dice", "batch_dice": True})
    assert batch.item() == pytest.approx(
        dice_loss(torch.sigmoid(logits), target, batch=True).item(), rel=1e-6
    )
    with pytest.raises(ValueError, match="loss.seg='focal'"):
        segmentation_loss(logits, target, {"seg": "focal"})


def test_dice_bce_of_an_empty_region_still_pushes_its_logits_down():
    # Soft Dice alone: an empty region predicted everywhere at p=0.5 over many voxels costs
    # S/(S+1) ~ 1, with a gradient per voxel ~ 1/S**2 -> vanishing. BCE keeps a gradient of
    # sigmoid(z)/n per voxel, independent of the region size.
    logits = torch.zeros(1, 1, 16, 16, 16, requires_grad=True)
    target = torch.zeros(1, 1, 16, 16, 16)
    dice_loss(torch.sigmoid(logits), target).backward()
    dice_grad = logits.grad.abs().max().item()
    logits.grad = None
    dice_bce_loss(logits, target).backward()
    n = logits.numel()
    assert dice_grad < 1e-6
    # d/dz of Dice's S/(S+1) is tiny here, so the gradient is BCE's sigmoid(0)/n = 0.5/n
    assert logits.grad.min().item() == pytest.approx(0.5 / n, rel=1e-2)


def test_dice_bce_is_fp32_for_bf16_logits_and_under_autocast():
    logits, target = _random_case(4)
    reference = dice_bce_loss(logits.bfloat16().float(), target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dice_bce_loss(logits.bfloat16(), target)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference.item(), rel=1e-6)
