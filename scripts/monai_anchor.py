"""A standard MONAI recipe trained on exactly a rirn run's data: the external reference point.

    python scripts/monai_anchor.py --run-dir outputs/t1ce/2026-01-01_10-00-00

Needs the dev extra (``pip install -e .[dev]``: monai; rirn itself never imports it). It is the
reference the README and the issue compare rirn's learning against: a rirn teacher (all four
modalities) or student (the run's ``modality``) far below it after as many steps on the same
cases points at rirn, not at the data.

Data: the run's cache, split and seed, found as ``python -m rirn.evaluate run_dir=RUN`` finds
them (its checkpoint's resolved config, ``rirn.evaluation.data.run_data``, ``split.json``):
z-scored brain-box arrays, modalities in ``flair, t1, t1ce, t2`` order, as rirn's nets see them.
Recipe, one network per ``--inputs`` set: ``SegResNet(spatial_dims=3, init_filters=16,
in_channels=<modalities>, out_channels=3, blocks_down=(1,2,2,4), blocks_up=(1,1,1))``, sigmoid
WT/TC/ET; ``DiceCELoss(sigmoid=True)``; ``--crop``^3 windows (48) centred on tumour (WT) or
background voxels 1:1 (``RandCropByPosNegLabel``-style); flips per axis p=0.5; Adam lr 1e-3,
poly ``(1 - step/N)^0.9``; batch 2; N = ``--steps`` (default: the run's). Scoring: MONAI
``sliding_window_inference(roi_size=crop, overlap=0.5, mode="gaussian")``, sigmoid > 0.5, Dice
by ``rirn.metrics.dice`` in the original volume on the run's validation cases, as rirn.evaluate,
with the same ET post-processing (``--et-min-voxels``, default ``auto`` as rirn.evaluate's
``postprocess.et_min_voxels``; ``none`` for the raw masks) and the same nesting of the masks
(``--no-nested``: each region as thresholded, MONAI's BraTS tutorial; default nested, as
rirn.evaluate's ``postprocess.nested``).
Writes ``OUT.json`` and ``OUT.md`` (``--out``, default ``RUN/monai_anchor``), with
``--save-predictions`` also ``OUT_predictions/<inputs>/<case>.npz`` (full-volume region bits);
shows rirn's teacher and student rows from ``RUN/eval/per_case.csv`` when it exists, with a
warning when its ``evaluation.json`` records another nesting or ET post-processing than the
anchor's (every ``eval/`` written before session 30 is un-nested) and the command that
re-scores it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

try:
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import SegResNet
    from monai.utils import set_determinism
except ImportError:
    raise SystemExit("scripts/monai_anchor.py needs monai: pip install -e .[dev]") from None

from rirn.data.dataset import EvalDataset, foreground_voxels
from rirn.data.modalities import MODALITIES, channel_indices, parse_modalities, subset_name
from rirn.data.split import read_split
from rirn.data.transforms import centred_crop_start, crop_pad, random_flip_axes, uncrop_to_original
from rirn.errors import RirnError
from rirn.evaluation.data import run_data
from rirn.evaluation.engine import rescore_hint
from rirn.evaluation.runs import open_checkpoint, require_checkpoint
from rirn.evaluation.settings import et_threshold_setting
from rirn.evaluation.summary import read_per_case_csv
from rirn.inference import InferenceSettings, case_regions
from rirn.labels import REGIONS, bits_to_regions, regions_to_bits
from rirn.metrics import dice

BATCH = 2
LR = 1e-3
RECIPE = (
    "MONAI SegResNet(init_filters=16, blocks_down=(1,2,2,4), blocks_up=(1,1,1)), "
    "DiceCELoss(sigmoid=True), {c}^3 crops pos:neg 1:1, flips p=0.5 per axis, "
    "Adam lr 1e-3 poly 0.9, batch 2; sliding window {c}^3 overlap 0.5 gaussian, sigmoid > 0.5"
)


def load_run(run_dir: Path) -> dict:
    """The run's data as ``rirn.evaluate`` sees it: ``source`` (CacheSource), ``train``/``val``
    case ids, student ``modalities``, ``seed`` and the resolved ``config`` (a plain dict)."""
    ckpt = open_checkpoint(require_checkpoint(run_dir, "last"))
    data = run_data(ckpt, progress=False)
    split = read_split(ckpt.run_dir / "split.json", data.source.case_ids)
    return {
        "source": data.source,
        "train": split["train"],
        "val": list(data.case_ids),
        "modalities": ckpt.modalities,
        "seed": int(ckpt.config["seed"]),
        "config": ckpt.config,
    }


def run_steps(run_dir: Path, config: dict, n_train: int) -> int:
    """Optimisation steps the run took: the last ``step`` of ``metrics.jsonl``, else
    ``max_epochs * ceil(n_train / batch_size)`` (one process)."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows and "step" in rows[-1]:
            return int(rows[-1]["step"])
    trainer = config["trainer"]
    return int(trainer["max_epochs"]) * math.ceil(n_train / int(trainer["batch_size"]))


