"""Atomic checkpoints and RNG state capture for exact resumption."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename over ``path``.

    A crash (even SIGKILL) during the write leaves the previous file intact: ``os.replace`` is
    atomic on POSIX within one filesystem.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    # weights_only=False: our checkpoints hold plain Python containers (config, history, RNG).
    return torch.load(path, map_location=map_location, weights_only=False)


def peek_checkpoint(path: str | Path) -> object:
    """``torch.load`` memory-mapped: reading one small entry (the split, whether a student is
    there) does not read the weights and optimiser state. A legacy (non-zip) file, which
    cannot be memory-mapped, is read whole."""
    path = Path(path).expanduser()
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except RuntimeError:
        return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`; torch accepts RNG states only as CPU byte tensors, so a state
    loaded onto a GPU (``map_location="cuda"``) is moved back first."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or torch.compile wrappers (for state dicts)."""
    module = getattr(module, "module", module)  # DDP
    return getattr(module, "_orig_mod", module)  # torch.compile
