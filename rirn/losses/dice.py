"""Soft Dice loss of the segmentation term (Eq. 1 of Su et al. 2024).

Conventions:

* ``probs`` are sigmoid probabilities, not logits, shape ``(B, 3, *S)`` with the region channels
  in the order of :data:`rirn.labels.REGIONS` (WT, TC, ET); the regions overlap (nested), so each
  channel is an independent binary problem and there is no softmax across channels.
* ``target`` has the same shape, values in ``{0, 1}`` (bool or any floating/integer dtype).
* The loss is computed in at least float32, with autocast disabled, whatever the input dtype:
  the sums run over millions of voxels and bf16 keeps 8 bits of mantissa.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DEFAULT_DICE_EPS", "DiceLoss", "dice_loss", "upcast"]

#: Additive smoothing (in voxels) of numerator and denominator. One voxel is negligible for any
#: real region (relative effect <= 1/|region|) but makes an empty ground-truth region behave:
#: the per-region loss is then ``S / (S + 1)`` for a predicted mass ``S = sum(probs)``, i.e. 0 for
#: an empty prediction and a bounded false-positive penalty with a usable gradient otherwise.
#: MONAI's ``1e-5`` would leave that term stuck at ~1 with a vanishing gradient.
DEFAULT_DICE_EPS: float = 1.0


def upcast(x: Tensor) -> Tensor:
    """Return ``x`` as a floating tensor of at least float32 (float64 is kept, for gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def dice_loss(probs: Tensor, target: Tensor, eps: float = DEFAULT_DICE_EPS) -> Tensor:
    """Soft Dice loss per region, averaged over regions and batch (Eq. 1).

    For sample ``b`` and region ``r`` with ``p = probs[b, r]``, ``g = target[b, r]``::

        loss[b, r] = 1 - (2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps)

    and the result is ``loss.mean()``. Eq. 1's ``L_SEG = L_full + L_incomplete`` is this function
    applied once to the teacher's and once to the student's probabilities.

    Args:
        probs: region probabilities ``(B, R, *S)``, any floating dtype.
        target: region masks ``(B, R, *S)`` in ``{0, 1}``, any dtype.
        eps: additive smoothing, see :data:`DEFAULT_DICE_EPS`. ``eps = 0`` gives NaN for a
            region that is empty in both ``probs`` and ``target``.

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
        intersection = (p * g).sum(-1)
        denominator = p.sum(-1) + g.sum(-1)
        return (1.0 - (2.0 * intersection + eps) / (denominator + eps)).mean()


class DiceLoss(nn.Module):
    """Module form of :func:`dice_loss` (holds ``eps``, for instantiation from a config)."""

    def __init__(self, eps: float = DEFAULT_DICE_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, probs: Tensor, target: Tensor) -> Tensor:
        return dice_loss(probs, target, eps=self.eps)
