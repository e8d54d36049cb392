"""Evaluating checkpoints case by case, and writing the result files of one run or a sweep.

Metrics are computed in the ORIGINAL image space: predictions (made on the brain box) and the
ground truth are both pasted back into the full ``meta["shape"]`` volume with
:func:`rirn.data.transforms.uncrop_to_original`. The ground truth comes from the cache's region
bits, not from the source ``*_seg.nii.gz``: the cached brain box is the box of "any modality
non-zero OR any tumour label" (:func:`rirn.data.io.preprocess_case`), so every labelled voxel is
inside it and pasting the bits back reproduces the original label map's regions exactly, while
skipping a gzip decompression and label validation per case. Dice and HD95 are the same in box
and full space (outside the box both masks are empty); specificity counts the whole volume, as
BraTS does.

Result files in the output folder: ``per_case.csv``, ``summary.csv``, ``summary.md``,
``summary.tex`` (:mod:`rirn.evaluation.summary`, :mod:`rirn.evaluation.render`), optional
``figures/`` and ``evaluation.json``: the record of what was evaluated (checkpoint size and
time, cases, cache, inference settings), written last. A later evaluation with ``reuse=true``
and an identical record reads ``per_case.csv`` back instead of predicting again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rirn.config import override_value
from rirn.data.dataset import EvalDataset
from rirn.data.modalities import MODALITIES, channel_indices
from rirn.data.transforms import uncrop_to_original
from rirn.errors import DataError
from rirn.evaluation.data import EvalData
from rirn.evaluation.figures import write_case_figure
from rirn.evaluation.render import render_latex, render_markdown
from rirn.evaluation.runs import LoadedCheckpoint
from rirn.evaluation.settings import LEGACY_POSTPROCESS
from rirn.evaluation.summary import (
    Problem,
    case_rows,
    phenotype_rows,
    read_per_case_csv,
    summarize,
    write_per_case_csv,
    write_summary_csv,
)
from rirn.inference import InferenceSettings, predict_case
from rirn.metrics import region_metrics

RECORD = "evaluation.json"
RECORD_VERSION = 1


@dataclass(frozen=True)
class EvalOptions:
    """Options of an evaluation that do not change the numbers' meaning.

    Attributes:
        device: where the networks run.
        teacher: evaluate the full-modality teacher too.
        figures: number of cases (the first ones) to draw into ``figures/``; 0 = none.
        progress: tqdm bars.
        reuse: read results back when the output folder's record matches.
    """

    device: torch.device
    teacher: bool = True
    figures: int = 0
    progress: bool = True
    reuse: bool = False


def record(ckpt: LoadedCheckpoint, data: EvalData, settings: InferenceSettings, teacher: bool):
    """The :data:`RECORD` dict that identifies one evaluation's results."""
    return {
        "version": RECORD_VERSION,
        **ckpt.stat(),
        "data": data.as_dict(),
        "inference": settings.as_dict(),
        "teacher": bool(teacher),
    }


