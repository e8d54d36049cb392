"""How soft are a run's non-local relations, and how far apart are teacher and student?

For each validation case of a training run (its ``split.json``, read from the run's
preprocessed cache; ``--split train`` its training cases, ``--data-root DIR`` every labelled
case of another dataset, e.g. a held-out test set), a training-size window goes through the
checkpoint's teacher and student. The window is centred on the brain box (``--window centre``,
the default) or on the tumour (``--window tumour``: the centre of the ground truth's WT, the
box centre for a case without one). Averaged over cases this prints:

* ``row max``: mean over rows of ``max_j A_ij`` (``1/N`` = uniform, 1 = one-hot, saturated);
* ``entropy``: mean row entropy divided by ``log N`` (1 = uniform, 0 = one-hot);
* ``CAR``: :func:`rirn.losses.car_loss` between teacher and student (Eq. 7);
* ``CRR``: :func:`rirn.losses.crr_loss` between teacher and student (Eq. 5) as rirn's default
  RIRN student is trained with it (MF on, lambda 0.5, mean centres), whatever the run's own
  loss, so that a baseline and a RIRN student are measured alike; over labelled cases only
  (a window without two regions scores 0, as in training);
* ``Dice to teacher``: Dice of the student's thresholded output against the teacher's, mean
  over WT/TC/ET (1 where both are empty): how far the outputs, which ADV aligns, agree.

The relations are read as the run's CAR read them (``loss.car_normalize``,
``loss.car_temperature``; a run from before the options: the paper's ``softmax(q.k)``).
``--temperature T`` and ``--normalize`` / ``--no-normalize`` read them otherwise:
``softmax(q.k / T)`` or ``softmax(cos(q, k) / T)``, the way to choose a ``T`` at which the
trained teacher's rows are neither one-hot nor uniform.

Does a RIRN student end closer to its teacher than its baseline twin? Probe both with
``--window tumour`` on the same cases: the distillation terms work as losses if CRR, CAR and
``Dice to teacher`` of the RIRN run are the closer ones (docs/experiments.md, session 25).

::

    python scripts/probe_relation.py RUN_DIR [RUN_DIR ...] [--prefer last] [--temperature T]
        [--normalize | --no-normalize] [--window centre|tumour] [--split val|train]
        [--data-root DIR]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing rirn
    sys.path.insert(0, str(REPO))

from rirn.data.dataset import EvalDataset  # noqa: E402
from rirn.data.modalities import channel_indices  # noqa: E402
from rirn.data.transforms import center_crop_start, centred_crop_start, crop_pad  # noqa: E402
from rirn.errors import RirnError  # noqa: E402
from rirn.evaluation.data import dataset_data, run_data  # noqa: E402
from rirn.evaluation.runs import open_checkpoint, require_checkpoint  # noqa: E402
from rirn.losses import car_loss, crr_loss, relation  # noqa: E402
from rirn.losses.car import PAPER_CAR_RELATION  # noqa: E402
from rirn.metrics import dice  # noqa: E402
from rirn.training.nets import car_channels  # noqa: E402

WINDOWS = ("centre", "tumour")


def softness(q: torch.Tensor, k: torch.Tensor) -> tuple[float, float]:
    """(mean row max, mean row entropy / log N) of ``relation(q, k)``, ``q, k (B, C', N)``."""
    a = relation(q, k)
    entropy = -(a * a.clamp_min(1e-30).log()).sum(-1)
    return a.amax(-1).mean().item(), (entropy / math.log(a.shape[-1])).mean().item()


def _scored(out, temperature: float, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, k)`` of a network output as CAR scores them (car_normalize, car_temperature)."""
    q, k = out.query, out.key
    if normalize:
        q, k = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
    return q / temperature, k


def window_start(target: torch.Tensor | None, shape, size, window: str) -> tuple[int, ...]:
    """Start of the probe's window of ``size`` in a box of ``shape``: the box centre, or
    (``window="tumour"``) the rounded centre of mass of ``target[0]`` (WT, ``(3, *shape)``)
    when the case has any WT."""
    if window == "tumour" and target is not None and bool(target[0].any()):
        centre = [int(round(c)) for c in torch.nonzero(target[0]).float().mean(0).tolist()]
        return centred_crop_start(shape, size, centre)
    return center_crop_start(shape, size)


def output_agreement(logits_t: torch.Tensor, logits_s: torch.Tensor) -> float:
    """Mean over regions of the Dice of the student's thresholded output (``p > 0.5``, i.e.
    logit > 0) against the teacher's; ``(1, R, *S)`` logits, 1 where both are empty."""
    t, s = (logits_t[0] > 0).numpy(), (logits_s[0] > 0).numpy()
    return float(np.mean([dice(s[r], t[r]) for r in range(t.shape[0])]))


