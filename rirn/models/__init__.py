"""Networks of RIRN: the teacher/student ``UNet3D`` (with its non-local block) and the
``Discriminator``, and builders that read the keys of ``configs/model/unet3d.yaml``.

Example:
    >>> import torch
    >>> cfg = {"widths": [16, 32, 64, 128], "nonlocal_scale": 8}
    >>> student = build_unet(cfg, in_channels=1)
    >>> out = student(torch.zeros(1, 1, 32, 32, 32))  # UNetOutput(logits, features, ...)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rirn.errors import ConfigError
from rirn.models.discriminator import Discriminator
from rirn.models.nonlocal_block import NonLocalBlock, embedded_gaussian_attention
from rirn.models.unet import UNet3D, UNetOutput

__all__ = [
    "Discriminator",
    "NonLocalBlock",
    "UNET_KEYS",
    "UNet3D",
    "UNetOutput",
    "build_discriminator",
    "build_unet",
    "embedded_gaussian_attention",
]

#: Keys of the model config read by :func:`build_unet` (all optional; defaults of ``UNet3D``).
UNET_KEYS: tuple[str, ...] = (
    "widths",
    "blocks_down",
    "blocks_up",
    "norm",
    "norm_groups",
    "dropout",
    "dropout_position",
    "nonlocal_scale",
    "nonlocal_channels",
    "nonlocal_scaled",
    "head_prior",
    "deep_supervision",
    "zero_init_residual",
)
_SEQUENCE_KEYS = ("widths", "blocks_down", "blocks_up")
_DISCRIMINATOR_KEYS = ("channels",)


def _plain(cfg: Mapping | None, where: str) -> dict[str, Any]:
    """A resolved plain dict of ``cfg`` (DictConfig or mapping); ``None`` -> ``{}``."""
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{where} must be a mapping; got {type(cfg).__name__}")
    return dict(cfg)


def _reject_unknown(cfg: Mapping, known: Sequence[str], where: str) -> None:
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"valid: {', '.join(known)}"
        )


def build_unet(model_cfg: Mapping, in_channels: int) -> UNet3D:
    """Build a :class:`UNet3D` from the ``model`` config group (``configs/model/unet3d.yaml``).

    Args:
        model_cfg: mapping (``DictConfig`` or ``dict``) with any of :data:`UNET_KEYS` (missing
            keys take ``UNet3D``'s defaults) and the ``discriminator`` sub-mapping (ignored here).
        in_channels: number of input modalities (4 for the teacher, ``len(subset)`` for a
            student).

    Raises:
        ConfigError: an unknown key or an invalid value; the message names ``model.<key>``.
    """
    cfg = _plain(model_cfg, "model")
    _reject_unknown(cfg, (*UNET_KEYS, "discriminator"), "model")
    kwargs = {k: cfg[k] for k in UNET_KEYS if k in cfg}
    for key in _SEQUENCE_KEYS:
        if key in kwargs:
            if not isinstance(kwargs[key], (list, tuple)):
                raise ConfigError(f"model.{key} must be a list of integers; got {kwargs[key]!r}")
            kwargs[key] = tuple(kwargs[key])
    try:
        return UNet3D(in_channels, **kwargs)
    except ValueError as exc:
        # UNet3D's messages start with the argument name, which is the config key.
        raise ConfigError(f"model.{exc}") from exc


def build_discriminator(model_cfg: Mapping, in_channels: int = 3) -> Discriminator:
    """Build the :class:`Discriminator` from ``model.discriminator`` (key ``channels``).

    Args:
        model_cfg: the ``model`` config group; only its ``discriminator`` sub-mapping is read
            (absent -> defaults).
        in_channels: channels of the judged maps, = the U-Net's ``out_channels`` (3).

    Raises:
        ConfigError: an unknown key or a bad ``model.discriminator.channels``.
    """
    cfg = _plain(_plain(model_cfg, "model").get("discriminator"), "model.discriminator")
    _reject_unknown(cfg, _DISCRIMINATOR_KEYS, "model.discriminator")
    channels = cfg.get("channels", 64)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"model.discriminator.channels must be an integer >= 1; got {channels!r}")
    return Discriminator(in_channels=in_channels, channels=channels)
