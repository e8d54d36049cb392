"""Small dependency-free picture helpers: slice normalisation, region overlays, montages, PNG.

Used by the documentation figures, TensorBoard image summaries and evaluation figures. Only
numpy, ``zlib`` and ``struct`` are needed (no matplotlib, no PIL).

Conventions:

* A *gray* image is a 2-D array ``(H, W)`` of any real dtype; an *RGB* image is ``uint8``
  ``(H, W, 3)``. Rows are the first axis, as in every image format.
* Region masks are ``(3, H, W)`` bool in the order of :data:`rirn.labels.REGIONS`
  (WT, TC, ET) and are drawn in the colours of the paper's figures (Fig. 6-7): WT blue,
  TC green, ET purple. Regions are painted outermost first, so for nested masks the innermost
  region shows.
* Functions taking volumes accept numpy arrays or CPU torch tensors (anything
  :func:`numpy.asarray` understands).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

from rirn.labels import get_scheme, labels_to_regions

#: RGB colour of each region, in :data:`rirn.labels.REGIONS` order (WT, TC, ET).
REGION_COLOURS: tuple[tuple[int, int, int], ...] = ((40, 110, 255), (40, 200, 60), (190, 50, 230))

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def normalize_slice(img2d, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Window a 2-D image to ``uint8`` between two percentiles of its non-zero pixels.

    MRI backgrounds are exactly 0, so the window is taken over the non-zero pixels only and 0
    stays black. An all-zero image stays black; a constant one turns white where non-zero.

    Args:
        img2d: ``(H, W)`` real array.
        low, high: percentiles (0-100) mapped to 0 and 255.

    Returns:
        ``uint8 (H, W)``.
    """
    img = np.asarray(img2d, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"normalize_slice expects a 2-D image, got shape {img.shape}")
    values = img[img != 0]
    if values.size == 0:
        return np.zeros(img.shape, dtype=np.uint8)
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        return np.where(img != 0, 255, 0).astype(np.uint8)
    out = np.clip((img - lo) / (hi - lo), 0.0, 1.0) * 255.0
    out[img == 0] = 0.0
    return np.round(out).astype(np.uint8)


def to_rgb(img) -> np.ndarray:
    """Gray ``(H, W)`` (windowed with :func:`normalize_slice` unless ``uint8``) or RGB -> RGB."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 3:
        return img.astype(np.uint8, copy=False)
    if img.ndim != 2:
        raise ValueError(f"expected a gray (H, W) or RGB (H, W, 3) image, got shape {img.shape}")
    gray = img if img.dtype == np.uint8 else normalize_slice(img)
    return np.repeat(gray[:, :, None], 3, axis=2)


def overlay(gray2d, masks, alpha: float = 0.5) -> np.ndarray:
    """Blend region masks over a gray image in the paper's colours.

    Args:
        gray2d: ``(H, W)`` image; windowed with :func:`normalize_slice` unless already ``uint8``
            (an RGB ``(H, W, 3)`` image is used as it is).
        masks: ``(3, H, W)`` bool (WT, TC, ET). Painted WT, then TC, then ET, so the innermost
            nested region is the visible one.
        alpha: opacity of the colours (0 = image only, 1 = solid colours).

    Returns:
        ``uint8 (H, W, 3)``.
    """
    base = to_rgb(gray2d).astype(np.float32)
    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 3 or masks.shape[1:] != base.shape[:2]:
        raise ValueError(
            f"masks must be (n, H, W) with (H, W) = {base.shape[:2]}, got {masks.shape}"
        )
    if masks.shape[0] > len(REGION_COLOURS):
        raise ValueError(f"at most {len(REGION_COLOURS)} region masks, got {masks.shape[0]}")
    out = base.copy()
    for mask, colour in zip(masks, REGION_COLOURS[: len(masks)], strict=True):
        out[mask] = (1.0 - alpha) * base[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return np.round(out).astype(np.uint8)


def label_overlay(gray2d, seg_labels, scheme: str = "brats", alpha: float = 0.5) -> np.ndarray:
    """:func:`overlay` of a release label map ``(H, W)`` read with label scheme ``scheme``."""
    regions = labels_to_regions(np.asarray(seg_labels), get_scheme(scheme))
    return overlay(gray2d, regions, alpha)


def montage(rows, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Arrange tiles in a grid.

    Args:
        rows: list of rows, each a list of tiles (RGB ``(h, w, 3)`` or gray ``(h, w)``, see
            :func:`to_rgb`). Tiles may differ in size: each sits top-left in a cell as tall as
            the tallest tile of its row and as wide as the widest tile of its column; short
            rows leave their last cells empty.
        pad: pixels between cells and around the grid.
        pad_value: gray level of the padding and empty space.

    Returns:
        ``uint8 (H, W, 3)``.
    """
    tiles = [[to_rgb(t) for t in row] for row in rows]
    if not tiles or not any(tiles):
        raise ValueError("montage needs at least one tile")
    ncol = max(len(row) for row in tiles)
    heights = [max((t.shape[0] for t in row), default=0) for row in tiles]
    widths = [
        max((row[c].shape[1] for row in tiles if c < len(row)), default=0) for c in range(ncol)
    ]
    out = np.full(
        (sum(heights) + pad * (len(tiles) + 1), sum(widths) + pad * (ncol + 1), 3),
        pad_value,
        dtype=np.uint8,
    )
    y = pad
    for row, h in zip(tiles, heights, strict=True):
        x = pad
        for c, tile in enumerate(row):
            out[y : y + tile.shape[0], x : x + tile.shape[1]] = tile
            x += widths[c] + pad
        y += h + pad
    return out


