"""Tables 4, 6 and 7 grouped over training seeds (the runs of a row that differ only in ``seed``).

A table is *grouped* (:func:`grouped`) when some row has runs of two or more distinct seeds;
otherwise the report keeps one line per run (:func:`rirn.evaluation.report_tables.table_rows`).
Grouped, every row is one :class:`SeedRow`:

- each seed's value is the run's Dice per region, mean over cases (fractions); runs of one seed
  in one row (duplicates: the same configuration trained twice into one sweep folder) are
  averaged first, so each seed counts once, and the report names them;
- ``dice``: mean ± sample std (``ddof=1``) over the row's seeds with results;
- ``delta``: the *paired* difference to the reference row (the baseline in Tables 4 and 6, Avg
  in Table 7): for each seed both rows have, this row's value minus the reference's; its mean
  and the half width of the 95% Student-t interval over those pairs (``n - 1`` degrees of
  freedom, :func:`rirn.evaluation.seeds.t_interval`). A seed only one of the two rows has is
  left out of the pairs.

For Table 6 (:func:`pooled`) the per-seed AVG deltas of every modality are pooled: one mean and
95% t interval over all (modality, seed) pairs, and on how many modalities RIRN's mean AVG over
seeds beats the baseline's. In the CSV a grouped table keeps one line per run (``source`` =
``this sweep``, with its ``seed`` and a delta paired to the reference's same seed) and adds one
line per row with ``source`` = :data:`SEEDS_SOURCE` (columns: :mod:`rirn.evaluation.report_csv`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from rirn.evaluation.render import markdown_table
from rirn.evaluation.report_tables import (
    NO_RUN,
    ReportRow,
    RowSpec,
    RunResult,
    TableSpec,
    row_runs,
    table_rows,
)
from rirn.evaluation.seeds import (
    Seed,
    format_seeds,
    mean_std,
    missing_seeds,
    paired_deltas,
    seed_means,
    t_interval,
)
from rirn.evaluation.summary import SUMMARY_REGIONS

SEEDS_SOURCE = "this sweep (mean over seeds)"
CONFIDENCE = 0.95


@dataclass(frozen=True)
class SeedRow:
    """One row of a grouped table.

    Attributes:
        spec: the expected row.
        status: ``"ok"`` when some run has results, else why not (:data:`NO_RUN`, ``failed``).
        runs: the names of the row's runs with results.
        n: cases behind each run's numbers when all runs have the same count, else 0.
        per_seed: ``{seed: {region: Dice}}``, mean over cases, duplicates averaged; fractions.
        dice: ``{region: (mean, sample std)}`` over :attr:`per_seed` (std nan for one seed).
        pairs: ``{seed: {region: Dice - reference Dice}}`` over the seeds both rows have;
            ``{}`` for a row without a reference.
        delta: ``{region: (mean, half width of the 95% t interval)}`` over :attr:`pairs`.
        duplicates: ``{seed: run names}`` for seeds with two or more runs with results.
    """

    spec: RowSpec
    status: str
    runs: tuple[str, ...]
    n: int
    per_seed: dict[Seed, dict[str, float]]
    dice: dict[str, tuple[float, float]]
    pairs: dict[Seed, dict[str, float]]
    delta: dict[str, tuple[float, float]]
    duplicates: dict[Seed, tuple[str, ...]]

    @property
    def seeds(self) -> tuple[Seed, ...]:
        """The seeds with results, sorted."""
        return tuple(self.per_seed)


@dataclass(frozen=True)
class Pooled:
    """The paired AVG delta pooled over a table's (row, seed) pairs (Table 6: modality, seed).

    Attributes:
        mean: mean of the pooled per-pair AVG deltas (Dice fraction).
        half_width: half width of their 95% Student-t interval (nan for one pair).
        n: number of pairs.
        wins: rows whose mean paired AVG delta is above 0 (over the seeds both rows have, so a
            seed one of them lacks cannot turn an unpaired comparison of means around).
        compared: rows with a reference and at least one pair.
    """

    mean: float
    half_width: float
    n: int
    wins: int
    compared: int


def grouped(table: TableSpec, runs: Sequence[RunResult]) -> bool:
    """Whether some row of ``table`` has runs of two or more distinct seeds."""
    return any(len({r.seed for r in row_runs(s, runs)}) >= 2 for s in table.rows)


def _per_seed(done: Sequence[RunResult]) -> dict[Seed, dict[str, float]]:
    by_region = {
        reg: seed_means((r.seed, r.summary.stats[("dice", reg)][0]) for r in done)
        for reg in SUMMARY_REGIONS
    }
    return {s: {reg: by_region[reg][s] for reg in SUMMARY_REGIONS} for s in by_region["AVG"]}


def _done(spec: RowSpec, runs: Sequence[RunResult]) -> list[RunResult]:
    return [r for r in row_runs(spec, runs) if r.summary.stats]


def seed_row(table: TableSpec, spec: RowSpec, runs: Sequence[RunResult]) -> SeedRow:
    """The :class:`SeedRow` of ``spec`` (see the module docstring for the statistics)."""
    matched, done = row_runs(spec, runs), _done(spec, runs)
    status = "ok" if done else (matched[0].summary.status if matched else NO_RUN)
    per_seed = _per_seed(done) if done else {}
    dice = (
        {reg: mean_std(v[reg] for v in per_seed.values()) for reg in SUMMARY_REGIONS}
        if per_seed
        else {}
    )
    reference = _done(table.row(spec.reference), runs) if spec.reference else []
    pairs: dict[Seed, dict[str, float]] = {}
    if per_seed and reference:
        ref = _per_seed(reference)
        by_region = {
            reg: paired_deltas(
                {s: v[reg] for s, v in per_seed.items()}, {s: v[reg] for s, v in ref.items()}
            )
            for reg in SUMMARY_REGIONS
        }
        pairs = {s: {reg: by_region[reg][s] for reg in SUMMARY_REGIONS} for s in by_region["AVG"]}
    delta = (
        {reg: t_interval((p[reg] for p in pairs.values()), CONFIDENCE) for reg in SUMMARY_REGIONS}
        if pairs
        else {}
    )
    names: dict[Seed, list[str]] = {}
    for r in done:
        names.setdefault(r.seed, []).append(r.name)
    cases = {r.summary.n for r in done}
    return SeedRow(
        spec,
        status,
        tuple(r.name for r in done),
        cases.pop() if len(cases) == 1 else 0,
        per_seed,
        dice,
        pairs,
        delta,
        {s: tuple(v) for s, v in names.items() if len(v) > 1},
    )


def seed_rows(table: TableSpec, runs: Sequence[RunResult]) -> list[SeedRow]:
    """One :class:`SeedRow` per expected row of ``table``, in the table's order."""
    return [seed_row(table, spec, runs) for spec in table.rows]


