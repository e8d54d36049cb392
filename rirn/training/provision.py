"""Train a missing teacher once, for the students that share it (``teacher.train_if_missing``).

A two-stage benchmark (``configs/experiment/distill_benchmark.yaml``) trains, per seed, one
full-modality teacher and then several students against it, frozen, so that a baseline student
and a RIRN student differ only in the distillation terms. Each student job names the teacher
checkpoint it wants (``teacher.checkpoint=<dir>/checkpoints/last.pt``); the first job that finds
it missing trains it, in-process, into ``<dir>``, and the others wait. That works the same under
Hydra's sequential launcher and under a Slurm launcher where the jobs of one seed start together:
a lock file in ``<dir>`` says who trains, a ``.done`` marker says the teacher is finished (a
``last.pt`` alone may be a half-trained teacher of a job that crashed; the next job resumes it).
The training job touches its lock every 30 s; a lock that a waiting job has seen untouched for
10 min (its job was killed, on whatever host) or that a dead process of this host holds is
taken over by one of the waiting jobs, which resumes the teacher (:mod:`rirn.training.run_lock`).

The teacher run is an ordinary ``python -m rirn.train`` run of the same config with
``teacher.only=true`` (the teacher trains alone, exactly as in co-training: its gradient never
depends on the student) and the distillation terms off, and ``teacher.train_config`` merged on
top (e.g. more epochs for the teacher than for its students). Teacher runs of rirn before
``teacher.only`` trained a throwaway full-modality student beside it; the teacher is the same
network either way, and such an unfinished run resumes with its student.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rirn.errors import ConfigError
from rirn.evaluation.settings import LEGACY_POSTPROCESS
from rirn.training import run_lock
from rirn.training.checkpoint import peek_checkpoint
from rirn.training.steps import DISTILLATION_SWITCHES

log = logging.getLogger("rirn.train")

#: File in the teacher's run directory that marks a finished teacher.
DONE = ".done"
#: File in the teacher's run directory held by the job that trains it.
LOCK = ".train.lock"


def teacher_run_dir(checkpoint: str | Path) -> Path:
    """The run directory a missing teacher is trained into: ``<dir>`` of
    ``<dir>/checkpoints/last.pt`` (the teacher of a run's last epoch, not ``best.pt``, which is
    the best *student*).

    Raises:
        ConfigError: ``checkpoint`` is not of that form.
    """
    path = Path(str(checkpoint)).expanduser()
    if path.name != "last.pt" or path.parent.name != "checkpoints":
        raise ConfigError(
            f"teacher.train_if_missing=true needs teacher.checkpoint=<dir>/checkpoints/last.pt "
            f"(where the teacher is trained); got {checkpoint}"
        )
    return path.parent.parent


def teacher_ready(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` can be used as it is: it exists and, if :func:`ensure_teacher`
    made its run directory (``teacher.yaml`` there), that run finished (``.done``)."""
    path = Path(str(checkpoint)).expanduser()
    run_dir = path.parent.parent
    provisioned = (run_dir / "teacher.yaml").is_file()
    return path.is_file() and (not provisioned or (run_dir / DONE).is_file())


def teacher_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """The training config of the teacher of ``cfg``: the same config with the teacher
    trained alone (``teacher.only``) and the distillation terms off, no loaded teacher, resuming
    when ``run_dir`` holds an unfinished run (with its throwaway student if it has one: a run of
    rirn before ``teacher.only``; with the validation scoring it was trained with), and
    ``teacher.train_config`` merged.

    Raises:
        ConfigError: a ``teacher.train_config`` key that the training config does not have.
    """
    base = OmegaConf.to_container(cfg, resolve=True)
    t = OmegaConf.create(base)
    for key in DISTILLATION_SWITCHES:
        t.loss[key] = False
    t.modality = "all"
    t.teacher.checkpoint = None
    t.teacher.freeze = False
    t.teacher.train_if_missing = False
    t.teacher.train_config = {}
    last = run_dir / "checkpoints" / "last.pt"
    t.resume = last.is_file()
    state = _peek(last) if t.resume else {}
    t.teacher.only = state.get("student") is None
    if t.resume:
        # resume as it validated: a teacher run from before postprocess.nested scored un-nested
        stored = (state.get("config") or {}).get("postprocess") or {}
        for key, legacy in LEGACY_POSTPROCESS.items():
            t.postprocess[key] = stored.get(key, legacy)
    extra = cfg.teacher.get("train_config")
    extra = OmegaConf.to_container(extra, resolve=True) if extra is not None else {}
    unknown = [k for k in _leaves(extra) if OmegaConf.select(t, k, default=_MISSING) is _MISSING]
    if unknown:
        raise ConfigError(
            f"teacher.train_config.{unknown[0]} is not a training setting (config key {unknown[0]})"
        )
    return OmegaConf.merge(t, extra)


