"""The Compare tab without Gradio: attribute and run choices per task, and what a comparison shows.

The comparison comes from ``inference.compare_engine``, its figures from ``inference.compare_figures``, its
cells and CSV from ``inference.compare_export`` and the report from ``inference.report.build_report``;
this module picks the defaults (the task's five demo runs, the attribute they were trained to balance),
turns a comparison into the two tables the tab shows, and writes the downloads into the export folder
(one per process, removed when the process exits).
"""

from __future__ import annotations

import functools
import hashlib
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from inference.catalog import find_run, of_task, run_choices, run_key
from inference.compare_engine import NO_RUNS, Comparison, compare_runs
from inference.compare_export import COLUMN_TITLES, display_table, format_interval, to_csv
from inference.compare_figures import frontier_figure, group_accuracy_figure, margin_figure
from inference.diagnose_view import check_task
from inference.report import build_report
from training.data import ATTRIBUTE_JOINER, GROUP_JOINER
from training.rundir import RunInfo

DEFAULT_RUN_COUNT = 5  # one run per method
SUMMARY_RUN_COLUMN = "Run"
SUMMARY_LEFT_OUT = ("seed", "dpd")
SUMMARY_DIGITS = 2  # '0.81 [0.77, 0.84]': six figures with intervals fit a laptop screen; the CSV has them all
# Run, method, trained on, n, then the six figures.
SUMMARY_COLUMN_WIDTHS = ["14%", "10%", "6%", "4%"] + ["11%"] * 6
NOTES_NONE = "No notes: every group is large enough and has both labels."
NOTES_HEADER = "**Notes** ({n})"
NO_ATTRIBUTES = "the selected runs have no attribute columns in their predictions"


def attributes_of(run: RunInfo) -> list[str]:
    """The attribute columns a run's predictions.csv holds (config.json records them under 'dataset')."""
    if run.record.dataset.get("attributes"):
        return list(run.record.dataset["attributes"])
    try:
        header = pd.read_csv(run.path / "predictions.csv", nrows=0).columns
    except (OSError, ValueError):
        return []
    return [c for c in header if c not in ("id", "split", "label", "prob", "margin")]


def attribute_choices(runs: Sequence[RunInfo], task: str) -> list[str]:
    """Each attribute of the task's runs, then every pair as an intersection, then any wider
    intersection a run was trained on (e.g. 'race', …, 'sex+age_group')."""
    singles: list[str] = []
    trained: list[str] = []
    for run in runs:
        if run.task != task:
            continue
        singles += [a for a in attributes_of(run) if a not in singles]
        trained += [a for a in (run.settings.attribute, run.settings.cmac_attribute) if a]
    pairs = [f"{a}{ATTRIBUTE_JOINER}{b}" for i, a in enumerate(singles) for b in singles[i + 1 :]]
    wider = [a for a in dict.fromkeys(trained) if a not in singles and a not in pairs]
    return singles + pairs + wider


def default_attribute(runs: Sequence[RunInfo], task: str) -> str | None:
    """The attribute most of the default runs were trained to balance (race for the fundus demos,
    sex+age_group for the skin demos), else the first choice."""
    choices = attribute_choices(runs, task)
    chosen = [find_run(key, runs) for key in default_runs(runs, task)]
    counts = Counter(run.settings.attribute for run in chosen if run.settings.attribute in choices)
    if counts:
        return counts.most_common(1)[0][0]
    return choices[0] if choices else None


def default_runs(runs: Sequence[RunInfo], task: str) -> list[str]:
    """The task's demo runs (the five methods); without demos, the task's first five runs."""
    candidates = of_task(runs, task)
    demos = [r for r in candidates if r.is_demo]
    return [run_key(r) for r in (demos or candidates)[:DEFAULT_RUN_COUNT]]


def keep_or_default_runs(runs: Sequence[RunInfo], task: str, current: Sequence[str] | None) -> list[str]:
    """After a refresh, keep the visitor's selection (minus runs that are gone), or the defaults."""
    keys = {key for _, key in run_choices(runs, task)}
    kept = [key for key in (current or []) if key in keys]
    return kept or default_runs(runs, task)


def selected_runs(keys: Sequence[str] | None, runs: Sequence[RunInfo], task: str) -> list[RunInfo]:
    """The runs behind the keys (ValueError for an unknown key or another task's run)."""
    check_task(task)
    if not keys:
        raise ValueError(NO_RUNS)
    return [find_run(key, runs, task=task) for key in keys]


@dataclass(frozen=True)
class CompareView:
    summary: pd.DataFrame  # one row per run: overall accuracy, AUC, every gap, with intervals
    groups: pd.DataFrame  # one row per run, one column per group: accuracy [interval] (n)
    accuracy_figure: go.Figure
    margin_figure: go.Figure
    frontier_figure: go.Figure
    notes: str
    comparison: Comparison


