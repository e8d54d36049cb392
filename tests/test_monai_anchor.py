"""scripts/monai_anchor.py: the balanced crop sampler, rirn's rows beside the anchor's (and the
warning when they were scored otherwise, which needs no monai), and a 2-step anchor on the
shared smoke run whose Dice is recomputed from its saved predictions."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from rirn.data.cache import CacheSource
from rirn.data.dataset import foreground_voxels
from rirn.data.transforms import uncrop_to_original
from rirn.evaluation.engine import RECORD, rescore_hint
from rirn.evaluation.summary import case_rows, write_per_case_csv
from rirn.inference import InferenceSettings
from rirn.labels import REGIONS, bits_to_regions
from rirn.metrics import dice

from .conftest import REPO
from .step_fixtures import history
from .test_evaluate import smoke_run_dir


@pytest.fixture(scope="module")
def monai_anchor():
    """The script as a module (it needs monai; the scoring check below does not)."""
    pytest.importorskip("monai")
    spec = importlib.util.spec_from_file_location(
        "monai_anchor", REPO / "scripts" / "monai_anchor.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rirn_rows_scored_otherwise_name_the_command_that_rescores(tmp_path):
    """An eval/ from before session 30 records no ``nested``: it scored un-nested masks, and
    its rows beside a nested anchor would compare two scorings."""
    eval_dir, command = tmp_path / "eval", "python -m rirn.evaluate run_dir=RUN"
    eval_dir.mkdir()
    anchor = InferenceSettings("sliding_window", (48,) * 3, et_min_voxels="auto")  # nested
    rirn = anchor.as_dict()

    def hint(inference, settings=anchor):
        (eval_dir / RECORD).write_text(json.dumps({"version": 1, "inference": inference}))
        return rescore_hint(eval_dir, settings, command)

    assert hint(rirn) is None  # scored as the anchor
    del rirn["nested"]
    message = hint(rirn)
    assert "\n" not in message and "nested=false (here true)" in message
    assert message.endswith(f"{command} postprocess.nested=true postprocess.et_min_voxels=auto")
    old = InferenceSettings("sliding_window", (48,) * 3, et_min_voxels="auto", nested=False)
    assert hint(rirn, old) is None  # the anchor's --no-nested: the same scoring
    del rirn["et_min_voxels"]  # before ET post-processing: none
    assert "et_min_voxels=null (here auto)" in hint(rirn, old)
    assert hint(rirn | {"et_min_voxels": 500}, old).endswith("postprocess.et_min_voxels=auto")
    (eval_dir / RECORD).unlink()  # an evaluation that never finished, or one before the record
    assert "no readable evaluation.json" in rescore_hint(eval_dir, anchor, command)


def test_sampler_centres_are_half_tumour(monai_anchor):
    bits = np.zeros((40, 40, 40), np.uint8)
    bits[10:16, 20:26, 5:11] = 0b111  # 216 of 64,000 voxels
    tumour = foreground_voxels(bits)[0]
    rng = np.random.default_rng(0)
    draws = [monai_anchor.draw_window(bits, (16, 16, 16), rng, tumour) for _ in range(4000)]
    # Counted from the bits, not from the sampler's own flag.
    inside = np.mean([bits[centre] > 0 for _, centre, _ in draws])
    assert inside == pytest.approx(0.5, abs=0.03)  # binomial sd 0.008
    naive = np.count_nonzero(bits) / bits.size  # what uniformly placed centres would give
    assert naive < 0.01
    for start, centre, positive in draws:
        assert (bits[centre] > 0) == positive
        assert all(0 <= s <= c < s + 16 <= 40 for s, c in zip(start, centre, strict=True))
    empty = np.zeros((0, 3), np.int32)
    assert not any(monai_anchor.draw_window(bits * 0, (16,) * 3, rng, empty)[2] for _ in range(50))


def test_rirn_rows_are_means_over_the_validation_cases(monai_anchor, tmp_path):
    def metrics(d):
        flags = {"gt_empty": False, "pred_empty": False}
        return {
            r: {"dice": d, "hd95": 0.0, "sensitivity": 1, "specificity": 1} | flags for r in REGIONS
        }

    rows = []
    for case, d in (("A", 0.2), ("B", 0.4), ("C", 0.9)):  # C is not a validation case
        rows += case_rows(case, ("t1ce",), "student", metrics(d), "run")
        rows += case_rows(case, ("flair", "t1", "t1ce", "t2"), "teacher", metrics(d + 0.1), "run")
    write_per_case_csv(tmp_path / "eval" / "per_case.csv", rows)
    out = monai_anchor.rirn_rows(tmp_path, ["A", "B"], 7)
    assert [(r["model"], r["inputs"], r["steps"], r["cases"]) for r in out] == [
        ("rirn teacher", "all", 7, 2),
        ("rirn student", "t1ce", 7, 2),
    ]
    assert [r["WT"] for r in out] == pytest.approx([0.4, 0.3])
    assert [r["mean"] for r in out] == pytest.approx([0.4, 0.3])
    assert monai_anchor.rirn_rows(tmp_path / "nothing", ["A"], 7) == []


@pytest.mark.slow  # trains the shared smoke run (once per session) and two 2-step SegResNets
def test_anchor_on_the_smoke_run(monai_anchor, cache_root, tmp_path, capsys):
    run_dir = smoke_run_dir(cache_root)
    out = tmp_path / "anchor"
    args = ["--run-dir", str(run_dir), "--crop", "16", "--out", str(out), "--save-predictions"]
    assert monai_anchor.main(args) == 0
    assert "| model | inputs | steps | WT | TC | ET | mean |" in capsys.readouterr().out
    record = json.loads(out.with_suffix(".json").read_text())
    split = json.loads((run_dir / "split.json").read_text())
    assert record["steps"] == history(run_dir)[-1]["step"] == 2  # the run's own step count
    assert record["postprocess"].startswith("ET < 500 voxels per 240x240x155")  # as evaluate
    assert (record["train_cases"], record["val_cases"]) == (split["train"], split["val"])
    ours = [r for r in record["summary"] if r["model"] == "monai"]
    assert [(r["inputs"], r["steps"]) for r in ours] == [("all", 2), ("t1ce", 2)]
    source = CacheSource(record["cache_dir"])
    for row in ours:
        scored = [r for r in record["per_case"] if r["inputs"] == row["inputs"]]
        assert [r["case"] for r in scored] == split["val"]
        assert row["ET"] == pytest.approx(np.mean([r["ET"] for r in scored]))
    for row in record["per_case"]:
        _, bits, meta = source.load(row["case"])
        gt = uncrop_to_original(bits_to_regions(np.asarray(bits)), meta, fill=False)
        saved = out.with_name("anchor_predictions") / row["inputs"] / f"{row['case']}.npz"
        pred = bits_to_regions(np.load(saved)["bits"])
        assert pred.shape == gt.shape == (3, *meta["shape"])
        assert [row[r] for r in REGIONS] == [dice(p, g) for p, g in zip(pred, gt, strict=True)]
        assert row["mean"] == pytest.approx(np.mean([row[r] for r in REGIONS]))
    md = out.with_suffix(".md").read_text()
    assert all(md.count(f"| {case} |") == 2 for case in split["val"])  # one row per network
