"""Phenotypes (which regions a case's labels hold): the stratified split and the oversampling
of rare phenotypes in training, checked against counts and probabilities worked out by hand."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from rirn.data.cache import CacheSource, ensure_cache
from rirn.data.dataset import BalancedSampler, EpochKeySampler, TrainDataset, phenotype_weights
from rirn.data.split import make_split
from rirn.labels import phenotype
from tests.brats_fixtures import make_dataset


def test_phenotype_names_the_regions_present():
    bits = np.zeros((4, 4, 4), np.uint8)
    assert phenotype(bits) == "none"
    bits[0, 0, 0] = 0b001  # oedema only
    assert phenotype(bits) == "WT"
    bits[1, 1, 1] = 0b011  # + non-enhancing core
    assert phenotype(bits) == "WT+TC"
    bits[2, 2, 2] = 0b111  # + enhancing tumour
    assert phenotype(bits) == "WT+TC+ET"


def old_make_split(ids, seed, n_val):
    """The split before stratification, written out again: one permutation of the sorted IDs."""
    ids = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[:n_val]), sorted(ids[i] for i in order[n_val:])


def test_unstratified_split_is_the_old_one():
    ids = [f"c{i:02d}" for i in range(48)]
    for seed in (0, 9, 1234):
        split = make_split(ids, seed=seed)
        assert (split["val"], split["train"]) == old_make_split(ids, seed, 16)
        assert "stratified" not in split


def test_stratified_split_gives_each_phenotype_its_share():
    # 48 cases: 7 without ET, 40 with, 1 without tumour; 16 validation cases.
    ids = [f"c{i:02d}" for i in range(48)]
    strata = {c: "WT+TC+ET" for c in ids}
    for c in ids[:7]:
        strata[c] = "WT+TC"
    strata[ids[7]] = "none"
    # Exact shares 16 * (40, 7, 1) / 48 = 13.33, 2.33, 0.33: floors 13 + 2 + 0 = 15, and the
    # one case left goes to the largest remainder, a tie of 0.33 broken at random.
    seen = Counter()
    for seed in range(40):
        split = make_split(ids, seed=seed, strata=strata)
        assert split["stratified"] is True
        assert len(split["val"]) == 16 and len(split["train"]) == 32
        assert sorted(split["val"] + split["train"]) == ids
        counts = Counter(strata[c] for c in split["val"])
        assert counts["WT+TC+ET"] in (13, 14) and counts["WT+TC"] in (2, 3)
        assert counts["none"] in (0, 1)
        assert sum(counts.values()) == 16
        seen[tuple(sorted(counts.items()))] += 1
        assert split == make_split(list(reversed(ids)), seed=seed, strata=strata)
    assert len(seen) == 3  # the tie goes to each of the three groups for some seed
    # Which cases of a group go to validation varies with the seed.
    assert make_split(ids, seed=0, strata=strata) != make_split(ids, seed=1, strata=strata)


def test_stratified_split_exact_quotas():
    ids = [f"c{i:02d}" for i in range(30)]
    strata = {c: ("a" if i < 15 else "b" if i < 24 else "c") for i, c in enumerate(ids)}
    # n_val 10: shares 5, 3, 2 exactly.
    split = make_split(ids, seed=3, strata=strata)
    assert Counter(strata[c] for c in split["val"]) == {"a": 5, "b": 3, "c": 2}
    with pytest.raises(ValueError, match="no stratum"):
        make_split(ids + ["extra"], seed=3, strata=strata)


def test_phenotype_weights_by_hand():
    names = ["HG"] * 9 + ["LG"] * 4
    # power 0: 1/13 each.
    assert np.allclose(phenotype_weights(names, 0.0), np.full(13, 1 / 13))
    # power 1: each phenotype 1/2 in total.
    w = phenotype_weights(names, 1.0)
    assert np.allclose(w[:9], 1 / 18) and np.allclose(w[9:], 1 / 8)
    # power 0.5: weights 1/3 (HG) and 1/2 (LG), total 9/3 + 4/2 = 5; LG share 2/5.
    w = phenotype_weights(names, 0.5)
    assert np.allclose(w[:9], 1 / 15) and np.allclose(w[9:], 1 / 10)
    assert w.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="power"):
        phenotype_weights(names, 1.5)


def test_balanced_sampler_draws_by_weight_and_shards_across_ranks():
    weights = np.array([0.1, 0.1, 0.1, 0.1, 0.6])
    one = BalancedSampler(weights, seed=7)
    assert len(one) == 5
    counts = np.zeros(5)
    for epoch in range(2000):
        one.set_epoch(epoch)
        draws = list(one)
        assert [d for _, d in draws] == list(range(5))  # positions of the draws
        for index, _ in draws:
            counts[index] += 1
    # 10,000 draws: each frequency within 4 standard errors of its weight.
    freq = counts / counts.sum()
    assert np.all(np.abs(freq - weights) < 4 * np.sqrt(weights * (1 - weights) / counts.sum()))
    # Same (seed, epoch), same draws; another epoch, others.
    a, b = BalancedSampler(weights, seed=7), BalancedSampler(weights, seed=7)
    a.set_epoch(3), b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    # Two ranks: ceil(5 / 2) = 3 draws each, together the single process's 6 draws of 6 slots.
    ranks = [BalancedSampler(weights, num_replicas=2, rank=r, seed=7) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(3)
    assert [len(s) for s in ranks] == [3, 3]
    positions = sorted(d for s in ranks for _, d in s)
    assert positions == list(range(6))


class TwoPhenotypeSource:
    """Three cases with ET, one without; the image's voxels encode their coordinates."""

    def __init__(self):
        x, y, z = np.meshgrid(*[np.arange(16)] * 3, indexing="ij")
        self.image = np.stack([(1 + x * 10000 + y * 100 + z).astype(np.float32)] * 4)
        self.case_ids = ["hg0", "hg1", "hg2", "lg0"]

    def load(self, case_id):
        bits = np.zeros((16, 16, 16), np.uint8)
        bits[4:12, 4:12, 4:12] = 0b011 if case_id.startswith("lg") else 0b111
        return self.image, bits, {"case_id": case_id}


