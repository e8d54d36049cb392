"""Whole-case inference settings and the one prediction routine shared by evaluate and predict.

A case arrives as rirn's preprocessed form: ``image float32 (4, *B)`` z-scored and cropped to the
brain bounding box ``B`` plus its ``meta`` dict (docs/architecture.md). :func:`predict_case`
returns the binarised WT/TC/ET masks pasted back into the *original* volume ``(3, *meta.shape)``
(zeros outside the box), so they line up voxel for voxel with the source NIfTI files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rirn.data.transforms import uncrop_to_original
from rirn.errors import ConfigError
from rirn.inference import center_crop_inference, probs_to_regions, sliding_window_inference
from rirn.metrics import remove_small_et

#: ``inference.mode`` values.
MODES: tuple[str, ...] = ("sliding_window", "center_crop")


@contextmanager
def _config_key(trainer_key: str, our_key: str):
    """Re-raise a ConfigError of a ``rirn.training.setup`` check under this command's key."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(str(exc).replace(trainer_key, our_key)) from None


def resolve_device(name: str) -> torch.device:
    """``device=auto|cpu|cuda|cuda:N`` -> a torch device (``auto``: CUDA when available).

    Raises:
        ConfigError: not a device name, or CUDA asked for but not available.
    """
    from rirn.training.setup import resolve_device as _resolve

    with _config_key("trainer.device", "device"):
        return _resolve(str(name))


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """Autocast dtype: bf16 on CUDA when ``amp`` is on, else ``None`` (full fp32; CPU always)."""
    return torch.bfloat16 if amp and device.type == "cuda" else None


@dataclass(frozen=True)
class InferenceSettings:
    """How a case is predicted (see :func:`inference_settings` for the config keys).

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
        et_min_voxels: ET post-processing (:func:`rirn.metrics.remove_small_et`), ``None`` = off.
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
    et_min_voxels: int | None = None

    def describe(self) -> str:
        """One line for tables, e.g. ``sliding window 160x192x128, overlap 0.5, Gaussian``."""
        roi = "x".join(str(r) for r in self.roi_size)
        if self.mode == "sliding_window":
            text = f"sliding window {roi}, overlap {self.overlap:g}, Gaussian weights"
        else:
            text = f"centre crop {roi} of the brain box (background outside)"
        text += ", flip TTA" if self.tta else ""
        return f"{text}, threshold {self.threshold:g}"

    def describe_postprocess(self) -> str:
        if self.et_min_voxels is None:
            return "none"
        return f"ET < {self.et_min_voxels} voxels relabelled to NCR"

    def as_dict(self) -> dict:
        """Plain JSON-able dict (for the record that decides whether results are up to date)."""
        out = asdict(self)
        out["roi_size"] = list(self.roi_size)
        out["amp_dtype"] = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        return out


def _roi(roi_size, model_cfg: Mapping) -> tuple[int, int, int]:
    from omegaconf import OmegaConf

    from rirn.training.setup import check_crop

    with _config_key("data.crop_size", "inference.roi_size"):
        return check_crop(list(roi_size), OmegaConf.create(dict(model_cfg)))


def inference_settings(
    inference_cfg: Mapping,
    et_min_voxels,
    train_crop: Sequence[int],
    model_cfg: Mapping,
    dtype: torch.dtype | None,
) -> InferenceSettings:
    """Validate the ``inference`` config group and build :class:`InferenceSettings`.

    Args:
        inference_cfg: keys ``mode``, ``roi_size`` (``null``: ``train_crop``), ``overlap``,
            ``tta``, ``threshold``, ``sw_batch_size``.
        et_min_voxels: ``postprocess.et_min_voxels`` (``null``/``None``: off).
        train_crop: the checkpoint's ``data.crop_size``.
        model_cfg: the checkpoint's ``model`` config (the window must fit its downsampling).
        dtype: autocast dtype (:func:`amp_dtype`).

    Raises:
        ConfigError: a value out of range; the message names the key.
    """
    mode = str(inference_cfg.get("mode", "sliding_window"))
    if mode not in MODES:
        raise ConfigError(f"inference.mode={mode!r} is not one of {', '.join(MODES)}")
    roi_cfg = inference_cfg.get("roi_size")
    roi = _roi(train_crop if roi_cfg in (None, "") else roi_cfg, model_cfg)
    overlap = float(inference_cfg.get("overlap", 0.5))
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"inference.overlap={overlap} must be in [0, 1)")
    threshold = float(inference_cfg.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"inference.threshold={threshold} must be in (0, 1)")
    batch = int(inference_cfg.get("sw_batch_size", 4))
    if batch < 1:
        raise ConfigError(f"inference.sw_batch_size={batch} must be >= 1")
    if et_min_voxels not in (None, ""):
        et_min_voxels = int(et_min_voxels)
        if et_min_voxels < 1:
            raise ConfigError(f"postprocess.et_min_voxels={et_min_voxels} must be >= 1 or null")
    else:
        et_min_voxels = None
    return InferenceSettings(
        mode=mode,
        roi_size=roi,
        overlap=overlap,
        tta=bool(inference_cfg.get("tta", False)),
        threshold=threshold,
        sw_batch_size=batch,
        amp_dtype=dtype,
        et_min_voxels=et_min_voxels,
    )


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
        Thresholding is per region, so the masks are not forced to be nested.
    """
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None].to(device)
    probs = predict_probs(model, x, settings)
    regions = probs_to_regions(probs, settings.threshold).cpu().numpy()
    if settings.et_min_voxels is not None:
        # The ET count is the same in the box and in the whole volume (nothing outside the box).
        regions = remove_small_et(regions, settings.et_min_voxels)
    return uncrop_to_original(regions, dict(meta), fill=False)
