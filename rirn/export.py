"""``python -m rirn.export``: one deployment bundle of the students of a sweep.

Examples::

    python -m rirn.export sweep_dir=multirun/all_subsets output=bundles/rirn-brats2021
    python -m rirn.export checkpoints=[A/checkpoints/best.pt,B/checkpoints/best.pt] output=B
    python -m rirn.export sweep_dir=DIR output=BUNDLE teacher=true prefer=last overwrite=true

``sweep_dir`` contributes each run's ``checkpoints/best.pt`` (``prefer=last``: ``last.pt``
first; runs without a checkpoint are listed under ``skipped`` in the manifest) and
``checkpoints`` hand-picked files; at least one is needed, both may be given (the sweep's runs
come first). The bundle's format, the choice between two students of one subset and the atomic
write are :mod:`rirn.bundle`; ``python -m rirn.predict bundle=...`` uses it.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from rirn.bundle import export_bundle
from rirn.config import CONFIG_DIR
from rirn.errors import ConfigError, cli_errors
from rirn.evaluation.runs import find_runs

PREFER: tuple[str, ...] = ("best", "last")


def sources(cfg: DictConfig) -> tuple[list[Path], list[dict]]:
    """``(checkpoints, skipped)`` of ``sweep_dir`` then ``checkpoints``.

    Raises:
        ConfigError: neither given, a bad ``prefer``, or a listed checkpoint that is not a file.
        DataError: ``sweep_dir`` holds no run folder.
    """
    prefer = str(cfg.prefer)
    if prefer not in PREFER:
        raise ConfigError(f"prefer={prefer!r} is not one of {', '.join(PREFER)}")
    listed = list(cfg.checkpoints or [])
    if cfg.sweep_dir in (None, "") and not listed:
        raise ConfigError(
            "sweep_dir or checkpoints is required: python -m rirn.export sweep_dir=DIR "
            "output=BUNDLE (or checkpoints=[A.pt,B.pt])"
        )
    found: list[Path] = []
    skipped: list[dict] = []
    if cfg.sweep_dir not in (None, ""):
        for run in find_runs(str(cfg.sweep_dir), prefer):
            if run.checkpoint is None:
                skipped.append({"source": str(run.path), "reason": "no checkpoint"})
                print(f"skipped {run.name}: no checkpoint", flush=True)
            else:
                found.append(run.checkpoint)
    for item in listed:
        path = Path(str(item)).expanduser()
        if not path.is_file():
            raise ConfigError(f"checkpoints: {path} does not exist or is not a file")
        found.append(path)
    return found, skipped


def run(cfg: DictConfig) -> dict:
    """Export the bundle of ``cfg``; returns its manifest."""
    if OmegaConf.is_missing(cfg, "output") or cfg.output in (None, ""):
        raise ConfigError("output is required: python -m rirn.export sweep_dir=DIR output=BUNDLE")
    checkpoints, skipped = sources(cfg)
    return export_bundle(
        checkpoints,
        Path(str(cfg.output)),
        teacher=bool(cfg.teacher),
        overwrite=bool(cfg.overwrite),
        skipped=skipped,
    )


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
@cli_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
