"""CAR loss (Eq. 6-7) cost: :func:`rirn.losses.car_loss` (row chunks, recomputed in backward)
against the naive form that materialises both ``N x N`` relations with
:func:`rirn.losses.relation`, forward + backward, at the non-local scales of a crop.

Inputs are random ``(1, C', N)`` float32 embeddings (the loss upcasts to float32 anyway), the
student's requiring a gradient. ``N`` is the number of voxels at the scale: 7680 at 1/8 and
61440 at 1/4 of the paper's 160x192x128 crop. The timed relation is the paper's dot product:
rirn's default cosine relation (``loss.car_normalize``) adds two normalisations of the
``(1, C', N)`` embeddings, nothing per ``N x N`` entry.
"""

from __future__ import annotations

import math

import torch

from rirn.bench.common import (
    GB,
    StepClock,
    fail_soft,
    free_memory_bytes,
    log,
    memory_report,
    reset_peak_memory,
    summarize,
    synchronize,
)
from rirn.losses import car_loss, relation

__all__ = ["NAIVE_RELATION_COPIES", "car_section", "naive_car_loss", "time_car"]

#: ``N x N`` float32 matrices alive at the naive loss's peak (backward): the student relation
#: (saved by softmax), the difference (saved by the square), its gradient and the softmax
#: input gradient, plus one temporary. Used to skip sizes that cannot fit.
NAIVE_RELATION_COPIES = 5


def naive_car_loss(q_t, k_t, q_s, k_s, channels: int) -> torch.Tensor:
    """Eq. 7 with both relation matrices materialised: the textbook form of ``car_loss``."""
    a_t = relation(q_t.detach(), k_t.detach())
    a_s = relation(q_s, k_s)
    return (a_t - a_s).square().sum() / (q_s.shape[0] * channels * q_s.shape[-1])


def time_car(
    n: int,
    method: str,
    embed: int,
    channels: int,
    chunk_size: int,
    device: torch.device,
    repeats: int,
    seed: int = 0,
) -> dict:
    """Median forward + backward time and peak extra memory of one CAR loss evaluation.

    Args:
        n: voxels ``N`` (query and key).
        method: ``"chunked"`` (:func:`car_loss`) or ``"naive"`` (:func:`naive_car_loss`).
        embed: ``C'`` of the embeddings; channels: ``C`` of Eq. 7 (normalisation only).
        chunk_size: rows per chunk of ``car_loss``.
        repeats: timed evaluations after one warm-up.
    """
    gen = torch.Generator().manual_seed(seed)
    q_t, k_t, q_s, k_s = (torch.randn(1, embed, n, generator=gen).to(device) for _ in range(4))
    q_s.requires_grad_(True)
    k_s.requires_grad_(True)

    def evaluate() -> torch.Tensor:
        q_s.grad = k_s.grad = None
        if method == "chunked":
            loss = car_loss(q_t, k_t, q_s, k_s, channels=channels, chunk_size=chunk_size)
        else:
            loss = naive_car_loss(q_t, k_t, q_s, k_s, channels)
        loss.backward()
        return loss.detach()

    value = float(evaluate())
    q_s.grad = k_s.grad = None
    baseline = reset_peak_memory(device)
    clock = StepClock(device)
    for _ in range(repeats):
        with clock:
            evaluate()
    times = clock.times_ms()
    synchronize(device)
    return {"status": "ok", "loss": value, **summarize(times), **memory_report(device, baseline)}


def car_section(
    crop,
    scales,
    embed: int,
    channels: int,
    chunk_size: int,
    device: torch.device,
    repeats: int,
    seed: int = 0,
) -> dict:
    """Both methods at every scale; a naive run that cannot fit in free memory is skipped.

    Returns ``{"crop", "chunk_size", "embed_channels", "points": [...]}`` with one point per
    (scale, method): ``scale``, ``n``, ``method``, ``status`` and the figures of
    :func:`time_car`, or ``reason``; the naive points also carry ``needs_gb`` (estimate) and,
    when both ran, ``loss_rel_diff`` to the chunked loss (they must agree).
    """
    points = []
    for scale in scales:
        n = math.prod(int(c) // int(scale) for c in crop)
        chunked = None
        for method in ("chunked", "naive"):
            point = {"scale": f"1/{scale}", "n": n, "method": method}
            if method == "naive":
                need = NAIVE_RELATION_COPIES * n * n * 4
                free = free_memory_bytes(device)
                point["needs_gb"] = round(need / GB, 1)
                if free is not None and need > 0.9 * free:
                    point.update(
                        status="skipped",
                        reason=(
                            f"would not fit: two {n}x{n} fp32 relations are "
                            f"{2 * n * n * 4 / GB:.1f} GB, forward+backward needs about "
                            f"{need / GB:.0f} GB ({NAIVE_RELATION_COPIES} N x N matrices), "
                            f"{free / GB:.0f} GB free"
                        ),
                    )
                    log(f"CAR N={n} naive: skipped ({point['reason']})")
                    points.append(point)
                    continue
            log(f"CAR N={n} {method}: {repeats} repeat(s)")
            point.update(
                fail_soft(
                    f"CAR N={n} {method}",
                    lambda m=method, size=n: time_car(
                        size, m, embed, channels, chunk_size, device, repeats, seed
                    ),
                    device,
                )
            )
            if method == "chunked":
                chunked = point
            elif point.get("status") == "ok" and chunked and chunked.get("status") == "ok":
                ref = chunked["loss"]
                point["loss_rel_diff"] = abs(point["loss"] - ref) / abs(ref) if ref else 0.0
            points.append(point)
    return {
        "crop": [int(c) for c in crop],
        "chunk_size": chunk_size,
        "embed_channels": embed,
        "points": points,
    }
