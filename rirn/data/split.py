"""The train/validation split (2:1, as the paper's Sec. 4.1) and its ``split.json`` file.

File format: ``{"train": [case ids], "val": [case ids], "seed": int}`` (IDs sorted; plus
``"stratified": true`` for a split stratified by phenotype). A split file
given by the user is honoured as it is, after checking that its IDs exist.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from rirn.errors import DataError


def make_split(
    case_ids: Iterable[str],
    seed: int = 0,
    val_fraction: float = 1 / 3,
    strata: Mapping[str, str] | None = None,
) -> dict:
    """Random split of ``case_ids`` into train and validation, deterministic in ``seed``.

    The IDs are sorted first, so the split depends only on the set of IDs (and their strata) and
    the seed. ``round(n * val_fraction)`` cases go to validation (at least 1 when ``n >= 2``).

    With ``strata`` (case ID -> group, e.g. :func:`rirn.labels.phenotype`) the split is
    stratified, as scikit-learn's ``StratifiedShuffleSplit``: each group sends its share of
    ``n_val`` to validation (the floor of ``n_group * n_val / n``, the cases left over going
    to the groups with the largest remainders, ties broken at random), so a small validation
    set holds a rare phenotype about as often as the data does instead of by the luck of the
    draw. Without ``strata`` it is the plain random split of earlier versions (same IDs).

    Returns:
        ``{"train": sorted ids, "val": sorted ids, "seed": seed}`` plus ``"stratified": true``
        when ``strata`` was given.
    """
    ids = sorted(set(case_ids))
    n = len(ids)
    n_val = min(max(round(n * val_fraction), 1 if n >= 2 else 0), max(n - 1, 0))
    rng = np.random.default_rng(seed)
    if strata is None:
        order = rng.permutation(n)
        val = sorted(ids[i] for i in order[:n_val])
        train = sorted(ids[i] for i in order[n_val:])
        return {"train": train, "val": val, "seed": int(seed)}
    missing = [c for c in ids if c not in strata]
    if missing:
        raise ValueError(f"no stratum for case(s) {missing[:5]}")
    groups: dict[str, list[str]] = {}
    for c in ids:
        groups.setdefault(str(strata[c]), []).append(c)
    names = sorted(groups)
    # Integer arithmetic: share n_g * n_val / n = quota + remainder / n, so ties are exact.
    quota, remainder = np.divmod(np.array([len(groups[g]) * n_val for g in names]), n)
    left = n_val - int(quota.sum())
    # Largest remainder first; the random key breaks ties without favouring a group's name.
    order = np.lexsort((rng.random(len(names)), -remainder))
    quota[order[:left]] += 1
    val: list[str] = []
    for g, k in zip(names, quota, strict=True):
        members = groups[g]
        val += [members[i] for i in rng.permutation(len(members))[:k]]
    chosen = set(val)
    train = [c for c in ids if c not in chosen]
    return {"train": train, "val": sorted(val), "seed": int(seed), "stratified": True}


def validate_split(
    split: dict, case_ids: Iterable[str] | None = None, where: str = "split"
) -> dict:
    """Check a split dict; returns it with ``train``/``val`` as lists of ``str``.

    Raises:
        DataError: missing keys, IDs in both parts, duplicate IDs, empty train part, or (when
            ``case_ids`` is given) IDs that are not in the dataset.
    """
    if not isinstance(split, dict) or not all(
        isinstance(split.get(k), list) for k in ("train", "val")
    ):
        raise DataError(f"{where}: expected {{'train': [ids], 'val': [ids], 'seed': int}}")
    train = [str(c) for c in split["train"]]
    val = [str(c) for c in split["val"]]
    if not train:
        raise DataError(f"{where}: the train list is empty")
    dup = sorted(c for c, k in Counter(train + val).items() if k > 1)
    if dup:
        raise DataError(f"{where}: case(s) listed twice or in both train and val: {dup[:5]}")
    if case_ids is not None:
        known = set(case_ids)
        unknown = [c for c in train + val if c not in known]
        if unknown:
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise DataError(f"{where}: case(s) not in the dataset: {unknown[:5]}{more}")
    return {**split, "train": train, "val": val}


def write_split(path: str | Path, split: dict) -> Path:
    """Write ``split`` as JSON to ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=1) + "\n")
    return path


def read_split(path: str | Path, case_ids: Iterable[str] | None = None) -> dict:
    """Read and validate a split file (see :func:`validate_split`).

    Raises:
        DataError: missing or unreadable file, bad format, or unknown IDs.
    """
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"split file {path} not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"split file {path}: unreadable ({exc})") from exc
    return validate_split(split, case_ids, where=f"split file {path}")


def resolve_split(
    case_ids: Iterable[str],
    seed: int = 0,
    split_file: str | Path | None = None,
    out_path: str | Path | None = None,
) -> dict:
    """The split to use: ``split_file`` if given (validated), else :func:`make_split`.

    When ``out_path`` is given the split is also written there (the run's ``split.json``).
    """
    case_ids = list(case_ids)
    split = read_split(split_file, case_ids) if split_file else make_split(case_ids, seed)
    if out_path is not None:
        write_split(out_path, split)
    return split
