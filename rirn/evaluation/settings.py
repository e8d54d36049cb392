"""The config keys of evaluate/predict/report -> the settings of :mod:`rirn.inference`.

``device=auto|cpu|cuda|cuda:N``, ``amp`` (bf16 autocast on CUDA), the ``inference`` group
(``mode``, ``roi_size``, ``overlap``, ``tta``, ``threshold``, ``sw_batch_size``),
``postprocess.et_min_voxels`` and ``postprocess.nested`` are validated here with one-line
:class:`~rirn.errors.ConfigError` messages that name the key; how the settings are then used to
predict a case is :mod:`rirn.inference`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import contextmanager

import torch

from rirn.errors import ConfigError
from rirn.inference import MODES, InferenceSettings


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


def _roi(roi_size, model_cfg: Mapping) -> tuple[int, int, int]:
    from omegaconf import OmegaConf

    from rirn.training.setup import check_crop

    # One number is a cube, as rirn.inference and MONAI read it.
    roi = [roi_size] * 3 if isinstance(roi_size, (int, float)) else list(roi_size)
    with _config_key("data.crop_size", "inference.roi_size"):
        return check_crop(roi, OmegaConf.create(dict(model_cfg)))


def _number(inference_cfg: Mapping, key: str, cast, default):
    """``inference.<key>`` as ``cast`` (``float``/``int``); a non-number is a ConfigError."""
    value = inference_cfg.get(key, default)
    try:
        if isinstance(value, bool):
            raise ValueError
        return cast(value)
    except (TypeError, ValueError):
        raise ConfigError(f"inference.{key}={value!r} must be a number") from None


def et_threshold_setting(value) -> int | str | None:
    """``postprocess.et_min_voxels`` -> ``InferenceSettings.et_min_voxels``.

    ``auto`` (the default of train, evaluate and predict: mmFormer's 500 voxels of a BraTS case,
    scaled to each case's grid), a voxel count ``>= 1``, or ``null`` (no post-processing, the
    paper's protocol).

    Raises:
        ConfigError: anything else; the message names the key.
    """
    if value in (None, ""):
        return None
    if str(value).lower() == "auto":
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or str(count) != str(value).strip():
        raise ConfigError(
            f"postprocess.et_min_voxels={value} must be auto, an integer >= 1 or null"
        )
    return count


#: What a ``postprocess`` key that an older record or checkpoint lacks meant: no ET
#: post-processing before ``et_min_voxels`` existed, each region's mask as thresholded before
#: ``nested`` (session 30).
LEGACY_POSTPROCESS: dict[str, object] = {"et_min_voxels": None, "nested": False}


def nested_setting(value) -> bool:
    """``postprocess.nested`` -> ``InferenceSettings.nested``: ``true`` (the default of train,
    evaluate and predict: score the nested masks the written label map encodes) or ``false``
    (each region's mask as thresholded).

    Raises:
        ConfigError: anything but a boolean; the message names the key.
    """
    if not isinstance(value, bool):
        raise ConfigError(f"postprocess.nested={value!r} must be true or false")
    return value


def inference_settings(
    inference_cfg: Mapping,
    et_min_voxels,
    train_crop: Sequence[int],
    model_cfg: Mapping,
    dtype: torch.dtype | None,
    nested=True,
) -> InferenceSettings:
    """Validate the ``inference`` config group and build :class:`InferenceSettings`.

    Args:
        inference_cfg: keys ``mode``, ``roi_size`` (``null``: ``train_crop``), ``overlap``,
            ``tta``, ``threshold``, ``sw_batch_size``.
        et_min_voxels: ``postprocess.et_min_voxels`` (:func:`et_threshold_setting`).
        train_crop: the checkpoint's ``data.crop_size``.
        model_cfg: the checkpoint's ``model`` config (the window must fit its downsampling).
        dtype: autocast dtype (:func:`amp_dtype`).
        nested: ``postprocess.nested`` (:func:`nested_setting`).

    Raises:
        ConfigError: a value out of range; the message names the key.
    """
    mode = str(inference_cfg.get("mode", "sliding_window"))
    if mode not in MODES:
        raise ConfigError(f"inference.mode={mode!r} is not one of {', '.join(MODES)}")
    roi_cfg = inference_cfg.get("roi_size")
    roi = _roi(train_crop if roi_cfg in (None, "") else roi_cfg, model_cfg)
    overlap = _number(inference_cfg, "overlap", float, 0.5)
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"inference.overlap={overlap} must be in [0, 1)")
    threshold = _number(inference_cfg, "threshold", float, 0.5)
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"inference.threshold={threshold} must be in (0, 1)")
    batch = _number(inference_cfg, "sw_batch_size", int, 4)
    if batch < 1:
        raise ConfigError(f"inference.sw_batch_size={batch} must be >= 1")
    et_min_voxels = et_threshold_setting(et_min_voxels)
    return InferenceSettings(
        mode=mode,
        roi_size=roi,
        overlap=overlap,
        tta=bool(inference_cfg.get("tta", False)),
        threshold=threshold,
        sw_batch_size=batch,
        amp_dtype=dtype,
        et_min_voxels=et_min_voxels,
        nested=nested_setting(nested),
    )
