"""``python -m rirn.evaluate``: Dice/HD95 tables of trained runs, in the layout of the paper.

Examples::

    python -m rirn.evaluate run_dir=outputs/t1ce/2026-01-01_10-00-00
    python -m rirn.evaluate run_dir=DIR inference.mode=center_crop postprocess.et_min_voxels=500
    python -m rirn.evaluate checkpoint=DIR/checkpoints/last.pt data.root=/data/BraTS2020
    python -m rirn.evaluate sweep_dir=multirun/2026-01-01_10-00-00 reuse=true figures=true
    python -m rirn.evaluate run_dir=DIR split=train   # the cases it trained on (fit vs held out)

Input (exactly one): ``run_dir`` (its ``checkpoints/best.pt``, else ``last.pt``; its
``split.json`` validation cases), ``checkpoint`` (a file; the split of the run folder around it),
or ``sweep_dir`` (every run folder of a Hydra multirun; runs without a checkpoint are listed as
missing). ``split=train`` scores the run's training cases instead of its validation cases;
``data.root=DIR`` evaluates on all cases of another dataset.

Output (``output_dir``, default ``<run_dir>/eval`` or ``<sweep_dir>/eval``; ``eval-train`` for
``split=train``, ``eval-<name>`` for ``data.root``): ``per_case.csv``, ``summary.csv``,
``summary.md``, ``summary.tex``, ``figures/`` (``figures=true``; for a sweep
``figures/<run>/``) and ``evaluation.json``. A sweep also writes
each run's own results into ``<run>/eval``, which ``reuse=true`` picks up next time when nothing
changed. See
:mod:`rirn.evaluation.engine` for how and where the metrics are computed.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig
from tqdm.auto import tqdm

from rirn.config import CONFIG_DIR
from rirn.errors import ConfigError, DataError, cli_errors
from rirn.evaluation.data import EvalData, dataset_data, run_data, split_part_name
from rirn.evaluation.engine import EvalOptions, evaluate_to, write_results
from rirn.evaluation.runs import (
    LoadedCheckpoint,
    find_runs,
    open_checkpoint,
    require_checkpoint,
)
from rirn.evaluation.settings import amp_dtype, inference_settings, resolve_device
from rirn.evaluation.summary import Problem
from rirn.inference import InferenceSettings

INPUTS: tuple[str, ...] = ("run_dir", "checkpoint", "sweep_dir")


def _settings(cfg: DictConfig, ckpt: LoadedCheckpoint, options: EvalOptions) -> InferenceSettings:
    return inference_settings(
        cfg.inference,
        cfg.postprocess.et_min_voxels,
        ckpt.crop_size,
        ckpt.config["model"],
        amp_dtype(options.device, bool(cfg.amp)),
        nested=cfg.postprocess.nested,
    )


def _output(cfg: DictConfig, base: Path, explicit: bool = True) -> Path:
    """``output_dir`` (when ``explicit``) or ``<base>/eval``: ``eval-<dataset name>`` when
    evaluating on ``data.root``, ``eval-train`` for the training split, so that no scoring
    overwrites another's (``reuse`` and rirn.report read ``eval/`` back)."""
    if explicit and cfg.output_dir:
        return Path(str(cfg.output_dir)).expanduser()
    root = cfg.data.root
    if root:
        return base / f"eval-{Path(str(root)).expanduser().name}"
    return base / ("eval" if cfg.split == "val" else f"eval-{cfg.split}")


def _options(cfg: DictConfig) -> EvalOptions:
    figures = int(cfg.figures_cases) if cfg.figures else 0
    if figures < 0:
        raise ConfigError(f"figures_cases={cfg.figures_cases} must be >= 0")
    return EvalOptions(
        device=resolve_device(cfg.device),
        teacher=bool(cfg.teacher),
        figures=figures,
        progress=bool(cfg.progress),
        reuse=bool(cfg.reuse),
    )


