"""Draw docs/images/synthetic.png: a few synthetic cases at their mid-tumour axial slice.

Rows are cases (high-grade-like ones and one low-grade-like), columns FLAIR, T1, T1ce, T2 and
the labels over FLAIR (WT blue, TC green, ET purple, as in the paper's figures)::

    python scripts/make_synthetic_figure.py [--out docs/images/synthetic.png] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing rirn
    sys.path.insert(0, str(REPO))

from rirn import viz  # noqa: E402
from rirn.data.modalities import MODALITIES  # noqa: E402
from rirn.data.synthetic import DEFAULT_SHAPE, SyntheticCase, simulate_case  # noqa: E402


def pick_cases(seed: int, shape, high: int, low: int) -> list[tuple[int, SyntheticCase]]:
    """The first ``high`` high-grade-like and ``low`` low-grade-like cases, by index."""
    chosen: list[tuple[int, SyntheticCase]] = []
    want = {False: high, True: low}
    index = 0
    while any(want.values()):
        case = simulate_case(index, shape, seed)
        if want[case.low_grade]:
            want[case.low_grade] -= 1
            chosen.append((index, case))
        index += 1
    return chosen


def case_row(case: SyntheticCase, crop: tuple[slice, slice]) -> list[np.ndarray]:
    """Tiles of one case at its mid-tumour axial slice, anterior up (np.rot90 of (X, Y))."""
    z = viz.mid_tumour_slice(case.seg > 0)

    def view(volume: np.ndarray) -> np.ndarray:
        return np.rot90(volume[crop[0], crop[1], z])

    tiles = [viz.normalize_slice(view(case.images[m]), low=0.0, high=99.5) for m in MODALITIES]
    # 64 gray levels look the same and keep the noisy tiles' PNG small.
    tiles = [np.where(t > 0, (t // 4) * 4 + 2, 0).astype(np.uint8) for t in tiles]
    tiles.append(viz.label_overlay(tiles[0], view(case.seg), scheme="brats", alpha=0.55))
    return tiles


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "synthetic.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=list(DEFAULT_SHAPE))
    parser.add_argument("--high", type=int, default=3, help="high-grade-like rows")
    parser.add_argument("--low", type=int, default=1, help="low-grade-like rows")
    args = parser.parse_args(argv)

    cases = pick_cases(args.seed, args.shape, args.high, args.low)
    # One crop for all tiles: the brain's in-plane bounding box over every case, plus a margin.
    brain = np.any([c.tissue > 0 for _, c in cases], axis=(0, 3))
    crop = tuple(
        slice(max(0, int(idx.min()) - 3), int(idx.max()) + 4)
        for idx in (np.flatnonzero(brain.any(axis=1)), np.flatnonzero(brain.any(axis=0)))
    )
    rows = [case_row(case, crop) for _, case in cases]
    path = viz.write_png(args.out, viz.montage(rows, pad=3, pad_value=255))
    names = ", ".join(f"{i} ({'low' if c.low_grade else 'high'})" for i, c in cases)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB): cases {names}")
    return path


if __name__ == "__main__":
    main()
