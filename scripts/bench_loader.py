"""Training-crop throughput: NIfTI read on the fly vs the preprocessed memory-mapped cache.

Builds a dataset of ``--cases`` 240x240x155 cases in a temporary folder (symlinked copies of
the real sample case beside the checkout when present, else random int16 volumes written with
nibabel), preprocesses it once into a cache, then times ``TrainDataset`` crops through a
``DataLoader`` (batch size 1, shuffled) for each source and worker count::

    python scripts/bench_loader.py --cases 6 --workers 0 2 --crop 160 192 128

Prints one line per setting and a Markdown table (crops/s). The cache is read from the page
cache (just written), i.e. the warm-disk case.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rirn.data.cache import CacheSource, ensure_cache  # noqa: E402
from rirn.data.dataset import TrainDataset  # noqa: E402
from rirn.data.io import NiftiSource  # noqa: E402
from rirn.data.modalities import MODALITIES  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2021-sample"
SAMPLE_CASE = "BraTS2021_00006"


def build_root(root: Path, n: int, seed: int = 0) -> str:
    """Write ``n`` cases under ``root``; returns a description of the data."""
    sample = SAMPLE / SAMPLE_CASE
    for k in range(n):
        case_id = f"BraTS2021_{90000 + k:05d}"
        folder = root / case_id
        folder.mkdir(parents=True)
        if sample.is_dir():
            for src in sorted(sample.iterdir()):
                os.symlink(src, folder / src.name.replace(SAMPLE_CASE, case_id))
            continue
        rng = np.random.default_rng(seed + k)
        shape = (240, 240, 155)
        brain = np.zeros(shape, bool)
        brain[40:200, 30:210, 10:145] = True
        for m in MODALITIES:
            vol = np.where(brain, rng.integers(1, 3000, shape), 0).astype(np.int16)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(folder / f"{case_id}_{m}.nii.gz"))
        seg = np.zeros(shape, np.uint8)
        seg[100:140, 100:140, 60:100] = 2
        seg[110:130, 110:130, 70:90] = 4
        nib.save(nib.Nifti1Image(seg, np.eye(4)), str(folder / f"{case_id}_seg.nii.gz"))
    return "real sample case, symlinked" if sample.is_dir() else "synthetic random int16"


def crops_per_second(source, crop, workers: int, n: int, warmup: int) -> tuple[float, float]:
    """``(crops/s wall clock, CPU s/crop of this process)`` over ``n`` crops after warm-up.

    With workers the main process only receives batches, so its CPU time is not the cost of a
    crop; the wall-clock rate is the figure that matters for training.
    """
    ids = source.case_ids * ((n + warmup) // len(source.case_ids) + 1)
    dataset = TrainDataset(source, ids[: n + warmup], crop_size=crop)
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=workers)
    it = iter(loader)
    for _ in range(warmup):  # worker start-up and first reads are not steady state
        next(it)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        batch = next(it)
        assert batch["image"].shape[2:] == crop
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--crop", type=int, nargs=3, default=[160, 192, 128])
    parser.add_argument("--nifti-crops", type=int, default=8, help="timed crops, NIfTI source")
    parser.add_argument("--cache-crops", type=int, default=60, help="timed crops, cache source")
    args = parser.parse_args()
    torch.manual_seed(0)
    crop = tuple(args.crop)
    with tempfile.TemporaryDirectory(prefix="rirn-bench-") as tmp:
        root = Path(tmp) / "data"
        what = build_root(root, args.cases)
        start = time.perf_counter()
        cache = ensure_cache(root, Path(tmp) / "cache", progress=False)
        prep = time.perf_counter() - start
        print(f"data: {args.cases} cases, {what}; preprocess {prep / args.cases:.2f} s/case")
        load = os.getloadavg()[0]
        rows = []
        for name, source, n in (
            ("nifti (.nii.gz on the fly)", NiftiSource(root), args.nifti_crops),
            ("cache (memory-mapped .npy)", CacheSource(cache), args.cache_crops),
        ):
            for workers in args.workers:
                rate, cpu = crops_per_second(source, crop, workers, n, warmup=max(workers, 1))
                rows.append((name, workers, rate, cpu))
                print(f"{name:28s} workers={workers}: {rate:6.2f} crops/s", flush=True)
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{load:.1f} -> {os.getloadavg()[0]:.1f}; torch {torch.__version__}; "
        f"crop {'x'.join(map(str, crop))}, batch 1"
    )
    print("\n| source | DataLoader workers | crops/s | main-process CPU s/crop |")
    print("| --- | --- | --- | --- |")
    for name, workers, rate, cpu in rows:
        print(f"| {name} | {workers} | {rate:.2f} | {cpu:.3f} |")


if __name__ == "__main__":
    main()
