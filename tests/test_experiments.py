"""The paper's experiments: the sweep configs (composed with Hydra, no training) and
``python -m rirn.report`` over a real two-run smoke multirun (one shared module fixture: two
1-epoch trainings), plus the report tables on hand-made results."""

from __future__ import annotations

import csv
import functools
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rirn.config import CONFIG_DIR
from rirn.data.modalities import MODALITIES, all_subsets, parse_modalities, subset_name
from rirn.errors import ConfigError, DataError
from rirn.evaluation.report_tables import (
    NO_RUN,
    TABLES,
    RunResult,
    detect_tables,
    make_variant,
    paper_rows,
    row_runs,
    subset_summary,
    table_rows,
    variant_of,
)
from rirn.evaluation.summary import SummaryRow, read_per_case_csv
from rirn.labels import REGIONS
from rirn.report import run as report
from rirn.report import write_table
from rirn.training.setup import check_config

from .conftest import compose_config, run_cli

T, F = True, False
# The paper's rows, written out here independently of rirn.evaluation.report_tables.
ABLATION_SWITCHES = {
    (F, F, F, F),
    (T, F, F, F),
    (T, T, F, F),
    (F, F, T, F),
    (T, T, T, F),
    (T, T, T, T),
}
SINGLES = {("flair",), ("t1",), ("t1ce",), ("t2",)}


def _compose_train(overrides: list[str], hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=hydra_config)


def _sweep_jobs(experiment: str, extra: tuple[str, ...] = ()) -> list[list[str]]:
    """The override list of every job of ``-m experiment=NAME [extra]``, expanded as Hydra's
    basic sweeper does: the composed ``hydra.sweeper.params``, then the command line's."""
    cfg = _compose_train([f"experiment={experiment}"], hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()] + list(extra)
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return batch


@functools.cache
def _job_configs(experiment: str) -> tuple:
    return tuple(
        _compose_train([f"experiment={experiment}", *job]) for job in _sweep_jobs(experiment)
    )


def _switches(cfg) -> tuple[bool, ...]:
    return tuple(bool(cfg.loss[k]) for k in ("crr", "mf", "car", "adv"))


def _composed_runs(experiment: str) -> list[RunResult]:
    return [
        RunResult(f"{experiment}/{i}", variant_of(cfg), SummaryRow("student", None, str(i)))
        for i, cfg in enumerate(_job_configs(experiment))
    ]


@pytest.mark.parametrize("experiment", ["ablation", "unimodal", "aggregation", "all_subsets"])
def test_sweep_jobs_compose_to_paper_rows_and_validate(experiment, tmp_path):
    configs = _job_configs(experiment)
    rows = {(parse_modalities(c.modality), _switches(c), c.loss.aggregation) for c in configs}
    assert len(rows) == len(configs)  # no two jobs train the same thing
    full = (T, T, T, T)
    expected = {
        "ablation": {(("t1ce",), s, "mean") for s in ABLATION_SWITCHES},
        "unimodal": {(m, s, "mean") for m in SINGLES for s in ((F, F, F, F), full)},
        "aggregation": {(("t1ce",), full, a) for a in ("mean", "max", "min", "maxmin")},
        "all_subsets": {(s, full, "mean") for s in all_subsets()},
    }[experiment]
    assert rows == expected
    assert (
        len(configs)
        == {"ablation": 6, "unimodal": 8, "aggregation": 4, "all_subsets": 15}[experiment]
    )
    for job in _sweep_jobs(experiment):  # validated as on a CPU-only machine
        cfg = _compose_train([f"experiment={experiment}", *job, "trainer.device=cpu"])
        settings = check_config(cfg, tmp_path)
        assert settings.device.type == "cpu" and settings.modalities == parse_modalities(
            cfg.modality
        )


@pytest.mark.parametrize(
    ("experiment", "table"),
    [
        ("ablation", "ablation"),
        ("unimodal", "unimodal"),
        ("aggregation", "aggregation"),
        ("all_subsets", "subsets"),
    ],
)
def test_report_detects_each_experiment_and_fills_every_row(experiment, table):
    runs = _composed_runs(experiment)
    (found,) = detect_tables(runs)
    assert found.name == table
    assert all(len(row_runs(spec, runs)) == 1 for spec in found.rows)
    assert {r.name for spec in found.rows for r in row_runs(spec, runs)} == {r.name for r in runs}


