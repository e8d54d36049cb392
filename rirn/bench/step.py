"""Timing of one co-training step (teacher + student + discriminator, forward + backward +
Adam), i.e. exactly :func:`rirn.training.steps.train_step` with the loss config it is given.

A *variant* is a way of running that same step: precision (``fp32``, ``bf16`` or ``fp16``
autocast), ``compile`` (``torch.compile``, default mode, of the three networks) and ``cl``
(``channels_last_3d`` for both U-Nets and their input), written as ``+``-joined tokens, e.g.
``bf16+compile+cl``. Every variant uses Adam as the trainer does (``optim.fused``: fused
kernels on CUDA). The *reference* is the plain eager fp32 step with the default (foreach) Adam.

All variants start from the same weights and the same batch, and the random generator is
reseeded before their first step (same dropout masks; compiled graphs draw them with eager's
generator, see :func:`run_variant`), so the first step's loss terms are comparable across
variants: :func:`agreement` compares them with the reference's.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field

import torch

from rirn.bench.common import (
    StepClock,
    cpu_has_native_bf16,
    log,
    memory_report,
    reset_peak_memory,
    summarize,
    synchronize,
)
from rirn.bench.nets import build_step_nets, initial_state, make_batch
from rirn.errors import ConfigError
from rirn.training.steps import TERMS, train_step

__all__ = [
    "DEFAULT_VARIANTS",
    "REFERENCE",
    "StepSetup",
    "Variant",
    "agreement",
    "parse_variant",
    "run_variant",
    "skip_reason",
]

#: Variants timed when ``variants`` is not given (CPU runs skip the CUDA-only ones).
DEFAULT_VARIANTS: tuple[str, ...] = (
    "fp32",
    "bf16",
    "fp32+compile",
    "bf16+compile",
    "bf16+cl",
    "bf16+compile+cl",
)
_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_FLAGS = {"compile": "compile", "cl": "channels_last", "channels_last": "channels_last"}


@dataclass(frozen=True)
class Variant:
    """How a step is run; ``fused_adam=None`` means the trainer's choice (``optim.fused``)."""

    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    fused_adam: bool | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return "+".join([self.precision] + ["compile"] * self.compile + ["cl"] * self.channels_last)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return _PRECISIONS[self.precision]


#: Plain eager fp32 with PyTorch's default Adam: what every speed-up is measured against.
REFERENCE = Variant("fp32", fused_adam=False, label="reference")


def parse_variant(text: str) -> Variant:
    """``"bf16+compile+cl"`` -> :class:`Variant`; tokens in any order, one precision at most.

    Raises:
        ConfigError: an unknown or repeated token (names the ``variants`` key).
    """
    tokens = [t.strip().lower() for t in str(text).split("+") if t.strip()]
    precisions = [t for t in tokens if t in _PRECISIONS]
    unknown = [t for t in tokens if t not in _PRECISIONS and t not in _FLAGS]
    if unknown or len(precisions) > 1 or len(set(tokens)) != len(tokens) or not tokens:
        raise ConfigError(
            f"variants: cannot read {text!r}; use '+'-joined tokens: one of "
            f"{', '.join(_PRECISIONS)} and optionally compile, cl (e.g. bf16+compile+cl)"
        )
    flags = {_FLAGS[t] for t in tokens if t in _FLAGS}
    return Variant(
        precision=precisions[0] if precisions else "fp32",
        compile="compile" in flags,
        channels_last="channels_last" in flags,
    )


def skip_reason(variant: Variant, device: torch.device, explicit: bool) -> str | None:
    """Why ``variant`` is not timed on ``device``, or None. ``explicit``: the user listed it."""
    if device.type == "cuda" or explicit:
        return None
    if variant.precision == "fp16":
        return "CPU run: fp16 (autocast + grad scaler) is timed on CUDA only (list it to force it)"
    if variant.compile:
        return "CPU run: torch.compile is timed on CUDA only (list it in variants= to force it)"
    if variant.channels_last:
        return "CPU run: channels_last_3d is timed on CUDA only (list it in variants= to force it)"
    if variant.precision == "bf16" and not cpu_has_native_bf16():
        return (
            "CPU without native bf16 (no AVX512-BF16/AMX): autocast would emulate it several "
            "times slower than fp32 (list it in variants= to force it)"
        )
    return None


