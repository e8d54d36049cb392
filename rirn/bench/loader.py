"""Training-crop throughput of the real data path: :class:`rirn.data.dataset.TrainDataset` in a
``DataLoader`` (batch 1, as the trainer), reading either the preprocessed memory-mapped cache
(:class:`rirn.data.cache.CacheSource`) or the ``.nii.gz`` files on the fly
(:class:`rirn.data.io.NiftiSource`), for several worker counts.

The data are synthetic BraTS-like cases (:mod:`rirn.data.synthetic`), generated and
preprocessed once under ``<cache_root>/benchmark/`` and reused by later runs. The cache has just
been written or read, so it is served from the page cache: the warm-disk figure.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from rirn.bench.common import fail_soft, log
from rirn.data.cache import CacheSource, ensure_cache
from rirn.data.dataset import TrainDataset
from rirn.data.io import NiftiSource
from rirn.data.synthetic import ensure_synthetic

__all__ = ["crops_per_second", "loader_section", "prepare_synthetic"]


def prepare_synthetic(
    cache_root: str | Path, num_cases: int, shape, seed: int = 0, workers: int = 0
) -> tuple[Path, Path]:
    """``(nifti_root, cache_dir)`` of ``num_cases`` synthetic cases of ``shape``, reused when
    already there (both steps skip finished cases)."""
    base = Path(cache_root).expanduser() / "benchmark"
    tag = f"n{num_cases}-{'x'.join(str(int(s)) for s in shape)}-seed{seed}"
    root = ensure_synthetic(base / f"synthetic-{tag}", num_cases, [int(s) for s in shape], seed)
    cache = ensure_cache(root, base / f"cache-{tag}", num_workers=workers)
    return root, cache


def crops_per_second(
    source, crop, workers: int, crops: int, warmup: int | None = None, pin_memory: bool = False
) -> dict:
    """Wall-clock crops/s of ``TrainDataset(source)`` through a ``DataLoader``.

    Args:
        source: a ``CacheSource`` or ``NiftiSource``.
        crop: ``(X, Y, Z)`` training crop.
        workers: ``DataLoader`` worker processes (0: in this process).
        crops: timed crops (batch size 1), drawn with replacement from the cases.
        warmup: crops fetched before timing (default ``max(2 * workers, 1)``: worker start-up
            and their first burst of batches are not steady state).
        pin_memory: as the trainer on CUDA.

    Returns:
        ``{"crops_per_s", "mb_per_crop", "s_per_crop", "crops", "warmup"}`` (``mb_per_crop``:
        bytes of one batch's tensors, which cross from the workers through shared memory).
    """
    warmup = max(2 * workers, 1) if warmup is None else warmup
    dataset = TrainDataset(source, crop_size=crop, flip_prob=0.5)
    sampler = RandomSampler(dataset, replacement=True, num_samples=crops + warmup)
    loader = DataLoader(
        dataset,
        batch_size=1,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
    )
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(crops):
        batch = next(it)
    elapsed = time.perf_counter() - start
    if tuple(batch["image"].shape[2:]) != tuple(crop):
        raise RuntimeError(f"loader gave crops of {tuple(batch['image'].shape)}, expected {crop}")
    del it  # shuts the workers down before the next setting starts its own
    nbytes = sum(t.numel() * t.element_size() for t in batch.values() if torch.is_tensor(t))
    return {
        "crops_per_s": round(crops / elapsed, 3),
        "mb_per_crop": round(nbytes / 1e6, 1),
        "s_per_crop": round(elapsed / crops, 4),
        "crops": crops,
        "warmup": warmup,
    }


def loader_section(
    cache_root,
    num_cases: int,
    shape,
    crop,
    workers_list,
    cache_crops: int,
    nifti_crops: int,
    device: torch.device,
    seed: int = 0,
    preprocess_workers: int = 0,
    pin_memory: bool | None = None,
) -> dict:
    """Every (source, workers) pair, fail-soft. Returns ``{"rows": [...], "best_cache": row}``
    and the data description (``volume``, ``cases``, ``crop``, ``prepare_s``, ``note``).
    ``pin_memory=None``: pinned batches on CUDA, as the trainer."""
    pin = device.type == "cuda" if pin_memory is None else bool(pin_memory)
    start = time.perf_counter()
    log(f"loader: preparing {num_cases} synthetic case(s) of {'x'.join(map(str, shape))}")
    root, cache = prepare_synthetic(cache_root, num_cases, shape, seed, preprocess_workers)
    prepare_s = time.perf_counter() - start
    rows = []
    for name, source, crops in (
        ("cache", CacheSource(cache), cache_crops),
        ("nifti", NiftiSource(root), nifti_crops),
    ):
        for workers in workers_list:
            log(f"loader {name} workers={workers}: {crops} crops")
            row = {"source": name, "workers": int(workers), "status": "ok"}
            row.update(
                fail_soft(
                    f"loader {name} workers={workers}",
                    lambda s=source, w=int(workers), n=crops: crops_per_second(
                        s, crop, w, n, pin_memory=pin
                    ),
                    device,
                )
            )
            rows.append(row)
    ok = [r for r in rows if r["source"] == "cache" and r["status"] == "ok"]
    return {
        "volume": [int(s) for s in shape],
        "cases": num_cases,
        "crop": [int(c) for c in crop],
        "data_dir": str(root.parent),
        "prepare_s": round(prepare_s, 1),
        "pin_memory": pin,
        "note": "the cache is read from the page cache (warm disk)",
        "rows": rows,
        "best_cache": max(ok, key=lambda r: r["crops_per_s"]) if ok else None,
    }
