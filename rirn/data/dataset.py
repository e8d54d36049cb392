"""Torch datasets: random training crops and full brain-box volumes for evaluation.

Both read from a *source*, :class:`~rirn.data.cache.CacheSource` (memory-mapped cache, fast) or
:class:`~rirn.data.io.NiftiSource` (NIfTI on the fly), which give identical arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from rirn.data.transforms import (
    center_crop_start,
    centred_crop_start,
    crop_pad,
    random_crop_start,
    random_flip_axes,
    uncrop_to_original,
)
from rirn.errors import DataError
from rirn.labels import REGIONS, bits_to_regions

__all__ = [
    "BalancedSampler",
    "CaseSource",
    "EpochKeySampler",
    "EvalDataset",
    "TrainDataset",
    "foreground_voxels",
    "phenotype_weights",
    "region_indices",
    "eval_collate",
    "uncrop_to_original",
]

#: Training crop of the paper / ACN, voxels (X, Y, Z).
DEFAULT_CROP: tuple[int, int, int] = (160, 192, 128)

#: Tumour voxels kept per region and case as foreground crop centres (nnU-Net keeps 10,000 per
#: class): a fixed subsample, so the memory per case is bounded whatever the tumour size.
FOREGROUND_SAMPLES: int = 10_000


def foreground_voxels(bits: np.ndarray, max_per_region: int = FOREGROUND_SAMPLES) -> list:
    """Coordinates of each region's voxels (WT, TC, ET), at most ``max_per_region`` each.

    Args:
        bits: region-bit map ``(*S)`` uint8 (:mod:`rirn.labels`).
        max_per_region: subsample size; the subsample is a pure function of ``bits``.

    Returns:
        one int32 array ``(n_r, 3)`` per region, ``n_r = 0`` for a region the case lacks.
    """
    bits = np.asarray(bits)
    rng = np.random.default_rng(0)
    out = []
    for r in range(3):
        coords = np.argwhere((bits >> r) & 1).astype(np.int32)
        if len(coords) > max_per_region:
            coords = coords[np.sort(rng.choice(len(coords), max_per_region, replace=False))]
        out.append(coords)
    return out


def region_indices(names: Sequence[str]) -> tuple[int, ...]:
    """Channel indices of region ``names`` (e.g. ``["wt"]`` -> ``(0,)``), sorted, without repeats.

    Raises:
        ValueError: an unknown name, or none at all.
    """
    if isinstance(names, str):
        names = [names]
    upper = [str(n).upper() for n in names]
    unknown = [n for n in upper if n not in REGIONS]
    if unknown or not upper:
        raise ValueError(f"fg_regions={list(names)} must be a non-empty list of {list(REGIONS)}")
    return tuple(sorted({REGIONS.index(n) for n in upper}))


class CaseSource(Protocol):
    """What a dataset needs from a source (``CacheSource`` and ``NiftiSource`` satisfy it)."""

    case_ids: list[str]

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """``(image float32 (4, *B), region bits uint8 (*B) or None, meta dict)``."""
        ...


def _check_ids(source: CaseSource, case_ids: Sequence[str] | None) -> list[str]:
    if case_ids is None:
        return list(source.case_ids)
    known = set(source.case_ids)
    unknown = [c for c in case_ids if c not in known]
    if unknown:
        raise DataError(f"case(s) not in the data source: {unknown[:5]}")
    return list(case_ids)


def _targets(bits: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(bits_to_regions(bits)).to(dtype)


class TrainDataset(Dataset):
    """Random crops with random flips, for training.

    Each item is one random ``crop_size`` window of a case (zero padded where the brain box is
    smaller), flipped along each spatial axis with probability ``flip_prob``; image and target
    get the same crop and flips. Only the window is read from a memory-mapped source.

    Foreground oversampling (nnU-Net's ``oversample_foreground_percent``): with probability
    ``fg_prob`` the window is centred on a tumour voxel instead of placed uniformly. As in
    nnU-Net the region (WT, TC or ET) is drawn first, uniformly among those the case has, then
    one of its voxels, so the small ET and TC are seen as often as the oedema; a case without
    tumour falls back to a uniform window. ``fg_regions`` narrows the draw: ``("WT",)`` centres
    on any tumour voxel with the same chance, as MONAI's ``RandCropByPosNegLabel`` on label > 0.
    The window is then shifted to lie inside the volume
    (:func:`~rirn.data.transforms.centred_crop_start`), so the chosen voxel is in it but not
    always at its centre.

    Items are addressed two ways:

    * ``ds[(epoch, index)]`` (what :class:`EpochKeySampler` yields, the trainer's path): the crop
      and flips are a pure function of ``(seed, epoch, index)``, so they are the same with any
      number of DataLoader workers, persistent or not, and a resumed run sees exactly the crops
      the interrupted one would have seen.
    * ``ds[index]``: a numpy ``Generator`` per process seeded with ``torch.initial_seed()``: fixed
      by ``torch.manual_seed`` in the main process, and different in every DataLoader worker
      (``base_seed + worker_id``), so plain loaders are reproducible and fresh every epoch.

    Args:
        source: a :class:`CaseSource`.
        case_ids: cases to use (default: all of the source).
        crop_size: ``(X, Y, Z)`` window.
        flip_prob: probability of flipping along each axis.
        seed: base seed of the ``(epoch, index)`` keyed crops.
        fg_prob: probability of a tumour-centred window (0: uniform windows only, the paper).
        fg_regions: the regions (names of :data:`~rirn.labels.REGIONS`, any case) a centre is
            drawn from, uniformly among those the case has.

    Returns (per item):
        ``{"image": float32 (4, *crop_size), "target": uint8 (3, *crop_size) WT/TC/ET masks in
        {0, 1} (uint8, not float: a quarter of the bytes through workers, pinning and the
        host-to-device copy; the training step converts it on the device),
        "case_id": str}``.
    """

    def __init__(
        self,
        source: CaseSource,
        case_ids: Sequence[str] | None = None,
        crop_size: Sequence[int] = DEFAULT_CROP,
        flip_prob: float = 0.5,
        seed: int = 0,
        fg_prob: float = 0.0,
        fg_regions: Sequence[str] = REGIONS,
    ):
        self.source = source
        self.case_ids = _check_ids(source, case_ids)
        self.crop_size = tuple(int(s) for s in crop_size)
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.fg_prob = float(fg_prob)
        if not 0.0 <= self.fg_prob <= 1.0:
            raise ValueError(f"fg_prob={fg_prob} must be in [0, 1]")
        self.fg_regions = region_indices(fg_regions)
        self._seed: int | None = None
        self._gen: np.random.Generator | None = None
        self._foreground: dict[str, list] = {}  # case -> foreground_voxels, filled on first use

    def __len__(self) -> int:
        return len(self.case_ids)

    def rng(self) -> np.random.Generator:
        """This process's generator, (re)seeded whenever ``torch.initial_seed()`` changes."""
        seed = torch.initial_seed()
        if self._gen is None or seed != self._seed:
            self._seed, self._gen = seed, np.random.default_rng(seed)
        return self._gen

    def _rng(self, key: int | tuple[int, ...]) -> tuple[int, np.random.Generator]:
        if isinstance(key, tuple):
            # (epoch, index) or, from a BalancedSampler, (epoch, index, draw): a case drawn
            # twice in an epoch gets two crops.
            epoch, index, *draw = (int(k) for k in key)
            return index, np.random.default_rng((self.seed, epoch, index, *draw))
        return int(key), self.rng()

    def window(
        self, case_id: str, bits: np.ndarray, rng: np.random.Generator
    ) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
        """Draw one training window of ``case_id``: ``(start, flip_axes, foreground)``, where
        ``foreground`` says the window was centred on a tumour voxel. Draws nothing extra
        from ``rng`` when ``fg_prob`` is 0, so such crops match those of earlier versions."""
        shape = tuple(bits.shape)
        centre = None
        if self.fg_prob > 0 and rng.random() < self.fg_prob:
            if case_id not in self._foreground:
                self._foreground[case_id] = foreground_voxels(bits)
            voxels = self._foreground[case_id]
            present = [c for r, c in enumerate(voxels) if r in self.fg_regions and len(c)]
            if present:
                coords = present[int(rng.integers(len(present)))]
                centre = coords[int(rng.integers(len(coords)))]
        if centre is None:
            start = random_crop_start(shape, self.crop_size, rng)
        else:
            start = centred_crop_start(shape, self.crop_size, centre)
        return start, random_flip_axes(rng, self.flip_prob), centre is not None

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, rng = self._rng(key)
        case_id = self.case_ids[index]
        image, bits, _ = self.source.load(case_id)
        if bits is None:
            raise DataError(f"case {case_id}: no segmentation; training needs labelled cases")
        start, axes, _ = self.window(case_id, bits, rng)
        crop = crop_pad(image, start, self.crop_size, flip_axes=axes)
        target = crop_pad(bits, start, self.crop_size, flip_axes=axes)
        return {
            "image": torch.from_numpy(crop),
            "target": _targets(target, torch.uint8),
            "case_id": case_id,
        }


class EpochKeySampler(Sampler):
    """Yields ``(epoch, index)`` for each index of ``sampler`` (which must have ``set_epoch``,
    e.g. ``DistributedSampler``), so :class:`TrainDataset` can key its crops on the epoch.

    The key travels with each index from the main process, where the sampler lives, to the
    workers: a persistent worker's copy of the dataset never needs to be told the epoch.
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        for i in self.sampler:
            # An index, or (index, draw) from a BalancedSampler.
            yield (self.epoch, *map(int, i)) if isinstance(i, tuple) else (self.epoch, int(i))

    def __len__(self) -> int:
        return len(self.sampler)


def phenotype_weights(phenotypes: Sequence[str], power: float) -> np.ndarray:
    """Sampling weight of each case, ``float64 (N,)`` summing to 1: proportional to
    ``n_g ** -power`` where ``n_g`` is the number of cases of its phenotype ``g``.

    ``power`` 0 draws every case equally often (each phenotype in proportion to its cases),
    0.5 is square-root sampling (a phenotype of ``n_g`` cases gets a share ``∝ sqrt(n_g)``, as in
    long-tailed recognition, Mahajan et al. 2018), 1 gives every phenotype the same share.
    """
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"phenotype balance power={power} must be in [0, 1]")
    _, inverse, counts = np.unique(np.asarray(phenotypes), return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -float(power)
    return weights / weights.sum()


class BalancedSampler(Sampler):
    """Training cases drawn with replacement by weight: the DistributedSampler of a
    :class:`TrainDataset` whose rare phenotypes are oversampled (:func:`phenotype_weights`).

    An epoch is ``ceil(N / world_size) * world_size`` draws (as many items as
    ``DistributedSampler`` yields), a pure function of ``(seed, epoch)``; this rank takes every
    ``world_size``-th. Yields ``(index, draw)``: the draw's position in the epoch keys the crop,
    so the same case drawn twice gets two crops (see :class:`EpochKeySampler`).

    Args:
        weights: ``(N,)`` sampling probabilities of the dataset's cases.
        num_replicas, rank: the DDP world size and this process's rank.
        seed: base seed (the run's seed).
    """

    def __init__(
        self, weights: Sequence[float], num_replicas: int = 1, rank: int = 0, seed: int = 0
    ):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.weights = self.weights / self.weights.sum()
        self.num_replicas, self.rank, self.seed = int(num_replicas), int(rank), int(seed)
        self.per_rank = -(-len(self.weights) // self.num_replicas)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        total = self.per_rank * self.num_replicas
        # Its own stream (tag 1), apart from the crops' (seed, epoch, index, draw) streams.
        rng = np.random.default_rng((self.seed, self.epoch, 1))
        drawn = rng.choice(len(self.weights), size=total, replace=True, p=self.weights)
        for draw in range(self.rank, total, self.num_replicas):
            yield int(drawn[draw]), draw

    def __len__(self) -> int:
        return self.per_rank


class EvalDataset(Dataset):
    """Whole cases (the brain bounding box), for validation, evaluation and prediction.

    Args:
        source: a :class:`CaseSource`.
        case_ids: cases to use (default: all of the source).
        crop_size: if given, a centred window of this size instead of the whole box (zero
            padded where the box is smaller); ``meta["crop_start"]`` then holds its start
            relative to the box, which :func:`uncrop_to_original` honours.

    Returns (per item):
        ``{"image": float32 (4, *B), "target": float32 (3, *B) or None (unlabelled case),
        "case_id": str, "meta": dict}`` with ``meta`` as in docs/architecture.md (original
        ``shape``, ``bbox``, ``affine``, ``spacing``, ...). Paste a prediction back into the
        original volume with ``uncrop_to_original(pred, meta)``. Use ``batch_size=1`` with
        ``collate_fn=eval_collate`` in a DataLoader (boxes differ in size).
    """

    def __init__(
        self,
        source: CaseSource,
        case_ids: Sequence[str] | None = None,
        crop_size: Sequence[int] | None = None,
    ):
        self.source = source
        self.case_ids = _check_ids(source, case_ids)
        self.crop_size = None if crop_size is None else tuple(int(s) for s in crop_size)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict:
        case_id = self.case_ids[index]
        image, bits, meta = self.source.load(case_id)
        meta = dict(meta)
        if self.crop_size is None:
            image = np.array(image, dtype=np.float32)
        else:
            start = center_crop_start(image.shape[1:], self.crop_size)
            meta["crop_start"] = list(start)
            image = crop_pad(image, start, self.crop_size)
            bits = None if bits is None else crop_pad(bits, start, self.crop_size)
        target = None if bits is None else _targets(np.asarray(bits))
        return {
            "image": torch.from_numpy(image),
            "target": target,
            "case_id": case_id,
            "meta": meta,
        }


def eval_collate(batch: list[dict]) -> dict:
    """Collate :class:`EvalDataset` items: tensors stacked, ``case_id``/``meta`` as lists.

    ``target`` is ``None`` when any item is unlabelled. Items must share a spatial shape
    (true for ``batch_size=1`` or a fixed ``crop_size``).
    """
    targets = [b["target"] for b in batch]
    return {
        "image": torch.stack([b["image"] for b in batch]),
        "target": None if any(t is None for t in targets) else torch.stack(targets),
        "case_id": [b["case_id"] for b in batch],
        "meta": [b["meta"] for b in batch],
    }
