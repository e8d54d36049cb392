"""One co-training step: the losses of paper Eq. 9 for teacher, student and discriminator.

Kept apart from the loop so that the benchmark and the tests run exactly the step the trainer
runs. The teacher and the student share no code path other than the model class: both are
``UNet3D`` instances called on their own inputs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from rirn.losses import adversarial_loss, car_loss, crr_loss, dice_loss, discriminator_loss

#: Loss terms in the order they are logged; ``total`` is the student+teacher objective.
TERMS: tuple[str, ...] = ("total", "dice_t", "dice_s", "crr", "car", "adv", "disc")


@dataclass
class StepNets:
    """The networks and optimisers a step touches (any may be DDP/compile-wrapped)."""

    teacher: nn.Module
    student: nn.Module
    discriminator: nn.Module | None
    opt_main: torch.optim.Optimizer  # student (+ teacher unless frozen)
    opt_disc: torch.optim.Optimizer | None
    teacher_trainable: bool
    car_channels: int  # C of the feature map under the non-local block (Eq. 7)


def unwrap_ddp(module: nn.Module) -> nn.Module:
    return getattr(module, "module", module)


def select_channels(image: torch.Tensor, channels: list[int] | torch.Tensor) -> torch.Tensor:
    """``image[:, channels]``. Pass ``channels`` as an index tensor on ``image``'s device in a
    hot loop: indexing a CUDA tensor with a Python list copies the list to the device and
    synchronises with the host on every call."""
    if isinstance(channels, torch.Tensor):
        return image.index_select(1, channels)
    return image[:, channels]


def compute_losses(
    nets: StepNets,
    image: torch.Tensor,
    target: torch.Tensor,
    student_channels: list[int] | torch.Tensor,
    loss_cfg,
    distill_scale: float = 1.0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Forward both networks and compute every enabled term.

    Args:
        image: ``(B, 4, *S)`` float, all modalities in canonical order.
        target: ``(B, 3, *S)`` float {0, 1}, WT/TC/ET.
        student_channels: indices of the student's modalities in ``image`` (a list, or an
            int64 tensor on the device to keep the step free of host syncs).
        distill_scale: factor on the CRR/CAR/ADV weights (the ramp-up of
            :func:`distill_scale`); the logged terms are unscaled.

    Returns:
        ``(terms, probs_t, probs_s)``: scalar loss tensors keyed by :data:`TERMS` (``disc`` is
        added by :func:`train_step`); the sigmoid outputs ``(B, 3, *S)``.
    """
    teacher_ctx = contextlib.nullcontext() if nets.teacher_trainable else torch.no_grad()
    with teacher_ctx:
        out_t = nets.teacher(image)
    out_s = nets.student(select_channels(image, student_channels))
    probs_t = torch.sigmoid(out_t.logits.float())
    probs_s = torch.sigmoid(out_s.logits.float())
    zero = probs_s.new_zeros(())
    w = loss_cfg.weight
    terms = {
        "dice_t": dice_loss(probs_t, target) if nets.teacher_trainable else zero,
        "dice_s": dice_loss(probs_s, target),
        "crr": zero,
        "car": zero,
        "adv": zero,
    }
    if loss_cfg.crr:
        terms["crr"] = crr_loss(
            out_t.features,
            out_s.features,
            probs_t,
            target,
            threshold=float(loss_cfg.threshold),
            aggregation=str(loss_cfg.aggregation),
            filter=bool(loss_cfg.mf),
        )
    if loss_cfg.car:
        terms["car"] = car_loss(
            out_t.query,
            out_t.key,
            out_s.query,
            out_s.key,
            channels=nets.car_channels,
            chunk_size=int(loss_cfg.car_chunk_size),
        )
    if loss_cfg.adv and nets.discriminator is not None:
        # The plain module: the student's adversarial term must not run DDP's gradient hooks of D.
        terms["adv"] = adversarial_loss(unwrap_ddp(nets.discriminator), probs_s)
    terms["total"] = (
        terms["dice_t"]
        + w.dice * terms["dice_s"]
        + distill_scale * (w.crr * terms["crr"] + w.car * terms["car"] + w.adv * terms["adv"])
    )
    return terms, probs_t, probs_s


def train_step(
    nets: StepNets,
    batch: dict,
    student_channels: list[int],
    loss_cfg,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    distill_scale: float = 1.0,
) -> torch.Tensor:
    """One optimisation step of teacher + student, then of the discriminator.

    Returns the detached terms stacked in :data:`TERMS` order, shape ``(len(TERMS),)``, on the
    device; nothing here synchronises with the host, so the caller decides when to read them.
    """
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    image = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
    # Targets travel as uint8 masks (see TrainDataset) and become float on the device.
    target = batch["target"].to(device, non_blocking=True).float()
    autocast = torch.autocast(
        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    )

    nets.opt_main.zero_grad(set_to_none=True)
    with autocast:
        terms, probs_t, probs_s = compute_losses(
            nets, image, target, student_channels, loss_cfg, distill_scale
        )
    _backward_step(terms["total"], nets.opt_main, scaler)

    terms["disc"] = terms["total"].new_zeros(())
    if loss_cfg.adv and nets.discriminator is not None and nets.opt_disc is not None:
        nets.opt_disc.zero_grad(set_to_none=True)
        with autocast:
            terms["disc"] = discriminator_loss(nets.discriminator, probs_t, probs_s)
        _backward_step(terms["disc"], nets.opt_disc, scaler)
    if scaler is not None:
        scaler.update()
    return torch.stack([terms[k].detach().float() for k in TERMS])


def distill_scale(epoch: int, rampup_epochs: int) -> float:
    """Linear ramp-up of the distillation weights: ``epoch / rampup_epochs`` capped at 1
    (``epoch`` counts from 0, so the first epoch trains on Dice alone). 0 = no ramp (paper).

    Why: CRR's masks (Eq. 3) and CAR's target relations come from the co-trained teacher, which
    is random at the start; the sign-valued L1 gradient of CRR then dominates the student's
    Dice gradient under Adam and stalls it (docs/method.md, "Loss weights and ramp-up").
    """
    if rampup_epochs <= 0:
        return 1.0
    return min(1.0, epoch / rampup_epochs)


def _backward_step(loss, optimizer, scaler) -> None:
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
