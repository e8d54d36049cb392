"""How a case is predicted: the one module that owns whole-case inference.

``python -m rirn.evaluate``, ``python -m rirn.predict`` (one checkpoint or a bundle), the
trainer's validation and the benchmark's timing (:mod:`rirn.bench.inference_time`) all predict
through here. From a preprocessed case (``image float32 (C, *B)`` z-scored and cropped to the
brain box ``B``, and its ``meta``; docs/architecture.md):

1. :class:`InferenceSettings` say how: Gaussian sliding window of the training crop over the
   box (:func:`sliding_window_inference`) or the paper's centre window
   (:func:`center_crop_inference`), flip TTA, threshold, ET post-processing, autocast;
2. :func:`predict_probs` gives the region probabilities ``(3, *B)`` in the box;
3. :func:`predict_case` thresholds them per region (:func:`probs_to_regions`), nests them as
   the written label map does (:func:`rirn.labels.nest_regions`, ``nested``), drops small ET
   when asked and pastes the masks back into the original volume ``(3, *meta.shape)``
   (:func:`predict_case_with_probs` also returns the probabilities there).

Turning a command's config keys (``device``, ``amp``, ``inference.*``, ``postprocess.*``) into
settings is :mod:`rirn.evaluation.settings`; reading NIfTI into the preprocessed form is
:func:`rirn.data.io.preprocess_case`.

Conventions of the window functions:

* ``model`` is any callable on a ``(N, C, *roi)`` tensor returning the logits ``(N, K, *roi)``
  or an object with a ``.logits`` tensor (``UNet3D`` returns ``UNetOutput``); probabilities are
  ``torch.sigmoid`` of the logits (``K = 3``: ``WT, TC, ET``).
* Inputs are ``image (B, C, *S)`` tensors on the model's device; outputs are probabilities
  ``(B, K, *S)`` ``float32`` on the same device.
* The model is called as it is: put it in ``eval()`` mode first. Calls run under
  ``torch.no_grad()`` (not ``inference_mode``, so callers may still edit the result in place).
* ``amp_dtype`` (``None``, ``torch.bfloat16`` or ``torch.float16``) runs the model under
  ``torch.autocast`` of the image's device type; ``None`` (the default, on every device) runs it
  in the model's own precision. Logits are cast to ``float32`` before the sigmoid, and all
  accumulation is ``float32``.
* ``tta_flip=True`` is flip test-time augmentation: the model also sees the input flipped along
  every non-empty subset of the spatial axes (7 for 3-D), each prediction is flipped back, and the
  ``2 ** len(S)`` probability maps are averaged (mmFormer/RFNet/nnU-Net "mirroring"). It costs
  8 forward passes per window in 3-D.
* Probabilities, not logits, are averaged (over overlapping windows and over flips). Averaging
  probabilities is an ensemble of per-voxel posteriors: one window that is very confident cannot
  outvote the others through a huge logit, and it is what mmFormer/RFNet do at test time.
* Where the image is smaller than ``roi_size`` along an axis it is zero-padded symmetrically
  (z-scored images have background 0) and the prediction is cropped back.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rirn.data.transforms import uncrop_to_original
from rirn.labels import BRATS_SHAPE, nest_regions
from rirn.metrics import ET_MIN_VOXELS, remove_small_et, scaled_et_min_voxels

Model = Callable[[torch.Tensor], object]

#: ``InferenceSettings.mode`` values (the ``inference.mode`` config key).
MODES: tuple[str, ...] = ("sliding_window", "center_crop")


def _logits(output: object) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"model must return a tensor or an object with a .logits tensor, got {type(output)}"
        )
    return logits


def _forward(model: Model, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """``sigmoid(model(x))`` as ``float32``, the model run under autocast when asked."""
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = _logits(model(x))
    if logits.shape[0] != x.shape[0] or logits.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"model output {tuple(logits.shape)} does not match its input {tuple(x.shape)} "
            "in batch and spatial size"
        )
    return torch.sigmoid(logits.float())


def _predict(
    model: Model, x: torch.Tensor, amp_dtype: torch.dtype | None, tta_flip: bool
) -> torch.Tensor:
    """Probabilities ``(N, K, *roi)`` float32 of one batch of windows, flip-averaged if asked."""
    if not tta_flip:
        return _forward(model, x, amp_dtype)
    axes = range(2, x.ndim)
    flips = [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]
    total = _forward(model, x, amp_dtype)  # flips[0] is the identity
    for flip in flips[1:]:
        total += _forward(model, x.flip(flip), amp_dtype).flip(flip)
    return total / len(flips)


def _roi(roi_size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    roi = (roi_size,) * ndim if isinstance(roi_size, int) else tuple(int(r) for r in roi_size)
    if len(roi) != ndim or min(roi) < 1:
        raise ValueError(f"roi_size must be {ndim} positive ints, got {roi_size}")
    return roi


def _centre_slices(size: int, target: int) -> tuple[slice, slice]:
    """Slices ``(src, dst)`` that put the centre of an axis of length ``size`` into one of length
    ``target``: a centre crop when ``size >= target``, a symmetric pad otherwise."""
    n = min(size, target)
    src, dst = (size - n) // 2, (target - n) // 2
    return slice(src, src + n), slice(dst, dst + n)


def _embed(
    x: torch.Tensor, shape: Sequence[int]
) -> tuple[torch.Tensor, tuple[slice, ...], tuple[slice, ...]]:
    """Centre ``x (B, C, *S)`` in a zero canvas ``(B, C, *shape)`` (cropping where it is larger).

    Returns the canvas and the slices ``src`` (into ``x``) and ``dst`` (into the canvas) with
    ``canvas[..., *dst] == x[..., *src]``, which also paste a prediction back.
    """
    pairs = [_centre_slices(s, t) for s, t in zip(x.shape[2:], shape, strict=True)]
    src, dst = tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)
    if tuple(shape) == tuple(x.shape[2:]):
        return x, src, dst
    canvas = x.new_zeros((*x.shape[:2], *shape))
    canvas[(..., *dst)] = x[(..., *src)]
    return canvas, src, dst


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start offsets of sliding windows along one axis (evenly spread, as in nnU-Net).

    The fewest windows whose stride is at most ``int(roi * (1 - overlap))`` (at least 1) are
    spread evenly from ``0`` to ``size - roi``: the first window starts at the beginning, the last
    ends at the end, every voxel is covered, and neighbours share at least ``overlap`` of a window
    (the integer stride keeps that true after rounding the offsets). Requires ``size >= roi``.
    """
    if size < roi:
        raise ValueError(f"axis of size {size} is smaller than the window {roi}")
    if size == roi:
        return [0]
    n = math.ceil((size - roi) / max(int(roi * (1.0 - overlap)), 1)) + 1
    return [round(i * (size - roi) / (n - 1)) for i in range(n)]


