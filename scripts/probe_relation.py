"""How soft are a run's non-local relations, and how far apart are teacher and student?

For each validation case of a training run (its ``split.json``, read from the run's
preprocessed cache), a centred training-size window goes through the checkpoint's teacher and
student; from their non-local embeddings this prints, averaged over cases:

* ``row max``: mean over rows of ``max_j A_ij`` (``1/N`` = uniform, 1 = one-hot, saturated);
* ``entropy``: mean row entropy divided by ``log N`` (1 = uniform, 0 = one-hot);
* ``CAR``: :func:`rirn.losses.car_loss` between teacher and student (Eq. 7).

The relations are read as the run's CAR read them (``loss.car_normalize``,
``loss.car_temperature``; a run from before the options: the paper's ``softmax(q.k)``).
``--temperature T`` and ``--normalize`` / ``--no-normalize`` read them otherwise:
``softmax(q.k / T)`` or ``softmax(cos(q, k) / T)``, the way to choose a ``T`` at which the
trained teacher's rows are neither one-hot nor uniform.

::

    python scripts/probe_relation.py RUN_DIR [RUN_DIR ...] [--prefer last] [--temperature T]
        [--normalize | --no-normalize]
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

from rirn.data.cache import CacheSource  # noqa: E402
from rirn.data.dataset import EvalDataset  # noqa: E402
from rirn.data.modalities import channel_indices  # noqa: E402
from rirn.data.split import read_split  # noqa: E402
from rirn.errors import RirnError  # noqa: E402
from rirn.evaluation.runs import open_checkpoint, require_checkpoint  # noqa: E402
from rirn.losses import car_loss, relation  # noqa: E402
from rirn.losses.car import PAPER_CAR_RELATION  # noqa: E402
from rirn.training.data import default_cache_dir, synthetic_root  # noqa: E402
from rirn.training.nets import car_channels  # noqa: E402


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


@torch.no_grad()
def probe(
    run_dir: Path, prefer: str, temperature: float | None = None, normalize: bool | None = None
) -> dict[str, float]:
    ckpt = open_checkpoint(require_checkpoint(run_dir, prefer))
    cfg = ckpt.config
    root = Path(cfg["data"]["root"]) if cfg["data"].get("root") else None
    data_cfg = OmegaConf.create(cfg["data"])
    source = CacheSource(default_cache_dir(data_cfg, root or synthetic_root(data_cfg)))
    split = read_split(run_dir / "split.json", source.case_ids)
    cases = EvalDataset(source, split["val"], crop_size=ckpt.crop_size)
    teacher, student = ckpt.network("teacher"), ckpt.network("student")
    loss_cfg = cfg.get("loss", {})
    if normalize is None:
        normalize = bool(loss_cfg.get("car_normalize", PAPER_CAR_RELATION[0]))
    if temperature is None:
        temperature = float(loss_cfg.get("car_temperature", PAPER_CAR_RELATION[1]))
    rows = []
    for item in cases:
        x = torch.as_tensor(np.asarray(item["image"]))[None]
        t = teacher(x)
        s = student(x[:, channel_indices(ckpt.modalities)])
        channels = car_channels(OmegaConf.create(cfg["model"]))
        car = car_loss(
            t.query, t.key, s.query, s.key, channels, temperature=temperature, normalize=normalize
        )
        (tq, tk), (sq, sk) = (_scored(o, temperature, normalize) for o in (t, s))
        rows.append([*softness(tq, tk), *softness(sq, sk), car.item()])
    names = ["teacher row max", "teacher entropy", "student row max", "student entropy", "CAR"]
    return dict(zip(names, np.mean(rows, axis=0).tolist(), strict=True)) | {
        "relation": f"{'cos' if normalize else 'dot'}/{temperature:g}",
        "epoch": ckpt.epoch,
        "N": t.query.shape[-1],
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
    args = parser.parse_args(argv)
    if args.temperature is not None and not args.temperature > 0:
        sys.exit(f"error: --temperature must be > 0, got {args.temperature}")
    for run in args.runs:
        try:
            values = probe(run, args.prefer, args.temperature, args.normalize)
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