def _paeth_filter(raw: np.ndarray, bpp: int) -> np.ndarray:
    """PNG filter type 4 of every scanline at once: ``raw (H, W*bpp)`` uint8 -> same shape.

    The Paeth predictor only looks at unfiltered bytes (left ``a``, up ``b``, up-left ``c``), so
    all rows are filtered together; it makes MRI pictures about a third smaller than no filter.
    """
    raw16 = raw.astype(np.int16)
    a = np.zeros_like(raw16)
    b = np.zeros_like(raw16)
    c = np.zeros_like(raw16)
    a[:, bpp:] = raw16[:, :-bpp]
    b[1:] = raw16[:-1]
    c[1:, bpp:] = raw16[:-1, :-bpp]
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
    return ((raw16 - pred) % 256).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(img) -> bytes:
    """Encode ``uint8`` RGB ``(H, W, 3)`` or gray ``(H, W)`` as PNG bytes (8 bit, Paeth filter)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"PNG images must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 3:
        colour_type, bpp = 2, 3
    elif img.ndim == 2:
        colour_type, bpp = 0, 1
    else:
        raise ValueError(f"expected (H, W, 3) RGB or (H, W) gray, got shape {img.shape}")
    h, w = img.shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot encode an empty image of shape {img.shape}")
    filtered = _paeth_filter(np.ascontiguousarray(img).reshape(h, w * bpp), bpp)
    scanlines = np.concatenate([np.full((h, 1), 4, dtype=np.uint8), filtered], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 9))
        + _chunk(b"IEND", b"")
    )


def write_png(path: str | Path, rgb) -> Path:
    """Write a ``uint8`` RGB ``(H, W, 3)`` or gray ``(H, W)`` image as a PNG file.

    Creates the parent directory; returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(rgb))
    return path


def mid_tumour_slice(mask3d) -> int:
    """Index of the axial slice (last axis, ``Z`` of ``(X, Y, Z)``) with the most tumour.

    Args:
        mask3d: ``(X, Y, Z)`` array; non-zero voxels count as tumour (a label map or WT mask).

    Returns:
        The first ``z`` with the largest tumour area, or ``Z // 2`` when there is no tumour.
    """
    mask = np.asarray(mask3d)
    if mask.ndim != 3:
        raise ValueError(f"mid_tumour_slice expects a 3-D (X, Y, Z) mask, got shape {mask.shape}")
    counts = np.count_nonzero(mask, axis=(0, 1))
    if not counts.any():
        return mask.shape[2] // 2
    return int(np.argmax(counts))