def test_command_line_values_replace_the_experiments_sweep():
    jobs = _sweep_jobs("unimodal", ("modality=t1,t2,flair",))
    assert sorted(map(sorted, jobs)) == sorted(
        sorted([f"modality={m}", f"loss={loss}"])
        for m in ("t1", "t2", "flair")
        for loss in ("baseline", "rirn")
    )


def test_one_sweep_folder_with_every_experiment_gets_every_table():
    runs = [
        r for e in ("ablation", "unimodal", "aggregation", "all_subsets") for r in _composed_runs(e)
    ]
    assert [t.name for t in detect_tables(runs)] == [
        "ablation",
        "unimodal",
        "aggregation",
        "subsets",
    ]
    # The full T1ce run is trained by all four experiments: Table 4's last row has four lines.
    assert len(row_runs(TABLES[0].row("rirn"), runs)) == 4


def _result(name: str, modality: str, switches, dice_avg: float | None, agg="mean"):
    """A run with WT = TC = ET = AVG = ``dice_avg`` (None: failed)."""
    if dice_avg is None:
        return RunResult(
            name,
            make_variant(modality, switches, agg),
            SummaryRow("student", None, name, status="failed: boom"),
        )
    stats = {("dice", r): (dice_avg, 0.1) for r in (*REGIONS, "AVG")}
    row = SummaryRow("student", parse_modalities(modality), name, 3, stats)
    return RunResult(name, make_variant(modality, switches, agg), row)


def test_table_rows_deltas_missing_and_fallback_detection():
    runs = [
        _result("b1", "t1ce", (F, F, F, F), 0.5),
        _result("b2", "t1ce", (F, F, F, F), 0.7, agg="max"),  # aggregation unused without CRR
        _result("r", "t1ce", (T, T, T, T), 0.65),
        _result("x", "t1ce", (T, T, F, F), None),
    ]
    # No defining row (no +CRR/+CAR/...) except the failed +CRR+MF run: ablation is chosen.
    assert [t.name for t in detect_tables(runs)] == ["ablation"]
    assert [t.name for t in detect_tables(runs[:3])] == ["ablation", "unimodal"]  # fallback
    rows = {(r.spec.key, r.run): r for r in table_rows(TABLES[0], runs)}
    assert len(rows) == 7  # 2 baseline lines, 3 missing rows, 1 failed, 1 full
    assert rows[("rirn", "r")].delta["AVG"] == pytest.approx(0.65 - (0.5 + 0.7) / 2)
    assert rows[("baseline", "b1")].delta == {} and rows[("crr_mf", "x")].status == "failed: boom"
    assert rows[("crr", "")].status == NO_RUN and rows[("crr", "")].dice == {}
    paper = {r.spec.key: r for r in paper_rows(TABLES[2])}  # Table 7: deltas against Avg
    assert paper["max"].delta["AVG"] == pytest.approx(0.8101 - 0.8155)
    assert paper["mean"].delta == {} and paper["mean"].dice["WT"][0] == pytest.approx(0.8069)


def test_subset_table_keeps_absent_subsets_and_pools_teachers(tmp_path):
    table = TABLES[3]
    runs = [_result("a", "flair", (T, T, T, T), 0.0), _result("b", "t1+t2", (T, T, T, T), 0.0)]
    per_case = []
    for run, subset, dices in (("a", "flair", (0.2, 0.4)), ("b", "t1+t2", (0.6, 1.0))):
        for case, dice in zip(("c1", "c2"), dices, strict=True):
            for model, sub in (("student", subset), ("teacher", "+".join(MODALITIES))):
                per_case += [
                    {
                        "run": run,
                        "case": case,
                        "model": model,
                        "subset": sub,
                        "region": reg,
                        "dice": dice,
                        "hd95": 1.0,
                    }
                    for reg in REGIONS
                ]
    rows = subset_summary(table, runs, per_case)
    students = [r for r in rows if r.model == "student"]
    assert len(students) == 15 and [r.subset for r in students] == all_subsets()
    assert sum(r.status == NO_RUN for r in students) == 13
    done = {r.run: r.stats[("dice", "AVG")][0] for r in students if r.stats}
    assert done == pytest.approx({"a": 0.3, "b": 0.8})
    assert rows[-2].model == "teacher" and rows[-1].model == "mean"
    assert rows[-1].stats[("dice", "WT")][0] == pytest.approx(0.55)

    section = write_table(tmp_path, table, runs, per_case, ("window", "none"), paper=True)
    written = _csv(tmp_path / "subsets.csv")
    assert [r["subset"] for r in written[:15]] == [subset_name(s) for s in all_subsets()]
    assert written[0]["run"] == "a" and float(written[0]["dice_AVG_mean"]) == pytest.approx(0.3)
    assert written[4]["run"] == "modality=flair+t1 loss=rirn" and written[4]["status"] == NO_RUN
    assert (tmp_path / "subsets.tex").is_file()
    assert section[0] == "## All 15 modality subsets (layout of Tables 1-3)"
    assert "| • | ◦ | ◦ | ◦ | student | 2 | 30.00 ± 14.14 | 30.00 ± 14.14 |" in "\n".join(section)


