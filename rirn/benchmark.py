"""``python -m rirn.benchmark`` — measure training, data loading and inference speed here.

Sections (each can be left out with ``skip=[...]``; a part that fails is reported as failed
with its error and the rest goes on):

* ``step``: one co-training step exactly as the trainer runs it
  (:func:`rirn.training.steps.train_step`, the ``loss`` config's terms: full RIRN by default),
  batch 1, as a plain eager fp32 *reference* and as each *variant* (bf16 autocast,
  ``torch.compile``, ``channels_last_3d``; see :mod:`rirn.bench.step`). Median step time, peak
  memory, speed-up over the reference, and the first step's loss terms compared with the
  reference's (same weights, batch and dropout masks);
* ``loader``: crops/s of ``TrainDataset`` + ``DataLoader`` from the cache and from ``.nii.gz``
  per worker count (:mod:`rirn.bench.loader`);
* ``inference``: sliding-window inference of the student on one whole volume (s/case);
* ``car``: CAR loss forward + backward, chunked vs naive (:mod:`rirn.bench.car`).

Sizes come from a *profile* (``configs/benchmark.yaml``): ``cuda`` (the paper's 160x192x128
crop, 240x240x155 volumes), ``cpu`` (smaller) or ``quick`` (``quick=true``: minutes on a laptop
CPU); every size key overrides its profile value. Output: ``output`` (JSON; top-level
``device``, ``torch``, ``date``, ``profile``, ``notes``, ``settings``, ``step``, ``loader``,
``inference``, ``car``, ``targets``) and the same path with ``.md``, also printed.

Examples::

    python -m rirn.benchmark                                  # full run (H100: ~7 min)
    python -m rirn.benchmark quick=true output=/tmp/quick.json
    python -m rirn.benchmark variants=[bf16,bf16+compile+cl] skip=[loader,car] steps=50
    python -m rirn.benchmark device=cpu crop=[32,32,32] steps=3 warmup=1 skip=[loader,car,inference]
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rirn.bench.common import log, machine_info
from rirn.bench.targets import TRAINING_STEPS, markdown, targets
from rirn.config import CONFIG_DIR
from rirn.errors import ConfigError
from rirn.training.steps import TERMS

__all__ = ["SECTIONS", "resolve_config", "run_benchmark", "write_outputs"]

SECTIONS: tuple[str, ...] = ("step", "loader", "inference", "car")
PAPER_CROP: tuple[int, int, int] = (160, 192, 128)
MIN_STEPS = 20


def _device(name) -> torch.device:
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _fill(dst: dict, profile: dict) -> None:
    for key, value in profile.items():
        if isinstance(value, dict):
            _fill(dst.setdefault(key, {}), value)
        elif dst.get(key) is None:
            dst[key] = value


def _ints(cfg, key: str, n: int | None = None, minimum: int = 0) -> list[int]:
    value = OmegaConf.select(cfg, key)
    values = (
        list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
    )
    if (
        any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values)
        or (n is not None and len(values) != n)
        or not values
    ):
        what = f"{n} integers" if n else "integers"
        raise ConfigError(f"{key}={value} must be {what} >= {minimum}")
    return values


def resolve_config(cfg: DictConfig) -> tuple[DictConfig, torch.device]:
    """Fill every null size key from the active profile and check the result.

    Returns ``(resolved config without profiles, device)``. The profile is ``quick`` when
    ``quick=true``, else ``cuda`` or ``cpu`` by the device.

    Raises:
        ConfigError: a bad key, naming it (device, skip, crop, variants, ...).
    """
    from rirn.bench.step import parse_variant
    from rirn.data.modalities import parse_modalities

    device = _device(cfg.device)
    profile = "quick" if cfg.quick else device.type
    plain = OmegaConf.to_container(cfg, resolve=True)
    profiles = plain.pop("profiles")
    if profile not in profiles:
        raise ConfigError(f"profiles.{profile} is missing from the benchmark config")
    plain["explicit_variants"] = plain.get("variants") is not None
    _fill(plain, profiles[profile])
    plain["profile"] = profile
    out = OmegaConf.create(plain)
    unknown = sorted(set(out.skip) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"skip={list(out.skip)}: unknown section(s) {unknown}; valid: {list(SECTIONS)}"
        )
    parse_modalities(out.modality)
    _ints(out, "steps", 1, 1)
    _ints(out, "warmup", 1, 1)
    _ints(out, "loader_workers")
    _ints(out, "volume", 3, 16)
    divisor = max(2 ** (len(out.model.widths) - 1), int(out.model.nonlocal_scale or 1))
    for key in ("crop", "car.crop"):
        if any(c % divisor for c in _ints(out, key, 3, 1)):
            raise ConfigError(
                f"{key}={list(OmegaConf.select(out, key))} must be divisible by {divisor}"
            )
    if any(c % s for c in out.car.crop for s in _ints(out, "car.scales", None, 1)):
        raise ConfigError(
            f"car.crop={list(out.car.crop)} must be divisible by every car.scales entry"
        )
    for text in out.variants or []:
        parse_variant(text)
    bad_terms = sorted(set(out.agreement.terms) - set(TERMS))
    if bad_terms:
        raise ConfigError(f"agreement.terms: unknown {bad_terms}; valid: {list(TERMS)}")
    if str(out.inference.precision) not in ("auto", "32", "bf16"):
        raise ConfigError(f"inference.precision={out.inference.precision} must be auto, 32 or bf16")
    return out, device


def _notes(cfg: DictConfig, device: torch.device) -> list[str]:
    notes = []
    if tuple(cfg.crop) != PAPER_CROP:
        notes.append(f"step crop {'x'.join(map(str, cfg.crop))}, not the paper's 160x192x128")
    if cfg.steps < MIN_STEPS:
        notes.append(f"{cfg.steps} timed steps per variant (a full run times >= {MIN_STEPS})")
    if tuple(cfg.volume) != (240, 240, 155):
        notes.append(f"volumes of {'x'.join(map(str, cfg.volume))}, not BraTS' 240x240x155")
    if device.type != "cuda":
        notes.append("CPU run: targets refer to one H100 and are not judged here")
    return notes


def _step(cfg: DictConfig, device: torch.device) -> dict:
    from rirn.bench.step import DEFAULT_VARIANTS, StepSetup, step_section
    from rirn.data.modalities import channel_indices, parse_modalities

    setup = StepSetup(
        cfg.model,
        cfg.loss,
        cfg.optim,
        channel_indices(parse_modalities(cfg.modality)),
        device,
        tuple(cfg.crop),
        int(cfg.steps),
        int(cfg.warmup),
        int(cfg.seed),
    )
    variants = list(cfg.variants) if cfg.explicit_variants else list(DEFAULT_VARIANTS)
    agree = cfg.agreement
    out = step_section(
        setup,
        variants,
        cfg.explicit_variants,
        float(agree.rtol),
        float(agree.atol),
        list(agree.terms),
    )
    timing = (
        "CUDA events around each step, one synchronize after the last"
        if device.type == "cuda"
        else "perf_counter around each step"
    )
    hours = {}
    for name in ("reference", out["best"]):
        row = out["reference"] if name == "reference" else out["variants"].get(name, {})
        if row.get("median_ms"):
            hours[name] = round(row["median_ms"] * TRAINING_STEPS / 3.6e6, 2)
    return {
        "crop": list(cfg.crop),
        "batch_size": 1,
        "modality": str(cfg.modality),
        "steps": int(cfg.steps),
        "warmup": int(cfg.warmup),
        "loss_terms": {k: bool(cfg.loss[k]) for k in ("crr", "car", "adv")}
        | {"car_normalize": bool(cfg.loss.car_normalize)}
        | {"car_temperature": float(cfg.loss.car_temperature)},
        "timing": timing,
        "batch_note": "a fixed batch already on the device; the loader is timed apart",
        **out,
        "implied_hours": hours,
    }


def _inference(cfg: DictConfig, device: torch.device) -> dict:
    from rirn.bench.inference_time import inference_section
    from rirn.data.modalities import parse_modalities

    precision = str(cfg.inference.precision)
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "32"
    return inference_section(
        cfg.model,
        len(parse_modalities(cfg.modality)),
        list(cfg.volume),
        list(cfg.inference.roi or cfg.crop),
        float(cfg.inference.overlap),
        int(cfg.inference.batch_size),
        torch.bfloat16 if precision == "bf16" else None,
        device,
        int(cfg.inference.repeats),
        int(cfg.seed),
    )


def _car(cfg: DictConfig, device: torch.device) -> dict:
    from rirn.bench.car import car_section

    scale = int(cfg.model.nonlocal_scale or 1)
    return car_section(
        list(cfg.car.crop),
        list(cfg.car.scales),
        embed=int(cfg.model.nonlocal_channels),
        channels=int(cfg.model.widths[int(math.log2(scale))]),
        chunk_size=int(cfg.car.chunk_size),
        device=device,
        repeats=int(cfg.car.repeats),
        seed=int(cfg.seed),
    )


def _loader(cfg: DictConfig, device: torch.device) -> dict:
    from rirn.bench.loader import loader_section

    lc = cfg.loader
    return loader_section(
        lc.cache_root,
        int(lc.cases),
        list(cfg.volume),
        list(cfg.crop),
        list(cfg.loader_workers),
        int(lc.crops),
        int(lc.nifti_crops),
        device,
        int(cfg.seed),
        int(lc.preprocess_workers),
        None if str(lc.pin_memory) == "auto" else bool(lc.pin_memory),
    )


def run_benchmark(cfg: DictConfig, on_update: Callable[[dict], None] | None = None) -> dict:
    """Run every section not in ``cfg.skip`` and return the result (see the module docstring).

    Args:
        cfg: the composed ``benchmark`` config (profiles still in it).
        on_update: called with the result so far after each section (the command line writes
            the files each time, so an interrupted run still leaves what it measured).
    """
    from rirn.bench.common import fail_soft

    cfg, device = resolve_config(cfg)
    torch.manual_seed(int(cfg.seed))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # As rirn.train sets them: the trainer's speed is what is measured.
        torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    result = {
        "schema": "rirn.benchmark/1",
        **machine_info(device),
        "quick": bool(cfg.quick),
        "profile": cfg.profile,
        "units": {"time": "ms unless named _s", "memory": "GB = 1e9 bytes"},
        "notes": _notes(cfg, device),
        "settings": OmegaConf.to_container(cfg, resolve=True),
    }
    log(f"{result['device']}, torch {result['torch']}, profile {cfg.profile}")
    # The step first: it is the figure that matters most if a later part runs out of time.
    runners = {"step": _step, "inference": _inference, "car": _car, "loader": _loader}
    sections = {}
    for name, runner in runners.items():
        if name in cfg.skip:
            sections[name] = {"status": "skipped", "reason": f"skip={list(cfg.skip)}"}
        else:
            sections[name] = fail_soft(name, lambda r=runner: r(cfg, device), device)
        if on_update is not None:
            on_update(_assemble(result, sections))
    return _assemble(result, sections)


def _assemble(head: dict, sections: dict) -> dict:
    pending = {"status": "pending", "reason": "not run yet"}
    result = {**head, **{name: sections.get(name, pending) for name in SECTIONS}}
    result["targets"] = targets(result)
    return result


def _finite(obj):
    """JSON has no NaN/Infinity: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_outputs(result: dict, output: str | Path) -> tuple[Path, Path, str]:
    """Write ``output`` (JSON) and ``output`` with ``.md``; returns both paths and the Markdown."""
    path = Path(output).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(result), indent=2, allow_nan=False) + "\n")
    text = markdown(result)
    md = path.with_suffix(".md")
    md.write_text(text)
    return path, md, text


def main() -> None:
    import hydra

    from rirn.errors import cli_errors

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="benchmark")
    @cli_errors
    def task(cfg: DictConfig) -> None:
        result = run_benchmark(cfg, on_update=lambda partial: write_outputs(partial, cfg.output))
        path, md, text = write_outputs(result, cfg.output)
        print(text, flush=True)
        log(f"wrote {path} and {md}")

    task()


if __name__ == "__main__":
    main()
