"""The knowledge-transfer comparison: configs/experiment/kd_comparison.yaml (composed with Hydra,
no training), the runs' variants read from their configs, and the report's kd_comparison table
(rirn.evaluation.method_table) on hand-made results. Expected numbers are worked out by hand in
the comments, never by the code under test."""

from __future__ import annotations

import copy
import csv
import functools
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rirn.config import CONFIG_DIR
from rirn.data.modalities import all_subsets, parse_modalities, subset_name
from rirn.errors import ConfigError
from rirn.evaluation import method_table
from rirn.evaluation.method_table import method_label
from rirn.evaluation.report_tables import TABLES, RunResult, row_runs
from rirn.evaluation.seed_tables import SEEDS_SOURCE
from rirn.evaluation.summary import SummaryRow
from rirn.evaluation.variants import loss_overrides, make_variant, train_overrides, variant_of
from rirn.losses.car import DEFAULT_CAR_RELATION, PAPER_CAR_RELATION
from rirn.report import detect_report_tables, parse_tables
from rirn.training.setup import check_config

from .conftest import compose_config

F, T = False, True
OFF = (F,) * 6
KD, FEAT, RIRN = (F, F, F, F, T, F), (F, F, F, F, F, T), (T, T, T, T, F, F)
SINGLES = ("flair", "t1", "t1ce", "t2")
REGIONS4 = ("WT", "TC", "ET", "AVG")
# Student-t quantiles t(0.975, dof), from a table.
T975 = {2: 4.302653, 5: 2.570582}


