"""Response-based knowledge distillation (Hinton et al. 2015) for sigmoid region outputs.

The knowledge-transfer baseline that RIRN's relation terms have to beat (``loss.kd``): the
student matches the teacher's *softened* output probabilities, voxel by voxel and region by
region. The outputs here are three independent sigmoids (WT, TC, ET overlap), not a softmax, so
each (voxel, region) is a Bernoulli distribution and Hinton's softmax cross-entropy becomes a
binary one.

Conventions:

* ``logits_s``, ``logits_t``: pre-sigmoid outputs ``(B, R, *S)`` of student and teacher (``R``
  = 3 regions here), any floating dtype; computed in at least float32 with autocast off.
* The teacher side is detached: the loss never sends a gradient to the teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rirn.losses.dice import upcast

__all__ = ["DEFAULT_KD_TEMPERATURE", "KDLoss", "kd_loss"]

#: ``loss.kd_temperature``. 2 is at the low end of Hinton's range: a sigmoid has one logit per
#: voxel and region, and a large T flattens every prediction towards 1/2 (at T = 4 a confident
#: logit of 8 becomes p = 0.88), so little of the teacher's confidence would be left to transfer.
DEFAULT_KD_TEMPERATURE: float = 2.0


def kd_loss(
    logits_s: Tensor, logits_t: Tensor, temperature: float = DEFAULT_KD_TEMPERATURE
) -> Tensor:
    """Logit distillation: ``T^2`` times the mean binary KL divergence of the tempered outputs.

    With ``a = z_t / T``, ``b = z_s / T``, ``q = sigmoid(a)`` (teacher) and ``p = sigmoid(b)``
    (student), per voxel and region::

        BCE(q, p) = -[q log p + (1 - q) log(1 - p)]
        H(q)      = BCE(q, q)                          (the teacher's entropy)
        loss      = T^2 * mean over (B, R, *S) of [BCE(q, p) - H(q)]
                  = T^2 * mean KL(Bernoulli(q) || Bernoulli(p))

    The teacher's entropy **is subtracted**: the value is >= 0 and exactly 0 when the student's
    logits equal the teacher's, so a logged ``kd`` reads as "how far from the teacher". Plain
    Hinton-style BCE differs from it by ``T^2 mean H(q)``, a constant of the teacher, so the
    gradient is the same: ``d loss / d z_s = T (p - q) / numel``. The ``T^2`` factor keeps that
    gradient's scale independent of ``T`` for large ``T`` (``p - q ~ (z_s - z_t) / 4T``), as in
    Hinton et al. Both cross-entropies are evaluated on the logits
    (``binary_cross_entropy_with_logits``), so a saturated teacher (``q`` = 0 or 1, e.g. an
    empty region) gives finite values and gradients.

    Args:
        logits_s: student logits ``(B, R, *S)``.
        logits_t: teacher logits, same shape (detached here).
        temperature: ``T > 0``; 1 is the untempered KL of the two outputs.

    Returns:
        scalar tensor, float32 (float64 for float64 student logits), >= 0 up to rounding.
    """
    if logits_s.shape != logits_t.shape:
        raise ValueError(
            f"kd_loss: student logits {tuple(logits_s.shape)} and teacher logits "
            f"{tuple(logits_t.shape)} differ"
        )
    if not temperature > 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=logits_s.device.type, enabled=False):
        b = upcast(logits_s) / temperature
        a = logits_t.detach().to(b.dtype) / temperature
        q = torch.sigmoid(a)
        cross = F.binary_cross_entropy_with_logits(b, q)
        entropy = F.binary_cross_entropy_with_logits(a, q)
        return temperature**2 * (cross - entropy)


class KDLoss(nn.Module):
    """Module form of :func:`kd_loss` (holds the temperature)."""

    def __init__(self, temperature: float = DEFAULT_KD_TEMPERATURE) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, logits_s: Tensor, logits_t: Tensor) -> Tensor:
        return kd_loss(logits_s, logits_t, self.temperature)