def test_a_case_drawn_twice_gets_two_crops_the_same_with_any_workers():
    source = TwoPhenotypeSource()
    ds = TrainDataset(source, source.case_ids, crop_size=(6, 6, 6), seed=2)
    weights = phenotype_weights(["HG", "HG", "HG", "LG"], 1.0)  # lg0 drawn half the time
    sampler = EpochKeySampler(BalancedSampler(weights, seed=2))
    sampler.set_epoch(0)
    keys = list(sampler)
    assert all(len(k) == 3 and k[0] == 0 for k in keys)

    def epoch_crops(workers):
        loader = DataLoader(ds, batch_size=1, sampler=sampler, num_workers=workers)
        out = []
        for epoch in range(6):
            sampler.set_epoch(epoch)
            out += [(b["case_id"][0], b["image"][0, 0].flatten()[0].item()) for b in loader]
        return out

    plain = epoch_crops(0)
    assert epoch_crops(2) == plain
    # Over 6 epochs of 4 draws lg0 came more than once in some epoch, with distinct crops.
    by_case = Counter(c for c, _ in plain)
    assert by_case["lg0"] > 6
    lg_crops = [v for c, v in plain if c == "lg0"]
    assert len(set(lg_crops)) > 1
    # A 2-tuple key is still the (epoch, index) crop of before.
    assert torch.equal(ds[(1, 3)]["image"], ds[(1, 3)]["image"])
    uniform = list(EpochKeySampler(DistributedSampler(ds, num_replicas=1, rank=0, shuffle=False)))
    assert uniform == [(0, 0), (0, 1), (0, 2), (0, 3)]


def test_cache_source_phenotypes_are_computed_once_and_refreshed(tmp_path):
    root, _ = make_dataset(tmp_path / "data", "brats2021", n_cases=3)
    cache = ensure_cache(root, tmp_path / "cache")
    source = CacheSource(cache)
    expected = {c: phenotype(source.load(c)[1]) for c in source.case_ids}
    assert source.phenotypes() == expected
    path = cache / "phenotypes.json"
    assert json.loads(path.read_text()) == expected
    # A stale or partial file is recomputed.
    path.write_text(json.dumps({source.case_ids[0]: "bogus"}))
    assert source.phenotypes() == expected


