"""Per-case metric rows, their CSV file, and the per-subset summary (mean and std over cases).

``per_case.csv`` has one row per (run, case, model, region) with the columns of
:data:`PER_CASE_COLUMNS`: ``dice, sensitivity, specificity`` in ``[0, 1]``, ``hd95`` in mm,
``gt_empty`` / ``pred_empty`` as ``true``/``false``, ``subset`` the model's input modalities
(``flair+t1+t1ce+t2`` for the teacher), ``run`` the run folder's name.

The summary has one row per student run (a run is one modality subset), in the paper's subset
order (:func:`rirn.data.modalities.all_subsets`), then one *teacher* row pooling the
full-modality teachers of every run, then a *Mean* row (the plain mean over subsets, as the
paper's tables; several runs of one subset are averaged first) when there are two or more
subsets. Each row holds mean and sample standard deviation (``n - 1``) over cases of Dice and
HD95 for WT, TC, ET and AVG, where AVG is the per-case mean of the three regions. Runs that have
no results (no checkpoint, or their evaluation failed) keep their row with a ``status`` saying
why and no numbers.

The empty-mask convention is BraTS 2018-2021's (:data:`CONVENTION`, see :mod:`rirn.metrics`).

Which module owns which table (docs/architecture.md has the full map): this module owns the
tables of ``python -m rirn.evaluate`` (``per_case.csv``, the summary rows, ``summary.csv``);
:mod:`rirn.evaluation.render` prints that summary as ``summary.md``/``summary.tex``. The paper's
comparison tables of ``python -m rirn.report`` (Tables 4, 6, 7, the 15 subsets, seeds, KD) are
:mod:`rirn.evaluation.report_tables` and its helpers, which read rows made here. Benchmark
results are :mod:`rirn.bench.targets`; ``predictions.csv`` is
:mod:`rirn.evaluation.bundle_predict`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rirn.data.modalities import MODALITIES, PAPER_NAMES, all_subsets, subset_mask, subset_name
from rirn.errors import DataError
from rirn.labels import REGIONS
from rirn.metrics import HD95_EMPTY

PER_CASE_COLUMNS: tuple[str, ...] = (
    "case",
    "subset",
    "model",
    "region",
    "dice",
    "hd95",
    "sensitivity",
    "specificity",
    "gt_empty",
    "pred_empty",
    "run",
)
METRICS: tuple[str, ...] = ("dice", "hd95")
#: Summary columns: the regions and their per-case average.
SUMMARY_REGIONS: tuple[str, ...] = (*REGIONS, "AVG")
_FLOATS = ("dice", "hd95", "sensitivity", "specificity")
_BOOLS = ("gt_empty", "pred_empty")
CONVENTION = (
    "BraTS 2018-2021 empty-mask convention: GT and prediction both empty -> Dice 1, HD95 0; "
    f"exactly one empty -> Dice 0, HD95 {HD95_EMPTY}"
)


def case_rows(
    case_id: str, subset: tuple[str, ...], model: str, metrics: Mapping, run: str
) -> list[dict]:
    """Rows of one case and model, from :func:`rirn.metrics.region_metrics` output."""
    return [
        {
            "case": case_id,
            "subset": subset_name(subset),
            "model": model,
            "region": region,
            **{k: float(metrics[region][k]) for k in _FLOATS},
            **{k: bool(metrics[region][k]) for k in _BOOLS},
            "run": run,
        }
        for region in REGIONS
    ]


def write_per_case_csv(path: str | Path, rows: Iterable[Mapping]) -> Path:
    """Write per-case rows (floats at full precision, booleans as ``true``/``false``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=PER_CASE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: str(row[k]).lower() if k in _BOOLS else row[k] for k in PER_CASE_COLUMNS}
            )
    return path


def read_per_case_csv(path: str | Path) -> list[dict]:
    """Read a file of :func:`write_per_case_csv` back (typed values).

    Raises:
        DataError: missing file or columns, or values that do not parse.
    """
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if not set(PER_CASE_COLUMNS) <= set(reader.fieldnames or ()):
                raise DataError(f"{path}: not a per_case.csv (columns {reader.fieldnames})")
            return [
                {
                    **{k: row[k] for k in PER_CASE_COLUMNS},
                    **{k: float(row[k]) for k in _FLOATS},
                    **{k: row[k] == "true" for k in _BOOLS},
                }
                for row in reader
            ]
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read per-case results ({exc})") from None