class _Data:
    """The cases of each checkpoint: the shared ``data.root`` dataset, or each run's split."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg.data
        self.split = str(cfg.split)
        self.progress = bool(cfg.progress)
        self.shared: EvalData | None = None

    def __call__(self, ckpt: LoadedCheckpoint) -> EvalData:
        c = self.cfg
        if not c.root:
            return run_data(ckpt, c.cache_root, int(c.num_workers), self.progress, self.split)
        if self.shared is None:
            self.shared = dataset_data(
                c.root, str(c.release), c.cache_dir, c.cache_root, int(c.num_workers), self.progress
            )
        return self.shared


def evaluate_one(cfg: DictConfig) -> Path:
    """Evaluate ``run_dir`` or ``checkpoint``; returns the output folder."""
    if cfg.run_dir:
        path = require_checkpoint(Path(str(cfg.run_dir)).expanduser(), str(cfg.prefer))
    else:
        path = Path(str(cfg.checkpoint)).expanduser()
        if not path.is_file():
            raise ConfigError(f"checkpoint={path} does not exist or is not a file")
    options = _options(cfg)
    ckpt = open_checkpoint(path)
    data = _Data(cfg)(ckpt)
    settings = _settings(cfg, ckpt, options)
    # A checkpoint outside a run folder gets <folder>/<stem>/eval next to it.
    base = ckpt.run_dir or ckpt.path.parent / ckpt.path.stem
    name = ckpt.run_dir.name if ckpt.run_dir else ckpt.path.stem
    out = _output(cfg, base)
    evaluate_to(out, ckpt, data, settings, options, name)
    return out


def evaluate_sweep(cfg: DictConfig) -> Path:
    """Evaluate every run of ``sweep_dir`` (each into its own ``eval`` folder, reused when
    ``reuse=true`` and current) and write the sweep's combined tables; returns the output folder.

    Raises:
        DataError: no run could be evaluated (the tables listing why are written first).
    """
    sweep = Path(str(cfg.sweep_dir)).expanduser()
    runs = find_runs(sweep, str(cfg.prefer))
    options = _options(cfg)
    data = _Data(cfg)
    rows: list[dict] = []
    problems: list[Problem] = []
    texts: set[tuple[str, str]] = set()
    out = _output(cfg, sweep)
    for entry in tqdm(runs, desc="runs", unit="run", disable=None if options.progress else True):
        if entry.checkpoint is None:
            problems.append(Problem(entry.name, entry.subset, "missing: no checkpoint"))
            continue
        try:
            ckpt = open_checkpoint(entry.checkpoint)
            settings = _settings(cfg, ckpt, options)
            run_rows = evaluate_to(
                _output(cfg, entry.path, explicit=False),
                ckpt,
                data(ckpt),
                settings,
                options,
                entry.name,
                out / "figures" / entry.name,
            )
        except DataError as exc:  # a bad run; a ConfigError concerns all of them and stops
            problems.append(Problem(entry.name, entry.subset, f"failed: {exc}"))
            continue
        rows += [{**r, "run": entry.name} for r in run_rows]
        texts.add((settings.describe(), settings.describe_postprocess()))
    inference, post = (" / ".join(sorted({t[i] for t in texts})) or "-" for i in (0, 1))
    runs_text = f"{len(runs) - len(problems)} of {len(runs)} evaluated"
    info = {
        "Sweep": str(sweep),
        "Runs": runs_text + (f", {len(problems)} without results" if problems else ""),
        "Data": data.shared.description
        if data.shared
        else f"{split_part_name(data.split)} split of each run",
        "Inference": inference,
        "Post-processing": post,
    }
    title = f"Evaluation of sweep {sweep.name}"
    summary = write_results(out, rows, info, title, (inference, post), problems)
    if not rows:
        raise DataError(f"no run of sweep_dir={sweep} could be evaluated; see {summary}")
    return out


def check_case_options(cfg: DictConfig) -> None:
    """Reject a bad ``prefer``/``split`` (or ``split=train`` with ``data.root``) in one line,
    before any checkpoint is opened; rirn.report shares these options.

    Raises:
        ConfigError: what is wrong and what the allowed values are.
    """
    if str(cfg.prefer) not in ("best", "last"):
        raise ConfigError(f"prefer={cfg.prefer!r} must be best or last")
    split_part_name(str(cfg.split))
    if cfg.data.root and cfg.split != "val":
        raise ConfigError(
            f"split={cfg.split} picks cases of the run's own split.json; data.root=DIR evaluates "
            "every case of another dataset: give one or the other"
        )


def run(cfg: DictConfig) -> Path:
    """Evaluate what ``cfg`` names (see the module docstring); returns the output folder."""
    given = [k for k in INPUTS if cfg.get(k)]
    if len(given) != 1:
        raise ConfigError(
            "give exactly one of run_dir=DIR, checkpoint=PATH or sweep_dir=DIR"
            + (f" (got {', '.join(given)})" if given else "")
        )
    check_case_options(cfg)
    out = evaluate_sweep(cfg) if cfg.sweep_dir else evaluate_one(cfg)
    print((out / "summary.md").read_text(), flush=True)
    print(f"evaluation written to {out} (summary.md, summary.csv, summary.tex, per_case.csv)")
    return out


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
@cli_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
