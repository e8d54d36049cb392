"""Adversarial alignment of the output maps (ADV), Eq. 8 of Su et al. 2024.

A discriminator ``D`` (a small fully convolutional net, :class:`rirn.models.Discriminator`)
looks at region probability maps and outputs *logits* of "this map comes from the teacher
(full modalities)", one per output location. Eq. 8 as printed,
``log(1 - D(T)) + log(D(S))``, is the GAN value function written for a ``D`` that scores
"student"; this module plays the standard game with ``D`` scoring "teacher" (= real) and the
non-saturating student loss ``-log D(S)`` (Goodfellow et al. 2014), all with
binary-cross-entropy-with-logits, averaged over batch and output locations, in float32.

Gradient routing (who learns from what):

* :func:`discriminator_loss` trains ``D`` only: both probability maps are detached.
* :func:`adversarial_loss` trains the student only: ``D`` is evaluated with detached copies of
  its parameters (``torch.func.functional_call``), so ``D``'s ``.grad`` is untouched and the
  module's state is never modified. Pass the bare module, not a ``DistributedDataParallel``
  wrapper (whose reducer would wait for gradients that never come).
* The teacher never receives a gradient from either term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["adversarial_loss", "discriminator_loss"]


def _bce_to(logits: Tensor, real: bool) -> Tensor:
    """Mean BCE-with-logits of ``logits`` against the constant label ``real`` (1) or fake (0)."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = logits.float() if logits.dtype != torch.float64 else logits
        label = torch.ones_like(logits) if real else torch.zeros_like(logits)
        return F.binary_cross_entropy_with_logits(logits, label)


def discriminator_loss(disc: nn.Module, probs_t: Tensor, probs_s: Tensor) -> Tensor:
    """Discriminator side of Eq. 8: teacher maps are real, student maps are fake.

    ``L_D = -mean log sigmoid(D(T)) - mean log(1 - sigmoid(D(S)))`` (the sum of the two terms,
    as Eq. 8 sums them). Both inputs are detached: neither segmentation network learns from it.

    Args:
        disc: the discriminator, ``(B, 3, *S) -> logits (B, 1, *S')`` (any output shape).
        probs_t: teacher probabilities ``(B, 3, *S)``.
        probs_s: student probabilities ``(B, 3, *S)``.

    Returns:
        scalar float32 tensor (``2 log 2`` for an undecided ``D``).
    """
    return _bce_to(disc(probs_t.detach()), real=True) + _bce_to(disc(probs_s.detach()), real=False)


def adversarial_loss(disc: nn.Module, probs_s: Tensor) -> Tensor:
    """Student side of Eq. 8 (non-saturating): ``-mean log sigmoid(D(S))``.

    ``D``'s parameters enter as detached tensors, so only ``probs_s`` (and the student behind it)
    receives a gradient. Buffers are ``D``'s own: a ``D`` with batch-norm statistics would update
    them here too (the paper's two-layer ``D`` has none).

    Args:
        disc: the discriminator (bare module).
        probs_s: student probabilities ``(B, 3, *S)``.

    Returns:
        scalar float32 tensor (``log 2`` for an undecided ``D``).
    """
    frozen = {name: p.detach() for name, p in disc.named_parameters()}
    return _bce_to(functional_call(disc, frozen, (probs_s,)), real=True)
