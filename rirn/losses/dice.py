"""Segmentation losses: soft Dice (Eq. 1 of Su et al. 2024) and Dice + binary cross-entropy.

``loss.seg`` picks one for both networks (:func:`segmentation_loss`): ``dice`` is the paper's
Eq. 1; ``dice_bce`` (rirn's default, docs/method.md) adds a per-region BCE on the logits, as
nnU-Net's region-based training does (``DC_and_BCE_loss``). Sigmoid soft Dice alone has a poor
local minimum on a small region (predicting it everywhere beats predicting nothing, and the
gradient that would remove the false positives is weak); the BCE term supplies that gradient.

Conventions:

* ``probs`` are sigmoid probabilities, not logits, shape ``(B, 3, *S)`` with the region channels
  in the order of :data:`rirn.labels.REGIONS` (WT, TC, ET); the regions overlap (nested), so each
  channel is an independent binary problem and there is no softmax across channels.
* ``target`` has the same shape, values in ``{0, 1}`` (bool or any floating/integer dtype).
* The loss is computed in at least float32, with autocast disabled, whatever the input dtype:
  the sums run over millions of voxels and bf16 keeps 8 bits of mantissa.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_DICE_EPS",
    "SEG_LOSSES",
    "DiceLoss",
    "bce_loss",
    "dice_bce_loss",
    "deep_supervision_loss",
    "deep_supervision_weights",
    "dice_loss",
    "segmentation_loss",
    "upcast",
]

#: Values of ``loss.seg``.
SEG_LOSSES: tuple[str, ...] = ("dice", "dice_bce")

#: Additive smoothing (in voxels) of numerator and denominator. One voxel is negligible for any
#: real region (relative effect <= 1/|region|) but makes an empty ground-truth region behave:
#: the per-region loss is then ``S / (S + 1)`` for a predicted mass ``S = sum(probs)``, i.e. 0 for
#: an empty prediction and a bounded false-positive penalty with a usable gradient otherwise.
#: MONAI's ``1e-5`` would leave that term stuck at ~1 with a vanishing gradient.
DEFAULT_DICE_EPS: float = 1.0


def upcast(x: Tensor) -> Tensor:
    """Return ``x`` as a floating tensor of at least float32 (float64 is kept, for gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def dice_loss(
    probs: Tensor, target: Tensor, eps: float = DEFAULT_DICE_EPS, batch: bool = False
) -> Tensor:
    """Soft Dice loss per region, averaged over regions and batch (Eq. 1).

    For sample ``b`` and region ``r`` with ``p = probs[b, r]``, ``g = target[b, r]``::

        loss[b, r] = 1 - (2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps)

    and the result is ``loss.mean()``. Eq. 1's ``L_SEG = L_full + L_incomplete`` is this function
    applied once to the teacher's and once to the student's probabilities.

    With ``batch=True`` (nnU-Net's ``batch_dice``) the sums also run over the batch before the
    ratio, ``loss[r] = 1 - (2 sum_b sum(p g) + eps) / (sum_b (sum(p) + sum(g)) + eps)``: a crop
    without some region then adds only its false positives to that region's denominator instead
    of counting as a whole sample of its own.

    Args:
        probs: region probabilities ``(B, R, *S)``, any floating dtype.
        target: region masks ``(B, R, *S)`` in ``{0, 1}``, any dtype.
        eps: additive smoothing, see :data:`DEFAULT_DICE_EPS`. ``eps = 0`` gives NaN for a
            region that is empty in both ``probs`` and ``target``.
        batch: batch Dice (sums over the batch too).

    Returns:
        scalar tensor, float32 (float64 if ``probs`` is float64), in ``[0, 1]``.
    """
    if probs.shape != target.shape or probs.dim() < 3:
        raise ValueError(
            f"dice_loss: probs {tuple(probs.shape)} and target {tuple(target.shape)} "
            "must both be (B, R, *S)"
        )
    with torch.autocast(device_type=probs.device.type, enabled=False):
        p = upcast(probs).flatten(2)
        g = target.flatten(2).to(p.dtype)
        if batch:
            p, g = p.transpose(0, 1).flatten(1), g.transpose(0, 1).flatten(1)
        intersection = (p * g).sum(-1)
        denominator = p.sum(-1) + g.sum(-1)
        return (1.0 - (2.0 * intersection + eps) / (denominator + eps)).mean()


def bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of each region's sigmoid, on the logits, mean over every voxel,
    region and sample: ``mean(-g log sigmoid(z) - (1 - g) log(1 - sigmoid(z)))``.

    Args:
        logits: ``(B, R, *S)`` pre-sigmoid outputs, any floating dtype (computed in >= fp32).
        target: ``(B, R, *S)`` in ``{0, 1}``, any dtype.

    Returns:
        scalar tensor, float32 (float64 for float64 logits), >= 0.
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"bce_loss: logits {tuple(logits.shape)} and target {tuple(target.shape)} differ"
        )
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = upcast(logits)
        return F.binary_cross_entropy_with_logits(z, target.to(z.dtype))


