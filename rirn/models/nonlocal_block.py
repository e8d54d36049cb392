"""Embedded-Gaussian non-local block (Wang et al., CVPR 2018), the source of RIRN's CAR relation.

For a feature map ``x (B, C, *S)`` with ``N = prod(S)`` voxels, three 1x1x1 convolutions embed
every voxel into ``C'`` channels: ``theta`` (query), ``phi`` (key) and ``g`` (value). The block
computes

    y_i = sum_j softmax_j(theta_i . phi_j) g_j        (no 1/sqrt(C') scaling, as in Wang et al.)
    z   = x + Norm(W y)                               (W: 1x1x1 conv C' -> C)

With ``scaled=True`` theta is multiplied by ``1/sqrt(C')`` (Transformer attention), an opt-in
ablation against the saturation of the relation documented in docs/method.md; the returned
``query`` carries the factor, so CAR's relation is the block's attention either way.

``Norm``'s scale starts at zero, so the block is the identity at initialisation and can be
inserted into a network without disturbing it. The attention matrix
``A = softmax_j(theta_i . phi_j)`` (``N x N``) is RIRN's class-agnostic relation (Eq. 6); the
block itself never materialises it (it calls ``scaled_dot_product_attention``, which uses the
flash / memory-efficient kernels on GPU) and instead returns the flattened ``theta`` and ``phi``
embeddings, from which the CAR loss builds ``A`` for teacher and student.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NonLocalBlock", "embedded_gaussian_attention"]


def embedded_gaussian_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """Embedded-Gaussian attention ``y_i = sum_j softmax_j(q_i . k_j) v_j`` without scaling.

    Args:
        query: ``(B, C', N)`` float, the theta embedding (channels first, voxels flattened).
        key: ``(B, C', N)`` float, the phi embedding.
        value: ``(B, C_v, N)`` float, the g embedding.

    Returns:
        ``(B, C_v, N)``, same dtype as the inputs. The ``N x N`` attention matrix is not kept:
        ``scaled_dot_product_attention`` (with ``scale=1.0``) picks a fused kernel when one is
        available for the device and dtype.
    """
    # SDPA wants (B, heads, N, C); one head.
    q = query.transpose(1, 2).unsqueeze(1)
    k = key.transpose(1, 2).unsqueeze(1)
    v = value.transpose(1, 2).unsqueeze(1)
    y = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return y.squeeze(1).transpose(1, 2)


class NonLocalBlock(nn.Module):
    """Residual embedded-Gaussian non-local block for 3D feature maps.

    Args:
        channels: ``C``, channels of the input and output.
        embed_channels: ``C'``, channels of the theta / phi / g embeddings.
        norm: factory ``channels -> nn.Module`` for the normalisation after the output conv. It
            must be affine (have a ``weight``); its weight is set to zero so that the block
            starts as the identity. Default ``nn.BatchNorm3d`` as in Wang et al.; ``UNet3D``
            passes its own norm (GroupNorm by default).
        scaled: multiply theta by ``1/sqrt(C')`` (default ``False``: unscaled, as the paper).

    Forward:
        ``x (B, C, *S)`` float -> ``(z, query, key)`` with ``z (B, C, *S)`` and
        ``query``/``key (B, C', N)``, ``N = prod(S)``: the theta/phi embeddings, flattened in
        C order over ``S`` (``tensor.flatten(2)``). They are the tensors the attention used, so
        exposing them costs nothing; gradients flow through them into theta and phi.
    """

    def __init__(
        self,
        channels: int,
        embed_channels: int,
        norm: Callable[[int], nn.Module] = nn.BatchNorm3d,
        scaled: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.embed_channels = embed_channels
        self.query_scale = embed_channels**-0.5 if scaled else 1.0
        self.theta = nn.Conv3d(channels, embed_channels, kernel_size=1)
        self.phi = nn.Conv3d(channels, embed_channels, kernel_size=1)
        self.g = nn.Conv3d(channels, embed_channels, kernel_size=1)
        # The norm right after makes a bias here redundant.
        self.out = nn.Conv3d(embed_channels, channels, kernel_size=1, bias=False)
        self.norm = norm(channels)
        if getattr(self.norm, "weight", None) is None:
            raise ValueError(
                "NonLocalBlock needs an affine norm (one with a weight) to start as identity"
            )
        nn.init.zeros_(self.norm.weight)
        if getattr(self.norm, "bias", None) is not None:
            nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        query = self.theta(x).flatten(2)
        if self.query_scale != 1.0:
            query = query * self.query_scale
        key = self.phi(x).flatten(2)
        value = self.g(x).flatten(2)
        y = embedded_gaussian_attention(query, key, value)
        y = y.reshape(x.shape[0], self.embed_channels, *x.shape[2:])
        return x + self.norm(self.out(y)), query, key
