"""Picture helpers: windowing, overlays, montage, PNG encoding (decoded here independently)."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from rirn import viz
from rirn.labels import get_scheme, labels_to_regions


def _decode_png(data: bytes) -> np.ndarray:
    """Minimal reference PNG decoder (8-bit gray/RGB, all five filter types, byte by byte)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks][0] == b"IHDR" and chunks[-1] == (b"IEND", b"")
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, comp, filt, interlace) == (8, 0, 0, 0)
    bpp = {0: 1, 2: 3}[colour]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = w * bpp
    assert len(raw) == h * (stride + 1)
    rows, prev = [], [0] * stride
    for y in range(h):
        ftype, line = (
            raw[y * (stride + 1)],
            list(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        out = []
        for x in range(stride):
            a = out[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out.append((line[x] + pred) % 256)
        rows.append(out)
        prev = out
    img = np.array(rows, dtype=np.uint8)
    return img.reshape(h, w, 3) if bpp == 3 else img


@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 1, 3), (6, 9)])
def test_png_round_trips_through_an_independent_decoder(tmp_path, shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    img[0] = 255  # saturated rows and smooth ramps exercise the Paeth ties
    img[-1, :] = np.arange(img.shape[1], dtype=np.uint8).reshape(-1, *([1] * (img.ndim - 2)))
    path = viz.write_png(tmp_path / "sub" / "x.png", img)
    np.testing.assert_array_equal(_decode_png(path.read_bytes()), img)


def test_png_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        viz.encode_png(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        viz.encode_png(np.zeros((2, 2, 4), dtype=np.uint8))


def test_normalize_slice_windows_nonzero_pixels_and_keeps_background_black():
    img = np.zeros((4, 30))
    img[1:3] = np.arange(1, 31)  # values 1..30 twice, rest background
    out = viz.normalize_slice(img, low=0, high=100)
    expected = np.round((img - 1) / 29 * 255).clip(0, 255)
    expected[img == 0] = 0
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert out.dtype == np.uint8
    assert not viz.normalize_slice(np.zeros((3, 3))).any()
    const = viz.normalize_slice(np.where(np.eye(3) > 0, 7.0, 0.0))
    np.testing.assert_array_equal(const, np.eye(3, dtype=np.uint8) * 255)
    # Outliers beyond the percentiles saturate instead of darkening everything else.
    spiky = img.copy()
    spiky[1, 0] = 1e6
    windowed = viz.normalize_slice(spiky, high=95)
    assert windowed[1, 0] == windowed[2, 29] == 255 and windowed[2, 14] > 100


def test_overlay_paints_nested_regions_innermost_last():
    gray = np.full((1, 4), 100, dtype=np.uint8)
    wt = np.array([[1, 1, 1, 0]], bool)
    tc = np.array([[0, 1, 1, 0]], bool)
    et = np.array([[0, 0, 1, 0]], bool)
    solid = viz.overlay(gray, np.stack([wt, tc, et]), alpha=1.0)
    wt_c, tc_c, et_c = viz.REGION_COLOURS
    np.testing.assert_array_equal(solid[0], [wt_c, tc_c, et_c, (100, 100, 100)])
    half = viz.overlay(gray, np.stack([wt, tc, et]), alpha=0.5)
    np.testing.assert_array_equal(half[0, 2], np.round((np.array(et_c) + 100) / 2))
    np.testing.assert_array_equal(viz.overlay(gray, np.stack([wt, tc, et]), alpha=0.0)[0], 100)
    assert et_c[2] > et_c[1] and et_c[0] > et_c[1]  # purple
    assert wt_c[2] == max(wt_c) and tc_c[1] == max(tc_c)  # blue, green


def test_label_overlay_matches_region_overlay():
    rng = np.random.default_rng(1)
    gray = rng.random((8, 9))
    seg = rng.choice([0, 1, 2, 4], size=(8, 9)).astype(np.uint8)
    regions = labels_to_regions(seg, get_scheme("brats"))
    np.testing.assert_array_equal(viz.label_overlay(gray, seg), viz.overlay(gray, regions))


def test_montage_places_tiles_in_a_padded_grid():
    a = np.full((2, 3, 3), 10, np.uint8)
    b = np.full((4, 2), 20, np.uint8)  # gray uint8 tile, taller
    c = np.full((1, 1, 3), 30, np.uint8)
    out = viz.montage([[a, b], [c]], pad=1, pad_value=255)
    # Row heights 4 and 1, column widths 3 and 2: (1+4+1+1+1) x (1+3+1+2+1).
    assert out.shape == (8, 8, 3)
    assert (out[1:3, 1:4] == 10).all() and (out[3:5, 1:4] == 255).all()
    assert (out[1:5, 5:7] == 20).all()
    assert (out[6, 1] == 30).all() and (out[6, 2:] == 255).all()
    assert (out[0] == 255).all() and (out[:, 0] == 255).all()


def test_mid_tumour_slice_picks_the_largest_axial_area():
    mask = np.zeros((5, 6, 7), dtype=np.uint8)
    mask[1:3, 1:3, 2] = 1  # 4 voxels
    mask[0:3, 0:3, 5] = 2  # 9 voxels
    assert viz.mid_tumour_slice(mask) == 5
    assert viz.mid_tumour_slice(np.zeros((5, 6, 7))) == 3
    with pytest.raises(ValueError):
        viz.mid_tumour_slice(np.zeros((5, 6)))
