"""``python -m rirn.report``: the paper's tables (4, 6, 7 and the 15 subsets) from a sweep, and
the knowledge-transfer comparison (baseline, logit KD, feature KD, RIRN; ``kd_comparison``).

Examples::

    python -m rirn.train -m experiment=ablation hydra.sweep.dir=multirun/ablation
    python -m rirn.report sweep_dir=multirun/ablation output_dir=reports/ablation
    python -m rirn.report sweep_dir=DIR tables=[ablation,aggregation] paper=false
    python -m rirn.report sweep_dir=DIR inference.mode=center_crop device=cuda

The runs of ``sweep_dir`` are evaluated by :func:`rirn.evaluate.evaluate_sweep`, with
``reuse=true`` by default: a run whose ``eval/`` results match its checkpoint and the settings
is read back, not evaluated again. Every option of ``python -m rirn.evaluate`` applies. Each
run's resolved config (``<run>/.hydra/config.yaml``) says which table rows it fills and which
tables the sweep supports (:mod:`rirn.evaluation.report_tables`), and its top-level ``seed``.
Runs of one row that differ only in ``seed`` are grouped (:mod:`rirn.evaluation.seed_tables`)
when some row of a table has two or more seeds: each row of Tables 4, 6 and 7 is then one line
with Dice mean ± sample std over seeds and the delta to its reference row paired by seed, with a
95% Student-t interval (``n - 1`` dof) over the pairs; Table 6 adds the AVG delta pooled over
all (modality, seed) pairs and on how many modalities RIRN beats the baseline. Runs of one seed
in one row are averaged first (and named). The CSVs keep one line per run (with its ``seed``)
and add one line per row with the seed statistics. Rows lacking a seed that other runs of the
sweep have are listed under *Missing seeds*, with the command that trains them. With one seed
the tables have one line per run, deltas against the reference row's mean over its runs.
A sweep with KD or feature-KD runs gets the ``kd_comparison`` table
(:mod:`rirn.evaluation.method_table`): one row per subset, WT/TC/ET per method over seeds, and
each method's paired Δ to the baseline. Written to ``output_dir`` (default
``<sweep_dir>/report``):

==========================  ==================================================================
``report.md``               the tables, the paper's numbers (``paper=true``), runs without
                            results, expected rows without a run, runs that fit no table
``table4_ablation.csv``     one CSV per table shown: Dice (fractions), deltas, paper rows,
                            seed lines (columns: :mod:`rirn.evaluation.report_csv`)
``table6_unimodal.csv``
``table7_aggregation.csv``
``kd_comparison.csv``
``subsets.csv``/``.tex``    the 15-subset table, in the format of ``summary.csv``/``.tex``
``all_runs/``               ``python -m rirn.evaluate sweep_dir=...`` output over every run
==========================  ==================================================================
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from rirn.config import CONFIG_DIR
from rirn.errors import ConfigError, DataError, cli_errors
from rirn.evaluate import check_case_options, evaluate_sweep
from rirn.evaluation import method_table
from rirn.evaluation.data import split_part_name
from rirn.evaluation.recipes import difference_lines, recipe_differences
from rirn.evaluation.render import markdown_table, render_latex, render_markdown
from rirn.evaluation.report_csv import write_table_csv
from rirn.evaluation.report_tables import (
    NO_RUN,
    PAPER_SOURCE,
    SWEEP_SOURCE,
    TABLES,
    ReportRow,
    RunResult,
    TableSpec,
    Variant,
    detect_tables,
    paper_rows,
    row_runs,
    subset_summary,
    table_rows,
    train_overrides,
    variant_of,
)
from rirn.evaluation.runs import RunEntry, find_runs
from rirn.evaluation.seed_tables import (
    grouped,
    missing_seed_lines,
    paired_run_rows,
    seed_markdown,
    seed_rows,
)
from rirn.evaluation.summary import (
    SUMMARY_REGIONS,
    Problem,
    SummaryRow,
    read_per_case_csv,
    summarize,
    write_summary_csv,
)

ALL_RUNS = "all_runs"
#: Every table the report can show, in report order: the paper's, then the knowledge-transfer
#: comparison (:mod:`rirn.evaluation.method_table`).
REPORT_TABLES: tuple[TableSpec, ...] = (*TABLES, method_table.KD_TABLE)
TABLE_NAMES: tuple[str, ...] = tuple(t.name for t in REPORT_TABLES)


def read_run_config(run_dir: Path) -> tuple[Variant | None, int | None]:
    """The :class:`Variant` and top-level ``seed`` of a run's ``.hydra/config.yaml``; each is
    ``None`` when unreadable or absent."""
    try:
        config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    except Exception:  # noqa: BLE001 - any unreadable config means "fits no table"
        return None, None
    try:
        variant = variant_of(config)
    except Exception:  # noqa: BLE001 - an odd config means "fits no table"
        variant = None
    seed = config.get("seed") if isinstance(config, DictConfig) else None
    # A seed of another type (a string, a list) cannot be paired with the others' ints.
    return variant, seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def read_config_dict(run_dir: Path) -> dict | None:
    """A run's ``.hydra/config.yaml`` as a plain dict, interpolations left as written
    (``None`` when unreadable)."""
    try:
        config = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    except Exception:  # noqa: BLE001 - an unreadable config is reported elsewhere
        return None
    return config if isinstance(config, dict) else None


def read_variant(run_dir: Path) -> Variant | None:
    """The :class:`Variant` of a run's ``.hydra/config.yaml``; ``None`` when unreadable."""
    return read_run_config(run_dir)[0]


