"""``python -m rirn.predict bundle=...``: each case segmented by the student of the modalities
it has, one row per case in ``predictions.csv``.

Per case folder:

1. :func:`usable_modalities`: a modality is *available* when the folder holds one file of it
   (BraTS names ``<case>_t1ce.nii.gz`` or the 2023 names ``<case>-t1c.nii.gz``; any alias of
   :data:`rirn.data.modalities.ALIASES`) that reads as a finite 3-D volume and is not all
   zeros. Other files of a modality are *ignored*, with the reason (several files, unreadable,
   all zeros) in the ``ignored`` column.
2. :func:`choose_student`: the student of exactly the available modalities, else of the
   largest available sub-subset (ties: the higher validation mean).
3. :func:`rirn.evaluation.predict_files.segment_case` with the brain mask and z-score of all
   available modalities (nearer to training, where all four defined them, than the student's
   own modalities alone).

A case with no student, or whose usable files are inconsistent (shapes differ), fails alone:
one ``error:`` line on stderr and a ``failed`` row; the other cases still run.
``predictions.csv`` is rewritten (atomically) after every case, so it is complete up to the
last finished case even if the command is stopped.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rirn.bundle import BundleModel
from rirn.data.discovery import CaseFiles, modality_files
from rirn.data.io import read_nifti
from rirn.data.modalities import MODALITIES, all_subsets, subset_name
from rirn.errors import RirnError
from rirn.evaluation.predict_files import segment_case
from rirn.inference import InferenceSettings

CSV_NAME = "predictions.csv"
CSV_COLUMNS: tuple[str, ...] = (
    "case",
    "status",  # ok | failed
    "available",  # usable modalities, e.g. flair+t2 (empty: none)
    "ignored",  # modality files not used and why, e.g. "t1ce: all zeros"
    "model_subset",  # the student used
    "choice",  # exact | sub-subset | none
    "reason",
    "wt_ml",
    "tc_ml",
    "et_ml",
    "seconds",
    "mask",  # file name in the output folder
    "error",
)


def usable_modalities(folder: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """``({modality: file}, {modality: why ignored})`` of one case folder, canonical order.

    Reads every modality file once (a file is usable only if it reads and is not all zeros).
    """
    usable: dict[str, Path] = {}
    ignored: dict[str, str] = {}
    for modality, paths in modality_files(folder).items():
        if len(paths) > 1:
            ignored[modality] = f"several files ({', '.join(p.name for p in paths)})"
            continue
        try:
            array, _ = read_nifti(paths[0])
        except RirnError as exc:
            ignored[modality] = str(exc)  # names the file and what is wrong
            continue
        if not np.any(array):
            ignored[modality] = f"all zeros ({paths[0].name})"
        else:
            usable[modality] = paths[0]
    return usable, ignored


def _val(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4f}"


def choose_student(
    available: Iterable[str], students: Mapping[tuple[str, ...], float | None]
) -> tuple[tuple[str, ...] | None, str]:
    """The student that segments a case with the ``available`` modalities, and why.

    The student of exactly ``available`` if there is one; otherwise the student of the largest
    subset of ``available`` (ties: the higher validation mean, then the paper's subset order).

    Args:
        available: the case's usable modalities (canonical names).
        students: ``{subset (canonical tuple): validation mean or None}`` of the bundle.

    Returns:
        ``(subset, reason)``; ``subset`` is ``None`` when no student uses only available
        modalities, and ``reason`` says why in one line (for ``predictions.csv``).

    Example:
        >>> choose_student({"flair", "t1", "t2"}, {("t2",): 0.6, ("flair", "t2"): 0.7})[0]
        ('flair', 't2')
    """
    have = tuple(m for m in MODALITIES if m in set(available))
    if not have:
        return None, "no usable modality"
    if have in students:
        return have, "exact: the student of the available modalities"
    fits = [s for s in all_subsets() if s in students and set(s) <= set(have)]
    if not fits:
        listed = ", ".join(subset_name(s) for s in all_subsets() if s in students)
        return None, f"no student uses only {subset_name(have)} (bundle: {listed})"
    size = max(len(s) for s in fits)
    largest = [s for s in fits if len(s) == size]

    def mean(s: tuple[str, ...]) -> float:
        return float("-inf") if students[s] is None else float(students[s])  # type: ignore[arg-type]

    best = max(largest, key=mean)  # max keeps the first of equals: the paper's order
    reason = f"no {subset_name(have)} student; largest available sub-subset {subset_name(best)}"
    others = [s for s in largest if s != best]
    if others:
        shown = ", ".join(f"{subset_name(s)} {_val(students[s])}" for s in others)
        reason += f" (validation mean {_val(students[best])}; tie with {shown})"
    return best, reason


@dataclass(frozen=True)
class CaseResult:
    """One row of ``predictions.csv`` (columns :data:`CSV_COLUMNS`)."""

    case: str
    available: tuple[str, ...]
    ignored: dict[str, str]
    subset: tuple[str, ...] | None
    reason: str
    seconds: float
    volumes_ml: tuple[float, float, float] | None = None
    mask: Path | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.mask is not None

    @property
    def choice(self) -> str:
        """``exact``, ``sub-subset`` or ``none`` (no model fits)."""
        if self.subset is None:
            return "none"
        return "exact" if self.subset == self.available else "sub-subset"

    def row(self) -> dict[str, str]:
        """The CSV row: modality subsets as ``flair+t2``, volumes in mL to 0.001 mL."""
        wt, tc, et = ("" if v is None else f"{v:.3f}" for v in self.volumes_ml or (None,) * 3)
        return {
            "case": self.case,
            "status": "ok" if self.ok else "failed",
            "available": subset_name(self.available) if self.available else "",
            "ignored": "; ".join(f"{m}: {why}" for m, why in self.ignored.items()),
            "model_subset": subset_name(self.subset) if self.subset else "",
            "choice": self.choice,
            "reason": self.reason,
            "wt_ml": wt,
            "tc_ml": tc,
            "et_ml": et,
            "seconds": f"{self.seconds:.3f}",
            "mask": self.mask.name if self.mask else "",
            "error": self.error,
        }


def write_predictions_csv(path: Path, results: Sequence[CaseResult]) -> Path:
    """Write the rows of ``results`` to ``path`` (atomic: temporary file + rename)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(r.row() for r in results)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{secrets.token_hex(4)}.{path.name}")
    try:
        tmp.write_text(buffer.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _since(start: float) -> float:
    return time.perf_counter() - start


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def predict_folders(
    folders: Sequence[Path],
    models: Mapping[tuple[str, ...], BundleModel],
    settings: Mapping[tuple[str, ...], InferenceSettings],
    out_dir: Path,
    device: torch.device,
    naming: str = "pred",
    scheme_option: str = "auto",
    save_probabilities: bool = False,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] = _stderr,
) -> list[CaseResult]:
    """Segment every case folder with its model; ``<out_dir>/predictions.csv`` after each case.

    Args:
        folders: the case folders (:func:`rirn.evaluation.predict_files.case_folders`).
        models: ``{subset: BundleModel}`` to choose from (the bundle's students, or its teacher
            under the four modalities for ``model=teacher``).
        settings: the inference settings of each model.
        out_dir: the output folder.
        device: where the networks run (each is loaded on first use).
        naming, scheme_option, save_probabilities: see
            :func:`rirn.evaluation.predict_files.segment_case`.
        log, warn: one line per finished case / per failed case.

    Returns:
        One :class:`CaseResult` per folder, in order.
    """
    means = {s: m.validation_mean for s, m in models.items()}
    nets: dict[tuple[str, ...], torch.nn.Module] = {}
    results: list[CaseResult] = []
    for folder in folders:
        start = time.perf_counter()
        usable, ignored = usable_modalities(folder)
        subset, reason = choose_student(usable, means)
        available = tuple(usable)
        try:
            if subset is None:
                raise RirnError(reason)
            if subset not in nets:
                nets[subset] = models[subset].network(device)
            # preprocess_case reads the usable files again: it stays the one definition of a
            # preprocessed case, and a decompression is small next to the inference.
            case = CaseFiles(folder.name, folder, dict(usable))
            out = segment_case(
                case,
                subset,
                nets[subset],
                settings[subset],
                models[subset].scheme,
                out_dir,
                naming,
                scheme_option,
                save_probabilities,
            )
        except RirnError as exc:
            result = CaseResult(
                folder.name, available, ignored, subset, reason, _since(start), error=str(exc)
            )
            shown = f"{subset_name(available)} available" if available else "no usable modality"
            warn(f"error: case {folder.name} ({shown}): {exc}")
        else:
            result = CaseResult(
                folder.name,
                available,
                ignored,
                subset,
                reason,
                _since(start),
                volumes_ml=out.volumes_ml,
                mask=out.mask,
            )
            wt, tc, et = out.volumes_ml
            why = result.choice if result.choice == "exact" else f"{result.choice}: {reason}"
            log(
                f"case {folder.name}: model {subset_name(subset)} ({why}), WT {wt:.1f} mL, "
                f"TC {tc:.1f} mL, ET {et:.1f} mL, {result.seconds:.1f} s"
            )
        results.append(result)
        write_predictions_csv(out_dir / CSV_NAME, results)
    return results
