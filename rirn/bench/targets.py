"""Targets with pass/fail flags and the Markdown rendering of a benchmark result.

The targets are the project's goals for one H100 (reference.md): a co-training step median of
at most 150 ms at 160x192x128, at most 12 GB peak memory, a loader that delivers at least 3x the
step rate, and at most 1 s of sliding-window inference per 240x240x155 case. Flags are set on
CUDA runs only (``pass: null`` elsewhere: a CPU says nothing about them).

This module owns the benchmark's table only (``python -m rirn.benchmark``: speed, memory,
targets), not a Dice table: segmentation tables are :mod:`rirn.evaluation.summary`
(``python -m rirn.evaluate``) and :mod:`rirn.evaluation.report_tables` (``python -m
rirn.report``); docs/architecture.md has the map of which module owns which table.
"""

from __future__ import annotations

__all__ = ["TARGETS", "TRAINING_STEPS", "markdown", "targets"]

#: Steps of the paper's schedule used for the implied training time (300 epochs).
TRAINING_STEPS = 57_000

#: name -> (comparison, threshold, what it is)
TARGETS: dict[str, tuple[str, float, str]] = {
    "step_median_ms": ("<=", 150.0, "co-training step median, fastest agreeing variant"),
    "peak_memory_gb": ("<=", 12.0, "peak CUDA memory of that step"),
    "loader_vs_step_rate": (">=", 3.0, "cache crops/s (best worker count) / steps/s"),
    "inference_s_per_case": ("<=", 1.0, "sliding-window inference, s per case"),
}


def _best_step(result: dict) -> dict | None:
    step = result.get("step") or {}
    best = step.get("best")
    if best is None:
        return None
    return step["reference"] if best == "reference" else step["variants"].get(best)


def targets(result: dict) -> dict:
    """``{name: {"value", "target", "op", "pass", "what"}}`` for :data:`TARGETS`."""
    best = _best_step(result)
    median = best.get("median_ms") if best else None
    loader = (result.get("loader") or {}).get("best_cache") or {}
    rate = loader.get("crops_per_s")
    inference = result.get("inference") or {}
    values = {
        "step_median_ms": median,
        "peak_memory_gb": best.get("peak_gb") if best else None,
        "loader_vs_step_rate": round(rate * median / 1e3, 2) if rate and median else None,
        "inference_s_per_case": inference.get("s_per_case"),
    }
    on_cuda = result.get("device_type") == "cuda"
    out = {}
    for name, (op, threshold, what) in TARGETS.items():
        value = values[name]
        passed = None
        if on_cuda and value is not None:
            passed = value <= threshold if op == "<=" else value >= threshold
        out[name] = {"value": value, "op": op, "target": threshold, "pass": passed, "what": what}
    return out


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _size(shape) -> str:
    return "x".join(str(s) for s in shape)


def _status(row: dict) -> str:
    status = row.get("status", "-")
    if status in ("skipped", "pending"):
        return f"{status}: {row.get('reason', '')}"
    if status == "failed":
        return f"FAILED: {row.get('error', '')[:160]}"
    return status


