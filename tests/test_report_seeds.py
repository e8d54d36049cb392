"""``python -m rirn.report`` over runs that differ only in ``seed``: the statistics of
:mod:`rirn.evaluation.seeds`, the grouped Tables 4/6/7 of :mod:`rirn.evaluation.seed_tables` and
their CSV lines, on hand-made results (no training, no evaluation). Expected numbers are worked
out here by hand or with numpy, never by the code under test."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rirn.data.modalities import parse_modalities
from rirn.errors import ConfigError
from rirn.evaluation.report_tables import (
    TABLES,
    RunResult,
    make_variant,
    table_rows,
)
from rirn.evaluation.seed_tables import (
    SEEDS_SOURCE,
    Pooled,
    grouped,
    missing_seed_lines,
    paired_run_rows,
    pooled,
    pooled_verdict,
    seed_row,
    seed_rows,
)
from rirn.evaluation.seeds import (
    format_seeds,
    mean_std,
    missing_seeds,
    paired_deltas,
    seed_means,
    t_interval,
)
from rirn.evaluation.summary import SummaryRow
from rirn.report import _lists, read_run_config, table_markdown, write_table

ABLATION, UNIMODAL, AGGREGATION = TABLES[0], TABLES[1], TABLES[2]
REGIONS4 = ("WT", "TC", "ET", "AVG")
# Student-t quantiles t(0.975, dof), from a table (not computed by scipy here).
T975 = {1: 12.706205, 2: 4.302653, 3: 3.182446, 11: 2.200985}
OFF, ON = (False,) * 4, (True,) * 4


def _run(
    name: str,
    modality: str,
    switches,
    seed: int | None,
    dice,
    *,
    agg: str = "mean",
    n: int = 20,
) -> RunResult:
    """A run whose student has mean Dice ``dice`` (one number for every region, or WT, TC, ET,
    AVG) over ``n`` cases; ``stats`` keyed as :func:`rirn.evaluation.summary.summarize` keys
    them, ``(metric, region) -> (mean, std over cases)``."""
    dice = (dice,) * 4 if isinstance(dice, float) else tuple(dice)
    stats = {("dice", reg): (d, 0.1) for reg, d in zip(REGIONS4, dice, strict=True)}
    stats |= {("hd95", reg): (5.0, 1.0) for reg in REGIONS4}
    row = SummaryRow("student", parse_modalities(modality), name, n, stats)
    return RunResult(name, make_variant(modality, switches, agg), row, seed)


def _failed(name: str, modality: str, switches, seed: int | None) -> RunResult:
    row = SummaryRow("student", None, name, status="failed: boom")
    return RunResult(name, make_variant(modality, switches), row, seed)


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --- rirn.evaluation.seeds -------------------------------------------------------------------


def test_t_interval_and_mean_std_by_hand():
    mean, half = t_interval([0.01, 0.03, 0.02])
    # mean 0.02; sample std sqrt(((-0.01)^2 + 0.01^2 + 0) / 2) = 0.01; 4.302653 * 0.01 / sqrt 3
    assert mean == pytest.approx(0.02, abs=1e-15)
    assert half == pytest.approx(0.024841, abs=1e-6)
    assert mean_std([0.01, 0.03, 0.02]) == pytest.approx((0.02, 0.01), abs=1e-15)
    # Two values: std = |a - b| / sqrt(2); half = t(0.975, 1) * std / sqrt(2) = 12.706 * |a-b|/2
    assert t_interval([0.1, 0.3])[1] == pytest.approx(T975[1] * 0.2 / 2, rel=1e-6)
    # 90%: t(0.95, 2) = 2.919986
    assert t_interval([0.01, 0.03, 0.02], 0.90)[1] == pytest.approx(
        2.919986 * 0.01 / math.sqrt(3), rel=1e-6
    )
    one_mean, one_half = t_interval([0.5])
    assert one_mean == 0.5 and math.isnan(one_half)
    assert mean_std([0.5])[0] == 0.5 and math.isnan(mean_std([0.5])[1])
    assert all(math.isnan(x) for x in mean_std([]))


def test_pairing_duplicates_and_missing_seeds():
    # Seed 2 only in the row, seed 4 only in the reference: both have no partner.
    deltas = paired_deltas({3: 0.7, 1: 0.5, 2: 0.6}, {1: 0.4, 3: 0.5, 4: 0.9})
    assert list(deltas) == [1, 3] and deltas == pytest.approx({1: 0.1, 3: 0.2})
    # Two runs of seed 1 count once, as their mean; None sorts last.
    means = seed_means([(1, 0.5), (None, 0.3), (2, 0.4), (1, 0.7)])
    assert list(means) == [1, 2, None] and means == pytest.approx({1: 0.6, 2: 0.4, None: 0.3})
    assert missing_seeds({1, 3}, {3, 2, 1, None, 5}) == [2, 5]
    assert missing_seeds({None}, {None}) == []
    assert format_seeds([3, 1, None, 2, 1]) == "1,2,3,?"


def test_read_run_config_reads_the_seed(tmp_path):
    for name, seed in (("a", 7), ("b", None), ("c", "x")):
        config = {"modality": "t1", "loss": {k: False for k in ("crr", "mf", "car", "adv")}}
        if seed is not None:
            config["seed"] = seed
        (tmp_path / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(config), tmp_path / name / ".hydra" / "config.yaml")
    assert read_run_config(tmp_path / "a") == (make_variant("t1", OFF), 7)
    assert read_run_config(tmp_path / "b") == (make_variant("t1", OFF), None)
    assert read_run_config(tmp_path / "c")[1] is None  # not an int: cannot be paired
    assert read_run_config(tmp_path / "nope") == (None, None)


# --- one row over seeds ----------------------------------------------------------------------


def test_row_mean_std_over_seeds_against_numpy():
    values = {1: (0.80, 0.70, 0.60, 0.70), 2: (0.82, 0.75, 0.58, 0.71), 3: (0.79, 0.71, 0.65, 0.73)}
    runs = [_run(f"b{s}", "t1ce", OFF, s, v) for s, v in values.items()]
    row = seed_row(ABLATION, ABLATION.row("baseline"), runs)
    assert row.status == "ok" and row.seeds == (1, 2, 3) and row.n == 20
    table = np.array(list(values.values()))  # (seeds, regions)
    for i, reg in enumerate(REGIONS4):
        mean = table[:, i].sum() / 3
        std = math.sqrt(((table[:, i] - mean) ** 2).sum() / 2)
        assert row.dice[reg] == pytest.approx((mean, std), abs=1e-12)
    assert row.pairs == {} and row.delta == {}  # the baseline has no reference


def test_paired_delta_ignores_unpaired_seed_and_averages_duplicates(tmp_path):
    runs = [
        _run("b1", "t1ce", OFF, 1, 0.70),
        _run("b2", "t1ce", OFF, 2, 0.72),
        _run("b3", "t1ce", OFF, 3, 0.71),
        _run("r1", "t1ce", ON, 1, 0.71),
        _run("r1-again", "t1ce", ON, 1, 0.73),  # the same config trained twice: mean 0.72
        _run("r3", "t1ce", ON, 3, 0.74),
        _run("r4", "t1ce", ON, 4, 0.99),  # no baseline of seed 4: not paired
    ]
    row = seed_row(ABLATION, ABLATION.row("rirn"), runs)
    assert row.seeds == (1, 3, 4) and row.duplicates == {1: ("r1", "r1-again")}
    assert row.dice["AVG"][0] == pytest.approx((0.72 + 0.74 + 0.99) / 3)
    assert list(row.pairs) == [1, 3]
    assert [row.pairs[s]["AVG"] for s in (1, 3)] == pytest.approx([0.02, 0.03])
    # deltas 0.02, 0.03: mean 0.025, std 0.005 * sqrt 2, half = 12.706205 * 0.005
    assert row.delta["AVG"] == pytest.approx((0.025, T975[1] * 0.005), rel=1e-6)

    # The per-run lines pair each run with the baseline of its own seed.
    lines = {r.run: r for r in paired_run_rows(ABLATION, runs) if r.run}
    assert lines["r1"].delta["AVG"] == pytest.approx(0.01)
    assert lines["r1-again"].delta["AVG"] == pytest.approx(0.03)
    assert lines["r4"].delta == {} and lines["r4"].seed == 4 and lines["b1"].delta == {}

    section = "\n".join(write_table(tmp_path, ABLATION, runs, [], (), False))
    assert "| ✓ | ✓ | ✓ | ✓ | +CRR+MF+CAR+ADV | 1,3,4 |" in section
    # Δ AVG [95% CI] in points: 2.50 ± 12.706205 * 0.5 = 2.50 ± 6.35
    assert "| +2.50 [-3.85, +8.85] (seeds 1,3) |" in section
    assert "row `rirn` seed 1: `r1`, `r1-again`" in section
    assert "paired difference to baseline over the seeds both have" in section


# --- Table 6 ---------------------------------------------------------------------------------

# AVG Dice of the baseline per modality (seed s adds 0.005 * s) and RIRN's delta per seed.
BASE = {"t1": 0.60, "t2": 0.65, "flair": 0.66, "t1ce": 0.79}
DELTA = {
    "t1": (0.02, 0.03, 0.04),
    "t2": (0.01, 0.02, 0.00),
    "flair": (-0.01, 0.00, -0.02),
    "t1ce": (0.01, 0.015, 0.025),
}


def _unimodal_runs() -> list[RunResult]:
    runs = []
    for m, base in BASE.items():
        for s in (1, 2, 3):
            b = base + 0.005 * s
            # WT, TC, ET offset from AVG so each region's numbers differ.
            runs.append(_run(f"{m}/baseline/{s}", m, OFF, s, (b + 0.1, b - 0.1, b - 0.2, b)))
            r = b + DELTA[m][s - 1]
            runs.append(_run(f"{m}/rirn/{s}", m, ON, s, (r + 0.1, r - 0.1, r - 0.2, r)))
    return runs


def test_table6_pooled_line_and_rows(tmp_path):
    runs = _unimodal_runs()
    assert grouped(UNIMODAL, runs)
    section = "\n".join(write_table(tmp_path, UNIMODAL, runs, [], (), paper=False))

    # T1 RIRN AVG over seeds: 0.625, 0.64, 0.655 -> mean 0.64, std 0.015; deltas 0.02, 0.03,
    # 0.04 -> mean 0.03, std 0.01, half 4.302653 * 0.01 / sqrt 3 = 0.024841.
    assert (
        "| T1 | Ours | 1,2,3 | 74.00 ± 1.50 | 54.00 ± 1.50 | 44.00 ± 1.50 | 64.00 ± 1.50 "
        "| +3.00 | +3.00 | +3.00 | +3.00 [+0.52, +5.48] |"
    ) in section
    baseline = (
        "| T1 | Baseline | 1,2,3 | 71.00 ± 0.50 | 51.00 ± 0.50 | 41.00 ± 0.50 | 61.00 ± 0.50 |"
    )
    assert baseline in section
    # Pooled over the 12 (modality, seed) deltas, t(0.975, 11) = 2.200985: sum 0.14, mean
    # 0.011667, squared deviations 0.0032167 / 11 -> std 0.017100, half 0.010865.
    deltas = np.array([d for m in BASE for d in DELTA[m]])
    mean = deltas.sum() / 12
    std = math.sqrt(((deltas - mean) ** 2).sum() / 11)
    half = T975[11] * std / math.sqrt(12)
    lo, hi = 100 * (mean - half), 100 * (mean + half)
    expected = f"Δ AVG = {100 * mean:+.2f} [{lo:+.2f}, {hi:+.2f}] Dice points"
    assert expected == "Δ AVG = +1.17 [+0.08, +2.25] Dice points"
    assert f"Pooled over all 12 (modality, seed) pairs: {expected}" in section
    assert "n = 12). RIRN beats the baseline on 3 of 4 modalities" in section  # Flair loses
    # +0.08 > 0 and 3 of 4: the issue-12 target holds on this fixture.
    assert "The interval lies above 0: RIRN is ahead at 95% confidence. Target" in section
    assert "interval above 0): met." in section
    summary = pooled(seed_rows(UNIMODAL, runs))
    assert (summary.n, summary.wins, summary.compared) == (12, 3, 4)
    assert summary.mean == pytest.approx(mean, abs=1e-12)
    assert summary.half_width == pytest.approx(half, rel=1e-6)
    assert "paired difference to the Baseline row of the same modality" in section


def test_table6_counts_a_modality_by_its_paired_delta_when_a_seed_is_missing(tmp_path):
    """T2: the baseline has seeds 1-3 (AVG .40, .45, .90), RIRN only 1-2 (.50, .50). Its mean
    AVG (50.00) is below the baseline's (58.33), but it is ahead on both seeds they share
    (+10, +5): the paired delta, +7.50, decides the modality, and the row says which seeds."""
    runs = [r for r in _unimodal_runs() if not r.name.startswith("t2/")]
    for s, b in ((1, 0.40), (2, 0.45), (3, 0.90)):
        runs.append(_run(f"t2/baseline/{s}", "t2", OFF, s, (b, b, b, b)))
    for s in (1, 2):
        runs.append(_run(f"t2/rirn/{s}", "t2", ON, s, (0.50,) * 4))
    summary = pooled(seed_rows(UNIMODAL, runs))
    # T1, T2 and T1ce ahead (FLAIR behind), as with all seeds
    assert (summary.n, summary.wins, summary.compared) == (11, 3, 4)
    section = "\n".join(write_table(tmp_path, UNIMODAL, runs, [], (), paper=False))
    # 7.50 ± 12.706205 * std(10, 5) / sqrt 2 = 7.50 ± 31.77
    assert "| +7.50 [-24.27, +39.27] (seeds 1,2) |" in section
    assert "RIRN beats the baseline on 3 of 4 modalities (mean paired Δ AVG above 0)" in section


@pytest.mark.parametrize(
    ("mean", "half", "n", "wins", "expected"),
    [
        # [-1.0, +3.0] includes 0, even with 4 of 4 modalities ahead.
        (
            0.01,
            0.02,
            12,
            4,
            "includes 0: no difference shown at 95% confidence. Target "
            "(ahead on at least 3 of 4 modalities, interval above 0): not met.",
        ),
        # [+0.5, +1.5] lies above 0, but 2 of 4 modalities is too few.
        (
            0.01,
            0.005,
            12,
            2,
            "lies above 0: RIRN is ahead at 95% confidence. Target "
            "(ahead on at least 3 of 4 modalities, interval above 0): not met.",
        ),
        # [-3.0, -1.0]: behind.
        (
            -0.02,
            0.01,
            12,
            0,
            "lies below 0: RIRN is behind at 95% confidence. Target "
            "(ahead on at least 3 of 4 modalities, interval above 0): not met.",
        ),
    ],
)
def test_pooled_verdict_by_hand(mean, half, n, wins, expected):
    assert pooled_verdict(Pooled(mean, half, n, wins, 4)) == "The interval " + expected


def test_pooled_verdict_without_interval_or_four_modalities():
    one = pooled_verdict(Pooled(0.01, math.nan, 1, 1, 1))
    assert one == "One pair has no interval: no verdict."
    # Two modalities: the significance sentence only, no 3-of-4 target.
    two = pooled_verdict(Pooled(0.01, 0.005, 6, 2, 2))
    assert two == "The interval lies above 0: RIRN is ahead at 95% confidence."


def test_table6_csv_has_per_seed_lines_and_a_seeds_line(tmp_path):
    runs = _unimodal_runs()
    write_table(tmp_path, UNIMODAL, runs, [], (), paper=True)
    lines = _csv(tmp_path / UNIMODAL.file)
    per_run = [r for r in lines if r["source"] == "this sweep"]
    seeds = [r for r in lines if r["source"] == SEEDS_SOURCE]
    assert len(per_run) == 24 and len(seeds) == 8
    assert len([r for r in lines if r["source"] == "paper (BraTS 2018)"]) == 8
    # Each row: its three runs, then its seeds line.
    t1_rirn = [r for r in lines if r["modality"] == "t1" and r["row"] == "Ours"]
    assert [r["seed"] for r in t1_rirn] == ["1", "2", "3", "", ""]  # 3 runs, seeds, paper
    assert t1_rirn[1]["run"] == "t1/rirn/2" and float(t1_rirn[1]["delta_AVG"]) == pytest.approx(
        0.03
    )
    assert float(t1_rirn[1]["dice_AVG_std"]) == 0.1  # a run's std is over cases
    line = t1_rirn[3]
    assert line["source"] == SEEDS_SOURCE and line["run"] == "t1/rirn/1,t1/rirn/2,t1/rirn/3"
    assert (line["seeds"], line["n_seeds"], line["n_pairs"], line["n"]) == ("1,2,3", "3", "3", "20")
    assert float(line["dice_AVG_mean"]) == pytest.approx(0.64)
    assert float(line["dice_AVG_std"]) == pytest.approx(0.015)  # over seeds
    assert float(line["dice_WT_mean"]) == pytest.approx(0.74)
    assert float(line["delta_ET"]) == pytest.approx(0.03)
    assert float(line["delta_AVG_lo"]) == pytest.approx(0.03 - 0.024841, abs=1e-6)
    assert float(line["delta_AVG_hi"]) == pytest.approx(0.03 + 0.024841, abs=1e-6)
    baseline = next(r for r in seeds if r["modality"] == "t1" and r["row"] == "Baseline")
    assert baseline["delta_AVG"] == "" and baseline["n_pairs"] == "" and baseline["reference"] == ""


# --- missing seeds, failures, one seed -------------------------------------------------------


def test_missing_and_failed_seeds_are_listed(tmp_path):
    runs = [
        _run("b1", "t1ce", OFF, 1, 0.70),
        _run("b2", "t1ce", OFF, 2, 0.72),
        _run("b3", "t1ce", OFF, 3, 0.71),
        _run("r1", "t1ce", ON, 1, 0.71),
        _failed("r2", "t1ce", ON, 2),
        _run("c1", "t1ce", (True, False, False, False), 1, 0.7),
    ]
    lines = missing_seed_lines([ABLATION], runs)
    assert lines == [
        "- Table 4, row `crr`: seed 2 missing; train it with "
        "`python -m rirn.train modality=t1ce loss=crr seed=2`",
        "- Table 4, row `crr`: seed 3 missing; train it with "
        "`python -m rirn.train modality=t1ce loss=crr seed=3`",
        "- Table 4, row `rirn`: seed 3 missing; train it with "
        "`python -m rirn.train modality=t1ce loss=rirn seed=3`",
        "- Table 4, row `rirn`: seed 2 has no results (`r2`: failed: boom)",
    ]
    md = "\n".join(_lists([ABLATION], runs))
    assert "## Missing seeds\n\n" + "\n".join(lines) in md
    assert "row `crr_mf`: missing: no run in the sweep" in md  # rows with no run: as before
    assert "crr_mf`: seed" not in md
    row = seed_row(ABLATION, ABLATION.row("rirn"), runs)
    assert row.seeds == (1,) and row.runs == ("r1",)  # only what has results
    assert row.delta["AVG"][0] == pytest.approx(0.01) and math.isnan(row.delta["AVG"][1])
    section = "\n".join(write_table(tmp_path, ABLATION, runs, [], (), False))
    assert "| ✓ | ✓ | ✓ | ✓ | +CRR+MF+CAR+ADV | 1 | 71.00 | 71.00 | 71.00 | 71.00 |" in section
    # the baseline has seeds 1-2: the means beside Δ are over other seeds, so it names its pairs
    assert "| +1.00 (n=1, no interval) (seeds 1) |" in section


def test_table7_deltas_are_paired_with_avg(tmp_path):
    runs = [
        _run(f"{agg}{s}", "t1ce", ON, s, v, agg=agg)
        for agg, values in (("mean", (0.80, 0.82)), ("max", (0.79, 0.83)))
        for s, v in zip((1, 2), values, strict=True)
    ]
    (mx,) = [r for r in seed_rows(AGGREGATION, runs) if r.spec.key == "max"]
    assert [mx.pairs[s]["AVG"] for s in (1, 2)] == pytest.approx([-0.01, 0.01])
    assert mx.delta["AVG"] == pytest.approx((0.0, T975[1] * 0.01), abs=1e-7)
    section = "\n".join(write_table(tmp_path, AGGREGATION, runs, [], (), False))
    assert "paired difference to Avg (ours) over the seeds both have" in section
    assert "Pooled" not in section  # only Table 6 pools


def test_one_seed_keeps_one_line_per_run(tmp_path):
    runs = [
        _run("b", "t1ce", OFF, 1234, 0.5),
        _run("b-again", "t1ce", OFF, 1234, 0.7),  # duplicates of one seed: still not grouped
        _run("r", "t1ce", ON, 1234, 0.65),
    ]
    assert not grouped(ABLATION, runs)
    section = write_table(tmp_path, ABLATION, runs, [], (), paper=False)
    rows = table_rows(ABLATION, runs)
    assert section[2 : 2 + 2 + len(rows)] == table_markdown(ABLATION, rows)
    # Today's layout: one line per run, Δ against the baseline's mean over its runs (0.6).
    assert (
        "| ✓ | ✓ | ✓ | ✓ | +CRR+MF+CAR+ADV | `r` | 20 | 65.00 | 65.00 | 65.00 | 65.00 | +5.00 |"
        in (section)
    )
    lines = _csv(tmp_path / ABLATION.file)
    assert {r["source"] for r in lines} == {"this sweep"}
    assert [r["seed"] for r in lines if r["status"] == "ok"] == ["1234", "1234", "1234"]
    assert missing_seed_lines([ABLATION], runs) == []


# --- the whole report, evaluation replaced by hand-made per-case rows ------------------------


def _fake_sweep(sweep: Path, dice: dict[tuple[str, int], float]) -> list[dict]:
    """Run folders (``.hydra/config.yaml`` only) of T1 ``loss`` x ``seed``, and per-case rows
    whose student AVG over two cases is ``dice[(loss, seed)]``."""
    per_case = []
    for (loss, seed), value in dice.items():
        name = f"loss={loss},seed={seed}"
        switches = {k: loss == "rirn" for k in ("crr", "mf", "car", "adv")}
        config = {"modality": "t1", "seed": seed, "loss": {**switches, "aggregation": "mean"}}
        (sweep / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(config), sweep / name / ".hydra" / "config.yaml")
        for case, d in (("c1", value - 0.05), ("c2", value + 0.05)):
            per_case += [
                {"run": name, "case": case, "model": "student", "subset": "t1", "region": reg}
                | {"dice": d, "hd95": 1.0}
                for reg in ("WT", "TC", "ET")
            ]
    return per_case


def test_report_groups_seeds_and_names_the_missing_one(tmp_path, monkeypatch):
    import rirn.report

    from .conftest import compose_config

    sweep = tmp_path / "sweep"
    dice = {("baseline", 1): 0.60, ("baseline", 2): 0.62, ("baseline", 3): 0.61}
    dice |= {("rirn", 1): 0.61, ("rirn", 3): 0.64}  # seed 2 of RIRN never trained
    per_case = _fake_sweep(sweep, dice)
    monkeypatch.setattr(
        rirn.report, "evaluate_runs", lambda cfg, out: (per_case, [], ("window", "none"))
    )
    cfg = compose_config("report", [f"sweep_dir={sweep}", "progress=false", "paper=false"])
    md = rirn.report.write_report(cfg, sweep, tmp_path / "out", None).read_text()
    # Baseline 60, 62, 61 -> 61.00 ± 1.00; RIRN 61, 64 -> 62.50 ± 2.12; pairs 1, 3: +1, +3 ->
    # mean +2.00, std sqrt(2), half 12.706205 * sqrt(2) / sqrt(2) = 12.71 (points).
    assert "| T1 | Baseline | 1,2,3 | 61.00 ± 1.00 | 61.00 ± 1.00 | 61.00 ± 1.00 |" in md
    assert "| T1 | Ours | 1,3 | 62.50 ± 2.12 |" in md
    # the baseline's mean is over seeds 1-3, RIRN's over 1 and 3: Δ names the seeds it pairs
    assert "| +2.00 [-10.71, +14.71] (seeds 1,3) |" in md
    assert "Pooled over all 2 (modality, seed) pairs" in md
    assert "RIRN beats the baseline on 1 of 1 modalities" in md
    assert (
        "## Missing seeds\n\n- Table 6, row `t1/rirn`: seed 2 missing; train it with "
        "`python -m rirn.train modality=t1 loss=rirn seed=2`"
    ) in md
    assert "row `t2/baseline`: missing: no run in the sweep" in md
    assert "one line over seeds" in md
    seeds = [r for r in _csv(tmp_path / "out" / UNIMODAL.file) if r["source"] == SEEDS_SOURCE]
    assert [(r["row"], r["seeds"]) for r in seeds[:2]] == [("Baseline", "1,2,3"), ("Ours", "1,3")]
    assert "- Data: validation split of each run; inference: window" in md
    # split=train (the cases each run trained on) is named, and a bad split stops before any run
    cfg = compose_config("report", [f"sweep_dir={sweep}", "paper=false", "split=train"])
    md = rirn.report.write_report(cfg, sweep, tmp_path / "train", None).read_text()
    assert "- Data: training split of each run; inference: window" in md
    with pytest.raises(ConfigError, match="split='all' must be one of val, train"):
        rirn.report.run(compose_config("report", [f"sweep_dir={sweep}", "split=all"]))


def test_train_hints_name_the_sweeps_experiment_and_folder(tmp_path):
    from rirn.report import train_command

    def run(name, overrides):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), tmp_path / name / ".hydra" / "overrides.yaml")

    assert train_command(tmp_path) == "python -m rirn.train"  # no run launched by hydra
    run("a", ["experiment=distill_benchmark", "modality=t1", "seed=1", "loss=rirn"])
    run("b", ["experiment=distill_benchmark", "modality=t2", "seed=2", "loss=baseline"])
    want = f"python -m rirn.train -m experiment=distill_benchmark hydra.sweep.dir={tmp_path}"
    assert train_command(tmp_path) == want
    run("c", ["modality=t1ce"])  # a run of no experiment: no guess
    assert train_command(tmp_path) == "python -m rirn.train"
