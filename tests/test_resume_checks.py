"""``resume=true`` continues the run that trained, or refuses with one line: the student's
subset, the networks, the teacher set-up and the optimiser settings that the stored state fixes,
and the validation scoring that its stored best Dice came from."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from rirn.errors import ConfigError
from rirn.training.resume import check_resume, check_resume_networks, check_resume_optim

from .conftest import compose_config


def _state(overrides=(), modalities=("t1ce",)) -> dict:
    cfg = compose_config("train", list(overrides))
    return {
        "modalities": list(modalities),
        "student": {},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def test_resume_as_trained_passes():
    state = _state(["modality=flair+t2"], ("flair", "t2"))
    cfg = compose_config("train", ["modality=t2+flair", "trainer.max_epochs=900"])
    check_resume_networks(state, cfg, ("flair", "t2"))  # more epochs is a resume, not a change


@pytest.mark.parametrize(
    "overrides,modalities,message",
    [
        ([], ("flair",), r"modalities \(t1ce -> flair\); add modality=t1ce"),
        (["model.norm_groups=4"], ("t1ce",), r"\(norm_groups\); add model.norm_groups=8"),
        (["model.dropout=0.5"], ("t1ce",), r"add model.dropout=0.0"),
        (
            ["teacher.freeze=true"],
            ("t1ce",),
            r"teacher set-up the run trained with \(freeze\); add teacher.freeze=false",
        ),
    ],
)
def test_resume_refuses_other_networks(overrides, modalities, message):
    cfg = compose_config("train", list(overrides))
    with pytest.raises(ConfigError, match=message):
        check_resume_networks(_state(), cfg, modalities)


def test_resume_of_a_run_before_teacher_only_compares_what_it_recorded():
    state = _state()
    del state["config"]["teacher"]["only"]
    check_resume_networks(state, compose_config("train", []), ("t1ce",))


def test_resume_refuses_an_optimiser_setting_the_stored_state_would_override():
    stored = _state()["config"]["optim"]
    check_resume_optim(stored, compose_config("train", ["optim.fused=true"]).optim)
    check_resume_optim(stored, compose_config("train", ["optim.poly_power=2"]).optim)
    with pytest.raises(
        ConfigError, match=r"\(disc_lr, lr\); add optim.disc_lr=0.001 optim.lr=0.001"
    ):
        check_resume_optim(stored, compose_config("train", ["optim.lr=0.5"]).optim)
    with pytest.raises(ConfigError, match=r"\(betas\)"):
        check_resume_optim(stored, compose_config("train", ["optim.betas=[0.5,0.9]"]).optim)


def test_resume_of_a_run_before_nested_scoring_keeps_its_scoring():
    """A checkpoint from before session 30 has no ``postprocess.nested``: its best Dice scored
    un-nested masks, so today's default (nested) would compare epochs on two scorings."""
    state = _state()
    check_resume(state, compose_config("train", []), ("t1ce",))  # as trained: resumes
    del state["config"]["postprocess"]["nested"]
    with pytest.raises(ConfigError, match=r"\(nested\); add postprocess.nested=false to resume"):
        check_resume(state, compose_config("train", []), ("t1ce",))
    check_resume(state, compose_config("train", ["postprocess.nested=false"]), ("t1ce",))
    del state["config"]["postprocess"]  # before postprocess.et_min_voxels too: no ET clean-up
    with pytest.raises(
        ConfigError, match="add postprocess.et_min_voxels=null postprocess.nested=false to"
    ):
        check_resume(state, compose_config("train", ["trainer.max_epochs=900"]), ("t1ce",))
    old = ["postprocess.et_min_voxels=null", "postprocess.nested=false"]
    check_resume(state, compose_config("train", old), ("t1ce",))


@pytest.mark.parametrize(
    "stored,current,message",
    [
        (["postprocess.nested=false"], [], "add postprocess.nested=false"),
        ([], ["postprocess.nested=false"], "add postprocess.nested=true"),
        ([], ["postprocess.et_min_voxels=500"], "add postprocess.et_min_voxels=auto"),
        (["postprocess.et_min_voxels=11"], [], "add postprocess.et_min_voxels=11"),
        (["postprocess.et_min_voxels=null"], [], "add postprocess.et_min_voxels=null"),
    ],
)
def test_resume_refuses_another_validation_scoring(stored, current, message):
    state = _state(stored)
    with pytest.raises(ConfigError, match=rf"validation scoring .*{message} to resume it"):
        check_resume(state, compose_config("train", current), ("t1ce",))
    check_resume(state, compose_config("train", stored), ("t1ce",))


def test_resume_trains_on_the_split_its_checkpoint_recorded(tmp_path, cache_root):
    """split.json may have been rewritten by a run started over the folder and stopped at once
    (its warning says to resume): the resumed run keeps the split it trained on."""
    import json

    from rirn.training.checkpoint import load_checkpoint

    from .step_fixtures import train_run

    smoke = ["debug=smoke", f"data.cache_root={cache_root}", "trainer.progress=false"]
    run_dir, _ = train_run(tmp_path, [*smoke, "loss=baseline", "trainer.max_epochs=1"])
    trained = load_checkpoint(run_dir / "checkpoints" / "last.pt")["split"]
    swapped = {"train": trained["val"] + trained["train"][1:], "val": trained["train"][:1]}
    (run_dir / "split.json").write_text(json.dumps(swapped))
    resume = [*smoke, "loss=baseline", "trainer.max_epochs=2", "resume=true"]
    train_run(tmp_path, resume)
    assert json.loads((run_dir / "split.json").read_text())["val"] == trained["val"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["split"]["val"] == trained["val"]


def test_tensorboard_hides_what_came_after_the_checkpoint_a_run_resumes(tmp_path, cache_root):
    """A crash after epoch 2 was logged but before its last.pt was written: the resumed run
    logs epoch 2 again, and TensorBoard shows each step once. A run started over an earlier
    one hides all of the earlier run's events."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from .step_fixtures import train_run

    smoke = ["debug=smoke", f"data.cache_root={cache_root}", "trainer.progress=false"]
    smoke += ["loss=baseline"]
    run_dir, _ = train_run(tmp_path, [*smoke, "trainer.max_epochs=1"])
    last = run_dir / "checkpoints" / "last.pt"
    shutil.copy(last, tmp_path / "epoch1.pt")
    train_run(tmp_path, [*smoke, "trainer.max_epochs=2", "resume=true"])
    shutil.copy(tmp_path / "epoch1.pt", last)  # the crash: epoch 2 logged, not saved
    train_run(tmp_path, [*smoke, "trainer.max_epochs=2", "resume=true"])

    def steps(tag: str) -> list[int]:
        acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        acc.Reload()
        return [e.step for e in acc.Scalars(tag)]

    from rirn.training.checkpoint import load_checkpoint

    per_epoch = load_checkpoint(tmp_path / "epoch1.pt")["global_step"]
    assert steps("train_step/total") == list(range(1, 2 * per_epoch + 1))  # each step once
    assert steps("train/epoch") == [per_epoch, 2 * per_epoch]  # epoch rows at their step

    train_run(tmp_path, [*smoke, "trainer.max_epochs=1"])  # from scratch over it
    assert steps("train/epoch") == [per_epoch]
