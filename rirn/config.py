"""Where the Hydra configs live, and the resolvers they use.

``configs/`` sits at the repository root. An editable install (``pip install -e .``) or a
source checkout finds it beside the ``rirn`` package; a regular install ships a copy as the
package data ``rirn/configs`` (see pyproject.toml), which is preferred when present.

Resolvers (registered on import):

* ``${device_default:CUDA_VALUE,CPU_VALUE}`` picks a value by whether CUDA is available. The
  paper-sized defaults apply on a GPU and CPU-sized ones on a laptop, while an explicit override
  on the command line (e.g. ``data.crop_size=[96,96,96]``) always wins because it replaces the
  interpolation.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

_PKG = Path(__file__).resolve().parent
CONFIG_DIR: Path = next(
    (p for p in (_PKG / "configs", _PKG.parent / "configs") if (p / "train.yaml").is_file()),
    _PKG.parent / "configs",
)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _device_default(cuda_value, cpu_value):
    return cuda_value if _cuda_available() else cpu_value


if not OmegaConf.has_resolver("device_default"):
    OmegaConf.register_new_resolver("device_default", _device_default)


def override_value(value) -> str:
    """``value`` as a Hydra override writes it: ``false``, ``null``, ``[0.9,0.999]``."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, tuple | list):
        return f"[{','.join(override_value(v) for v in value)}]"
    return str(value)