def _cases(ckpt, data_root: str | None, split: str):
    if data_root:
        return dataset_data(data_root, progress=False)
    return run_data(ckpt, progress=False, part=split)


@torch.no_grad()
def probe(
    run_dir: Path,
    prefer: str,
    temperature: float | None = None,
    normalize: bool | None = None,
    window: str = "centre",
    split: str = "val",
    data_root: str | None = None,
) -> dict[str, float]:
    """The averages listed in the module docstring for one run (see :func:`main`)."""
    if window not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
    ckpt = open_checkpoint(require_checkpoint(run_dir, prefer))
    cfg = ckpt.config
    data = _cases(ckpt, data_root, split)
    teacher, student = ckpt.network("teacher"), ckpt.network("student")
    loss_cfg = cfg.get("loss", {})
    if normalize is None:
        normalize = bool(loss_cfg.get("car_normalize", PAPER_CAR_RELATION[0]))
    if temperature is None:
        temperature = float(loss_cfg.get("car_temperature", PAPER_CAR_RELATION[1]))
    channels = car_channels(OmegaConf.create(cfg["model"]))
    size = ckpt.crop_size
    rows, crr = [], []
    for item in EvalDataset(data.source, data.case_ids):
        target = item["target"]
        start = window_start(target, item["image"].shape[1:], size, window)
        x = crop_pad(item["image"], start, size)[None]
        t = teacher(x)
        s = student(x[:, channel_indices(ckpt.modalities)])
        car = car_loss(
            t.query, t.key, s.query, s.key, channels, temperature=temperature, normalize=normalize
        )
        (tq, tk), (sq, sk) = (_scored(o, temperature, normalize) for o in (t, s))
        agree = output_agreement(t.logits, s.logits)
        rows.append([*softness(tq, tk), *softness(sq, sk), car.item(), agree])
        if target is not None:
            y = crop_pad(target, start, size)[None]
            crr.append(crr_loss(t.features, s.features, torch.sigmoid(t.logits), y).item())
    names = ["teacher row max", "teacher entropy", "student row max", "student entropy", "CAR"]
    means = np.mean(rows, axis=0).tolist()
    return dict(zip(names, means[:-1], strict=True)) | {
        "CRR": float(np.mean(crr)) if crr else float("nan"),
        "Dice to teacher": means[-1],
        "relation": f"{'cos' if normalize else 'dot'}/{temperature:g}",
        "epoch": ckpt.epoch,
        "N": t.query.shape[-1],
        "cases": len(rows),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--prefer", default="last", choices=["best", "last"])
    parser.add_argument("--temperature", type=float, help="CAR's T (default: the run's)")
    parser.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        help="cosine (or, with --no-normalize, dot-product) scores; default: the run's",
    )
    parser.add_argument("--window", default="centre", choices=WINDOWS)
    parser.add_argument("--split", default="val", help="the run's split part (val or train)")
    parser.add_argument("--data-root", help="every labelled case of this dataset instead")
    args = parser.parse_args(argv)
    if args.temperature is not None and not args.temperature > 0:
        sys.exit(f"error: --temperature must be > 0, got {args.temperature}")
    for run in args.runs:
        try:
            values = probe(
                run,
                args.prefer,
                args.temperature,
                args.normalize,
                window=args.window,
                split=args.split,
                data_root=args.data_root,
            )
        except RirnError as exc:  # a bad run folder: one line, as rirn's own commands
            sys.exit(f"error: {exc}")
        print(
            run,
            " | ".join(
                f"{k} {v:.4g}" if not isinstance(v, str) else f"{k} {v}" for k, v in values.items()
            ),
        )


if __name__ == "__main__":
    main()