def parse_tables(value) -> tuple[TableSpec, ...] | None:
    """The tables of ``tables=``: ``None`` for ``auto`` (:func:`detect_tables` decides once
    the runs are known), else the named ones in report order.

    Raises:
        ConfigError: an unknown table name, or an empty list.
    """
    if isinstance(value, str) and value == "auto":
        return None
    names = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    unknown = [str(n) for n in names if n not in TABLE_NAMES]
    if unknown or not names:
        raise ConfigError(
            f"tables={value} must be auto or a list of {', '.join(TABLE_NAMES)} "
            f"(unknown: {', '.join(unknown) or 'empty list'})"
        )
    return tuple(t for t in REPORT_TABLES if t.name in names)


def _read_summary(path: Path) -> tuple[list[Problem], tuple[str, str]]:
    """The runs without results of a sweep ``summary.csv`` and its (inference, post-processing)
    descriptions."""
    with path.open(newline="") as f:
        lines = list(csv.DictReader(f))
    problems = [
        Problem(r["run"], tuple(r["subset"].split("+")) if r["subset"] else None, r["status"])
        for r in lines
        if r["model"] == "student" and r["status"] != "ok"
    ]
    settings = (lines[0]["inference"], lines[0]["postprocess"]) if lines else ("-", "-")
    return problems, settings


def evaluate_runs(cfg: DictConfig, out: Path) -> tuple[list[dict], list[Problem], tuple]:
    """Evaluate every run of ``cfg.sweep_dir`` (each into its own ``eval/``, reused when
    current), writing the combined files to ``out``.

    Returns:
        The per-case rows, the runs without results and the (inference, post-processing)
        descriptions. When no run could be evaluated the rows are empty: the report still
        lists every run and why.
    """
    out.mkdir(parents=True, exist_ok=True)
    # A summary left by an earlier report must not pass for this evaluation's.
    (out / "summary.csv").unlink(missing_ok=True)
    try:
        evaluate_sweep(OmegaConf.merge(cfg, {"output_dir": str(out)}))
    except DataError:
        if not (out / "summary.csv").is_file():
            raise
    problems, settings = _read_summary(out / "summary.csv")
    return read_per_case_csv(out / "per_case.csv"), problems, settings


def run_results(entries: Sequence[RunEntry], rows: list[dict], problems) -> list[RunResult]:
    """One :class:`RunResult` per run folder, in the sweep's order."""
    rows_by_run = {r.run: r for r in summarize(rows, problems) if r.model == "student"}
    missing = "failed: not in the evaluation's results"
    return [
        RunResult(
            e.name,
            variant,
            rows_by_run.get(e.name) or SummaryRow("student", e.subset, e.name, status=missing),
            seed,
        )
        for e in entries
        for variant, seed in [read_run_config(e.path)]
    ]


def _nested(markdown: str) -> list[str]:
    """A :func:`render_markdown` document as a report section: headings one level deeper, its
    own list of runs without results left out (the report's closing sections have them all)."""
    lines = ["#" + line if line.startswith("#") else line for line in markdown.splitlines()]
    end = "### Runs without results"
    return lines[: lines.index(end) - 1] if end in lines else lines


