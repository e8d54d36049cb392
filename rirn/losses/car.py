"""Class-agnostic relation (CAR) distillation, Eq. 6-7 of Su et al. 2024.

The CAR of a network is the attention map of its non-local block (Wang et al. 2018, embedded
Gaussian form) at the intermediate scale: for every voxel ``i`` a softmax over all voxels ``j``
of ``theta(f_i)^T phi(f_j)``. The student mimics the teacher's map with a squared error. rirn's
default reads the relation from the same embeddings as ``softmax_j(cos(theta_i, phi_j) / T)``
(:func:`car_loss`'s ``normalize``, ``temperature``; the paper's form is one option away).

Conventions:

* ``q = theta(f)``, ``k = phi(f)``: ``(B, C', N)``, flattened over the spatial axes in the same
  order; ``N`` = number of voxels of the intermediate map ``f`` (20*24*16 = 7680 for a
  160x192x128 crop at 1/8 scale). ``k`` may have ``M != N`` columns (a sub-sampled phi); then the
  relation is ``(N, M)``.
* Everything is computed in at least float32 with autocast disabled: each relation row spreads
  1 over thousands of entries, and bf16 (8-bit mantissa) scores or softmax lose the small
  differences between teacher and student that this loss measures.
* The loss never materialises an ``(N, M)`` matrix: rows are processed in chunks and each chunk
  is recomputed in backward (a hand-written autograd function), so the extra memory of
  forward+backward is ``O(B * chunk_size * M)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from rirn.losses.dice import upcast

__all__ = [
    "DEFAULT_CAR_CHUNK",
    "DEFAULT_CAR_RELATION",
    "PAPER_CAR_RELATION",
    "CARLoss",
    "car_loss",
    "relation",
]

#: Rows per chunk. At N = M = 7680 one fp32 chunk tensor is B * 31 MB and about four of them are
#: alive at once (measured on an H100, B = 1: 124 MB extra for forward+backward, 6.5 ms), against
#: 236 MB for one N x N matrix and 1.1 GB for the naive formula. Smaller chunks save memory
#: linearly but cost launch overhead (512: 66 MB, 14 ms; 256: 34 MB, 21 ms).
DEFAULT_CAR_CHUNK: int = 1024


#: ``(normalize, temperature)`` of Eq. 6 as printed: dot-product scores, ``T = 1``, i.e. the
#: block's own attention. Runs whose config predates the options read as this.
PAPER_CAR_RELATION: tuple[bool, float] = (False, 1.0)
#: rirn's default ``(loss.car_normalize, loss.car_temperature)`` (configs/loss/rirn.yaml): cosine
#: scores at T = 0.05. The paper's relation saturates (one-hot rows) and then, through Adam, moves
#: the student's theta/phi on noise (docs/method.md, "Which term hurts").
DEFAULT_CAR_RELATION: tuple[bool, float] = (True, 0.05)


def _unit(x: Tensor) -> Tensor:
    """``x / max(|x|, 1e-6)`` over the channel axis: a (practically unreachable) zero embedding
    stays zero with a bounded gradient instead of F.normalize's ``1/1e-12``."""
    return nn.functional.normalize(x, dim=1, eps=1e-6)


def _check_embeddings(q: Tensor, k: Tensor) -> None:
    if q.dim() != 3 or k.dim() != 3 or q.shape[:2] != k.shape[:2]:
        raise ValueError(
            f"relation: q {tuple(q.shape)} and k {tuple(k.shape)} must be (B, C', N), (B, C', M)"
        )


def relation(q: Tensor, k: Tensor) -> Tensor:
    """Class-agnostic relation matrix (Eq. 6): ``softmax_j(q_i^T k_j)``.

    Eq. 6 prints ``softmax(e^{theta^T phi})``; the inner exponential is read as a typo for the
    embedded-Gaussian non-local block of Wang et al. (2018), ``exp(theta^T phi) / sum_j exp(...)``,
    which *is* the softmax of the dot products. No ``1/sqrt(C')`` scaling here (the paper has
    none); with ``model.nonlocal_scaled=true`` the block's query already carries it.

    Args:
        q: query embeddings ``(B, C', N)`` (theta).
        k: key embeddings ``(B, C', M)`` (phi).

    Returns:
        ``(B, N, M)``, float32 (float64 for float64 inputs), rows summing to 1.
    """
    _check_embeddings(q, k)
    with torch.autocast(device_type=q.device.type, enabled=False):
        return torch.softmax(upcast(q).transpose(1, 2) @ upcast(k), dim=-1)


def _row_chunks(n: int, chunk_size: int) -> list[slice]:
    return [slice(start, start + chunk_size) for start in range(0, n, chunk_size)]


