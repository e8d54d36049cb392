"""Data for a training run: synthetic data on first use, the preprocessed cache, the split and
the loaders. Rank 0 prepares files; the other ranks wait at a barrier and then read them."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from rirn.data.cache import CacheSource, ensure_cache
from rirn.data.dataset import (
    BalancedSampler,
    EpochKeySampler,
    EvalDataset,
    TrainDataset,
    phenotype_weights,
)
from rirn.data.split import make_split, read_split, validate_split, write_split
from rirn.data.synthetic import GENERATOR_VERSION, ensure_synthetic
from rirn.labels import REGIONS
from rirn.training.distributed import DistInfo, barrier
from rirn.training.setup import check_teacher_split, recorded_split

log = logging.getLogger("rirn.train")


@dataclass
class DataBundle:
    """Everything the loop needs from the data side."""

    train_loader: DataLoader
    sampler: EpochKeySampler
    val_dataset: EvalDataset
    val_indices: list[int]  # this rank's share of the validation cases
    split: dict
    release: str
    scheme: str

    def set_epoch(self, epoch: int) -> None:
        # Order and crops depend on (seed, epoch) only, so a resumed run sees the same batches.
        self.sampler.set_epoch(epoch)

    def val_items(self):
        for i in self.val_indices:
            yield self.val_dataset[i]


def synthetic_root(data_cfg) -> Path:
    s = data_cfg.synthetic
    shape = "x".join(str(int(v)) for v in s.shape)
    return (
        Path(str(data_cfg.cache_root)).expanduser()
        / "synthetic"
        / f"n{s.num_cases}-{shape}-seed{s.seed}-v{GENERATOR_VERSION}"
    )


def default_cache_dir(data_cfg, root: Path) -> Path:
    if data_cfg.cache_dir:
        return Path(str(data_cfg.cache_dir)).expanduser()
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
    return Path(str(data_cfg.cache_root)).expanduser() / "preprocessed" / f"{root.name}-{digest}"


def prepare_data(cfg, settings, run_dir: Path, dist: DistInfo) -> DataBundle:
    data_cfg = cfg.data
    if settings.data_root is None:
        root = synthetic_root(data_cfg)
        if dist.is_main:
            s = data_cfg.synthetic
            ensure_synthetic(
                root, int(s.num_cases), [int(v) for v in s.shape], int(s.seed), progress=True
            )
        barrier(dist)
    else:
        root = settings.data_root
    cache_dir = default_cache_dir(data_cfg, root)
    stratify = bool(data_cfg.get("stratify", False))
    balance = float(data_cfg.get("phenotype_balance", 0.0))
    if dist.is_main:
        ensure_cache(
            root,
            cache_dir,
            release=str(data_cfg.release),
            num_workers=int(data_cfg.preprocess_workers),
        )
        if stratify or balance:
            CacheSource(cache_dir).phenotypes()  # written once, before the other ranks read it
    barrier(dist)
    source = CacheSource(cache_dir)
    phenotypes = source.phenotypes() if stratify or balance else None
    split_path = run_dir / "split.json"
    teacher_ckpt = cfg.teacher.checkpoint
    last = run_dir / "checkpoints" / "last.pt"
    recorded = recorded_split(last, key="resume=true: checkpoint") if cfg.resume else None
    if recorded is not None:
        # A resumed run keeps the split its checkpoint trained on, checked against its teacher
        # when it started (split.json may be another run's: one started over this folder).
        split = validate_split(recorded, source.case_ids, where=f"split of {last}")
    elif cfg.resume and split_path.is_file():  # a checkpoint from before splits were recorded
        split = read_split(split_path, source.case_ids)
    else:
        allow = bool(cfg.teacher.get("allow_split_mismatch", False))
        # An explicit split that may overlap the teacher's needs nothing from the checkpoint.
        needed = teacher_ckpt and not (data_cfg.split_file and allow)
        from_teacher = recorded_split(teacher_ckpt) if needed else None
        if data_cfg.split_file:
            split = read_split(Path(str(data_cfg.split_file)).expanduser(), source.case_ids)
        elif from_teacher is not None:
            # A student of a trained teacher validates on cases that teacher never saw.
            split = validate_split(from_teacher, source.case_ids, where=f"split of {teacher_ckpt}")
        else:
            split = make_split(
                source.case_ids,
                seed=int(data_cfg.split_seed),
                val_fraction=float(data_cfg.val_fraction),
                strata=phenotypes if stratify else None,
            )
        check_teacher_split(teacher_ckpt, from_teacher, split, allow)
    if dist.is_main:
        write_split(split_path, split)
    if dist.is_main:
        log.info(
            f"data: {root} (cache {cache_dir}); "
            f"{len(split['train'])} train / {len(split['val'])} val cases"
            + (f"; {describe_phenotypes(split, phenotypes)}" if phenotypes else "")
        )
    seed = int(cfg.seed)
    train_ds = TrainDataset(
        source,
        split["train"],
        settings.crop_size,
        float(data_cfg.flip_prob),
        seed=seed,
        fg_prob=float(data_cfg.get("fg_prob", 0.0)),
        fg_regions=list(data_cfg.get("fg_regions", REGIONS)),
    )
    # Order from (seed, epoch) and crops from (seed, epoch, index): a resumed run trains on
    # exactly the batches the interrupted one would have, whatever the number of workers.
    weights = None
    if balance:
        weights = phenotype_weights([phenotypes[c] for c in split["train"]], balance)
    if weights is not None and np.ptp(weights) > 0:
        inner = BalancedSampler(weights, num_replicas=dist.world_size, rank=dist.rank, seed=seed)
    else:
        # One phenotype (or balance 0): every case once per epoch, as before.
        inner = DistributedSampler(
            train_ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=seed
        )
    sampler = EpochKeySampler(inner)
    workers = int(data_cfg.num_workers)
    loader = DataLoader(
        train_ds,
        batch_size=int(cfg.trainer.batch_size),
        sampler=sampler,
        # Its own generator: the loader's per-epoch worker seed draw then leaves the global
        # torch RNG (dropout; restored on resume) alone, persistent workers or not.
        generator=torch.Generator().manual_seed(seed),
        num_workers=workers,
        pin_memory=settings.device.type == "cuda" and bool(data_cfg.pin_memory),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        drop_last=False,
    )
    val_ds = EvalDataset(source, split["val"])
    indices = list(range(dist.rank, len(split["val"]), dist.world_size))
    return DataBundle(loader, sampler, val_ds, indices, split, source.release, source.scheme)


def describe_phenotypes(split: dict, phenotypes: dict[str, str]) -> str:
    """One log phrase: how many cases of each phenotype each part of the split holds."""
    parts = []
    for part in ("train", "val"):
        counts = Counter(phenotypes[c] for c in split[part])
        parts.append(f"{part} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return "phenotypes " + "; ".join(parts)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