def reusable_rows(out_dir: Path, expected: Mapping) -> list[dict] | None:
    """The per-case rows of ``out_dir`` if its record equals ``expected``, else ``None``."""
    try:
        found = json.loads((out_dir / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if found != expected or not (out_dir / "summary.csv").is_file():
        return None
    try:
        return read_per_case_csv(out_dir / "per_case.csv")
    except DataError:
        return None


def rescore_hint(out_dir: Path, settings: InferenceSettings, command: str) -> str | None:
    """``None`` when the results in ``out_dir`` were scored with the nesting and ET
    post-processing of ``settings``; else one line that says what differs (or that the
    folder has no readable :data:`RECORD`) and names ``command`` (e.g. ``python -m
    rirn.evaluate run_dir=RUN``) with the overrides that re-score them so."""
    want = {"nested": settings.nested, "et_min_voxels": settings.et_min_voxels}
    fix = " ".join(f"postprocess.{k}={override_value(v)}" for k, v in want.items())
    try:
        found = json.loads((out_dir / RECORD).read_text())["inference"]
        found = {k: found.get(k, LEGACY_POSTPROCESS[k]) for k in want}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return f"{out_dir} has no readable {RECORD}, so its scoring is unknown; run {command} {fix}"
    changed = [
        f"{k}={override_value(found[k])} (here {override_value(want[k])})"
        for k in want
        if found[k] != want[k]
    ]
    if not changed:
        return None
    return f"{out_dir} was scored with {', '.join(changed)}; re-score it with {command} {fix}"


def _ground_truth(item: dict) -> np.ndarray:
    if item["target"] is None:
        raise DataError(f"case {item['case_id']}: no segmentation; evaluation needs labels")
    return uncrop_to_original(item["target"].numpy().astype(bool), item["meta"], fill=False)


def evaluate_checkpoint(
    ckpt: LoadedCheckpoint,
    data: EvalData,
    settings: InferenceSettings,
    options: EvalOptions,
    run_name: str,
    figures_dir: Path | None = None,
) -> list[dict]:
    """Predict every case with the student (and teacher) and score it in original space.

    Args:
        ckpt: the opened checkpoint.
        data: the cases.
        settings: inference settings.
        options: see :class:`EvalOptions`.
        run_name: the ``run`` column of the rows.
        figures_dir: where the first ``options.figures`` cases are drawn (``None``: nowhere).

    Returns:
        Per-case rows (:func:`rirn.evaluation.summary.case_rows`): for each case, the student's
        three regions, then the teacher's (the teacher's alone for a run without a student,
        ``teacher.only``, whatever ``options.teacher`` says).

    Raises:
        DataError: the checkpoint has no student and no teacher.
    """
    nets = {}
    if ckpt.has_student:
        nets["student"] = ckpt.network("student", options.device)
    if options.teacher or not ckpt.has_student:
        nets["teacher"] = ckpt.network("teacher", options.device)
    inputs = {"student": channel_indices(ckpt.modalities), "teacher": list(range(len(MODALITIES)))}
    subsets = {"student": ckpt.modalities, "teacher": MODALITIES}
    dataset = EvalDataset(data.source, data.case_ids)
    rows: list[dict] = []
    bar = tqdm(
        range(len(dataset)),
        desc=f"evaluate {run_name}",
        unit="case",
        leave=False,
        disable=None if options.progress else True,
    )
    for i in bar:
        item = dataset[i]
        image, meta = item["image"].numpy(), item["meta"]
        gt = _ground_truth(item)
        preds = {
            who: predict_case(net, image[inputs[who]], meta, settings) for who, net in nets.items()
        }
        for who, pred in preds.items():
            metrics = region_metrics(pred, gt, meta["spacing"])
            rows += case_rows(item["case_id"], subsets[who], who, metrics, run_name)
        if figures_dir is not None and i < options.figures:
            shown = uncrop_to_original(image[inputs[next(iter(nets))][0]], meta)
            ordered = {who: preds[who] for who in ("teacher", "student") if who in preds}
            write_case_figure(figures_dir / f"{item['case_id']}.png", shown, gt, ordered)
    return rows


def write_results(
    out_dir: Path,
    rows: list[dict],
    info: Mapping[str, str],
    title: str,
    settings_text: tuple[str, str],
    problems: list[Problem] | tuple = (),
) -> Path:
    """Write ``per_case.csv``, ``summary.csv``, ``summary.md`` and ``summary.tex``.

    Args:
        out_dir: the output folder (created).
        rows: per-case rows.
        info: settings shown in the Markdown/LaTeX headers.
        title: Markdown heading.
        settings_text: ``(inference, post-processing)`` descriptions for ``summary.csv``.
        problems: runs without results (listed, never dropped).

    Returns:
        The path of ``summary.md``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    write_per_case_csv(out_dir / "per_case.csv", rows)
    summary = summarize(rows, problems)
    write_summary_csv(out_dir / "summary.csv", summary, *settings_text)
    (out_dir / "summary.tex").write_text(render_latex(summary, info))
    path = out_dir / "summary.md"
    path.write_text(render_markdown(summary, info, title, phenotype_rows(rows)))
    return path


def run_info(
    ckpt: LoadedCheckpoint, data: EvalData, settings: InferenceSettings, device: torch.device
) -> dict[str, str]:
    """Header lines of a one-run summary."""
    precision = str(settings.amp_dtype).replace("torch.", "") + " autocast"
    return {
        "Checkpoint": f"{ckpt.path} (epoch {ckpt.epoch}, student {'+'.join(ckpt.modalities)})",
        "Data": data.description,
        "Inference": settings.describe(),
        "Post-processing": settings.describe_postprocess(),
        "Device": f"{device} ({precision if settings.amp_dtype else 'fp32'})",
    }


def evaluate_to(
    out_dir: Path,
    ckpt: LoadedCheckpoint,
    data: EvalData,
    settings: InferenceSettings,
    options: EvalOptions,
    run_name: str,
    figures_dir: Path | None = None,
) -> list[dict]:
    """Evaluate one checkpoint into ``out_dir`` (or reuse the results there); returns its rows.

    Figures (``options.figures > 0``) go to ``figures_dir``, default ``<out_dir>/figures``.
    Results are reused when ``options.reuse`` is set, the folder's record matches and, if
    figures are asked for, their folder exists.
    """
    expected = record(ckpt, data, settings, options.teacher)
    figures_dir = (figures_dir or out_dir / "figures") if options.figures else None
    if options.reuse and (figures_dir is None or figures_dir.is_dir()):
        rows = reusable_rows(out_dir, expected)
        if rows is not None:
            return rows
    (out_dir / RECORD).unlink(missing_ok=True)  # stale until the new results are complete
    rows = evaluate_checkpoint(ckpt, data, settings, options, run_name, figures_dir)
    info = run_info(ckpt, data, settings, options.device)
    texts = (settings.describe(), settings.describe_postprocess())
    write_results(out_dir, rows, info, f"Evaluation of {run_name}", texts)
    (out_dir / RECORD).write_text(json.dumps(expected, indent=1) + "\n")
    return rows
