"""Cache, split, datasets and the ``python -m rirn.preprocess`` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import rirn.data.cache as cache_mod
from rirn.data.cache import CacheSource, clean_stale_tmp, ensure_cache
from rirn.data.dataset import (
    EpochKeySampler,
    EvalDataset,
    TrainDataset,
    eval_collate,
    foreground_voxels,
    uncrop_to_original,
)
from rirn.data.io import NiftiSource, read_case
from rirn.data.split import make_split, read_split, resolve_split, write_split
from rirn.errors import DataError
from rirn.labels import get_scheme, labels_to_regions
from tests.brats_fixtures import SAMPLE_CASE, SAMPLE_ROOT, make_dataset, write_case

REPO = Path(__file__).resolve().parents[1]


def assert_same_sources(a, b):
    assert a.case_ids == b.case_ids
    for case_id in a.case_ids:
        image_a, bits_a, meta_a = a.load(case_id)
        image_b, bits_b, meta_b = b.load(case_id)
        assert image_a.dtype == image_b.dtype == np.float32
        assert np.array_equal(image_a, image_b)
        assert (bits_a is None and bits_b is None) or np.array_equal(bits_a, bits_b)
        assert meta_a == meta_b


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "data", "brats2021", n_cases=3)


# ---------------------------------------------------------------- cache


def test_cache_equals_direct_reading(tmp_path, dataset):
    root, ids = dataset
    cache = ensure_cache(root, tmp_path / "cache", progress=False)
    info = json.loads((cache / "dataset.json").read_text())
    assert info == {
        "release": "brats2021",
        "scheme": "brats",
        "source_root": str(root.resolve()),
        "cases": ids,
        "version": cache_mod.CACHE_VERSION,
    }
    source = CacheSource(cache)
    assert isinstance(source.load(ids[0])[0], np.memmap)
    assert_same_sources(NiftiSource(root), source)


def test_cache_reuses_done_cases(tmp_path, dataset, monkeypatch):
    root, ids = dataset
    ensure_cache(root, tmp_path / "cache", progress=False)
    done = []
    real = cache_mod.preprocess_case
    monkeypatch.setattr(
        cache_mod, "preprocess_case", lambda c, *a: done.append(c.case_id) or real(c, *a)
    )
    ensure_cache(root, tmp_path / "cache", progress=False)
    assert done == []
    write_case(root / "BraTS2021_00042", "brats2021", seed=9)
    ensure_cache(root, tmp_path / "cache", progress=False)
    assert done == ["BraTS2021_00042"]
    assert CacheSource(tmp_path / "cache").case_ids == [*ids, "BraTS2021_00042"]


def test_killed_run_leaves_no_half_case(tmp_path, dataset, monkeypatch):
    root, ids = dataset
    cache = tmp_path / "cache"
    real_save, calls = np.save, []

    def save_then_die(path, array, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # case 1 wrote image + seg; die inside case 2
            raise KeyboardInterrupt
        real_save(path, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        ensure_cache(root, cache, progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in cache.iterdir()) == [ids[0]]  # no tmp, no half case
    with pytest.raises(DataError, match="no dataset.json"):
        CacheSource(cache)
    # A real kill leaves a tmp folder behind: it is ignored, and removed once old.
    stale = cache / f"{ids[1]}.tmp-dead"
    stale.mkdir()
    (stale / "image.npy").write_bytes(b"half")
    young = cache / f"{ids[2]}.tmp-live"
    young.mkdir()
    old = time.time() - 2 * cache_mod.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    ensure_cache(root, cache, progress=False)
    assert not stale.exists() and young.exists()
    assert_same_sources(NiftiSource(root), CacheSource(cache))
    assert clean_stale_tmp(cache, older_than=0) == [young]


def test_cache_of_another_scheme_is_refused(tmp_path, dataset):
    ensure_cache(dataset[0], tmp_path / "cache", progress=False)
    root23, _ = make_dataset(tmp_path / "d23", "brats2023", n_cases=1)
    with pytest.raises(DataError, match="'brats' data, not version 1 'brats2023'"):
        ensure_cache(root23, tmp_path / "cache", progress=False)


def test_unlabelled_cases_are_cached_without_seg(tmp_path):
    root, ids = make_dataset(tmp_path / "data", "brats2023", n_cases=2)
    (root / ids[0] / f"{ids[0]}-seg.nii.gz").unlink()
    with pytest.raises(DataError, match="missing segmentation"):
        ensure_cache(root, tmp_path / "cache", progress=False)
    cache = ensure_cache(root, tmp_path / "cache", progress=False, require_seg=False)
    assert not (cache / ids[0] / "seg.npy").exists()
    assert_same_sources(NiftiSource(root, require_seg=False), CacheSource(cache))
    item = EvalDataset(CacheSource(cache))[0]
    assert item["target"] is None and item["image"].shape[0] == 4
    with pytest.raises(DataError, match="no segmentation"):
        TrainDataset(CacheSource(cache), [ids[0]], (8, 8, 8))[0]


# ---------------------------------------------------------------- split


def test_split_is_deterministic_and_two_to_one():
    ids = [f"c{i:02d}" for i in range(30)]
    a = make_split(ids, seed=3)
    assert a == make_split(list(reversed(ids)), seed=3)  # order of input irrelevant
    assert a != make_split(ids, seed=4)
    assert len(a["train"]) == 20 and len(a["val"]) == 10 and a["seed"] == 3
    assert sorted(a["train"] + a["val"]) == ids and a["train"] == sorted(a["train"])
    for n, n_val in [(1, 0), (2, 1), (3, 1), (6, 2), (10, 3)]:
        assert len(make_split(ids[:n])["val"]) == n_val


def test_split_file_is_honoured_and_checked(tmp_path):
    ids = ["a", "b", "c", "d"]
    path = write_split(tmp_path / "split.json", {"train": ["d", "a"], "val": ["c"], "seed": 9})
    assert resolve_split(
        ids, seed=0, split_file=path, out_path=tmp_path / "run" / "split.json"
    ) == {
        "train": ["d", "a"],
        "val": ["c"],
        "seed": 9,
    }
    assert json.loads((tmp_path / "run" / "split.json").read_text())["train"] == ["d", "a"]
    write_split(path, {"train": ["a", "zz"], "val": ["b"], "seed": 0})
    with pytest.raises(
        DataError, match=r"split file .*split.json: case\(s\) not in the dataset: \['zz'\]"
    ):
        read_split(path, ids)
    write_split(path, {"train": ["a"], "val": ["a"]})
    with pytest.raises(DataError, match="listed twice"):
        read_split(path, ids)
    path.write_text("{not json")
    with pytest.raises(DataError, match="unreadable"):
        read_split(path, ids)
    with pytest.raises(DataError, match="not found"):
        read_split(tmp_path / "nope.json", ids)


# ---------------------------------------------------------------- datasets


class MemorySource:
    """In-memory source whose voxels encode their coordinates (to check crop/flip alignment)."""

    def __init__(self, shape):
        x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
        code = (1 + x * 10000 + y * 100 + z).astype(np.float32)
        self.image = np.stack([code * (c + 1) for c in range(4)])
        self.bits = ((x + y + z) % 8).astype(np.uint8)
        self.case_ids = ["m0", "m1"]

    def load(self, case_id):
        return self.image, self.bits, {"case_id": case_id}


@pytest.mark.parametrize("shape,crop", [((20, 18, 16), (8, 10, 12)), ((6, 18, 5), (8, 10, 12))])
def test_train_crops_keep_image_and_target_aligned(shape, crop):
    torch.manual_seed(0)
    ds = TrainDataset(MemorySource(shape), crop_size=crop, flip_prob=0.5)
    for _ in range(10):
        item = ds[0]
        image, target = item["image"].numpy(), item["target"].numpy()
        assert item["case_id"] == "m0"
        assert image.shape == (4, *crop) and image.dtype == np.float32
        assert target.shape == (3, *crop) and target.dtype == np.uint8
        code = image[0].astype(np.int64)
        valid = code > 0
        for c in range(4):
            assert np.array_equal(image[c], image[0] * (c + 1))
        assert not target[:, ~valid].any()  # padding: zero image, zero target
        x, y, z = (code - 1) // 10000, (code - 1) // 100 % 100, (code - 1) % 100
        for r in range(3):
            assert np.array_equal(target[r][valid], ((x + y + z) % 8 >> r & 1)[valid])
        # The window holds min(shape, crop) voxels along each axis.
        assert valid.sum() == np.prod([min(s, k) for s, k in zip(shape, crop, strict=True)])


def test_train_randomness_is_seeded_and_differs_between_workers():
    source = MemorySource((20, 18, 16))

    def crops(seed, workers):
        torch.manual_seed(seed)
        ds = TrainDataset(source, ["m0"] * 4, crop_size=(6, 6, 6))
        loader = DataLoader(ds, batch_size=1, num_workers=workers)
        return [b["image"][0, 0].flatten()[0].item() for b in loader]

    assert crops(1, 0) == crops(1, 0)
    assert crops(1, 0) != crops(2, 0)
    with_workers = crops(1, 2)
    assert with_workers == crops(1, 2)
    assert with_workers[0] != with_workers[1]  # items 0 and 1 come from different workers


def test_keyed_crops_are_a_function_of_seed_epoch_index():
    """The trainer's path: ``(epoch, index)`` keys from EpochKeySampler give crops that depend on
    (seed, epoch, index) alone, so 0 and 2 workers (persistent) load the very same batches."""
    source = MemorySource((20, 18, 16))

    def first_voxels(workers, seed=3, epochs=(0, 1)):
        ds = TrainDataset(source, ["m0"] * 6, crop_size=(6, 6, 6), seed=seed)
        sampler = EpochKeySampler(DistributedSampler(ds, num_replicas=1, rank=0, seed=seed))
        loader = DataLoader(
            ds, batch_size=2, sampler=sampler, num_workers=workers, persistent_workers=workers > 0
        )
        out = []
        for epoch in epochs:
            sampler.set_epoch(epoch)
            out.append([b["image"][:, 0].flatten(1)[:, 0].tolist() for b in loader])
        return out

    torch.manual_seed(0)
    plain = first_voxels(0)
    torch.manual_seed(1)  # the global RNG plays no part
    assert first_voxels(2) == plain
    assert plain[0] != plain[1]  # a new epoch, new crops
    assert first_voxels(0, seed=4) != plain
    ds = TrainDataset(source, ["m0"] * 2, crop_size=(6, 6, 6), seed=3)
    assert torch.equal(ds[(5, 1)]["image"], ds[(5, 1)]["image"])
    assert list(EpochKeySampler(DistributedSampler(ds, num_replicas=1, rank=0, shuffle=False))) == [
        (0, 0),
        (0, 1),
    ]


class TumourSource(MemorySource):
    """A 40x40x40 volume whose only tumour is a 4x4x4 block (WT) with a 2x2x2 ET core, far
    from the centre; ``m1`` has no tumour at all."""

    def __init__(self):
        super().__init__((40, 40, 40))
        self.bits = np.zeros((40, 40, 40), dtype=np.uint8)
        self.bits[30:34, 4:8, 30:34] = 0b001
        self.bits[31:33, 5:7, 31:33] = 0b111

    def load(self, case_id):
        bits = self.bits if case_id == "m0" else np.zeros_like(self.bits)
        return self.image, bits, {"case_id": case_id}


def test_foreground_fraction_matches_fg_prob_and_centres_are_tumour():
    source = TumourSource()
    _, bits, _ = source.load("m0")

    def draws(fg_prob, n=2000):
        ds = TrainDataset(source, ["m0"], crop_size=(8, 8, 8), seed=7, fg_prob=fg_prob)
        out = []
        for epoch in range(n):
            start, _, fg = ds.window("m0", bits, np.random.default_rng((7, epoch, 0)))
            window = bits[tuple(slice(max(s, 0), s + 8) for s in start)]
            out.append((fg, bool(window.any())))
        return out

    sampled = draws(0.4)
    forced = [hit for fg, hit in sampled if fg]
    # 2000 Bernoulli(0.4) draws: mean 800, std ~22; 5 std either way
    assert abs(len(forced) - 800) < 110
    assert all(forced)  # a forced window always holds tumour
    # uniform windows see the 4^3 block in about (8+3)^3 / 33^3 ~ 4% of draws
    uniform = [hit for fg, hit in draws(0.0) if not fg]
    assert len(uniform) == 2000 and sum(uniform) < 0.1 * 2000


def test_fg_regions_sets_which_region_the_centre_is_drawn_from():
    source = TumourSource()
    _, bits, _ = source.load("m0")

    def et_share(regions, n=3000):
        # a 1^3 crop starts at its centre, so the centre's label can be read back
        ds = TrainDataset(source, ["m0"], crop_size=(1, 1, 1), fg_prob=1, fg_regions=regions)
        centres = [ds.window("m0", bits, np.random.default_rng(i))[0] for i in range(n)]
        assert all(bits[c] & 1 for c in centres)  # always a tumour voxel
        return np.mean([bits[c] == 0b111 for c in centres])

    # 8 of the 64 WT voxels are ET (and TC): by hand, P(ET centre) is 8/64 drawing from WT
    # only; 1/3 (ET) + 1/3 (TC, which is the ET core here) + 1/3 * 8/64 drawing among all
    # three; 1 from ET only. Binomial std at n=3000 is <= 0.01: 4 std tolerance.
    assert abs(et_share(["wt"]) - 8 / 64) < 0.04
    assert abs(et_share(["WT", "TC", "ET"]) - (2 / 3 + 8 / 64 / 3)) < 0.04
    assert et_share(["ET"]) == 1.0
    with pytest.raises(ValueError, match="fg_regions"):
        TrainDataset(source, crop_size=(1, 1, 1), fg_regions=["necrosis"])
    with pytest.raises(ValueError, match="fg_regions"):
        TrainDataset(source, crop_size=(1, 1, 1), fg_regions=[])


def test_foreground_crops_stay_aligned_and_fall_back_without_tumour():
    source = TumourSource()
    ds = TrainDataset(source, ["m0", "m1"], crop_size=(8, 8, 8), flip_prob=0.5, seed=1, fg_prob=1)
    for epoch in range(20):
        item = ds[(epoch, 0)]
        image, target = item["image"].numpy(), item["target"].numpy()
        code = image[0].astype(np.int64)
        x, y, z = (code - 1) // 10000, (code - 1) // 100 % 100, (code - 1) % 100
        # the target is the source's label at each image voxel (crop and flips aligned)
        assert np.array_equal(target[0], source.bits[x, y, z] & 1)
        assert np.array_equal(target[2], source.bits[x, y, z] >> 2 & 1)
        assert target[0].any()
        # no tumour in m1: every window falls back to a uniform one, still full-size
        empty = ds[(epoch, 1)]
        assert empty["image"].shape == (4, 8, 8, 8) and not empty["target"].numpy().any()
        no_tumour = np.zeros((40, 40, 40), np.uint8)
        assert not ds.window("m1", no_tumour, np.random.default_rng(epoch))[2]


def test_foreground_crops_are_the_same_with_any_number_of_workers():
    source = TumourSource()

    def crops(workers):
        ds = TrainDataset(source, ["m0", "m1"] * 3, crop_size=(8, 8, 8), seed=5, fg_prob=0.5)
        sampler = EpochKeySampler(DistributedSampler(ds, num_replicas=1, rank=0, seed=5))
        loader = DataLoader(
            ds, batch_size=2, sampler=sampler, num_workers=workers, persistent_workers=workers > 0
        )
        out = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            out += [b["image"][:, 0].flatten(1)[:, 0].tolist() for b in loader]
        return out

    assert crops(0) == crops(2)


def test_fg_prob_zero_draws_the_crops_of_the_uniform_sampler():
    source = MemorySource((20, 18, 16))
    old = TrainDataset(source, ["m0"] * 2, crop_size=(6, 6, 6), seed=3)
    new = TrainDataset(source, ["m0"] * 2, crop_size=(6, 6, 6), seed=3, fg_prob=0.0)
    for key in [(0, 0), (4, 1)]:
        assert torch.equal(old[key]["image"], new[key]["image"])
    with pytest.raises(ValueError, match="fg_prob"):
        TrainDataset(source, crop_size=(6, 6, 6), fg_prob=1.5)


def test_foreground_voxels_subsample_is_bounded_and_deterministic():
    bits = np.zeros((30, 30, 30), np.uint8)
    bits[:20, :20, :20] = 1  # 8000 WT voxels
    bits[:2, :2, :2] = 0b111
    a = foreground_voxels(bits, max_per_region=1000)
    b = foreground_voxels(bits, max_per_region=1000)
    assert [len(c) for c in a] == [1000, 8, 8]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert (bits[tuple(a[0].T)] & 1).all() and (bits[tuple(a[2].T)] == 0b111).all()


def test_eval_dataset_pastes_back_to_the_original(tmp_path, dataset):
    root, ids = dataset
    source = CacheSource(ensure_cache(root, tmp_path / "cache", progress=False))
    nifti = NiftiSource(root)
    ds = EvalDataset(source)
    for i, case_id in enumerate(ids):
        item = ds[i]
        meta = item["meta"]
        box = [hi - lo for lo, hi in meta["bbox"]]
        assert item["case_id"] == case_id and item["image"].shape == (4, *box)
        _, seg, _, _ = read_case(nifti.index.case(case_id), "brats")
        expected = labels_to_regions(seg, get_scheme("brats"))
        assert np.array_equal(uncrop_to_original(item["target"].numpy(), meta), expected)
    centred = EvalDataset(source, [ids[0]], crop_size=(8, 30, 8))[0]
    assert centred["image"].shape == (4, 8, 30, 8)
    back = uncrop_to_original(centred["target"].numpy(), centred["meta"]).astype(bool)
    assert not (back & ~expected_for(nifti, ids[0])).any()
    batch = next(iter(DataLoader(ds, batch_size=1, collate_fn=eval_collate)))
    assert batch["image"].shape[0] == 1 and batch["case_id"] == [ids[0]]
    assert batch["meta"][0]["case_id"] == ids[0]
    with pytest.raises(DataError, match="not in the data source"):
        EvalDataset(source, ["nope"])


def expected_for(nifti, case_id):
    _, seg, _, _ = read_case(nifti.index.case(case_id), "brats")
    return labels_to_regions(seg, get_scheme("brats"))


# ---------------------------------------------------------------- command line


def run_preprocess(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rirn.preprocess", *overrides]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_cli_builds_cache_and_writes_nothing_else(tmp_path, dataset):
    root, ids = dataset
    work = tmp_path / "cwd"
    work.mkdir()
    proc = run_preprocess(
        work, f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}", "data.num_workers=2"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"cache ready: {tmp_path / 'c'} (3 cases)"
    assert list(work.iterdir()) == []  # no outputs/, .hydra/ or log file
    assert_same_sources(NiftiSource(root), CacheSource(tmp_path / "c"))


@pytest.mark.parametrize("problem", ["missing-modality", "missing-key"])
def test_cli_bad_input_is_one_line(tmp_path, dataset, problem):
    root, ids = dataset
    args = [f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}"]
    if problem == "missing-modality":
        (root / ids[1] / f"{ids[1]}_flair.nii.gz").unlink()
        expected = f"{ids[1]}_flair.nii.gz"
    else:
        args = args[1:]
        expected = "data.root is required"
    proc = run_preprocess(tmp_path, *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


# ---------------------------------------------------------------- the real case


@pytest.mark.slow  # ~4 s: two full reads of a 240x240x155 case
def test_real_sample_cache_and_crops(tmp_path):
    if not (SAMPLE_ROOT / SAMPLE_CASE).is_dir():
        pytest.skip("shared/data/brats2021-sample not present")
    cache = ensure_cache(SAMPLE_ROOT, tmp_path / "cache", progress=False)
    source = CacheSource(cache)
    nifti = NiftiSource(SAMPLE_ROOT)
    assert_same_sources(nifti, source)
    image, bits, meta = source.load(SAMPLE_CASE)
    assert meta["shape"] == [240, 240, 155]
    brain = (image != 0).any(0)
    values = image[:, brain].astype(np.float64)  # float32 reductions drift by ~1e-3 here
    assert np.allclose(values.mean(1), 0, atol=1e-5) and np.allclose(values.std(1), 1, atol=1e-5)
    torch.manual_seed(0)
    item = TrainDataset(source, crop_size=(160, 192, 128))[0]
    assert item["image"].shape == (4, 160, 192, 128) and item["target"].shape == (3, 160, 192, 128)
    assert item["target"].sum() > 0
    back = uncrop_to_original(EvalDataset(source)[0]["target"].numpy(), meta)
    assert np.array_equal(back, expected_for(nifti, SAMPLE_CASE))
