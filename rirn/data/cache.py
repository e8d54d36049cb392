"""The preprocessed cache: one folder of ``.npy`` arrays per case, read as memory maps.

Format (docs/architecture.md)::

    <cache_dir>/dataset.json          {"release", "scheme", "source_root", "cases", "version"}
    <cache_dir>/<case_id>/image.npy   float32 (4, *B), z-scored, brain-box cropped
    <cache_dir>/<case_id>/seg.npy     uint8 (*B) region bits (absent when unlabelled)
    <cache_dir>/<case_id>/meta.json   see rirn.data.io.preprocess_case
    <cache_dir>/phenotypes.json       case id -> rirn.labels.phenotype (CacheSource.phenotypes)

A case is written into ``<case_id>.tmp-<random>`` and renamed into place, so a case folder
that exists is complete; a killed run leaves only ``*.tmp-*`` folders, which readers never
look at and :func:`ensure_cache` removes once they are old. ``dataset.json`` is written last.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rirn.data.discovery import CaseFiles, discover_cases
from rirn.data.io import preprocess_case
from rirn.errors import DataError
from rirn.labels import phenotype

CACHE_VERSION = 1
#: A temporary case folder older than this is a leftover of a killed run, not a live writer.
STALE_TMP_SECONDS = 600.0


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(4)}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def write_case(
    cache_dir: str | Path, image: np.ndarray, bits: np.ndarray | None, meta: dict
) -> Path:
    """Write one preprocessed case atomically; returns its folder.

    If another writer finished the same case first, its copy is kept and ours dropped.
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / meta["case_id"]
    tmp = cache_dir / f"{meta['case_id']}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        np.save(tmp / "image.npy", np.ascontiguousarray(image, dtype=np.float32))
        if bits is not None:
            np.save(tmp / "seg.npy", np.ascontiguousarray(bits, dtype=np.uint8))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if not is_complete(cache_dir, meta["case_id"]):
                raise DataError(
                    f"cache {cache_dir}: cannot write case {meta['case_id']}: {final} exists "
                    f"and is not a complete cached case ({exc}); remove it"
                ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def is_complete(cache_dir: str | Path, case_id: str) -> bool:
    """Whether ``case_id`` is cached (its folder exists, which only happens by the final rename)."""
    folder = Path(cache_dir) / case_id
    return (folder / "meta.json").is_file() and (folder / "image.npy").is_file()


def clean_stale_tmp(cache_dir: str | Path, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove ``*.tmp-*`` leftovers older than ``older_than`` seconds; returns what was removed.

    Younger ones may belong to a writer still running (another process) and are left alone.
    """
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    now = time.time()
    removed = []
    for p in cache_dir.glob("*.tmp-*"):
        if now - p.stat().st_mtime >= older_than:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _read_dataset_json(cache_dir: Path) -> dict | None:
    path = cache_dir / "dataset.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or not {"cases", "release", "scheme"} <= info.keys():
        raise DataError(f"{path}: corrupt cache index; delete the cache folder and rebuild it")
    return info


def _build_one(args: tuple[str, CaseFiles, str, str]) -> str:
    cache_dir, case, release, scheme = args
    image, bits, meta = preprocess_case(case, release, scheme)
    write_case(cache_dir, image, bits, meta)
    return case.case_id


def ensure_cache(
    root: str | Path,
    cache_dir: str | Path,
    release: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    require_seg: bool = True,
) -> Path:
    """Make sure every case under ``root`` is preprocessed in ``cache_dir``; returns it.

    Cases already cached are skipped, so a second call (or a rerun after a crash) only does
    what is missing. Call it from one process (DDP: rank 0, then a barrier).

    Args:
        root: BraTS dataset root (any layout; see :func:`rirn.data.discovery.discover_cases`).
        cache_dir: where the cache lives (created if needed).
        release: ``"auto"`` or a release name.
        num_workers: processes for preprocessing (0: in this process).
        progress: show a tqdm bar over the cases (on stderr, only when it is a terminal).
        require_seg: every case must have a segmentation.

    Raises:
        DataError: bad data (the first bad case stops the run; finished cases stay cached), or
            ``cache_dir`` holds a cache of another release/scheme or version.
    """
    index = discover_cases(root, release, require_seg=require_seg)
    cache_dir = Path(cache_dir).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    info = _read_dataset_json(cache_dir)
    if info is not None and (
        info.get("version") != CACHE_VERSION or info["scheme"] != index.scheme
    ):
        raise DataError(
            f"cache {cache_dir} holds version {info.get('version')} {info['scheme']!r} data, "
            f"not version {CACHE_VERSION} {index.scheme!r}; use another data.cache_dir"
        )
    clean_stale_tmp(cache_dir)
    todo = [c for c in index.cases if not is_complete(cache_dir, c.case_id)]
    if todo:
        # A rewritten case may have other labels: CacheSource.phenotypes recomputes them all.
        (cache_dir / "phenotypes.json").unlink(missing_ok=True)
    jobs = [(str(cache_dir), c, index.release, index.scheme) for c in todo]
    bar = tqdm(
        total=len(index.cases),
        initial=len(index.cases) - len(todo),
        desc="preprocess",
        unit="case",
        disable=None if progress else True,
    )
    with bar:
        if num_workers > 0 and len(jobs) > 1:
            # spawn: safe whatever the parent holds (threads, torch); workers import little.
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(min(num_workers, len(jobs))) as pool:
                for _ in pool.imap_unordered(_build_one, jobs):
                    bar.update()
        else:
            for job in jobs:
                _build_one(job)
                bar.update()
    _write_json(
        cache_dir / "dataset.json",
        {
            "release": index.release,
            "scheme": index.scheme,
            "source_root": str(index.root),
            "cases": index.case_ids,
            "version": CACHE_VERSION,
        },
    )
    return cache_dir


class CacheSource:
    """Cases read from a preprocessed cache as memory maps.

    Args:
        cache_dir: a folder written by :func:`ensure_cache` / ``python -m rirn.preprocess``.

    Attributes:
        case_ids: sorted case IDs of ``dataset.json``. ``release``, ``scheme``: of the data.

    Raises:
        DataError: no cache there (no ``dataset.json``), or a listed case is missing.
    """

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir).expanduser().resolve()
        info = _read_dataset_json(self.cache_dir)
        if info is None:
            raise DataError(
                f"{self.cache_dir} is not a complete rirn cache (no dataset.json); run "
                f"python -m rirn.preprocess data.root=DIR data.cache_dir={self.cache_dir}"
            )
        self.release = info["release"]
        self.scheme = info["scheme"]
        self.case_ids = sorted(info["cases"])
        missing = [c for c in self.case_ids if not is_complete(self.cache_dir, c)]
        if missing:
            raise DataError(f"cache {self.cache_dir}: case(s) {missing[:5]} listed but missing")

    def __len__(self) -> int:
        return len(self.case_ids)

    def load(self, case_id: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
        """``(image, bits, meta)`` of one case; the arrays are read-only memory maps.

        ``image`` float32 ``(4, *B)``, ``bits`` uint8 ``(*B)`` or ``None`` (unlabelled),
        ``meta`` the case's ``meta.json``. Slice before copying to read only what is needed.
        """
        folder = self.cache_dir / case_id
        if not is_complete(self.cache_dir, case_id):
            raise DataError(f"cache {self.cache_dir}: no case {case_id!r}")
        meta = json.loads((folder / "meta.json").read_text())
        image = np.load(folder / "image.npy", mmap_mode="r")
        seg_path = folder / "seg.npy"
        bits = np.load(seg_path, mmap_mode="r") if seg_path.is_file() else None
        return image, bits, meta

    def phenotypes(self) -> dict[str, str]:
        """Case ID -> :func:`rirn.labels.phenotype` of its labels (``"unlabelled"`` without).

        Read from ``<cache_dir>/phenotypes.json``; computed and written there (atomically) the
        first time, which reads every label map once (seconds for BraTS-sized caches).
        """
        path = self.cache_dir / "phenotypes.json"
        try:
            known = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            known = {}
        if not isinstance(known, dict) or any(c not in known for c in self.case_ids):
            known = {}
            for case_id in tqdm(
                self.case_ids, desc="phenotypes", unit="case", leave=False, disable=None
            ):
                bits = self.load(case_id)[1]
                known[case_id] = "unlabelled" if bits is None else phenotype(bits)
            _write_json(path, known)
        return {c: str(known[c]) for c in self.case_ids}
