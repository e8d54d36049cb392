"""The shared teacher of a two-stage sweep (rirn.training.provision) and the distillation
benchmark's sweep (configs/experiment/distill_benchmark.yaml)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from rirn.config import CONFIG_DIR
from rirn.errors import ConfigError
from rirn.training import provision, run_lock
from rirn.training.checkpoint import load_checkpoint
from rirn.training.provision import (
    DONE,
    LOCK,
    ensure_teacher,
    teacher_config,
    teacher_ready,
    teacher_run_dir,
)
from rirn.training.resume import check_resume_scoring
from rirn.training.setup import check_config, recorded_split

from .conftest import compose_config
from .step_fixtures import train_run


def _benchmark_jobs() -> list[list[str]]:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", ["experiment=distill_benchmark"], return_hydra_config=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params), None)
    return batch


def test_benchmark_sweep_pairs_each_single_modality_per_seed(tmp_path):
    jobs = _benchmark_jobs()
    seen = set()
    for job in jobs:
        cfg = compose_config("train", ["experiment=distill_benchmark", *job])
        raw = OmegaConf.to_container(cfg.teacher, resolve=False)
        # One teacher per seed, inside the sweep folder, trained by the first job that needs it.
        assert raw["checkpoint"] == "${hydra:sweep.dir}/teachers/seed_${seed}/checkpoints/last.pt"
        assert cfg.teacher.freeze and cfg.teacher.train_if_missing
        assert cfg.loss.start_epoch == 0 and cfg.data.synthetic.seed == cfg.seed
        switches = tuple(bool(cfg.loss[k]) for k in ("crr", "mf", "car", "adv"))
        assert switches in {(False,) * 4, (True,) * 4}
        seen.add((cfg.seed, cfg.modality, switches))
        # Valid as a job (the teacher path is the sweep's; here a missing one under tmp_path).
        ckpt = tmp_path / f"teachers/seed_{cfg.seed}/checkpoints/last.pt"
        cfg.teacher.checkpoint = str(ckpt)
        check_config(cfg, tmp_path)
    expected = {
        (s, m, sw)
        for s in (1, 2, 3)
        for m in ("flair", "t1", "t1ce", "t2")
        for sw in ((False,) * 4, (True,) * 4)
    }
    assert seen == expected and len(jobs) == 24


def _student_cfg(tmp_path, *extra):
    return compose_config(
        "train",
        [
            "modality=t1ce",
            "loss=rirn",
            "seed=5",
            f"teacher.checkpoint={tmp_path}/t/checkpoints/last.pt",
            "teacher.freeze=true",
            "teacher.train_if_missing=true",
            *extra,
        ],
    )


def test_teacher_config_turns_distillation_off_and_merges_train_config(tmp_path):
    cfg = _student_cfg(tmp_path, "+teacher.train_config.trainer.max_epochs=7", "loss.kd=true")
    run_dir = tmp_path / "t"
    t = teacher_config(cfg, run_dir)
    assert [t.loss[k] for k in ("crr", "mf", "car", "adv", "kd", "feature")] == [False] * 6
    assert t.modality == "all" and t.seed == 5 and t.trainer.max_epochs == 7
    assert t.teacher.checkpoint is None and not t.teacher.freeze
    assert not t.teacher.train_if_missing and not t.resume
    assert t.trainer.val_every == cfg.trainer.val_every  # everything else as the student's
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
    assert teacher_config(cfg, run_dir).resume  # a crashed teacher run is resumed
    bad = _student_cfg(tmp_path, "+teacher.train_config.trainer.max_epoch=7")
    with pytest.raises(ConfigError, match="train_config.trainer.max_epoch is not"):
        teacher_config(bad, run_dir)


def test_an_unfinished_teacher_resumes_with_the_scoring_it_validated_with(tmp_path):
    cfg = _student_cfg(tmp_path)
    assert cfg.postprocess.nested and cfg.postprocess.et_min_voxels == "auto"
    run_dir = tmp_path / "t"
    last = run_dir / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    # a teacher run from before postprocess.nested (session 30): it scored un-nested masks
    torch.save(
        {"student": None, "teacher": {}, "config": {"postprocess": {"et_min_voxels": 7}}}, last
    )
    t = teacher_config(cfg, run_dir)
    assert t.resume and t.postprocess.nested is False and t.postprocess.et_min_voxels == 7
    # and one from before ET post-processing too
    torch.save({"student": None, "teacher": {}, "config": {}}, last)
    t = teacher_config(cfg, run_dir)
    assert t.postprocess.nested is False and t.postprocess.et_min_voxels is None
    check_resume_scoring({}, t.postprocess)  # what the resume compares: no refusal


def test_teacher_path_must_be_a_last_checkpoint(tmp_path):
    assert teacher_run_dir(tmp_path / "a/checkpoints/last.pt") == tmp_path / "a"
    with pytest.raises(ConfigError, match="checkpoints/last.pt"):
        teacher_run_dir(tmp_path / "a/checkpoints/best.pt")
    cfg = _student_cfg(tmp_path, f"teacher.checkpoint={tmp_path}/x.pt")
    with pytest.raises(ConfigError, match="checkpoints/last.pt"):
        check_config(cfg, tmp_path)
    # without train_if_missing a missing file is an error, which names the option
    cfg = _student_cfg(tmp_path, "teacher.train_if_missing=false")
    with pytest.raises(ConfigError, match="does not exist.*train_if_missing"):
        check_config(cfg, tmp_path)


def _fake_train(calls: list):
    def train(cfg, run_dir):
        calls.append(run_dir)
        (run_dir / "teacher.yaml").write_text("{}")
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / "last.pt").write_bytes(b"x")
        (run_dir / DONE).write_text("done")

    return train


def test_ensure_teacher_trains_once(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(provision, "_train", _fake_train(calls))
    cfg = _student_cfg(tmp_path)
    ensure_teacher(cfg)
    ensure_teacher(cfg)
    assert calls == [tmp_path / "t"]
    assert not (tmp_path / "t" / LOCK).exists()  # released
    ensure_teacher(_student_cfg(tmp_path, "teacher.train_if_missing=false"))  # no-op
    assert len(calls) == 1


def test_ensure_teacher_waits_for_a_live_lock(tmp_path, monkeypatch, caplog):
    calls: list = []
    monkeypatch.setattr(provision, "_train", _fake_train(calls))
    run_dir = tmp_path / "t"
    run_dir.mkdir()
    import os
    import socket

    (run_dir / LOCK).write_text(f"{socket.gethostname()} {os.getpid()}")  # a live owner
    (run_dir / "teacher.yaml").write_text("{}")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"half-trained")
    assert not teacher_ready(run_dir / "checkpoints" / "last.pt")  # no .done yet

    def finish():
        time.sleep(0.3)
        (run_dir / DONE).write_text("done")

    cfg = _student_cfg(tmp_path)  # before caplog: a first Hydra compose resets logging
    threading.Thread(target=finish).start()
    start = time.time()
    with caplog.at_level("INFO", logger="rirn.train"):
        ensure_teacher(cfg, poll_s=0.05)
    assert calls == [] and time.time() - start >= 0.25  # it waited and did not train
    # the log names the owner and the lock to delete if that job died elsewhere
    assert f"({socket.gethostname()} {os.getpid()})" in caplog.text
    assert f"its lock {run_dir / LOCK} is taken over" in caplog.text
    assert teacher_ready(run_dir / "checkpoints" / "last.pt")


def test_ensure_teacher_takes_over_a_dead_jobs_lock(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(provision, "_train", _fake_train(calls))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / LOCK).write_text(f"{socket.gethostname()} {dead.pid}")
    ensure_teacher(_student_cfg(tmp_path), poll_s=0.05)
    assert calls == [tmp_path / "t"]


def _lock_of(run_dir, owner: str):
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK
    lock.write_text(owner)
    return lock


def test_a_fresh_lock_of_another_host_is_waited_for(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(provision, "_train", _fake_train(calls))
    run_dir = tmp_path / "t"
    lock = _lock_of(run_dir, "some-other-node 4242")
    threading.Timer(0.3, lambda: (run_dir / DONE).write_text("done")).start()
    ensure_teacher(_student_cfg(tmp_path), poll_s=0.05, stale_s=60)
    assert calls == [] and lock.exists()  # it waited; the live lock was left alone


def test_a_lock_not_refreshed_is_taken_over_on_any_host(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(provision, "_train", _fake_train(calls))
    run_dir = tmp_path / "t"
    _lock_of(run_dir, "some-other-node 4242")  # its job was killed by a time limit, say
    # a safety net so that a regression fails instead of waiting forever
    guard = threading.Timer(5.0, lambda: (run_dir / DONE).write_text("gave up"))
    guard.start()
    start = time.monotonic()
    ensure_teacher(_student_cfg(tmp_path), poll_s=0.05, stale_s=0.3)
    guard.cancel()
    assert calls == [run_dir] and time.monotonic() - start >= 0.3  # seen unchanged first
    assert not (run_dir / LOCK).exists() and list(run_dir.glob(LOCK + "*")) == []


def test_staleness_is_measured_on_the_waiters_clock_not_the_files_mtime(tmp_path):
    lock = _lock_of(tmp_path, "some-other-node 4242")
    then = time.time() - 10_000  # a node whose clock runs far behind, or an old file
    os.utime(lock, (then, then))
    watch = run_lock.LockWatch()
    assert run_lock.stale(lock, watch, stale_s=0.2) is None  # first seen now
    time.sleep(0.25)
    assert run_lock.stale(lock, watch, stale_s=0.2) is not None
    os.utime(lock)  # a heartbeat: seen as a change, the clock starts again
    assert run_lock.stale(lock, watch, stale_s=0.2) is None


def test_the_training_job_keeps_its_lock_fresh(tmp_path, monkeypatch):
    seen: list = []

    def train(cfg, run_dir):
        lock = run_dir / LOCK
        before = run_lock._identity(lock)
        time.sleep(0.3)
        seen.append((before, run_lock._identity(lock)))

    monkeypatch.setattr(provision, "_train", train)
    ensure_teacher(_student_cfg(tmp_path), poll_s=0.05, stale_s=60, heartbeat_s=0.05)
    ((before, after),) = seen
    assert after[0] == before[0] and after[1] > before[1]  # same file, touched since
    assert (tmp_path / "t" / DONE).is_file() and not (tmp_path / "t" / LOCK).exists()


def test_a_failed_touch_is_retried(tmp_path, monkeypatch):
    lock = _lock_of(tmp_path, "this-node 1")
    fails = iter([OSError("ESTALE")])
    real = os.utime
    touched: list = []

    def utime(path, *args):
        err = next(fails, None)
        if err:
            raise err
        touched.append(path)
        return real(path, *args)

    monkeypatch.setattr(run_lock.os, "utime", utime)
    with run_lock.Heartbeat(lock, "this-node 1", every_s=0.02) as beat:
        time.sleep(0.2)
    assert touched and not beat.lost.is_set()


def test_a_job_that_lost_its_lock_stops_and_waits(tmp_path, monkeypatch):
    run_dir = tmp_path / "t"

    def train(cfg, run_dir):
        # suspended past STALE_S: a waiter broke the lock and took it over
        (run_dir / LOCK).write_text("other-node 7")
        threading.Timer(0.5, lambda: (run_dir / DONE).write_text("by other-node 7")).start()
        for _ in range(100):  # training steps: the heartbeat's interrupt lands between two
            time.sleep(0.05)
        raise AssertionError("not interrupted")

    monkeypatch.setattr(provision, "_train", train)
    start = time.monotonic()
    ensure_teacher(_student_cfg(tmp_path), poll_s=0.05, stale_s=60, heartbeat_s=0.05)
    assert time.monotonic() - start < 4
    assert (run_dir / DONE).read_text() == "by other-node 7"  # this job did not mark it done
    assert (run_dir / LOCK).read_text() == "other-node 7"  # nor removed the new owner's lock


def test_only_one_waiter_breaks_a_stale_lock(tmp_path):
    lock = _lock_of(tmp_path, "some-other-node 4242")
    watch = run_lock.LockWatch()
    identity = run_lock.stale(lock, watch, stale_s=0)
    assert identity is not None
    # a second waiter is half-way through breaking the same lock: its link is in place
    tomb = lock.with_name(f"{lock.name}.dead-{identity[0]}-{identity[1]}")
    os.link(lock, tomb)
    run_lock.break_lock(lock, identity, run_lock.LockWatch(), stale_s=60)
    assert lock.exists()  # left to the other waiter
    tomb.unlink()
    run_lock.break_lock(lock, identity, watch, stale_s=60)
    assert not lock.exists() and not tomb.exists()


def test_a_link_left_by_a_dead_breaker_is_cleared(tmp_path):
    lock = _lock_of(tmp_path, "some-other-node 4242")
    watch = run_lock.LockWatch()
    identity = run_lock.stale(lock, watch, stale_s=0)
    tomb = lock.with_name(f"{lock.name}.dead-{identity[0]}-{identity[1]}")
    os.link(lock, tomb)  # its breaker was killed between the link and the unlink
    run_lock.break_lock(lock, identity, watch, stale_s=0.1)
    assert lock.exists() and tomb.exists()  # not yet: the breaker may be alive
    time.sleep(0.25)
    run_lock.break_lock(lock, identity, watch, stale_s=0.1)
    assert not tomb.exists()
    run_lock.break_lock(lock, identity, watch, stale_s=0.1)
    assert not lock.exists()


def test_a_late_waiter_does_not_break_the_new_lock(tmp_path):
    lock = _lock_of(tmp_path, "some-other-node 4242")
    identity = run_lock.stale(lock, run_lock.LockWatch(), stale_s=0)
    lock.unlink()  # another waiter broke it and took over with a fresh lock
    fresh = _lock_of(tmp_path, "this-node 1")
    run_lock.break_lock(lock, identity, run_lock.LockWatch(), stale_s=60)
    assert fresh.read_text() == "this-node 1"  # judged on the old file: the new one stays


def test_a_job_whose_lock_was_taken_over_leaves_the_new_lock(tmp_path):
    lock = _lock_of(tmp_path, "this-node 2")
    run_lock.release(lock, "old-node 1")
    assert lock.read_text() == "this-node 2"
    run_lock.release(lock, "this-node 2")
    assert not lock.exists()


def test_ensure_teacher_refuses_under_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="multi-process job"):
        ensure_teacher(_student_cfg(tmp_path))


def test_missing_teacher_is_trained_then_frozen(tmp_path, cache_root):
    """End to end, in-process: the student run trains its teacher first (1 epoch), then
    trains against it frozen, on the teacher's split."""
    ckpt = tmp_path / "teachers/seed_1/checkpoints/last.pt"
    overrides = [
        "debug=smoke",
        f"data.cache_root={cache_root}",
        "trainer.progress=false",
        "trainer.max_epochs=1",
        "loss=rirn",
        f"teacher.checkpoint={ckpt}",
        "teacher.freeze=true",
        "teacher.train_if_missing=true",
    ]
    out_dir, _ = train_run(tmp_path, overrides, name="student")
    teacher_dir = ckpt.parent.parent
    assert (teacher_dir / DONE).is_file() and not (teacher_dir / LOCK).exists()
    teacher = load_checkpoint(ckpt)
    assert teacher["modalities"] == ["flair", "t1", "t1ce", "t2"]
    assert teacher["config"]["loss"]["crr"] is False
    assert teacher["student"] is None and teacher["config"]["teacher"]["only"]  # trained alone
    student = load_checkpoint(out_dir / "checkpoints" / "last.pt")
    for key, value in teacher["teacher"].items():  # frozen: the student run kept it as is
        assert torch.equal(value, student["teacher"][key]), key
    assert student["split"] == teacher["split"]


