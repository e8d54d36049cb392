"""Class-relative relation (CRR) distillation, Eq. 2-5 of Su et al. 2024 (and Table 7).

Each network summarises each tumour region (WT, TC, ET) by one *centre* vector of its
penultimate features (the input of the 1x1x1 head, full resolution); the CRR of a network is the
cosine similarity between the centres of different regions, and the student is trained to
reproduce the teacher's CRR with an L1 loss.

Conventions:

* ``feat_t``, ``feat_s``: ``(B, C, *S)`` penultimate features of teacher and student (same ``S``
  as the masks; ``C`` = 16 for the paper's U-Net), any floating dtype.
* ``prob_t``: teacher sigmoid probabilities ``(B, 3, *S)``; ``target``: region masks
  ``(B, 3, *S)`` in ``{0, 1}``, region order WT, TC, ET.
* Computation is in at least float32 with autocast disabled. Teacher tensors are detached.
* A region whose mask is empty in a sample has no centre; every pair that touches it is dropped.
  Nothing is ever NaN, neither values nor gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rirn.losses.dice import upcast

__all__ = [
    "AGGREGATIONS",
    "CRRLoss",
    "crr_loss",
    "region_centres",
    "region_masks",
    "region_relation",
]

#: Centre aggregations of Table 7; ``"mean"`` is the paper's (Eq. 2) and the default.
AGGREGATIONS: tuple[str, ...] = ("mean", "max", "min", "maxmin")

#: Lower bound on ``|a| * |b|`` in the cosine; only reached by the zero centres of empty regions
#: (whose pairs are dropped anyway) or by all-zero features, where it turns 0/0 into 0.
COSINE_EPS: float = 1e-8


def region_masks(
    prob_t: Tensor, target: Tensor, threshold: float = 0.5, filter: bool = True
) -> Tensor:
    """Masks of the voxels that define each region's centre (Eq. 3).

    ``M_r = GT_r AND (P_r > threshold)`` with ``filter=True`` (the paper's "MF", manual filtering:
    only voxels the teacher gets right), else ``M_r = GT_r``.

    Args:
        prob_t: teacher probabilities ``(B, R, *S)`` (read only when ``filter``).
        target: ground-truth region masks ``(B, R, *S)`` in ``{0, 1}``.
        threshold: the paper's lambda (0.5).
        filter: apply the teacher-confidence filter.

    Returns:
        bool tensor ``(B, R, *S)``.
    """
    mask = target > 0.5
    if filter:
        mask = mask & (prob_t.detach() > threshold)
    return mask


def check_aggregation(aggregation: str) -> None:
    """Raise ``ValueError`` unless ``aggregation`` is one of :data:`AGGREGATIONS`."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown CRR aggregation {aggregation!r}; valid: {list(AGGREGATIONS)}")


def _masked_extreme(feat: Tensor, mask: Tensor, valid: Tensor, largest: bool) -> Tensor:
    """Per-region channel-wise max (``largest``) or min of ``feat (B,C,N)`` over ``mask (B,R,N)``.

    The arg-extreme is found without autograd (a transient ``(B, R, C, N)`` tensor) and the
    values are gathered from ``feat``, so backward is one scatter into a ``(B, C, N)`` gradient
    instead of saving and re-expanding the ``(B, R, C, N)`` tensor (3 GB at full resolution).
    The gradient goes to one voxel per tie, a valid subgradient like ``amax``'s even split.
    Empty regions give 0 (not +-inf) so that later arithmetic and its gradient stay finite.
    """
    with torch.no_grad():
        fill = float("-inf") if largest else float("inf")
        x = torch.where(mask.unsqueeze(2), feat.unsqueeze(1), fill)
        index = x.argmax(-1) if largest else x.argmin(-1)
        del x
    extreme = feat.gather(-1, index.transpose(1, 2)).transpose(1, 2)
    return torch.where(valid.unsqueeze(-1), extreme, 0.0)