def write_table(out: Path, table: TableSpec, runs, per_case, settings, paper: bool) -> list[str]:
    """Write one table's CSV (and, for the subsets, its LaTeX); returns its report section."""
    if table.name == method_table.NAME:
        return method_table.write_method_table(out, table, runs)
    if table.name == "subsets":
        rows = subset_summary(table, runs, per_case)
        write_summary_csv(out / table.file, rows, *settings)
        (out / Path(table.file).with_suffix(".tex")).write_text(
            render_latex(rows, {"Table": table.title})
        )
        return _nested(render_markdown(rows, {}, table.title))
    lines = [f"## {table.title}", ""]
    if grouped(table, runs):
        by_seed = seed_rows(table, runs)
        lines += seed_markdown(table, by_seed)
        # Per row: its runs, then its seed line, so the CSV reads top to bottom like the table.
        per_run = paired_run_rows(table, runs)
        rows = [x for s in by_seed for x in (*(r for r in per_run if r.spec == s.spec), s)]
    else:
        rows = table_rows(table, runs)
        lines += table_markdown(table, rows)
    reference = paper_rows(table) if paper else []
    if reference:
        lines += ["", f"{PAPER_SOURCE}, for reference:", "", *table_markdown(table, reference)]
    if table.note:
        lines += ["", table.note]
    write_table_csv(out / table.file, table, [*rows, *reference])
    return lines


def train_command(sweep: Path) -> str:
    """How to train a missing run *into this sweep*: ``python -m rirn.train -m experiment=X
    hydra.sweep.dir=SWEEP`` when every run of the sweep was launched with the same
    ``experiment=X`` (read from each run's ``.hydra/overrides.yaml``), so that the new run gets
    the experiment's settings and shares its teachers; else plain ``python -m rirn.train``."""
    experiments = set()
    for path in sorted(sweep.glob("*/.hydra/overrides.yaml")):
        try:
            overrides = [str(o) for o in OmegaConf.load(path)]
        except Exception:  # noqa: BLE001 - an unreadable file says nothing about the sweep
            continue
        experiments.add(next((o for o in overrides if o.startswith("experiment=")), None))
    if len(experiments) != 1 or None in experiments:
        return "python -m rirn.train"
    return f"python -m rirn.train -m {experiments.pop()} hydra.sweep.dir={sweep}"


def _lists(
    tables: Sequence[TableSpec], runs: Sequence[RunResult], command: str = "python -m rirn.train"
) -> list[str]:
    """The report's closing sections: nothing is dropped without being named."""
    lines = []
    failed = [f"- `{r.name}`: {r.summary.status}" for r in runs if r.summary.status != "ok"]
    if failed:
        lines += ["", "## Runs without results", "", *failed]
    absent = [
        f"- {t.title.split(':')[0]}, row `{s.key}`: {NO_RUN}; train it with `{command} {s.train}`"
        for t in tables
        for s in t.rows
        if not row_runs(s, runs)
    ]
    if absent:
        lines += ["", "## Expected rows without a run", "", *absent]
    seeds = missing_seed_lines(tables, runs, command)
    if seeds:
        lines += ["", "## Missing seeds", "", *seeds]
    placed = {r.name for t in tables for s in t.rows for r in row_runs(s, runs)}
    unplaced = [f"- `{r.name}`: {_describe(r.variant)}" for r in runs if r.name not in placed]
    if unplaced:
        lines += ["", "## Runs in none of these tables", "", *unplaced]
    return lines


def _describe(variant: Variant | None) -> str:
    if variant is None:
        return "its .hydra/config.yaml is missing or has no modality/loss switches"
    return f"trained with `{train_overrides(variant)}`"


def table_markdown(table: TableSpec, rows: Sequence[ReportRow]) -> list[str]:
    """Lines of one of Tables 4, 6, 7: label columns, run and n (for the sweep's rows), Dice
    (%) of WT, TC, ET, AVG, and the delta of AVG in Dice points."""
    runs = any(r.source == SWEEP_SOURCE for r in rows)
    head = [*table.columns, *(("run", "n") if runs else ()), *SUMMARY_REGIONS, "Δ AVG"]
    body = []
    for r in rows:
        if r.dice:
            values = [f"{100 * r.dice[reg][0]:.2f}" for reg in SUMMARY_REGIONS]
        else:
            values = [r.status.split(":")[0]] * len(SUMMARY_REGIONS)
        delta = f"{100 * r.delta['AVG']:+.2f}" if r.delta else ""
        run = (f"`{r.run}`" if r.run else "-", str(r.n or "")) if runs else ()
        body.append([*r.spec.cells, *run, *values, delta])
    return markdown_table(head, body)


