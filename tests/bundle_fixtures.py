"""Checkpoints with random tiny students (no training) and a bundle of them, for bundle tests.

A checkpoint here has every key ``rirn.training.engine`` writes, with a ``history`` whose last
validation row gives the student a chosen mean Dice, and filler optimiser/discriminator
state that a bundle must not carry.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rirn.data.modalities import parse_modalities, subset_name
from rirn.models import build_unet

from .conftest import compose_config

#: A U-Net of 6k parameters without the non-local block: a 32^3 forward takes milliseconds.
TINY_MODEL = {
    "widths": [4, 8],
    "blocks_down": [1, 1],
    "blocks_up": [1],
    "norm_groups": 2,
    "nonlocal_scale": None,
    "dropout": 0.0,
}
#: Students of the test bundle: subset -> (seed, validation mean). No all-four student, two of
#: size one (a tie between t1ce and t2 is broken by the mean), one flair+t2 for the 2023 case.
STUDENTS = {"t1ce": (1, 0.60), "t2": (2, 0.55), "flair+t2": (3, 0.70), "t1+t1ce+t2": (4, 0.65)}
#: A worse second t1ce student, which the export must drop.
WORSE_T1CE = (5, 0.40)


def student_state(subset: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_unet(TINY_MODEL, len(parse_modalities(subset))).state_dict()


def make_checkpoint(
    path: Path,
    subset: str,
    seed: int,
    mean: float | None,
    crop: tuple[int, int, int] = (16, 16, 16),
    scheme: str = "brats",
) -> Path:
    """Write a checkpoint of a random ``subset`` student (validation mean ``mean``, or no
    validation at all for ``None``); WT/TC/ET are ``mean + 0.1, mean, mean - 0.1``."""
    modalities = parse_modalities(subset)
    torch.manual_seed(seed + 100)
    teacher = build_unet(TINY_MODEL, 4).state_dict()
    history: list[dict] = [{"epoch": 1, "train/seg": 0.9}]
    if mean is not None:
        val = {"WT": mean + 0.1, "TC": mean, "ET": mean - 0.1, "mean": mean}
        history.append(
            {
                "epoch": 2,
                "train/seg": 0.8,
                **{f"student/{k}": v for k, v in val.items()},
                **{f"teacher/{k}": v + 0.05 + seed / 100 for k, v in val.items()},
            }
        )
    state = {
        "epoch": 2,
        "student": student_state(subset, seed),
        "teacher": teacher,
        "discriminator": {"w": torch.ones(8)},
        "optimizers": {"main": {"state": {0: {"exp_avg": torch.ones(4096)}}}, "disc": None},
        "schedulers": [],
        "scaler": None,
        "rng": {},
        "config": {
            "model": dict(TINY_MODEL),
            "data": {"name": "brats2021", "crop_size": list(crop)},
            "modality": subset_name(modalities),
        },
        "modalities": list(modalities),
        "split": {"train": [f"t{i}" for i in range(6)], "val": ["v0", "v1", "v2"], "seed": 0},
        "release": "brats2021",
        "scheme": scheme,
        "best_metric": mean if mean is not None else float("-inf"),
        "history": history,
        "global_step": 12,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def make_student_checkpoints(root: Path) -> list[Path]:
    """One checkpoint per :data:`STUDENTS` entry, then the worse t1ce one."""
    paths = [
        make_checkpoint(root / f"{name}.pt", name, seed, mean)
        for name, (seed, mean) in STUDENTS.items()
    ]
    return [*paths, make_checkpoint(root / "t1ce-worse.pt", "t1ce", *WORSE_T1CE)]


def export(overrides: list[str]) -> dict:
    """``python -m rirn.export`` in-process; returns the manifest."""
    from rirn.export import run

    return run(compose_config("export", overrides))


def make_bundle(tmp: Path, name: str = "bundle") -> Path:
    """A bundle of :data:`STUDENTS` exported from fresh checkpoints under ``tmp``."""
    paths = make_student_checkpoints(tmp / "ckpts")
    listed = ",".join(str(p) for p in paths)
    export([f"checkpoints=[{listed}]", f"output={tmp / name}"])
    return tmp / name