def paired_run_rows(table: TableSpec, runs: Sequence[RunResult]) -> list[ReportRow]:
    """The per-run lines of :func:`table_rows`, each delta paired by seed: the run's Dice minus
    its reference row's Dice for the same seed (``{}`` when the reference lacks that seed)."""
    refs = {
        s.key: _per_seed(_done(table.row(s.reference), runs))
        for s in table.rows
        if s.reference and _done(table.row(s.reference), runs)
    }
    out = []
    for row in table_rows(table, runs):
        ref = refs.get(row.spec.key, {}).get(row.seed)
        paired = ref is not None and bool(row.dice)
        delta = {reg: row.dice[reg][0] - ref[reg] for reg in SUMMARY_REGIONS} if paired else {}
        out.append(replace(row, delta=delta))
    return out


def pooled(rows: Sequence[SeedRow]) -> Pooled | None:
    """The AVG deltas of every row with a reference, pooled over all their (row, seed) pairs;
    ``None`` when there is no pair."""
    deltas = [p["AVG"] for r in rows for p in r.pairs.values()]
    if not deltas:
        return None
    compared = [r.delta["AVG"][0] for r in rows if r.spec.reference and r.pairs]
    mean, half = t_interval(deltas, CONFIDENCE)
    return Pooled(mean, half, len(deltas), sum(d > 0 for d in compared), len(compared))


def pooled_verdict(summary: Pooled) -> str:
    """What the pooled interval says, in one sentence, and whether the benchmark's target
    (RIRN ahead on at least 3 of the 4 modalities, pooled interval above 0; issue 12) holds.

    The interval is the one of :func:`pooled`; its ends are compared to 0 at full precision, so
    a printed ``+0.00`` end may still fall on either side.
    """
    if summary.n < 2 or math.isnan(summary.half_width):
        return "One pair has no interval: no verdict."
    lo, hi = summary.mean - summary.half_width, summary.mean + summary.half_width
    if lo > 0:
        verdict = f"The interval lies above 0: RIRN is ahead at {CONFIDENCE:.0%} confidence."
    elif hi < 0:
        verdict = f"The interval lies below 0: RIRN is behind at {CONFIDENCE:.0%} confidence."
    else:
        verdict = f"The interval includes 0: no difference shown at {CONFIDENCE:.0%} confidence."
    if summary.compared == 4:
        met = summary.wins >= 3 and lo > 0
        verdict += (
            f" Target (ahead on at least 3 of 4 modalities, interval above 0): "
            f"{'met' if met else 'not met'}."
        )
    return verdict


def _points(x: float) -> str:
    return f"{100 * x:+.2f}"


