"""Shared fixtures: Hydra-composed configs pointing every cache at a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rirn.config import CONFIG_DIR

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "brats2021-sample"


def compose_config(name: str = "train", overrides: list[str] | None = None):
    """Compose ``configs/<name>.yaml`` with overrides, as the command line would."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides or []), return_hydra_config=False)


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """One cache root for the whole session, so the smoke synthetic data is generated once."""
    return tmp_path_factory.mktemp("rirn-cache")


@pytest.fixture
def smoke_overrides(cache_root) -> list[str]:
    return ["debug=smoke", f"data.cache_root={cache_root}", "trainer.progress=false"]


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``python -m ...`` with this interpreter; single-threaded to keep CI cores free."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
