"""The co-training loop: a few readable hooks around :func:`rirn.training.steps.train_step`."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from rirn.data.modalities import channel_indices
from rirn.errors import RirnError
from rirn.labels import REGIONS
from rirn.metrics import dice
from rirn.training.checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state, unwrap
from rirn.training.data import DataBundle
from rirn.training.distributed import DistInfo, barrier, broadcast_object, gather_objects
from rirn.training.logs import RunLogger, summary_line, validation_picture
from rirn.training.nets import build_step_nets
from rirn.training.resume import check_resume
from rirn.training.setup import RunSettings, load_teacher_weights
from rirn.training.steps import TERMS, StepNets, distill_scale, train_step

log = logging.getLogger("rirn.train")


class NonFiniteLossError(RirnError):
    """A loss term became NaN/Inf; the message names the term and the step."""


class CoTrainer:
    """Teacher, student and discriminator trained together in one process (paper Sec. 3.2), or
    the teacher alone (``teacher.only``: stage one of a two-stage study)."""

    def __init__(
        self,
        cfg: DictConfig,
        settings: RunSettings,
        data: DataBundle,
        run_dir: Path,
        dist: DistInfo,
    ):
        self.cfg, self.settings, self.data, self.run_dir, self.dist = (
            cfg,
            settings,
            data,
            run_dir,
            dist,
        )
        self.device = settings.device
        self.student_channels = channel_indices(settings.modalities)
        self.student_index = torch.tensor(self.student_channels, device=self.device)
        # Per validation case: (teacher Dice row, its masks or None) of a frozen teacher.
        self._frozen_teacher: dict[int, tuple[dict, np.ndarray | None]] = {}
        self.max_epochs = int(cfg.trainer.max_epochs)
        self.ckpt_dir = run_dir / "checkpoints"
        self.epoch, self.best_metric, self.history, self.global_step = 0, -math.inf, [], 0
        self.nets = self._build_nets()
        # The network whose validation Dice picks best.pt: the student, or a lone teacher.
        self.selected = "student" if self.nets.student is not None else "teacher"
        self.schedulers = [
            self._poly(o) for o in (self.nets.opt_main, self.nets.opt_disc) if o is not None
        ]
        use_scaler = settings.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        self.logger = RunLogger(run_dir, dist.is_main, bool(cfg.logger.tensorboard))

    # ---------------------------------------------------------------- construction
    def _build_nets(self) -> StepNets:
        cfg = self.cfg
        ckpt = cfg.teacher.checkpoint
        return build_step_nets(
            cfg.model,
            cfg.loss,
            cfg.optim,
            None if cfg.teacher.get("only") else len(self.settings.modalities),
            self.device,
            load_teacher=(lambda t: load_teacher_weights(t, ckpt)) if ckpt else None,
            teacher_trainable=not cfg.teacher.freeze,
            channels_last=bool(cfg.trainer.channels_last),
            wrap=self._wrap,
        )

    def _wrap(self, module, trainable: bool):
        if self.dist.enabled and trainable:
            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DDP(module, device_ids=ids)
        if self.cfg.trainer.compile:
            module = torch.compile(module)
        return module

    def _poly(self, optimizer):
        power = float(self.cfg.optim.poly_power)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: max(0.0, 1.0 - e / self.max_epochs) ** power
        )

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        nets = self.nets
        return {
            "epoch": self.epoch,
            "student": unwrap(nets.student).state_dict() if nets.student is not None else None,
            "teacher": unwrap(nets.teacher).state_dict(),
            "discriminator": unwrap(nets.discriminator).state_dict()
            if nets.discriminator is not None
            else None,
            "optimizers": {
                "main": nets.opt_main.state_dict(),
                "disc": nets.opt_disc.state_dict() if nets.opt_disc else None,
            },
            "schedulers": [s.state_dict() for s in self.schedulers],
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": rng_state(),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "modalities": list(self.settings.modalities),
            "split": self.data.split,  # so a student of this teacher can avoid its train cases
            "release": self.data.release,
            "scheme": self.data.scheme,
            "best_metric": self.best_metric,
            "history": self.history,
            "global_step": self.global_step,
        }

    def load_state_dict(self, state: dict) -> None:
        nets = self.nets
        if (state.get("student") is None) != (nets.student is None):
            alone = state.get("student") is None
            raise RirnError(
                f"resume=true: {self.ckpt_dir / 'last.pt'} trained "
                f"{'the teacher alone' if alone else 'a student too'}; resume it with "
                f"teacher.only={str(alone).lower()}"
            )
        if nets.student is not None:
            unwrap(nets.student).load_state_dict(state["student"])
        unwrap(nets.teacher).load_state_dict(state["teacher"])
        if nets.discriminator is not None and state.get("discriminator"):
            unwrap(nets.discriminator).load_state_dict(state["discriminator"])
        nets.opt_main.load_state_dict(state["optimizers"]["main"])
        if nets.opt_disc is not None and state["optimizers"].get("disc"):
            nets.opt_disc.load_state_dict(state["optimizers"]["disc"])
        for sched, s in zip(self.schedulers, state["schedulers"], strict=False):
            sched.load_state_dict(s)
            # The stored lr belongs to the old schedule; trainer.max_epochs may have been raised
            # for the resumed run (lr would stay 0), so recompute it from the poly rule.
            for group, base, fn in zip(
                sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True
            ):
                group["lr"] = base * fn(sched.last_epoch)
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.dist.world_size:
            set_rng_state(ranks[self.dist.rank])  # DDP: this rank's own stream
        else:
            set_rng_state(state["rng"])
            if self.dist.enabled:  # another world size: keep the ranks' draws apart
                torch.manual_seed(int(self.cfg.seed) + self.dist.rank + 1000 * int(state["epoch"]))
        self.epoch, self.best_metric = int(state["epoch"]), float(state["best_metric"])
        self.history, self.global_step = list(state["history"]), int(state.get("global_step", 0))

    def save(self, name: str) -> None:
        """Write ``checkpoints/<name>`` from rank 0; every rank must call it, since the RNG
        states of all ranks go in (each rank draws its own dropout masks)."""
        rngs = gather_objects(rng_state(), self.dist) if self.dist.enabled else None
        if self.dist.is_main:
            state = self.state_dict()
            if rngs is not None:
                state["rng_ranks"] = rngs
            atomic_save(state, self.ckpt_dir / name)

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict:
        if self.cfg.resume:
            # On the CPU: the RNG states must be CPU tensors; the weights and the optimiser
            # state are copied to the networks' device as they are loaded.
            state = load_checkpoint(self.ckpt_dir / "last.pt", map_location="cpu")
            check_resume(state, self.cfg, self.settings.modalities)
            self.load_state_dict(state)
            log.info(f"resumed from {self.ckpt_dir / 'last.pt'} after epoch {self.epoch}")
            if self.dist.is_main:  # the other ranks write no history: they must not delete it
                self.logger.history_path.unlink(missing_ok=True)
            for row in self.history:
                self.logger.history(row)
            # What came after last.pt goes (its own last step, logged at global_step, stays).
            self.logger.start(purge_step=self.global_step + 1)
        else:
            earlier = self._start_over_earlier_run()
            self.logger.start(purge_step=0 if earlier else None)
        while self.epoch < self.max_epochs:
            t0 = time.time()
            lr = self.nets.opt_main.param_groups[0]["lr"]
            train = self.train_epoch()
            self.epoch += 1
            for sched in self.schedulers:
                sched.step()
            val = self.validate() if self._val_due() else None
            row = {"epoch": self.epoch, "step": self.global_step, "lr": lr}
            row.update({f"train/{k}": v for k, v in train.items()})
            row.update(val or {})
            row["seconds"] = round(time.time() - t0, 2)
            self.history.append(row)
            self._log_epoch(row, val)
            if val and val[f"{self.selected}/mean"] > self.best_metric:
                self.best_metric = val[f"{self.selected}/mean"]
                self.save("best.pt")
            self.save("last.pt")
            if self.dist.is_main:
                log.info(
                    summary_line(
                        self.epoch,
                        self.max_epochs,
                        train,
                        val,
                        lr,
                        row["seconds"],
                        self._val_scoring(),
                    )
                )
            barrier(self.dist)
        self.logger.close()
        return self.history[-1] if self.history else {}

    def _start_over_earlier_run(self) -> bool:
        """A run without ``resume=true`` in the folder of an earlier run trains from scratch
        over it. Its history goes now, so the two never mix in ``metrics.jsonl`` (nor in
        TensorBoard, where the caller hides the earlier events); its best.pt too, or
        ``rirn.evaluate`` would score the old network until this run's first validation.
        last.pt stays until this run's first epoch replaces it, so stopping at once and
        resuming still recovers the earlier run. Returns whether there was an earlier run."""
        last = self.ckpt_dir / "last.pt"
        if not self.dist.is_main or not (last.exists() or self.logger.history_path.exists()):
            return False
        log.warning(
            f"{self.run_dir} holds an earlier run; training from scratch over it (its "
            f"metrics.jsonl and best.pt removed, last.pt replaced after the first epoch). "
            f"To continue that run instead, stop now and pass resume=true."
        )
        self.logger.history_path.unlink(missing_ok=True)
        (self.ckpt_dir / "best.pt").unlink(missing_ok=True)
        return True

    def _val_due(self) -> bool:
        every = max(1, int(self.cfg.trainer.val_every))
        return self.epoch % every == 0 or self.epoch == self.max_epochs

    def train_epoch(self) -> dict[str, float]:
        for module in (self.nets.student, self.nets.discriminator):
            if module is not None:
                module.train()
        self.nets.teacher.train(self.nets.teacher_trainable)
        self.data.set_epoch(self.epoch)
        loader = self.data.train_loader
        bar = tqdm(
            loader,
            desc=f"epoch {self.epoch + 1}/{self.max_epochs}",
            disable=not (self.dist.is_main and self.cfg.trainer.progress),
            leave=False,
            dynamic_ncols=True,
        )
        pending, total, count = [], None, 0
        every = max(1, int(self.cfg.trainer.log_every_n_steps))
        loss_cfg = self.cfg.loss
        scale = distill_scale(
            self.epoch, int(loss_cfg.get("rampup_epochs", 0)), int(loss_cfg.get("start_epoch", 0))
        )
        for batch in bar:
            pending.append(
                train_step(
                    self.nets,
                    batch,
                    self.student_index,
                    self.cfg.loss,
                    self.device,
                    self.settings.amp_dtype,
                    self.scaler,
                    bool(self.cfg.trainer.channels_last),
                    scale,
                )
            )
            self.global_step += 1
            if len(pending) >= every:
                total, count = self._flush(pending, total, count, bar)
        if pending:
            total, count = self._flush(pending, total, count, bar)
        means = (total / max(count, 1)).tolist() if total is not None else [0.0] * len(TERMS)
        return dict(zip(TERMS, means, strict=True))

    def _flush(self, pending: list[torch.Tensor], total, count: int, bar) -> tuple:
        """Copy buffered step losses to the host (the only sync of the loop), check finiteness."""
        values = torch.stack(pending).cpu()
        first_step = self.global_step - len(pending) + 1
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            row, col = bad[0].tolist()
            raise NonFiniteLossError(
                f"non-finite {TERMS[col]} loss ({values[row, col].item()}) at epoch "
                f"{self.epoch + 1}, step {first_step + row}; stopping. The last good checkpoint "
                f"is {self.ckpt_dir / 'last.pt'} (try a lower optim.lr or trainer.precision=32)"
            )
        pending.clear()
        total = values.sum(0) if total is None else total + values.sum(0)
        last = dict(zip(TERMS, values[-1].tolist(), strict=True))
        bar.set_postfix({k: f"{v:.3f}" for k, v in last.items() if v}, refresh=False)
        self.logger.scalars({f"train_step/{k}": v for k, v in last.items()}, self.global_step)
        return total, count + len(values)

    # ---------------------------------------------------------------- validation
    def val_settings(self):
        """How validation predicts a case: ``python -m rirn.evaluate``'s defaults (Gaussian
        sliding window of the training crop over the brain box, overlap 0.5, threshold 0.5,
        ``postprocess.nested`` and ET post-processing ``postprocess.et_min_voxels``),
        so the Dice that picks ``best.pt`` is the Dice the evaluation then reports;
        ``trainer.val_inference=center_crop`` scores the paper's single centre window."""
        from omegaconf import OmegaConf

        from rirn.evaluation.settings import et_threshold_setting, nested_setting
        from rirn.inference import InferenceSettings

        return InferenceSettings(
            mode=str(self.cfg.trainer.val_inference),
            roi_size=self.settings.crop_size,
            amp_dtype=self.settings.amp_dtype,
            # postprocess.et_min_voxels: the same key and default as rirn.evaluate's
            et_min_voxels=et_threshold_setting(
                OmegaConf.select(self.cfg, "postprocess.et_min_voxels", default=None)
            ),
            nested=nested_setting(OmegaConf.select(self.cfg, "postprocess.nested", default=True)),
        )

    def _val_scoring(self) -> str:
        settings = self.val_settings()
        post = settings.describe_postprocess()
        return settings.describe() if post == "none" else f"{settings.describe()}, {post}"

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Dice WT/TC/ET of student and teacher (the teacher alone without a student) on this
        rank's share of the validation cases; results of all ranks are gathered so each case
        counts exactly once."""
        from rirn.inference import case_regions, predict_probs

        teacher = unwrap(self.nets.teacher).eval()
        student = unwrap(self.nets.student).eval() if self.nets.student is not None else None
        settings = self.val_settings()
        # A frozen teacher scores the same every time: score it at the first validation only
        # (half of a student-only run's validation time), keeping its masks for the picture.
        frozen = not self.nets.teacher_trainable
        rows, picture = [], None
        for k, item in enumerate(self.data.val_items()):
            image = torch.as_tensor(np.asarray(item["image"]))[None].to(self.device)
            target = np.asarray(item["target"]).astype(bool)
            cached = self._frozen_teacher.get(k) if frozen else None
            preds = {} if cached is None else {"teacher": cached[1]}
            for who, net, x in (
                ("teacher", None if cached else teacher, image),
                ("student", student, image[:, self.student_channels]),
            ):
                if net is not None:
                    probs = predict_probs(net, x, settings)
                    preds[who] = case_regions(probs, settings, item["meta"]["shape"])
            row = {} if cached is None else dict(cached[0])
            for who in preds:
                if who == "student" or cached is None:
                    row.update(
                        {
                            f"{who}/{r}": dice(preds[who][i], target[i])
                            for i, r in enumerate(REGIONS)
                        }
                    )
            if frozen and cached is None:
                picture_case = (
                    picture is None
                    and self.dist.is_main
                    and self.cfg.logger.log_images
                    and target[0].any()
                )
                teacher_row = {key: v for key, v in row.items() if key.startswith("teacher/")}
                self._frozen_teacher[k] = (teacher_row, preds["teacher"] if picture_case else None)
            rows.append(row)
            if (
                picture is None
                and self.dist.is_main
                and self.cfg.logger.log_images
                and target[0].any()
            ):
                x0 = item["image"][self.student_channels[0]]
                picture = validation_picture(
                    np.asarray(x0), target, preds["teacher"], preds.get("student")
                )
        rows = [r for part in gather_objects(rows, self.dist) for r in part]
        out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
        for who in ("student", "teacher"):
            if rows and f"{who}/WT" in out:
                out[f"{who}/mean"] = float(np.mean([out[f"{who}/{r}"] for r in REGIONS]))
        if picture is not None:
            self.logger.image("val/slice_input_gt_teacher_student", picture, self.global_step)
        return broadcast_object(out, self.dist)

    def _log_epoch(self, row: dict, val: dict | None) -> None:
        scalars = {k: v for k, v in row.items() if isinstance(v, float) and k not in ("seconds",)}
        scalars = {(k if "/" in k else f"train/{k}"): v for k, v in scalars.items()}
        scalars = {("val/" + k if val and k in val else k): v for k, v in scalars.items()}
        # At the optimiser step, as every event (RunLogger); train/epoch maps steps to epochs.
        self.logger.scalars({**scalars, "train/epoch": float(self.epoch)}, self.global_step)
        self.logger.history(row)