def show(runs: Sequence[RunInfo], attribute: str, *, bootstrap: int) -> CompareView:
    """Compare the runs on `attribute` (CompareError for arguments no run can use)."""
    comparison = compare_runs(runs, (attribute or "").strip(), bootstrap=bootstrap)
    return CompareView(
        summary=summary_table(comparison),
        groups=group_table(comparison),
        accuracy_figure=group_accuracy_figure(comparison),
        margin_figure=margin_figure(comparison),
        frontier_figure=frontier_figure(comparison),
        notes=notes_markdown(comparison),
        comparison=comparison,
    )


def summary_table(comparison: Comparison) -> pd.DataFrame:
    """`compare_export.display_table` narrowed to fit a screen: each run named by its key ('fundus-fr (demo)'),
    λ and w_max folded into the method ('Hybrid λ=0.5 w_max=10'), a degenerate-model flag beside the run's
    name ('skin-x ⚠ degenerate'); the seed and the demographic parity
    difference (neither paper reports it) are left to the CSV export."""
    table = display_table(comparison, digits=SUMMARY_DIGITS)
    flags = comparison.table["flags"].fillna("").to_numpy()
    # a flag stays next to the run's figures: '⚠ degenerate' in the run's own cell
    table[SUMMARY_RUN_COLUMN] = [
        f"{label} ⚠ {flag}" if flag else label
        for label, flag in zip(comparison.table["label"].to_numpy(), flags, strict=True)
    ]
    table = table.drop(columns=[COLUMN_TITLES["flags"]])
    lam, w_max = COLUMN_TITLES["lambda"], COLUMN_TITLES["w_max"]
    settings = [
        " ".join(part for part in (method, _setting("λ", lv), _setting("w_max", wv)) if part)
        for method, lv, wv in zip(table["Method"], table[lam], table[w_max], strict=True)
    ]
    table["Method"] = settings
    return table.drop(columns=[lam, w_max, *(COLUMN_TITLES[name] for name in SUMMARY_LEFT_OUT)])


def _setting(name: str, value) -> str:
    return "" if value in ("", None) or value != value else f"{name}={float(value):g}"


def group_table(comparison: Comparison) -> pd.DataFrame:
    """Per-group accuracy: a row per run, a column per group, each cell 'acc [lo, hi] (n=…)'."""
    if comparison.empty:
        return pd.DataFrame(columns=[SUMMARY_RUN_COLUMN])
    groups = comparison.groups
    order = sorted(groups["group"].unique(), key=_group_order)
    labels = dict(zip(comparison.table["run"], comparison.table["label"], strict=True))
    rows = []
    for run in comparison.table["run"]:
        row = {SUMMARY_RUN_COLUMN: labels[run]}
        mine = groups[groups["run"] == run].set_index("group")
        for group in order:
            if group not in mine.index:
                row[group] = "–"
                continue
            g = mine.loc[group]
            cell = format_interval(g["accuracy"], g["accuracy_lo"], g["accuracy_hi"], digits=2)
            row[group] = f"{cell} (n={int(g['n'])})"
        rows.append(row)
    return pd.DataFrame(rows, columns=[SUMMARY_RUN_COLUMN, *order])


def _group_order(group: str) -> tuple:
    """Groups sorted with 'Unknown' parts last."""
    return tuple((part == "Unknown", part) for part in group.split(GROUP_JOINER))


def notes_markdown(comparison: Comparison) -> str:
    notes = list(comparison.notes)
    if not notes:
        return NOTES_NONE
    return "\n".join([NOTES_HEADER.format(n=len(notes)), ""] + [f"- {note}" for note in notes])


# ---------------------------------------------------------------------- downloads
EXPORT_PREFIX = "fairdx-exports-"
_EXPORTS_LOCK = threading.Lock()


def export_folder() -> Path:
    """The folder the downloads are written to: one per process, made on first use.

    It is a ``tempfile.TemporaryDirectory`` held by this module, so it is removed with its files when
    the interpreter exits (its finalizer runs at exit) instead of piling up in /tmp at every start.
    """
    with _EXPORTS_LOCK:  # two first calls at once must not make two folders
        return Path(_exports().name)


@functools.cache
def _exports() -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix=EXPORT_PREFIX)


def _slug(*parts: str) -> str:
    digest = hashlib.sha1("\0".join(parts).encode()).hexdigest()[:10]
    readable = re.sub(r"[^A-Za-z0-9_+.-]+", "_", "-".join(parts[:2]))[:60]
    return f"{readable}-{digest}"


def write_csv(comparison: Comparison, folder: Path, task: str, *, which: str = "runs") -> Path:
    """The comparison's runs (or per-group) table as CSV in `folder`, named after what it holds."""
    keys = [str(k) for k in comparison.table.get("label", [])]
    path = Path(folder) / f"compare-{_slug(task, comparison.attribute, which, *keys)}-{which}.csv"
    path.write_text(to_csv(comparison, which=which))
    return path


def write_report(runs: Sequence[RunInfo], folder: Path, task: str, *, bootstrap: int) -> Path:
    """inference.report.build_report over the selected runs, as Markdown in `folder`."""
    keys = sorted(run_key(run) for run in runs)
    path = Path(folder) / f"fairdx-report-{_slug(task, str(bootstrap), *keys)}.md"
    path.write_text(build_report(runs, bootstrap=bootstrap, sources=keys))
    return path