@dataclass
class SummaryRow:
    """One row of the summary table.

    Attributes:
        model: ``"student"``, ``"teacher"`` or ``"mean"``.
        subset: the input modalities (``None`` for the Mean row or a run of unknown subset).
        run: the run's name; for the pooled teacher row the runs it pools, comma separated.
        n: number of cases behind the numbers.
        stats: ``{(metric, region): (mean, std)}`` for metric in :data:`METRICS`, region in
            :data:`SUMMARY_REGIONS`; empty when the row has no results.
        status: ``"ok"`` or why there are no results (``"missing: ..."``, ``"failed: ..."``).
    """

    model: str
    subset: tuple[str, ...] | None
    run: str
    n: int = 0
    stats: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    status: str = "ok"

    @property
    def dots(self) -> str:
        """The paper's ``•``/``◦`` marks in Fl, T1, T1c, T2 order ("" when unknown)."""
        return subset_mask(self.subset) if self.subset else ""


@dataclass(frozen=True)
class Problem:
    """A run without results, kept in the tables: its name, subset (if known) and the reason."""

    run: str
    subset: tuple[str, ...] | None
    status: str


def _per_case_values(rows: list[Mapping], metric: str) -> np.ndarray:
    """``(cases, 4)`` values of ``metric`` for WT, TC, ET and their per-case average."""
    by_case: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        by_case.setdefault((r["run"], r["case"]), {})[r["region"]] = float(r[metric])
    values = np.array([[v[reg] for reg in REGIONS] for v in by_case.values()], dtype=np.float64)
    return np.concatenate([values, values.mean(axis=1, keepdims=True)], axis=1)


def _stats(rows: list[Mapping]) -> tuple[int, dict]:
    stats = {}
    n = 0
    for metric in METRICS:
        values = _per_case_values(rows, metric)
        n = values.shape[0]
        std = values.std(axis=0, ddof=1) if n > 1 else np.full(values.shape[1], math.nan)
        for i, region in enumerate(SUMMARY_REGIONS):
            stats[(metric, region)] = (float(values[:, i].mean()), float(std[i]))
    return n, stats


def _subset_key(subset: tuple[str, ...] | None) -> int:
    order = all_subsets()
    return order.index(subset) if subset in order else len(order)


def _mean_row(students: list[SummaryRow]) -> SummaryRow:
    """Mean over subsets of the student means; runs of one subset (seeds, or the same subset
    trained by two experiments into one sweep) are averaged first, so each subset counts once."""
    by_subset: dict = {}
    for r in students:
        if r.stats:
            by_subset.setdefault(r.subset, []).append(r)
    keys = next(iter(by_subset.values()))[0].stats
    stats = {
        key: (
            float(np.mean([np.mean([r.stats[key][0] for r in g]) for g in by_subset.values()])),
            math.nan,
        )
        for key in keys
    }
    runs = sum(len(g) for g in by_subset.values())
    label = f"mean of {len(by_subset)} subsets" + (
        f" ({runs} runs)" if runs > len(by_subset) else ""
    )
    return SummaryRow("mean", None, label, 0, stats)


def summarize(rows: list[Mapping], problems: Iterable[Problem] = ()) -> list[SummaryRow]:
    """Summary rows of per-case rows (see the module docstring for order and contents).

    Args:
        rows: per-case rows (dicts with the :data:`PER_CASE_COLUMNS` keys), of one or more runs.
        problems: runs without results, listed in the table at their subset's position.

    Returns:
        Student rows (by subset order, then run name), the pooled teacher row (when there are
        teacher rows) and the Mean row (when students of at least two subsets have results).
    """
    groups: dict[str, list[Mapping]] = {}
    subsets: dict[str, tuple[str, ...]] = {}
    teacher = []
    for r in rows:
        if r["model"] == "teacher":
            teacher.append(r)
        else:
            groups.setdefault(r["run"], []).append(r)
            subsets[r["run"]] = tuple(r["subset"].split("+"))
    students = [SummaryRow("student", subsets[run], run, *_stats(g)) for run, g in groups.items()]
    students += [SummaryRow("student", p.subset, p.run, status=p.status) for p in problems]
    students.sort(key=lambda r: (_subset_key(r.subset), r.run))
    out = list(students)
    if teacher:
        runs = ",".join(sorted({r["run"] for r in teacher}))
        out.append(SummaryRow("teacher", MODALITIES, runs, *_stats(teacher)))
    if len({r.subset for r in students if r.stats}) >= 2:
        out.append(_mean_row(students))
    return out