def duplicate_lines(rows: Sequence[SeedRow]) -> list[str]:
    """The note under a grouped table naming the runs of one row and seed that were averaged
    (``[]`` when there are none)."""
    duplicates = [
        f"row `{r.spec.key}` seed {format_seeds([s])}: " + ", ".join(f"`{n}`" for n in names)
        for r in rows
        for s, names in r.duplicates.items()
    ]
    if not duplicates:
        return []
    return ["", "Several runs of one seed, averaged per seed first: " + "; ".join(duplicates)]


def interval_cell(mean: float, half: float, n: int) -> str:
    """``+1.23 [-0.40, +2.86]`` in Dice points; one pair has no interval."""
    if n < 2 or math.isnan(half):
        return f"{_points(mean)} (n=1, no interval)"
    return f"{_points(mean)} [{_points(mean - half)}, {_points(mean + half)}]"


def mean_std_cell(mean: float, std: float) -> str:
    return f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def _reference_name(table: TableSpec) -> str:
    keys = {s.reference for s in table.rows if s.reference}
    labels = {table.row(k).label for k in keys}
    if len(keys) == 1 or len(labels) != 1:
        return ", ".join(sorted(labels))
    return f"the {labels.pop()} row of the same {table.columns[0].lower()}"


def seed_markdown(table: TableSpec, rows: Sequence[SeedRow]) -> list[str]:
    """Lines of a grouped table: label columns, seeds, Dice (%) mean ± std over seeds for WT,
    TC, ET, AVG, the mean paired Δ per region and Δ AVG with its 95% interval (Dice points),
    then the note on the statistics, the averaged duplicate runs and (Table 6) the pooled
    delta."""
    head = [*table.columns, "seeds", *SUMMARY_REGIONS, *(f"Δ {r}" for r in SUMMARY_REGIONS[:-1])]
    seeds_of = {r.spec.key: r.seeds for r in rows}
    body = []
    for r in rows:
        if r.dice:
            values = [mean_std_cell(*r.dice[reg]) for reg in SUMMARY_REGIONS]
        else:
            values = [r.status.split(":")[0]] * len(SUMMARY_REGIONS)
        deltas = [_points(r.delta[reg][0]) if r.delta else "" for reg in SUMMARY_REGIONS[:-1]]
        avg = interval_cell(*r.delta["AVG"], len(r.pairs)) if r.delta else ""
        # The means beside it are over each row's own seeds: say when Δ pairs fewer.
        if r.delta and not tuple(r.pairs) == r.seeds == seeds_of.get(r.spec.reference):
            avg += f" (seeds {format_seeds(r.pairs)})"
        body.append([*r.spec.cells, format_seeds(r.seeds), *values, *deltas, avg])
    lines = markdown_table([*head, "Δ AVG [95% CI]"], body)
    lines += [
        "",
        "Dice (%): mean ± std over seeds (sample std) of each seed's mean over cases; "
        f"Δ = paired difference to {_reference_name(table)} over the seeds both have, in Dice "
        f"points, with its {CONFIDENCE:.0%} Student-t interval (n−1 dof).",
    ]
    lines += duplicate_lines(rows)
    summary = pooled(rows) if table.name == "unimodal" else None
    if summary:
        lines += [
            "",
            f"Pooled over all {summary.n} (modality, seed) pairs: Δ AVG = "
            f"{interval_cell(summary.mean, summary.half_width, summary.n)} Dice points (mean, "
            f"{CONFIDENCE:.0%} Student-t interval, n = {summary.n}). RIRN beats the baseline on "
            f"{summary.wins} of {summary.compared} modalities (mean paired Δ AVG above 0). "
            + pooled_verdict(summary),
        ]
    return lines


def missing_seed_lines(
    tables: Iterable[TableSpec], runs: Sequence[RunResult], command: str = "python -m rirn.train"
) -> list[str]:
    """The report's list of rows that have runs but lack some seed of the sweep (every seed of
    any run), or whose runs of a seed all have no results; rows without any run are listed
    elsewhere. ``command`` starts each "train it with" hint."""
    sweep = {r.seed for r in runs}
    lines = []
    for t in tables:
        for s in t.rows:
            matched = row_runs(s, runs)
            if not matched:
                continue
            name = f"- {t.title.split(':')[0]}, row `{s.key}`"
            for seed in missing_seeds({r.seed for r in matched}, sweep):
                train = f"{command} {s.train} seed={seed}"
                lines.append(f"{name}: seed {seed} missing; train it with `{train}`")
            done = {r.seed for r in matched if r.summary.stats}
            for seed in sorted({r.seed for r in matched} - done - {None}):
                failed = next(r for r in matched if r.seed == seed)
                lines.append(
                    f"{name}: seed {seed} has no results (`{failed.name}`: {failed.summary.status})"
                )
    return lines
