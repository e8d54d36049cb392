"""scripts/probe_terms.py: per-term values and gradient ratios of a real (tiny) run."""

from __future__ import annotations

import importlib.util

import pytest

from .conftest import REPO
from .step_fixtures import TINY_RUN, train_run

_spec = importlib.util.spec_from_file_location("probe_terms", REPO / "scripts" / "probe_terms.py")
probe_terms = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe_terms)


def test_probe_of_a_tiny_run(tmp_path, cache_root):
    common = [*TINY_RUN, f"data.cache_root={cache_root}", "trainer.max_epochs=1"]
    run_dir, _ = train_run(tmp_path, [*common, "loss.start_epoch=0"], name="rirn")
    out = probe_terms.probe(run_dir, batches=2)
    assert set(out) == {"seg_s", "crr", "car", "adv"}
    seg = out["seg_s"]
    assert seg["ratio_median"] == seg["ratio_min"] == seg["ratio_max"] == pytest.approx(1.0)
    assert 0 <= out["car"]["value"] <= 2 / 32 + 1e-6  # Eq. 7's bound 2/C, C = 32 here
    assert out["adv"]["value"] > 0 and out["adv"]["grad_norm"] > 0
    for term in ("crr", "car", "adv"):
        assert 0.0 <= out[term]["steers"] <= 1.0
    # At step 0 the non-local block's output norm has scale 0, so the segmentation loss sends
    # its theta no gradient at all: wherever CAR's gradient is non-zero it outweighs it.
    init = probe_terms.probe(run_dir, batches=1, init=True)
    assert init["car"]["shares"]["nonlocal_block.theta.weight"] == 1.0
    assert init["car"]["most_at"].endswith("(100%)")
    assert out["car"]["shares"].keys() == init["adv"]["shares"].keys()
    baseline_dir, _ = train_run(tmp_path, [*common, "loss=baseline"], name="baseline")
    assert set(probe_terms.probe(baseline_dir, batches=1)) == {"seg_s"}
    with pytest.raises(SystemExit, match="does not exist"):
        probe_terms.probe(tmp_path / "nope")
