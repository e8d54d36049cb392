"""Finding training runs and their checkpoints, and loading the networks they hold.

A *run directory* is what ``python -m rirn.train`` writes (docs/architecture.md): ``.hydra/``,
``split.json`` and ``checkpoints/{best,last}.pt``. A *sweep directory* is a Hydra multirun
folder whose job folders are run directories, possibly nested one level deeper.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rirn.data.modalities import MODALITIES, parse_modalities
from rirn.errors import ConfigError, DataError, RirnError
from rirn.models import build_unet

#: Checkpoints tried in order: the best student (validation Dice), then the last epoch.
CHECKPOINT_NAMES: tuple[str, ...] = ("best.pt", "last.pt")
#: Keys every rirn checkpoint has and evaluation needs.
REQUIRED_KEYS: tuple[str, ...] = ("student", "config", "modalities")
#: Folders of a sweep that are never run folders (outputs of rirn itself, Hydra, TensorBoard,
#: the shared teachers of a two-stage sweep: configs/experiment/distill_benchmark.yaml).
_NOT_RUNS = {".hydra", "checkpoints", "tb", "figures", "predictions", "teachers"}


def find_checkpoint(run_dir: str | Path, prefer: str = "best") -> Path | None:
    """The checkpoint to evaluate in ``run_dir``: ``checkpoints/best.pt`` (or ``last.pt`` first
    when ``prefer="last"``), falling back to the other; ``None`` when there is neither."""
    names = CHECKPOINT_NAMES if prefer == "best" else CHECKPOINT_NAMES[::-1]
    for name in names:
        path = Path(run_dir) / "checkpoints" / name
        if path.is_file():
            return path
    return None


def run_dir_of(checkpoint: str | Path) -> Path | None:
    """The run directory holding ``checkpoint`` (``<run>/checkpoints/x.pt``), or ``None``."""
    path = Path(checkpoint).resolve()
    if path.parent.name == "checkpoints" and (path.parent.parent / "split.json").is_file():
        return path.parent.parent
    return None


def require_checkpoint(run_dir: str | Path, prefer: str = "best") -> Path:
    """:func:`find_checkpoint` that raises a one-line error instead of returning ``None``.

    Raises:
        ConfigError: ``run_dir`` is not a folder.
        DataError: it holds no checkpoint.
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir={run_dir} does not exist or is not a folder")
    path = find_checkpoint(run_dir, prefer)
    if path is None:
        raise DataError(
            f"run_dir={run_dir} holds no checkpoint (checkpoints/best.pt or last.pt); "
            "is it a training run directory, and did its first epoch finish?"
        )
    return path


@dataclass(frozen=True)
class RunEntry:
    """One run folder of a sweep.

    Attributes:
        path: the run folder.
        name: its path relative to the sweep folder (Hydra names it after the overrides).
        checkpoint: the checkpoint to evaluate, ``None`` when the run has none (crashed or not
            finished its first epoch).
        subset: the student's modalities from ``.hydra/config.yaml`` (``None`` if unreadable).
    """

    path: Path
    name: str
    checkpoint: Path | None
    subset: tuple[str, ...] | None


