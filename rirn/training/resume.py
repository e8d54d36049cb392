"""What ``resume=true`` may and may not change: a resumed run continues the run that trained,
or refuses with one line naming the setting and the override that resumes it as trained."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from rirn.config import override_value
from rirn.errors import ConfigError
from rirn.evaluation.settings import LEGACY_POSTPROCESS, et_threshold_setting, nested_setting

#: What a ``loss`` key that a checkpoint's config lacks meant when that run trained: the options
#: added since (``.get`` defaults of :func:`rirn.training.steps.compute_losses`).
LEGACY_LOSS: dict[str, object] = {
    "kd": False,
    "feature": False,
    "kd_temperature": 2.0,
    "feature_norm": False,
    "car_normalize": False,
    "car_temperature": 1.0,
    "weight.kd": 1.0,
    "weight.feature": 1.0,
}


def flatten_config(tree, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (a plain nested dict); lists become tuples, so that
    values are hashable and compare by content."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flatten_config(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def _refuse_changes(group: str, what: str, old: dict, new: dict) -> None:
    changed = sorted(k for k in new if k in old and old[k] != new[k])
    if changed:
        keep = " ".join(f"{group}.{k}={override_value(old[k])}" for k in changed)
        raise ConfigError(
            f"resume=true would change the {what} the run trained with ({', '.join(changed)}); "
            f"add {keep} to resume it as trained, or start a new run"
        )


def check_resume_loss(stored: dict, current) -> None:
    """Refuse to resume a run under other ``loss`` settings than it trained with (a default
    that changed between rirn versions would otherwise switch the method mid-run, silently).

    Args:
        stored: the checkpoint's ``config["loss"]`` (a plain dict).
        current: this run's ``cfg.loss``.

    Raises:
        ConfigError: one line with the differing keys and the overrides that resume as trained.
    """
    new = flatten_config(OmegaConf.to_container(current, resolve=True))
    _refuse_changes("loss", "loss", LEGACY_LOSS | flatten_config(stored), new)


#: ``optim`` keys added since the first checkpoints, with the value older runs trained with.
RESUME_OPTIM: dict[str, object] = {"head_lr_scale": 1.0}
#: ``optim`` keys a resumed run must keep: ``head_lr_scale`` decides the parameter groups of
#: the stored Adam state, and that state restores lr, betas and weight decay (a new value would
#: be ignored, silently). ``poly_power`` (the schedule is rebuilt) and ``fused`` may change.
FIXED_OPTIM: tuple[str, ...] = ("head_lr_scale", "lr", "disc_lr", "betas", "weight_decay")


def check_resume_optim(stored: dict, current) -> None:
    """:func:`check_resume_loss` for the ``optim`` keys of :data:`FIXED_OPTIM` (``stored``:
    the checkpoint's ``config["optim"]``; ``current``: this run's ``cfg.optim``). A key that
    the checkpoint lacks reads as its :data:`RESUME_OPTIM` value, or is not compared."""

    def values(tree) -> dict:
        tree = tree if isinstance(tree, dict) else OmegaConf.to_container(tree, resolve=True)
        out = {k: tree.get(k, RESUME_OPTIM.get(k)) for k in FIXED_OPTIM}
        return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items() if v is not None}

    _refuse_changes("optim", "optimiser settings", values(stored), values(current))


def check_resume_networks(state: dict, cfg: DictConfig, modalities: tuple[str, ...]) -> None:
    """Refuse to resume with other networks than the run trained: another student subset
    (``modality``), ``model.*`` settings, or teacher set-up (``teacher.freeze``/``only``).
    Without this a new ``modality`` would go on training the stored student on other inputs.

    Args:
        state: the checkpoint (its ``modalities`` and ``config``).
        cfg: this run's config; ``modalities``: its student subset.

    Raises:
        ConfigError: one line naming the first differing setting and the override that
            resumes the run as trained.
    """
    stored = list(state.get("modalities") or [])
    if stored and state.get("student") is not None and stored != list(modalities):
        raise ConfigError(
            f"resume=true would change the student's modalities ({'+'.join(stored)} -> "
            f"{'+'.join(modalities)}); add modality={'+'.join(stored)} to resume it as trained, "
            "or start a new run"
        )
    old, current = state["config"], OmegaConf.to_container(cfg, resolve=True)
    _refuse_changes(
        "model", "networks", flatten_config(old["model"]), flatten_config(current["model"])
    )
    teacher = {k: old.get("teacher", {}).get(k) for k in ("freeze", "only")}
    teacher = {k: v for k, v in teacher.items() if v is not None}
    _refuse_changes("teacher", "teacher set-up", teacher, flatten_config(current["teacher"]))


def check_resume_scoring(stored: dict, current) -> None:
    """Refuse to resume a run whose validation would score otherwise than it did: the stored
    ``best_metric``, which picks ``best.pt``, came from that scoring, and a resumed run
    compares each new epoch with it (a run from before ``postprocess.nested`` scored un-nested
    masks; the default is now nested).

    Args:
        stored: the checkpoint's ``config["postprocess"]`` (a plain dict; ``{}`` if absent).
        current: this run's ``cfg.postprocess`` (a missing key reads as the trainer's: no
            post-processing, nested).

    Raises:
        ConfigError: one line with the differing keys and the overrides that resume as trained.
    """

    def values(tree) -> dict:
        tree = {} if tree is None else tree
        tree = tree if isinstance(tree, dict) else OmegaConf.to_container(tree, resolve=True)
        return {
            "et_min_voxels": et_threshold_setting(tree.get("et_min_voxels")),
            "nested": nested_setting(tree.get("nested", True)),
        }

    old = LEGACY_POSTPROCESS | {k: v for k, v in (stored or {}).items() if k in LEGACY_POSTPROCESS}
    _refuse_changes(
        "postprocess", "validation scoring (it picks best.pt)", values(old), values(current)
    )


def check_resume(state: dict, cfg: DictConfig, modalities: tuple[str, ...]) -> None:
    """All of the checks above, for ``resume=true`` from the checkpoint ``state``."""
    check_resume_networks(state, cfg, modalities)
    check_resume_loss(state["config"]["loss"], cfg.loss)
    check_resume_optim(state["config"].get("optim", {}), cfg.optim)
    check_resume_scoring(state["config"].get("postprocess") or {}, cfg.get("postprocess"))
