"""Run outputs a human reads: TensorBoard, the metrics history file and the validation picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rirn.labels import REGIONS


class RunLogger:
    """TensorBoard + ``metrics.jsonl``; every method is a no-op on ranks other than 0.

    Every TensorBoard event is logged at the optimiser step, so that one ``purge_step`` of
    :meth:`start` hides what a crashed run logged after its last checkpoint (or, at 0, all
    of an earlier run in the same folder)."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool):
        self.enabled = enabled
        self.history_path = run_dir / "metrics.jsonl"
        self.tb_dir = run_dir / "tb" if enabled and tensorboard else None
        self.writer = None

    def start(self, purge_step: int | None = None) -> None:
        """Open TensorBoard; events at steps ``>= purge_step`` already in ``tb/`` are hidden."""
        if self.tb_dir is not None and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.tb_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, rgb, step, dataformats="HWC")

    def history(self, row: dict) -> None:
        """Append one epoch row to ``metrics.jsonl``."""
        if self.enabled:
            with self.history_path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def validation_picture(
    image: np.ndarray, target: np.ndarray, pred_t: np.ndarray, pred_s: np.ndarray | None
):
    """Mid-tumour axial slice: input | ground truth | teacher | student, as one RGB image.

    Args:
        image: ``(X, Y, Z)`` float, the student's first modality.
        target, pred_t, pred_s: ``(3, X, Y, Z)`` bool WT/TC/ET masks (``pred_s`` ``None``:
            a run without a student, whose picture ends with the teacher).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    from rirn.viz import mid_tumour_slice, montage, normalize_slice, overlay

    z = mid_tumour_slice(target[0])
    gray = image[:, :, z]
    tiles = [np.repeat(normalize_slice(gray)[..., None], 3, axis=-1)]
    tiles += [overlay(gray, m[:, :, :, z]) for m in (target, pred_t, pred_s) if m is not None]
    return montage([tiles])


def summary_line(
    epoch: int,
    max_epochs: int,
    train: dict,
    val: dict | None,
    lr: float,
    secs: float,
    scoring: str = "",
) -> str:
    """One log line per epoch; ``scoring`` says how validation predicted (e.g. "sliding window
    32x32x32, overlap 0.5, Gaussian weights, threshold 0.5")."""
    parts = [f"epoch {epoch}/{max_epochs}", f"loss {train['total']:.4f}"]
    terms = ("seg_s", "crr", "car", "adv", "kd", "feat")
    parts += [f"{k} {train[k]:.4f}" for k in terms if train.get(k)]
    if val:
        for who in ("student", "teacher"):
            if f"{who}/WT" not in val:
                continue  # a run without a student
            dices = "/".join(f"{val[f'{who}/{r}']:.3f}" for r in REGIONS)
            parts.append(f"val {who} WT/TC/ET {dices}")
        if scoring:
            parts.append(f"val by {scoring}")
    parts += [f"lr {lr:.2e}", f"{secs:.0f}s"]
    return " | ".join(parts)
