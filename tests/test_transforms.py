"""Pure array transforms, checked against naive element-wise computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from rirn.data.transforms import (
    bounding_box,
    brain_mask,
    center_crop_start,
    crop_pad,
    crop_to_box,
    flip,
    paste_pad,
    random_crop_start,
    random_flip_axes,
    uncrop_to_original,
    zscore,
)


def encode(x, y, z):
    """Voxel value that says where it came from (1-based so that 0 means padding)."""
    return 1 + x * 10000 + y * 100 + z


def coord_volume(shape):
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return encode(x, y, z).astype(np.int64)


def test_brain_mask_and_bounding_box_naive():
    rng = np.random.default_rng(0)
    image = np.zeros((2, 9, 10, 11), np.float32)
    image[0, 2:5, 3:4, 4:9] = rng.random((3, 1, 5)) + 1
    image[1, 6, 1, 7] = -3.0
    mask = brain_mask(image)
    for x, y, z in itertools.product(range(9), range(10), range(11)):
        assert mask[x, y, z] == (image[0, x, y, z] != 0 or image[1, x, y, z] != 0)
    assert bounding_box(mask) == [(2, 7), (1, 4), (4, 9)]
    assert crop_to_box(image, bounding_box(mask)).shape == (2, 5, 3, 5)
    with pytest.raises(ValueError):
        bounding_box(np.zeros((3, 3, 3), bool))


def test_zscore_statistics_naive():
    rng = np.random.default_rng(1)
    image = rng.integers(-50, 3000, size=(4, 12, 10, 8)).astype(np.int16)
    image[:, :3] = 0  # background
    image[2, 5, 5, 5] = 0  # a zero voxel inside the brain of one modality only
    out = zscore(image)
    mask = (image != 0).any(0)
    assert out.dtype == np.float32
    assert not out[:, ~mask].any()
    for c in range(4):
        values = [float(v) for v in out[c][mask]]
        n = len(values)
        mean = sum(values) / n
        std = (sum((v - mean) ** 2 for v in values) / n) ** 0.5
        assert abs(mean) < 1e-5 and abs(std - 1) < 1e-5
    raw = [float(v) for v in image[2][mask]]
    mean = sum(raw) / len(raw)
    std = (sum((v - mean) ** 2 for v in raw) / len(raw)) ** 0.5
    assert out[2, 5, 5, 5] == pytest.approx(-mean / std, rel=1e-5)


def test_zscore_constant_channel_is_zero():
    image = np.zeros((2, 4, 4, 4), np.float32)
    image[:, 1:3, 1:3, 1:3] = [[[[5.0]]], [[[7.0]]]]
    image[1, 1, 1, 1] = 9.0
    out = zscore(image)
    assert not out[0].any()
    assert out[1].std() > 0


@pytest.mark.parametrize(
    "start,size",
    [((1, 2, 0), (4, 3, 5)), ((-2, 3, -1), (6, 4, 9)), ((3, -3, 2), (5, 12, 3))],
)
def test_crop_pad_with_coordinate_encoding(start, size):
    shape = (7, 8, 6)
    volume = coord_volume(shape)
    out = crop_pad(volume[None], start, size)[0]
    assert out.shape == size
    for i, j, k in itertools.product(*map(range, size)):
        x, y, z = start[0] + i, start[1] + j, start[2] + k
        inside = 0 <= x < shape[0] and 0 <= y < shape[1] and 0 <= z < shape[2]
        assert out[i, j, k] == (encode(x, y, z) if inside else 0)


def test_crop_pad_reads_memmap_slice(tmp_path):
    volume = np.arange(4 * 10 * 11 * 12, dtype=np.float32).reshape(4, 10, 11, 12)
    np.save(tmp_path / "v.npy", volume)
    mm = np.load(tmp_path / "v.npy", mmap_mode="r")
    out = crop_pad(mm, (2, 3, 4), (5, 5, 5))
    assert type(out) is np.ndarray and out.flags.c_contiguous
    assert np.array_equal(out, volume[:, 2:7, 3:8, 4:9])


def test_paste_pad_inverts_crop_pad():
    shape = (7, 8, 6)
    volume = coord_volume(shape)
    start, size = (-2, 1, 1), (8, 5, 9)
    window = crop_pad(volume, start, size)
    back = paste_pad(window, start, shape)
    covered = np.zeros(shape, bool)
    covered[0:6, 1:6, 1:6] = True
    assert np.array_equal(back[covered], volume[covered])
    assert not back[~covered].any()


def test_random_crop_start_ranges():
    rng = np.random.default_rng(0)
    starts = np.array([random_crop_start((10, 6, 8), (4, 6, 11), rng) for _ in range(2000)])
    assert starts[:, 0].min() == 0 and starts[:, 0].max() == 6  # 10-4, inclusive
    assert (starts[:, 1] == 0).all()  # exact fit
    assert starts[:, 2].min() == -3 and starts[:, 2].max() == 0  # smaller: volume placed inside
    for s in starts[:50]:
        out = crop_pad(coord_volume((10, 6, 8)), s, (4, 6, 11))
        assert np.count_nonzero(out[0, 0]) == 8  # every z voxel of the volume is in the window


def test_center_crop_start():
    assert center_crop_start((240, 240, 155), (160, 192, 128)) == (40, 24, 13)
    assert center_crop_start((134, 177, 136), (160, 192, 128)) == (-13, -7, 4)  # pad 15: 7 before


def test_flip_naive_and_random_axes():
    volume = coord_volume((3, 4, 5))
    stacked = np.stack([volume, -volume])
    out = flip(stacked, (0, 2))
    for x, y, z in itertools.product(range(3), range(4), range(5)):
        assert out[0, x, y, z] == volume[2 - x, y, 4 - z]
        assert out[1, x, y, z] == -volume[2 - x, y, 4 - z]
    assert out.flags.c_contiguous
    assert np.array_equal(flip(volume, ()), volume)
    for axes in [(0,), (1, 2), (0, 1, 2)]:  # flipping while cropping == crop, then flip
        for start, size in [((1, 0, 2), (2, 4, 3)), ((-1, 1, -2), (5, 2, 8))]:
            fused = crop_pad(stacked, start, size, flip_axes=axes)
            assert fused.flags.c_contiguous
            assert np.array_equal(fused, flip(crop_pad(stacked, start, size), axes))
    rng = np.random.default_rng(0)
    draws = [random_flip_axes(rng, 0.5) for _ in range(4000)]
    freq = [sum(a in d for d in draws) / len(draws) for a in range(3)]
    assert all(abs(f - 0.5) < 0.04 for f in freq)
    assert random_flip_axes(rng, 0.0) == () and random_flip_axes(rng, 1.0) == (0, 1, 2)


def test_uncrop_to_original_numpy_and_torch():
    shape = (12, 10, 9)
    volume = coord_volume(shape)
    box = [(2, 9), (1, 10), (3, 8)]
    meta = {"shape": list(shape), "bbox": [list(b) for b in box]}
    cropped = np.stack([crop_to_box(volume, box), crop_to_box(volume, box) * 2])
    back = uncrop_to_original(cropped, meta)
    inside = np.zeros(shape, bool)
    inside[2:9, 1:10, 3:8] = True
    assert back.shape == (2, *shape)
    assert np.array_equal(back[0][inside], volume[inside]) and not back[:, ~inside].any()
    tensor_back = uncrop_to_original(torch.from_numpy(cropped), meta)
    assert isinstance(tensor_back, torch.Tensor) and np.array_equal(tensor_back.numpy(), back)
    # A centre crop of the box pastes back to the same place.
    start = center_crop_start((7, 9, 5), (4, 12, 5))
    window = crop_pad(crop_to_box(volume, box), start, (4, 12, 5))
    back = uncrop_to_original(window, {**meta, "crop_start": list(start)})
    assert np.array_equal(back[back != 0], volume[back != 0])
    assert np.count_nonzero(back) == 4 * 9 * 5


def test_center_crop_start_matches_center_crop_inference():
    import torch

    from rirn.data.transforms import center_crop_start, crop_pad
    from rirn.inference import center_crop_inference

    shape, roi = (29, 36, 31), (32, 32, 32)
    volume = torch.arange(float(np.prod(shape))).reshape(1, 1, *shape)
    seen = {}

    def model(x):  # records the window it is given, predicts its input
        seen["window"] = x.clone()
        return torch.logit(torch.full_like(x, 0.5)).repeat(1, 3, 1, 1, 1)

    center_crop_inference(model, volume, roi)
    start = center_crop_start(shape, roi)
    expected = crop_pad(volume[0].numpy(), start, roi)
    assert np.array_equal(seen["window"][0].numpy(), expected)
