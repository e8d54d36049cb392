"""Parameter and multiply-accumulate counts of the RIRN networks (paper, Table 5).

Conventions (those of thop, which the paper's "FLOPs" follow):

* conv MACs: for every ``nn.Conv1d/2d/3d``, ``output numel x in_channels / groups x kernel
  volume``; the bias, norms, activations, upsampling and additions are not counted.
* attention MACs, reported separately: the two matrix products of each non-local block,
  ``theta^T phi`` and ``A g``, ``2 x N^2 x C'`` per sample (softmax not counted). thop does not
  see them (they are not modules), so the paper's 272.75 G does not include them.

Counting runs a forward pass of a copy of the model on the ``meta`` device: only shapes are
computed, so the paper's 160x192x128 crop costs no time or memory.

Command line (Hydra, ``configs/stats.yaml``; writes no files)::

    python -m rirn.models.stats                       # student t1ce at 160x192x128
    python -m rirn.models.stats modality=flair+t1ce crop=[128,128,128] model.nonlocal_scale=null
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import hydra
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.modules.conv import _ConvNd

from rirn.config import CONFIG_DIR
from rirn.data.modalities import MODALITIES, parse_modalities, subset_name
from rirn.errors import ConfigError, cli_errors
from rirn.models import build_discriminator, build_unet
from rirn.models.nonlocal_block import NonLocalBlock

__all__ = ["count_macs", "count_parameters", "format_table", "main", "stats_table"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """Multiply-accumulates of one forward pass, counted on a ``meta``-device copy of ``model``.

    Args:
        model: any module whose forward takes one tensor (left untouched: a deep copy is moved
            to ``meta`` and put in eval mode).
        input_shape: full input shape ``(B, C, *S)``; the paper's figures are for ``B = 1``.

    Returns:
        ``{"conv": int, "attention": int}``: conv MACs (thop convention, see the module
        docstring) and the MACs of the non-local attention products, for the whole batch.
    """
    meta_model = copy.deepcopy(model).to(torch.device("meta")).eval()
    totals = {"conv": 0, "attention": 0}

    def conv_hook(module: _ConvNd, _inputs, output: torch.Tensor) -> None:
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        totals["conv"] += output.numel() * per_output

    def attention_hook(_module: NonLocalBlock, _inputs, output) -> None:
        _, query, _ = output
        batch, embed, voxels = query.shape
        # theta^T phi (N x C' by C' x N) and A g (N x N by N x C').
        totals["attention"] += 2 * batch * voxels * voxels * embed

    for module in meta_model.modules():
        if isinstance(module, _ConvNd):
            module.register_forward_hook(conv_hook)
        elif isinstance(module, NonLocalBlock):
            module.register_forward_hook(attention_hook)
    with torch.no_grad():
        meta_model(torch.empty(tuple(input_shape), device="meta"))
    return totals


def stats_table(model_cfg, modality: str | Sequence[str], crop: Sequence[int]) -> list[dict]:
    """Rows ``{"model", "inputs", "params", "conv_macs", "attention_macs"}`` for the teacher (4
    inputs), the student of ``modality`` and the discriminator (on the 3 output maps), at batch
    size 1 and spatial size ``crop``.

    Raises:
        ConfigError: bad ``modality``, ``crop`` (3 positive sizes divisible by the U-Net's size
            divisor) or model keys.
    """
    subset = parse_modalities(modality)
    teacher = build_unet(model_cfg, in_channels=len(MODALITIES))
    student = build_unet(model_cfg, in_channels=len(subset))
    discriminator = build_discriminator(model_cfg, in_channels=teacher.out_channels)
    crop = list(crop)
    divisor = teacher.size_divisor
    if (
        len(crop) != 3
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in crop)
        or any(s % divisor for s in crop)
    ):
        raise ConfigError(f"crop must be 3 positive sizes divisible by {divisor}; got {crop}")
    if min(crop) < 4:
        raise ConfigError(f"crop must be >= 4 per axis for the discriminator; got {crop}")
    rows = []
    for name, net, channels in (
        ("teacher (all)", teacher, len(MODALITIES)),
        (f"student ({subset_name(subset)})", student, len(subset)),
        ("discriminator", discriminator, teacher.out_channels),
    ):
        macs = count_macs(net, (1, channels, *crop))
        rows.append(
            {
                "model": name,
                "inputs": channels,
                "params": count_parameters(net),
                "conv_macs": macs["conv"],
                "attention_macs": macs["attention"],
            }
        )
    return rows


def format_table(rows: list[dict], crop: Sequence[int]) -> str:
    """Plain-text table of :func:`stats_table` rows (MACs in G = 1e9)."""
    size = "x".join(str(s) for s in crop)
    lines = [
        f"batch 1, crop {size}; conv MACs thop-style; attention = non-local matrix products",
        f"{'model':<28}{'inputs':>7}{'params':>13}{'conv GMACs':>13}{'attn GMACs':>13}",
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<28}{r['inputs']:>7}{r['params']:>13,}"
            f"{r['conv_macs'] / 1e9:>13.2f}{r['attention_macs'] / 1e9:>13.2f}"
        )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="stats")
@cli_errors
def main(cfg: DictConfig) -> None:
    """Print :func:`format_table` for ``cfg.model``, ``cfg.modality`` and ``cfg.crop``."""
    crop = list(cfg.crop)
    print(format_table(stats_table(cfg.model, cfg.modality, crop), crop))


if __name__ == "__main__":
    main()
