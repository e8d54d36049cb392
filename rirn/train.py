"""``python -m rirn.train modality=t1ce`` — co-train teacher, student and discriminator.

Everything is configured with Hydra (``configs/train.yaml``); see README for the common
overrides. Under ``torchrun --nproc_per_node=N -m rirn.train ...`` it runs DDP.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rirn.config import CONFIG_DIR
from rirn.errors import cli_errors

log = logging.getLogger("rirn.train")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Validate ``cfg``, prepare data and train; returns the last epoch's history row."""
    from rirn.training.distributed import barrier, cleanup, init_distributed
    from rirn.training.provision import ensure_teacher
    from rirn.training.setup import check_config

    settings = check_config(cfg, run_dir)  # every config error surfaces here, before heavy work
    ensure_teacher(cfg)  # a shared teacher a sweep trains once (teacher.train_if_missing)
    dist = init_distributed(settings.device.type)
    if dist.enabled and settings.device.type == "cuda":
        settings = dataclasses.replace(settings, device=torch.device("cuda", dist.local_rank))
    try:
        from rirn.training.data import prepare_data, seed_everything
        from rirn.training.engine import CoTrainer

        seed_everything(int(cfg.seed) + dist.rank)
        if settings.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(cfg.trainer.cudnn_benchmark)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        data = prepare_data(cfg, settings, run_dir, dist)
        trainer = CoTrainer(cfg, settings, data, run_dir, dist)
        if dist.is_main:
            who = (
                "the teacher alone (teacher.only)"
                if cfg.teacher.get("only")
                else f"student on {'+'.join(settings.modalities)}"
            )
            log.info(
                f"training {who} | device {settings.device} | "
                f"precision {settings.amp_dtype or 'fp32'} | crop {list(settings.crop_size)} | "
                f"{cfg.trainer.max_epochs} epochs | run dir {run_dir}"
            )
            if settings.device.type == "cpu" and settings.amp_dtype is not None:
                # Measured: a 32^3 smoke step takes ~48 s in fp16 against ~1 s in fp32 (2 cores).
                log.warning(
                    f"trainer.precision={cfg.trainer.precision} on CPU: autocast there is far "
                    "slower than fp32 (meant for tests of the mixed-precision path)"
                )
        last = trainer.fit()
        if dist.is_main:
            log.info(
                f"done. checkpoints: {run_dir / 'checkpoints'} | "
                f"history: {run_dir / 'metrics.jsonl'} | "
                f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}"
            )
        # All ranks reach the teardown together, with the DDP modules (which hold the process
        # group) gone: a rank tearing gloo down while its peer still ran aborted once in tests.
        del trainer
        barrier(dist)
        return last
    finally:
        cleanup(dist)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
@cli_errors
def main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    last = run(cfg, run_dir)
    # Returned for Hydra sweepers (e.g. Optuna): the student's last mean validation Dice (the
    # teacher's in a teacher.only run).
    return last.get("student/mean", last.get("teacher/mean"))


if __name__ == "__main__":
    main()
