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

from rirn.losses import (
    adversarial_loss,
    car_loss,
    crr_loss,
    deep_supervision_loss,
    discriminator_loss,
    feature_loss,
    kd_loss,
)

#: Loss terms in the order they are logged; ``total`` is the student+teacher objective.
#: ``seg_t``/``seg_s``: the segmentation loss (``loss.seg``) of teacher and student; ``kd`` and
#: ``feat``: the knowledge-transfer baselines (``loss.kd``, ``loss.feature``).
TERMS: tuple[str, ...] = ("total", "seg_t", "seg_s", "crr", "car", "adv", "kd", "feat", "disc")
#: The ``loss.*`` switches of the terms that read the teacher: all off = the segmentation-only
#: baseline (and a teacher run, rirn.training.provision, sets them all off).
DISTILLATION_SWITCHES: tuple[str, ...] = ("crr", "mf", "car", "adv", "kd", "feature")


@dataclass
class StepNets:
    """The networks and optimisers a step touches (any may be DDP/compile-wrapped)."""

    teacher: nn.Module
    student: nn.Module | None  # None: the teacher trains alone (teacher.only)
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
    """Forward both networks (the student alone when the teacher is frozen and unread, the
    teacher alone when there is no student) and compute every enabled term.

    Args:
        image: ``(B, 4, *S)`` float, all modalities in canonical order.
        target: ``(B, 3, *S)`` float {0, 1}, WT/TC/ET.
        student_channels: indices of the student's modalities in ``image`` (a list, or an
            int64 tensor on the device to keep the step free of host syncs).
        distill_scale: factor on the CRR/CAR/ADV/KD/feature weights (the ramp-up of
            :func:`distill_scale`); the logged terms are unscaled.

    Returns:
        ``(terms, probs_t, probs_s)``: scalar loss tensors keyed by :data:`TERMS` (``disc`` is
        added by :func:`train_step`); the sigmoid outputs ``(B, 3, *S)`` (``probs_t`` is
        ``None`` when the teacher was not run: frozen and read by no term; ``probs_s`` is
        ``None`` when there is no student: ``nets.student is None``, ``teacher.only``).
    """
    zero = image.new_zeros((), dtype=torch.float32)
    w = loss_cfg.weight
    terms = dict.fromkeys(("seg_t", "seg_s", "crr", "car", "adv", "kd", "feat"), zero)
    out_s = probs_s = None
    if nets.student is not None:
        out_s = nets.student(select_channels(image, student_channels))
        probs_s = torch.sigmoid(out_s.logits.float())
        terms["seg_s"] = seg_loss(out_s, target, loss_cfg)
    if not (nets.teacher_trainable or uses_teacher(loss_cfg)):
        # A frozen teacher that no term reads: the baseline of a two-stage benchmark.
        terms["total"] = w.seg * terms["seg_s"]
        return terms, None, probs_s
    # A frozen teacher is a constant target: no autograd graph for it.
    teacher_ctx = contextlib.nullcontext() if nets.teacher_trainable else torch.no_grad()
    with teacher_ctx:
        out_t = nets.teacher(image)
    probs_t = torch.sigmoid(out_t.logits.float())
    if nets.teacher_trainable:
        terms["seg_t"] = seg_loss(out_t, target, loss_cfg)
    # Before the start epoch the terms are not even computed; without a student (teacher.only)
    # there is nothing to distil into.
    distil = distill_scale > 0 and out_s is not None
    if loss_cfg.crr and distil:
        terms["crr"] = crr_loss(
            out_t.features,
            out_s.features,
            probs_t,
            target,
            threshold=float(loss_cfg.threshold),
            aggregation=str(loss_cfg.aggregation),
            filter=bool(loss_cfg.mf),
        )
    if loss_cfg.car and distil:
        terms["car"] = car_loss(
            out_t.query,
            out_t.key,
            out_s.query,
            out_s.key,
            channels=nets.car_channels,
            chunk_size=int(loss_cfg.car_chunk_size),
            # .get: configs of runs from before these options are the paper's relation.
            temperature=float(loss_cfg.get("car_temperature", 1.0)),
            normalize=bool(loss_cfg.get("car_normalize", False)),
        )
    if loss_cfg.adv and distil and nets.discriminator is not None:
        # The plain module: the student's adversarial term must not run DDP's gradient hooks of D.
        terms["adv"] = adversarial_loss(unwrap_ddp(nets.discriminator), probs_s)
    # .get: configs of runs from before the baselines existed have neither switch.
    if loss_cfg.get("kd", False) and distil:
        terms["kd"] = kd_loss(out_s.logits, out_t.logits, float(loss_cfg.kd_temperature))
    if loss_cfg.get("feature", False) and distil:
        terms["feat"] = feature_loss(
            out_s.features, out_t.features, normalize=bool(loss_cfg.feature_norm)
        )
    distilled = w.crr * terms["crr"] + w.car * terms["car"] + w.adv * terms["adv"]
    # Only then: an old config has no weight.kd, and the RIRN total stays bit for bit as it was.
    if loss_cfg.get("kd", False) or loss_cfg.get("feature", False):
        distilled = distilled + w.kd * terms["kd"] + w.feature * terms["feat"]
    terms["total"] = terms["seg_t"] + w.seg * terms["seg_s"] + distill_scale * distilled
    return terms, probs_t, probs_s


def seg_loss(out, target: torch.Tensor, loss_cfg) -> torch.Tensor:
    """``loss.seg`` of one network's :class:`~rirn.models.UNetOutput`, over its deep-supervision
    outputs too when it has them (``model.deep_supervision``, training mode)."""
    return deep_supervision_loss((out.logits, *out.deep_logits), target, loss_cfg)


def uses_teacher(loss_cfg) -> bool:
    """Whether any student term reads the teacher (CRR, CAR, ADV, KD or feature KD is on)."""
    return bool(
        loss_cfg.crr
        or loss_cfg.car
        or loss_cfg.adv
        or loss_cfg.get("kd", False)
        or loss_cfg.get("feature", False)
    )


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


def distill_scale(epoch: int, rampup_epochs: int, start_epoch: int = 0) -> float:
    """Factor on the distillation weights at ``epoch`` (counted from 0): 0 before
    ``start_epoch``, then a linear ramp ``(epoch - start_epoch) / rampup_epochs`` capped at 1
    (so with a ramp the first distilling epoch still trains on the segmentation loss alone).
    ``start_epoch = rampup_epochs = 0`` is the paper (distillation at full weight throughout).

    Why: CRR's masks (Eq. 3) and CAR's and ADV's targets come from the co-trained teacher, which
    is random at the start; distilling it then teaches the student noise (docs/method.md,
    "Distillation schedule").
    """
    if epoch < start_epoch:
        return 0.0
    if rampup_epochs <= 0:
        return 1.0
    return min(1.0, (epoch - start_epoch) / rampup_epochs)


def _backward_step(loss, optimizer, scaler) -> None:
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
