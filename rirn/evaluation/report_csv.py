"""The CSV files of Tables 4, 6 and 7 (``table4_ablation.csv``, ``table6_unimodal.csv``,
``table7_aggregation.csv``) and of the knowledge-transfer comparison (``kd_comparison.csv``,
:mod:`rirn.evaluation.method_table`), written by :func:`write_table_csv`.

Columns (:data:`CSV_COLUMNS`); Dice and deltas are fractions (0.0123 = 1.23 Dice points), empty
cells where there is no number:

============================  ======================================================================
``source``                    ``this sweep`` (one run, or a row without a run),
                              ``paper (BraTS 2018)``, or ``this sweep (mean over seeds)`` (one row
                              over its seeds; only in a table grouped over seeds,
                              :mod:`rirn.evaluation.seed_tables`, and always in
                              ``kd_comparison.csv``)
``row`` to ``feature_norm``   the row: its label, modality subset, loss switches (``crr``, ``mf``,
                              ``car``, ``adv``, ``kd``, ``feature``), CRR aggregation, KD
                              temperature, feature standardisation (empty where that term is off)
``run``                       the run folder; on a seeds line the runs with results, comma separated
``n``                         cases behind each number; on a seeds line the cases per run (empty
                              when the runs differ)
``status``                    ``ok`` or why there are no numbers
``dice_{reg}_mean``/``_std``  mean and sample std *over cases* of one run; on a seeds line mean and
                              sample std *over seeds* of the per-seed means (``reg``: WT, TC, ET,
                              AVG)
``delta_{reg}``               mean minus the reference row's: against the reference's mean over its
                              runs, or, in a grouped table, paired with the reference's run(s) of
                              the same seed; on a seeds line the mean of the paired deltas
``reference``, ``train``      the reference row's label; the ``python -m rirn.train`` overrides
``seed``                      the run's ``seed`` (empty for paper rows, seeds lines, unknown seeds)
``seeds``, ``n_seeds``        seeds line: the seeds with results (``1,2,3``) and their number
``n_pairs``                   seeds line: the seeds paired with the reference row
``delta_{reg}_lo``/``_hi``    seeds line: 95% Student-t interval of the paired delta
                              (``n_pairs - 1`` dof; empty for fewer than two pairs)
============================  ======================================================================
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

from rirn.data.modalities import subset_name
from rirn.evaluation.report_tables import SWITCHES, ReportRow, TableSpec
from rirn.evaluation.seed_tables import SEEDS_SOURCE, SeedRow
from rirn.evaluation.seeds import format_seeds
from rirn.evaluation.summary import SUMMARY_REGIONS

#: The columns of the seed statistics, after the per-run columns (module docstring).
SEED_COLUMNS: tuple[str, ...] = (
    "seed",
    "seeds",
    "n_seeds",
    "n_pairs",
    *(f"delta_{reg}_{b}" for reg in SUMMARY_REGIONS for b in ("lo", "hi")),
)
CSV_COLUMNS: tuple[str, ...] = (
    "source",
    "row",
    "modality",
    *SWITCHES,
    "aggregation",
    "kd_temperature",
    "feature_norm",
    "car_normalize",
    "car_temperature",
    "run",
    "n",
    "status",
    *(f"dice_{reg}_{s}" for reg in SUMMARY_REGIONS for s in ("mean", "std")),
    *(f"delta_{reg}" for reg in SUMMARY_REGIONS),
    "reference",
    "train",
    *SEED_COLUMNS,
)


def _blank_nan(fields: dict[str, object]) -> dict[str, object]:
    return {k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}


def seed_csv_fields(row: SeedRow) -> dict[str, object]:
    """The cells of a :class:`SeedRow`'s line that are not the row's labels, by column name
    (meanings in the module docstring)."""
    fields: dict[str, object] = {
        "source": SEEDS_SOURCE,
        "run": ",".join(row.runs),
        "n": row.n or "",
        "status": row.status,
        "seeds": format_seeds(row.seeds),
        "n_seeds": len(row.seeds),
        "n_pairs": len(row.pairs) if row.spec.reference else "",
    }
    for reg in SUMMARY_REGIONS:
        mean, std = row.dice.get(reg, (math.nan, math.nan))
        delta, half = row.delta.get(reg, (math.nan, math.nan))
        fields |= {
            f"dice_{reg}_mean": mean,
            f"dice_{reg}_std": std,
            f"delta_{reg}": delta,
            f"delta_{reg}_lo": delta - half,
            f"delta_{reg}_hi": delta + half,
        }
    return _blank_nan(fields)


def run_csv_fields(row: ReportRow) -> dict[str, object]:
    """The cells of a :class:`ReportRow`'s line (one run, a missing row or a paper row) that
    are not the row's labels, by column name."""
    fields: dict[str, object] = {
        "source": row.source,
        "run": row.run,
        "n": row.n or "",
        "status": row.status,
        "seed": "" if row.seed is None else row.seed,
    }
    for reg in SUMMARY_REGIONS:
        mean, std = row.dice.get(reg, (math.nan, math.nan))
        fields |= {f"dice_{reg}_mean": mean, f"dice_{reg}_std": std}
        fields[f"delta_{reg}"] = row.delta.get(reg, math.nan)
    return _blank_nan(fields)


def _csv_line(table: TableSpec, row: ReportRow | SeedRow) -> dict[str, object]:
    spec, v = row.spec, row.spec.variant
    labels = {
        "row": spec.label,
        "modality": subset_name(v.subset),
        **{k: str(s).lower() for k, s in zip(SWITCHES, v.switches, strict=True)},
        "aggregation": v.aggregation or "",
        "kd_temperature": "" if v.kd_temperature is None else v.kd_temperature,
        "feature_norm": "" if v.feature_norm is None else str(v.feature_norm).lower(),
        "car_normalize": "" if v.car_relation is None else str(v.car_relation[0]).lower(),
        "car_temperature": "" if v.car_relation is None else v.car_relation[1],
        "reference": table.row(spec.reference).label if spec.reference else "",
        "train": spec.train,
    }
    fields = seed_csv_fields(row) if isinstance(row, SeedRow) else run_csv_fields(row)
    return labels | fields


def write_table_csv(
    path: str | Path, table: TableSpec, rows: Iterable[ReportRow | SeedRow]
) -> Path:
    """Write one CSV line per :class:`ReportRow` or :class:`SeedRow` of ``table``, in the given
    order, with the columns of :data:`CSV_COLUMNS` (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(_csv_line(table, row) for row in rows)
    return path
