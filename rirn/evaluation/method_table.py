"""The knowledge-transfer comparison of ``python -m rirn.report`` (``tables=kd_comparison``): the
layout of the paper's Table 2, one row per modality subset and one block of WT/TC/ET columns
per method, filled from one sweep (``configs/experiment/kd_comparison.yaml``).

Where the paper's Table 2 puts other groups' numbers side by side (each from its own code,
split and schedule), here every method is a student of the same trainer, data, split, schedule
and frozen teacher, over several seeds. A *method* (:class:`Method`) is a run's
:class:`~rirn.evaluation.variants.Variant` without its subset, read from the resolved config:

==============  ==========================  =============================================
method          loss                        what the student adds to its segmentation loss
==============  ==========================  =============================================
Baseline        ``loss=baseline``           nothing (the reference of every Δ)
KD              ``loss=kd``                 logit KD, :func:`rirn.losses.kd_loss`
Feature KD      ``loss=feature``            feature KD, :func:`rirn.losses.feature_loss`
RIRN            ``loss=rirn``               CRR + MF + CAR + ADV
==============  ==========================  =============================================

Any other variant with KD or feature KD on in the sweep (``loss=kd loss.crr=true``, another
``loss.kd_temperature``) is one more method, labelled by its terms and named by its overrides.
The table is shown (auto-detected) when the sweep has such a run; its rows are the four single
modalities plus every subset that has a KD or feature-KD run (all 15 after the override of the
experiment's docstring).

Statistics are those of :mod:`rirn.evaluation.seed_tables`, one :class:`SeedRow` per (subset,
method): Dice mean ± sample std over seeds of each seed's mean over cases, and the paired
difference to the baseline of the same subset over the seeds both have, with a 95% Student-t
interval. The best method of each subset and region (highest mean) is bold. The *Mean* row is
the unweighted mean over the subsets where each of the four methods with results has them
(:func:`_complete`); the *Pooled* Δ row pools the per-seed deltas of all subsets (as Table 6's
pooled line does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rirn.data.modalities import MODALITIES, PAPER_NAMES, all_subsets, subset_mask, subset_name
from rirn.evaluation.render import markdown_table
from rirn.evaluation.report_csv import write_table_csv
from rirn.evaluation.report_tables import RowSpec, RunResult, TableSpec
from rirn.evaluation.seed_tables import (
    CONFIDENCE,
    SeedRow,
    duplicate_lines,
    interval_cell,
    mean_std_cell,
    paired_run_rows,
    pooled,
    seed_rows,
)
from rirn.evaluation.seeds import format_seeds, seed_order, t_interval
from rirn.evaluation.variants import (
    RIRN_SWITCHES,
    Variant,
    loss_overrides,
    make_variant,
)
from rirn.losses.car import DEFAULT_CAR_RELATION
from rirn.losses.kd import DEFAULT_KD_TEMPERATURE

NAME = "kd_comparison"
#: The Dice columns of each method (the paper's Table 2 has no AVG column).
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
TITLE = "KD comparison: baseline, logit KD, feature KD and RIRN per subset (layout of Table 2)"


@dataclass(frozen=True)
class Method:
    """A column block of the table.

    Attributes:
        key: ``baseline``, ``kd``, ``feature``, ``rirn``, or the loss overrides of another one
            without ``loss=`` (e.g. ``kd loss.crr=true``); a row's key is ``<subset>/<key>``.
        label: the column heading.
        template: the method's variant; its subset is a placeholder (:meth:`variant`).
    """

    key: str
    label: str
    template: Variant

    def variant(self, subset: tuple[str, ...]) -> Variant:
        return replace(self.template, subset=tuple(subset))


def method_label(variant: Variant) -> str:
    """``KD``, ``Feature KD``, ``RIRN``, ``Baseline`` or a combination (``KD + CRR``), with a
    non-default temperature, feature standardisation, CRR aggregation or CAR relation (``cos/T``
    or ``dot/T``) in brackets."""
    parts = []
    if variant.kd:
        t = variant.kd_temperature
        parts.append("KD" if t == DEFAULT_KD_TEMPERATURE else f"KD (T={t:g})")
    if variant.feature:
        parts.append("Feature KD (norm)" if variant.feature_norm else "Feature KD")
    own = variant.switches[: len(RIRN_SWITCHES)]
    rirn = [k.upper() for k, on in zip(RIRN_SWITCHES, own, strict=True) if on]
    if len(rirn) == len(RIRN_SWITCHES):
        rirn = ["RIRN"]
    if rirn and variant.aggregation not in (None, "mean"):
        rirn[-1] += f" ({variant.aggregation})"
    if variant.car_relation not in (None, DEFAULT_CAR_RELATION):
        normalize, temperature = variant.car_relation
        relation = f"{'cos' if normalize else 'dot'}/{temperature:g}"
        at = rirn.index("CAR") if "CAR" in rirn else 0  # "RIRN" holds CAR
        rirn[at] += f" (CAR {relation})" if rirn[at] == "RIRN" else f" ({relation})"
    parts += rirn
    return " + ".join(parts) or "Baseline"


def method_of(variant: Variant) -> Method:
    """The :class:`Method` a run of ``variant`` belongs to."""
    template = replace(variant, subset=MODALITIES)
    return Method(loss_overrides(template).removeprefix("loss="), method_label(template), template)


def _standard(switches: Sequence[bool]) -> Method:
    return method_of(make_variant("all", switches))


BASELINE = _standard(())
#: The methods of the experiment, in column order.
METHODS: tuple[Method, ...] = (
    BASELINE,
    _standard((False,) * 4 + (True, False)),
    _standard((False,) * 4 + (False, True)),
    _standard((True,) * 4),
)


def kd_table(
    subsets: Sequence[tuple[str, ...]] | None = None, methods: Sequence[Method] = METHODS
) -> TableSpec:
    """The table's spec: one :class:`RowSpec` per (subset, method), keyed ``<subset>/<method>``,
    the reference of each the baseline of its subset. ``subsets`` defaults to all 15."""
    subsets = all_subsets() if subsets is None else subsets
    rows = tuple(
        RowSpec(
            f"{subset_name(s)}/{m.key}",
            (*subset_mask(s), m.label),
            m.variant(s),
            None if m == BASELINE else f"{subset_name(s)}/{BASELINE.key}",
        )
        for s in subsets
        for m in methods
    )
    defining = tuple(r for r in rows if r.variant.transfers)
    columns = (*(PAPER_NAMES[m] for m in MODALITIES), "Method")
    return TableSpec(NAME, f"{NAME}.csv", TITLE, columns, rows, defining)


#: The spec over all 15 subsets and the four methods (``tables=`` and the stale-file cleanup).
KD_TABLE = kd_table()


def has_transfer_runs(runs: Sequence[RunResult]) -> bool:
    """Whether some run has KD or feature KD on: the sweep gets this table."""
    return any(r.variant is not None and r.variant.transfers for r in runs)


def sweep_table(runs: Sequence[RunResult]) -> TableSpec:
    """The table for this sweep: the four single modalities and every subset with a KD or
    feature-KD run; the four methods, then any other KD or feature-KD variant of the sweep."""
    transfer = [r.variant for r in runs if r.variant is not None and r.variant.transfers]
    extra = {method_of(v) for v in transfer} - set(METHODS)
    methods = (*METHODS, *sorted(extra, key=lambda m: (m.label, m.key)))
    shown = {v.subset for v in transfer}
    subsets = [s for s in all_subsets() if len(s) == 1 or s in shown]
    return kd_table(subsets, methods)


def _methods(table: TableSpec) -> list[tuple[str, str]]:
    """``(key, label)`` of the table's methods, in column order."""
    seen: dict[str, str] = {}
    for spec in table.rows:
        seen.setdefault(spec.key.split("/", 1)[1], spec.label)
    return list(seen.items())