def importance_map(
    roi: Sequence[int],
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Weight of each voxel of a window when windows are blended, ``(*roi)`` float32.

    ``"constant"``: all ones. ``"gaussian"``: ``prod_d exp(-(i_d - c_d)^2 / (2 sigma_d^2))`` with
    ``c_d = (roi_d - 1) / 2`` (the exact centre, so the map is symmetric under flips) and
    ``sigma_d = sigma_scale * roi_d`` (nnU-Net and MONAI use 1/8), peak 1, floored at 1e-30 so
    every voxel of a window keeps a positive weight. Only ratios of weights matter.
    """
    if mode == "constant":
        return torch.ones(tuple(roi), dtype=torch.float32, device=device)
    if mode != "gaussian":
        raise ValueError(f"mode must be 'gaussian' or 'constant', got {mode!r}")
    if sigma_scale <= 0:
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale}")
    weights = torch.ones((), dtype=torch.float64)
    for r in roi:
        offset = torch.arange(r, dtype=torch.float64) - (r - 1) / 2
        axis = torch.exp(-0.5 * (offset / (sigma_scale * r)) ** 2)
        weights = weights[..., None] * axis
    return weights.clamp_min(1e-30).to(device=device, dtype=torch.float32)


@torch.no_grad()
def sliding_window_inference(
    model: Model,
    image: torch.Tensor,
    roi_size: int | Sequence[int],
    overlap: float = 0.5,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 1,
    tta_flip: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Gaussian-weighted sliding-window prediction of whole volumes (nnU-Net/MONAI style).

    Windows of ``roi_size`` are placed by :func:`window_starts` along each axis (every voxel
    covered, the last window aligned to the end). Each voxel's probability is the average of the
    windows covering it, weighted by :func:`importance_map` (centre voxels of a window, which
    see the most context, count most). The weights are normalised per voxel, so a model that
    commutes with translation gives exactly its direct whole-volume output.

    Args:
        model: callable returning logits ``(N, K, *roi)`` or an object with ``.logits``.
        image: ``(B, C, *S)`` tensor on the model's device.
        roi_size: window size, an int (same on every axis) or one int per spatial axis.
        overlap: fraction of a window shared with its neighbour, in ``[0, 1)``.
        mode: ``"gaussian"`` or ``"constant"`` blending weights.
        sigma_scale: Gaussian sigma as a fraction of the window size.
        batch_size: windows per forward pass (each carries all ``B`` images).
        tta_flip: average over the ``2 ** len(S)`` axis flips (see module docstring).
        amp_dtype: ``None``, ``torch.bfloat16`` or ``torch.float16`` autocast for the model.

    Returns:
        Probabilities ``(B, K, *S)`` float32 on ``image.device``.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_images = image.shape[0]
    roi = _roi(roi_size, image.ndim - 2)
    canvas, _, inner = _embed(image, [max(s, r) for s, r in zip(image.shape[2:], roi, strict=True)])
    weight = importance_map(roi, mode, sigma_scale, image.device)
    starts = [window_starts(s, r, overlap) for s, r in zip(canvas.shape[2:], roi, strict=True)]
    windows = [
        tuple(slice(o, o + r) for o, r in zip(origin, roi, strict=True))
        for origin in itertools.product(*starts)
    ]
    total: torch.Tensor | None = None
    norm = torch.zeros(canvas.shape[2:], dtype=torch.float32, device=image.device)
    for first in range(0, len(windows), batch_size):
        chunk = windows[first : first + batch_size]
        probs = _predict(model, torch.cat([canvas[(..., *w)] for w in chunk]), amp_dtype, tta_flip)
        if total is None:
            total = probs.new_zeros((n_images, probs.shape[1], *canvas.shape[2:]))
        for i, w in enumerate(chunk):
            total[(..., *w)] += probs[i * n_images : (i + 1) * n_images] * weight
            norm[w] += weight
    return (total / norm)[(..., *inner)]


@torch.no_grad()
def center_crop_inference(
    model: Model,
    image: torch.Tensor,
    roi_size: int | Sequence[int],
    tta_flip: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The paper's test protocol: predict the centre crop and paste it back into the volume.

    The centre ``roi_size`` crop of the image (offset ``(S - roi) // 2``; zero-padded
    symmetrically along axes shorter than the window) is predicted in one forward pass. Voxels
    outside the crop get probability 0, i.e. are predicted background.

    Args:
        model: callable returning logits ``(N, K, *roi)`` or an object with ``.logits``.
        image: ``(B, C, *S)`` tensor on the model's device.
        roi_size: crop size, an int or one int per spatial axis (RIRN: 160x192x128).
        tta_flip: average over the ``2 ** len(S)`` axis flips (see module docstring).
        amp_dtype: ``None``, ``torch.bfloat16`` or ``torch.float16`` autocast for the model.

    Returns:
        Probabilities ``(B, K, *S)`` float32 on ``image.device``, zero outside the crop.
    """
    roi = _roi(roi_size, image.ndim - 2)
    window, src, dst = _embed(image, roi)
    probs = _predict(model, window, amp_dtype, tta_flip)
    out = probs.new_zeros((image.shape[0], probs.shape[1], *image.shape[2:]))
    out[(..., *src)] = probs[(..., *dst)]
    return out


def probs_to_regions(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Binarise region probabilities: ``probs > threshold`` (``bool``, same shape and device).

    With the default 0.5 this is ``logits > 0``. Works on numpy arrays as well. The masks are
    not forced to be nested (ET ⊆ TC ⊆ WT); each region is thresholded on its own.
    """
    return probs > threshold


@dataclass(frozen=True)
class InferenceSettings:
    """How a case is predicted (config keys: :func:`rirn.evaluation.settings.inference_settings`).

    Attributes:
        mode: ``"sliding_window"`` (Gaussian-weighted windows over the whole brain box) or
            ``"center_crop"`` (the paper: one window at the centre of the box, background
            outside).
        roi_size: window ``(X, Y, Z)``; by default the run's training crop ``data.crop_size``.
        overlap: sliding-window overlap in ``[0, 1)``.
        tta: flip test-time augmentation (8 flips in 3-D).
        threshold: a region is predicted where its probability is above this.
        sw_batch_size: windows per forward pass.
        amp_dtype: autocast dtype (``None``: fp32).
        et_min_voxels: ET post-processing (:func:`rirn.metrics.remove_small_et`): a voxel
            count, ``"auto"`` (mmFormer's 500 voxels of a BraTS case scaled to the case's
            grid, :func:`rirn.metrics.scaled_et_min_voxels`) or ``None`` (off).
        nested: score the masks the written label map encodes (:func:`rirn.labels.nest_regions`,
            as BraTS and nnU-Net do), not each region as thresholded on its own.
    """

    mode: str
    roi_size: tuple[int, int, int]
    overlap: float = 0.5
    tta: bool = False
    threshold: float = 0.5
    # 4 windows per forward: PyTorch's CPU convolutions are ~5x slower per window at batch 1
    # (measured 0.21 s vs 0.04 s for a 32^3 window on 2 cores); GroupNorm is per sample, so
    # the batch does not change the result.
    sw_batch_size: int = 4
    amp_dtype: torch.dtype | None = None
    et_min_voxels: int | str | None = None
    nested: bool = True

    def describe(self) -> str:
        """One line for tables, e.g. ``sliding window 160x192x128, overlap 0.5, Gaussian``."""
        roi = "x".join(str(r) for r in self.roi_size)
        if self.mode == "sliding_window":
            text = f"sliding window {roi}, overlap {self.overlap:g}, Gaussian weights"
        else:
            text = f"centre crop {roi} of the brain box (background outside)"
        text += ", flip TTA" if self.tta else ""
        return f"{text}, threshold {self.threshold:g}"

    def et_threshold(self, shape: Sequence[int]) -> int | None:
        """The ET post-processing threshold of a case whose original grid is ``shape``
        (``meta["shape"]``); ``None`` when post-processing is off."""
        if self.et_min_voxels == "auto":
            return scaled_et_min_voxels(shape)
        return self.et_min_voxels

    def describe_postprocess(self) -> str:
        """One line for tables: the ET post-processing and the nesting (``none``: neither)."""
        parts = []
        if self.et_min_voxels == "auto":
            x, y, z = BRATS_SHAPE
            scan = f"per {x}x{y}x{z} scan (scaled to the case's grid)"
            parts.append(f"ET < {ET_MIN_VOXELS} voxels {scan} relabelled to NCR")
        elif self.et_min_voxels is not None:
            parts.append(f"ET < {self.et_min_voxels} voxels relabelled to NCR")
        if self.nested:
            parts.append("masks nested as in the written label map (ET in TC in WT)")
        return "; ".join(parts) or "none"

    def as_dict(self) -> dict:
        """Plain JSON-able dict (for the record that decides whether results are up to date)."""
        out = asdict(self)
        out["roi_size"] = list(self.roi_size)
        out["amp_dtype"] = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        return out


def predict_probs(
    model: torch.nn.Module, image: torch.Tensor, settings: InferenceSettings
) -> torch.Tensor:
    """Region probabilities of one case in its brain box.

    Args:
        model: a ``UNet3D`` in eval mode, on ``image``'s device.
        image: ``(1, C, *B)`` float32, the model's input channels only.
        settings: see :class:`InferenceSettings`.

    Returns:
        ``(3, *B)`` float32 on the image's device.
    """
    if settings.mode == "center_crop":
        probs = center_crop_inference(
            model, image, settings.roi_size, tta_flip=settings.tta, amp_dtype=settings.amp_dtype
        )
    else:
        probs = sliding_window_inference(
            model,
            image,
            settings.roi_size,
            overlap=settings.overlap,
            batch_size=settings.sw_batch_size,
            tta_flip=settings.tta,
            amp_dtype=settings.amp_dtype,
        )
    return probs[0]


def case_regions(
    probs: torch.Tensor | np.ndarray, settings: InferenceSettings, shape: Sequence[int]
) -> np.ndarray:
    """The masks of one case: thresholded per region, nested when ``settings.nested`` (the
    regions of the label map ``rirn.predict`` writes), then ET post-processed when asked.

    Args:
        probs: ``(3, *B)`` region probabilities in the brain box (tensor or numpy).
        settings: ``threshold``, ``nested`` and ``et_min_voxels`` are used.
        shape: the case's original grid ``meta["shape"]`` (for ``et_min_voxels="auto"``).

    Returns:
        ``(3, *B)`` bool numpy. The ET count is the same in the box and in the whole volume
        (nothing is predicted outside the box), so post-processing in the box is exact.
    """
    if isinstance(probs, torch.Tensor):
        probs = probs.float().cpu().numpy()
    regions = probs_to_regions(probs, settings.threshold)
    regions = nest_regions(regions) if settings.nested else regions
    threshold = settings.et_threshold(shape)
    return regions if threshold is None else remove_small_et(regions, threshold)


def _predict_box(
    model: torch.nn.Module,
    image: torch.Tensor | np.ndarray,
    meta: Mapping,
    settings: InferenceSettings,
) -> tuple[np.ndarray, torch.Tensor]:
    """``(regions bool (3, *B) numpy, probs float32 (3, *B) on the model's device)``."""
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None].to(device)
    probs = predict_probs(model, x, settings)
    return case_regions(probs, settings, meta["shape"]), probs


def predict_case(
    model: torch.nn.Module,
    image: torch.Tensor | np.ndarray,
    meta: Mapping,
    settings: InferenceSettings,
) -> np.ndarray:
    """Predict one case and paste the masks back into the original volume.

    Args:
        model: a ``UNet3D`` in eval mode.
        image: ``(C, *B)`` float32 (numpy or tensor), the model's input channels of the
            preprocessed case; moved to the model's device here.
        meta: the case's meta dict (``bbox``, ``shape``; see docs/architecture.md).
        settings: see :class:`InferenceSettings`; ET post-processing is applied when set.

    Returns:
        ``(3, *meta["shape"])`` bool region masks (WT, TC, ET), background outside the box.
        Nested when ``settings.nested`` (the default), else each region as thresholded.
    """
    regions, _ = _predict_box(model, image, meta, settings)
    return uncrop_to_original(regions, dict(meta), fill=False)


def predict_case_with_probs(
    model: torch.nn.Module,
    image: torch.Tensor | np.ndarray,
    meta: Mapping,
    settings: InferenceSettings,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_case` and the probabilities behind it, both in the original volume.

    Returns:
        ``(regions, probs)``: ``regions`` as :func:`predict_case`; ``probs`` ``(3,
        *meta["shape"])`` float32 region probabilities, 0 outside the brain box. ET
        post-processing changes the masks only, never the probabilities.
    """
    regions, probs = _predict_box(model, image, meta, settings)
    full = uncrop_to_original(probs.float().cpu().numpy(), dict(meta), fill=0.0)
    return uncrop_to_original(regions, dict(meta), fill=False), full
