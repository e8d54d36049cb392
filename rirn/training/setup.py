"""Start-up checks: every configuration mistake fails here, before any heavy work, with one line
naming the key (raised as :class:`rirn.errors.ConfigError`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rirn.data.dataset import region_indices
from rirn.data.modalities import MODALITIES, parse_modalities
from rirn.errors import ConfigError
from rirn.labels import REGIONS
from rirn.training.checkpoint import peek_checkpoint

AGGREGATIONS = ("mean", "max", "min", "maxmin")
PRECISIONS = ("auto", "32", "bf16", "16")
VAL_INFERENCE = ("center_crop", "sliding_window")


@dataclass(frozen=True)
class RunSettings:
    """Facts derived once from the config."""

    modalities: tuple[str, ...]
    device: torch.device
    amp_dtype: torch.dtype | None  # None = fp32
    crop_size: tuple[int, int, int]
    data_root: Path | None  # None = synthetic data


def resolve_device(name: str) -> torch.device:
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"trainer.device={name!r} is not a device (auto, cpu, cuda, cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but CUDA is not available on this machine")
    return device


def resolve_precision(name, device: torch.device) -> torch.dtype | None:
    name = str(name)
    if name not in PRECISIONS:
        raise ConfigError(f"trainer.precision={name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    # bf16 and 16 also run on CPU (real autocast and a CPU GradScaler): slower than fp32 there,
    # but it lets the tests drive the mixed-precision paths of the trainer without a GPU.
    return {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[name]


def check_crop(crop, model_cfg) -> tuple[int, int, int]:
    try:
        crop = tuple(int(c) for c in crop)
    except (TypeError, ValueError):
        raise ConfigError(
            f"data.crop_size={crop} must be three integers, e.g. [160,192,128]"
        ) from None
    factor = 2 ** (len(model_cfg.widths) - 1)
    if model_cfg.get("nonlocal_scale"):
        factor = max(factor, int(model_cfg.nonlocal_scale))
    if len(crop) != 3 or min(crop) <= 0 or any(c % factor for c in crop):
        raise ConfigError(
            f"data.crop_size={list(crop)} cannot fit the network: need 3 positive sizes "
            f"divisible by {factor} (the U-Net downsamples {factor}x)"
        )
    return crop  # type: ignore[return-value]


def check_data_root(data_cfg) -> Path | None:
    if data_cfg.root in (None, ""):
        if data_cfg.name != "synthetic":
            raise ConfigError(f"data={data_cfg.name} needs data.root=DIR (the BraTS folder)")
        return None
    root = Path(str(data_cfg.root)).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root={root} does not exist or is not a directory")
    if not any(root.iterdir()):
        raise ConfigError(f"data.root={root} is empty")
    return root


def check_loss(loss_cfg) -> None:
    from rirn.losses import SEG_LOSSES

    seg = str(loss_cfg.get("seg", "dice"))
    if seg not in SEG_LOSSES:
        raise ConfigError(f"loss.seg={seg!r} is not one of {', '.join(SEG_LOSSES)}")
    if float(loss_cfg.get("dice_eps", 1.0)) <= 0:
        raise ConfigError(f"loss.dice_eps={loss_cfg.dice_eps} must be > 0 (0 gives NaN)")
    for key, value in (loss_cfg.get("seg_weight") or {}).items():
        if float(value) < 0:
            raise ConfigError(f"loss.seg_weight.{key}={value} must be >= 0")
    if loss_cfg.aggregation not in AGGREGATIONS:
        raise ConfigError(
            f"loss.aggregation={loss_cfg.aggregation!r} is not one of {', '.join(AGGREGATIONS)}"
        )
    if not 0.0 <= float(loss_cfg.threshold) <= 1.0:
        raise ConfigError(f"loss.threshold={loss_cfg.threshold} must be in [0, 1]")
    if not float(loss_cfg.get("kd_temperature", 1.0)) > 0:
        raise ConfigError(f"loss.kd_temperature={loss_cfg.kd_temperature} must be > 0")
    if not float(loss_cfg.get("car_temperature", 1.0)) > 0:
        raise ConfigError(f"loss.car_temperature={loss_cfg.car_temperature} must be > 0")
    if not isinstance(loss_cfg.get("car_normalize", False), bool):
        raise ConfigError(f"loss.car_normalize={loss_cfg.car_normalize} must be true or false")


def check_teacher(cfg: DictConfig) -> None:
    if cfg.teacher.get("only"):
        _check_teacher_alone(cfg)
    path = cfg.teacher.checkpoint
    if path in (None, ""):
        if cfg.teacher.freeze:
            raise ConfigError(
                "teacher.freeze=true needs teacher.checkpoint=PATH (a trained teacher)"
            )
        return
    if not Path(str(path)).expanduser().is_file():
        if cfg.teacher.get("train_if_missing"):
            from rirn.training.provision import teacher_run_dir

            teacher_run_dir(path)  # trained before the data is prepared (rirn.train.run)
            return
        raise ConfigError(
            f"teacher.checkpoint={path} does not exist (teacher.train_if_missing=true trains it)"
        )
    # Match it against the configured model now, before data preparation (can take minutes).
    from rirn.models import build_unet

    load_teacher_weights(build_unet(cfg.model, in_channels=4), path, model_cfg=cfg.model)


def _check_teacher_alone(cfg: DictConfig) -> None:
    """``teacher.only=true`` trains the teacher and nothing else: no frozen teacher, no
    distillation term (they all act on the student)."""
    from rirn.training.steps import DISTILLATION_SWITCHES

    if cfg.teacher.freeze:
        raise ConfigError("teacher.only=true trains the teacher: it cannot be teacher.freeze=true")
    on = [k for k in DISTILLATION_SWITCHES if cfg.loss.get(k, False)]
    if on:
        raise ConfigError(
            f"teacher.only=true trains no student, but loss.{on[0]}=true distils into one; "
            "add loss=baseline"
        )


def teacher_state_dict(path: str | Path) -> tuple[dict, dict | None]:
    """The teacher weights in ``path`` (a rirn checkpoint's ``teacher`` or a bare state dict)
    and the ``model`` config it was trained with (``None`` for a bare state dict)."""
    try:
        obj = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a config error here
        raise ConfigError(f"teacher.checkpoint={path} cannot be read: {exc}") from None
    model_cfg = None
    if isinstance(obj, dict) and "teacher" in obj:
        config = obj.get("config")
        model_cfg = config.get("model") if isinstance(config, dict) else None
        obj = obj["teacher"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"teacher.checkpoint={path} holds no teacher state dict")
    return obj, model_cfg


#: ``model`` keys that change what a trained U-Net computes without changing its weights'
#: names or shapes (those a mismatch of the state dict already catches, and the rest only
#: initialise or regularise training).
_FORWARD_KEYS: tuple[str, ...] = ("norm", "norm_groups", "nonlocal_scale", "nonlocal_scaled")


def _check_teacher_model(path, trained: dict | None, model_cfg) -> None:
    """Refuse a teacher trained with other forward settings than ``model_cfg`` (a group norm of
    8 groups loads into one of 4 without complaint, and computes something else)."""
    if trained is None:
        return
    current = OmegaConf.to_container(model_cfg, resolve=True) if model_cfg is not None else {}
    for key in _FORWARD_KEYS:
        if key in trained and key in current and trained[key] != current[key]:
            old, new = (
                str(v).lower() if isinstance(v, bool) else v for v in (trained[key], current[key])
            )
            raise ConfigError(
                f"teacher.checkpoint={path} was trained with model.{key}={old}, this run has "
                f"{new}; add model.{key}={old}"
            )


def recorded_split(path: str | Path, key: str = "teacher.checkpoint") -> dict | None:
    """The train/val split recorded in a rirn checkpoint, a teacher's or a resumed run's own
    (``None``: a bare state dict, or a checkpoint from before splits were recorded).

    Args:
        path: the checkpoint; ``key``: what the error message calls it.

    Raises:
        ConfigError: the recorded split is not ``{"train": [ids], "val": [ids]}``.
    """
    obj = peek_checkpoint(path)
    split = obj.get("split") if isinstance(obj, dict) else None
    if split is None:
        return None
    if not (
        isinstance(split, dict)
        and all(isinstance(split.get(k), list) for k in ("train", "val"))
        and all(isinstance(c, str) for k in ("train", "val") for c in split[k])
    ):
        raise ConfigError(
            f"{key}={path} records a malformed split (need lists of case ids "
            "under 'train' and 'val'); set data.split_file=FILE and "
            "teacher.allow_split_mismatch=true"
        )
    return split


def check_teacher_split(path, teacher: dict | None, split: dict, allow: bool) -> None:
    """Refuse a loaded teacher that trained on any of this run's validation cases.

    Raises:
        ConfigError: one line naming the overlap and the override that allows it.
    """
    if teacher is None or allow:
        return
    seen = sorted(set(teacher["train"]) & set(split["val"]))
    if seen:
        raise ConfigError(
            f"teacher.checkpoint={path} was trained on {len(seen)} of this run's validation "
            f"cases ({', '.join(seen[:3])}{', ...' if len(seen) > 3 else ''}); use its split "
            "(leave data.split_file unset) or set teacher.allow_split_mismatch=true"
        )


#: State-dict prefix of UNet3D's deep-supervision heads.
_DEEP_HEADS = "deep_heads."


def load_teacher_weights(model: torch.nn.Module, path: str | Path, model_cfg=None) -> None:
    """Load ``path`` into ``model``; a mismatch is a ConfigError naming the first bad key, or,
    given the ``model_cfg`` that built ``model``, the first forward setting (norm, non-local
    block) that differs from the one recorded in the checkpoint.

    Deep-supervision heads (``deep_heads.*``) may differ: they are training-only outputs, so a
    teacher trained without them is the same network at inference, and a frozen teacher never
    runs them. Missing ones keep their initialisation; extra ones are dropped.
    """
    state, trained = teacher_state_dict(path)
    if model_cfg is not None:
        _check_teacher_model(path, trained, model_cfg)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(_DEEP_HEADS)}
    missing = [k for k in own if k not in state and not k.startswith(_DEEP_HEADS)]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        what = (
            f"shape of {shapes[0]} is {tuple(state[shapes[0]].shape)}, "
            f"model needs {tuple(own[shapes[0]].shape)}"
            if shapes
            else f"missing key {missing[0]}"
            if missing
            else f"unexpected key {unexpected[0]}"
        )
        raise ConfigError(
            f"teacher.checkpoint={path} does not match the model ({what}); "
            "use the same model.* settings as the run that trained it"
        )
    model.load_state_dict(state, strict=False)


#: ``(key, smallest allowed value, whether it must be strictly greater)`` of the numbers that
#: otherwise fail deep inside torch with a traceback.
_NUMBERS: tuple[tuple[str, float, bool], ...] = (
    ("trainer.max_epochs", 1, False),
    ("trainer.batch_size", 1, False),
    ("data.num_workers", 0, False),
    ("optim.lr", 0, True),
    ("optim.disc_lr", 0, True),
    ("optim.weight_decay", 0, False),
)


def _check_numbers(cfg: DictConfig) -> None:
    for key, low, strict in _NUMBERS:
        value = OmegaConf.select(cfg, key)
        try:
            ok = not isinstance(value, bool) and (
                float(value) > low if strict else float(value) >= low
            )
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{key}={value} must be a number {'>' if strict else '>='} {low}")
    betas = OmegaConf.select(cfg, "optim.betas")
    try:
        ok = len(betas) == 2 and all(0 <= float(b) < 1 for b in betas)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"optim.betas={betas} must be two numbers in [0, 1), e.g. [0.9,0.999]")


def check_config(cfg: DictConfig, run_dir: Path) -> RunSettings:
    """Validate ``cfg`` and derive :class:`RunSettings`; raises ConfigError on the first problem."""
    modalities = parse_modalities(cfg.modality)
    if cfg.teacher.get("only"):
        modalities = MODALITIES  # no student: the run's networks see all four
    device = resolve_device(cfg.trainer.device)
    amp_dtype = resolve_precision(cfg.trainer.precision, device)
    crop = check_crop(cfg.data.crop_size, cfg.model)
    root = check_data_root(cfg.data)
    check_loss(cfg.loss)
    check_teacher(cfg)
    if cfg.trainer.val_inference not in VAL_INFERENCE:
        raise ConfigError(
            f"trainer.val_inference={cfg.trainer.val_inference!r} is not one of "
            f"{', '.join(VAL_INFERENCE)}"
        )
    head_lr_scale = cfg.optim.get("head_lr_scale", 1)
    if (
        isinstance(head_lr_scale, bool)
        or not isinstance(head_lr_scale, (int, float))
        or (head_lr_scale <= 0)
    ):
        raise ConfigError(f"optim.head_lr_scale={head_lr_scale!r} must be a number > 0")
    if not 0.0 <= float(cfg.data.get("fg_prob", 0.0)) <= 1.0:
        raise ConfigError(f"data.fg_prob={cfg.data.fg_prob} must be in [0, 1]")
    if not 0.0 <= float(cfg.data.get("phenotype_balance", 0.0)) <= 1.0:
        raise ConfigError(
            f"data.phenotype_balance={cfg.data.phenotype_balance} must be in [0, 1] "
            "(0: every case once per epoch, 0.5: square-root sampling, 1: phenotypes equally)"
        )
    try:
        region_indices(list(cfg.data.get("fg_regions", REGIONS)))
    except ValueError as err:
        raise ConfigError(f"data.{err}") from None
    _check_numbers(cfg)
    # The networks too (a bad model.* value), before data preparation: minutes on real data.
    from rirn.models import build_discriminator, build_unet

    build_unet(cfg.model, in_channels=4)
    if cfg.loss.adv:
        build_discriminator(cfg.model)
    # Checked here, not at the first validation epochs later.
    from rirn.evaluation.settings import et_threshold_setting, nested_setting

    et_threshold_setting(OmegaConf.select(cfg, "postprocess.et_min_voxels", default=None))
    nested_setting(OmegaConf.select(cfg, "postprocess.nested", default=True))
    if cfg.data.split_file and not Path(str(cfg.data.split_file)).expanduser().is_file():
        raise ConfigError(f"data.split_file={cfg.data.split_file} does not exist")
    if cfg.resume and not (run_dir / "checkpoints" / "last.pt").is_file():
        raise ConfigError(
            f"resume=true but {run_dir / 'checkpoints' / 'last.pt'} does not exist; "
            "pass hydra.run.dir=<the run directory to continue>"
        )
    return RunSettings(modalities, device, amp_dtype, crop, root)
