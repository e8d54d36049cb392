"""``python -m rirn.preprocess``: build the preprocessed cache of a BraTS dataset.

Example::

    python -m rirn.preprocess data.root=/data/BraTS2021 data.cache_dir=/scratch/brats21 \
        data.num_workers=4

Every case is read, z-scored per modality over the brain and cropped to the brain bounding box
(:func:`rirn.data.io.preprocess_case`), then written atomically to the cache
(:mod:`rirn.data.cache`). Cases already cached are skipped. The last line printed says where
the cache is. Bad data ends the run with one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from rirn.config import CONFIG_DIR
from rirn.data.cache import CacheSource, ensure_cache
from rirn.errors import ConfigError, cli_errors

__all__ = ["ensure_cache", "main", "run"]


def run(cfg: DictConfig) -> Path:
    """Build the cache described by a ``preprocess.yaml`` config; returns the cache folder."""
    data = cfg.data
    for key in ("root", "cache_dir"):
        if OmegaConf.is_missing(data, key) or not data[key]:
            raise ConfigError(
                f"data.{key} is required: python -m rirn.preprocess data.root=DIR "
                "data.cache_dir=DIR"
            )
    cache = ensure_cache(
        data.root,
        data.cache_dir,
        release=str(data.release),
        num_workers=int(data.num_workers),
        progress=bool(cfg.progress),
        require_seg=bool(data.require_seg),
    )
    n = len(CacheSource(cache).case_ids)
    print(f"cache ready: {cache} ({n} cases)", flush=True)
    return cache


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="preprocess")
@cli_errors
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
