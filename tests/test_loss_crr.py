"""Tests of rirn.losses.crr (Eq. 2-5, Table 7) against a per-sample, per-region loop."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from rirn.losses import AGGREGATIONS, CRRLoss, crr_loss, region_centres, region_relation


def _reference_crr(feat_t, feat_s, prob_t, target, threshold, aggregation, use_filter):
    """Eq. 2-5 written the slow, obvious way: gather each region's voxels, reduce, compare."""
    reduce = {
        "mean": lambda v: v.mean(1),
        "max": lambda v: v.amax(1),
        "min": lambda v: v.amin(1),
        "maxmin": lambda v: (v.amax(1) + v.amin(1)) / 2,
    }[aggregation]
    per_sample = []
    for b in range(feat_s.shape[0]):
        centres_t, centres_s = {}, {}
        for r in range(target.shape[1]):
            keep = target[b, r] > 0.5
            if use_filter:
                keep = keep & (prob_t[b, r] > threshold)
            if keep.any():
                centres_t[r] = reduce(feat_t[b][:, keep])
                centres_s[r] = reduce(feat_s[b][:, keep])
        total = feat_s.new_zeros(())
        for i, j in itertools.permutations(centres_t, 2):
            rel_t = F.cosine_similarity(centres_t[i], centres_t[j], dim=0)
            rel_s = F.cosine_similarity(centres_s[i], centres_s[j], dim=0)
            total = total + (rel_t - rel_s).abs()
        per_sample.append(total)
    return torch.stack(per_sample).mean()


def _random_case(seed: int, batch: int = 3, channels: int = 5, shape=(6, 5, 4)):
    g = torch.Generator().manual_seed(seed)
    feat_t = torch.randn(batch, channels, *shape, generator=g)
    feat_s = torch.randn(batch, channels, *shape, generator=g)
    prob_t = torch.rand(batch, 3, *shape, generator=g)
    # Nested WT >= TC >= ET masks from one random field, like real targets.
    field = torch.rand(batch, 1, *shape, generator=g)
    target = torch.cat([field > 0.3, field > 0.6, field > 0.8], 1).float()
    target[1, 2] = 0  # sample 1: no ET -> the two ET pairs drop
    target[batch - 1] = 0  # last sample: no tumour at all -> contributes 0
    return feat_t, feat_s, prob_t, target


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("use_filter", [True, False])
def test_crr_matches_reference_loop(aggregation, use_filter):
    feat_t, feat_s, prob_t, target = _random_case(seed=3)
    feat_s.requires_grad_(True)
    out = crr_loss(feat_t, feat_s, prob_t, target, 0.5, aggregation, filter=use_filter)
    (grad,) = torch.autograd.grad(out, feat_s)

    ref_feat_s = feat_s.detach().clone().requires_grad_(True)
    ref = _reference_crr(feat_t, ref_feat_s, prob_t, target, 0.5, aggregation, use_filter)
    (ref_grad,) = torch.autograd.grad(ref, ref_feat_s)

    assert ref.item() > 0.01  # the case is not degenerate
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_crr_filter_changes_the_centres():
    feat_t, feat_s, prob_t, target = _random_case(seed=4)
    with_mf = crr_loss(feat_t, feat_s, prob_t, target, filter=True)
    without = crr_loss(feat_t, feat_s, prob_t, target, filter=False)
    assert with_mf.item() != pytest.approx(without.item(), rel=1e-3)
    # A teacher that is confident everywhere inside the truth makes the filter a no-op.
    confident = torch.ones_like(prob_t)
    assert crr_loss(feat_t, feat_s, confident, target, filter=True).item() == pytest.approx(
        without.item(), rel=1e-6
    )


