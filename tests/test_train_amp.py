"""Mixed precision and torch.compile in the trainer (issue 4, section 5), driven on CPU.

The CUDA defaults (bf16 autocast, fp16 + grad scaler, torch.compile, channels_last_3d) are the
same code on CPU, where autocast, ``GradScaler("cpu")`` and inductor are real, so CI guards them
although it has no GPU. Expected values come from the fp32 eager path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rirn.training.checkpoint import load_checkpoint
from rirn.training.steps import TERMS, train_step

from .conftest import compose_config
from .step_fixtures import SMALL_MODEL, TINY_RUN, history, make_batch, make_nets, train_run

CPU = torch.device("cpu")


def _params(nets) -> dict[str, list[torch.Tensor]]:
    return {
        name: [p.detach().clone() for p in getattr(nets, name).parameters()]
        for name in ("teacher", "student", "discriminator")
    }


def _step(nets, cfg, amp_dtype=None, scaler=None) -> torch.Tensor:
    torch.manual_seed(1)  # same dropout masks in every compared step
    return train_step(nets, make_batch(), [2], cfg.loss, CPU, amp_dtype, scaler)


def test_grad_scaler_step_equals_plain_step():
    """Scaling the loss by 2^k and unscaling the gradients is exact in fp32, so the scaled step
    must update every network bit for bit as the unscaled one."""
    cfg = compose_config("train", SMALL_MODEL)
    plain, scaled = make_nets(cfg), make_nets(cfg)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    losses_plain = _step(plain, cfg)
    losses_scaled = _step(scaled, cfg, scaler=scaler)
    assert torch.equal(losses_plain, losses_scaled)
    for name, params in _params(plain).items():
        for a, b in zip(params, _params(scaled)[name], strict=True):
            assert torch.equal(a, b), name
    assert scaler.get_scale() == 2.0**12  # no overflow, growth only after 2000 good steps


def test_grad_scaler_overflow_skips_only_the_poisoned_optimiser():
    """An inf gradient in the student skips the teacher+student Adam step, the discriminator
    (finite gradients, own optimiser) still steps, and the scale backs off once per step."""
    cfg = compose_config("train", SMALL_MODEL)
    nets = make_nets(cfg)
    before = _params(nets)
    first = next(nets.student.parameters())
    first.register_hook(lambda g: torch.full_like(g, float("inf")))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    _step(nets, cfg, scaler=scaler)
    after = _params(nets)
    for name in ("teacher", "student"):
        assert all(torch.equal(a, b) for a, b in zip(before[name], after[name], strict=True)), name
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before["discriminator"], after["discriminator"], strict=True)
    )
    assert scaler.get_scale() == 2.0**11


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_low_precision_step_tracks_fp32(amp_dtype):
    """Autocast runs the convolutions in low precision; the loss terms (computed in fp32 by
    design) stay within a few per cent of the fp32 step from the same weights."""
    cfg = compose_config("train", SMALL_MODEL)
    ref = _step(make_nets(cfg), cfg)
    nets = make_nets(cfg)
    seen = []
    hook = nets.student.register_forward_hook(lambda m, i, o: seen.append(o.logits.dtype))
    scaler = torch.amp.GradScaler("cpu") if amp_dtype == torch.float16 else None
    low = _step(nets, cfg, amp_dtype, scaler)
    hook.remove()
    assert seen == [amp_dtype]
    assert torch.isfinite(low).all()
    for term in ("seg_t", "seg_s", "crr", "adv"):
        i = TERMS.index(term)
        assert low[i].item() == pytest.approx(ref[i].item(), rel=0.05, abs=2e-3), term


def _train(tmp_path: Path, name: str, overrides: list[str]) -> Path:
    return train_run(tmp_path, TINY_RUN + overrides, name)[0]


def test_fp16_run_checkpoints_scaler_and_resumes_it_exactly(tmp_path, cache_root):
    """``trainer.precision=16``: the grad scaler's state is checkpointed and restored, so a run
    stopped after epoch 1 and resumed ends exactly where an uninterrupted run does."""
    common = [f"data.cache_root={cache_root}", "trainer.precision=16"]
    straight = _train(tmp_path, "straight", common + ["trainer.max_epochs=2"])
    _train(tmp_path, "split", common + ["trainer.max_epochs=1"])
    first = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert first["scaler"]["scale"] > 0 and first["scaler"]["_growth_tracker"] >= 0
    resumed = _train(tmp_path, "split", common + ["trainer.max_epochs=2", "resume=true"])

    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["scaler"] == b["scaler"]
    assert a["scaler"]["_growth_tracker"] > first["scaler"]["_growth_tracker"]  # it kept counting
    for key, value in a["student"].items():
        assert torch.equal(value, b["student"][key]), key
    keep = ("epoch", "train/total", "student/mean", "lr")
    rows_a = [{k: r[k] for k in keep} for r in history(straight)]
    rows_b = [{k: r[k] for k in keep} for r in history(resumed)]
    assert rows_a == rows_b


def test_compiled_channels_last_run_matches_eager_and_resumes(tmp_path, cache_root):
    """The CUDA default ``trainer.compile=true trainer.channels_last=true`` through the whole
    trainer (training, validation, checkpoints, resume) with inductor on CPU: same losses as
    the eager run, checkpoints keyed as plain modules (loadable without compile)."""
    common = [f"data.cache_root={cache_root}", "trainer.max_epochs=1"]
    eager = _train(tmp_path, "eager", common)
    fast = ["trainer.compile=true", "trainer.channels_last=true"]
    compiled = _train(tmp_path, "compiled", common + fast)

    row_e, row_c = history(eager)[0], history(compiled)[0]
    for term in TERMS:
        assert row_c[f"train/{term}"] == pytest.approx(row_e[f"train/{term}"], rel=1e-3, abs=1e-5)
    ckpt_e = load_checkpoint(eager / "checkpoints" / "last.pt")
    ckpt_c = load_checkpoint(compiled / "checkpoints" / "last.pt")
    for net in ("teacher", "student", "discriminator"):
        assert ckpt_c[net].keys() == ckpt_e[net].keys(), net

    _train(
        tmp_path,
        "compiled",
        [f"data.cache_root={cache_root}", "trainer.max_epochs=2", "resume=true", *fast],
    )
    assert [r["epoch"] for r in history(compiled)] == [1, 2]
    assert load_checkpoint(compiled / "checkpoints" / "last.pt")["epoch"] == 2


@pytest.mark.slow
def test_two_process_gloo_with_compile_and_channels_last(tmp_path, cache_root):
    """DDP wraps each trainable network, torch.compile wraps the DDP module (DDPOptimizer
    splits graphs at bucket boundaries): the CUDA default layout under torchrun, on gloo."""
    from .conftest import REPO, run_cli

    args = [*TINY_RUN, f"data.cache_root={cache_root}", "trainer.max_epochs=1"]
    args += ["trainer.compile=true", "trainer.channels_last=true", f"hydra.run.dir={tmp_path}"]
    res = run_cli(
        ["-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m", "rirn.train"]
        + args,
        cwd=REPO,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    assert len(history(tmp_path)) == 1
