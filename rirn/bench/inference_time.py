"""Full-volume inference time: :func:`rirn.inference.predict_probs` of the student (eval mode,
Gaussian sliding window) on one whole case, as evaluation and prediction run it.

The input is a random ``(1, C_student, *volume)`` tensor already on the device: the time does
not depend on the values, and reading the case is the loader's cost, measured apart.
"""

from __future__ import annotations

import math
import time

import torch

from rirn.bench.common import log, memory_report, reset_peak_memory, summarize, synchronize
from rirn.inference import InferenceSettings, predict_probs, window_starts
from rirn.models import build_unet

__all__ = ["inference_section"]


def inference_section(
    model_cfg,
    student_in: int,
    volume,
    roi,
    overlap: float,
    batch_size: int,
    amp_dtype: torch.dtype | None,
    device: torch.device,
    repeats: int,
    seed: int = 0,
) -> dict:
    """Median seconds per case over ``repeats`` runs after one warm-up run.

    Each run is timed from a synchronised start to a synchronised end (it includes the host
    work between windows, which is part of the cost of a case).
    """
    torch.manual_seed(seed)
    model = build_unet(model_cfg, in_channels=student_in).to(device).eval()
    image = torch.randn(1, student_in, *volume, generator=torch.Generator().manual_seed(seed))
    image = image.to(device)
    windows = math.prod(
        len(window_starts(max(int(s), int(r)), int(r), overlap))
        for s, r in zip(volume, roi, strict=True)
    )
    settings = InferenceSettings(
        mode="sliding_window",
        roi_size=tuple(int(r) for r in roi),  # type: ignore[arg-type]
        overlap=overlap,
        sw_batch_size=batch_size,
        amp_dtype=amp_dtype,
    )

    def run() -> None:
        predict_probs(model, image, settings)

    log(f"inference: {windows} windows of {'x'.join(map(str, roi))}, warm-up + {repeats} run(s)")
    run()
    baseline = reset_peak_memory(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    summary = summarize(times)
    return {
        "status": "ok",
        "volume": [int(s) for s in volume],
        "roi": [int(r) for r in roi],
        "overlap": overlap,
        "windows": windows,
        "batch_size": batch_size,
        "precision": "fp32" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
        "s_per_case": round(summary["median_ms"] / 1e3, 4),
        **summary,
        **memory_report(device, baseline),
    }
