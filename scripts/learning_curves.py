"""Learning curves of training runs: validation Dice per region against optimisation steps.

    python scripts/learning_curves.py --out docs/images/recipe_curves \
        dice=outputs/t1ce/RUN_A dice_bce=outputs/t1ce/RUN_B dice_bce+fg=outputs/t1ce/RUN_C

Each ``LABEL=RUN_DIR`` is a run folder of ``python -m rirn.train`` (its ``metrics.jsonl``). Writes
``OUT.png`` (rows teacher, student; columns WT, TC, ET, mean; one colour per run, in the order
given; x from 0 to the longest run's last step, y from 0 to 1 with grid lines every 0.2) and
``OUT.md`` (the colour of each run and the table of every validation). Runs to compare should
share data, split and seed; the script only reads what the runs logged. Needs only numpy (the
PNG is drawn with rirn's dependency-free picture helpers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from rirn.labels import REGIONS
from rirn.viz import write_png

#: One colour per run, in order (colour-blind-safe Okabe-Ito palette).
COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (213, 94, 0),
    (86, 180, 233),
    (0, 0, 0),
    (240, 228, 66),
)
COLOUR_NAMES = ("blue", "orange", "green", "pink", "vermilion", "sky blue", "black", "yellow")
PANEL_W, PANEL_H, MARGIN = 220, 150, 28
WHO = ("teacher", "student")
COLUMNS = (*REGIONS, "mean")

# A 3x5 bitmap font for the panel titles and axis labels (enough letters for them).
_FONT = {
    "0": "111101101101111",
    "1": "010110010010111",
    "2": "111001111100111",
    "3": "111001111001111",
    "4": "101101111001001",
    "5": "111100111001111",
    "6": "111100111101111",
    "7": "111001001001001",
    "8": "111101111101111",
    "9": "111101111001111",
    ".": "000000000000010",
    " ": "000000000000000",
    "A": "010101111101101",
    "C": "111100100100111",
    "D": "110101101101110",
    "E": "111100110100111",
    "H": "101101111101101",
    "M": "101111111101101",
    "N": "110101101101101",
    "P": "111101111100100",
    "R": "110101110101101",
    "S": "111100111001111",
    "T": "111010010010010",
    "U": "101101101101111",
    "W": "101101101111111",
    "I": "111010010010111",
    "/": "001001010100100",
}


def read_curve(run_dir: Path) -> list[dict]:
    """Validation rows of ``run_dir/metrics.jsonl`` (rows that have ``teacher/mean``), each
    with its optimisation ``step``."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (not a rirn run folder?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "teacher/mean" in r]
    if not rows:
        raise SystemExit(f"error: {path} has no validation rows")
    for r in rows:
        if "step" not in r:
            raise SystemExit(f"error: {path} predates step logging (no 'step' in its rows)")
    return rows


def _text(canvas: np.ndarray, x: int, y: int, text: str, scale: int = 2) -> None:
    for i, ch in enumerate(text.upper()):
        bits = _FONT.get(ch, _FONT[" "])
        for k, b in enumerate(bits):
            if b == "1":
                r, c = divmod(k, 3)
                y0, x0 = y + r * scale, x + (i * 4 + c) * scale
                canvas[y0 : y0 + scale, x0 : x0 + scale] = 0


def _line(canvas, x0, y0, x1, y1, colour, width=2) -> None:
    n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    for t in np.linspace(0.0, 1.0, n):
        x, y = int(round(x0 + t * (x1 - x0))), int(round(y0 + t * (y1 - y0)))
        canvas[max(y - width // 2, 0) : y + width - width // 2, max(x - width // 2, 0) : x + 1] = (
            colour
        )


def plot(curves: dict[str, list[dict]]) -> np.ndarray:
    """RGB ``uint8`` picture: rows teacher/student, columns WT/TC/ET/mean."""
    max_step = max(r["step"] for rows in curves.values() for r in rows)
    height = len(WHO) * (PANEL_H + 2 * MARGIN) + MARGIN
    width = len(COLUMNS) * (PANEL_W + 2 * MARGIN)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for row, who in enumerate(WHO):
        for col, name in enumerate(COLUMNS):
            left = col * (PANEL_W + 2 * MARGIN) + MARGIN
            top = row * (PANEL_H + 2 * MARGIN) + MARGIN
            _text(canvas, left, top - 14, f"{who} {name}")
            for k in range(6):  # Dice 0, 0.2, ..., 1
                y = top + PANEL_H - int(k / 5 * PANEL_H)
                canvas[y, left : left + PANEL_W] = (200, 200, 200) if 0 < k < 5 else (0, 0, 0)
                _text(canvas, left - 26, y - 4, f"{k / 5:.1f}", scale=1)
            canvas[top : top + PANEL_H + 1, left] = 0
            canvas[top : top + PANEL_H + 1, left + PANEL_W] = (200, 200, 200)
            _text(canvas, left, top + PANEL_H + 6, "0", scale=1)
            label = f"{max_step} STEPS"
            _text(canvas, left + PANEL_W - 4 * len(label), top + PANEL_H + 6, label, scale=1)
            for (_, rows), colour in zip(curves.items(), COLOURS, strict=False):
                pts = [
                    (
                        left + r["step"] / max_step * PANEL_W,
                        top + PANEL_H - r[f"{who}/{name}"] * PANEL_H,
                    )
                    for r in rows
                ]
                pts = [(left, top + PANEL_H), *pts] if pts[0][0] > left else pts
                for (xa, ya), (xb, yb) in zip(pts, pts[1:], strict=False):
                    _line(canvas, xa, ya, xb, yb, colour)
    return canvas


def table(curves: dict[str, list[dict]]) -> str:
    lines = [
        "| run | colour | step | teacher WT/TC/ET (mean) | student WT/TC/ET (mean) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for (label, rows), colour in zip(curves.items(), COLOUR_NAMES, strict=False):
        for r in rows:
            cells = [
                "/".join(f"{r[f'{who}/{g}']:.2f}" for g in REGIONS) + f" ({r[f'{who}/mean']:.2f})"
                for who in WHO
            ]
            lines.append(f"| {label} | {colour} | {r['step']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR, one per curve")
    parser.add_argument("--out", required=True, help="output prefix (writes OUT.png and OUT.md)")
    args = parser.parse_args(argv)
    if len(args.runs) > len(COLOURS):
        raise SystemExit(f"error: at most {len(COLOURS)} runs per plot")
    curves = {}
    for spec in args.runs:
        label, sep, run = spec.partition("=")
        if not sep or not label:
            raise SystemExit(f"error: {spec!r} is not LABEL=RUN_DIR")
        curves[label] = read_curve(Path(run))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_png(out.with_suffix(".png"), plot(curves))
    out.with_suffix(".md").write_text(table(curves))
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
