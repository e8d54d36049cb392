"""Helpers shared by the benchmark sections: clocks, peak memory, machine facts, fail-soft runs.

Timing rules (every section follows them):

* CUDA work is timed with a pair of CUDA events around each measured call, and the host waits
  (one ``torch.cuda.synchronize``) only after the last call, so the measured region contains no
  host synchronisation that training would not have. The elapsed time between two events is
  the GPU timeline, which includes any time the GPU waited for the host to launch kernels: a
  launch-bound step is measured as slow as it really is.
* CPU work is timed with ``time.perf_counter``.
* Figures are medians over the timed repetitions; warm-up calls (cuDNN autotuning,
  ``torch.compile``, allocator growth) come first and are not timed individually.

Memory is reported in GB = 1e9 bytes: ``torch.cuda.max_memory_allocated`` on CUDA (reset before
each measurement); on CPU only the process high-water mark ``ru_maxrss`` exists, which never
goes down, so it is a note rather than a per-measurement figure.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable

import torch

__all__ = [
    "GB",
    "StepClock",
    "cpu_has_native_bf16",
    "fail_soft",
    "free_memory_bytes",
    "log",
    "machine_info",
    "memory_report",
    "release_memory",
    "reset_peak_memory",
    "summarize",
    "synchronize",
]

GB = 1e9


def log(message: str) -> None:
    """Progress line on stderr (stdout carries the final table)."""
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Per-call durations without host synchronisation inside the measured region.

    Example:
        >>> clock = StepClock(device)
        >>> for _ in range(n):
        ...     with clock:
        ...         work()
        >>> clock.times_ms()  # synchronises once, then reads every interval
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._cpu: list[float] = []
        self._t0 = 0.0

    def __enter__(self) -> StepClock:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._events.append((start, torch.cuda.Event(enable_timing=True)))
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._events[-1][1].record()
        else:
            self._cpu.append((time.perf_counter() - self._t0) * 1e3)

    def times_ms(self) -> list[float]:
        if not self.cuda:
            return list(self._cpu)
        synchronize(self.device)
        return [start.elapsed_time(end) for start, end in self._events]


def summarize(times_ms: list[float]) -> dict:
    """``median_ms`` (the headline), ``mean_ms``, ``min_ms``, ``p90_ms``, ``max_ms``, ``count``."""
    ordered = sorted(times_ms)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "median_ms": round(statistics.median(ordered), 3),
        "mean_ms": round(statistics.fmean(ordered), 3),
        "min_ms": round(ordered[0], 3),
        "p90_ms": round(p90, 3),
        "max_ms": round(ordered[-1], 3),
        "count": len(ordered),
    }


def reset_peak_memory(device: torch.device) -> int:
    """Start a peak-memory measurement; returns the bytes allocated now (CUDA) or 0."""
    if device.type != "cuda":
        return 0
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def memory_report(device: torch.device, baseline: int = 0) -> dict:
    """Peak memory since :func:`reset_peak_memory` (CUDA), or the process high-water mark (CPU).

    CUDA: ``peak_gb`` (everything allocated, weights and optimiser state included),
    ``extra_gb`` (above ``baseline``), ``reserved_gb`` (the caching allocator's pool).
    """
    if device.type == "cuda":
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {
            "peak_gb": round(peak / GB, 3),
            "extra_gb": round((peak - baseline) / GB, 3),
            "reserved_gb": round(torch.cuda.max_memory_reserved(device) / GB, 3),
        }
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return {
        "peak_rss_gb": round(rss / GB, 3),
        "memory_note": "CPU: process high-water mark (ru_maxrss), not this measurement alone",
    }


def free_memory_bytes(device: torch.device) -> int | None:
    """Memory a new allocation could still get: free GPU memory, or available RAM (POSIX)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        # The caching allocator can reuse what it holds but does not use.
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def release_memory(device: torch.device) -> None:
    """Drop what earlier measurements left behind (compiled graphs, cached CUDA blocks)."""
    with contextlib.suppress(Exception):
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 arithmetic (AVX512-BF16 or AMX); without it autocast to bf16
    emulates every conv and runs several times slower than fp32 (Linux only; False elsewhere)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def machine_info(device: torch.device) -> dict:
    """The facts every figure depends on: device name, versions, date (UTC), CPU threads."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        extra = {
            "gpu_memory_gb": round(props.total_memory / GB, 1),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    else:
        name = f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"
        extra = {"cpu_capability": torch.backends.cpu.get_cpu_capability()}
    return {
        "device": name,
        "device_type": device.type,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        **extra,
    }


def fail_soft(name: str, fn: Callable[[], dict], device: torch.device) -> dict:
    """Run one measurement; an exception becomes ``{"status": "failed", "error": ...}``.

    One broken variant (a compile error, an out-of-memory) must not cost the figures of the
    others, so the error is recorded with the tail of its traceback and memory is released.
    """
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - reported in the output, the run goes on
        tail = traceback.format_exc().strip().splitlines()[-12:]
        log(f"{name}: FAILED ({type(exc).__name__}: {str(exc)[:300]})")
        return {
            "status": "failed",
            "error": f"{type(exc).__name__}: {str(exc)[:2000]}",
            "traceback_tail": "\n".join(tail)[-4000:],
        }
    finally:
        release_memory(device)
