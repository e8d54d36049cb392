"""Per-term loss values and gradient norms at the student's parameters, from a run's checkpoint.

    python scripts/probe_terms.py RUN_DIR [--checkpoint last.pt] [--batches 6]

Loads the run's networks, draws ``--batches`` training batches of its own split and crop size
(keyed crops of a fixed epoch, so two probes of one run see the same batches) and prints, for
the student's segmentation term and each enabled distillation term (CRR, CAR, ADV, KD, feature
KD): the mean loss value, the mean L2 norm of its *weighted* gradient over all student
parameters, and the ratio of that norm to the segmentation gradient's (median and range over
the batches). A ratio far above 1 means the term, not the segmentation loss, steers the student
under Adam; an exact 0 means the term sends no gradient (e.g. CAR on saturated, one-hot
relations).

Adam normalises each parameter by its own gradient history, so a term with a tiny *total*
gradient still steers the parameters where the segmentation gradient is tinier. The last
columns say where: ``steers`` is the share of student parameter elements at which the term's
weighted gradient is larger in magnitude than the segmentation term's (mean over batches), and
``most at`` the parameter tensor with the largest such share. ``--init`` probes the run's
networks with the *student* re-initialised (its weights at step 0: same seed, same code), the
state in which the first Adam steps are taken. Runs on CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from rirn.data.cache import CacheSource
from rirn.data.dataset import TrainDataset
from rirn.data.modalities import channel_indices
from rirn.training.data import default_cache_dir, synthetic_root
from rirn.training.nets import build_step_nets
from rirn.training.steps import compute_losses

#: The student's terms and the ``loss.weight`` key of each.
TERMS = {"seg_s": "seg", "crr": "crr", "car": "car", "adv": "adv", "kd": "kd", "feat": "feature"}


def probe(
    run_dir: Path, checkpoint: str = "last.pt", batches: int = 6, init: bool = False
) -> dict[str, dict]:
    """``{term: {"value", "grad_norm", "ratio_median", "ratio_min", "ratio_max", "steers",
    "most_at", "shares"}}`` for the student's segmentation term and each distillation term that
    is on (``shares``: per student parameter name, the share behind ``steers``)."""
    path = run_dir / "checkpoints" / checkpoint
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (not a rirn run folder?)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = OmegaConf.create(state["config"])
    modalities = state["modalities"]
    nets = build_step_nets(
        cfg.model, cfg.loss, cfg.optim, len(modalities), torch.device("cpu"), state=state
    )
    if init:  # the student as the run's seed built it, before any step
        torch.manual_seed(int(cfg.seed))
        fresh = build_step_nets(
            cfg.model, cfg.loss, cfg.optim, len(modalities), torch.device("cpu")
        )
        nets.student.load_state_dict(fresh.student.state_dict())
    nets.teacher.train()
    nets.student.train()
    root = Path(str(cfg.data.root)) if cfg.data.root else synthetic_root(cfg.data)
    source = CacheSource(default_cache_dir(cfg.data, root))
    split = json.loads((run_dir / "split.json").read_text())
    fg = float(cfg.data.get("fg_prob", 0.0))
    data = TrainDataset(source, split["train"], cfg.data.crop_size, 0.5, int(cfg.seed), fg)
    size = int(cfg.trainer.batch_size)
    names, params = zip(*nets.student.named_parameters(), strict=True)
    weights = cfg.loss.weight
    rows: dict[str, list[tuple[float, float]]] = {}
    grads_of: dict[str, list] = {}
    for b in range(batches):
        items = [data[(10**6, (b * size + j) % len(data))] for j in range(size)]
        image = torch.stack([it["image"] for it in items])
        target = torch.stack([it["target"] for it in items]).float()
        torch.manual_seed(b)
        terms, _, _ = compute_losses(nets, image, target, channel_indices(modalities), cfg.loss)
        for term, key in TERMS.items():
            if not terms[term].requires_grad:
                continue  # off in this run
            grads = torch.autograd.grad(
                float(weights.get(key, 1.0)) * terms[term],
                params,
                retain_graph=True,
                allow_unused=True,
            )
            grads = [
                torch.zeros_like(p) if g is None else g.float()
                for g, p in zip(grads, params, strict=True)
            ]
            norm = torch.sqrt(sum((g**2).sum() for g in grads))
            rows.setdefault(term, []).append((terms[term].item(), float(norm)))
            grads_of.setdefault(term, []).append(grads)
    seg = [n for _, n in rows["seg_s"]]
    out = {}
    for term, values in rows.items():
        ratios = [n / max(s, 1e-30) for (_, n), s in zip(values, seg, strict=True)]
        share = torch.zeros(len(params))  # per tensor: share of elements the term outweighs seg at
        for mine, theirs in zip(grads_of[term], grads_of["seg_s"], strict=True):
            for i, (g, h) in enumerate(zip(mine, theirs, strict=True)):
                share[i] += (g.abs() > h.abs()).float().mean() / len(values)
        sizes = torch.tensor([p.numel() for p in params], dtype=torch.float)
        out[term] = {
            "value": statistics.fmean(v for v, _ in values),
            "grad_norm": statistics.fmean(n for _, n in values),
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "steers": float((share * sizes).sum() / sizes.sum()),
            "most_at": f"{names[int(share.argmax())]} ({float(share.max()):.0%})",
            "shares": dict(zip(names, share.tolist(), strict=True)),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", default="last.pt")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--init", action="store_true", help="the student at step 0")
    args = parser.parse_args(argv)
    result = probe(args.run_dir, args.checkpoint, args.batches, args.init)
    print("| term | value | weighted grad norm | / seg grad (median, range) | steers | most at |")
    print("| --- | --- | --- | --- | --- | --- |")
    for term, r in result.items():
        if term == "seg_s":
            r = r | {"steers": float("nan"), "most_at": "-"}
        print(
            f"| {term} | {r['value']:.4g} | {r['grad_norm']:.3g} | {r['ratio_median']:.3g} "
            f"({r['ratio_min']:.3g}-{r['ratio_max']:.3g}) | {r['steers']:.1%} | {r['most_at']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
