"""rirn.bundle / python -m rirn.export: manifest contents against the checkpoints, the choice
between two students of a subset, sweep discovery, atomic writes, checksum verification; and
rirn.evaluation.bundle_predict.choose_student on hand-written cases."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import rirn
import rirn.bundle
from rirn.bundle import FORMAT_VERSION, open_bundle
from rirn.errors import ConfigError, DataError
from rirn.evaluation.bundle_predict import choose_student

from .bundle_fixtures import (
    STUDENTS,
    TINY_MODEL,
    export,
    make_bundle,
    make_checkpoint,
    make_student_checkpoints,
    student_state,
)

T1CE, T2, FL_T2, T1_T1CE_T2 = ("t1ce",), ("t2",), ("flair", "t2"), ("t1", "t1ce", "t2")
MEANS = {T1CE: 0.60, T2: 0.55, FL_T2: 0.70, T1_T1CE_T2: 0.65}


@pytest.mark.parametrize(
    ("available", "expected", "reason_part"),
    [
        ({"t1ce"}, T1CE, "exact"),
        ({"t2", "flair"}, FL_T2, "exact"),
        # no all-four student: the only one of three modalities
        ({"flair", "t1", "t1ce", "t2"}, T1_T1CE_T2, "largest available sub-subset t1+t1ce+t2"),
        # {flair, t1ce, t2}: size-2 fits are flair+t2 only (t1ce+t2 is not in the bundle)
        ({"flair", "t1ce", "t2"}, FL_T2, "no flair+t1ce+t2 student"),
        # t1ce (0.60) and t2 (0.55) tie on size: the higher validation mean wins
        ({"t1ce", "t2"}, T1CE, "validation mean 0.6000; tie with t2 0.5500"),
        ({"t1", "flair"}, None, "no student uses only flair+t1"),
        (set(), None, "no usable modality"),
    ],
)
def test_choose_student_hand_written_cases(available, expected, reason_part):
    subset, reason = choose_student(available, MEANS)
    assert subset == expected
    assert reason_part in reason


def test_choose_student_ties_without_means_follow_paper_order():
    # Unknown means lose to known ones; two unknowns: the paper's order (t1ce before t2).
    assert choose_student({"t1ce", "t2"}, {T1CE: None, T2: 0.1})[0] == T2
    assert choose_student({"t1ce", "t2"}, {T2: None, T1CE: None})[0] == T1CE


def test_export_manifest_matches_checkpoints(tmp_path, capsys):
    paths = make_student_checkpoints(tmp_path / "ckpts")
    listed = ",".join(str(p) for p in paths)
    out = tmp_path / "bundle"
    manifest = export([f"checkpoints=[{listed}]", f"output={out}"])
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "rirn-bundle" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["rirn_version"] == rirn.__version__
    # paper order: size, then canonical order
    assert [s["subset"] for s in manifest["students"]] == ["t1ce", "t2", "flair+t2", "t1+t1ce+t2"]
    assert sorted(p.name for p in (out / "students").iterdir()) == sorted(
        f"{s}.pt" for s in STUDENTS
    )
    assert not (out / "teacher.pt").exists() and manifest["teacher"] is None
    for entry in manifest["students"]:
        weights = out / entry["weights"]
        assert entry["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        seed, mean = STUDENTS[entry["subset"]]
        state = torch.load(weights, weights_only=True)  # plain tensors only
        expected = student_state(entry["subset"], seed)
        assert state.keys() == expected.keys()  # the student alone: no optimiser, no D
        assert all(torch.equal(state[k], expected[k]) for k in expected)
        assert entry["validation"] == pytest.approx(
            {"WT": mean + 0.1, "TC": mean, "ET": mean - 0.1, "mean": mean, "epoch": 2}
        )
        assert entry["model"] == TINY_MODEL and entry["crop_size"] == [16, 16, 16]
        assert entry["data"] == {"name": "brats2021", "release": "brats2021", "scheme": "brats",
                                 "train_cases": 6, "val_cases": 3}  # fmt: skip
        assert entry["epoch"] == 2
    # The worse duplicate t1ce (mean 0.40) is dropped, and the export says so.
    (dropped,) = manifest["dropped"]
    assert dropped == {"subset": "t1ce", "source": str(paths[-1].resolve()),
                       "validation_mean": 0.40, "kept": str(paths[0].resolve())}  # fmt: skip
    assert "t1ce: two students; kept" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_sweep_dir_with_teacher_and_unfinished_run(tmp_path):
    sweep = tmp_path / "sweep"
    for name, (subset, seed, mean) in {
        "modality=t1ce": ("t1ce", 1, 0.6),
        "modality=t2": ("t2", 2, None),  # no validation yet
        "modality=flair+t2": ("flair+t2", 3, 0.7),
    }.items():
        (sweep / name / ".hydra").mkdir(parents=True)
        make_checkpoint(sweep / name / "checkpoints" / "best.pt", subset, seed, mean)
    (sweep / "modality=t1" / ".hydra").mkdir(parents=True)  # crashed before its first epoch
    manifest = export([f"sweep_dir={sweep}", f"output={tmp_path / 'b'}", "teacher=true"])
    assert [s["subset"] for s in manifest["students"]] == ["t1ce", "t2", "flair+t2"]
    assert manifest["students"][1]["validation"] is None
    assert manifest["skipped"] == [
        {"source": str(sweep / "modality=t1"), "reason": "no checkpoint"}
    ]
    # teacher validation mean = mean + 0.05 + seed / 100: flair+t2's run (0.78) beats t1ce (0.66)
    teacher = manifest["teacher"]
    assert teacher["subset"] == "flair+t1+t1ce+t2" and teacher["weights"] == "teacher.pt"
    assert teacher["source"].endswith("modality=flair+t2/checkpoints/best.pt")
    assert teacher["validation"]["mean"] == pytest.approx(0.78)
    bundle = open_bundle(tmp_path / "b")
    assert bundle.teacher is not None and bundle.teacher.subset == ("flair", "t1", "t1ce", "t2")
    assert bundle.teacher.network().in_channels == 4


def test_export_refuses_existing_output_and_interrupted_export_leaves_old_bundle(
    tmp_path, monkeypatch
):
    bundle = make_bundle(tmp_path)
    before = (bundle / "manifest.json").read_text()
    listed = f"checkpoints=[{tmp_path / 'ckpts' / 't1ce.pt'}]"
    with pytest.raises(ConfigError, match="exists \\(overwrite=true replaces it\\)"):
        export([listed, f"output={bundle}"])
    # overwrite=true replaces bundles only, never e.g. a folder of checkpoints
    with pytest.raises(ConfigError, match="is not a bundle; not replacing it"):
        export([listed, f"output={tmp_path / 'ckpts'}", "overwrite=true"])
    assert (tmp_path / "ckpts" / "t1ce.pt").is_file()

    calls = []

    def fail_second(folder, relative, state, _real=rirn.bundle._write_weights):
        calls.append(relative)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C half-way through
        return _real(folder, relative, state)

    monkeypatch.setattr(rirn.bundle, "_write_weights", fail_second)
    two = f"checkpoints=[{tmp_path / 'ckpts' / 't1ce.pt'},{tmp_path / 'ckpts' / 't2.pt'}]"
    for out, extra in ((tmp_path / "new", []), (bundle, ["overwrite=true"])):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            export([two, f"output={out}", *extra])
        assert len(calls) == 2
    assert not (tmp_path / "new").exists()  # no half bundle
    assert (bundle / "manifest.json").read_text() == before  # the old one untouched
    open_bundle(bundle)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_tampered_or_incomplete_bundle_is_refused(tmp_path):
    bundle = make_bundle(tmp_path)
    opened = open_bundle(bundle)
    assert set(opened.students) == {T1CE, T2, FL_T2, T1_T1CE_T2}
    weights = bundle / "students" / "flair+t2.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match="flair\\+t2.pt does not match its sha256 in manifest.json"):
        open_bundle(bundle)
    # A file changed after the bundle was opened is caught when its network is loaded.
    with pytest.raises(DataError, match="does not match its sha256"):
        opened.students[FL_T2].network()

    weights.unlink()
    with pytest.raises(DataError, match="weights students/flair\\+t2.pt not found"):
        open_bundle(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="format version 2, this rirn .* reads up to 1"):
        open_bundle(bundle)
    with pytest.raises(DataError, match="has no manifest.json"):
        open_bundle(tmp_path / "ckpts")
    with pytest.raises(ConfigError, match="does not exist"):
        open_bundle(tmp_path / "nowhere")


def test_weights_outside_the_bundle_are_refused(tmp_path):
    bundle = make_bundle(tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["students"][0]["weights"] = "../ckpts/t1ce.pt"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="lie outside the bundle"):
        open_bundle(bundle)


def test_export_needs_a_source(tmp_path):
    with pytest.raises(ConfigError, match="sweep_dir or checkpoints is required"):
        export([f"output={tmp_path / 'b'}"])
    with pytest.raises(ConfigError, match="does not exist or is not a file"):
        export([f"checkpoints=[{tmp_path / 'no.pt'}]", f"output={tmp_path / 'b'}"])
    assert not Path(tmp_path / "b").exists()
