"""python -m rirn.evaluate: result files, values against independent recomputation, sweeps with a
missing run, reuse, and one-line errors. One smoke-trained run is shared by these tests and
tests/test_predict.py (see :func:`smoke_run_dir`)."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from rirn.data.modalities import MODALITIES, all_subsets, subset_mask, subset_name
from rirn.errors import ConfigError, DataError
from rirn.evaluate import run as evaluate
from rirn.evaluation.runs import find_runs, open_checkpoint
from rirn.evaluation.summary import (
    PER_CASE_COLUMNS,
    Problem,
    read_per_case_csv,
    summarize,
    write_per_case_csv,
)
from rirn.inference import sliding_window_inference
from rirn.labels import REGIONS, get_scheme, labels_to_regions, regions_to_labels
from rirn.metrics import region_metrics

from .conftest import REPO, compose_config, run_cli


def smoke_run_dir(cache_root: Path) -> Path:
    """A 1-epoch smoke run (student t1ce) under ``cache_root``, trained on first use only, so
    every test module of the session shares it."""
    run_dir = cache_root / "runs" / "smoke-t1ce"
    if not (run_dir / "checkpoints" / "best.pt").is_file():
        from rirn.train import run as train

        overrides = [
            "debug=smoke",
            f"data.cache_root={cache_root}",
            "trainer.progress=false",
            "trainer.max_epochs=1",
        ]
        run_dir.mkdir(parents=True, exist_ok=True)
        train(compose_config("train", overrides), run_dir)
    return run_dir


@pytest.fixture(scope="module")
def smoke_run(cache_root) -> Path:
    return smoke_run_dir(cache_root)


def _evaluate(overrides: list[str]) -> Path:
    return evaluate(compose_config("evaluate", ["progress=false", *overrides]))


def _csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _val_ids(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "split.json").read_text())["val"]


def _source_case(cache_root: Path, case_id: str) -> Path:
    (folder,) = (cache_root / "synthetic").glob(f"*/{case_id}")
    return folder


def _original_regions(folder: Path) -> np.ndarray:
    """Ground-truth regions straight from the source NIfTI (not from the cache)."""
    seg = np.asarray(nib.load(folder / f"{folder.name}_seg.nii.gz").dataobj)
    return labels_to_regions(seg, get_scheme("brats"))


def _preprocessed(folder: Path):
    from rirn.data.discovery import read_case_folder
    from rirn.data.io import preprocess_case

    return preprocess_case(read_case_folder(folder, MODALITIES, True), "brats2021", "brats")


def _centre_window(size: int, target: int) -> tuple[slice, slice]:
    # Independent restatement of the paper protocol: centre crop, symmetric zero padding.
    n = min(size, target)
    src, dst = (size - n) // 2, (target - n) // 2
    return slice(src, src + n), slice(dst, dst + n)


def _centre_crop_regions(net, box_image: np.ndarray, roi) -> np.ndarray:
    """Regions ``(3, *B)`` of a one-window centre-crop prediction, background elsewhere."""
    pairs = [_centre_window(s, t) for s, t in zip(box_image.shape[1:], roi, strict=True)]
    window = np.zeros((box_image.shape[0], *roi), np.float32)
    window[(slice(None), *(p[1] for p in pairs))] = box_image[(slice(None), *(p[0] for p in pairs))]
    with torch.no_grad():
        logits = net(torch.from_numpy(window)[None]).logits[0].numpy()
    out = np.zeros((3, *box_image.shape[1:]), bool)
    out[(slice(None), *(p[0] for p in pairs))] = (logits > 0)[(slice(None), *(p[1] for p in pairs))]
    return out


def _to_full(box_regions: np.ndarray, meta: dict) -> np.ndarray:
    full = np.zeros((3, *meta["shape"]), bool)
    full[(slice(None), *(slice(lo, hi) for lo, hi in meta["bbox"]))] = box_regions
    return full


def _rows_of(rows: list[dict], case: str, model: str) -> dict[str, dict]:
    return {r["region"]: r for r in rows if r["case"] == case and r["model"] == model}


def _assert_rows_equal(rows: dict[str, dict], expected: dict) -> None:
    for region in REGIONS:
        for key in ("dice", "hd95", "sensitivity", "specificity"):
            assert float(rows[region][key]) == pytest.approx(expected[region][key], abs=1e-9)
        for key in ("gt_empty", "pred_empty"):
            assert (rows[region][key] == "true") == expected[region][key]


def test_evaluate_run_writes_every_file(smoke_run, cache_root):
    out = _evaluate([f"run_dir={smoke_run}", "figures=true", "figures_cases=1"])
    assert out == smoke_run / "eval"
    val = _val_ids(smoke_run)
    rows = _csv(out / "per_case.csv")
    assert list(rows[0]) == list(PER_CASE_COLUMNS)
    assert len(rows) == len(val) * len(REGIONS) * 2  # cases x regions x (student, teacher)
    assert {(r["case"], r["model"], r["region"]) for r in rows} == {
        (c, m, r) for c in val for m in ("student", "teacher") for r in REGIONS
    }
    assert {r["subset"] for r in rows if r["model"] == "student"} == {"t1ce"}

    summary = _csv(out / "summary.csv")
    assert [(r["model"], r["subset"]) for r in summary] == [
        ("student", "t1ce"),
        ("teacher", "flair+t1+t1ce+t2"),
    ]
    assert "".join(summary[0][k] for k in ("Fl", "T1", "T1c", "T2")) == "◦◦•◦"
    assert "".join(summary[1][k] for k in ("Fl", "T1", "T1c", "T2")) == "••••"
    for srow in summary:
        mine = [r for r in rows if r["model"] == srow["model"]]
        assert int(srow["n"]) == len(val)
        for metric in ("dice", "hd95"):
            per_case = np.array(
                [[float(r[metric]) for r in mine if r["case"] == c] for c in val]
            )  # (cases, regions)
            for i, region in enumerate(REGIONS):
                mean = per_case[:, i].mean()
                assert float(srow[f"{metric}_{region}_mean"]) == pytest.approx(mean)
                assert float(srow[f"{metric}_{region}_std"]) == pytest.approx(
                    per_case[:, i].std(ddof=1)
                )
            assert float(srow[f"{metric}_AVG_mean"]) == pytest.approx(per_case.mean())

    md = (out / "summary.md").read_text()
    assert "## Dice (%)" in md and "## HD95 (mm)" in md
    assert "sliding window 32x32x32, overlap 0.5" in md
    assert "Post-processing: ET < 500 voxels per 240x240x155 scan (scaled" in md  # the default
    assert "373.13" in md and "Dice 1, HD95 0" in md
    dice_wt = 100 * float(summary[0]["dice_WT_mean"])
    assert f"| ◦ | ◦ | • | ◦ | student | {len(val)} | {dice_wt:.2f} ± " in md
    tex = (out / "summary.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\circ$ & $\circ$ & $\bullet$ & $\circ$" in tex
    assert f"{dice_wt:.2f}" in tex
    record = json.loads((out / "evaluation.json").read_text())
    assert record["data"]["cases"] == val and record["inference"]["mode"] == "sliding_window"

    pngs = list((out / "figures").glob("*.png"))
    assert [p.name for p in pngs] == [f"{val[0]}.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Sliding-window values of one case against a recomputation from the source NIfTI files.
    folder = _source_case(cache_root, val[0])
    image, _, meta = _preprocessed(folder)
    ckpt = open_checkpoint(smoke_run / "checkpoints" / "best.pt")
    net = ckpt.network("student")
    probs = sliding_window_inference(net, torch.from_numpy(image[[2]])[None], (32, 32, 32))
    # the default post-processing, on the label map rirn.predict would write (its regions are
    # nested): mmFormer's pred[pred == ET] = NCR when ET has under 500 voxels scaled to this
    # 48x48x32 grid, then the regions read back from the map as BraTS scores them
    et_min = round(500 * math.prod(meta["shape"]) / (240 * 240 * 155))
    scheme = get_scheme("brats")
    labels = regions_to_labels(_to_full(probs[0].numpy() > 0.5, meta), scheme)
    if np.count_nonzero(labels == scheme.et) < et_min:
        labels[labels == scheme.et] = scheme.ncr
    pred = labels_to_regions(labels, scheme)
    expected = region_metrics(pred, _original_regions(folder), meta["spacing"])
    _assert_rows_equal(_rows_of(rows, val[0], "student"), expected)


def test_center_crop_matches_independent_forward_pass(smoke_run, cache_root, tmp_path):
    centre = "inference.mode=center_crop"
    # the masks as thresholded: no ET post-processing, not nested (each region on its own)
    raw = ["postprocess.et_min_voxels=null", "postprocess.nested=false"]
    out = _evaluate([f"run_dir={smoke_run}", centre, *raw, f"output_dir={tmp_path}"])
    md = (out / "summary.md").read_text()
    assert "centre crop 32x32x32" in md and "Post-processing: none" in md
    rows = _csv(out / "per_case.csv")
    ckpt = open_checkpoint(smoke_run / "checkpoints" / "best.pt")
    case = _val_ids(smoke_run)[-1]
    folder = _source_case(cache_root, case)
    image, _, meta = _preprocessed(folder)
    gt = _original_regions(folder)
    for model, channels in (("student", [2]), ("teacher", [0, 1, 2, 3])):
        box = _centre_crop_regions(ckpt.network(model), image[channels], (32, 32, 32))
        expected = region_metrics(_to_full(box, meta), gt, meta["spacing"])
        _assert_rows_equal(_rows_of(rows, case, model), expected)


def _link_run(src: Path, dst: Path) -> None:
    """A copy of a run folder whose checkpoints are hard links (no 100 MB copies)."""
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copy(src / "split.json", dst / "split.json")
    for f in (src / "checkpoints").glob("*.pt"):
        try:
            os.link(f, dst / "checkpoints" / f.name)
        except OSError:
            shutil.copy(f, dst / "checkpoints" / f.name)


def test_sweep_lists_missing_run_and_reuses_results(smoke_run, tmp_path):
    sweep = tmp_path / "multirun"
    good = sweep / "modality=t1ce"
    _link_run(smoke_run, good)
    broken = sweep / "modality=flair"
    (broken / ".hydra").mkdir(parents=True)
    (broken / ".hydra" / "config.yaml").write_text("modality: flair\n")
    (broken / "checkpoints").mkdir()
    corrupt = sweep / "modality=t2" / "checkpoints"
    corrupt.mkdir(parents=True)
    (corrupt / "best.pt").write_bytes(b"not a checkpoint")
    overrides = [
        f"sweep_dir={sweep}",
        "inference.mode=center_crop",
        "figures=true",
        "postprocess.et_min_voxels=1000000",
    ]
    out = _evaluate(overrides)
    assert out == sweep / "eval"
    assert len(list((out / "figures" / "modality=t1ce").glob("Synth_*.png"))) == 2

    summary = _csv(out / "summary.csv")
    assert [(r["model"], r["subset"], r["status"].split(" /")[0]) for r in summary] == [
        ("student", "flair", "missing: no checkpoint"),  # Fl comes first in the paper's order
        ("student", "t1ce", "ok"),
        ("student", "", "failed: checkpoint"),  # subset unknown (no .hydra): listed last
        ("teacher", "flair+t1+t1ce+t2", "ok"),
    ]
    assert summary[0]["dice_WT_mean"] == "" and summary[0]["Fl"] == "•"
    md = (out / "summary.md").read_text()
    assert "## Runs without results" in md and "`modality=flair` (flair): missing" in md
    assert "`modality=t2`: failed: checkpoint" in md and "cannot be read" in md
    assert "| student `modality=t2` |  | failed | failed |" in md
    assert "ET < 1000000 voxels relabelled to NCR" in md
    rows = read_per_case_csv(out / "per_case.csv")
    assert {r["run"] for r in rows} == {"modality=t1ce"}
    assert all(r["pred_empty"] for r in rows if r["region"] == "ET")  # every ET removed
    assert (good / "eval" / "summary.csv").is_file()  # the run's own results, for reuse

    stamp = (good / "eval" / "per_case.csv").stat().st_mtime_ns
    _evaluate([*overrides, "reuse=true"])
    assert (good / "eval" / "per_case.csv").stat().st_mtime_ns == stamp
    assert read_per_case_csv(out / "per_case.csv") == rows
    # Un-nested masks are other results: scored again, not reused.
    assert json.loads((good / "eval" / "evaluation.json").read_text())["inference"]["nested"]
    _evaluate([*overrides, "reuse=true", "postprocess.nested=false"])
    assert (good / "eval" / "per_case.csv").stat().st_mtime_ns != stamp
    assert not json.loads((good / "eval" / "evaluation.json").read_text())["inference"]["nested"]
    assert "masks nested" not in (out / "summary.md").read_text()
    stamp = (good / "eval" / "per_case.csv").stat().st_mtime_ns
    # Other settings (no post-processing, flip TTA, no teacher): not current any more.
    _evaluate([*overrides[:-1], "reuse=true", "inference.tta=true", "teacher=false"])
    assert (good / "eval" / "per_case.csv").stat().st_mtime_ns != stamp
    assert "flip TTA" in (out / "summary.md").read_text()
    assert {r["model"] for r in read_per_case_csv(out / "per_case.csv")} == {"student"}


def test_checkpoint_on_other_dataset(smoke_run, cache_root):
    (root,) = (cache_root / "synthetic").glob("*/synthetic.json")
    ckpt = smoke_run / "checkpoints" / "last.pt"
    overrides = [
        f"checkpoint={ckpt}",
        f"data.root={root.parent}",
        f"data.cache_root={cache_root}",
        "teacher=false",
        "inference.mode=center_crop",
    ]
    out = _evaluate(overrides)
    assert out == smoke_run / f"eval-{root.parent.name}"
    rows = read_per_case_csv(out / "per_case.csv")
    cases = sorted(p.name for p in root.parent.glob("Synth_*"))
    assert len(rows) == len(cases) * len(REGIONS)  # every case of the dataset, student only
    assert sorted({r["case"] for r in rows}) == cases and {r["model"] for r in rows} == {"student"}
    md = (out / "summary.md").read_text()
    assert f"all {len(cases)} cases of {root.parent}" in md
    assert "last.pt (epoch 1, student t1ce)" in md


def test_training_split_scores_the_cases_trained_on(smoke_run, cache_root, tmp_path):
    """split=train: the run's training cases, into eval-train/ (eval/ untouched), with the same
    values as scoring every case of the dataset through data.root and keeping those cases."""
    split = json.loads((smoke_run / "split.json").read_text())
    out = _evaluate([f"run_dir={smoke_run}", "split=train", "teacher=false"])
    assert out == smoke_run / "eval-train"
    rows = read_per_case_csv(out / "per_case.csv")
    assert sorted({r["case"] for r in rows}) == sorted(split["train"])
    assert not {r["case"] for r in rows} & set(split["val"])
    md = (out / "summary.md").read_text()
    assert f"training split of {smoke_run.name} ({len(split['train'])} cases" in md

    (root,) = (cache_root / "synthetic").glob("*/synthetic.json")
    every = _evaluate(
        [
            f"checkpoint={smoke_run / 'checkpoints' / 'best.pt'}",
            f"data.root={root.parent}",
            f"data.cache_root={cache_root}",
            "teacher=false",
            f"output_dir={tmp_path}",
        ]
    )
    expected = {
        (r["case"], r["region"]): r["dice"]
        for r in read_per_case_csv(every / "per_case.csv")
        if r["case"] in split["train"]
    }
    assert {(r["case"], r["region"]): r["dice"] for r in rows} == pytest.approx(expected)

    with pytest.raises(ConfigError, match="split='test' must be one of val, train"):
        _evaluate([f"run_dir={smoke_run}", "split=test"])
    with pytest.raises(ConfigError, match="give one or the other"):
        _evaluate([f"run_dir={smoke_run}", "split=train", f"data.root={root.parent}"])


def test_bad_run_dir_is_one_line_error(tmp_path):
    result = run_cli(["-m", "rirn.evaluate", f"run_dir={tmp_path / 'nope'}"], cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run_dir=")
    assert "does not exist" in lines[0]
    with pytest.raises(DataError, match="holds no checkpoint"):
        _evaluate([f"run_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="exactly one of"):
        _evaluate([f"run_dir={tmp_path}", f"sweep_dir={tmp_path}"])


def test_bad_inference_option_is_config_error(smoke_run):
    with pytest.raises(ConfigError, match="inference.mode"):
        _evaluate([f"run_dir={smoke_run}", "inference.mode=whole"])
    with pytest.raises(ConfigError, match="inference.roi_size"):
        _evaluate([f"run_dir={smoke_run}", "inference.roi_size=[30,32,32]"])
    with pytest.raises(ConfigError, match="postprocess.nested='maybe' must be true or false"):
        _evaluate([f"run_dir={smoke_run}", "postprocess.nested=maybe"])


def _fake_rows(run: str, subset: tuple[str, ...], model: str, dice: list[float]) -> list[dict]:
    return [
        {
            "case": f"c{i}",
            "subset": subset_name(subset),
            "model": model,
            "region": region,
            "dice": d + 0.01 * r,
            "hd95": 10.0 * r + i,
            "sensitivity": 1.0,
            "specificity": 1.0,
            "gt_empty": False,
            "pred_empty": False,
            "run": run,
        }
        for i, d in enumerate(dice)
        for r, region in enumerate(REGIONS)
    ]


def test_summary_follows_paper_table_layout():
    subsets = all_subsets()
    rows = []
    for k, subset in enumerate(reversed(subsets)):  # given in reverse to check the sorting
        rows += _fake_rows(f"r{k:02d}", subset, "student", [0.5 + 0.01 * k, 0.6])
        rows += _fake_rows(f"r{k:02d}", MODALITIES, "teacher", [0.9])
    summary = summarize(rows, [Problem("dead", None, "failed: boom")])
    assert [s.subset for s in summary[:15]] == subsets
    assert summary[15].run == "dead" and summary[15].status == "failed: boom"
    assert [s.model for s in summary[16:]] == ["teacher", "mean"]
    assert [s.dots for s in summary[:15]] == [subset_mask(s) for s in subsets]
    first = summary[0]  # flair, run r14: dice WT of its two cases 0.64 and 0.6
    assert first.stats[("dice", "WT")][0] == pytest.approx(0.62)
    assert first.stats[("dice", "WT")][1] == pytest.approx(np.std([0.64, 0.6], ddof=1))
    assert first.stats[("dice", "AVG")][0] == pytest.approx(0.63)
    assert first.stats[("hd95", "AVG")][0] == pytest.approx(10.5)
    teacher = summary[16]
    assert teacher.n == 15 and teacher.stats[("dice", "ET")][0] == pytest.approx(0.92)
    mean = summary[17]
    expected = np.mean([s.stats[("dice", "TC")][0] for s in summary[:15]])
    assert mean.stats[("dice", "TC")][0] == pytest.approx(expected)
    assert math.isnan(mean.stats[("dice", "TC")][1])


def test_mean_row_counts_each_subset_once():
    """Two seeds of T1ce (Dice WT 0.2 and 0.4) and one FLAIR run (0.9): the Mean row is the
    mean over subsets, (0.3 + 0.9) / 2, not over runs (0.5)."""
    rows = _fake_rows("t1ce-a", ("t1ce",), "student", [0.2])
    rows += _fake_rows("t1ce-b", ("t1ce",), "student", [0.4])
    rows += _fake_rows("flair", ("flair",), "student", [0.9])
    mean = summarize(rows)[-1]
    assert mean.model == "mean" and mean.run == "mean of 2 subsets (3 runs)"
    assert mean.stats[("dice", "WT")][0] == pytest.approx(0.6)
    two_seeds = summarize(
        _fake_rows("a", ("t1",), "student", [0.2]) + _fake_rows("b", ("t1",), "student", [0.4])
    )
    assert [r.model for r in two_seeds] == ["student", "student"]  # one subset: no Mean row


def test_per_case_csv_round_trip(tmp_path):
    rows = _fake_rows("run", ("t1ce",), "student", [0.1234567890123, 0.5])
    rows[0]["gt_empty"] = True
    path = write_per_case_csv(tmp_path / "per_case.csv", rows)
    assert read_per_case_csv(path) == rows


def test_find_runs_nested_and_missing(tmp_path):
    (tmp_path / "a" / "checkpoints").mkdir(parents=True)
    (tmp_path / "a" / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "group" / "b" / ".hydra").mkdir(parents=True)
    (tmp_path / "eval").mkdir()
    runs = find_runs(tmp_path)
    assert [(r.name, r.checkpoint is not None) for r in runs] == [("a", True), ("group/b", False)]
    with pytest.raises(DataError, match="no run folder"):
        find_runs(tmp_path / "eval")


def test_trainer_validation_dice_is_what_evaluate_reports(smoke_run, tmp_path):
    """The per-epoch validation that picks best.pt scores exactly as ``python -m rirn.evaluate``
    does at its defaults (same cases, same sliding window, same thresholds and Dice rules)."""
    rows = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "student/mean" in r]
    best = max(val, key=lambda r: r["student/mean"])  # the epoch best.pt holds
    out = _evaluate([f"run_dir={smoke_run}", f"output_dir={tmp_path}"])
    per_case = _csv(out / "per_case.csv")
    for model in ("student", "teacher"):
        for region in REGIONS:
            scores = [
                float(r["dice"]) for r in per_case if (r["model"], r["region"]) == (model, region)
            ]
            assert len(scores) == len(_val_ids(smoke_run))
            assert float(np.mean(scores)) == pytest.approx(best[f"{model}/{region}"], abs=1e-6)
