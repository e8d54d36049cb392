"""The trainer's networks, optimisers and a fixed batch, built outside the trainer.

:func:`build_step_nets` builds what ``CoTrainer._build_nets`` builds (teacher, student,
discriminator, their Adam optimisers, optionally compiled / channels-last) from the ``model``,
``loss`` and ``optim`` config groups, without DDP or a teacher checkpoint, so that the
benchmark times the trainer's step on the trainer's objects.
"""

from __future__ import annotations

import math

import torch

from rirn.models import build_discriminator, build_unet
from rirn.training.steps import StepNets

__all__ = ["build_step_nets", "initial_state", "make_batch"]


def initial_state(model_cfg, student_in: int, seed: int) -> dict[str, dict]:
    """CPU state dicts of teacher (4 inputs), student and discriminator, seeded: every
    variant starts from these same weights."""
    torch.manual_seed(seed)
    return {
        "teacher": build_unet(model_cfg, in_channels=4).state_dict(),
        "student": build_unet(model_cfg, in_channels=student_in).state_dict(),
        "discriminator": build_discriminator(model_cfg).state_dict(),
    }


def build_step_nets(
    model_cfg,
    loss_cfg,
    optim_cfg,
    student_in: int,
    device: torch.device,
    *,
    state: dict[str, dict] | None = None,
    compile: bool = False,
    channels_last: bool = False,
    fused: bool | None = None,
) -> StepNets:
    """Teacher (trainable), student, discriminator and their Adam optimisers as the trainer
    builds them (``CoTrainer._build_nets``, without DDP or a teacher checkpoint).

    Args:
        model_cfg, loss_cfg, optim_cfg: the ``model``, ``loss`` and ``optim`` config groups.
        student_in: number of student input modalities.
        device: where the networks live.
        state: weights from :func:`initial_state` (default: fresh initialisation).
        compile: wrap each network in ``torch.compile`` (default mode).
        channels_last: ``channels_last_3d`` weights for both U-Nets.
        fused: fused Adam; ``None`` reads ``optim.fused`` (``auto``: on CUDA only).
    """
    teacher = build_unet(model_cfg, in_channels=4)
    student = build_unet(model_cfg, in_channels=student_in)
    disc = build_discriminator(model_cfg) if loss_cfg.adv else None
    if state is not None:
        teacher.load_state_dict(state["teacher"])
        student.load_state_dict(state["student"])
        if disc is not None:
            disc.load_state_dict(state["discriminator"])
    fmt = torch.channels_last_3d if channels_last else torch.preserve_format
    teacher, student = (m.to(device, memory_format=fmt) for m in (teacher, student))
    disc = disc.to(device) if disc is not None else None
    if fused is None:
        fused = device.type == "cuda" if optim_cfg.fused == "auto" else bool(optim_cfg.fused)
    adam = dict(
        betas=tuple(optim_cfg.betas), weight_decay=float(optim_cfg.weight_decay), fused=fused
    )
    params = list(student.parameters()) + list(teacher.parameters())
    opt_main = torch.optim.Adam(params, lr=float(optim_cfg.lr), **adam)
    opt_disc = (
        torch.optim.Adam(disc.parameters(), lr=float(optim_cfg.disc_lr), **adam) if disc else None
    )
    if compile:
        teacher, student = torch.compile(teacher), torch.compile(student)
        disc = torch.compile(disc) if disc is not None else None
    scale = int(model_cfg.nonlocal_scale or 1)
    car_channels = int(model_cfg.widths[int(math.log2(scale))])
    return StepNets(teacher, student, disc, opt_main, opt_disc, True, car_channels)


def make_batch(crop, device: torch.device, seed: int = 0, batch_size: int = 1) -> dict:
    """A fixed training batch on ``device``: noise images with nested ball-shaped regions.

    The regions are never empty (so CRR has every centre) and sit in the middle of the crop;
    only shapes matter for the timing, but the loss values must be meaningful to compare.
    """
    gen = torch.Generator().manual_seed(seed)
    axes = [torch.linspace(-1.0, 1.0, int(s)) for s in crop]
    radius = torch.stack(torch.meshgrid(*axes, indexing="ij")).square().sum(0).sqrt()
    wt, tc = radius < 0.6, radius < 0.35
    et = tc & (radius > 0.2)
    target = torch.stack([wt, tc, et]).float().expand(batch_size, 3, *radius.shape)
    signal = torch.stack([wt, tc, et, wt]).float()
    image = torch.randn(batch_size, 4, *radius.shape, generator=gen) + signal
    return {"image": image.to(device), "target": target.contiguous().to(device)}