def region_centres(feat: Tensor, mask: Tensor, aggregation: str = "mean") -> tuple[Tensor, Tensor]:
    """Region centres: aggregation of the masked features per channel (Eq. 2; Table 7).

    ``"mean"`` is Eq. 2, ``f_r = sum(f * M_r) / sum(M_r)``, computed as one batched matrix product
    of ``(B, R, N)`` masks with ``(B, C, N)`` features (no ``(B, R, C, N)`` product is formed).
    ``"max"``, ``"min"`` and ``"maxmin" = (max + min) / 2`` are the variants of Table 7.

    Args:
        feat: features ``(B, C, *S)``.
        mask: bool masks ``(B, R, *S)`` (from :func:`region_masks`).
        aggregation: one of :data:`AGGREGATIONS`.

    Returns:
        ``(centres, valid)``: centres ``(B, R, C)`` (float32, or float64 for float64 ``feat``;
        zero for an empty region) and ``valid`` bool ``(B, R)``, True where the mask is non-empty.
    """
    check_aggregation(aggregation)
    if feat.shape[0] != mask.shape[0] or feat.shape[2:] != mask.shape[2:]:
        raise ValueError(
            f"region_centres: features {tuple(feat.shape)} and masks {tuple(mask.shape)} "
            "must share batch and spatial shape"
        )
    with torch.autocast(device_type=feat.device.type, enabled=False):
        f = upcast(feat).flatten(2)
        m = mask.flatten(2)
        count = m.sum(-1)
        valid = count > 0
        if aggregation == "mean":
            sums = torch.einsum("bcn,brn->brc", f, m.to(f.dtype))
            return sums / count.clamp_min(1).unsqueeze(-1).to(f.dtype), valid
        parts = []
        if aggregation in ("max", "maxmin"):
            parts.append(_masked_extreme(f, m, valid, largest=True))
        if aggregation in ("min", "maxmin"):
            parts.append(_masked_extreme(f, m, valid, largest=False))
        return sum(parts) / len(parts), valid


def region_relation(centres: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """Class-relative relation: cosine similarity between region centres (Eq. 4).

    ``R[b, i, j] = <c_i, c_j> / max(|c_i| |c_j|, eps)``. Written with squared norms and a clamp
    (not ``F.cosine_similarity``) so that a zero centre has a finite gradient.

    Args:
        centres: ``(B, R, C)``.
        eps: lower bound of the norm product.

    Returns:
        ``(B, R, R)``; the diagonal is 1 for a non-zero centre (Eq. 4 only uses ``i != j``).
    """
    dots = centres @ centres.transpose(-1, -2)
    sq = centres.square().sum(-1)
    return dots * (sq.unsqueeze(-1) * sq.unsqueeze(-2)).clamp_min(eps * eps).rsqrt()


def crr_loss(
    feat_t: Tensor,
    feat_s: Tensor,
    prob_t: Tensor,
    target: Tensor,
    threshold: float = 0.5,
    aggregation: str = "mean",
    filter: bool = True,
) -> Tensor:
    """CRR distillation loss (Eq. 5), with the centres of Eq. 2-3 and the relation of Eq. 4.

    Per sample, ``sum over ordered pairs i != j of |R_T[i, j] - R_S[i, j]|`` (6 pairs for 3
    regions, i.e. twice the sum over unordered pairs), where a pair is dropped if region ``i`` or
    ``j`` has an empty mask in that sample. The same mask (Eq. 3, from the teacher's probabilities)
    defines the teacher's and the student's centres. The result is the mean over the batch of the
    per-sample sums; a sample without any valid pair contributes 0 (and still counts in the mean).

    Args:
        feat_t: teacher penultimate features ``(B, C, *S)``; detached here.
        feat_s: student penultimate features ``(B, C, *S)``.
        prob_t: teacher probabilities ``(B, R, *S)``; detached here.
        target: region masks ``(B, R, *S)`` in ``{0, 1}``.
        threshold: lambda of Eq. 3.
        aggregation: centre aggregation, one of :data:`AGGREGATIONS`.
        filter: use the teacher-confidence filter of Eq. 3 (Table 4's "MF").

    Returns:
        scalar tensor (float32, float64 for float64 features), in ``[0, 2 R (R - 1)]``.
    """
    if feat_t.shape != feat_s.shape or prob_t.shape != target.shape:
        raise ValueError(
            f"crr_loss: feat_t {tuple(feat_t.shape)} must equal feat_s {tuple(feat_s.shape)} and "
            f"prob_t {tuple(prob_t.shape)} must equal target {tuple(target.shape)}"
        )
    mask = region_masks(prob_t, target, threshold=threshold, filter=filter)
    centres_t, valid = region_centres(feat_t.detach(), mask, aggregation)
    centres_s, _ = region_centres(feat_s, mask, aggregation)
    with torch.autocast(device_type=feat_s.device.type, enabled=False):
        gap = (region_relation(centres_t) - region_relation(centres_s)).abs()
        n = valid.shape[1]
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=valid.device)
        pair = valid.unsqueeze(-1) & valid.unsqueeze(-2) & off_diagonal
        return torch.where(pair, gap, 0.0).sum((1, 2)).mean()


class CRRLoss(nn.Module):
    """Module form of :func:`crr_loss` holding ``threshold``, ``aggregation`` and ``filter``."""

    def __init__(
        self, threshold: float = 0.5, aggregation: str = "mean", filter: bool = True
    ) -> None:
        super().__init__()
        check_aggregation(aggregation)
        self.threshold = threshold
        self.aggregation = aggregation
        self.filter = filter

    def forward(self, feat_t: Tensor, feat_s: Tensor, prob_t: Tensor, target: Tensor) -> Tensor:
        return crr_loss(
            feat_t, feat_s, prob_t, target, self.threshold, self.aggregation, self.filter
        )
