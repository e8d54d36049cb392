"""scripts/probe_relation.py: relation softness by hand-computable cases, and a real run."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from .conftest import REPO
from .step_fixtures import train_run

_spec = importlib.util.spec_from_file_location(
    "probe_relation", REPO / "scripts" / "probe_relation.py"
)
probe_relation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe_relation)


def test_softness_uniform_and_one_hot():
    n = 12
    zeros = torch.zeros(1, 4, n)  # all logits 0: every row uniform
    row_max, entropy = probe_relation.softness(zeros, zeros)
    assert row_max == pytest.approx(1 / n) and entropy == pytest.approx(1.0)
    eye = torch.eye(n)[None] * 100.0  # q_i . k_j = 1e4 [i == j]: one-hot rows
    row_max, entropy = probe_relation.softness(eye, eye)
    assert row_max == pytest.approx(1.0) and entropy == pytest.approx(0.0, abs=1e-6)
    # Two logits per row at 0 and log(3): probabilities 1/4 and 3/4 over a 2-voxel map.
    q = torch.tensor([[[1.0, 0.0]]])
    k = torch.tensor([[[math.log(3.0), 0.0]]])
    row_max, entropy = probe_relation.softness(q, k)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert row_max == pytest.approx((0.75 + 0.5) / 2) and entropy == pytest.approx((h + 1) / 2)


def test_probe_reads_a_trained_run(tmp_path, cache_root):
    overrides = ["debug=smoke", f"data.cache_root={cache_root}", "trainer.max_epochs=1"]
    run_dir, _ = train_run(tmp_path, [*overrides, "trainer.progress=false"])
    values = probe_relation.probe(run_dir, "last")
    assert values["epoch"] == 1 and values["N"] == 4**3  # 32^3 smoke crop at 1/8
    for who in ("teacher", "student"):
        assert 1 / 64 <= values[f"{who} row max"] <= 1
        assert 0 <= values[f"{who} entropy"] <= 1
    assert 0 <= values["CAR"] <= 2 / 128 + 1e-6  # bounded by 2/C (C = 128 bottleneck channels)
    assert 0 <= values["CRR"] <= 12  # Eq. 5 over 6 ordered pairs of cosines
    assert 0 <= values["Dice to teacher"] <= 1
    assert values["relation"] == "cos/0.05"  # the run's own CAR relation (rirn's default)
    paper = probe_relation.probe(run_dir, "last", temperature=1.0, normalize=False)
    assert paper["relation"] == "dot/1" and paper["epoch"] == 1
    # Cosines lie in [-1, 1]: at T = 1e6 every row is uniform to 1e-6, and CAR vanishes.
    flat = probe_relation.probe(run_dir, "last", temperature=1e6, normalize=True)
    for who in ("teacher", "student"):
        assert flat[f"{who} row max"] == pytest.approx(1 / 64, rel=1e-5)
        assert flat[f"{who} entropy"] == pytest.approx(1.0, abs=1e-6)
    assert flat["CAR"] < 1e-12


def test_window_start_centres_on_the_tumour():
    shape, size = (20, 20, 20), (8, 8, 8)
    target = torch.zeros(3, *shape)
    target[0, 14:17, 2:5, 10:13] = 1  # WT blob centred on voxel (15, 3, 11)
    assert probe_relation.window_start(target, shape, size, "centre") == (6, 6, 6)
    # centre 15 - 8 // 2 = 11 on x; y would start at -1, shifted inside to 0; z: 11 - 4 = 7.
    assert probe_relation.window_start(target, shape, size, "tumour") == (11, 0, 7)
    # No WT (or no label): the box centre, as the default window.
    assert probe_relation.window_start(torch.zeros(3, *shape), shape, size, "tumour") == (6, 6, 6)
    assert probe_relation.window_start(None, shape, size, "tumour") == (6, 6, 6)


def test_output_agreement_by_hand():
    t = torch.full((1, 3, 4, 1, 1), -1.0)
    s = torch.full((1, 3, 4, 1, 1), -1.0)
    t[0, 0, :2] = 1.0  # WT: teacher voxels {0, 1}
    s[0, 0, 1:] = 1.0  # student voxels {1, 2, 3}: Dice 2 * 1 / (2 + 3) = 0.4
    t[0, 1, 0] = 1.0  # TC: teacher only, Dice 0
    # ET: both empty, Dice 1
    assert probe_relation.output_agreement(t, s) == pytest.approx((0.4 + 0.0 + 1.0) / 3)


def test_a_student_equal_to_its_teacher_is_at_distance_zero(tmp_path, cache_root):
    """All four modalities and the teacher's weights copied into the student: every distance
    vanishes and the outputs agree, on the tumour window of the training cases."""
    overrides = ["debug=smoke", f"data.cache_root={cache_root}", "trainer.max_epochs=1"]
    run_dir, _ = train_run(tmp_path, [*overrides, "modality=all", "trainer.progress=false"])
    path = run_dir / "checkpoints" / "last.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["student"] = state["teacher"]
    torch.save(state, path)
    values = probe_relation.probe(run_dir, "last", window="tumour", split="train")
    assert values["CAR"] == pytest.approx(0.0, abs=1e-9)
    assert values["CRR"] == pytest.approx(0.0, abs=1e-6)
    assert values["Dice to teacher"] == 1.0
    assert values["cases"] >= 1


def test_bad_run_folder_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: run_dir=.*missing.* does not exist"):
        probe_relation.main([str(tmp_path / "missing")])
