"""The deployment bundle: the students of a sweep in one self-describing, checksummed folder.

Written by ``python -m rirn.export`` (:func:`export_bundle`), read by ``python -m rirn.predict
bundle=...`` (:func:`open_bundle`), which segments each case with the student of the modalities
that case has (:func:`rirn.evaluation.bundle_predict.choose_student`). Layout::

    <bundle>/manifest.json          what is in it (below), written last
    <bundle>/students/<subset>.pt   one student's UNet3D state dict, e.g. students/flair+t2.pt
    <bundle>/teacher.pt             the full-modality teacher (only with ``teacher=true``)

A weights file is ``torch.save`` of a plain ``{name: tensor}`` state dict (no optimiser,
discriminator or RNG state), so it loads with ``torch.load(weights_only=True)``: a bundle file
cannot run code when it is read. ``manifest.json``::

    {"format": "rirn-bundle", "format_version": 1, "rirn_version": "0.1.0", "created": ISO time,
     "students": [MODEL, ...] (paper subset order), "teacher": MODEL or null,
     "dropped": [{"subset", "source", "validation_mean", "kept"}],  # duplicates of a subset
     "skipped": [{"source", "reason"}]}                              # sweep runs with no checkpoint

    MODEL = {"subset": "flair+t2", "modalities": ["flair", "t2"], "weights": "students/flair+t2.pt",
             "sha256": hex digest of the weights file, "model": the run's model config,
             "crop_size": [X, Y, Z] (training crop = default inference window),
             "data": {"name", "release", "scheme", "train_cases", "val_cases"},
             "epoch": finished epochs, "validation": {"WT", "TC", "ET", "mean", "epoch"} or null,
             "source": the checkpoint it came from}

``validation`` is the checkpoint's last validation row (for ``best.pt`` the one that made it
best): mean Dice per region on the run's validation split. Two students of one subset: the one
with the higher validation mean is kept (ties and unknown means: the one given first; a sweep's
runs come in sorted name order) and the other is listed under ``dropped``.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from rirn import __version__
from rirn.data.modalities import MODALITIES, all_subsets, parse_modalities, subset_name
from rirn.errors import ConfigError, DataError, RirnError
from rirn.evaluation.runs import build_network
from rirn.labels import REGIONS

FORMAT = "rirn-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Keys a manifest entry of a network must have to be loaded.
_ENTRY_KEYS = ("modalities", "weights", "sha256", "model", "crop_size")
#: Temporary export folders (``.<bundle>.tmp-*``) older than this are left-overs of a killed
#: export and are removed by the next export next to them.
_STALE_S = 600


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _validation(history: Sequence[Mapping], who: str) -> dict | None:
    """``{"WT", "TC", "ET", "mean", "epoch"}`` of ``who``'s last validation row, or ``None``."""
    for row in reversed(list(history or [])):
        if f"{who}/mean" in row:
            out = {r: float(row[f"{who}/{r}"]) for r in REGIONS}
            return {**out, "mean": float(row[f"{who}/mean"]), "epoch": int(row.get("epoch", 0))}
    return None


def _mean(entry: Mapping) -> float:
    """Validation mean for comparisons (unknown: -inf, so any measured student wins)."""
    val = entry.get("validation")
    return float(val["mean"]) if val else float("-inf")


def _describe(state: Mapping, subset: tuple[str, ...], who: str, source: Path) -> dict:
    """The manifest entry of one network of a checkpoint (without ``weights``/``sha256``)."""
    config = state["config"]
    split = state.get("split") or {}
    return {
        "subset": subset_name(subset),
        "modalities": list(subset),
        "model": dict(config["model"]),
        "crop_size": [int(c) for c in config["data"]["crop_size"]],
        "data": {
            "name": str(config["data"].get("name", "")),
            "release": str(state.get("release", "")),
            "scheme": str(state.get("scheme", "brats")),
            "train_cases": len(split.get("train", [])),
            "val_cases": len(split.get("val", [])),
        },
        "epoch": int(state.get("epoch", 0)),
        "validation": _validation(state.get("history", []), who),
        "source": str(source),
    }


def _remove_stale(parent: Path, name: str) -> None:
    now = time.time()
    for old in parent.glob(f".{glob.escape(name)}.tmp-*"):
        if now - old.stat().st_mtime > _STALE_S:
            shutil.rmtree(old, ignore_errors=True)


