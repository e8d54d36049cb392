"""The report names settings that differ between a sweep's runs but that no table tells apart."""

from __future__ import annotations

import copy

from omegaconf import OmegaConf

from rirn.evaluation.recipes import ABSENT, difference_lines, recipe_differences

BASE = {
    "modality": "t1ce",
    "seed": 1,
    "teacher": {"checkpoint": "/sweep/teachers/seed_1/checkpoints/last.pt"},
    "data": {"crop_size": [32, 32, 32], "synthetic": {"seed": 1}, "num_workers": 1},
    "model": {"widths": [16, 32], "head_prior": 0.12},
    "optim": {"lr": 0.001, "head_lr_scale": 1.0},
    "loss": {"crr": True, "car": True, "weight": {"crr": 0.01, "car": 1.0}},
    "trainer": {"max_epochs": 35, "progress": False},
}


def _with(**changes) -> dict:
    """BASE with dotted keys set (value ``...`` deletes the key)."""
    cfg = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = cfg
        for key in path:
            node = node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value
    return cfg


def test_what_a_sweep_varies_by_design_is_no_difference():
    runs = {
        "a": BASE,
        "b": _with(seed=2, modality="t2", data__synthetic__seed=2, data__num_workers=4),
        "c": _with(teacher__checkpoint="/sweep/teachers/seed_2/x.pt", trainer__progress=True),
        "d": _with(loss__crr=False, loss__car=False),  # the variant: the tables tell it apart
    }
    assert recipe_differences(runs) == {}
    assert difference_lines({}) == []


def test_recipe_keys_that_differ_are_found_with_their_runs():
    runs = {
        "a": BASE,
        "b": _with(loss__weight__crr=0.1),
        "c": _with(trainer__max_epochs=70, data__crop_size=[48, 48, 48]),
    }
    assert recipe_differences(runs) == {
        "data.crop_size": {"[32,32,32]": ["a", "b"], "[48,48,48]": ["c"]},
        "loss.weight.crr": {"0.01": ["a", "c"], "0.1": ["b"]},
        "trainer.max_epochs": {"35": ["a", "b"], "70": ["c"]},
    }


def test_a_key_an_older_run_lacks_reads_as_what_it_meant_then():
    old = _with(model__head_prior=..., optim__head_lr_scale=...)
    # Before optim.head_lr_scale existed there was one lr: the same as 1.0 (and 1 == 1.0).
    assert recipe_differences({"new": _with(optim__head_lr_scale=1), "old": old}) == {
        "model.head_prior": {"0.12": ["new"], "null": ["old"]}
    }
    faster = _with(optim__head_lr_scale=4)
    assert recipe_differences({"new": faster, "old": old})["optim.head_lr_scale"] == {
        "4": ["new"],
        "1.0": ["old"],
    }
    unknown = _with(data__fg_prob=0.5)
    assert recipe_differences({"a": BASE, "b": unknown}) == {
        "data.fg_prob": {ABSENT: ["a"], "0.5": ["b"]}
    }
    # before data.fg_regions existed, a tumour-centred crop drew among all three regions
    every = _with(data__fg_regions=["WT", "TC", "ET"])
    assert recipe_differences({"old": BASE, "new": every}) == {}
    assert recipe_differences({"old": BASE, "new": _with(data__fg_regions=["WT"])}) != {}


def test_the_report_line_names_only_the_runs_of_the_rarer_values():
    runs = {f"r{i}": BASE for i in range(5)} | {"odd": _with(loss__weight__car=0)}
    (line,) = difference_lines(recipe_differences(runs), most=3)
    assert line.endswith("`loss.weight.car`: 1.0 in 5 runs, 0 in 1 run (`odd`)")
    many = {f"r{i}": BASE for i in range(2)} | {
        f"x{i}": _with(seed=i, model__widths=[8]) for i in range(5)
    }
    (line,) = difference_lines(recipe_differences(many), most=3)
    assert "`model.widths`: [16,32] in 2 runs (`r0`, `r1`), [8] in 5 runs" in line
    many = {f"r{i}": BASE for i in range(5)} | {f"x{i}": _with(model__widths=[8]) for i in range(4)}
    (line,) = difference_lines(recipe_differences(many), most=3)
    assert "[8] in 4 runs (`x0`, `x1`, `x2` and 1 more)" in line


def test_report_md_carries_the_line(tmp_path, monkeypatch):
    import rirn.report

    from .conftest import compose_config

    sweep = tmp_path / "sweep"
    per_case = []
    for name, cfg in {"base": BASE, "probe": _with(loss__weight__crr=0.1)}.items():
        (sweep / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(cfg), sweep / name / ".hydra" / "config.yaml")
        per_case += [
            {"run": name, "case": "c1", "model": "student", "subset": "t1ce", "region": r}
            | {"dice": 0.5, "hd95": 1.0}
            for r in ("WT", "TC", "ET")
        ]
    monkeypatch.setattr(
        rirn.report, "evaluate_runs", lambda cfg, out: (per_case, [], ("window", "none"))
    )
    cfg = compose_config("report", [f"sweep_dir={sweep}", "progress=false", "paper=false"])
    (tmp_path / "out").mkdir()  # made by the evaluation this test replaces
    md = rirn.report.write_report(cfg, sweep, tmp_path / "out", None).read_text()
    assert "Settings that differ between runs but that no table tells apart" in md
    assert "`loss.weight.crr`: " in md and "(`probe`)" in md