class _ChunkedRelationError(torch.autograd.Function):
    """``sum_{b,i,j} (relation(q_t, k_t) - relation(q_s, k_s))[b, i, j] ** 2``, chunked over ``i``.

    Forward keeps only the inputs; backward recomputes each chunk of both relations and applies
    the softmax gradient by hand (``dS = A * (G - sum_j G A)`` with ``G = dL/dA_S``), so no
    ``(N, M)`` tensor ever exists. A hand-written backward instead of activation checkpointing:
    per chunk it launches fewer kernels and none of the autograd bookkeeping; on an H100 at
    N = 7680 forward+backward ran 2.5-3x faster than the checkpointed version with ~20% less
    memory.
    Teacher inputs must come in detached; inputs must be float32/float64.
    """

    @staticmethod
    def forward(ctx, q_t: Tensor, k_t: Tensor, q_s: Tensor, k_s: Tensor, chunk_size: int):
        total = q_s.new_zeros(())
        for rows in _row_chunks(q_s.shape[-1], chunk_size):
            diff = relation(q_t[..., rows], k_t).sub_(relation(q_s[..., rows], k_s))
            total += diff.square_().sum()
        ctx.save_for_backward(q_t, k_t, q_s, k_s)
        ctx.chunk_size = chunk_size
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        q_t, k_t, q_s, k_s = ctx.saved_tensors
        want_q, want_k = ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        grad_q = torch.empty_like(q_s) if want_q else None
        grad_k = torch.zeros_like(k_s) if want_k else None
        # backward may run inside the caller's autocast region: keep the products in fp32 here too.
        with torch.autocast(device_type=q_s.device.type, enabled=False):
            for rows in _row_chunks(q_s.shape[-1], ctx.chunk_size):
                a_s = relation(q_s[..., rows], k_s)
                g_a = (a_s - relation(q_t[..., rows], k_t)).mul_(2 * grad)
                g_scores = g_a.sub_((g_a * a_s).sum(-1, keepdim=True)).mul_(a_s)
                if want_q:
                    grad_q[..., rows] = k_s @ g_scores.transpose(1, 2)
                if want_k:
                    grad_k += q_s[..., rows] @ g_scores
        return None, None, grad_q, grad_k, None


def car_loss(
    q_t: Tensor,
    k_t: Tensor,
    q_s: Tensor,
    k_s: Tensor,
    channels: int,
    chunk_size: int = DEFAULT_CAR_CHUNK,
    temperature: float = 1.0,
    normalize: bool = False,
) -> Tensor:
    """CAR distillation loss (Eq. 7).

    ``L = mean_b [ sum_{i,j} (A_T[b,i,j] - A_S[b,i,j])**2 / (channels * N) ]`` with
    ``A = relation(q / temperature, k)``: Eq. 7's ``1/(CHWD) ||CAR(f^t) - CAR(f^s)||^2`` per
    sample, where ``C = channels`` is the channel count of the feature map ``f`` the embeddings
    come from (128 at the U-Net bottleneck, not ``C'``) and ``HWD = N``.

    ``temperature = 1, normalize = False`` is the paper: the relation is exactly the block's
    attention. ``T`` divides the scores of *both* relations inside the loss only,
    ``softmax_j(s_ij / T)``, as KD tempers its logits (Hinton et al. 2015); the networks' own
    attention is unchanged. ``normalize=True`` L2-normalises every embedding over ``C'`` first,
    so the scores ``s_ij`` are cosines in ``[-1, 1]`` and the softness is set by ``T`` alone
    (``T < 1`` sharpens them; rirn's default is :data:`DEFAULT_CAR_RELATION`), whatever scale the
    features grow to in training. Why: the paper's unscaled block saturates to one-hot rows,
    where Eq. 7 sits at its bound ``2/C`` and its gradient is noise-sized, yet Adam turns that
    noise into full-size steps of the student's ``theta`` (docs/method.md, "Which term hurts").

    Equal to that formula evaluated naively, but computed over row chunks of ``chunk_size``
    queries, each recomputed in backward, so memory stays ``O(B * chunk_size * M)``. Only the
    first derivative is implemented (no double backward).

    Args:
        q_t, k_t: teacher embeddings ``(B, C', N)``, ``(B, C', M)``; detached here.
        q_s, k_s: student embeddings, same shapes.
        channels: ``C`` of Eq. 7.
        chunk_size: query rows per chunk (any positive int; the last chunk may be shorter).
        temperature: ``T > 0`` dividing the scores of both relations (1: the paper).
        normalize: cosine scores (unit-length ``q`` and ``k``) instead of dot products.

    Returns:
        scalar tensor (float32, float64 for float64 inputs), in ``[0, 2 / channels]``.
    """
    if q_t.shape != q_s.shape or k_t.shape != k_s.shape:
        raise ValueError(
            f"car_loss: teacher q {tuple(q_t.shape)}, k {tuple(k_t.shape)} and student "
            f"q {tuple(q_s.shape)}, k {tuple(k_s.shape)} must have equal shapes"
        )
    if chunk_size < 1 or channels < 1:
        raise ValueError(
            f"car_loss: chunk_size ({chunk_size}) and channels ({channels}) must be >= 1"
        )
    if not temperature > 0:
        raise ValueError(f"car_loss: temperature must be > 0, got {temperature}")
    _check_embeddings(q_s, k_s)
    q_t, k_t = upcast(q_t.detach()), upcast(k_t.detach())
    q_s, k_s = upcast(q_s), upcast(k_s)
    if normalize:
        q_t, k_t, q_s, k_s = (_unit(x) for x in (q_t, k_t, q_s, k_s))
    if temperature != 1.0:
        q_t, q_s = q_t / temperature, q_s / temperature
    dtype = torch.promote_types(q_s.dtype, k_s.dtype)
    tensors = [x.to(dtype) for x in (q_t, k_t, q_s, k_s)]
    total = _ChunkedRelationError.apply(*tensors, chunk_size)
    return total / (q_s.shape[0] * channels * q_s.shape[-1])


class CARLoss(nn.Module):
    """Module form of :func:`car_loss` holding its keyword settings."""

    def __init__(
        self,
        channels: int,
        chunk_size: int = DEFAULT_CAR_CHUNK,
        temperature: float = 1.0,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.chunk_size = chunk_size
        self.temperature = temperature
        self.normalize = normalize

    def forward(self, q_t: Tensor, k_t: Tensor, q_s: Tensor, k_s: Tensor) -> Tensor:
        return car_loss(
            q_t, k_t, q_s, k_s, self.channels, self.chunk_size, self.temperature, self.normalize
        )