def _jobs(extra: tuple[str, ...] = ()) -> list[list[str]]:
    """Every job of ``-m experiment=kd_comparison [extra]``, expanded as Hydra's basic sweeper
    does (the composed sweeper params, then the command line's)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", ["experiment=kd_comparison"], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()] + list(extra)
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return batch


@functools.cache
def _job_configs() -> tuple:
    return tuple(compose_config("train", ["experiment=kd_comparison", *job]) for job in _jobs())


def _switches(cfg) -> tuple[bool, ...]:
    return tuple(bool(cfg.loss[k]) for k in ("crr", "mf", "car", "adv", "kd", "feature"))


# --- the experiment --------------------------------------------------------------------------


def test_sweep_trains_four_students_per_single_modality_and_seed(tmp_path):
    seen = set()
    for cfg in _job_configs():
        cfg = copy.deepcopy(cfg)  # the cached configs are shared with the report test
        raw = OmegaConf.to_container(cfg.teacher, resolve=False)
        # distill_benchmark's teacher: one per seed in the sweep folder, frozen, trained once.
        assert raw["checkpoint"] == "${hydra:sweep.dir}/teachers/seed_${seed}/checkpoints/last.pt"
        assert cfg.teacher.freeze and cfg.teacher.train_if_missing
        assert cfg.loss.start_epoch == 0 and cfg.data.synthetic.seed == cfg.seed
        assert cfg.loss.kd_temperature == 2.0 and not cfg.loss.feature_norm
        seen.add((cfg.seed, cfg.modality, _switches(cfg)))
        cfg.teacher.checkpoint = str(tmp_path / f"teachers/seed_{cfg.seed}/checkpoints/last.pt")
        check_config(cfg, tmp_path)
    expected = {(s, m, w) for s in (1, 2, 3) for m in SINGLES for w in (OFF, KD, FEAT, RIRN)}
    assert seen == expected and len(_jobs()) == 48


def test_all_fifteen_subsets_by_one_override(tmp_path):
    subsets = ",".join(subset_name(s) for s in all_subsets())
    jobs = _jobs((f"modality={subsets}",))
    assert len(jobs) == 15 * 4 * 3
    modalities = {o.split("=", 1)[1] for job in jobs for o in job if o.startswith("modality=")}
    assert {parse_modalities(m) for m in modalities} == set(all_subsets())
    job = next(j for j in jobs if "modality=flair+t1ce" in j and "loss=feature" in j)
    cfg = compose_config("train", ["experiment=kd_comparison", *job])
    assert parse_modalities(cfg.modality) == ("flair", "t1ce") and _switches(cfg) == FEAT
    cfg.teacher.checkpoint = str(tmp_path / "t/checkpoints/last.pt")
    check_config(cfg, tmp_path)


def test_report_places_every_job_from_its_config():
    runs = [
        RunResult(
            f"job{i}",
            variant_of(cfg),
            SummaryRow("student", None, str(i)),
            int(cfg.seed),
        )
        for i, cfg in enumerate(_job_configs())
    ]
    # Table 6 for the baseline/RIRN pairs, the comparison for all four.
    assert [t.name for t in detect_report_tables(runs)] == ["unimodal", "kd_comparison"]
    table = method_table.sweep_table(runs)
    assert len(table.rows) == 16
    for spec in table.rows:
        matched = row_runs(spec, runs)
        assert sorted(r.seed for r in matched) == [1, 2, 3]
        # The row's method, written out here, is what its runs' configs switch on.
        want = {"baseline": OFF, "kd": KD, "feature": FEAT, "rirn": RIRN}[spec.key.split("/")[1]]
        assert {r.variant.switches for r in matched} == {want}
    # No KD or feature-KD run lands in a table of the paper.
    for paper_table in TABLES:
        for spec in paper_table.rows:
            assert not any(r.variant.transfers for r in row_runs(spec, runs))


# --- variants --------------------------------------------------------------------------------


def test_configs_without_the_new_switches_read_as_off():
    old = {"modality": "t1", "loss": {"crr": True, "mf": True, "car": True, "adv": True}}
    v = variant_of(old)
    assert v == make_variant("t1", (T, T, T, T), car_relation=PAPER_CAR_RELATION)
    assert not v.transfers and v.car_relation == (False, 1.0)
    assert v.switches == RIRN and v.kd_temperature is None and v.feature_norm is None
    kd = variant_of({"modality": "t1", "loss": {**old["loss"], "kd": True, "kd_temperature": 4}})
    assert kd.kd and kd.kd_temperature == 4.0 and kd != v
    # Settings of a term that is off never tell runs apart.
    base = {k: False for k in ("crr", "mf", "car", "adv")}
    a = variant_of({"modality": "t1", "loss": {**base, "kd_temperature": 9, "aggregation": "max"}})
    assert a == make_variant("t1", OFF)


def test_car_relation_tells_runs_apart_and_composes_back():
    cfg = compose_config("train", ["modality=t1ce"])
    assert (cfg.loss.car_normalize, cfg.loss.car_temperature) == DEFAULT_CAR_RELATION
    other = (not DEFAULT_CAR_RELATION[0], 0.25)
    over = [f"loss.car_normalize={str(other[0]).lower()}", "loss.car_temperature=0.25"]
    v = variant_of(compose_config("train", ["modality=t1ce", "loss=rirn", *over]))
    assert v.car_relation == other and v != variant_of(cfg)
    assert loss_overrides(v) == " ".join(["loss=rirn", *over])
    assert variant_of(compose_config("train", train_overrides(v).split())) == v
    kind = "cos" if other[0] else "dot"
    assert method_label(v) == f"RIRN (CAR {kind}/0.25)"
    car = variant_of(compose_config("train", ["modality=t1ce", "loss=crr_mf_car", *over]))
    assert method_label(car) == f"CRR + MF + CAR ({kind}/0.25)"
    # CAR off: its relation never tells runs apart.
    off = variant_of(compose_config("train", ["modality=t1ce", "loss=crr_mf", *over]))
    assert off.car_relation is None and off == variant_of(
        compose_config("train", ["modality=t1ce", "loss=crr_mf"])
    )


def test_rows_take_another_car_relation_only_when_theirs_is_absent_and_unique():
    from rirn.evaluation.report_tables import RowSpec

    spec = RowSpec("t1ce/rirn", ("T1ce",), make_variant("t1ce", RIRN))
    paper = make_variant("t1ce", RIRN, car_relation=PAPER_CAR_RELATION)
    other = make_variant("t1ce", RIRN, car_relation=(True, 0.5))
    crr_mf = make_variant("t1ce", (T, T, F, F))

    def run(name, variant, seed=1):
        return RunResult(name, variant, None, seed)

    old = [run("p1", paper), run("p2", paper, 2), run("c", crr_mf)]
    assert [r.name for r in row_runs(spec, old)] == ["p1", "p2"]  # an old sweep keeps its row
    mixed = [*old, run("d1", spec.variant)]
    assert [r.name for r in row_runs(spec, mixed)] == ["d1"]  # the row's own relation wins
    # Once the sweep has runs of the row's relation (here in another row), no row borrows.
    car_row = RowSpec("t1ce/car", ("T1ce",), make_variant("t1ce", (F, F, T, F)))
    paper_car = run("pc", make_variant("t1ce", (F, F, T, F), car_relation=PAPER_CAR_RELATION))
    assert [r.name for r in row_runs(car_row, [*old, paper_car])] == ["pc"]
    assert row_runs(car_row, [*mixed, paper_car]) == []
    assert row_runs(spec, [*old, run("o", other)]) == []  # two others: no guess
    # A row without CAR never takes a run with it, whatever its relation.
    assert row_runs(RowSpec("t1ce/crr_mf", ("T1ce",), crr_mf), old) == [old[2]]


@pytest.mark.parametrize(
    ("overrides", "loss"),
    [
        (["loss=kd", "loss.crr=true"], "loss=kd loss.crr=true"),
        (["loss=kd", "loss.kd_temperature=4"], "loss=kd loss.kd_temperature=4"),
        (["loss=feature", "loss.feature_norm=true"], "loss=feature loss.feature_norm=true"),
        (["loss=rirn", "loss.kd=true"], "loss=rirn loss.kd=true"),
        (["loss=rirn", "loss.mf=false", "loss.adv=false"], "loss=crr loss.car=true"),
        (["loss=feature"], "loss=feature"),
    ],
)
def test_train_overrides_compose_back_to_the_same_variant(overrides, loss):
    v = variant_of(compose_config("train", ["modality=t2", *overrides]))
    assert loss_overrides(v) == loss
    assert variant_of(compose_config("train", train_overrides(v).split())) == v


def test_tables_option_accepts_kd_comparison():
    (table,) = parse_tables(["kd_comparison"])
    assert table.name == "kd_comparison" and len(table.rows) == 15 * 4
    with pytest.raises(ConfigError, match="kd_comparison"):
        parse_tables(["kd"])


# --- the table on hand-made numbers ----------------------------------------------------------

# Per method, WT, TC, ET over seeds 1, 2, 3 on T1; T2 is the same plus 0.05 everywhere.
VALUES = {
    "baseline": ((0.70, 0.72, 0.74), (0.50, 0.52, 0.54), (0.30, 0.32, 0.34)),
    "kd": ((0.71, 0.74, 0.77), (0.50, 0.52, 0.54), (0.31, 0.33, 0.35)),
    "feature": ((0.69, 0.71, 0.73), (0.52, 0.54, 0.56), (0.30, 0.32, 0.34)),
    "rirn": ((0.73, 0.73, 0.73), (0.51, 0.51, 0.51), (0.36, 0.32, 0.28)),
}
SWITCHES = {"baseline": OFF, "kd": KD, "feature": FEAT, "rirn": RIRN}


def _run(name, modality, switches, seed, dice, n=10, **settings) -> RunResult:
    stats = {("dice", reg): (d, 0.1) for reg, d in zip(REGIONS4, dice, strict=True)}
    row = SummaryRow("student", parse_modalities(modality), name, n, stats)
    return RunResult(name, make_variant(modality, switches, **settings), row, seed)


def _hand_runs() -> list[RunResult]:
    runs = []
    for modality, shift in (("t1", 0.0), ("t2", 0.05)):
        for method, regions in VALUES.items():
            for i, seed in enumerate((1, 2, 3)):
                wt, tc, et = (r[i] + shift for r in regions)
                dice = (wt, tc, et, (wt + tc + et) / 3)
                runs.append(
                    _run(f"{method}-{modality}-{seed}", modality, SWITCHES[method], seed, dice)
                )
    return runs


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_table_cells_deltas_and_pooled_by_hand(tmp_path):
    runs = _hand_runs()
    table = method_table.sweep_table(runs)
    md = "\n".join(method_table.write_method_table(tmp_path, table, runs))
    # T1, WT: baseline .70/.72/.74 -> 72.00 ± 2.00; KD .71/.74/.77 -> 74.00 ± 3.00 (best, bold);
    # feature 71.00 ± 2.00; RIRN 73.00 ± 0.00. TC: feature 54.00 best. ET: KD 33.00 best.
    row = (
        "| ◦ | • | ◦ | ◦ | 1,2,3 | 72.00 ± 2.00 | 52.00 ± 2.00 | 32.00 ± 2.00 | **74.00 ± 3.00** "
        "| 52.00 ± 2.00 | **33.00 ± 2.00** | 71.00 ± 2.00 | **54.00 ± 2.00** | 32.00 ± 2.00 "
        "| 73.00 ± 0.00 | 51.00 ± 0.00 | 32.00 ± 4.00 |"
    )
    assert row in md
    # Mean over T1 and T2 (T2 = T1 + 5 points): WT baseline 74.50, KD 76.50 (bold).
    assert "| Mean (2 subsets) |  |  |  |  | 74.50 | 54.50 | 34.50 | **76.50** |" in md
    # Δ KD WT on T1: pairs +1, +2, +3 -> mean +2, std 1, half 4.302653 * 1 / sqrt 3 = 2.48.
    # Δ RIRN WT: +3, +1, -1 -> mean +1, std 2, half 4.97. Δ feature TC: +2 every seed.
    assert "| ◦ | • | ◦ | ◦ | +2.00 [-0.48, +4.48] | +0.00 [+0.00, +0.00] |" in md
    assert "| +1.00 [-3.97, +5.97] |" in md and "| +2.00 [+2.00, +2.00] |" in md
    # Pooled Δ KD WT over 6 (subset, seed) pairs +1, +2, +3, +1, +2, +3: mean 2, std
    # sqrt(4 / 5) = 0.894, half 2.570582 * 0.894 / sqrt 6 = 0.94.
    assert "| Pooled |  |  |  | +2.00 [+1.06, +2.94] |" in md
    # Δ AVG of KD per seed: (1 + 0 + 1) / 3, (2 + 0 + 1) / 3, (3 + 0 + 1) / 3 = 0.67, 1, 1.33
    # (twice); mean 1, std sqrt(4 (1/3)^2 / 5) = 0.298, half 2.570582 * 0.298 / sqrt 6 = 0.31.
    assert (
        "- KD vs Baseline: Δ AVG pooled over 6 (subset, seed) pairs = +1.00 [+0.69, +1.31] Dice "
        "points; mean paired Δ AVG above 0 on 2 of 2 subsets."
    ) in md
    assert "Baseline = `loss=baseline`, KD = `loss=kd`, Feature KD = `loss=feature`" in md

    lines = _csv(tmp_path / "kd_comparison.csv")
    kd = [r for r in lines if r["row"] == "KD" and r["modality"] == "t1"]
    assert [r["run"] for r in kd[:3]] == ["kd-t1-1", "kd-t1-2", "kd-t1-3"]
    assert [float(r["delta_WT"]) for r in kd[:3]] == pytest.approx([0.01, 0.02, 0.03])
    seeds = kd[3]
    assert seeds["source"] == SEEDS_SOURCE and seeds["seeds"] == "1,2,3"
    assert (seeds["kd"], seeds["feature"], seeds["kd_temperature"]) == ("true", "false", "2.0")
    assert float(seeds["dice_WT_mean"]) == pytest.approx(0.74)
    assert float(seeds["dice_WT_std"]) == pytest.approx(0.03)
    half = T975[2] * 0.01 / math.sqrt(3)
    assert float(seeds["delta_WT_lo"]) == pytest.approx(0.02 - half, abs=1e-7)
    assert float(seeds["delta_WT_hi"]) == pytest.approx(0.02 + half, abs=1e-7)
    assert seeds["train"] == "modality=t1 loss=kd" and seeds["reference"] == "Baseline"


def test_other_kd_variants_get_their_own_columns_and_subsets():
    runs = _hand_runs()
    runs.append(_run("kd4-crr", "t1", (T, F, F, F, T, F), 1, (0.6,) * 4, kd_temperature=4))
    runs.append(_run("feat-fl-t1", "flair+t1", FEAT, 1, (0.6,) * 4, feature_norm=True))
    table = method_table.sweep_table(runs)
    methods = list(dict.fromkeys(s.label for s in table.rows))
    assert methods == [
        "Baseline",
        "KD",
        "Feature KD",
        "RIRN",
        "Feature KD (norm)",
        "KD (T=4) + CRR",
    ]
    subsets = list(dict.fromkeys(s.variant.subset for s in table.rows))
    assert subsets == [("flair",), ("t1",), ("t1ce",), ("t2",), ("flair", "t1")]
    (spec,) = [
        s for s in table.rows if row_runs(s, runs) and row_runs(s, runs)[0].name == "kd4-crr"
    ]
    assert spec.key == "t1/kd loss.crr=true loss.kd_temperature=4"
    md = "\n".join(method_table.method_markdown(table, method_table.seed_rows(table, runs)))
    # T1 and T2 have all four methods; the extra ones have no result on T2: "-" in the Mean row.
    assert "| Mean (2 subsets) |  |  |  |  | 74.50 |" in md and "| - | - | - |" in md
    assert "KD (T=4) + CRR = `loss=kd loss.crr=true loss.kd_temperature=4`" in md
    assert "60.00 (seeds 1)" in md  # a method with fewer seeds than its row says so


# --- the whole report, evaluation replaced by hand-made per-case rows ------------------------


def _fake_sweep(sweep: Path, runs: dict[str, tuple[str, dict, int, float]]) -> list[dict]:
    """Run folders (``.hydra/config.yaml`` only) and per-case rows whose student AVG over two
    cases is the given value."""
    per_case = []
    for name, (modality, loss, seed, value) in runs.items():
        config = {"modality": modality, "seed": seed, "loss": {"aggregation": "mean", **loss}}
        (sweep / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(config), sweep / name / ".hydra" / "config.yaml")
        for case, d in (("c1", value - 0.05), ("c2", value + 0.05)):
            per_case += [
                {"run": name, "case": case, "model": "student", "subset": modality, "region": r}
                | {"dice": d, "hd95": 1.0}
                for r in ("WT", "TC", "ET")
            ]
    return per_case


def test_report_puts_each_method_in_its_column_from_the_configs(tmp_path, monkeypatch):
    import rirn.report

    rirn4 = {k: True for k in ("crr", "mf", "car", "adv")}
    off4 = {k: False for k in rirn4}
    full = {"kd": False, "feature": False, "kd_temperature": 2.0, "feature_norm": False}
    runs = {}
    for seed, shift in ((1, 0.0), (2, 0.02)):
        # The baseline's config is from before issue 13: no kd/feature keys at all.
        runs[f"loss=baseline,seed={seed}"] = ("t1", off4, seed, 0.60 + shift)
        runs[f"loss=kd,seed={seed}"] = ("t1", {**off4, **full, "kd": True}, seed, 0.64 + shift)
        runs[f"loss=feature,seed={seed}"] = (
            "t1",
            {**off4, **full, "feature": True},
            seed,
            0.58 + shift,
        )
        runs[f"loss=rirn,seed={seed}"] = ("t1", {**rirn4, **full}, seed, 0.62 + shift)
    per_case = _fake_sweep(tmp_path / "sweep", runs)
    monkeypatch.setattr(
        rirn.report, "evaluate_runs", lambda cfg, out: (per_case, [], ("window", "none"))
    )
    cfg = compose_config("report", [f"sweep_dir={tmp_path / 'sweep'}", "paper=false"])
    out = tmp_path / "out"
    md = rirn.report.write_report(cfg, tmp_path / "sweep", out, None).read_text()
    assert "- Tables: unimodal, kd_comparison (from the runs' configs)" in md
    assert "## KD comparison: baseline, logit KD, feature KD and RIRN" in md
    # T1: baseline 60, 62 -> 61.00 ± 1.41; KD 64, 66 -> 65.00 ± 1.41 (best); feature 59.00;
    # RIRN 63.00.
    assert (
        "| ◦ | • | ◦ | ◦ | 1,2 | 61.00 ± 1.41 | 61.00 ± 1.41 | 61.00 ± 1.41 | **65.00 ± 1.41** |"
    ) in md
    assert "| 59.00 ± 1.41 | 59.00 ± 1.41 | 59.00 ± 1.41 | 63.00 ± 1.41 |" in md
    lines = [r for r in _csv(out / "kd_comparison.csv") if r["modality"] == "t1"]
    by_row = {}
    for r in lines:
        if r["source"] == "this sweep":
            by_row.setdefault(r["row"], []).append(r["run"])
    assert by_row == {
        "Baseline": ["loss=baseline,seed=1", "loss=baseline,seed=2"],
        "KD": ["loss=kd,seed=1", "loss=kd,seed=2"],
        "Feature KD": ["loss=feature,seed=1", "loss=feature,seed=2"],
        "RIRN": ["loss=rirn,seed=1", "loss=rirn,seed=2"],
    }
    # Every run is placed; the other single modalities are expected rows without a run.
    assert "Runs in none of these tables" not in md
    assert (
        "- KD comparison, row `t2/kd`: missing: no run in the sweep; train it with "
        "`python -m rirn.train modality=t2 loss=kd`"
    ) in md
    # Table 6 takes the baseline and RIRN runs, never a KD or feature-KD one.
    table6 = {r["run"] for r in _csv(out / "table6_unimodal.csv") if r["run"]}
    assert table6 == {
        "loss=baseline,seed=1",
        "loss=baseline,seed=2",
        "loss=rirn,seed=1",
        "loss=rirn,seed=2",
        "loss=baseline,seed=1,loss=baseline,seed=2",
        "loss=rirn,seed=1,loss=rirn,seed=2",
    }
