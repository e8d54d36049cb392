"""Evaluation pictures in the style of the paper's Fig. 6/7.

One PNG per case: a row of tiles on the axial slice with the most ground-truth tumour
(:func:`rirn.viz.mid_tumour_slice`): the input modality alone, then ground truth, teacher and
student (whichever are given, in that order) overlaid in the paper's colours (WT blue, TC green,
ET purple; :func:`rirn.viz.overlay`). Slices are rotated 90° (``np.rot90`` of the ``(X, Y)``
slice) so that the image's first axis runs left to right, as radiology viewers show BraTS.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from rirn.viz import mid_tumour_slice, montage, normalize_slice, overlay, write_png

#: Small volumes (synthetic data) are enlarged by an integer factor to about this many pixels.
MIN_TILE = 192


def _axial(volume: np.ndarray, z: int) -> np.ndarray:
    """``(..., X, Y, Z)`` -> the rotated axial slice ``(..., Y, X)``."""
    return np.rot90(np.asarray(volume)[..., z], axes=(-2, -1))


def _enlarge(tile: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an ``(H, W, ...)`` tile (keeps label edges crisp)."""
    return tile.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else tile


def case_figure(
    image: np.ndarray, ground_truth: np.ndarray, predictions: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Tiles ``[input, ground truth, *predictions]`` of one case, side by side.

    Args:
        image: ``(X, Y, Z)`` one input modality (any real dtype; windowed per slice).
        ground_truth: ``(3, X, Y, Z)`` bool region masks (WT, TC, ET).
        predictions: ``{name: (3, X, Y, Z) bool}`` in display order (e.g. teacher, student).

    Returns:
        ``uint8 (H, W, 3)`` RGB picture; slices smaller than :data:`MIN_TILE` pixels are
        enlarged by an integer factor.
    """
    z = mid_tumour_slice(ground_truth[0])
    gray = normalize_slice(_axial(image, z))
    masks = [ground_truth, *predictions.values()]
    tiles = [gray, *(overlay(gray, _axial(m, z)) for m in masks)]
    factor = max(1, -(-MIN_TILE // max(gray.shape)))
    return montage([[_enlarge(t, factor) for t in tiles]])


def write_case_figure(
    path: str | Path,
    image: np.ndarray,
    ground_truth: np.ndarray,
    predictions: Mapping[str, np.ndarray],
) -> Path:
    """Write :func:`case_figure` as a PNG file (parent folders created); returns the path."""
    return write_png(path, case_figure(image, ground_truth, predictions))
