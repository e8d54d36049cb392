"""The residual pre-activation 3D U-Net shared by RIRN's teacher and student (reference.md §2).

Layout (Myronenko 2018 / MONAI ``SegResNet(init_filters=16, blocks_down=(1, 2, 2, 4),
blocks_up=(1, 1, 1))``, the backbone of ACN that the paper says it shares):

* ``init_conv``: 3x3x3 conv ``in_channels -> widths[0]``, then spatial dropout (paper: 0.2);
* encoder stage ``s`` (scale ``1/2^s``): a stride-2 3x3x3 conv ``widths[s-1] -> widths[s]``
  (none at ``s = 0``) and ``blocks_down[s]`` residual blocks
  ``Norm -> ReLU -> conv3 -> Norm -> ReLU -> conv3, + identity``;
* optional embedded-Gaussian non-local block after the encoder stage at ``nonlocal_scale``
  (default 8, the 128-channel bottleneck): its theta/phi embeddings feed the CAR loss;
* decoder stage per scale, coarse to fine: 1x1x1 conv ``widths[s+1] -> widths[s]``, x2 trilinear
  upsampling, *additive* skip from encoder stage ``s``, residual blocks (``blocks_up`` lists
  them in this execution order, as MONAI does);
* head: ``Norm -> ReLU`` (giving the penultimate ``features``) then a 1x1x1 conv (with bias) to
  ``out_channels`` logits, nested regions in the order ``[WT, TC, ET]``;
* optional deep supervision (``deep_supervision = K``, not in the paper; nnU-Net's): the same
  kind of head on the outputs of the ``K`` decoder stages below full resolution, run only in
  training mode, so that inference and the distillation terms see the one full-resolution head.

Convolutions carry no bias except the head and the non-local embeddings (a norm follows all the
others). With the defaults and one input this is 4,700,931 parameters (exactly MONAI's
SegResNet) plus 33,216 for the non-local block = 4,734,147 (paper, Table 5: 4.73 M).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from rirn.models.nonlocal_block import NonLocalBlock

__all__ = ["DROPOUT_POSITIONS", "NORMS", "ResBlock", "UNet3D", "UNetOutput", "make_norm"]

NORMS: tuple[str, ...] = ("group", "instance", "batch")
DROPOUT_POSITIONS: tuple[str, ...] = ("after_init", "bottleneck", "none")


def make_norm(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """An affine 3D norm: ``"group"`` (``groups`` groups), ``"instance"`` or ``"batch"``.

    Instance norm is made affine (PyTorch's default is not) so that every kind has a learnable
    scale, which the non-local block needs to start as the identity.
    """
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {kind!r}")


def conv3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    """3x3x3 convolution, padding 1, no bias (a norm always follows)."""
    return nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class ResBlock(nn.Module):
    """Pre-activation residual block ``x + conv3(ReLU(Norm(conv3(ReLU(Norm(x))))))``.

    ``(B, C, *S) -> (B, C, *S)``. ``norm`` is a factory ``channels -> nn.Module``.
    """

    def __init__(self, channels: int, norm) -> None:
        super().__init__()
        self.norm1 = norm(channels)
        self.norm2 = norm(channels)
        self.act = nn.ReLU(inplace=True)
        self.conv1 = conv3(channels, channels)
        self.conv2 = conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(self.act(self.norm1(x)))
        y = self.conv2(self.act(self.norm2(y)))
        return x + y


class UpStage(nn.Module):
    """Decoder stage: 1x1x1 conv ``C_in -> C_out``, x2 trilinear upsampling, ``+ skip``, blocks.

    The 1x1x1 conv runs before the upsampling, at the coarse resolution (8x cheaper).
    Forward: ``x (B, C_in, *S)``, ``skip (B, C_out, *2S)`` -> ``(B, C_out, *2S)``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, norm) -> None:
        super().__init__()
        self.reduce = nn.Conv3d(in_channels, out_channels, kernel_size=1, bias=False)
        self.upsample = nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)
        self.blocks = nn.Sequential(*(ResBlock(out_channels, norm) for _ in range(num_blocks)))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.upsample(self.reduce(x)) + skip)