def _files(table: TableSpec) -> set[str]:
    """The files a table writes: its CSV, and a LaTeX version of the subsets table."""
    tex = {Path(table.file).with_suffix(".tex").name} if table.name == "subsets" else set()
    return {table.file} | tex


def _remove_stale(out: Path, tables: Sequence[TableSpec]) -> None:
    """Delete the files of tables not in this report, left by an earlier one in ``out``."""
    shown = set().union(*(_files(t) for t in tables))
    for name in set().union(*(_files(t) for t in REPORT_TABLES)) - shown:
        (out / name).unlink(missing_ok=True)


def detect_report_tables(runs: Sequence[RunResult]) -> list[TableSpec]:
    """The paper's tables the runs support (:func:`detect_tables`), then the knowledge-transfer
    comparison when some run has KD or feature KD on."""
    tables = detect_tables(runs)
    return tables + [method_table.KD_TABLE] if method_table.has_transfer_runs(runs) else tables


def write_report(cfg: DictConfig, sweep: Path, out: Path, asked: Sequence | None) -> Path:
    """Evaluate the sweep and write the report files into ``out``; returns ``report.md``.

    Args:
        cfg: the report config.
        sweep: the sweep folder.
        out: the report folder.
        asked: the tables to show (``None``: the ones the runs support).
    """
    entries = find_runs(sweep, str(cfg.prefer))
    per_case, problems, settings = evaluate_runs(cfg, out / ALL_RUNS)
    runs = run_results(entries, per_case, problems)
    tables = list(asked) if asked is not None else detect_report_tables(runs)
    # The comparison's rows and methods are the sweep's: its subsets and KD variants.
    tables = [method_table.sweep_table(runs) if t.name == method_table.NAME else t for t in tables]
    _remove_stale(out, tables)
    done = sum(r.summary.status == "ok" for r in runs)
    how = "from the runs' configs" if asked is None else "as asked with tables="
    seeded = any(grouped(t, runs) for t in tables if t.name != "subsets")
    paired = "; paired by seed where grouped" if seeded else ""
    several = (
        "In a table where some row has several seeds each row is one line over seeds (see its "
        "note); otherwise a row with several runs has one line per run."
        if seeded
        else "A row with several runs has one line per run."
    )
    part = split_part_name(str(cfg.split))
    data = f"all cases of {cfg.data.root}" if cfg.data.root else f"{part} split of each run"
    lines = [
        f"# Report of sweep {sweep.name}",
        "",
        f"- Sweep: {sweep}",
        f"- Runs: {len(runs)} run folders, {done} with results, {len(runs) - done} without",
        f"- Tables: {', '.join(t.name for t in tables) or 'none'} ({how})",
        f"- Data: {data}; inference: {settings[0]}; post-processing: {settings[1]}",
        f"- Per-run results: {out / ALL_RUNS / 'summary.md'}",
        "- Cells: student Dice (%), mean over cases; AVG = per-case mean of WT, TC, ET; "
        f"Δ AVG = AVG minus the reference row's AVG (mean over its runs{paired}), in Dice "
        f"points. {several}",
    ]
    configs = {e.name: c for e in entries if (c := read_config_dict(e.path)) is not None}
    lines += difference_lines(recipe_differences(configs))
    for table in tables:
        lines += ["", *write_table(out, table, runs, per_case, settings, bool(cfg.paper))]
    if not tables:
        lines += ["", "No table of the paper fits these runs (see below)."]
    lines += _lists(tables, runs, train_command(sweep))
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    if not done:
        raise DataError(f"no run of sweep_dir={sweep} could be evaluated; see {path}")
    return path


def run(cfg: DictConfig) -> Path:
    """Write the report of ``cfg.sweep_dir`` (see the module docstring); returns the folder."""
    if cfg.get("run_dir") or cfg.get("checkpoint"):
        raise ConfigError(
            "rirn.report takes sweep_dir=DIR; run_dir/checkpoint= are for rirn.evaluate"
        )
    if not cfg.sweep_dir:
        raise ConfigError("give sweep_dir=DIR (a Hydra multirun folder of python -m rirn.train -m)")
    check_case_options(cfg)
    asked = parse_tables(cfg.tables)
    sweep = Path(str(cfg.sweep_dir)).expanduser()
    out = Path(str(cfg.output_dir)).expanduser() if cfg.output_dir else sweep / "report"
    path = write_report(cfg, sweep, out, asked)
    print(path.read_text(), flush=True)
    print(f"report written to {out} (report.md, one CSV per table, {ALL_RUNS}/)")
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="report")
@cli_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