def collect_students(
    checkpoints: Iterable[str | Path], teacher: bool = False, log: Callable[[str], None] = print
) -> tuple[dict[str, tuple[dict, dict]], tuple[dict, dict] | None, list[dict]]:
    """Read ``checkpoints`` (in priority order for ties) one at a time and keep one student per
    subset (module docstring); with ``teacher``, also the teacher of the best teacher mean.

    Returns:
        ``({subset name: (entry, state dict)}, (entry, state dict) of the teacher or None,
        dropped records)``; ``log`` gets one line per dropped student.

    Raises:
        DataError: an unreadable or non-rirn checkpoint, or no checkpoint at all.
    """
    from rirn.evaluation.runs import open_checkpoint

    kept: dict[str, tuple[dict, dict]] = {}
    best_teacher: tuple[dict, dict] | None = None
    dropped: list[dict] = []
    for path in checkpoints:
        ckpt = open_checkpoint(path)
        # Only the state dicts kept here stay referenced: optimiser and discriminator states
        # (most of a checkpoint) are freed with ``ckpt`` at the next iteration.
        # A run that trained its teacher alone (teacher.only) has no student to keep.
        student = ckpt.has_student
        entry = _describe(ckpt.state, ckpt.modalities, "student", ckpt.path) if student else None
        name = entry["subset"] if entry is not None else None
        if name in kept:
            old = kept[name][0]
            winner, loser = (entry, old) if _mean(entry) > _mean(old) else (old, entry)
            dropped.append(
                {
                    "subset": name,
                    "source": loser["source"],
                    "validation_mean": loser["validation"]["mean"] if loser["validation"] else None,
                    "kept": winner["source"],
                }
            )
            log(
                f"{name}: two students; kept {winner['source']} (validation mean "
                f"{_fmt(winner)}), dropped {loser['source']} ({_fmt(loser)})"
            )
            if winner is old:
                entry = None
        if entry is not None:
            kept[name] = (entry, ckpt.state["student"])
        if teacher and ckpt.has_teacher:
            t_entry = _describe(ckpt.state, MODALITIES, "teacher", ckpt.path)
            if best_teacher is None or _mean(t_entry) > _mean(best_teacher[0]):
                best_teacher = (t_entry, ckpt.state["teacher"])
    if not kept:
        raise DataError("no checkpoint to export (sweep_dir has no finished run, checkpoints=[])")
    if teacher and best_teacher is None:
        raise DataError("teacher=true but no checkpoint holds teacher weights")
    return kept, best_teacher, dropped


def _fmt(entry: Mapping) -> str:
    return f"{entry['validation']['mean']:.4f}" if entry.get("validation") else "unknown"


def _write_weights(folder: Path, relative: str, state: Mapping) -> str:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: v.detach().cpu().clone() for k, v in state.items()}
    with path.open("wb") as f:
        torch.save(plain, f)
        f.flush()
        os.fsync(f.fileno())
    return sha256_file(path)