class UNetOutput(NamedTuple):
    """What :class:`UNet3D` returns (a NamedTuple: indexable, torch.compile- and DDP-friendly).

    Attributes:
        logits: ``(B, out_channels, *S)`` float, region logits in the nested order
            ``[WT, TC, ET]``; region probabilities are ``torch.sigmoid(logits)`` (independent
            sigmoids, not a softmax: the regions overlap).
        features: ``(B, widths[0], *S)`` float, the penultimate features = the input of the 1x1x1
            head conv, i.e. after the final ``Norm -> ReLU`` (so non-negative). CRR's class
            centres are computed from them.
        query: ``(B, C', N)`` float, theta embedding of the non-local block at its scale,
            ``N = prod(S) / nonlocal_scale**3`` (C order over the spatial axes); ``None`` when
            the block is disabled.
        key: ``(B, C', N)`` float, the phi embedding; ``None`` when the block is disabled.
        deep_logits: the deep-supervision logits, finest first: ``deep_logits[k]`` is
            ``(B, out_channels, *S / 2^(k+1))``; ``()`` in eval mode or with
            ``deep_supervision = 0``.
    """

    logits: torch.Tensor
    features: torch.Tensor
    query: torch.Tensor | None
    key: torch.Tensor | None
    deep_logits: tuple[torch.Tensor, ...] = ()


def _check_positive_ints(name: str, values: Sequence[int], minimum: int = 1) -> None:
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values):
        raise ValueError(f"{name} must be integers >= {minimum}; got {list(values)}")


