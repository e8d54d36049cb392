"""The two-layer fully convolutional discriminator of RIRN's adversarial term (ADV, Eq. 8).

The paper says only "a two-layer fully-convolutional network" on the output maps. Choice made
here: a PatchGAN-style 3D net

    conv 4x4x4 stride 2 (in -> channels) -> LeakyReLU(0.2) -> conv 4x4x4 stride 2 (channels -> 1)

on the region *probability* maps (``sigmoid(logits)``, teacher = real, student = fake). It has
no normalisation layer: with batch size 1 batch norm is degenerate, and a norm between two
layers only would rescale the single hidden layer. Each output voxel is a real/fake logit for
a ``10^3``-voxel receptive field, so the adversarial signal is about local structure of the
maps; use it with ``binary_cross_entropy_with_logits`` (averaged over the patch logits).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Discriminator"]


class Discriminator(nn.Module):
    """Two-layer fully convolutional 3D discriminator.

    Args:
        in_channels: channels of the maps it judges (3 region probabilities ``[WT, TC, ET]``).
        channels: width of the hidden layer.
        negative_slope: slope of the LeakyReLU.

    Forward:
        ``x (B, in_channels, X, Y, Z)`` float (probabilities in [0, 1]), every spatial size
        >= 4 -> patch logits ``(B, 1, X', Y', Z')`` with ``X' = (X // 2) // 2`` etc.
        Positive = "real" (from the full-modality teacher).
    """

    def __init__(
        self, in_channels: int = 3, channels: int = 64, negative_slope: float = 0.2
    ) -> None:
        super().__init__()
        if in_channels < 1 or channels < 1:
            raise ValueError(
                f"channels must be >= 1; got in_channels={in_channels}, channels={channels}"
            )
        self.conv1 = nn.Conv3d(in_channels, channels, kernel_size=4, stride=2, padding=1)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        self.conv2 = nn.Conv3d(channels, 1, kernel_size=4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))
