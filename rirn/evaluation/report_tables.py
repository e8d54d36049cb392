"""The paper's comparison tables built from the runs of a sweep: Table 4 (loss ablation on
T1ce), Table 6 (baseline vs RIRN per single modality), Table 7 (CRR class-centre aggregation)
and the 15-subset table (the layout of Tables 1-3).

A run is placed in a table by *what it trains*, read from its resolved config: ``modality``,
``loss.crr``, ``loss.mf``, ``loss.car``, ``loss.adv``, ``loss.aggregation`` and the
knowledge-transfer switches ``loss.kd``, ``loss.feature`` (:class:`Variant`, in
:mod:`rirn.evaluation.variants`), never by its folder name; a KD or feature-KD run matches no
row of these tables (its table is :mod:`rirn.evaluation.method_table`'s). Every table row
expects one variant (:class:`RowSpec`); a row matched by none stays in the table as *missing*.
CAR's relation (``loss.car_normalize``, ``loss.car_temperature``) is part of the variant, but a
row of rirn's default relation in a sweep without any run of that relation takes the runs that
differ from it only there, when they share one relation (:func:`row_runs`): a sweep trained with
the paper's relation keeps its tables. Other settings (data, epochs, weights, seed) do not tell
rows apart. Runs of one row that differ only in ``seed`` (:attr:`RunResult.seed`) are grouped by
:mod:`rirn.evaluation.seed_tables` when some row of Tables 4, 6 or 7 has two or more seeds: one
line per row with mean ± std over seeds and paired deltas with 95% Student-t intervals.
Otherwise (one seed) a row matched by several runs (e.g. the same configuration trained by two
experiments into one sweep folder) shows one line per run, as built by :func:`table_rows`.

Which tables a sweep supports (:func:`detect_tables`): a table is shown when some run matches
one of its *defining* rows, the rows only its own experiment trains:

============  =========================================================================
table         defining rows
============  =========================================================================
ablation      T1ce with +CRR, +CRR+MF, +CAR or +CRR+MF+CAR (no ADV)
unimodal      the Dice-only baseline on T1, T2 or FLAIR
aggregation   full RIRN on T1ce with ``loss.aggregation`` max, min or maxmin
subsets       full RIRN on a subset of two or more modalities
============  =========================================================================

When no table has a defining run (e.g. only ``loss=baseline,rirn`` on T1ce), every table with
runs in at least two of its rows is shown, since a comparison needs two.

Dice values are fractions, as in ``summary.csv``; Markdown prints percent like the paper. A
row's delta (:func:`table_rows`) is its mean Dice minus the mean Dice of its reference row (over
that row's runs): the baseline in Tables 4 and 6, Avg in Table 7. Grouped over seeds, the delta
is paired by seed instead (see :mod:`rirn.evaluation.seed_tables`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rirn.data.modalities import MODALITIES, PAPER_NAMES, all_subsets, subset_mask, subset_name
from rirn.evaluation.summary import SUMMARY_REGIONS, Problem, SummaryRow, summarize
from rirn.evaluation.variants import (  # noqa: F401 - re-exported: the report's public names
    LOSS_CONFIGS,
    RIRN_SWITCHES,
    SWITCHES,
    Variant,
    make_variant,
    same_but_car_relation,
    train_overrides,
    variant_of,
)

PAPER_SOURCE = "paper (BraTS 2018)"
SWEEP_SOURCE = "this sweep"
NO_RUN = "missing: no run in the sweep"


@dataclass(frozen=True)
class RowSpec:
    """One expected row of a table.

    Attributes:
        key: unique within the table (``"crr_mf"``, ``"t1/baseline"``, ``"max"``, ...).
        cells: the label cells of the Markdown row, one per :attr:`TableSpec.columns`.
        variant: the runs that belong in this row.
        reference: key of the row the delta is taken against (``None``: no delta).
        paper: the paper's Dice (%) for WT, TC, ET and AVG, if it reports this row.
    """

    key: str
    cells: tuple[str, ...]
    variant: Variant
    reference: str | None = None
    paper: tuple[float, float, float, float] | None = None

    @property
    def label(self) -> str:
        return self.cells[-1]

    @property
    def train(self) -> str:
        """The ``python -m rirn.train`` overrides that train a run of this row."""
        return train_overrides(self.variant)


@dataclass(frozen=True)
class TableSpec:
    """A table of the report.

    Attributes:
        name: also the experiment that trains it (``configs/experiment/<name>.yaml``).
        file: its CSV file name.
        title: its Markdown heading.
        columns: the label columns of the Markdown table.
        rows: the expected rows, in the paper's order.
        defining: the rows whose runs mark a sweep as this kind (see the module docstring).
        note: shown under the table.
    """

    name: str
    file: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[RowSpec, ...]
    defining: tuple[RowSpec, ...]
    note: str = ""

    def row(self, key: str) -> RowSpec:
        return next(r for r in self.rows if r.key == key)


_SWITCHES_OF = {loss: switches for switches, loss in LOSS_CONFIGS.items()}
# loss config, label, paper Dice % (WT, TC, ET, AVG): Table 4.
_ABLATION = (
    ("baseline", "baseline", (78.83, 84.92, 74.80, 79.52)),
    ("crr", "+CRR", (79.55, 85.33, 74.36, 79.75)),
    ("crr_mf", "+CRR+MF", (79.98, 85.71, 75.84, 80.51)),
    ("car", "+CAR", (80.07, 85.39, 76.11, 80.53)),
    ("crr_mf_car", "+CRR+MF+CAR", (80.38, 86.03, 75.98, 81.11)),
    ("rirn", "+CRR+MF+CAR+ADV", (80.69, 86.04, 77.93, 81.55)),
)
# modality, label, paper baseline, paper RIRN: Table 6 (T1ce's pair is Table 4's first and last).
_UNIMODAL = (
    ("t1", "T1", (77.10, 67.49, 41.06, 61.89), (78.29, 71.26, 45.62, 65.05)),
    ("t2", "T2", (85.68, 69.33, 42.93, 65.98), (86.58, 73.12, 45.60, 68.44)),
    ("flair", "Flair", (87.86, 67.75, 42.33, 65.99), (87.57, 70.10, 43.79, 67.15)),
    ("t1ce", "T1ce", _ABLATION[0][2], _ABLATION[-1][2]),
)
# loss.aggregation, label, paper: Table 7 (Avg is Table 4's full RIRN row).
_AGGREGATION = (
    ("max", "Max", (79.85, 85.49, 77.69, 81.01)),
    ("min", "Min", (79.76, 86.06, 76.34, 80.72)),
    ("maxmin", "(Max+Min)/2", (79.88, 85.57, 77.49, 80.98)),
    ("mean", "Avg (ours)", _ABLATION[-1][2]),
)


def _ablation_table() -> TableSpec:
    rows = tuple(
        RowSpec(
            loss,
            (*("✓" if s else "" for s in _SWITCHES_OF[loss][: len(RIRN_SWITCHES)]), label),
            make_variant("t1ce", _SWITCHES_OF[loss]),
            None if loss == "baseline" else "baseline",
            paper,
        )
        for loss, label, paper in _ABLATION
    )
    columns = (*(s.upper() for s in RIRN_SWITCHES), "Row")
    title = "Table 4: loss ablation on T1ce"
    return TableSpec("ablation", "table4_ablation.csv", title, columns, rows, rows[1:-1])


def _unimodal_table() -> TableSpec:
    rows = tuple(
        RowSpec(
            f"{m}/{loss}",
            (name, label),
            make_variant(m, _SWITCHES_OF[loss]),
            None if loss == "baseline" else f"{m}/baseline",
            paper,
        )
        for m, name, base, ours in _UNIMODAL
        for loss, label, paper in (("baseline", "Baseline", base), ("rirn", "Ours", ours))
    )
    defining = tuple(r for r in rows if r.key in ("t1/baseline", "t2/baseline", "flair/baseline"))
    title = "Table 6: baseline vs RIRN per modality"
    note = "The paper's T1ce pair is the first and last row of its Table 4."
    columns = ("Modality", "Method")
    return TableSpec("unimodal", "table6_unimodal.csv", title, columns, rows, defining, note)


def _aggregation_table() -> TableSpec:
    rows = tuple(
        RowSpec(
            agg,
            (label,),
            make_variant("t1ce", _SWITCHES_OF["rirn"], agg),
            None if agg == "mean" else "mean",
            paper,
        )
        for agg, label, paper in _AGGREGATION
    )
    title = "Table 7: CRR class-centre aggregation on T1ce"
    note = "Δ is against Avg, the paper's choice (Eq. 2)."
    return TableSpec(
        "aggregation", "table7_aggregation.csv", title, ("Method",), rows, rows[:-1], note
    )


def _subsets_table() -> TableSpec:
    rows = tuple(
        RowSpec(subset_name(s), tuple(subset_mask(s)), make_variant(s, _SWITCHES_OF["rirn"]))
        for s in all_subsets()
    )
    title = "All 15 modality subsets (layout of Tables 1-3)"
    columns = tuple(PAPER_NAMES[m] for m in MODALITIES)
    defining = tuple(r for r in rows if len(r.variant.subset) > 1)
    return TableSpec("subsets", "subsets.csv", title, columns, rows, defining)


#: Every table of the report, in report order; ``name`` is also the experiment config that
#: trains it (``configs/experiment/<name>.yaml``).
TABLES: tuple[TableSpec, ...] = (
    _ablation_table(),
    _unimodal_table(),
    _aggregation_table(),
    _subsets_table(),
)
TABLE_NAMES: tuple[str, ...] = tuple(t.name for t in TABLES)


@dataclass(frozen=True)
class RunResult:
    """A run of the sweep as the report sees it.

    Attributes:
        name: the run folder relative to the sweep folder.
        variant: what it trains (``None`` when its config could not be read).
        summary: its student row of :func:`rirn.evaluation.summary.summarize` (``status`` says
            why there are no numbers).
        seed: the config's top-level ``seed`` (``None`` when absent or unreadable).
    """

    name: str
    variant: Variant | None
    summary: SummaryRow
    seed: int | None = None


def row_runs(spec: RowSpec, runs: Iterable[RunResult]) -> list[RunResult]:
    """The runs that belong in a row: those of exactly its variant. A row with CAR on, in a
    sweep where *no* run has the row's CAR relation, takes instead the runs that differ from it
    only in that relation, if they all share one: a sweep trained with the paper's relation (or
    before rirn had the option) keeps its rows, while a sweep that mixes relations never fills
    a row of one table with another relation than its other rows."""
    runs = list(runs)
    exact = [r for r in runs if r.variant == spec.variant]
    if exact or spec.variant is None or spec.variant.car_relation is None:
        return exact
    relations = {r.variant.car_relation for r in runs if r.variant is not None}
    if spec.variant.car_relation in relations:
        return []
    other = [r for r in runs if same_but_car_relation(r.variant, spec.variant)]
    return other if len({r.variant.car_relation for r in other}) == 1 else []


def detect_tables(runs: Sequence[RunResult], tables: Sequence[TableSpec] = TABLES):
    """The tables a sweep supports (see the module docstring), in report order."""
    runs = list(runs)
    chosen = [t for t in tables if any(row_runs(r, runs) for r in t.defining)]
    return chosen or [t for t in tables if sum(bool(row_runs(r, runs)) for r in t.rows) >= 2]


@dataclass(frozen=True)
class ReportRow:
    """One line of Table 4, 6 or 7.

    Attributes:
        spec: the expected row it fills.
        source: :data:`SWEEP_SOURCE` or :data:`PAPER_SOURCE`.
        run: the run's name ("" for a missing row or a paper row).
        status: ``"ok"``, or why there are no numbers.
        n: cases behind the numbers (0 for the paper).
        dice: ``{region: (mean, std)}`` over :data:`SUMMARY_REGIONS`, fractions; ``{}`` without
            results.
        delta: ``{region: mean - reference mean}``; ``{}`` without a reference or results.
        seed: the run's seed (``None`` for a paper or missing row, or a run without one).
    """

    spec: RowSpec
    source: str
    run: str
    status: str
    n: int
    dice: dict[str, tuple[float, float]]
    delta: dict[str, float]
    seed: int | None = None


def _dice(row: SummaryRow) -> dict[str, tuple[float, float]]:
    return {reg: row.stats[("dice", reg)] for reg in SUMMARY_REGIONS} if row.stats else {}


def _delta(dice: Mapping, reference: Mapping[str, float] | None) -> dict[str, float]:
    if not dice or not reference:
        return {}
    return {reg: dice[reg][0] - reference[reg] for reg in SUMMARY_REGIONS}


def _reference(table: TableSpec, spec: RowSpec, runs: Sequence[RunResult]) -> dict[str, float]:
    """Mean Dice per region over the runs with results of ``spec``'s reference row."""
    if spec.reference is None:
        return {}
    done = [_dice(r.summary) for r in row_runs(table.row(spec.reference), runs)]
    done = [d for d in done if d]
    return (
        {reg: float(np.mean([d[reg][0] for d in done])) for reg in SUMMARY_REGIONS} if done else {}
    )


