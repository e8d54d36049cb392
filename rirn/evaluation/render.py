"""The summary as Markdown (``summary.md``) and LaTeX (``summary.tex``).

Both show the rows of :func:`rirn.evaluation.summary.summarize` in the layout of the paper's
Tables 1-3: the ``•``/``◦`` modality marks in Fl, T1, T1c, T2 columns, then WT, TC, ET and AVG.
Dice is printed in percent (as the paper), HD95 in mm. The header states the data, the
inference mode, the post-processing and the empty-mask convention used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from rirn.data.modalities import MODALITIES, PAPER_NAMES, subset_name
from rirn.evaluation.summary import CONVENTION, SUMMARY_REGIONS, PhenotypeRow, SummaryRow

_TITLES = {"dice": "Dice (%)", "hd95": "HD95 (mm)"}
_SCALE = {"dice": 100.0, "hd95": 1.0}


def _number(value: float, metric: str) -> str:
    return "" if math.isnan(value) else f"{value * _SCALE[metric]:.2f}"


def _mean_std(stat: tuple[float, float], metric: str) -> str:
    mean, std = (_number(v, metric) for v in stat)
    return f"{mean} ± {std}" if std else mean


def _label(row: SummaryRow) -> str:
    return {"student": "student", "teacher": "teacher (full)", "mean": "Mean"}[row.model]


def _show_runs(rows: list[SummaryRow]) -> bool:
    """Whether a run column is needed: two student rows share a subset (e.g. a loss ablation)."""
    subsets = [r.subset for r in rows if r.model == "student"]
    return len(subsets) != len(set(subsets))


def _cells(row: SummaryRow, metric: str, fmt) -> list[str]:
    if row.status != "ok":
        return [row.status.split(":")[0]] * len(SUMMARY_REGIONS)
    return [fmt(row.stats[(metric, region)], metric) for region in SUMMARY_REGIONS]


def _md_table(rows: list[SummaryRow], metric: str, runs: bool) -> list[str]:
    head = [PAPER_NAMES[m] for m in MODALITIES] + ["model"] + (["run"] if runs else [])
    head += ["n", *SUMMARY_REGIONS]
    lines = [
        "| " + " | ".join(head) + " |",
        "| " + " | ".join([":-:"] * len(MODALITIES) + ["---"] * (len(head) - 4)) + " |",
    ]
    for row in rows:
        dots = list(row.dots) if row.dots else [""] * len(MODALITIES)
        run = [f"`{row.run}`" if row.model == "student" else ""] if runs else []
        label = _label(row)
        if row.status != "ok" and not runs:
            label += f" `{row.run}`"  # no numbers: say which run it is
        cells = [*dots, label, *run, str(row.n or ""), *_cells(row, metric, _mean_std)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_table(head: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    """Lines of a Markdown table: a header row, a ``---`` row and one row per cell list."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def render_markdown(
    rows: list[SummaryRow],
    info: Mapping[str, str],
    title: str,
    phenotypes: Sequence[PhenotypeRow] = (),
) -> str:
    """``summary.md``: a settings list, a Dice table, an HD95 table, Dice by phenotype (when
    the cases have more than one) and the runs without results.

    Args:
        rows: summary rows.
        info: ``{label: text}`` shown as a bullet list under the title (data, checkpoint,
            inference, post-processing, ...).
        title: the heading.
        phenotypes: :func:`rirn.evaluation.summary.phenotype_rows` of the same cases.
    """
    runs = _show_runs(rows)
    lines = [f"# {title}", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    cells = "- Cells: mean ± sample std over cases; AVG = per-case mean of WT, TC, ET."
    if sum(r.model == "student" for r in rows) > 1:
        cells += (
            " The teacher row pools the full-modality teachers of all runs; Mean = mean over "
            "subsets of the student rows (runs of one subset averaged first)."
        )
    lines += [f"- Convention: {CONVENTION}.", cells]
    for metric in ("dice", "hd95"):
        lines += ["", f"## {_TITLES[metric]}", "", *_md_table(rows, metric, runs)]
    if phenotypes and len({p.phenotype for p in phenotypes}) > 1:
        lines += ["", "## Dice (%) by phenotype", ""]
        lines += [
            "Cases grouped by the regions their ground truth holds (WT+TC: no enhancing "
            "tumour, so ET Dice is 1 only for an empty ET prediction); mean over cases.",
            "",
        ]
        body = [
            [p.model, p.subset, *([f"`{p.run}`" if p.run else ""] if runs else [])]
            + [p.phenotype, str(p.n), *(_number(v, "dice") for v in p.dice)]
            for p in phenotypes
        ]
        head = ["model", "subset", *(["run"] if runs else []), "phenotype", "n"]
        lines += markdown_table([*head, *SUMMARY_REGIONS], body)
    problems = [r for r in rows if r.status != "ok"]
    if problems:
        lines += ["", "## Runs without results", ""]
        for r in problems:
            subset = f" ({subset_name(r.subset)})" if r.subset else ""
            lines.append(f"- `{r.run}`{subset}: {r.status}")
    return "\n".join(lines) + "\n"


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    special = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(special.get(c, c) for c in text)


def render_latex(rows: list[SummaryRow], info: Mapping[str, str]) -> str:
    """``summary.tex``: one ``table`` (needs ``\\usepackage{booktabs}``) with the modality
    marks, Dice (%) and HD95 (mm) means for WT, TC, ET, AVG; the caption states the settings."""
    n = len(SUMMARY_REGIONS)
    marks = {"•": r"$\bullet$", "◦": r"$\circ$"}
    caption = "; ".join(f"{k}: {v}" for k, v in info.items())
    lines = [
        "% Generated by python -m rirn.evaluate. Needs \\usepackage{booktabs}.",
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + latex_escape(f"{caption}. {CONVENTION}. Mean over cases.") + "}",
        r"\begin{tabular}{cccc l " + "r" * n + " " + "r" * n + "}",
        r"\toprule",
        r"\multicolumn{4}{c}{Modalities} & & \multicolumn{" + str(n) + r"}{c}{Dice (\%)} & "
        r"\multicolumn{" + str(n) + r"}{c}{HD95 (mm)} \\",
        " & ".join([*(PAPER_NAMES[m] for m in MODALITIES), "Model", *SUMMARY_REGIONS * 2]) + r" \\",
        r"\midrule",
    ]
    for row in rows:
        if row.model == "mean":
            lines.append(r"\midrule")
        dots = [marks[c] for c in row.dots] if row.dots else [""] * len(MODALITIES)
        label = latex_escape(_label(row).capitalize())
        values = [
            latex_escape(c)
            for metric in ("dice", "hd95")
            for c in _cells(row, metric, lambda s, m: _number(s[0], m))
        ]
        lines.append(" & ".join([*dots, label, *values]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
