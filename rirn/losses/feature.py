"""Feature-based knowledge distillation (FitNets-style, Romero et al. 2015).

The second knowledge-transfer baseline (``loss.feature``): the student's penultimate features
(``UNetOutput.features``, the input of the 1x1x1 head, the same tensor CRR reads) regress the
teacher's, voxel by voxel, with a squared error. FitNets put a learned regressor between a thin
student and a wide teacher; here both networks are the same U-Net, so the widths match and the
features are compared directly (a width mismatch is an error, not silently projected away).
Where CRR transfers only the cosine relations between three region centres, this transfers the
whole feature map.

Conventions:

* ``feat_s``, ``feat_t``: ``(B, C, *S)`` features of student and teacher, any floating dtype;
  computed in at least float32 with autocast off.
* The teacher side is detached: the loss never sends a gradient to the teacher.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rirn.losses.dice import upcast

__all__ = ["FEATURE_NORM_EPS", "FeatureLoss", "feature_loss", "standardize_channels"]

#: Added to the per-channel variance before the square root: a channel that is constant over the
#: crop (a dead ReLU channel is all zeros) then standardises to 0 instead of 0/0.
FEATURE_NORM_EPS: float = 1e-5


def standardize_channels(feat: Tensor, eps: float = FEATURE_NORM_EPS) -> Tensor:
    """Each channel of each sample to zero mean and unit variance over its voxels.

    ``(f - mean_v f) / sqrt(var_v f + eps)`` with the population variance (divisor = number of
    voxels), per ``(b, c)``.

    Args:
        feat: ``(B, C, *S)``.
        eps: see :data:`FEATURE_NORM_EPS`.

    Returns:
        ``(B, C, N)`` with ``N`` = the number of voxels.
    """
    f = feat.flatten(2)
    var, mean = torch.var_mean(f, dim=-1, keepdim=True, correction=0)
    return (f - mean) * torch.rsqrt(var + eps)


def feature_loss(
    feat_s: Tensor, feat_t: Tensor, normalize: bool = False, eps: float = FEATURE_NORM_EPS
) -> Tensor:
    """Mean squared error between student and teacher features::

        loss = mean over (B, C, *S) of (g(f_s) - g(f_t))^2

    with ``g`` the identity, or with ``normalize=True`` :func:`standardize_channels` (each
    channel of each sample standardised over its voxels), which compares the *pattern* of each
    channel and not its scale: the teacher's feature magnitudes then do not set the loss's
    magnitude, and a student whose features differ from the teacher's by a positive scale and an
    offset per channel (which its own 1x1x1 head could absorb) costs nothing.

    Args:
        feat_s: student features ``(B, C, *S)``.
        feat_t: teacher features, same shape (detached here).
        normalize: standardise each channel per sample first.
        eps: variance floor of the standardisation.

    Returns:
        scalar tensor, float32 (float64 for float64 student features), >= 0.
    """
    if feat_s.shape != feat_t.shape:
        raise ValueError(
            f"feature_loss: student features {tuple(feat_s.shape)} and teacher features "
            f"{tuple(feat_t.shape)} differ (the two U-Nets need the same model.widths)"
        )
    with torch.autocast(device_type=feat_s.device.type, enabled=False):
        s = upcast(feat_s)
        t = feat_t.detach().to(s.dtype)
        if normalize:
            s, t = standardize_channels(s, eps), standardize_channels(t, eps)
        return (s - t).square().mean()


class FeatureLoss(nn.Module):
    """Module form of :func:`feature_loss` (holds ``normalize`` and ``eps``)."""

    def __init__(self, normalize: bool = False, eps: float = FEATURE_NORM_EPS) -> None:
        super().__init__()
        self.normalize = normalize
        self.eps = eps

    def forward(self, feat_s: Tensor, feat_t: Tensor) -> Tensor:
        return feature_loss(feat_s, feat_t, self.normalize, self.eps)
