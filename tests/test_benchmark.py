"""``python -m rirn.benchmark``: config resolution, variants, timing pieces, loss agreement of
bf16 vs fp32, CAR chunked vs naive, fail-soft sections, and the command line's JSON/Markdown."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rirn.bench.car import naive_car_loss, time_car
from rirn.bench.common import StepClock, fail_soft, summarize
from rirn.bench.nets import make_batch
from rirn.bench.step import (
    REFERENCE,
    StepSetup,
    agreement,
    parse_variant,
    run_variant,
    skip_reason,
    step_section,
)
from rirn.bench.targets import markdown, targets
from rirn.benchmark import SECTIONS, resolve_config
from rirn.errors import ConfigError
from rirn.losses import car_loss
from rirn.training.steps import TERMS

from .conftest import REPO, compose_config, run_cli

CPU = torch.device("cpu")
#: A narrow U-Net: the step's code path at a fraction of the cost.
TINY_MODEL = [
    "model.widths=[8,8,16,16]",
    "model.nonlocal_channels=8",
    "model.discriminator.channels=8",
]
TINY_RUN = [
    "device=cpu",
    "crop=[16,16,16]",
    "steps=2",
    "warmup=1",
    "volume=[32,32,24]",
    "loader.cases=1",
    "loader.crops=2",
    "loader.nifti_crops=1",
    "loader_workers=[0]",
    "car.crop=[32,32,32]",
    "car.repeats=1",
    "inference.repeats=1",
    "inference.roi=[32,32,32]",
]
TOP_KEYS = {
    "schema",
    "device",
    "device_type",
    "torch",
    "date",
    "quick",
    "profile",
    "notes",
    "settings",
    "units",
    *SECTIONS,
    "targets",
}


def _cfg(overrides):
    return compose_config("benchmark", overrides)


def test_benchmark_config_uses_the_training_defaults():
    bench, train = _cfg([]), compose_config("train", [])
    assert bench.model == train.model and bench.loss == train.loss and bench.optim == train.optim


def test_profiles_fill_only_unset_keys():
    cfg, device = resolve_config(_cfg(["device=cpu", "quick=true", "steps=7"]))
    assert device == CPU and cfg.profile == "quick"
    assert cfg.steps == 7 and cfg.warmup == 2 and list(cfg.crop) == [32, 32, 32]
    assert cfg.loader.cases == 2 and cfg.car.repeats == 2 and not cfg.explicit_variants
    cfg, _ = resolve_config(_cfg(["device=cpu", "variants=[bf16]"]))
    assert cfg.profile == "cpu" and cfg.explicit_variants and list(cfg.crop) == [64, 64, 64]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("skip=[loader,nope]", "skip="),
        ("crop=[30,32,32]", "crop="),
        ("crop=[32,32]", "crop="),
        ("steps=0", "steps="),
        ("variants=[bf16+turbo]", "variants"),
        ("car.crop=[12,16,16]", "car.crop="),
        ("device=tpu", "device="),
        ("modality=t1+pd", "unknown modality"),
        ("agreement.terms=[dice]", "agreement.terms"),
    ],
)
def test_bad_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):
        resolve_config(_cfg(["device=cpu", override]))


def test_variant_names_and_skips():
    v = parse_variant("cl+compile+bf16")
    assert (v.name, v.amp_dtype, v.compile, v.channels_last) == (
        "bf16+compile+cl",
        torch.bfloat16,
        True,
        True,
    )
    assert parse_variant("fp32").name == "fp32" and REFERENCE.name == "reference"
    for bad in ("bf16+fp32", "bf16+bf16", "", "int8"):
        with pytest.raises(ConfigError):
            parse_variant(bad)
    assert "CUDA" in skip_reason(parse_variant("bf16+compile"), CPU, explicit=False)
    assert skip_reason(parse_variant("bf16+compile"), CPU, explicit=True) is None
    assert "fp16" in skip_reason(parse_variant("fp16"), CPU, explicit=False)
    assert skip_reason(parse_variant("fp16"), CPU, explicit=True) is None  # CPU grad scaler
    assert skip_reason(parse_variant("fp32"), CPU, explicit=False) is None


def test_clock_and_summary():
    clock = StepClock(CPU)
    for _ in range(3):
        with clock:
            torch.ones(8).sum()
    times = clock.times_ms()
    assert len(times) == 3 and all(t >= 0 for t in times)
    s = summarize([4.0, 1.0, 3.0, 2.0, 10.0])
    assert s["median_ms"] == 3.0 and s["min_ms"] == 1.0 and s["max_ms"] == 10.0 and s["count"] == 5


def test_agreement_flags_only_checked_terms():
    ref = {"seg_s": 1.0, "crr": 0.5, "adv": 0.0}
    out = agreement(
        {"seg_s": 1.04, "crr": 0.9, "adv": 0.0}, ref, rtol=0.05, atol=0.0, checked=["seg_s"]
    )
    assert out["ok"] and not out["terms"]["crr"]["ok"] and out["terms"]["adv"]["rel_diff"] == 0.0
    assert not agreement({"seg_s": 1.2, "crr": 0.5, "adv": 0.0}, ref, 0.05, 0.0, ["seg_s"])["ok"]


def test_batch_has_every_region():
    batch = make_batch((16, 16, 16), CPU)
    assert batch["image"].shape == (1, 4, 16, 16, 16) and batch["target"].shape == (
        1,
        3,
        16,
        16,
        16,
    )
    assert all(batch["target"][0, r].any() for r in range(3))


def test_bf16_step_agrees_with_fp32_reference_on_cpu():
    # PyTorch's default head bias: with rirn's prior (p = 0.12) the untrained teacher predicts
    # no region, so the mask filter leaves CRR nothing to compare at the first step.
    cfg = _cfg(["device=cpu", *TINY_MODEL, "model.head_prior=null"])
    setup = StepSetup(cfg.model, cfg.loss, cfg.optim, [2], CPU, (16, 16, 16), steps=1, warmup=1)
    ref = run_variant(REFERENCE, setup)
    bf16 = run_variant(parse_variant("bf16"), setup)
    assert ref["status"] == bf16["status"] == "ok" and not bf16["fused_adam"]
    assert set(ref["first_step_losses"]) == set(TERMS) and bf16["losses_finite"]
    # Full RIRN: every term on except the knowledge-transfer baselines (loss.kd, loss.feature).
    first = ref["first_step_losses"]
    assert all(v > 0 for k, v in first.items() if k not in ("total", "kd", "feat"))
    assert first["kd"] == first["feat"] == 0.0
    out = agreement(
        bf16["first_step_losses"], ref["first_step_losses"], 0.05, 1e-3, ["seg_t", "seg_s"]
    )
    assert out["ok"], out
    # The other terms are not required to agree, but at this size they do closely.
    assert all(t["abs_diff"] <= 1e-3 + 0.05 * abs(t["reference"]) for t in out["terms"].values())


def test_failing_variant_is_reported_and_the_rest_continue(monkeypatch):
    import rirn.bench.step as step_mod

    losses = dict.fromkeys(TERMS, 0.5)

    def fake(variant, setup):  # the orchestration is under test, not the step
        if variant.precision == "bf16":
            raise RuntimeError("boom")
        median = 20.0 if variant.label == "reference" else 10.0
        return {
            "status": "ok",
            "median_ms": median,
            "first_step_losses": losses,
            "losses_finite": True,
        }

    monkeypatch.setattr(step_mod, "run_variant", fake)
    monkeypatch.setattr(step_mod, "initial_state", lambda *a: {"fake": {}})
    cfg = _cfg(["device=cpu", *TINY_MODEL])
    setup = StepSetup(cfg.model, cfg.loss, cfg.optim, [2], CPU, (16, 16, 16), steps=1, warmup=1)
    out = step_section(setup, ["bf16", "fp32", "fp32+compile"], True, 0.05, 1e-3, ["seg_s"])
    assert (
        out["variants"]["bf16"]["status"] == "failed" and "boom" in out["variants"]["bf16"]["error"]
    )
    assert out["variants"]["fp32"]["same_as"] == "reference"  # CPU: no fused Adam, same step
    assert out["variants"]["fp32+compile"]["speedup_vs_reference"] == 2.0
    assert out["best"] == "fp32+compile" and out["variants"]["fp32+compile"]["agreement"]["ok"]
    result = {
        "device": "cpu",
        "device_type": "cpu",
        "torch": "x",
        "date": "d",
        "profile": "cpu",
        "step": {
            **out,
            "crop": [16] * 3,
            "modality": "t1ce",
            "steps": 1,
            "warmup": 1,
            "timing": "t",
        },
        "loader": {"status": "skipped", "reason": "skip"},
        "inference": {"status": "failed", "error": "E"},
        "car": {"status": "pending"},
    }
    result["targets"] = targets(result)
    text = markdown(result)
    assert "FAILED: RuntimeError: boom" in text and "| reference |" in text
    assert result["targets"]["step_median_ms"]["pass"] is None  # never judged on a CPU


def test_fail_soft_keeps_the_message():
    def broken():
        raise ValueError("bad thing")

    out = fail_soft("x", broken, CPU)
    assert out["status"] == "failed" and out["error"] == "ValueError: bad thing"
    assert "broken" in out["traceback_tail"]


def test_naive_car_matches_chunked_values_and_gradients():
    gen = torch.Generator().manual_seed(0)
    q_t, k_t, q_s, k_s = (
        torch.randn(2, 8, 100, generator=gen, dtype=torch.float64) for _ in range(4)
    )
    grads = []
    for fn in (
        lambda *a: car_loss(*a, channels=16, chunk_size=7),
        lambda *a: naive_car_loss(*a, 16),
    ):
        q, k = q_s.clone().requires_grad_(), k_s.clone().requires_grad_()
        loss = fn(q_t, k_t, q, k)
        loss.backward()
        grads.append((loss.detach(), q.grad, k.grad))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    point = time_car(64, "chunked", 8, 16, 16, CPU, repeats=2)
    assert point["status"] == "ok" and point["count"] == 2 and math.isfinite(point["loss"])


def _check_output(path, quick: bool):
    result = json.loads(path.read_text())
    assert set(result) >= TOP_KEYS
    assert (
        result["device_type"] == "cpu"
        and result["quick"] is quick
        and result["torch"] == torch.__version__
    )
    step = result["step"]
    assert (
        step["reference"]["status"] == "ok"
        and step["reference"]["count"] == result["settings"]["steps"]
    )
    assert step["variants"]["bf16+compile"]["status"] == "skipped" and step["best"]
    assert set(step["reference"]["first_step_losses"]) == set(TERMS)
    assert any("not the paper's 160x192x128" in n for n in result["notes"])
    assert {r["source"] for r in result["loader"]["rows"]} == {"cache", "nifti"}
    assert all(r["status"] == "ok" and r["crops_per_s"] > 0 for r in result["loader"]["rows"])
    assert result["inference"]["status"] == "ok" and result["inference"]["s_per_case"] > 0
    assert [p["n"] for p in result["car"]["points"]][:2] == [
        math.prod(result["car"]["crop"]) // 512
    ] * 2
    assert all(p["status"] == "ok" for p in result["car"]["points"])
    assert set(result["targets"]) == {
        "step_median_ms",
        "peak_memory_gb",
        "loader_vs_step_rate",
        "inference_s_per_case",
    }
    assert all(t["pass"] is None for t in result["targets"].values())
    md = path.with_suffix(".md").read_text()
    assert "## Co-training step" in md and "## Targets" in md
    return result


def test_cli_tiny_run_writes_json_and_markdown(tmp_path):
    out = tmp_path / "bench" / "result.json"
    args = [
        "-m",
        "rirn.benchmark",
        "quick=true",
        *TINY_RUN,
        *TINY_MODEL,
        f"loader.cache_root={tmp_path}",
        f"output={out}",
    ]
    res = run_cli(args, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    _check_output(out, quick=True)
    assert "| reference |" in res.stdout and "[benchmark]" in res.stderr


def test_cli_bad_key_is_one_line(tmp_path):
    res = run_cli(
        ["-m", "rirn.benchmark", "device=cpu", "skip=[gpu]", f"output={tmp_path}/x.json"], cwd=REPO
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("error: skip=") and not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_cli_quick_run(tmp_path):
    out = tmp_path / "quick.json"
    res = run_cli(
        [
            "-m",
            "rirn.benchmark",
            "quick=true",
            "device=cpu",
            f"loader.cache_root={tmp_path}",
            f"output={out}",
        ],
        cwd=REPO,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = _check_output(out, quick=True)
    assert result["step"]["crop"] == [32, 32, 32] and result["step"]["steps"] == 5