def table_rows(table: TableSpec, runs: Sequence[RunResult]) -> list[ReportRow]:
    """The sweep's lines of ``table``: one per matching run, a missing line for empty rows."""
    out = []
    for spec in table.rows:
        reference = _reference(table, spec, runs)
        matched = row_runs(spec, runs)
        if not matched:
            out.append(ReportRow(spec, SWEEP_SOURCE, "", NO_RUN, 0, {}, {}))
        for r in matched:
            dice = _dice(r.summary)
            delta = _delta(dice, reference)
            status, n = r.summary.status, r.summary.n
            out.append(ReportRow(spec, SWEEP_SOURCE, r.name, status, n, dice, delta, r.seed))
    return out


def _percent(values: Sequence[float]) -> dict[str, float]:
    # Rounded to the paper's two decimals (in percent) so the CSV shows 0.8492, not 0.84920000001.
    return {reg: round(v / 100, 4) for reg, v in zip(SUMMARY_REGIONS, values, strict=True)}


def paper_rows(table: TableSpec) -> list[ReportRow]:
    """The paper's numbers for ``table`` (BraTS 2018), with deltas computed the same way."""
    known = {s.key: _percent(s.paper) for s in table.rows if s.paper}
    out = []
    for spec in table.rows:
        if spec.key not in known:
            continue
        dice = {reg: (v, math.nan) for reg, v in known[spec.key].items()}
        delta = {reg: round(d, 4) for reg, d in _delta(dice, known.get(spec.reference)).items()}
        out.append(ReportRow(spec, PAPER_SOURCE, "", "ok", 0, dice, delta))
    return out


def subset_summary(table: TableSpec, runs: Sequence[RunResult], per_case: Iterable[Mapping]):
    """Summary rows (:func:`rirn.evaluation.summary.summarize`) of the subset table's runs, with
    a missing row, named after its training overrides, for each subset without a run."""
    names = {r.name for spec in table.rows for r in row_runs(spec, runs)}
    problems = [
        Problem(r.name, r.summary.subset, r.summary.status)
        for r in runs
        if r.name in names and r.summary.status != "ok"
    ]
    problems += [
        Problem(s.train, s.variant.subset, NO_RUN) for s in table.rows if not row_runs(s, runs)
    ]
    return summarize([row for row in per_case if row["run"] in names], problems)
