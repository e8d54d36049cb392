"""The synthetic BraTS-like dataset: determinism, file layout, case mix, MRI contrasts, reuse."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from rirn.data import synthetic as syn
from rirn.data.discovery import discover_cases
from rirn.data.modalities import MODALITIES
from rirn.data.synthetic_anatomy import Tissue, lattice_noise, upsample
from rirn.errors import ConfigError
from tests.conftest import REPO

TINY = (32, 32, 24)
SMALL = (96, 96, 64)


def _files(root, index):
    cid = syn.case_id(index)
    return {kind: root / cid / f"{cid}_{kind}.nii.gz" for kind in syn.FILE_KINDS}


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_arrays_other_seed_differs():
    images, seg = syn.generate_case(2, TINY, seed=5)
    again_images, again_seg = syn.generate_case(2, TINY, seed=5)
    other_images, other_seg = syn.generate_case(2, TINY, seed=6)
    assert list(images) == list(MODALITIES)
    for m in MODALITIES:
        assert images[m].dtype == np.int16 and images[m].shape == TINY
        assert images[m].tobytes() == again_images[m].tobytes()
    assert seg.dtype == np.uint8 and seg.tobytes() == again_seg.tobytes()
    assert not np.array_equal(images["t1"], other_images["t1"])
    # Cases of one dataset differ from each other too.
    assert not np.array_equal(images["t1"], syn.generate_case(3, TINY, seed=5)[0]["t1"])


def test_more_cases_reproduce_the_first_ones_byte_for_byte(tmp_path):
    syn.generate_dataset(tmp_path / "a", 2, TINY, seed=1, progress=False)
    syn.generate_dataset(tmp_path / "b", 3, TINY, seed=1, progress=False)
    for index in range(2):
        for kind, path in _files(tmp_path / "a", index).items():
            assert path.read_bytes() == _files(tmp_path / "b", index)[kind].read_bytes(), path


def test_upsample_equals_scipy_zoom():
    low = lattice_noise(np.random.default_rng(0), (40, 30, 20), 7.0)
    expected = ndimage.zoom(low, np.divide((40, 30, 20), low.shape), order=3, mode="mirror")
    np.testing.assert_allclose(upsample(low, (40, 30, 20)), expected, atol=1e-5)


# ------------------------------------------------------------------------------ file layout


def test_written_files_follow_brats2020_layout(tmp_path):
    root = syn.generate_dataset(tmp_path / "synth", 2, TINY, seed=0, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["Synth_000", "Synth_001", syn.MARKER]
    for index in range(2):
        images, seg = syn.generate_case(index, TINY, seed=0)
        for kind, path in _files(root, index).items():
            img = nib.load(path)
            data = np.asarray(img.dataobj)
            assert img.shape == TINY
            assert img.header.get_zooms() == (1.0, 1.0, 1.0)
            np.testing.assert_array_equal(img.affine, syn.case_affine(TINY))
            assert abs(np.linalg.det(img.affine[:3, :3])) == 1.0
            if kind == "seg":
                assert img.get_data_dtype() == np.uint8
                assert set(np.unique(data)) <= {0, 1, 2, 4}
                np.testing.assert_array_equal(data, seg)
            else:
                assert img.get_data_dtype() == np.int16
                np.testing.assert_array_equal(data, images[kind])
    marker = json.loads((root / syn.MARKER).read_text())
    assert marker["cases"] == ["Synth_000", "Synth_001"]
    assert (marker["num_cases"], marker["shape"], marker["seed"]) == (2, list(TINY), 0)
    index = discover_cases(root)
    assert [c.case_id for c in index.cases] == ["Synth_000", "Synth_001"]
    assert index.scheme == "brats"


def test_invalid_arguments_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="shape"):
        syn.generate_case(0, (8, 32, 32))
    with pytest.raises(ConfigError, match="shape"):
        syn.generate_case(0, (32, 32))
    with pytest.raises(ConfigError, match="shape"):
        syn.generate_case(0, (32.5, 32, 32))
    with pytest.raises(ConfigError, match="seed"):
        syn.generate_case(0, TINY, seed=-1)
    with pytest.raises(ConfigError, match="num_cases"):
        syn.ensure_synthetic(tmp_path, 0, TINY, 0, progress=False)


# -------------------------------------------------------------------------------- case mix


def test_case_mix_low_grade_and_multifocal():
    low_grade, multifocal = 0, 0
    for index in range(40):
        case = syn.simulate_case(index, TINY, seed=0)
        labels = set(np.unique(case.seg).tolist())
        assert 2 in labels and labels & {1, 4}, index  # every case has oedema and a core
        assert (4 in labels) == (not case.low_grade), index  # low grade <=> no enhancing tumour
        low_grade += 4 not in labels
        _, components = ndimage.label(case.seg > 0)
        multifocal += components > 1 and len(case.lesions) > 1
    assert 2 <= low_grade <= 12  # about 15% of 40
    assert multifocal >= 1


def test_low_grade_cases_have_non_enhancing_core_only():
    case = next(c for c in (syn.simulate_case(i, TINY, seed=0) for i in range(40)) if c.low_grade)
    assert not np.isin(case.tissue, [Tissue.ENHANCING, Tissue.NECROSIS]).any()
    np.testing.assert_array_equal(case.seg == 1, case.tissue == Tissue.NON_ENHANCING)


# -------------------------------------------------------------------------------- contrasts


@pytest.fixture(scope="module")
def high_grade_cases():
    cases = (syn.simulate_case(i, SMALL, seed=0) for i in range(10))
    return list(itertools.islice((c for c in cases if not c.low_grade), 3))


def _mean(case, modality, mask):
    return float(case.images[modality][mask].astype(np.float64).mean())


def _separation(case, modality, a, b):
    """|mean difference| / pooled standard deviation of two voxel sets."""
    x = case.images[modality][a].astype(np.float64)
    y = case.images[modality][b].astype(np.float64)
    return abs(x.mean() - y.mean()) / np.sqrt((x.var() + y.var()) / 2)


def test_contrasts_follow_mri_physics(high_grade_cases):
    for case in high_grade_cases:
        et, oedema = case.seg == 4, case.seg == 2
        wm, csf = case.tissue == Tissue.WM, case.tissue == Tissue.CSF
        assert _mean(case, "t1ce", et) / _mean(case, "t1ce", oedema) > 1.5
        assert 0.9 < _mean(case, "t1", et) / _mean(case, "t1", oedema) < 1.1
        assert _mean(case, "flair", oedema) / _mean(case, "flair", wm) > 1.4
        assert _mean(case, "t2", oedema) / _mean(case, "t2", wm) > 1.3
        assert _mean(case, "t1", oedema) / _mean(case, "t1", wm) < 0.95  # tumour slightly dark
        assert _mean(case, "flair", csf) / _mean(case, "flair", wm) < 0.8
        assert _mean(case, "t2", csf) / _mean(case, "t2", wm) > 1.25
        assert _mean(case, "t2", case.seg == 1) / _mean(case, "t2", wm) > 1.5  # necrosis


def test_only_t1ce_separates_enhancing_tumour_and_flair_t2_outline_it(high_grade_cases):
    for case in high_grade_cases:
        et, oedema = case.seg == 4, case.seg == 2
        et_sep = {m: _separation(case, m, et, oedema) for m in MODALITIES}
        assert max(et_sep, key=et_sep.get) == "t1ce"
        assert et_sep["t1ce"] > 2 * max(v for m, v in et_sep.items() if m != "t1ce")
        # Whole tumour against the normal brain in a shell around it.
        wt = case.seg > 0
        shell = ndimage.binary_dilation(wt, iterations=4) & ~wt & (case.tissue != 0)
        wt_sep = {m: _separation(case, m, wt, shell) for m in MODALITIES}
        assert min(wt_sep["flair"], wt_sep["t2"]) > max(wt_sep["t1"], wt_sep["t1ce"])


def test_background_is_exactly_zero_outside_the_brain(high_grade_cases):
    for case in high_grade_cases:
        brain = case.tissue != Tissue.BACKGROUND
        assert brain.mean() > 0.1
        assert not case.seg[~brain].any()
        for m in MODALITIES:
            assert not case.images[m][~brain].any()
            assert case.images[m][brain].min() >= 1


# ------------------------------------------------------------------------ ensure_synthetic


def test_ensure_reuses_a_complete_dataset_and_regenerates_a_deleted_case(tmp_path):
    root = tmp_path / "synth"
    assert syn.ensure_synthetic(root, 2, TINY, 3, progress=False) == root
    before = _mtimes(root)
    seg_bytes = _files(root, 1)["seg"].read_bytes()
    syn.ensure_synthetic(root, 2, TINY, 3, progress=False)
    assert _mtimes(root) == before

    for path in _files(root, 1).values():
        path.unlink()
    _files(root, 1)["seg"].parent.rmdir()
    syn.ensure_synthetic(root, 2, TINY, 3, progress=False)
    after = _mtimes(root)
    for path in _files(root, 0).values():
        assert after[path] == before[path]
    assert _files(root, 1)["seg"].read_bytes() == seg_bytes
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_ensure_regenerates_other_parameters_and_trims_extra_cases(tmp_path):
    root = tmp_path / "synth"
    syn.ensure_synthetic(root, 3, TINY, 0, progress=False)
    old = _files(root, 0)["t1"].read_bytes()
    syn.ensure_synthetic(root, 2, TINY, 1, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["Synth_000", "Synth_001", syn.MARKER]
    assert _files(root, 0)["t1"].read_bytes() != old
    assert json.loads((root / syn.MARKER).read_text())["seed"] == 1


def test_ensure_resumes_an_interrupted_run(tmp_path, monkeypatch):
    root = tmp_path / "synth"
    real_write = syn.write_case

    def write_then_die(out_dir, index, shape, seed):
        if index == 1:
            raise KeyboardInterrupt
        return real_write(out_dir, index, shape, seed)

    monkeypatch.setattr(syn, "write_case", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        syn.ensure_synthetic(root, 2, TINY, 0, progress=False)
    assert not (root / syn.MARKER).exists() and syn.case_complete(root, 0)
    monkeypatch.undo()
    before = _mtimes(root)
    syn.ensure_synthetic(root, 2, TINY, 0, progress=False)
    assert all(_mtimes(root)[p] == t for p, t in before.items() if "Synth_000" in p.parts)
    assert syn.case_complete(root, 1) and (root / syn.MARKER).exists()
    assert not (root / syn.PENDING).exists()


# ---------------------------------------------------------------------------- command line


def _cli(args, cwd):
    """``python -m rirn.data.synthetic ARGS`` from ``cwd`` (rirn found through PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "rirn.data.synthetic", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_cli_writes_dataset_and_keeps_cwd_clean(tmp_path):
    out = tmp_path / "data"
    result = _cli([f"out_dir={out}", "num_cases=2", "shape=[32,32,24]", "seed=4"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert str(out.resolve()) in result.stdout.strip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    images, seg = syn.generate_case(1, TINY, seed=4)
    np.testing.assert_array_equal(np.asarray(nib.load(_files(out, 1)["seg"]).dataobj), seg)

    bad = _cli([f"out_dir={out}", "shape=[4,4,4]"], tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert bad.stderr.startswith("error: shape must be")


@pytest.mark.slow
def test_full_size_case_is_fast_enough():
    import time

    start = time.process_time()
    images, seg = syn.generate_case(0, syn.DEFAULT_SHAPE, seed=0)
    assert time.process_time() - start < 4.0
    assert seg.shape == syn.DEFAULT_SHAPE and (seg == 4).sum() > 1000
