"""``teacher.only``: the full-modality teacher trained alone, no student (stage one of a
two-stage study, and the teacher run of ``teacher.train_if_missing``)."""

from __future__ import annotations

import csv

import pytest
import torch

from rirn.errors import ConfigError, DataError, RirnError
from rirn.evaluation.runs import open_checkpoint
from rirn.training.checkpoint import load_checkpoint
from rirn.training.nets import build_step_nets
from rirn.training.provision import teacher_config
from rirn.training.setup import check_config
from rirn.training.steps import TERMS, compute_losses, seg_loss, train_step

from .conftest import compose_config
from .step_fixtures import SMALL_MODEL, history, make_batch, train_run


def _nets(cfg, student_in):
    torch.manual_seed(0)
    return build_step_nets(cfg.model, cfg.loss, cfg.optim, student_in, torch.device("cpu"))


def test_a_lone_teacher_step_is_its_segmentation_loss_alone():
    cfg = compose_config("train", [*SMALL_MODEL, "loss=baseline"])
    nets = _nets(cfg, None)
    assert nets.student is None and nets.discriminator is None
    batch = make_batch()
    terms, probs_t, probs_s = compute_losses(nets, batch["image"], batch["target"], [2], cfg.loss)
    assert probs_s is None and probs_t.shape == batch["target"].shape
    # the same loss computed another way: the teacher's own forward and loss.seg
    expected = seg_loss(nets.teacher(batch["image"]), batch["target"], cfg.loss)
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["seg_t"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert all(terms[k].item() == 0.0 for k in ("seg_s", "crr", "car", "adv", "kd", "feat"))
    # a whole step updates the teacher and only it: the optimiser holds its parameters alone
    before = [p.detach().clone() for p in nets.teacher.parameters()]
    step = train_step(nets, batch, [2], cfg.loss, torch.device("cpu"), None)
    losses = dict(zip(TERMS, step, strict=True))
    assert losses["disc"].item() == 0.0
    owned = {id(p) for g in nets.opt_main.param_groups for p in g["params"]}
    assert owned == {id(p) for p in nets.teacher.parameters()}
    after = list(nets.teacher.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_lone_teacher_starts_from_the_co_trained_teachers_weights():
    cfg = compose_config("train", [*SMALL_MODEL, "loss=baseline"])
    alone, paired = _nets(cfg, None), _nets(cfg, 4)
    paired_state = paired.teacher.state_dict()
    for key, value in alone.teacher.state_dict().items():
        assert torch.equal(value, paired_state[key]), key
    with pytest.raises(ValueError, match="must train its teacher"):
        build_step_nets(
            cfg.model, cfg.loss, cfg.optim, None, torch.device("cpu"), teacher_trainable=False
        )


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["teacher.only=true"], "loss.crr=true distils into one; add loss=baseline"),
        (["teacher.only=true", "loss=kd"], "loss.kd=true"),
        (["teacher.only=true", "loss=baseline", "teacher.freeze=true"], "teacher.freeze=true"),
    ],
)
def test_teacher_only_refuses_what_needs_a_student(overrides, message, tmp_path):
    cfg = compose_config("train", ["debug=smoke", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_config(cfg, tmp_path)


def test_teacher_only_run_trains_the_co_trained_teacher_at_half_the_work(tmp_path, cache_root):
    """A teacher.only run ends with the very teacher that co-training with a throwaway
    full-modality student gives (the teacher's gradient does not depend on the student), saves
    no student, picks best.pt by the teacher, and rirn.evaluate scores the teacher."""
    from rirn.evaluate import evaluate_one

    smoke = [
        "debug=smoke",
        f"data.cache_root={cache_root}",
        "trainer.progress=false",
        "loss=baseline",
    ]
    paired_dir, _ = train_run(tmp_path, [*smoke, "modality=all"], name="paired")
    alone_dir, last = train_run(tmp_path, [*smoke, "teacher.only=true"], name="alone")
    paired = load_checkpoint(paired_dir / "checkpoints" / "last.pt")
    alone = load_checkpoint(alone_dir / "checkpoints" / "last.pt")
    for key, value in paired["teacher"].items():
        assert torch.equal(value, alone["teacher"][key]), key
    assert alone["student"] is None and alone["modalities"] == ["flair", "t1", "t1ce", "t2"]
    rows = history(alone_dir)
    assert [r["train/seg_t"] for r in rows] == [r["train/seg_t"] for r in history(paired_dir)]
    assert [r["train/total"] for r in rows] == [r["train/seg_t"] for r in rows]
    assert not any(k.startswith("student/") for r in rows for k in r)
    assert alone["best_metric"] == max(r["teacher/mean"] for r in rows)
    assert last["teacher/mean"] == rows[-1]["teacher/mean"]

    ckpt = open_checkpoint(alone_dir / "checkpoints" / "last.pt")
    assert not ckpt.has_student
    with pytest.raises(DataError, match="teacher alone"):
        ckpt.network("student")
    cfg = compose_config(
        "evaluate",
        [f"run_dir={alone_dir}", "teacher=false", "progress=false"]
        + [f"data.cache_root={cache_root}"],
    )
    with (evaluate_one(cfg) / "summary.csv").open() as f:
        assert {row["model"] for row in csv.DictReader(f)} == {"teacher"}

    # resuming it as a run with a student is refused with the override that resumes it
    resume = [*smoke, "modality=all", "resume=true", "trainer.max_epochs=3"]
    with pytest.raises(ConfigError, match=r"\(only\); add teacher.only=true to resume"):
        train_run(tmp_path, resume, name="alone")

    # a run of rirn before teacher.only recorded no such key: its student still decides
    legacy = load_checkpoint(paired_dir / "checkpoints" / "last.pt")
    del legacy["config"]["teacher"]["only"]
    torch.save(legacy, paired_dir / "checkpoints" / "last.pt")
    resume = [*smoke, "teacher.only=true", "resume=true", "trainer.max_epochs=3"]
    with pytest.raises(RirnError, match="trained a student too; resume it with teacher.only=false"):
        train_run(tmp_path, resume, name="paired")


def test_provisioned_teacher_trains_alone_unless_resuming_a_run_with_a_student(tmp_path):
    cfg = compose_config(
        "train",
        [
            "loss=rirn",
            f"teacher.checkpoint={tmp_path}/t/checkpoints/last.pt",
            "teacher.freeze=true",
            "teacher.train_if_missing=true",
        ],
    )
    run_dir = tmp_path / "t"
    assert teacher_config(cfg, run_dir).teacher.only
    last = run_dir / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    torch.save({"student": None, "teacher": {}}, last)
    t = teacher_config(cfg, run_dir)
    assert t.resume and t.teacher.only
    # an unfinished teacher run of rirn before teacher.only resumes as it trained
    torch.save({"student": {"w": torch.zeros(1)}, "teacher": {}}, last)
    t = teacher_config(cfg, run_dir)
    assert t.resume and not t.teacher.only