def _grid(table: TableSpec, rows: Sequence[SeedRow]) -> dict[str, dict[str, SeedRow]]:
    """``{subset: {method key: SeedRow}}`` in the table's order."""
    grid: dict[str, dict[str, SeedRow]] = {}
    for row in rows:
        subset, method = row.spec.key.split("/", 1)
        grid.setdefault(subset, {})[method] = row
    return grid


def _bold_best(cells: dict[str, str], means: dict[str, float]) -> dict[str, str]:
    """Bold the cells of the highest mean (all of them on a tie) when two or more compete."""
    if len(means) < 2:
        return cells
    best = max(means.values())
    return {k: f"**{c}**" if means.get(k) == best else c for k, c in cells.items()}


def _complete(grid: dict[str, dict[str, SeedRow]]) -> list[dict[str, SeedRow]]:
    """The subsets of the *Mean* row: those where each of the four methods that has results
    anywhere in the table has results (another method's mean needs results on all of them)."""
    core = [m.key for m in METHODS if any(row[m.key].dice for row in grid.values())]
    return [row for row in grid.values() if core and all(row[k].dice for k in core)]


def dice_markdown(table: TableSpec, rows: Sequence[SeedRow]) -> list[str]:
    """The Dice table: presence marks, seeds, then WT/TC/ET mean ± std (%) per method, the best
    of each subset and region bold, and the *Mean* row over the subsets every method has."""
    methods = _methods(table)
    grid = _grid(table, rows)
    head = [*table.columns[:-1], "seeds", *(f"{lab} {r}" for _, lab in methods for r in REGIONS)]
    body = []
    for by_method in grid.values():
        marks = next(iter(by_method.values())).spec.cells[:-1]
        seeds = sorted({s for r in by_method.values() for s in r.seeds}, key=seed_order)
        cells = {}
        for reg in REGIONS:
            text, means = {}, {}
            for key, _ in methods:
                r = by_method[key]
                if not r.dice:
                    text[key] = r.status.split(":")[0]
                    continue
                text[key] = mean_std_cell(*r.dice[reg])
                if list(r.seeds) != seeds:
                    text[key] += f" (seeds {format_seeds(r.seeds)})"
                means[key] = r.dice[reg][0]
            cells[reg] = _bold_best(text, means)
        values = [cells[r][k] for k, _ in methods for r in REGIONS]
        body.append([*marks, format_seeds(seeds), *values])
    complete = _complete(grid)
    if complete:
        cells = {}
        for reg in REGIONS:
            means = {
                k: sum(m[k].dice[reg][0] for m in complete) / len(complete)
                for k, _ in methods
                if all(m[k].dice for m in complete)
            }
            text = {k: f"{100 * means[k]:.2f}" if k in means else "-" for k, _ in methods}
            cells[reg] = _bold_best(text, means)
        # The label spans the presence marks and the seeds column.
        label = [f"Mean ({len(complete)} subsets)", *[""] * len(table.columns[:-1])]
        body.append([*label, *(cells[r][k] for k, _ in methods for r in REGIONS)])
    return markdown_table(head, body)