def dice_bce_loss(
    logits: Tensor,
    target: Tensor,
    dice_weight: float = 1.0,
    bce_weight: float = 1.0,
    batch_dice: bool = False,
    eps: float = DEFAULT_DICE_EPS,
) -> Tensor:
    """``dice_weight * dice_loss(sigmoid(logits)) + bce_weight * bce_loss(logits)``.

    The compound loss of nnU-Net's region-based training (``DC_and_BCE_loss``, weights 1 and 1),
    and MONAI's ``DiceCELoss(sigmoid=True)`` up to its smoothing constants.

    Args:
        logits: ``(B, R, *S)`` pre-sigmoid outputs.
        target: ``(B, R, *S)`` in ``{0, 1}``.
        dice_weight, bce_weight: weights of the two parts.
        batch_dice: Dice over the batch (see :func:`dice_loss`).
        eps: Dice smoothing.

    Returns:
        scalar tensor, float32 (float64 for float64 logits).
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = upcast(logits)
        dice = dice_loss(torch.sigmoid(z), target, eps=eps, batch=batch_dice)
        return dice_weight * dice + bce_weight * bce_loss(z, target)


def segmentation_loss(logits: Tensor, target: Tensor, loss_cfg) -> Tensor:
    """The segmentation term of either network, chosen by ``loss_cfg.seg`` (:data:`SEG_LOSSES`).

    ``dice``: :func:`dice_loss` of the sigmoid (Eq. 1, paper); ``dice_bce``:
    :func:`dice_bce_loss` with ``loss_cfg.seg_weight.{dice,bce}``. ``loss_cfg.batch_dice``
    and ``loss_cfg.dice_eps`` (the smoothing, :data:`DEFAULT_DICE_EPS` by default) apply to
    both. Missing keys take the paper's values (``dice``, per-sample Dice).

    Args:
        logits: ``(B, 3, *S)`` pre-sigmoid outputs.
        target: ``(B, 3, *S)`` WT/TC/ET masks.
        loss_cfg: the ``loss`` config group (any mapping with ``.get``).
    """
    kind = str(loss_cfg.get("seg", "dice"))
    batch = bool(loss_cfg.get("batch_dice", False))
    eps = float(loss_cfg.get("dice_eps", DEFAULT_DICE_EPS))
    if kind == "dice":
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return dice_loss(torch.sigmoid(upcast(logits)), target, eps=eps, batch=batch)
    if kind == "dice_bce":
        weights = loss_cfg.get("seg_weight") or {}
        return dice_bce_loss(
            logits,
            target,
            dice_weight=float(weights.get("dice", 1.0)),
            bce_weight=float(weights.get("bce", 1.0)),
            batch_dice=batch,
            eps=eps,
        )
    raise ValueError(f"loss.seg={kind!r} is not one of {', '.join(SEG_LOSSES)}")


def deep_supervision_weights(levels: int) -> list[float]:
    """nnU-Net's deep-supervision weights for ``levels`` outputs (full resolution first):
    ``2^-k`` for output ``k``, normalised to sum 1, so that the segmentation loss keeps the scale
    it has without deep supervision (the distillation weights are relative to it).
    E.g. ``levels = 3 -> [4/7, 2/7, 1/7]``."""
    raw = [0.5**k for k in range(levels)]
    return [w / sum(raw) for w in raw]


def deep_supervision_loss(outputs: Sequence[Tensor], target: Tensor, loss_cfg) -> Tensor:
    """The segmentation loss over a deeply supervised network's outputs (not in the paper).

    ``sum_k w_k * segmentation_loss(outputs[k], target_k)`` with ``w`` from
    :func:`deep_supervision_weights` and ``target_k`` the target resized to output ``k`` by
    nearest-exact interpolation (as MONAI's ``DeepSupervisionLoss``; for the halvings of a U-Net
    that is every second voxel, starting at the second). One output = :func:`segmentation_loss`.

    Args:
        outputs: logits, full resolution first: ``(B, 3, *S)``, then ``(B, 3, *S / 2^k)``
            (``(out.logits, *out.deep_logits)`` of a :class:`rirn.models.UNet3D`).
        target: ``(B, 3, *S)`` WT/TC/ET masks in ``{0, 1}``.
        loss_cfg: the ``loss`` config group, as for :func:`segmentation_loss`.
    """
    if not outputs:
        raise ValueError("deep_supervision_loss needs at least one output")
    if len(outputs) == 1:
        return segmentation_loss(outputs[0], target, loss_cfg)
    total = None
    for weight, logits in zip(deep_supervision_weights(len(outputs)), outputs, strict=True):
        level_target = target
        if logits.shape[2:] != target.shape[2:]:
            level_target = F.interpolate(
                target.float(), size=logits.shape[2:], mode="nearest-exact"
            )
        term = weight * segmentation_loss(logits, level_target, loss_cfg)
        total = term if total is None else total + term
    return total


class DiceLoss(nn.Module):
    """Module form of :func:`dice_loss` (holds ``eps``, for instantiation from a config)."""

    def __init__(self, eps: float = DEFAULT_DICE_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, probs: Tensor, target: Tensor) -> Tensor:
        return dice_loss(probs, target, eps=self.eps)