def draw_window(bits, crop, rng: np.random.Generator, tumour: np.ndarray):
    """One pos/neg-balanced window of a case with region bits ``(*B)`` and WT voxels
    ``tumour (n, 3)`` (``n = 0``: background only). Returns ``(start (3,), centre (3,),
    positive)``: the start is shifted to lie inside the box where the crop fits (as MONAI's
    ``correct_crop_centers``); ``positive``: the centre was drawn from the tumour."""
    shape = np.asarray(bits.shape)
    positive = len(tumour) > 0 and rng.random() < 0.5
    if positive:
        centre = tumour[int(rng.integers(len(tumour)))]
    else:
        # Rejection keeps memory bounded (no list of millions of background voxels per case).
        for _ in range(1000):
            centre = rng.integers(0, shape)
            if bits[tuple(centre)] == 0:
                break
    centre = tuple(int(c) for c in centre)
    return centred_crop_start(bits.shape, crop, centre), centre, positive


def batches(source, case_ids, channels, crop, rng: np.random.Generator):
    """Endless training batches: ``image (2, len(channels), *crop)`` float32 and
    ``target (2, 3, *crop)`` float32 WT/TC/ET, cases in a fresh random order every epoch."""
    tumour: dict[str, np.ndarray] = {}
    queue: list[str] = []
    while True:
        images, targets = [], []
        for _ in range(BATCH):
            if not queue:
                queue = [case_ids[i] for i in rng.permutation(len(case_ids))]
            case = queue.pop()
            image, bits, _ = source.load(case)
            if case not in tumour:
                tumour[case] = foreground_voxels(bits)[0]
            start, _, _ = draw_window(bits, crop, rng, tumour[case])
            axes = random_flip_axes(rng, 0.5)
            images.append(crop_pad(image, start, crop, flip_axes=axes)[channels])
            targets.append(bits_to_regions(crop_pad(bits, start, crop, flip_axes=axes)))
        yield (
            torch.from_numpy(np.stack(images)),
            torch.from_numpy(np.stack(targets).astype(np.float32)),
        )


def train(source, case_ids, channels, steps, crop, seed, device, log_every=50, label=""):
    """Train one SegResNet on ``case_ids`` for ``steps`` steps; returns it in eval mode."""
    set_determinism(seed=seed)
    rng = np.random.default_rng(seed)  # same crops for every input set of one anchor run
    net = SegResNet(
        spatial_dims=3,
        init_filters=16,
        in_channels=len(channels),
        out_channels=3,
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
    ).to(device)
    # Verbatim from the issue. With 3 channels MONAI 1.6 takes the CE half as softmax
    # CrossEntropyLoss on multi-hot targets (BCE only for 1 channel); kept: it is the recipe.
    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1 - s / steps) ** 0.9)
    data = batches(source, case_ids, channels, crop, rng)
    net.train()
    t0, total = time.time(), 0.0
    for step in range(1, steps + 1):
        image, target = (t.to(device) for t in next(data))
        loss = loss_fn(net(image), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.item()
        if step % log_every == 0 or step == steps:
            n = step % log_every or log_every
            print(
                f"[{label}] step {step}/{steps} loss {total / n:.4f} "
                f"elapsed {time.time() - t0:.0f}s",
                flush=True,
            )
            total = 0.0
    return net.eval()


@torch.no_grad()
def predict(net, image: np.ndarray, crop, device) -> np.ndarray:
    """Region probabilities ``(3, *B)`` float32 of one box image ``(C, *B)``."""
    x = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)
    logits = sliding_window_inference(
        x, roi_size=crop, sw_batch_size=4, predictor=net, overlap=0.5, mode="gaussian"
    )
    return torch.sigmoid(logits[0].float()).cpu().numpy()


