"""Small networks, a synthetic batch, tiny-run overrides and a run helper for trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rirn.models import build_discriminator, build_unet
from rirn.train import run
from rirn.training.steps import StepNets

from .conftest import compose_config

SMALL_MODEL = [
    "model.widths=[8,16,16,16]",
    "model.norm_groups=4",
    "model.nonlocal_channels=8",
    "model.discriminator.channels=8",
]

# Overrides for a whole trainer run (smoke data) with a U-Net small enough that fp16 autocast on
# CPU (~50x slower than fp32 there) takes seconds and a cold inductor compile ~1.5 min on 2 cores.
TINY_RUN = [
    "debug=smoke",
    "model.widths=[4,8,16,32]",
    "model.norm_groups=4",
    "model.nonlocal_channels=8",
    "model.discriminator.channels=8",
    "data.crop_size=[16,16,16]",
    "trainer.progress=false",
]


def make_nets(cfg, modalities=1, teacher_trainable=True) -> StepNets:
    """Seeded teacher/student/discriminator with plain Adam (lr 1e-3), as the trainer wires them."""
    torch.manual_seed(0)
    teacher, student = build_unet(cfg.model, 4), build_unet(cfg.model, modalities)
    disc = build_discriminator(cfg.model)
    params = list(student.parameters()) + (list(teacher.parameters()) if teacher_trainable else [])
    return StepNets(
        teacher,
        student,
        disc,
        torch.optim.Adam(params, 1e-3),
        torch.optim.Adam(disc.parameters(), 1e-3),
        teacher_trainable,
        car_channels=int(cfg.model.widths[3]),
    )


def make_batch(seed=0, size=16) -> dict:
    """``image (1, 4, S, S, S)`` float32 noise, ``target (1, 3, S, S, S)`` nested WT/TC/ET cubes."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 4, size, size, size, generator=g)
    wt = torch.zeros(1, 1, size, size, size)
    wt[..., 4:12, 4:12, 4:12] = 1
    tc = torch.zeros_like(wt)
    tc[..., 6:10, 6:10, 6:10] = 1
    et = torch.zeros_like(wt)
    et[..., 7:9, 7:9, 7:9] = 1
    return {"image": image, "target": torch.cat([wt, tc, et], 1)}


def train_run(tmp_path: Path, overrides: list[str], name: str = "run") -> tuple[Path, dict]:
    """``python -m rirn.train`` in-process into ``tmp_path / name``; (run dir, last history row)."""
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    return run_dir, run(compose_config("train", overrides), run_dir)


def history(run_dir: Path) -> list[dict]:
    """The rows of ``metrics.jsonl``, one per finished epoch."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
