"""scripts/learning_curves.py: the table repeats the logged values, the plot puts each run's
points where its Dice and step say."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from .conftest import REPO

_spec = importlib.util.spec_from_file_location(
    "learning_curves", REPO / "scripts" / "learning_curves.py"
)
learning_curves = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learning_curves)


def _run(tmp_path, name, dices):
    run = tmp_path / name
    run.mkdir()
    rows = [{"epoch": 1, "step": 4, "train/total": 1.0}]  # an epoch without validation
    for step, d in dices:
        row = {"epoch": step // 4, "step": step}
        for who in ("teacher", "student"):
            row.update({f"{who}/{r}": d for r in ("WT", "TC", "ET")})
            row[f"{who}/mean"] = d
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_table_and_plot(tmp_path):
    a = _run(tmp_path, "a", [(50, 0.2), (100, 0.5)])
    b = _run(tmp_path, "b", [(100, 1.0)])
    out = tmp_path / "fig" / "curves"
    assert learning_curves.main([f"dice={a}", f"dice_bce={b}", "--out", str(out)]) == 0
    md = out.with_suffix(".md").read_text()
    assert "| dice | blue | 50 | 0.20/0.20/0.20 (0.20) | 0.20/0.20/0.20 (0.20) |" in md
    assert "| dice_bce | orange | 100 | 1.00/1.00/1.00 (1.00) |" in md
    assert md.count("\n") == 2 + 3  # header, rule, three validation rows
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    canvas = learning_curves.plot(
        {"dice": learning_curves.read_curve(a), "dice_bce": learning_curves.read_curve(b)}
    )
    m, w, h = learning_curves.MARGIN, learning_curves.PANEL_W, learning_curves.PANEL_H
    # run a's last point (step 100 = the right edge, Dice 0.5) in the first panel
    x, y = m + w, m + h - int(0.5 * h)
    patch = canvas[y - 2 : y + 3, x - 2 : x + 1].reshape(-1, 3)
    assert any(tuple(p) == learning_curves.COLOURS[0] for p in patch)
    # run b ends at Dice 1 on the top edge
    patch = canvas[m - 1 : m + 2, x - 2 : x + 1].reshape(-1, 3)
    assert any(tuple(p) == learning_curves.COLOURS[1] for p in patch)
    assert canvas.dtype == np.uint8


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="not LABEL=RUN_DIR"):
        learning_curves.main([str(tmp_path), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="does not exist"):
        learning_curves.main([f"a={tmp_path / 'nope'}", "--out", str(tmp_path / "x")])