def test_teacher_split_refuses_a_malformed_record(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"teacher": {}, "split": {"train": "Synth_000", "val": []}}, path)
    with pytest.raises(ConfigError, match="malformed split"):
        recorded_split(path)
    torch.save({"teacher": {}}, path)
    assert recorded_split(path) is None
    torch.save({"teacher": {}, "split": {"train": ["a"], "val": ["b"]}}, path)
    assert recorded_split(path) == {"train": ["a"], "val": ["b"]}


def test_frozen_teacher_is_scored_at_the_first_validation_only(tmp_path, cache_root, monkeypatch):
    """A frozen teacher cannot change between validations: it is run on the validation cases
    once, and its Dice is the same at every validation."""
    import rirn.inference as inference

    from .step_fixtures import history

    smoke = ["debug=smoke", f"data.cache_root={cache_root}", "trainer.progress=false"]
    teacher_dir, _ = train_run(tmp_path, [*smoke, "trainer.max_epochs=1"], name="teacher")
    calls: list[int] = []
    original = inference.predict_probs

    def counting(net, x, settings):
        calls.append(x.shape[1])  # input channels: 4 = teacher, 1 = the T1ce student
        return original(net, x, settings)

    monkeypatch.setattr(inference, "predict_probs", counting)
    student = [
        f"teacher.checkpoint={teacher_dir}/checkpoints/last.pt",
        "teacher.freeze=true",
        "trainer.max_epochs=2",
        "trainer.val_every=1",
    ]
    out_dir, _ = train_run(tmp_path, [*smoke, *student], name="student")
    rows = [r for r in history(out_dir) if "teacher/mean" in r]
    assert len(rows) == 2 and rows[0]["teacher/mean"] == rows[1]["teacher/mean"]
    n_val = len(json.loads((out_dir / "split.json").read_text())["val"])
    assert calls.count(4) == n_val and calls.count(1) == 2 * n_val