def _step_lines(step: dict) -> list[str]:
    mem_key = "peak_gb" if "peak_gb" in (step.get("reference") or {}) else "peak_rss_gb"
    lines = [
        "## Co-training step (teacher + student + discriminator, fwd + bwd + Adam)",
        "",
        f"crop {_size(step['crop'])}, batch 1, student {step['modality']}; median of "
        f"{step['steps']} steps after {step['warmup']} warm-up; {step['timing']}",
        "",
        f"| variant | median ms | p90 ms | {mem_key.replace('_', ' ')} | speed-up | "
        "first-step losses agree | host syncs | status |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    rows = {"reference": step["reference"], **step["variants"]}
    for name, row in rows.items():
        agree = row.get("agreement", {})
        worst = max(
            (t["rel_diff"] or 0.0 for t in agree.get("terms", {}).values() if t["checked"]),
            default=None,
        )
        agree_text = "-" if not agree else f"{_fmt(agree['ok'])} (max rel {worst or 0.0:.1e})"
        lines.append(
            f"| {name} | {_fmt(row.get('median_ms'))} | {_fmt(row.get('p90_ms'))} | "
            f"{_fmt(row.get(mem_key), 2)} | {_fmt(row.get('speedup_vs_reference'), 2)} | "
            f"{agree_text} | {_fmt(row.get('host_syncs_in_step'))} | {_status(row)} |"
        )
    hours = step.get("implied_hours")
    if hours:
        lines += [
            "",
            f"{TRAINING_STEPS:,} steps: " + ", ".join(f"{k} {v:.1f} h" for k, v in hours.items()),
        ]
    return lines


def _loader_lines(loader: dict) -> list[str]:
    lines = [
        "## Data loader (TrainDataset + DataLoader, batch 1)",
        "",
        f"{loader['cases']} synthetic case(s) of {_size(loader['volume'])}, crop "
        f"{_size(loader['crop'])}, pin_memory {loader.get('pin_memory')}; {loader['note']}",
        "",
        "| source | workers | crops/s | MB/s | status |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in loader["rows"]:
        lines.append(
            f"| {row['source']} | {row['workers']} | {_fmt(row.get('crops_per_s'), 2)} | "
            f"{_fmt(_mbs(row), 0)} | {_status(row)} |"
        )
    return lines


def _mbs(row: dict) -> float | None:
    if row.get("crops_per_s") is None or row.get("mb_per_crop") is None:
        return None
    return row["crops_per_s"] * row["mb_per_crop"]


def _inference_lines(inf: dict) -> list[str]:
    return [
        "## Sliding-window inference (student, one case)",
        "",
        "| volume | roi | windows | precision | s/case | status |",
        "| --- | --- | ---: | --- | ---: | --- |",
        f"| {_size(inf['volume'])} | {_size(inf['roi'])} | {inf['windows']} | {inf['precision']} | "
        f"{_fmt(inf.get('s_per_case'), 3)} | {_status(inf)} |",
    ]


def _car_lines(car: dict) -> list[str]:
    lines = [
        "## CAR loss, forward + backward",
        "",
        f"scales of {_size(car['crop'])}, C' = {car['embed_channels']}, "
        f"chunk {car['chunk_size']} rows",
        "",
        "| scale | N | method | median ms | extra memory GB | status |",
        "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for p in car["points"]:
        lines.append(
            f"| {p['scale']} | {p['n']} | {p['method']} | {_fmt(p.get('median_ms'))} | "
            f"{_fmt(p.get('extra_gb'), 3)} | {_status(p)} |"
        )
    return lines


def markdown(result: dict) -> str:
    """The whole result as Markdown: header, one table per section, targets."""
    lines = [
        f"# rirn benchmark: {result['device']}",
        "",
        f"torch {result['torch']}, {result['date']}, profile {result['profile']}",
    ]
    lines += [f"- note: {n}" for n in result.get("notes", [])]
    renderers = {
        "step": _step_lines,
        "loader": _loader_lines,
        "inference": _inference_lines,
        "car": _car_lines,
    }
    for name, render in renderers.items():
        section = result.get(name) or {}
        lines.append("")
        if section.get("status") in ("skipped", "failed", "pending"):
            lines.append(f"## {name}: {_status(section)}")
        else:
            lines += render(section)
    lines += [
        "",
        "## Targets (set for one H100; measured on the device above)",
        "",
        "| target | value | goal | pass |",
        "| --- | ---: | ---: | --- |",
    ]
    for t in result.get("targets", {}).values():
        lines.append(
            f"| {t['what']} | {_fmt(t['value'], 2)} | {t['op']} {t['target']} | {_fmt(t['pass'])} |"
        )
    return "\n".join(lines) + "\n"