def delta_markdown(table: TableSpec, rows: Sequence[SeedRow]) -> list[str]:
    """The Δ table: per method other than the baseline, the paired Δ WT/TC/ET to the baseline
    of the same subset (Dice points) with its 95% t interval, and the *Pooled* row over all
    (subset, seed) pairs."""
    methods = [(k, lab) for k, lab in _methods(table) if k != BASELINE.key]
    grid = _grid(table, rows)
    head = [*table.columns[:-1], *(f"{lab} Δ {r}" for _, lab in methods for r in REGIONS)]
    body = []
    for by_method in grid.values():
        marks = next(iter(by_method.values())).spec.cells[:-1]
        cells = [
            interval_cell(*by_method[k].delta[reg], len(by_method[k].pairs))
            if by_method[k].delta
            else ""
            for k, _ in methods
            for reg in REGIONS
        ]
        body.append([*marks, *cells])
    pooled_cells = []
    for key, _ in methods:
        for reg in REGIONS:
            deltas = [p[reg] for m in grid.values() for p in m[key].pairs.values()]
            summary = interval_cell(*t_interval(deltas, CONFIDENCE), len(deltas)) if deltas else ""
            pooled_cells.append(summary)
    body.append(["Pooled", *[""] * (len(table.columns[:-1]) - 1), *pooled_cells])
    return markdown_table(head, body)


def method_markdown(table: TableSpec, rows: Sequence[SeedRow]) -> list[str]:
    """The report section of the table: Dice table, Δ table, the pooled AVG Δ and wins of each
    method, how each method was trained, and the duplicate runs averaged per seed."""
    lines = [f"## {table.title}", "", *dice_markdown(table, rows), ""]
    lines += [
        "Dice (%): mean ± std over seeds (sample std) of each seed's mean over cases; bold: the "
        "best method of that subset and region (highest mean). Mean: unweighted mean over the "
        "subsets where each of Baseline, KD, Feature KD and RIRN that has results has them (-: a "
        "method without results on all of them).",
        "",
        *delta_markdown(table, rows),
        "",
        "Δ: paired difference to the Baseline of the same subset over the seeds both have, in "
        f"Dice points, with its {CONFIDENCE:.0%} Student-t interval (n−1 dof); Pooled: over all "
        "(subset, seed) pairs of the method.",
        "",
    ]
    baseline = [r for r in rows if r.spec.key.endswith(f"/{BASELINE.key}")]
    for key, label in _methods(table):
        if key == BASELINE.key:
            continue
        own = [r for r in rows if r.spec.key.split("/", 1)[1] == key]
        summary = pooled([*baseline, *own])
        if summary:
            lines.append(
                f"- {label} vs Baseline: Δ AVG pooled over {summary.n} (subset, seed) pairs = "
                f"{interval_cell(summary.mean, summary.half_width, summary.n)} Dice points; mean "
                f"paired Δ AVG above 0 on {summary.wins} of {summary.compared} subsets."
            )
    trained = ", ".join(f"{label} = `loss={key}`" for key, label in _methods(table))
    lines += ["", f"Methods, told apart by their resolved configs: {trained}."]
    lines += duplicate_lines(rows)
    return lines


def write_method_table(out: Path, table: TableSpec, runs: Sequence[RunResult]) -> list[str]:
    """Write ``kd_comparison.csv`` (per run lines, then each row's seed line, as a grouped
    table's CSV) and return the report section."""
    rows = seed_rows(table, runs)
    per_run = paired_run_rows(table, runs)
    lines = [x for s in rows for x in (*(r for r in per_run if r.spec == s.spec), s)]
    write_table_csv(out / table.file, table, lines)
    return method_markdown(table, rows)
