"""Statistics over training seeds: mean ± std, paired deltas and Student-t intervals.

Pure functions on plain numbers, used by :mod:`rirn.evaluation.seed_tables` to group the runs
of a report row that differ only in ``seed``. A *seed* is the training config's top-level
``seed`` (an ``int``), or ``None`` for a run whose config has none; ``None`` groups and pairs
like any other seed but is never reported as missing. Values are whatever the caller passes
(the report passes Dice as fractions, one number per run: its mean over cases).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import stats

Seed = int | None


def seed_order(seed: Seed) -> tuple[bool, int]:
    """Sort key for seeds: ascending, ``None`` last."""
    return (seed is None, 0 if seed is None else seed)


def format_seeds(seeds: Iterable[Seed]) -> str:
    """Seeds as ``"1,2,3"`` (sorted, ``None`` written ``?``)."""
    return ",".join("?" if s is None else str(s) for s in sorted(set(seeds), key=seed_order))


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``) of ``values``.

    Returns:
        ``(mean, std)``; std is nan for one value, both are nan for none.
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def t_interval(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean of ``values`` and the half width of its two-sided Student-t confidence interval.

    The interval is ``mean ± t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with ``s`` the
    sample std (``n - 1``): it treats the ``n`` values (e.g. paired deltas, one per seed) as
    independent draws from a normal distribution.

    Returns:
        ``(mean, half_width)``, in the unit of ``values``; the half width is nan for ``n < 2``.
    """
    x = list(values)
    mean, std = mean_std(x)
    if len(x) < 2:
        return mean, math.nan
    quantile = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1))
    return mean, quantile * std / math.sqrt(len(x))


def seed_means(values: Iterable[tuple[Seed, float]]) -> dict[Seed, float]:
    """One value per seed from ``(seed, value)`` pairs, one per run: the runs of one seed
    (duplicates, e.g. the same configuration trained by two experiments into one sweep) are
    averaged, so each seed counts once. Keys are in :func:`seed_order`."""
    grouped: dict[Seed, list[float]] = {}
    for seed, value in values:
        grouped.setdefault(seed, []).append(value)
    return {s: float(np.mean(grouped[s])) for s in sorted(grouped, key=seed_order)}


def paired_deltas(
    runs_by_seed: Mapping[Seed, float], reference_by_seed: Mapping[Seed, float]
) -> dict[Seed, float]:
    """Per-seed differences ``runs_by_seed[s] - reference_by_seed[s]`` over the seeds both
    have (a seed of only one side has no partner and is left out), in :func:`seed_order`."""
    common = sorted(set(runs_by_seed) & set(reference_by_seed), key=seed_order)
    return {s: runs_by_seed[s] - reference_by_seed[s] for s in common}


def missing_seeds(row_seeds: Iterable[Seed], sweep_seeds: Iterable[Seed]) -> list[int]:
    """The seeds of ``sweep_seeds`` (e.g. every seed seen in the sweep's runs) that a row's
    runs lack, sorted; ``None`` is never missing."""
    return sorted({s for s in sweep_seeds if s is not None} - set(row_seeds))