def per_case(case, model, dice, empty, run="r"):
    """Per-case rows of one case: ``dice`` and ``gt_empty`` per region (WT, TC, ET)."""
    subset = "t1ce" if model == "student" else "flair+t1+t1ce+t2"
    return [
        {
            "case": case,
            "subset": subset,
            "model": model,
            "region": region,
            "dice": d,
            "hd95": 0.0,
            "sensitivity": 1.0,
            "specificity": 1.0,
            "gt_empty": e,
            "pred_empty": False,
            "run": run,
        }
        for region, d, e in zip(("WT", "TC", "ET"), dice, empty, strict=True)
    ]


def test_dice_by_phenotype_by_hand():
    from rirn.evaluation.render import render_markdown
    from rirn.evaluation.summary import phenotype_rows, summarize

    hg, lg = (False, False, False), (False, False, True)
    rows = (
        per_case("a", "student", (0.8, 0.9, 0.7), hg)
        + per_case("b", "student", (0.6, 0.7, 0.5), hg)
        + per_case("c", "student", (0.3, 0.0, 1.0), lg)
        + per_case("a", "teacher", (0.9, 0.9, 0.9), hg)
        + per_case("b", "teacher", (0.9, 0.8, 0.7), hg)
        + per_case("c", "teacher", (0.8, 0.4, 0.0), lg)
    )
    got = {(p.model, p.phenotype): (p.n, p.dice) for p in phenotype_rows(rows)}
    assert set(got) == {(m, ph) for m in ("student", "teacher") for ph in ("WT+TC+ET", "WT+TC")}
    n, dice = got[("student", "WT+TC+ET")]
    assert n == 2 and np.allclose(dice, (0.7, 0.8, 0.6, 0.7))
    n, dice = got[("student", "WT+TC")]
    assert n == 1 and np.allclose(dice, (0.3, 0.0, 1.0, 1.3 / 3))
    n, dice = got[("teacher", "WT+TC")]
    assert n == 1 and np.allclose(dice, (0.8, 0.4, 0.0, 0.4))
    text = render_markdown(summarize(rows), {}, "t", phenotype_rows(rows))
    assert "## Dice (%) by phenotype" in text
    assert "| student | t1ce | WT+TC | 1 | 30.00 | 0.00 | 100.00 | 43.33 |" in text
    # One phenotype only: no section.
    only_hg = [r for r in rows if r["case"] != "c"]
    assert "by phenotype" not in render_markdown(
        summarize(only_hg), {}, "t", phenotype_rows(only_hg)
    )


def test_dice_by_phenotype_keeps_the_runs_of_one_subset_apart():
    """A loss ablation evaluates several student runs of one subset: each keeps its own rows
    (as in the summary); the teachers of all runs are pooled into one row per phenotype."""
    from rirn.evaluation.render import render_markdown
    from rirn.evaluation.summary import phenotype_rows, summarize

    hg, lg = (False, False, False), (False, False, True)
    rows = []
    for run, et in (("baseline", 0.0), ("rirn", 1.0)):  # the rirn run leaves ET empty
        rows += per_case("a", "student", (0.8, 0.6, 0.4), hg, run=run)
        rows += per_case("c", "student", (0.5, 0.3, et), lg, run=run)
        rows += per_case("a", "teacher", (0.9, 0.8, 0.7), hg, run=run)
        rows += per_case("c", "teacher", (0.7, 0.5, 1.0), lg, run=run)
    got = {(p.model, p.run, p.phenotype): (p.n, p.dice) for p in phenotype_rows(rows)}
    assert got[("student", "baseline", "WT+TC")] == (1, pytest.approx((0.5, 0.3, 0.0, 0.8 / 3)))
    assert got[("student", "rirn", "WT+TC")] == (1, pytest.approx((0.5, 0.3, 1.0, 0.6)))
    assert got[("teacher", "", "WT+TC")][0] == 2  # both runs' teachers, one row
    text = render_markdown(summarize(rows), {}, "t", phenotype_rows(rows))
    assert "| student | t1ce | `baseline` | WT+TC | 1 | 50.00 | 30.00 | 0.00 | 26.67 |" in text
    assert "| student | t1ce | `rirn` | WT+TC | 1 | 50.00 | 30.00 | 100.00 | 60.00 |" in text
