"""Deep supervision (`model.deep_supervision`): the heads, their loss, loading a teacher."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from rirn.errors import ConfigError
from rirn.losses import deep_supervision_loss, deep_supervision_weights, segmentation_loss
from rirn.models import build_unet
from rirn.training.setup import load_teacher_weights
from rirn.training.steps import TERMS, compute_losses, train_step

from .conftest import compose_config
from .step_fixtures import SMALL_MODEL, make_batch, make_nets

LOSS = OmegaConf.create({"seg": "dice_bce", "batch_dice": True, "dice_eps": 1.0})


def _unet(deep: int, **kw):
    torch.manual_seed(0)
    return build_unet(
        {
            "widths": [8, 16, 16, 16],
            "norm_groups": 4,
            "nonlocal_channels": 8,
            "deep_supervision": deep,
            **kw,
        },
        in_channels=1,
    )


def test_deep_heads_output_the_coarser_scales_in_training_mode_only():
    net = _unet(2).train()
    out = net(torch.randn(2, 1, 32, 32, 16))
    assert [tuple(t.shape) for t in out.deep_logits] == [(2, 3, 16, 16, 8), (2, 3, 8, 8, 4)]
    assert net.eval()(torch.randn(1, 1, 32, 32, 16)).deep_logits == ()
    assert _unet(0).train()(torch.randn(1, 1, 16, 16, 16)).deep_logits == ()


def test_the_other_weights_and_the_output_do_not_depend_on_the_deep_heads():
    plain, deep = _unet(0), _unet(2, head_prior=0.12)
    plain_state, deep_state = plain.state_dict(), deep.state_dict()
    extra = sorted(set(deep_state) - set(plain_state))
    assert extra and all(k.startswith("deep_heads.") for k in extra)
    prior = _unet(0, head_prior=0.12).state_dict()
    assert all(torch.equal(prior[k], deep_state[k]) for k in prior)
    # The deep heads start at the same prior as the main head: log(0.12 / 0.88) = -1.99.
    assert deep.deep_heads[1][-1].bias.tolist() == pytest.approx([-1.9924] * 3, abs=1e-4)
    x = torch.randn(1, 1, 16, 16, 16)
    plain.load_state_dict(prior)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x).logits, deep.eval()(x).logits)


@pytest.mark.parametrize("value", [3, -1, True, 1.5])
def test_a_bad_deep_supervision_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"model\.deep_supervision must be an integer in \[0, "):
        build_unet({"deep_supervision": value}, in_channels=1)


def test_weights_halve_per_level_and_sum_to_one():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def _outputs_and_target(seed=0):
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(2, 3, 16, 16, 8, generator=g) > 0.6).float()
    outputs = [torch.randn(2, 3, 16 // f, 16 // f, 8 // f, generator=g) for f in (1, 2, 4)]
    return outputs, target


def test_loss_by_hand_on_every_second_voxel():
    outputs, target = _outputs_and_target()
    # nearest-exact resizing by 2^k samples voxel 2^k * i + 2^(k-1): centre-aligned
    by_hand = (
        4 / 7 * segmentation_loss(outputs[0], target, LOSS)
        + 2 / 7 * segmentation_loss(outputs[1], target[..., 1::2, 1::2, 1::2], LOSS)
        + 1 / 7 * segmentation_loss(outputs[2], target[..., 2::4, 2::4, 2::4], LOSS)
    )
    assert deep_supervision_loss(outputs, target, LOSS).item() == pytest.approx(by_hand.item())
    # one output is the plain segmentation loss, bit for bit
    assert torch.equal(
        deep_supervision_loss(outputs[:1], target, LOSS),
        segmentation_loss(outputs[0], target, LOSS),
    )


def test_loss_matches_monai_deep_supervision_loss():
    monai_losses = pytest.importorskip("monai.losses")
    outputs, target = _outputs_and_target(seed=1)
    want = monai_losses.DeepSupervisionLoss(
        lambda x, y: segmentation_loss(x, y, LOSS), weights=deep_supervision_weights(3)
    )(outputs, target)
    assert deep_supervision_loss(outputs, target, LOSS).item() == pytest.approx(want.item())


def test_a_teacher_checkpoint_loads_with_or_without_deep_heads(tmp_path):
    plain, deep = _unet(0), _unet(2)
    torch.save({"teacher": plain.state_dict()}, tmp_path / "plain.pt")
    torch.save({"teacher": deep.state_dict()}, tmp_path / "deep.pt")
    into_deep = _unet(2)
    load_teacher_weights(into_deep, tmp_path / "plain.pt")
    for k, v in plain.state_dict().items():
        assert torch.equal(into_deep.state_dict()[k], v)
    into_plain = _unet(0)
    load_teacher_weights(into_plain, tmp_path / "deep.pt")
    assert set(into_plain.state_dict()) == set(plain.state_dict())
    # any other difference is still refused
    wider = build_unet({"widths": [8, 16, 16, 32], "norm_groups": 4}, in_channels=1)
    with pytest.raises(ConfigError, match="does not match the model"):
        load_teacher_weights(wider, tmp_path / "deep.pt")


def test_step_trains_every_deep_head_of_both_networks():
    cfg = compose_config("train", [*SMALL_MODEL, "model.deep_supervision=2"])
    nets = make_nets(cfg)
    batch = make_batch()
    terms, _, _ = compute_losses(nets, batch["image"], batch["target"], [2], cfg.loss)
    with torch.no_grad():
        torch.manual_seed(0)
        out_s = nets.student(batch["image"][:, [2]])
    want = deep_supervision_loss((out_s.logits, *out_s.deep_logits), batch["target"], cfg.loss)
    assert len(out_s.deep_logits) == 2
    assert terms["seg_s"].item() == pytest.approx(want.item(), rel=1e-6)
    before = {
        name: [p.detach().clone() for p in net.deep_heads.parameters()]
        for name, net in (("teacher", nets.teacher), ("student", nets.student))
    }
    losses = train_step(nets, batch, [2], cfg.loss, torch.device("cpu"), None)
    assert torch.isfinite(losses).all() and len(losses) == len(TERMS)
    for name, net in (("teacher", nets.teacher), ("student", nets.student)):
        after = list(net.deep_heads.parameters())
        assert all(not torch.equal(a, b) for a, b in zip(before[name], after, strict=True)), name