@dataclass(frozen=True)
class PhenotypeRow:
    """Mean Dice of one model and subset over the cases of one phenotype.

    Attributes:
        model: ``"student"`` or ``"teacher"``.
        subset: the input modalities' name (``subset_name``).
        run: the student's run; ``""`` for the teacher row, which pools every run's teacher
            (as the summary's teacher row does).
        phenotype: the regions the ground truth holds (:func:`rirn.labels.phenotype`).
        n: number of (run, case) pairs.
        dice: mean Dice for WT, TC, ET and AVG (:data:`SUMMARY_REGIONS`).
    """

    model: str
    subset: str
    run: str
    phenotype: str
    n: int
    dice: tuple[float, float, float, float]


def phenotype_rows(rows: list[Mapping]) -> list[PhenotypeRow]:
    """Dice by phenotype: per-case rows grouped by model, subset and run (one row per student
    run, as in the summary; the teachers of all runs pooled) and by the regions present in each
    case's ground truth (read off ``gt_empty``), so a collapse on a rare phenotype (no
    enhancing tumour) shows instead of hiding in the mean. Sorted by model (students first),
    subset, run, then phenotype."""
    # A case's ground truth is the same for every model of its run.
    present: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        if not r["gt_empty"]:
            present.setdefault((r["run"], r["case"]), set()).add(r["region"])
    groups: dict[tuple[str, str, str], list[Mapping]] = {}
    for r in rows:
        regions = present.get((r["run"], r["case"]), set())
        name = "+".join(x for x in REGIONS if x in regions) or "none"
        run = r["run"] if r["model"] == "student" else ""
        groups.setdefault((r["model"], r["subset"], run, name), []).append(r)
    out = []
    for (model, subset, run, name), group in groups.items():
        values = _per_case_values(group, "dice")
        dice = tuple(float(v) for v in values.mean(axis=0))
        out.append(PhenotypeRow(model, subset, run, name, values.shape[0], dice))
    out.sort(key=lambda p: (p.model != "student", p.subset, p.run, p.phenotype))
    return out


def summary_columns() -> list[str]:
    """Column names of ``summary.csv``."""
    head = ["model", "subset", "run", *(PAPER_NAMES[m] for m in MODALITIES), "n", "status"]
    values = [
        f"{metric}_{region}_{stat}"
        for metric in METRICS
        for region in SUMMARY_REGIONS
        for stat in ("mean", "std")
    ]
    return [*head, *values, "inference", "postprocess", "convention"]


def _cell(value: float) -> float | str:
    return "" if math.isnan(value) else value


def write_summary_csv(
    path: str | Path, rows: list[SummaryRow], inference: str, postprocess: str
) -> Path:
    """Write ``summary.csv``: one line per :class:`SummaryRow`; Dice as a fraction, HD95 in mm,
    empty cells where there is no number (no results, or std of one case / of the Mean row)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(summary_columns())
        for row in rows:
            dots = list(row.dots) if row.dots else [""] * len(MODALITIES)
            subset = subset_name(row.subset) if row.subset else ""
            values = [
                _cell(row.stats.get((metric, region), (math.nan, math.nan))[i])
                for metric in METRICS
                for region in SUMMARY_REGIONS
                for i in (0, 1)
            ]
            writer.writerow(
                [row.model, subset, row.run, *dots, row.n or "", row.status, *values]
                + [inference, postprocess, CONVENTION]
            )
    return path