def hydra_subset(run_dir: str | Path) -> tuple[str, ...] | None:
    """The ``modality`` of a run's ``.hydra/config.yaml`` as a subset, ``None`` if unknown."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / "config.yaml"
    try:
        return parse_modalities(OmegaConf.load(path).modality)
    except Exception:  # noqa: BLE001 - any unreadable or odd config just means "unknown"
        return None


def _is_run(folder: Path) -> bool:
    return (folder / "checkpoints").is_dir() or (folder / ".hydra").is_dir()


def find_runs(sweep_dir: str | Path, prefer: str = "best") -> list[RunEntry]:
    """Every run folder under a sweep folder, sorted by name.

    A run folder is any folder below ``sweep_dir`` with a ``checkpoints/`` or ``.hydra/``
    subfolder (Hydra writes ``.hydra/`` when a job starts, the trainer ``checkpoints/`` after its
    first epoch), so runs that crashed early are found too and reported with
    ``checkpoint=None``, never silently dropped. Folders inside a run folder are not searched.

    Args:
        sweep_dir: the Hydra multirun folder.
        prefer: ``"best"`` or ``"last"``, see :func:`find_checkpoint`.

    Raises:
        ConfigError: ``sweep_dir`` is not a folder.
        DataError: it holds no run folder.
    """
    sweep_dir = Path(sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep_dir={sweep_dir} does not exist or is not a folder")
    runs = []
    for parent, dirs, _ in os.walk(sweep_dir):
        here = Path(parent)
        keep = []
        for d in sorted(dirs):
            folder = here / d
            if d in _NOT_RUNS or d.startswith("."):
                continue
            if _is_run(folder):
                name = folder.relative_to(sweep_dir).as_posix()
                checkpoint = find_checkpoint(folder, prefer)
                runs.append(RunEntry(folder, name, checkpoint, hydra_subset(folder)))
            else:
                keep.append(d)
        dirs[:] = keep  # descend only into folders that are not runs themselves
    if not runs:
        raise DataError(
            f"sweep_dir={sweep_dir} holds no run folder (a folder with checkpoints/ or .hydra/)"
        )
    return sorted(runs, key=lambda r: r.name)


@dataclass
class LoadedCheckpoint:
    """A rirn checkpoint read into memory, with what evaluation and prediction need.

    Attributes:
        path: the checkpoint file (absolute).
        run_dir: the run directory around it (``None`` for a checkpoint outside a run folder).
        config: the run's resolved config (plain dict: ``model``, ``data``, ``modality``, ...).
        modalities: the student's subset, canonical order.
        scheme: label scheme of the training data (``"brats"`` or ``"brats2023"``).
        epoch: finished epochs when it was written.
        state: the whole checkpoint dict (CPU tensors).
    """

    path: Path
    run_dir: Path | None
    config: dict
    modalities: tuple[str, ...]
    scheme: str
    epoch: int
    state: dict = field(repr=False)

    @property
    def crop_size(self) -> tuple[int, int, int]:
        """The training crop ``data.crop_size`` (the default inference window)."""
        return tuple(int(c) for c in self.config["data"]["crop_size"])  # type: ignore[return-value]

    @property
    def has_teacher(self) -> bool:
        return self.state.get("teacher") is not None

    @property
    def has_student(self) -> bool:
        """False for a run that trained its teacher alone (``teacher.only``)."""
        return self.state.get("student") is not None

    def stat(self) -> dict:
        """Path, size and modification time of the file, to tell whether results are current."""
        st = self.path.stat()
        return {"checkpoint": str(self.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def network(self, which: str, device: torch.device | str = "cpu") -> torch.nn.Module:
        """Rebuild ``"student"`` or ``"teacher"`` in eval mode on ``device``, as the trainer
        builds them: ``build_unet(config.model, len(modalities))`` / ``(config.model, 4)``.

        Raises:
            DataError: the network is absent or its weights do not fit the model config.
        """
        if self.state.get(which) is None:
            alone = " (its run trained the teacher alone: teacher.only)" * (which == "student")
            raise DataError(f"checkpoint {self.path} has no {which} weights{alone}")
        channels = len(self.modalities) if which == "student" else len(MODALITIES)
        what = f"checkpoint {self.path}: {which} weights"
        return build_network(self.config["model"], channels, self.state[which], what, device)


def build_network(
    model_cfg, in_channels: int, state: dict, what: str, device: torch.device | str = "cpu"
) -> torch.nn.Module:
    """A ``UNet3D`` of ``model_cfg`` with ``in_channels`` inputs and weights ``state``, on
    ``device``, in eval mode (for checkpoints and bundles alike).

    Raises:
        DataError: the weights do not fit the model config (``what`` names them).
    """
    net = build_unet(model_cfg, in_channels)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DataError(f"{what} do not fit the model config ({first})") from None
    return net.to(torch.device(device)).eval()


def open_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read a checkpoint on the CPU and check that it is a rirn training checkpoint.

    Raises:
        DataError: missing or unreadable file, a dict without the keys of
            :data:`REQUIRED_KEYS`, or bad ``modalities``.
    """
    from rirn.training.checkpoint import load_checkpoint

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"checkpoint {path} not found")
    try:
        state = load_checkpoint(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise DataError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise DataError(
            f"checkpoint {path} is not a rirn training checkpoint (missing {', '.join(missing)})"
        )
    try:
        modalities = parse_modalities(list(state["modalities"]))
    except RirnError as exc:
        raise DataError(f"checkpoint {path}: bad modalities ({exc})") from None
    return LoadedCheckpoint(
        path=path,
        run_dir=run_dir_of(path),
        config=state["config"],
        modalities=modalities,
        scheme=str(state.get("scheme", "brats")),
        epoch=int(state.get("epoch", 0)),
        state=state,
    )
