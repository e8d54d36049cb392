"""The trainer's networks, optimisers and a fixed batch, built outside the trainer.

:func:`build_step_nets` builds what ``CoTrainer._build_nets`` builds (teacher, student,
discriminator, their Adam optimisers, optionally compiled / channels-last) from the ``model``,
``loss`` and ``optim`` config groups, without DDP or a teacher checkpoint, so that the
benchmark times the trainer's step on the trainer's objects.
"""

from __future__ import annotations

import torch

from rirn.models import build_discriminator, build_unet
from rirn.training.nets import build_step_nets as _build
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
    """The trainer's :func:`rirn.training.nets.build_step_nets` (trainable teacher, no DDP),
    optionally with every network wrapped in ``torch.compile`` (default mode)."""
    return _build(
        model_cfg,
        loss_cfg,
        optim_cfg,
        student_in,
        device,
        state=state,
        channels_last=channels_last,
        fused=fused,
        wrap=(lambda module, _trainable: torch.compile(module)) if compile else None,
    )


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