def test_crr_known_centres():
    # Three voxels: v0 in WT only, v1 in WT+TC, v2 in WT+TC+ET; two feature channels.
    target = torch.tensor([[1, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=torch.float32)
    target = target.reshape(1, 3, 3, 1, 1)
    feat_t = torch.tensor([[1.0, 0, 0], [0, 1, 1]]).reshape(1, 2, 3, 1, 1)
    feat_s = torch.tensor([[1.0, 1, 0], [0, 0, 1]]).reshape(1, 2, 3, 1, 1)
    prob_t = torch.ones(1, 3, 3, 1, 1)
    # Teacher centres WT (1/3, 2/3), TC = ET = (0, 1): cos 2/sqrt5, 2/sqrt5, 1.
    # Student centres WT (2/3, 1/3), TC (1/2, 1/2), ET (0, 1): cos 3/sqrt10, 1/sqrt5, 1/sqrt2.
    s5, s10, s2 = math.sqrt(5), math.sqrt(10), math.sqrt(2)
    gaps = abs(2 / s5 - 3 / s10) + abs(2 / s5 - 1 / s5) + abs(1 - 1 / s2)
    assert crr_loss(feat_t, feat_s, prob_t, target).item() == pytest.approx(2 * gaps, rel=1e-6)

    centres, valid = region_centres(feat_t, target.bool())
    torch.testing.assert_close(centres[0], torch.tensor([[1 / 3, 2 / 3], [0, 1], [0, 1]]))
    assert valid.all()
    # max over WT = (1, 1), min over WT = (0, 0) -> maxmin (1/2, 1/2).
    maxmin, _ = region_centres(feat_t, target.bool(), "maxmin")
    torch.testing.assert_close(maxmin[0, 0], torch.tensor([0.5, 0.5]))

    # Filtering out v0 from WT makes the teacher's WT centre (0, 1) like TC and ET.
    prob_t[0, 0, 0] = 0.2
    filtered, _ = region_centres(feat_t, (target > 0) & (prob_t > 0.5))
    torch.testing.assert_close(filtered[0, 0], torch.tensor([0.0, 1.0]))


def test_crr_identical_networks_give_zero_loss_and_gradient():
    feat, _, prob_t, target = _random_case(seed=5)
    feat_s = feat.clone().requires_grad_(True)
    for aggregation in AGGREGATIONS:
        out = crr_loss(feat, feat_s, prob_t, target, aggregation=aggregation)
        (grad,) = torch.autograd.grad(out, feat_s)
        assert out.item() == 0.0
        assert not grad.any()


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_crr_all_empty_is_zero_without_nan(aggregation):
    feat_t = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    feat_s = torch.randn(2, 4, 3, 3, 3, requires_grad=True)
    prob_t = torch.rand(2, 3, 3, 3, 3)
    out = crr_loss(feat_t, feat_s, prob_t, torch.zeros(2, 3, 3, 3, 3), aggregation=aggregation)
    out.backward()
    assert out.item() == 0.0
    assert torch.isfinite(feat_s.grad).all() and not feat_s.grad.any()
    assert feat_t.grad is None  # the teacher is detached


def test_crr_zero_features_are_finite():
    # All-zero centres hit the cosine's eps clamp: value and gradient must stay finite.
    _, _, prob_t, target = _random_case(seed=6)
    feat_s = torch.zeros(3, 5, 6, 5, 4, requires_grad=True)
    out = crr_loss(torch.randn(3, 5, 6, 5, 4), feat_s, prob_t, target)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(feat_s.grad).all()
    assert region_relation(torch.zeros(1, 3, 4)).abs().max().item() == 0.0


def test_crr_teacher_gets_no_gradient_and_module_form_agrees():
    feat_t, feat_s, prob_t, target = _random_case(seed=7)
    feat_t.requires_grad_(True)
    prob_t.requires_grad_(True)
    feat_s.requires_grad_(True)
    out = crr_loss(feat_t, feat_s, prob_t, target, aggregation="max")
    out.backward()
    assert feat_t.grad is None and prob_t.grad is None
    assert feat_s.grad is not None and feat_s.grad.any()
    module = CRRLoss(threshold=0.5, aggregation="max", filter=True)
    assert module(feat_t, feat_s, prob_t, target).item() == out.item()


def test_crr_fp32_under_autocast_and_float64_gradcheck():
    feat_t, feat_s, prob_t, target = _random_case(seed=8, batch=2, shape=(3, 3, 2))
    reference = crr_loss(feat_t, feat_s, prob_t, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = crr_loss(feat_t, feat_s, prob_t, target)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(reference.item(), rel=1e-6)

    feat_s64 = feat_s.double().requires_grad_(True)
    for aggregation in AGGREGATIONS:
        assert torch.autograd.gradcheck(
            lambda f, agg=aggregation: crr_loss(feat_t.double(), f, prob_t, target, 0.5, agg),
            (feat_s64,),
        )


def test_crr_rejects_bad_arguments():
    feat = torch.randn(1, 2, 3, 3, 3)
    masks = torch.ones(1, 3, 3, 3, 3)
    with pytest.raises(ValueError, match="aggregation"):
        crr_loss(feat, feat, masks, masks, aggregation="median")
    with pytest.raises(ValueError, match="aggregation"):
        CRRLoss(aggregation="median")
    with pytest.raises(ValueError, match="must equal"):
        crr_loss(feat, feat[:, :1], masks, masks)
    with pytest.raises(ValueError, match="spatial"):
        crr_loss(feat, feat, masks[..., :2], masks[..., :2])
