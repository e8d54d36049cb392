"""Which cases an evaluation uses, and where their preprocessed cache is.

Two sources:

* the run's own data (default): the validation part of the run's ``split.json`` (or, with
  ``split=train``, the cases it trained on), read from the cache the run trained on. Its
  location is recomputed from the checkpoint's ``data`` config with the trainer's own
  :func:`rirn.training.data.synthetic_root` / ``default_cache_dir``, so evaluation finds
  exactly the folder training wrote. If that cache was deleted it is rebuilt
  from the run's ``data.root`` (the synthetic dataset is regenerated first when the run used it:
  it is deterministic in its seed).
* another dataset (``data.root=DIR``): all its labelled cases, preprocessed with
  :func:`rirn.data.cache.ensure_cache` into ``data.cache_dir`` or the trainer's default folder
  under ``data.cache_root``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from rirn.data.cache import CacheSource, ensure_cache
from rirn.data.split import read_split
from rirn.errors import ConfigError, DataError
from rirn.evaluation.runs import LoadedCheckpoint

#: ``data.cache_root`` when neither the command line nor the run says otherwise.
DEFAULT_CACHE_ROOT = "~/.cache/rirn"

#: The parts of a run's ``split.json`` an evaluation can score, and how the tables name them.
SPLIT_PARTS: dict[str, str] = {"val": "validation", "train": "training"}


def split_part_name(part: str) -> str:
    """How the tables name a part of a run's split (``val`` -> ``validation``).

    Raises:
        ConfigError: ``part`` is not a key of :data:`SPLIT_PARTS` (the ``split=`` option).
    """
    if part not in SPLIT_PARTS:
        raise ConfigError(f"split={part!r} must be one of {', '.join(SPLIT_PARTS)}")
    return SPLIT_PARTS[part]


@dataclass(frozen=True)
class EvalData:
    """The cases of one evaluation.

    Attributes:
        source: the preprocessed cache.
        case_ids: the cases to evaluate (sorted as in the split / the cache).
        description: one line for the tables, e.g. ``validation split of run X (2 cases)``.
    """

    source: CacheSource
    case_ids: list[str]
    description: str

    def as_dict(self) -> dict:
        return {"cache_dir": str(self.source.cache_dir), "cases": list(self.case_ids)}


def _cached(root: Path, cache_dir: Path, release: str, workers: int, progress: bool) -> CacheSource:
    """The cache of ``root`` in ``cache_dir``, preprocessing whatever is missing."""
    ensure_cache(root, cache_dir, release=release, num_workers=workers, progress=progress)
    return CacheSource(cache_dir)


def run_data(
    ckpt: LoadedCheckpoint,
    cache_root: str | None = None,
    workers: int = 0,
    progress: bool = True,
    part: str = "val",
) -> EvalData:
    """The validation (or training) cases of the run that wrote ``ckpt``.

    Args:
        ckpt: an opened checkpoint inside a run directory (for its ``split.json``).
        cache_root: overrides the run's ``data.cache_root`` (e.g. on another machine).
        workers: preprocessing processes if the cache must be rebuilt.
        progress: tqdm bars while rebuilding.
        part: ``val`` or ``train`` (a key of :data:`SPLIT_PARTS`). Scoring the training cases
            with the same metrics shows how well the networks fit what they saw: the gap to
            ``val`` is the generalisation gap, and a low training Dice means under-fitting.

    Raises:
        ConfigError: the checkpoint is not inside a run directory (no split to use), or
            ``part`` is not a split part.
        DataError: the run's data cannot be found, or the split names unknown cases.
    """
    from rirn.data.synthetic import ensure_synthetic
    from rirn.training.data import default_cache_dir, synthetic_root

    name = split_part_name(part)
    if ckpt.run_dir is None:
        raise ConfigError(
            f"checkpoint={ckpt.path} is not inside a run directory (no split.json beside "
            "checkpoints/); pass data.root=DIR to evaluate it on a dataset"
        )
    data_cfg = OmegaConf.create(ckpt.config["data"])
    if cache_root:
        data_cfg.cache_root = cache_root
    synthetic = data_cfg.get("root") in (None, "")
    root = synthetic_root(data_cfg) if synthetic else Path(str(data_cfg.root)).expanduser()
    cache_dir = default_cache_dir(data_cfg, root)
    try:
        source = CacheSource(cache_dir)
    except DataError:
        if synthetic:
            s = data_cfg.synthetic
            shape = [int(v) for v in s.shape]
            ensure_synthetic(root, int(s.num_cases), shape, int(s.seed), progress=progress)
        elif not root.is_dir():
            raise DataError(
                f"run {ckpt.run_dir}: neither its cache {cache_dir} nor its data.root {root} "
                "exists; pass data.cache_root=DIR (where the run's cache lives) or data.root=DIR"
            ) from None
        source = _cached(root, cache_dir, str(data_cfg.get("release", "auto")), workers, progress)
    split = read_split(ckpt.run_dir / "split.json", source.case_ids)
    cases = split[part]
    if not cases:
        raise DataError(f"run {ckpt.run_dir}: split.json has no {name} cases")
    where = f"{name} split of {ckpt.run_dir.name} ({len(cases)} cases, {root.name})"
    return EvalData(source, cases, where)


def dataset_data(
    root: str | Path,
    release: str = "auto",
    cache_dir: str | None = None,
    cache_root: str | None = None,
    workers: int = 0,
    progress: bool = True,
) -> EvalData:
    """All labelled cases under a BraTS dataset root (any layout), preprocessed on first use.

    The cache goes to ``cache_dir`` or, as training would put it, to
    ``<cache_root>/preprocessed/<root name>-<hash>`` (``cache_root`` default ``~/.cache/rirn``).

    Raises:
        ConfigError: ``root`` is not a folder.
        DataError: bad data (see :func:`rirn.data.cache.ensure_cache`).
    """
    from rirn.training.data import default_cache_dir

    root = Path(str(root)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root={root} does not exist or is not a folder")
    data_cfg = OmegaConf.create(
        {"cache_dir": cache_dir, "cache_root": cache_root or DEFAULT_CACHE_ROOT}
    )
    source = _cached(root, default_cache_dir(data_cfg, root), release, workers, progress)
    return EvalData(source, list(source.case_ids), f"all {len(source)} cases of {root}")