class UNet3D(nn.Module):
    """Residual GroupNorm 3D U-Net with an optional non-local block (see the module docstring).

    Args:
        in_channels: input modalities (teacher 4, student 1-3), canonical order.
        out_channels: output regions, default 3 = ``[WT, TC, ET]``.
        widths: channels per scale ``1, 1/2, 1/4, ...``; ``depth = len(widths)``.
        blocks_down: residual blocks per encoder scale, ``len(widths)`` entries (>= 0).
        blocks_up: residual blocks per decoder scale in execution order, coarse to fine (as
            MONAI's SegResNet: ``blocks_up[0]`` at scale ``1/2^(depth-2)``, the last at full
            resolution), ``len(widths) - 1`` entries (>= 0).
        norm: ``"group"``, ``"instance"`` or ``"batch"``.
        norm_groups: groups of GroupNorm; must divide every width (ignored otherwise).
        dropout: rate of the spatial dropout (``nn.Dropout3d``, whole channels); 0 disables it.
        dropout_position: ``"after_init"`` (paper: after the initial conv), ``"bottleneck"``
            (after the coarsest encoder stage) or ``"none"``.
        nonlocal_scale: downsampling factor ``2^s`` of the encoder stage after which the
            non-local block sits (``1 <= 2^s <= 2^(depth-1)``), or ``None`` for no block.
        nonlocal_channels: ``C'`` of the non-local embeddings.
        nonlocal_scaled: ``1/sqrt(C')`` on the attention logits (default off, as the paper).
        head_prior: the region probability the untrained head outputs everywhere: its bias
            starts at ``log(p / (1 - p))`` (RetinaNet's prior initialisation, Lin et al. 2017,
            Sec. 4.1); ``None`` keeps PyTorch's default bias (the paper). See
            docs/method.md, "Training recipe", for why.
        deep_supervision: number ``K`` of decoder stages below full resolution (scales
            ``1/2 .. 1/2^K``, ``0 <= K <= depth - 2``) that get a head of their own in training
            mode (:attr:`UNetOutput.deep_logits`); their loss is
            :func:`rirn.losses.deep_supervision_loss`. 0 = none (the paper).
        zero_init_residual: start the last convolution of every residual block at zero, so
            each block starts as the identity (torchvision's ``zero_init_residual``; Goyal et al.
            2017, Sec. 5.1). ``False`` keeps PyTorch's default init (the paper).

    Forward:
        ``x (B, in_channels, *S)`` float, each of the three spatial sizes divisible by
        :attr:`size_divisor` ``= 2^(depth-1)`` (else ``ValueError``; pad or crop first) ->
        :class:`UNetOutput`. Dropout is active only in training mode.

    Raises:
        ValueError: an invalid argument; the message starts with the argument's name, which is
            also its key in ``configs/model/unet3d.yaml`` (``build_unet`` relies on that).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        norm: str = "group",
        norm_groups: int = 8,
        dropout: float = 0.2,
        dropout_position: str = "after_init",
        nonlocal_scale: int | None = 8,
        nonlocal_channels: int = 64,
        nonlocal_scaled: bool = False,
        head_prior: float | None = None,
        deep_supervision: int = 0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        widths, blocks_down, blocks_up = tuple(widths), tuple(blocks_down), tuple(blocks_up)
        depth = len(widths)
        _check_positive_ints("in_channels", [in_channels])
        _check_positive_ints("out_channels", [out_channels])
        if depth == 0:
            raise ValueError("widths must not be empty")
        _check_positive_ints("widths", widths)
        _check_positive_ints("blocks_down", blocks_down, minimum=0)
        _check_positive_ints("blocks_up", blocks_up, minimum=0)
        if len(blocks_down) != depth:
            raise ValueError(
                f"blocks_down needs len(widths) = {depth} entries; got {list(blocks_down)}"
            )
        if len(blocks_up) != depth - 1:
            raise ValueError(
                f"blocks_up needs len(widths) - 1 = {depth - 1} entries; got {list(blocks_up)}"
            )
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")
        if norm == "group":
            _check_positive_ints("norm_groups", [norm_groups])
            if any(w % norm_groups for w in widths):
                raise ValueError(
                    f"norm_groups={norm_groups} must divide every width; widths={list(widths)}"
                )
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not 0 <= dropout < 1
        ):
            raise ValueError(f"dropout must be a rate in [0, 1); got {dropout!r}")
        if dropout_position not in DROPOUT_POSITIONS:
            valid = ", ".join(DROPOUT_POSITIONS)
            raise ValueError(f"dropout_position must be one of {valid}; got {dropout_position!r}")
        scales = [2**s for s in range(depth)]
        if nonlocal_scale is not None and nonlocal_scale not in scales:
            raise ValueError(
                f"nonlocal_scale must be one of {scales} or null; got {nonlocal_scale!r}"
            )
        _check_positive_ints("nonlocal_channels", [nonlocal_channels])
        if not isinstance(nonlocal_scaled, bool):
            raise ValueError(f"nonlocal_scaled must be true or false; got {nonlocal_scaled!r}")

        if head_prior is not None and (
            isinstance(head_prior, bool)
            or not isinstance(head_prior, (int, float))
            or not 0 < head_prior < 1
        ):
            raise ValueError(
                f"head_prior must be a probability in (0, 1) or null; got {head_prior!r}"
            )
        if (
            isinstance(deep_supervision, bool)
            or not isinstance(deep_supervision, int)
            or not 0 <= deep_supervision <= max(depth - 2, 0)
        ):
            raise ValueError(
                f"deep_supervision must be an integer in [0, len(widths) - 2 = "
                f"{max(depth - 2, 0)}]; got {deep_supervision!r}"
            )
        if not isinstance(zero_init_residual, bool):
            raise ValueError(
                f"zero_init_residual must be true or false; got {zero_init_residual!r}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.widths = widths
        norm_fn = functools.partial(make_norm, norm, groups=norm_groups)

        def spatial_dropout(position: str) -> nn.Module:
            # Identity instead of a branch in forward keeps the graph static.
            if dropout_position == position and dropout > 0:
                return nn.Dropout3d(dropout)
            return nn.Identity()

        self.init_conv = conv3(in_channels, widths[0])
        self.init_dropout = spatial_dropout("after_init")
        self.encoder = nn.ModuleList(
            nn.Sequential(
                conv3(widths[s - 1], widths[s], stride=2) if s > 0 else nn.Identity(),
                *(ResBlock(widths[s], norm_fn) for _ in range(blocks_down[s])),
            )
            for s in range(depth)
        )
        # -1 = no block; an int (not None) keeps the comparison in forward trivially traceable.
        self.nonlocal_stage = -1 if nonlocal_scale is None else int(math.log2(nonlocal_scale))
        self.nonlocal_block = (
            None
            if nonlocal_scale is None
            else NonLocalBlock(
                widths[self.nonlocal_stage], nonlocal_channels, norm_fn, nonlocal_scaled
            )
        )
        self.bottleneck_dropout = spatial_dropout("bottleneck")
        # Execution order (as MONAI): decoder[i] takes scale 1/2^(depth-1-i) to 1/2^(depth-2-i).
        self.decoder = nn.ModuleList(
            UpStage(widths[s + 1], widths[s], blocks_up[i], norm_fn)
            for i, s in enumerate(range(depth - 2, -1, -1))
        )
        self.head_norm = norm_fn(widths[0])
        self.head_act = nn.ReLU(inplace=True)
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)
        # deep_heads[k] reads the decoder output at scale 1/2^(k+1) (widths[k+1] channels).
        # Built after every other module, so the other weights are the same with and without them.
        self.deep_heads = nn.ModuleList(
            nn.Sequential(
                norm_fn(widths[k + 1]),
                nn.ReLU(inplace=True),
                nn.Conv3d(widths[k + 1], out_channels, kernel_size=1),
            )
            for k in range(deep_supervision)
        )
        if head_prior is not None:
            # No random draw: every other weight is the same as with the default init.
            bias = math.log(head_prior / (1 - head_prior))
            for head in (self.head, *(h[-1] for h in self.deep_heads)):
                nn.init.constant_(head.bias, bias)
        if zero_init_residual:
            # After the random draws, so every other weight is the same as without it.
            for module in self.modules():
                if isinstance(module, ResBlock):
                    nn.init.zeros_(module.conv2.weight)

    @property
    def size_divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this (``2^(depth-1)``)."""
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor) -> UNetOutput:
        divisor = self.size_divisor
        if x.ndim != 5 or any(s % divisor for s in x.shape[2:]):
            raise ValueError(
                f"UNet3D expects (B, C, X, Y, Z) with X, Y, Z divisible by {divisor}; "
                f"got shape {tuple(x.shape)} (pad or crop the input)"
            )
        x = self.init_dropout(self.init_conv(x))
        skips: list[torch.Tensor] = []
        query = key = None
        for s, stage in enumerate(self.encoder):
            x = stage(x)
            if s == self.nonlocal_stage:
                x, query, key = self.nonlocal_block(x)
            skips.append(x)
        x = self.bottleneck_dropout(x)
        # Training mode only: the deep heads are part of the loss, not of the network's output.
        n_deep = len(self.deep_heads) if self.training else 0
        coarse: list[torch.Tensor] = []
        for i, (stage, skip) in enumerate(zip(self.decoder, reversed(skips[:-1]), strict=True)):
            x = stage(x, skip)
            scale = len(self.decoder) - 1 - i  # this stage's output is at 1/2^scale
            if 1 <= scale <= n_deep:
                coarse.append(self.deep_heads[scale - 1](x))
        features = self.head_act(self.head_norm(x))
        deep = tuple(reversed(coarse))  # finest first
        return UNetOutput(self.head(features), features, query, key, deep)