def score(
    nets: dict, source, case_ids, crop, device, pred_dir: Path | None, post: InferenceSettings
) -> list[dict]:
    """Dice per region of every network on every case, in the original volume (as
    ``rirn.evaluate``); ``nets`` maps an inputs label to ``(net, channel indices)``; ``post``
    gives the threshold and ET post-processing (``rirn.inference.case_regions``)."""
    rows = []
    dataset = EvalDataset(source, case_ids)
    for i in range(len(dataset)):
        item = dataset[i]
        meta, image = item["meta"], item["image"].numpy()
        gt = uncrop_to_original(item["target"].numpy().astype(bool), meta, fill=False)
        for label, (net, channels) in nets.items():
            probs = predict(net, image[channels], crop, device)
            pred = uncrop_to_original(case_regions(probs, post, meta["shape"]), meta, False)
            if pred_dir is not None:
                (pred_dir / label).mkdir(parents=True, exist_ok=True)
                np.savez_compressed(
                    pred_dir / label / f"{item['case_id']}.npz", bits=regions_to_bits(pred)
                )
            row = {"inputs": label, "case": item["case_id"]}
            row |= {r: dice(p, g) for r, p, g in zip(REGIONS, pred, gt, strict=True)}
            rows.append(row | {"mean": float(np.mean([row[r] for r in REGIONS]))})
    return rows


def mean_rows(per_case: list[dict], steps: int) -> list[dict]:
    """One summary row per inputs label: mean over cases of each region's Dice and of the
    per-case mean."""
    out = []
    for label in dict.fromkeys(r["inputs"] for r in per_case):
        rows = [r for r in per_case if r["inputs"] == label]
        row = {"model": "monai", "inputs": label, "steps": steps, "cases": len(rows)}
        out.append(row | {c: float(np.mean([r[c] for r in rows])) for c in (*REGIONS, "mean")})
    return out


def rirn_rows(run_dir: Path, val: list[str], steps: int) -> list[dict]:
    """rirn's teacher and student rows, as :func:`mean_rows`, from ``RUN/eval/per_case.csv``
    (``python -m rirn.evaluate run_dir=RUN``) restricted to ``val``; empty when absent."""
    path = run_dir / "eval" / "per_case.csv"
    if not path.is_file():
        return []
    found: dict[tuple[str, str], dict[str, dict]] = {}  # (model, subset) -> case -> region
    for r in read_per_case_csv(path):
        if r["case"] in val:
            cases = found.setdefault((r["model"], r["subset"]), {})
            cases.setdefault(r["case"], {})[r["region"]] = r["dice"]
    out = []
    for (model, subset), cases in sorted(found.items(), key=lambda kv: kv[0][0] != "teacher"):
        per_case = [d | {"mean": float(np.mean([d[x] for x in REGIONS]))} for d in cases.values()]
        inputs = "all" if subset == subset_name(MODALITIES) else subset
        row = {"model": f"rirn {model}", "inputs": inputs, "steps": steps, "cases": len(cases)}
        out.append(row | {c: float(np.mean([d[c] for d in per_case])) for c in (*REGIONS, "mean")})
    return out


