"""The knowledge-transfer baselines in the co-training step (rirn.training.steps): which terms
run, their values against naive formulas on the networks' own outputs, the weighted total, and
that their gradient reaches only the student."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from rirn.errors import ConfigError
from rirn.training.setup import check_loss
from rirn.training.steps import TERMS, compute_losses, train_step, uses_teacher

from .conftest import compose_config
from .step_fixtures import SMALL_MODEL, make_batch, make_nets


def _naive_kd(z_s: torch.Tensor, z_t: torch.Tensor, t: float) -> float:
    """T^2 * mean binary KL, with the logs of the sigmoids written out, in float64."""
    p, q = torch.sigmoid(z_s.double() / t), torch.sigmoid(z_t.double() / t)
    kl = q * (torch.log(q) - torch.log(p)) + (1 - q) * (torch.log1p(-q) - torch.log1p(-p))
    return t * t * kl.mean().item()


def _outputs(nets, batch, channels):
    with torch.no_grad():
        return nets.student(batch["image"][:, channels]), nets.teacher(batch["image"])


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_term_and_total_against_the_networks_outputs(temperature):
    cfg = compose_config(
        "train",
        [*SMALL_MODEL, "loss=kd", f"loss.kd_temperature={temperature}", "loss.weight.kd=0.5"],
    )
    nets = make_nets(cfg, teacher_trainable=False)
    batch = make_batch()
    out_s, out_t = _outputs(nets, batch, [2])
    terms, probs_t, _ = compute_losses(nets, batch["image"], batch["target"], [2], cfg.loss)
    # A KL is cross-entropy minus entropy: two float32 means of order 0.5 whose difference is
    # small here, so the float32 term is exact to a few 1e-7 absolute, not relative.
    assert terms["kd"].item() == pytest.approx(
        _naive_kd(out_s.logits, out_t.logits, temperature), rel=1e-5, abs=2e-6
    )
    assert probs_t is not None  # the frozen teacher ran
    assert terms["crr"].item() == terms["car"].item() == terms["adv"].item() == 0.0
    assert terms["feat"].item() == 0.0 and terms["seg_t"].item() == 0.0
    expected = terms["seg_s"].item() + 0.5 * terms["kd"].item()
    assert terms["total"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("normalize", [False, True])
def test_feature_term_against_the_networks_features(normalize):
    cfg = compose_config(
        "train", [*SMALL_MODEL, "loss=feature", f"loss.feature_norm={str(normalize).lower()}"]
    )
    nets = make_nets(cfg, teacher_trainable=False)
    batch = make_batch()
    out_s, out_t = _outputs(nets, batch, [2])
    f_s, f_t = out_s.features.double().flatten(2), out_t.features.double().flatten(2)
    if normalize:  # per (sample, channel): (f - mean) / sqrt(var + 1e-5), var with divisor N
        f_s, f_t = (
            (f - f.mean(-1, keepdim=True))
            / torch.sqrt(f.var(-1, unbiased=False, keepdim=True) + 1e-5)
            for f in (f_s, f_t)
        )
    expected = ((f_s - f_t) ** 2).mean().item()
    terms, _, _ = compute_losses(nets, batch["image"], batch["target"], [2], cfg.loss)
    assert terms["feat"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["kd"].item() == 0.0
    assert terms["total"].item() == pytest.approx(
        terms["seg_s"].item() + terms["feat"].item(), rel=1e-6
    )


def test_baselines_run_the_teacher_and_combine_with_rirn_switches():
    for loss in ("kd", "feature"):
        assert uses_teacher(compose_config("train", [f"loss={loss}"]).loss)
    assert not uses_teacher(compose_config("train", ["loss=baseline"]).loss)
    cfg = compose_config("train", [*SMALL_MODEL, "loss=kd", "loss.crr=true", "loss.feature=true"])
    nets = make_nets(cfg)
    batch = make_batch()
    terms, _, _ = compute_losses(nets, batch["image"], batch["target"], [2], cfg.loss)
    assert terms["kd"].item() > 0 and terms["feat"].item() > 0 and terms["crr"].item() > 0
    assert terms["car"].item() == terms["adv"].item() == 0.0
    w = cfg.loss.weight
    expected = (
        terms["seg_t"].item()
        + terms["seg_s"].item()
        + w.crr * terms["crr"].item()
        + w.kd * terms["kd"].item()
        + w.feature * terms["feat"].item()
    )
    assert terms["total"].item() == pytest.approx(expected, rel=1e-6)


def test_baseline_gradients_reach_only_the_student():
    cfg = compose_config("train", [*SMALL_MODEL, "loss=kd", "loss.feature=true"])
    nets = make_nets(cfg)  # a co-trained teacher: its outputs carry a graph
    batch = make_batch()
    terms, _, _ = compute_losses(nets, batch["image"], batch["target"], [2], cfg.loss)
    (terms["kd"] + terms["feat"]).backward()
    assert all(p.grad is None or not p.grad.any() for p in nets.teacher.parameters())
    assert any(p.grad is not None and p.grad.any() for p in nets.student.parameters())


def test_before_the_start_epoch_the_baselines_are_not_computed():
    cfg = compose_config("train", [*SMALL_MODEL, "loss=kd", "loss.feature=true"])
    nets = make_nets(cfg, teacher_trainable=False)
    batch = make_batch()
    terms, _, _ = compute_losses(
        nets, batch["image"], batch["target"], [2], cfg.loss, distill_scale=0.0
    )
    assert terms["kd"].item() == terms["feat"].item() == 0.0
    assert terms["total"].item() == pytest.approx(terms["seg_s"].item())


def test_train_step_logs_the_new_terms_in_order():
    cfg = compose_config("train", [*SMALL_MODEL, "loss=feature", "loss.kd=true"])
    nets = make_nets(cfg, teacher_trainable=False)
    before = [p.detach().clone() for p in nets.student.parameters()]
    losses = train_step(nets, make_batch(), [2], cfg.loss, torch.device("cpu"), None)
    assert losses.shape == (len(TERMS),) and torch.isfinite(losses).all()
    terms = dict(zip(TERMS, losses.tolist(), strict=True))
    assert terms["kd"] > 0 and terms["feat"] > 0 and terms["disc"] == 0.0
    assert any(
        not torch.equal(a, b) for a, b in zip(before, nets.student.parameters(), strict=True)
    )


def test_a_config_from_before_the_baselines_still_steps():
    """Run configs saved before issue 13 lack loss.kd/feature and their weights."""
    cfg = compose_config("train", [*SMALL_MODEL])
    loss = OmegaConf.to_container(cfg.loss)
    for key in ("kd", "feature", "kd_temperature", "feature_norm"):
        del loss[key]
    for key in ("kd", "feature"):
        del loss["weight"][key]
    old = OmegaConf.create(loss)
    assert uses_teacher(old)
    check_loss(old)
    batch = make_batch()
    ref, _, _ = compute_losses(make_nets(cfg), batch["image"], batch["target"], [2], cfg.loss)
    got, _, _ = compute_losses(make_nets(cfg), batch["image"], batch["target"], [2], old)
    assert got["kd"].item() == got["feat"].item() == 0.0
    assert got["total"].item() == ref["total"].item()  # bit for bit: the RIRN sum is unchanged


def test_bad_temperature_is_a_config_error():
    with pytest.raises(ConfigError, match="loss.kd_temperature=0"):
        check_loss(compose_config("train", ["loss=kd", "loss.kd_temperature=0"]).loss)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["loss.car_temperature=0"], "loss.car_temperature=0"),
        (["loss.car_temperature=-1"], "loss.car_temperature=-1"),
        (["loss.car_normalize=maybe"], "loss.car_normalize=maybe"),
    ],
)
def test_bad_car_relation_is_a_config_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        check_loss(compose_config("train", overrides).loss)


def test_one_epoch_kd_run_logs_the_term(tmp_path, cache_root):
    from .step_fixtures import TINY_RUN, history, train_run

    overrides = [*TINY_RUN, f"data.cache_root={cache_root}", "trainer.max_epochs=1"]
    run_dir, _ = train_run(tmp_path, [*overrides, "loss=kd", "loss.start_epoch=0"])
    (row,) = history(run_dir)
    assert row["train/kd"] > 0 and row["train/feat"] == 0.0 and row["train/crr"] == 0.0
    assert (run_dir / "tb").is_dir()