def export_bundle(
    checkpoints: Sequence[str | Path],
    output: str | Path,
    teacher: bool = False,
    overwrite: bool = False,
    skipped: Sequence[Mapping] = (),
    log: Callable[[str], None] = print,
) -> dict:
    """Write a bundle of the students of ``checkpoints`` to ``output``; returns the manifest.

    The bundle is built in a temporary sibling folder (``.<name>.tmp-<hex>``) and renamed into
    place when complete, so an interrupted export leaves no half bundle at ``output`` (a killed
    one leaves only the hidden temporary folder, removed by a later export after 10 minutes).
    ``overwrite`` replaces an existing bundle or empty folder, nothing else; ``skipped`` records
    (sources without a checkpoint) go into the manifest; ``log`` gets the progress lines.

    Raises:
        ConfigError: ``output`` exists and ``overwrite`` is false, or it is not a bundle.
        DataError: see :func:`collect_students`.
    """
    output = Path(output).expanduser().absolute()
    if output.exists():
        if not overwrite:
            raise ConfigError(f"output={output} exists (overwrite=true replaces it)")
        if not _replaceable(output):
            raise ConfigError(f"output={output} exists and is not a bundle; not replacing it")
    students, best_teacher, dropped = collect_students(checkpoints, teacher, log)
    order = {subset_name(s): i for i, s in enumerate(all_subsets())}
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(output.parent, output.name)
    tmp = output.parent / f".{output.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        entries = []
        for name in sorted(students, key=order.__getitem__):
            entry, state = students[name]
            relative = f"students/{name}.pt"  # canonical subset names are unique, file-safe
            entries.append(
                {**entry, "weights": relative, "sha256": _write_weights(tmp, relative, state)}
            )
        t_entry = None
        if best_teacher is not None:
            t_entry = {**best_teacher[0], "weights": "teacher.pt"}
            t_entry["sha256"] = _write_weights(tmp, "teacher.pt", best_teacher[1])
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "rirn_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "students": entries,
            "teacher": t_entry,
            "dropped": dropped,
            "skipped": [dict(s) for s in skipped],
        }
        with (tmp / MANIFEST).open("w") as f:
            f.write(json.dumps(manifest, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the rename below must not publish an empty manifest
        _replace_dir(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"bundle of {len(entries)} student(s) written to {output}")
    return manifest


def _replaceable(path: Path) -> bool:
    """What ``overwrite=true`` may replace: a bundle or an empty folder, never e.g. a sweep
    folder given as ``output`` by mistake."""
    return (path / MANIFEST).is_file() or (path.is_dir() and not any(path.iterdir()))


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is moved aside first, then removed."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"  # not a stale ".tmp-"
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class BundleModel:
    """One network of a bundle.

    Attributes:
        subset: its input modalities, canonical order (all four for the teacher).
        weights: the weights file (absolute).
        sha256: the manifest's checksum of it.
        entry: the whole manifest entry (model config, data, validation, source, ...).
    """

    subset: tuple[str, ...]
    weights: Path
    sha256: str
    entry: dict

    @property
    def name(self) -> str:
        return subset_name(self.subset)

    @property
    def crop_size(self) -> tuple[int, int, int]:
        return tuple(int(c) for c in self.entry["crop_size"])  # type: ignore[return-value]

    @property
    def scheme(self) -> str:
        return str(self.entry.get("data", {}).get("scheme", "brats"))

    @property
    def validation_mean(self) -> float | None:
        val = self.entry.get("validation")
        return float(val["mean"]) if val else None

    def network(self, device: torch.device | str = "cpu") -> torch.nn.Module:
        """The ``UNet3D`` in eval mode on ``device``; the bytes loaded are checked first.

        Raises:
            DataError: the file changed since :func:`open_bundle`, or does not fit its config.
        """
        data = self.weights.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise DataError(_tampered(self.weights))
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        what = f"{self.weights}: weights"
        return build_network(self.entry["model"], len(self.subset), state, what, device)


@dataclass(frozen=True)
class Bundle:
    """A bundle opened and verified by :func:`open_bundle`.

    Attributes:
        path: the bundle folder.
        manifest: ``manifest.json`` as read.
        students: ``{subset: BundleModel}``.
        teacher: the teacher, or ``None``.
    """

    path: Path
    manifest: dict
    students: dict[tuple[str, ...], BundleModel]
    teacher: BundleModel | None


def _tampered(path: Path) -> str:
    return (
        f"bundle file {path} does not match its sha256 in manifest.json (changed or corrupt); "
        "refusing the bundle"
    )


def _model(root: Path, entry: Mapping, where: str) -> BundleModel:
    missing = [k for k in _ENTRY_KEYS if not isinstance(entry, Mapping) or k not in entry]
    if missing:
        raise DataError(f"bundle {root}: {where} entry of {MANIFEST} lacks {', '.join(missing)}")
    try:
        subset = parse_modalities(list(entry["modalities"]))
    except (TypeError, RirnError) as exc:
        raise DataError(f"bundle {root}: {where} entry of {MANIFEST}: {exc}") from None
    relative, digest = str(entry["weights"]), str(entry["sha256"])
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"bundle {root}: {where} weights {relative!r} lie outside the bundle")
    if not path.is_file():
        raise DataError(f"bundle {root}: {where} weights {relative} not found")
    if sha256_file(path) != digest:
        raise DataError(_tampered(path))
    return BundleModel(subset, path, digest, dict(entry))


def open_bundle(path: str | Path) -> Bundle:
    """Read ``manifest.json`` and check every weights file against its checksum.

    Raises:
        ConfigError: ``path`` is not a folder.
        DataError: no or bad manifest, another format or a newer format version, a missing
            weights file, a checksum that does not match, two students of one subset.
    """
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        raise ConfigError(f"bundle={root} does not exist or is not a folder")
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        raise DataError(
            f"bundle {root} has no {MANIFEST} (is it a folder written by python -m rirn.export?)"
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"bundle {root}: unreadable {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"bundle {root}: {MANIFEST} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise DataError(
            f"bundle {root}: format version {version!r}, this rirn ({__version__}) reads up to "
            f"{FORMAT_VERSION}; update rirn"
        )
    students: dict[tuple[str, ...], BundleModel] = {}
    for i, entry in enumerate(manifest.get("students") or []):
        model = _model(root, entry, f"student {i + 1}")
        if model.subset in students:
            raise DataError(f"bundle {root}: two students of {model.name} in {MANIFEST}")
        students[model.subset] = model
    if not students:
        raise DataError(f"bundle {root}: {MANIFEST} lists no student")
    teacher = manifest.get("teacher")
    teacher = _model(root, teacher, "teacher") if teacher else None
    return Bundle(root, manifest, students, teacher)