def table(rows: list[dict], first: tuple[str, ...]) -> str:
    """A markdown table: the ``first`` columns, then WT, TC, ET, mean (3 decimals)."""
    cols = (*first, *REGIONS, "mean")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if c in (*REGIONS, "mean") else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="a python -m rirn.train run")
    parser.add_argument("--inputs", nargs="+", help="modality sets (default: all and the run's)")
    parser.add_argument("--steps", type=int, help="optimisation steps (default: the run's)")
    parser.add_argument("--seed", type=int, help="default: the run's seed")
    parser.add_argument("--crop", type=int, default=48, help="training window and ROI edge")
    parser.add_argument("--out", type=Path, help="output stem (default RUN/monai_anchor)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--save-predictions", action="store_true")
    parser.add_argument(
        "--et-min-voxels", default="auto", help="ET post-processing: auto (default), N or none"
    )
    parser.add_argument(
        "--nested",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score the nested masks of the label map (default, as rirn.evaluate)",
    )
    args = parser.parse_args(argv)
    if args.crop < 8 or args.crop % 8:
        raise SystemExit(f"error: --crop {args.crop} must be a positive multiple of 8 (SegResNet)")
    crop, device = (args.crop,) * 3, torch.device(args.device)
    try:
        run = load_run(args.run_dir.expanduser())
        subsets = [parse_modalities(s) for s in args.inputs or ["all", run["modalities"]]]
        et_min = et_threshold_setting(
            None if args.et_min_voxels.lower() == "none" else args.et_min_voxels
        )
    except RirnError as exc:
        raise SystemExit(f"error: {exc}") from None
    postprocess = InferenceSettings(
        "sliding_window", crop, et_min_voxels=et_min, nested=args.nested
    )
    run_dir = args.run_dir.expanduser()
    mixed = None  # rirn's rows scored otherwise than the anchor's: say so, with the fix
    if (run_dir / "eval" / "per_case.csv").is_file():
        evaluate = f"python -m rirn.evaluate run_dir={run_dir}"
        mixed = rescore_hint(run_dir / "eval", postprocess, evaluate)
        mixed = mixed and f"warning: rirn's rows are not scored as the anchor's: {mixed}"
    if mixed:
        print(mixed, flush=True)  # before the training, which it does not change
    steps = args.steps or run_steps(run_dir, run["config"], len(run["train"]))
    seed = run["seed"] if args.seed is None else args.seed
    out = args.out or run_dir / "monai_anchor"
    labels = {("all" if s == MODALITIES else subset_name(s)): s for s in subsets}
    print(
        f"anchor on {run_dir}: {len(run['train'])} train / {len(run['val'])} val cases, "
        f"cache {run['source'].cache_dir}, {steps} steps, seed {seed}, device {device}"
    )
    nets = {}
    for label, subset in labels.items():
        channels = channel_indices(subset)
        net = train(
            run["source"], run["train"], channels, steps, crop, seed, device, args.log_every, label
        )
        nets[label] = (net, channels)
    pred_dir = out.with_name(out.name + "_predictions") if args.save_predictions else None
    per_case = score(nets, run["source"], run["val"], crop, device, pred_dir, postprocess)
    rows = mean_rows(per_case, steps) + rirn_rows(run_dir, run["val"], steps)
    for row in rows[len(nets) :]:
        if row["cases"] != len(run["val"]):
            print(f"note: {row['model']} was evaluated on {row['cases']} of the validation cases")
    summary = table(rows, ("model", "inputs", "steps"))
    print(summary)
    if mixed:
        print(mixed)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "run_dir": str(run_dir.resolve()),
        "cache_dir": str(run["source"].cache_dir),
        "recipe": RECIPE.format(c=args.crop),
        "postprocess": postprocess.describe_postprocess(),
        "rirn_rows_warning": mixed,
        "steps": steps,
        "seed": seed,
        "crop": args.crop,
        "train_cases": run["train"],
        "val_cases": run["val"],
        "summary": rows,
        "per_case": per_case,
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    md = f"# MONAI anchor of {run_dir.name}\n\n{record['recipe']}; {steps} steps, seed {seed}.\n"
    md += f"Post-processing: {record['postprocess']}.\n"
    md += f"\n**{mixed}**\n" if mixed else ""
    md += f"\n{summary}\n\n## Per case\n\n{table(per_case, ('inputs', 'case'))}\n"
    out.with_suffix(".md").write_text(md)
    print(f"written: {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