_MISSING = object()


def _peek(checkpoint: Path) -> dict:
    """A run's ``last.pt`` as a dict (memory-mapped), ``{}`` if it cannot be read (the resume
    itself then reports why)."""
    try:
        state = peek_checkpoint(checkpoint)
    except Exception:  # noqa: BLE001 - unreadable: the resume itself reports it
        return {}
    return state if isinstance(state, dict) else {}


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves of a nested dict, e.g. ``["trainer.max_epochs"]``."""
    out = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out += _leaves(value, path + ".") if isinstance(value, dict) and value else [path]
    return out


def ensure_teacher(
    cfg: DictConfig,
    poll_s: float = 10.0,
    stale_s: float | None = None,
    heartbeat_s: float | None = None,
) -> None:
    """Make ``cfg.teacher.checkpoint`` exist when ``cfg.teacher.train_if_missing`` is set:
    train it (see the module docstring) or wait for the job that does. No-op otherwise.

    Args:
        cfg: the student's training config.
        poll_s: how often a waiting job looks again.
        stale_s: a lock seen unchanged this long is a dead job's
            (:data:`rirn.training.run_lock.STALE_S`).
        heartbeat_s: how often the training job touches its lock
            (:data:`rirn.training.run_lock.HEARTBEAT_S`).

    Raises:
        ConfigError: the checkpoint path is not ``<dir>/checkpoints/last.pt``, or this is a
            multi-process (torchrun) job, which cannot train a teacher on the side.
    """
    if not cfg.teacher.get("train_if_missing") or not cfg.teacher.checkpoint:
        return
    checkpoint = cfg.teacher.checkpoint
    run_dir = teacher_run_dir(checkpoint)
    if teacher_ready(checkpoint):
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # set by torchrun
        raise ConfigError(
            f"teacher.checkpoint={checkpoint} is missing and teacher.train_if_missing=true "
            "cannot train it inside a multi-process job; train it first with one process "
            f"(the same command with hydra.run.dir={run_dir} teacher.only=true loss=baseline) "
            "or start this job without torchrun"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    stale_s = run_lock.STALE_S if stale_s is None else stale_s
    heartbeat_s = run_lock.HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    lock, watch, waited = run_dir / LOCK, run_lock.LockWatch(), False
    while not (run_dir / DONE).is_file():
        owner = run_lock.acquire(lock, watch, stale_s)
        if owner is None:
            if not waited:
                log.info(
                    f"waiting for the teacher another job ({run_lock.owner_of(lock)}) trains in "
                    f"{run_dir}; if that job dies, its lock {lock} is taken over once it has "
                    f"not been refreshed for {stale_s:g} s"
                )
                waited = True
            time.sleep(poll_s)
            continue
        beat = run_lock.Heartbeat(lock, owner, heartbeat_s)
        try:
            with beat:
                if not (run_dir / DONE).is_file():
                    _train(cfg, run_dir)
                    if run_lock.owner_of(lock) == owner:
                        (run_dir / DONE).write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                        log.info(f"teacher ready: {run_dir / 'checkpoints' / 'last.pt'}")
        except KeyboardInterrupt:
            if not beat.lost.is_set():
                raise
            log.warning(f"waiting for the job that took over the teacher in {run_dir}")
            waited = True
        finally:
            run_lock.release(lock, owner)


def _train(cfg: DictConfig, run_dir: Path) -> None:
    from rirn.train import run

    tcfg = teacher_config(cfg, run_dir)
    OmegaConf.save(tcfg, run_dir / "teacher.yaml")
    how = "resuming" if tcfg.resume else "training"
    log.info(f"{how} the shared teacher (seed {tcfg.seed}) in {run_dir}")
    run(tcfg, run_dir)
