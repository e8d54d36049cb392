"""Reading, validating and preprocessing NIfTI cases (rirn.data.io)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from rirn.data.discovery import discover_cases, read_case_folder
from rirn.data.io import NiftiSource, preprocess_case, read_case, read_nifti
from rirn.data.modalities import MODALITIES
from rirn.errors import DataError
from tests.brats_fixtures import (
    AFFINE,
    SAMPLE_CASE,
    SAMPLE_ROOT,
    make_dataset,
    synthetic_case,
    write_case,
    write_nifti,
)


def test_read_nifti_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    array, image = read_nifti(write_nifti(tmp_path / "a.nii.gz", a))
    assert array.dtype == np.int16 and np.array_equal(array, a)
    assert np.allclose(image.affine, AFFINE)
    array, _ = read_nifti(write_nifti(tmp_path / "b.nii", a[..., None]))  # (X,Y,Z,1) -> 3D
    assert array.shape == (2, 3, 4)


@pytest.mark.parametrize(
    "writer",
    [
        lambda p: p.write_bytes(b"this is not a nifti file at all" * 20),
        lambda p: p.write_bytes(gzip.compress(b"\x00" * 400)),
        "truncate",
    ],
    ids=["garbage", "gzip-of-zeros", "truncated"],
)
def test_corrupt_file_is_a_data_error_naming_it(tmp_path, writer):
    path = tmp_path / "x_t1.nii.gz"
    if writer == "truncate":
        write_nifti(path, np.random.default_rng(0).integers(0, 99, (20, 20, 20), dtype=np.int16))
        path.write_bytes(path.read_bytes()[:-200])
    else:
        writer(path)
    with pytest.raises(DataError, match=r"x_t1\.nii\.gz: unreadable or corrupt NIfTI") as err:
        read_nifti(path)
    assert "\n" not in str(err.value)


def test_nan_inf_and_shape_problems(tmp_path):
    a = np.ones((4, 4, 4), np.float32)
    a[1, 2, 3], a[0, 0, 0] = np.nan, np.inf
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 2 NaN/Inf voxel"):
        read_nifti(write_nifti(tmp_path / "nan.nii.gz", a))
    with pytest.raises(DataError, match=r"expected a 3D volume, got shape \(4, 4\)"):
        read_nifti(write_nifti(tmp_path / "2d.nii.gz", np.ones((4, 4), np.int16)))
    with pytest.raises(DataError, match="file not found"):
        read_nifti(tmp_path / "none.nii.gz")


def test_modalities_of_different_shapes(tmp_path):
    folder = write_case(tmp_path / "C1", "brats2021")
    write_nifti(folder / "C1_t2.nii.gz", np.ones((20, 24, 15), np.int16))
    with pytest.raises(DataError, match=r"case C1 .*differ in shape.*t2 \(20, 24, 15\)"):
        read_case(read_case_folder(folder), "brats")
    folder = write_case(tmp_path / "C2", "brats2021")
    write_nifti(folder / "C2_seg.nii.gz", np.zeros((20, 24, 17), np.uint8))
    with pytest.raises(DataError, match=r"case C2 .*seg \(20, 24, 17\)"):
        read_case(read_case_folder(folder), "brats")


def test_labels_outside_the_release_set(tmp_path):
    images, seg = synthetic_case(et_label=3)  # a 2023 label in a 2021 layout
    folder = write_case(tmp_path / "C1", "brats2021", images, seg)
    with pytest.raises(DataError, match=r"C1_seg\.nii\.gz: segmentation labels \[3\] .*'brats'"):
        read_case(read_case_folder(folder), "brats")
    assert read_case(read_case_folder(folder), "brats2023")[1].max() == 3
    fractional = seg.astype(np.float32) + 0.5 * (seg == 2)
    folder = write_case(tmp_path / "C2", "brats2021", images, fractional)
    with pytest.raises(DataError, match="non-integer"):
        read_case(read_case_folder(folder), "brats")


def test_read_case_stacks_canonical_order_and_zero_fills_missing(tmp_path):
    images, seg = synthetic_case(seed=3)
    folder = write_case(tmp_path / "C1", "brats2021", images, seg)
    image, seg_read, affine, spacing = read_case(read_case_folder(folder), "brats")
    assert image.dtype == np.float32 and image.shape == (4, *seg.shape)
    for i, m in enumerate(MODALITIES):
        assert np.array_equal(image[i], images[m].astype(np.float32))
    assert np.array_equal(seg_read, seg) and seg_read.dtype == np.uint8
    assert np.allclose(affine, AFFINE) and spacing == (1.0, 1.0, 1.0)
    subset = read_case(read_case_folder(folder, modalities=["t2"]), "brats")[0]
    assert not subset[:3].any() and np.array_equal(subset[3], image[3])


def test_preprocess_case_against_naive_computation(tmp_path):
    images, seg = synthetic_case(shape=(18, 22, 14), seed=5)
    folder = write_case(tmp_path / "C1", "brats2021", images, seg)
    image, bits, meta = preprocess_case(read_case_folder(folder), "brats2021", "brats")
    raw = np.stack([images[m] for m in MODALITIES]).astype(np.float64)
    brain = (raw != 0).any(0)
    xs, ys, zs = np.nonzero(brain)
    box = [[int(v.min()), int(v.max()) + 1] for v in (xs, ys, zs)]
    assert meta["bbox"] == box
    assert meta["shape"] == [18, 22, 14] and meta["case_id"] == "C1"
    assert meta["release"] == "brats2021" and meta["scheme"] == "brats"
    assert meta["spacing"] == [1.0, 1.0, 1.0] and np.allclose(meta["affine"], AFFINE)
    sl = tuple(slice(lo, hi) for lo, hi in box)
    assert image.shape == (4, *(hi - lo for lo, hi in box)) and image.dtype == np.float32
    for c in range(4):
        vals = raw[c][brain]
        expected = np.where(brain, (raw[c] - vals.mean()) / vals.std(), 0.0)[sl]
        assert np.allclose(image[c], expected, atol=1e-5)
    # Region bits by hand: WT = {1,2,4}, TC = {1,4}, ET = {4}.
    s = seg[sl]
    expected_bits = (s > 0) * 1 + ((s == 1) | (s == 4)) * 2 + (s == 4) * 4
    assert bits.dtype == np.uint8 and np.array_equal(bits, expected_bits)


def test_all_zero_case_is_an_error(tmp_path):
    images = {m: np.zeros((8, 8, 8), np.int16) for m in MODALITIES}
    folder = write_case(tmp_path / "C0", "brats2021", images, np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(DataError, match="case C0 .*all zeros"):
        preprocess_case(read_case_folder(folder), "brats2021", "brats")


def test_nifti_source_brats2023(tmp_path):
    root, ids = make_dataset(tmp_path, "brats2023", n_cases=2)
    source = NiftiSource(root)
    assert source.case_ids == ids and source.scheme == "brats2023" and len(source) == 2
    _, seg = synthetic_case(seed=0, et_label=3)  # make_dataset: case i+1 has seed i
    image, bits, meta = source.load(ids[0])
    # ET (label 3 in 2023) voxels carry all three bits.
    assert (bits == 7).sum() == (seg == 3).sum() > 0
    assert meta["scheme"] == "brats2023"


def test_real_sample_case_reads():
    if not (SAMPLE_ROOT / SAMPLE_CASE).is_dir():
        pytest.skip("shared/data/brats2021-sample not present")
    case = discover_cases(SAMPLE_ROOT).cases[0]
    image, seg, affine, spacing = read_case(case, "brats")
    assert image.shape == (4, 240, 240, 155)
    assert seg.shape == (240, 240, 155)
    assert sorted(np.unique(seg).tolist()) == [0, 1, 2, 4]
    assert spacing == (1.0, 1.0, 1.0)