# --- a real smoke multirun and its report -------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_sweep(cache_root, tmp_path_factory) -> Path:
    """``python -m rirn.train -m loss=baseline,rirn`` (T1ce, debug=smoke, 1 epoch each)."""
    sweep = tmp_path_factory.mktemp("experiments") / "sweep"
    args = [
        "-m",
        "rirn.train",
        "-m",
        "debug=smoke",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "loss=baseline,rirn",
        f"data.cache_root={cache_root}",
        f"hydra.sweep.dir={sweep}",
    ]
    result = run_cli(args, cwd=sweep.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _run_named(sweep: Path, loss: str) -> Path:
    (run,) = sweep.glob(f"loss={loss},*")
    return run


def _summary_avg(run: Path) -> float:
    (student,) = [r for r in _csv(run / "eval" / "summary.csv") if r["model"] == "student"]
    return float(student["dice_AVG_mean"])


def _per_case_avg(run: Path) -> float:
    """Mean over cases of the per-case mean of WT, TC, ET, straight from per_case.csv."""
    rows = [r for r in read_per_case_csv(run / "eval" / "per_case.csv") if r["model"] == "student"]
    cases = sorted({r["case"] for r in rows})
    per_case = [sum(r["dice"] for r in rows if r["case"] == c) / len(REGIONS) for c in cases]
    return sum(per_case) / len(per_case)


def test_report_over_smoke_sweep(smoke_sweep, tmp_path):
    out, cwd = tmp_path / "report", tmp_path / "cwd"
    cwd.mkdir()
    args = ["-m", "rirn.report", f"sweep_dir={smoke_sweep}", f"output_dir={out}", "progress=false"]
    result = run_cli(args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(cwd.iterdir()) == []  # no outputs/ or .hydra/ in the working directory
    assert sorted(p.name for p in out.iterdir()) == [
        "all_runs",
        "report.md",
        "table4_ablation.csv",
        "table6_unimodal.csv",
    ]

    base, full = _run_named(smoke_sweep, "baseline"), _run_named(smoke_sweep, "rirn")
    table4 = [r for r in _csv(out / "table4_ablation.csv") if r["source"] == "this sweep"]
    assert [(r["row"], r["status"]) for r in table4] == [
        ("baseline", "ok"),
        ("+CRR", NO_RUN),
        ("+CRR+MF", NO_RUN),
        ("+CAR", NO_RUN),
        ("+CRR+MF+CAR", NO_RUN),
        ("+CRR+MF+CAR+ADV", "ok"),
    ]
    assert table4[0]["run"] == base.name and table4[-1]["run"] == full.name
    for line, run in ((table4[0], base), (table4[-1], full)):
        assert float(line["dice_AVG_mean"]) == pytest.approx(_summary_avg(run), abs=1e-12)
        assert float(line["dice_AVG_mean"]) == pytest.approx(_per_case_avg(run), abs=1e-9)
    delta = _summary_avg(full) - _summary_avg(base)
    assert float(table4[-1]["delta_AVG"]) == pytest.approx(delta, abs=1e-12)
    assert table4[0]["delta_AVG"] == "" and table4[1]["dice_AVG_mean"] == ""
    paper = [r for r in _csv(out / "table4_ablation.csv") if r["source"] == "paper (BraTS 2018)"]
    assert [float(r["dice_AVG_mean"]) for r in paper] == [
        0.7952,
        0.7975,
        0.8051,
        0.8053,
        0.8111,
        0.8155,
    ]
    assert float(paper[-1]["delta_AVG"]) == pytest.approx(0.0203)

    table6 = _csv(out / "table6_unimodal.csv")
    t1ce = [r for r in table6 if r["modality"] == "t1ce" and r["source"] == "this sweep"]
    assert [r["run"] for r in t1ce] == [base.name, full.name]
    assert float(t1ce[1]["delta_AVG"]) == pytest.approx(delta, abs=1e-12)

    md = (out / "report.md").read_text()
    assert "## Table 4: loss ablation on T1ce" in md and "## Table 6" in md
    assert f"| +CRR+MF+CAR+ADV | `{full.name}` | 2 |" in md and f"| {100 * delta:+.2f} |" in md
    assert "| ✓ |  |  |  | +CRR | - |  | missing | missing | missing | missing |  |" in md
    assert "row `crr`: missing: no run in the sweep; train it with " in md
    assert "`python -m rirn.train modality=t1ce loss=crr`" in md
    assert "Runs without results" not in md

    # Again, in-process: every run's eval/ is current, so nothing is evaluated again.
    stamps = {r: (r / "eval" / "per_case.csv").stat().st_mtime_ns for r in (base, full)}
    report(
        compose_config(
            "report",
            [
                f"sweep_dir={smoke_sweep}",
                f"output_dir={out}",
                "progress=false",
                "paper=false",
                "tables=[ablation]",
            ],
        )
    )
    assert {r: (r / "eval" / "per_case.csv").stat().st_mtime_ns for r in stamps} == stamps
    assert not (out / "table6_unimodal.csv").exists()  # stale: not in this report
    assert "Table 6" not in (out / "report.md").read_text()
    assert {r["source"] for r in _csv(out / "table4_ablation.csv")} == {"this sweep"}


def _odd_run(sweep: Path, like: Path) -> Path:
    """A run folder whose name says nothing, whose config says +CRR and whose checkpoint is
    corrupt."""
    odd = sweep / "renamed-run"
    shutil.copytree(like / ".hydra", odd / ".hydra")
    config = OmegaConf.load(odd / ".hydra" / "config.yaml")
    config.loss.mf = config.loss.car = config.loss.adv = False
    OmegaConf.save(config, odd / ".hydra" / "config.yaml")
    (odd / "checkpoints").mkdir()
    (odd / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    return odd


def test_report_lists_missing_and_failed_runs(smoke_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(smoke_sweep, sweep, ignore=shutil.ignore_patterns("eval", "tb"))
    base, full = _run_named(sweep, "baseline"), _run_named(sweep, "rirn")
    shutil.rmtree(base / "checkpoints")
    odd = _odd_run(sweep, full)
    out = report(compose_config("report", [f"sweep_dir={sweep}", "progress=false"]))
    assert out == sweep / "report"
    assert sorted(p.name for p in out.glob("*.csv")) == ["table4_ablation.csv"]  # +CRR: ablation
    table4 = {r["row"]: r for r in _csv(out / "table4_ablation.csv") if r["source"] == "this sweep"}
    assert table4["baseline"]["status"] == "missing: no checkpoint"
    assert table4["baseline"]["run"] == base.name and table4["baseline"]["dice_AVG_mean"] == ""
    assert table4["+CRR"]["run"] == odd.name and table4["+CRR"]["status"].startswith("failed: ")
    assert "cannot be read" in table4["+CRR"]["status"]
    assert table4["+CRR+MF+CAR+ADV"]["status"] == "ok"
    assert table4["+CRR+MF+CAR+ADV"]["delta_AVG"] == ""  # no baseline to compare with
    md = (out / "report.md").read_text()
    assert f"## Runs without results\n\n- `{base.name}`: missing: no checkpoint" in md
    assert f"- `{odd.name}`: failed: checkpoint" in md
    assert "| ✓ |  |  |  | +CRR | `renamed-run` |  | failed | failed | failed | failed |  |" in md

    shutil.rmtree(full / "checkpoints")
    with pytest.raises(DataError, match="could be evaluated; see .*report.md"):
        report(compose_config("report", [f"sweep_dir={sweep}", "progress=false"]))
    md = (out / "report.md").read_text()
    assert "0 with results, 3 without" in md
    assert f"- `{full.name}`: missing: no checkpoint" in md


def test_report_errors_are_one_line(tmp_path):
    result = run_cli(["-m", "rirn.report", f"sweep_dir={tmp_path / 'nope'}"], cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sweep_dir=")
    with pytest.raises(ConfigError, match="give sweep_dir"):
        report(compose_config("report", []))
    with pytest.raises(ConfigError, match="tables=.*unknown: table5"):
        report(compose_config("report", [f"sweep_dir={tmp_path}", "tables=[ablation,table5]"]))
    with pytest.raises(ConfigError, match="run_dir/checkpoint"):
        report(compose_config("report", [f"sweep_dir={tmp_path}", f"run_dir={tmp_path}"]))