@dataclass
class StepSetup:
    """Everything a variant's measurement shares with the others."""

    model_cfg: object
    loss_cfg: object
    optim_cfg: object
    student_channels: list[int]
    device: torch.device
    crop: tuple[int, int, int]
    steps: int
    warmup: int
    seed: int = 0
    state: dict = field(default_factory=dict)
    batch: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.state:
            self.state = initial_state(self.model_cfg, len(self.student_channels), self.seed)
        if not self.batch:
            self.batch = make_batch(self.crop, self.device, self.seed)


def _host_syncs(step) -> tuple[int, list[str]]:
    """Synchronising CUDA calls made by one ``step()`` (``torch.cuda.set_sync_debug_mode``):
    their number and the distinct ``file:line`` sites that made them (first five)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    sites = list(dict.fromkeys(f"{w.filename}:{w.lineno}" for w in syncs))
    return len(syncs), sites[:5]


def run_variant(variant: Variant, setup: StepSetup) -> dict:
    """Build the nets for ``variant``, run ``warmup`` then ``steps`` timed steps.

    Returns a dict with ``status="ok"``, the timing summary (``median_ms`` ...), ``times_ms``,
    ``warmup_s`` (includes compilation), peak memory, ``first_step_losses`` (the terms of the
    first step, by :data:`TERMS`), ``losses_finite`` and, on CUDA, ``host_syncs_in_step`` (one
    extra step run under ``torch.cuda.set_sync_debug_mode("warn")``) with ``host_sync_sites``.
    """
    device = setup.device
    scaler = torch.amp.GradScaler(device.type) if variant.precision == "fp16" else None
    nets = build_step_nets(
        setup.model_cfg,
        setup.loss_cfg,
        setup.optim_cfg,
        len(setup.student_channels),
        device,
        state=setup.state,
        compile=variant.compile,
        channels_last=variant.channels_last,
        fused=variant.fused_adam,
    )
    for module in (nets.teacher, nets.student, nets.discriminator):
        if module is not None:
            module.train()

    def step() -> torch.Tensor:
        return train_step(
            nets,
            setup.batch,
            setup.student_channels,
            setup.loss_cfg,
            device,
            variant.amp_dtype,
            scaler,
            variant.channels_last,
        )

    # Inductor's own RNG would draw other dropout masks than eager; the fallback keeps them
    # identical for the loss comparison and costs nothing (the masks are (B, C, 1, 1, 1)).
    patch = contextlib.nullcontext()
    if variant.compile:
        from torch._inductor import config as inductor_config

        patch = inductor_config.patch(fallback_random=True)
    with patch:
        torch.manual_seed(setup.seed)
        start = time.perf_counter()
        log(
            f"step {variant.name}: warm-up {setup.warmup} step(s)"
            + (" (compiling)" if variant.compile else "")
        )
        first = step().cpu()
        for _ in range(setup.warmup - 1):
            step()
        synchronize(device)
        warmup_s = time.perf_counter() - start
        baseline = reset_peak_memory(device)
        clock, losses = StepClock(device), []
        for _ in range(setup.steps):
            with clock:
                losses.append(step())
        times = clock.times_ms()
        memory = memory_report(device, baseline)
        finite = bool(torch.isfinite(torch.stack(losses)).all())
        syncs, sites = _host_syncs(step) if device.type == "cuda" else (None, [])
    result = {
        "status": "ok",
        "precision": variant.precision,
        "compile": variant.compile,
        "channels_last": variant.channels_last,
        "fused_adam": bool(nets.opt_main.defaults.get("fused")),
        **summarize(times),
        "times_ms": [round(t, 3) for t in times],
        "warmup_s": round(warmup_s, 2),
        **memory,
        "first_step_losses": dict(zip(TERMS, first.tolist(), strict=True)),
        "losses_finite": finite,
        "host_syncs_in_step": syncs,
        "host_sync_sites": sites,
    }
    log(f"step {variant.name}: median {result['median_ms']:.1f} ms over {setup.steps} steps")
    return result


def agreement(losses: dict, reference: dict, rtol: float, atol: float, checked) -> dict:
    """Compare first-step loss terms with the reference's.

    Every term is reported (``value``, ``reference``, ``abs_diff``, ``rel_diff``); the terms in
    ``checked`` must satisfy ``abs_diff <= atol + rtol * |reference|`` for ``ok``.
    """
    terms = {}
    for name, ref in reference.items():
        value = losses[name]
        diff = abs(value - ref)
        terms[name] = {
            "value": value,
            "reference": ref,
            "abs_diff": diff,
            "rel_diff": diff / abs(ref) if ref else (0.0 if diff == 0 else None),
            "checked": name in checked,
            "ok": diff <= atol + rtol * abs(ref) and math.isfinite(value),
        }
    ok = all(t["ok"] for t in terms.values() if t["checked"])
    return {"ok": ok, "rtol": rtol, "atol": atol, "checked": list(checked), "terms": terms}


def step_section(
    setup: StepSetup, variants: list[str], explicit: bool, rtol: float, atol: float, checked
) -> dict:
    """The reference, then every variant (fail-soft), each compared with the reference.

    Returns ``{"reference": {...}, "variants": {name: {...}}, "best": name}``; ``best`` is the
    fastest variant whose losses agree with the reference (the reference if none does), and
    every successful variant carries ``speedup_vs_reference`` (reference median / its median).
    """
    from rirn.bench.common import fail_soft

    device = setup.device
    reference = fail_soft("step reference", lambda: run_variant(REFERENCE, setup), device)
    results: dict[str, dict] = {}
    ref_losses = reference.get("first_step_losses")
    for text in variants:
        variant = parse_variant(text)
        reason = skip_reason(variant, device, explicit)
        if reason:
            log(f"step {variant.name}: skipped ({reason})")
            results[variant.name] = {"status": "skipped", "reason": reason}
            continue
        if (
            _same_run(variant, REFERENCE, device, setup.optim_cfg)
            and reference.get("status") == "ok"
        ):
            # On CPU plain fp32 *is* the reference (no fused Adam); timing it twice adds noise.
            results[variant.name] = {**reference, "same_as": "reference"}
        else:
            results[variant.name] = fail_soft(
                f"step {variant.name}", lambda v=variant: run_variant(v, setup), device
            )
    ok = {}
    for name, res in results.items():
        if res.get("status") != "ok":
            continue
        if ref_losses is not None:
            res["agreement"] = agreement(res["first_step_losses"], ref_losses, rtol, atol, checked)
            res["speedup_vs_reference"] = round(reference["median_ms"] / res["median_ms"], 3)
        if res.get("agreement", {}).get("ok") and res["losses_finite"]:
            ok[name] = res["median_ms"]
    best = min(ok, key=ok.get) if ok else ("reference" if reference.get("status") == "ok" else None)
    return {"reference": reference, "variants": results, "best": best}


def _same_run(a: Variant, b: Variant, device: torch.device, optim_cfg) -> bool:
    def fused(v: Variant) -> bool:
        if v.fused_adam is not None:
            return v.fused_adam
        return device.type == "cuda" if optim_cfg.fused == "auto" else bool(optim_cfg.fused)

    keys = ("precision", "compile", "channels_last")
    return all(getattr(a, k) == getattr(b, k) for k in keys) and fused(a) == fused(b)
