"""Build the networks and optimisers of one co-training step (:class:`StepNets`).

Used by the trainer (with a DDP/compile ``wrap`` and an optional teacher checkpoint) and by the
benchmark (with fixed initial weights), so both run the step on identical objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from rirn.models import build_discriminator, build_unet
from rirn.training.steps import StepNets


def car_channels(model_cfg) -> int:
    """C of Eq. 7: the width of the feature map under the non-local block."""
    scale = int(model_cfg.nonlocal_scale or 1)
    return int(model_cfg.widths[int(math.log2(scale))])


def param_groups(nets: list[nn.Module], lr: float, head_lr_scale: float = 1.0) -> list[dict]:
    """Adam parameter groups of the U-Nets in ``nets``: everything at ``lr``, or, when
    ``head_lr_scale != 1``, the 1x1x1 output convolutions (``net.head``: weight and bias) in a
    second group at ``lr * head_lr_scale``.

    Why a faster head: Adam moves each weight by at most about ``lr`` per step, and the head is
    the only place where the logit scale can grow (every other layer is followed by a norm).
    In a few hundred steps at 1e-3 the logits stay within about +-2, so the background keeps
    a probability of 0.1-0.3 and soft Dice stays near 1 while hard Dice is 0.6
    (docs/method.md, "Training recipe"). One group when the factor is 1, as before, so older
    checkpoints resume.
    """
    if head_lr_scale == 1:
        return [{"params": [p for net in nets for p in net.parameters()], "lr": lr}]
    head = [p for net in nets for p in net.head.parameters()]
    in_head = {id(p) for p in head}
    body = [p for net in nets for p in net.parameters() if id(p) not in in_head]
    return [{"params": body, "lr": lr}, {"params": head, "lr": lr * head_lr_scale}]


def build_step_nets(
    model_cfg,
    loss_cfg,
    optim_cfg,
    student_in: int | None,
    device: torch.device,
    *,
    state: dict[str, dict] | None = None,
    load_teacher: Callable[[nn.Module], None] | None = None,
    teacher_trainable: bool = True,
    channels_last: bool = False,
    fused: bool | None = None,
    wrap: Callable[[nn.Module, bool], nn.Module] | None = None,
) -> StepNets:
    """Teacher (4 inputs), student (``student_in`` inputs), discriminator (if ``loss.adv`` and
    there is a student) and their Adam optimisers: one for student + teacher (teacher left out
    when frozen), one for D.

    Args:
        model_cfg, loss_cfg, optim_cfg: the ``model``, ``loss`` and ``optim`` config groups.
        student_in: number of student input modalities; ``None`` builds no student (a
            teacher trained alone, ``teacher.only``).
        device: where the networks live.
        state: ``{"teacher", "student", "discriminator"}`` state dicts to start from.
        load_teacher: called on the fresh teacher (e.g. load a checkpoint) before freezing.
        teacher_trainable: ``False`` freezes the teacher (no gradients, no optimiser).
        channels_last: ``channels_last_3d`` weights for both U-Nets.
        fused: fused Adam; ``None`` reads ``optim.fused`` (``auto``: on CUDA only).
        wrap: ``wrap(module, trainable)`` applied to each network after the optimisers are
            built (DDP, ``torch.compile``); identity by default.
    """
    if student_in is None and not teacher_trainable:
        raise ValueError("a run without a student must train its teacher")
    # The teacher first: its initial weights are then the same with or without a student.
    teacher = build_unet(model_cfg, in_channels=4)
    student = build_unet(model_cfg, in_channels=student_in) if student_in is not None else None
    disc = build_discriminator(model_cfg) if loss_cfg.adv and student is not None else None
    if state is not None:
        teacher.load_state_dict(state["teacher"])
        if student is not None:
            student.load_state_dict(state["student"])
        if disc is not None:
            disc.load_state_dict(state["discriminator"])
    if load_teacher is not None:
        load_teacher(teacher)
    if not teacher_trainable:
        teacher.requires_grad_(False)
    fmt = torch.channels_last_3d if channels_last else torch.preserve_format
    teacher = teacher.to(device, memory_format=fmt)
    student = student.to(device, memory_format=fmt) if student is not None else None
    disc = disc.to(device) if disc is not None else None
    if fused is None:
        fused = device.type == "cuda" if optim_cfg.fused == "auto" else bool(optim_cfg.fused)
    adam = dict(
        betas=tuple(optim_cfg.betas), weight_decay=float(optim_cfg.weight_decay), fused=fused
    )
    trained = [m for m in (student, teacher if teacher_trainable else None) if m is not None]
    groups = param_groups(trained, float(optim_cfg.lr), float(optim_cfg.get("head_lr_scale", 1)))
    opt_main = torch.optim.Adam(groups, **adam)
    opt_disc = (
        torch.optim.Adam(disc.parameters(), lr=float(optim_cfg.disc_lr), **adam) if disc else None
    )
    if wrap is not None:
        teacher = wrap(teacher, teacher_trainable)
        student = wrap(student, True) if student is not None else None
        disc = wrap(disc, True) if disc is not None else None
    return StepNets(
        teacher, student, disc, opt_main, opt_disc, teacher_trainable, car_channels(model_cfg)
    )
