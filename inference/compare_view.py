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
import json
import re
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from inference import compare_stats
from inference.catalog import find_run, of_task, run_choices, run_key
from inference.compare_engine import NO_RUNS, Comparison, Source, compare_runs, unreliable
from inference.compare_export import COLUMN_TITLES, GAP_TITLES, OVERALL_TITLES, display_table, format_interval, to_csv
from inference.compare_figures import calibration_figure, frontier_figure, group_accuracy_figure, margin_figure
from inference.diagnose_view import check_task
from inference.report import build_report
from inference.uploads import METHOD_TITLE as UPLOADED_TITLE
from inference.uploads import UploadedRun, read_upload
from training import methods, metrics
from training.config import BOOKKEEPING_KEYS
from training.data import ATTRIBUTE_JOINER, GROUP_JOINER
from training.rundir import RunInfo

DEFAULT_RUN_COUNT = 5  # one run per method
SUMMARY_RUN_COLUMN = "Run"
SUMMARY_LEFT_OUT = ("seed", "dpd")
SUMMARY_DIGITS = 2  # '0.81 [0.77, 0.84]': six figures with intervals fit a laptop screen; the CSV has them all
# Run, method, trained on, n, then the six figures.
SUMMARY_COLUMN_WIDTHS = ["13%", "10%", "6%", "4%"] + ["9%"] * 2 + ["12.25%"] * 4
GROUP_COLUMN = "Group"
LEFT_OUT = "left out of gaps"
VERSUS_SETTING_COLUMN = "Setting (its run, or seeds)"
VERSUS_FIGURES = ("accuracy", "auc", "max_acc_gap", "delta_tpr", "equalized_odds")  # the CSV has every gap
REFERENCE_AUTO = "auto: the task's Vanilla run"
SUMMARY_LABEL = (
    "Overall accuracy and AUC [95% bootstrap interval]; each gap: value [95% bootstrap range, which leans upward "
    "near 0 and is no test], then the gap pure chance gives these groups (noise floor) and the p-value of the gap"
)
VERSUS_LABEL = (
    "Paired against the reference on the same test samples: difference [95% interval over seeds and samples], "
    "p-value, verdict. Accuracy/AUC 'equivalent' = within ±0.01 by two one-sided tests"
)
VERSUS_COLUMN_WIDTHS = ["20%"] + ["16%"] * 5
UPLOAD_HELP = (
    "Any classifier's test predictions get the same tables, paired tests, plots and report as a FairDx run. "
    "Columns: `label` (0/1), `prob` (probability of class 1), one or more attribute columns (e.g. `race`, `sex`); "
    "optional `id` (to pair it with FairDx runs scored on the same images), `split` (`val` rows choose the "
    "threshold by Youden's J, `test` rows are audited), `margin` and `cluster` (e.g. a lesion or patient id: "
    "resampled together). Up to 20 MB. The file is checked here and deleted when you close the page."
)
UPLOADED = "**{name}** added: {n} test rows, attributes {attributes}; threshold {threshold:.3f} ({rule}). {ids}{flag}"
NOTES_NONE = "No notes: every group is large enough and has both labels."
NOTES_HEADER = "**Notes** ({n})"
NO_ATTRIBUTES = "the selected runs have no attribute columns in their predictions"
SWEEP_TITLE = " · sweep {sweep}"
SWEEP_CHOICE = "{sweep} ({n} run{s})"
NO_SWEEP = "– none –"
SWEEP_HELP = "Tick every finished run of one Studio sweep (and the Vanilla reference); the frontier joins them."
UNKNOWN_SWEEP = "no finished run of sweep '{sweep}'{task_words} yet; its runs appear here as their jobs finish"
RUN_NOT_READY = "run '{run}' has not finished yet; it appears in Compare once its job succeeds"


def attributes_of(run: Source) -> list[str]:
    """The attribute columns a run's predictions.csv holds (config.json records them under 'dataset')."""
    if isinstance(run, UploadedRun):
        return run.attributes
    if run.record.dataset.get("attributes"):
        return list(run.record.dataset["attributes"])
    try:
        header = pd.read_csv(run.path / "predictions.csv", nrows=0).columns
    except (OSError, ValueError):
        return []
    return [c for c in header if c not in metrics.RESERVED_COLUMNS]


def attribute_choices(runs: Sequence[Source], task: str) -> list[str]:
    """Each attribute of the task's runs, then every pair as an intersection, then any wider
    intersection a run was trained on (e.g. 'race', …, 'sex+age_group')."""
    singles: list[str] = []
    trained: list[str] = []
    for run in runs:
        if run.task != task:
            continue
        singles += [a for a in attributes_of(run) if a not in singles]
        if isinstance(run, RunInfo):
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


def keep_or_default_runs(
    runs: Sequence[RunInfo], task: str, current: Sequence[str] | None, uploads: Sequence[UploadedRun] = ()
) -> list[str]:
    """After a refresh, keep the visitor's selection (minus runs that are gone), or the defaults."""
    keys = {key for _, key in source_choices(runs, task, uploads)}
    kept = [key for key in (current or []) if key in keys]
    return kept or default_runs(runs, task)


def source_choices(runs: Sequence[RunInfo], task: str, uploads: Sequence[UploadedRun] = ()) -> list[tuple[str, str]]:
    """(title, key) of the task's runs, each run of a sweep with its sweep's name, then of the models uploaded
    in this session for the task."""
    sweeps = {run_key(run): run.settings.sweep for run in runs if run.task == task and run.settings.sweep}
    listed = [
        (title + SWEEP_TITLE.format(sweep=sweeps[key]) if key in sweeps else title, key)
        for title, key in run_choices(runs, task)
    ]
    uploaded = [(f"{u.label()} · {UPLOADED_TITLE}", u.label()) for u in uploads if u.task == task]
    return [*listed, *uploaded]


# ---------------------------------------------------------------------- sweeps
def sweep_choices(runs: Sequence[RunInfo], task: str) -> list[tuple[str, str]]:
    """The Sweep dropdown: 'none', then each sweep of the task's finished runs ('<name> (3 runs)'), newest
    first (a generated name ends in its time)."""
    counts = Counter(run.settings.sweep for run in runs if run.task == task and run.settings.sweep)
    named = [
        (SWEEP_CHOICE.format(sweep=sweep, n=n, s="" if n == 1 else "s"), str(sweep))
        for sweep, n in sorted(counts.items(), key=lambda item: str(item[0]), reverse=True)
    ]
    return [(NO_SWEEP, ""), *named]


def sweep_runs(runs: Sequence[RunInfo], task: str, sweep: str) -> list[str]:
    """The keys of a sweep's finished runs, and the task's first Vanilla run when the sweep has none: the
    reference each of its settings is paired against, and the point its frontier is read from.
    ValueError when no run of the sweep has finished."""
    candidates = of_task(runs, task)
    members = [run for run in candidates if sweep and run.settings.sweep == sweep]
    if not members:
        raise ValueError(UNKNOWN_SWEEP.format(sweep=sweep, task_words=f" for task {task}" if task else ""))
    if not any(run.settings.objective is methods.BASELINE for run in members):
        members += [run for run in candidates if run.settings.objective is methods.BASELINE][:1]
    return [run_key(run) for run in members]


def job_selection(runs: Sequence[RunInfo], *, run_id: str, sweep: str | None) -> tuple[str, list[str]]:
    """What the Studio's "Show in Compare" shows for a job: (task, run keys) of its sweep (``sweep_runs``), or
    of its own run for a job of its own. ValueError while nothing of it has finished."""
    if sweep:
        matching = [run for run in runs if run.settings.sweep == sweep and not run.is_demo]
        if not matching:
            raise ValueError(UNKNOWN_SWEEP.format(sweep=sweep, task_words=""))
        task = matching[0].task
        return task, sweep_runs(runs, task, sweep)
    own = [run for run in runs if run.run_id == run_id and not run.is_demo]
    if not own:
        raise ValueError(RUN_NOT_READY.format(run=run_id))
    return own[0].task, [run_key(own[0])]


def selected_sources(
    keys: Sequence[str] | None, runs: Sequence[RunInfo], task: str, uploads: Sequence[UploadedRun] = ()
) -> list[Source]:
    """The runs and uploaded models behind the keys, in the order picked (ValueError for an unknown key)."""
    check_task(task)
    if not keys:
        raise ValueError(NO_RUNS)
    uploaded = {u.label(): u for u in uploads if u.task == task}
    return [uploaded[key] if key in uploaded else find_run(key, runs, task=task) for key in keys]


def add_upload(path: str | Path, task: str, folder: Path, uploads: Sequence[UploadedRun]) -> tuple[UploadedRun, ...]:
    """Check an uploaded predictions CSV (inference.uploads) and add it to the session's uploads
    (UploadError naming every problem of the file). Uploading the same file again replaces it."""
    check_task(task)
    added = read_upload(path, folder, task=task, name=Path(path).stem)
    return (*(u for u in uploads if u.label() != added.label()), added)


def upload_status(upload: UploadedRun) -> str:
    """The line under the upload box once a CSV is accepted."""
    rule = "chosen on its val rows by Youden's J" if upload.threshold_rule == "youden_on_val" else "no val rows: 0.5"
    ids = "" if upload.has_ids else "It has no `id` column, so it cannot be paired with other runs. "
    flag = f"⚠ {upload.guard_reasons[0]}: flagged as degenerate." if upload.degenerate else ""
    return UPLOADED.format(
        name=upload.label(),
        n=upload.n_rows,
        attributes=", ".join(upload.attributes),
        threshold=upload.threshold,
        rule=rule,
        ids=ids,
        flag=flag,
    )


def upload_folder(session: str | None) -> Path:
    """Where a browser session's checked uploads live: under the export folder (removed at exit), one
    folder per session (removed when the session ends, :func:`forget_uploads`)."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "", session or "") or "anonymous"
    folder = export_folder() / "uploads" / safe
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def forget_uploads(uploads: Sequence[UploadedRun] | None) -> None:
    """Delete a session's checked uploads: nothing uploaded is kept after the session."""
    for upload in uploads or ():
        shutil.rmtree(upload.path, ignore_errors=True)


def selected_runs(keys: Sequence[str] | None, runs: Sequence[RunInfo], task: str) -> list[RunInfo]:
    """The runs behind the keys (ValueError for an unknown key or another task's run)."""
    check_task(task)
    if not keys:
        raise ValueError(NO_RUNS)
    return [find_run(key, runs, task=task) for key in keys]


@dataclass(frozen=True)
class CompareView:
    summary: pd.DataFrame  # one row per run: overall accuracy, AUC, every gap with its noise floor
    versus: pd.DataFrame  # one row per setting: paired difference against the reference, p, verdict
    groups: pd.DataFrame  # one row per group, one column per run: accuracy [interval] (n)
    accuracy_figure: go.Figure
    margin_figure: go.Figure
    frontier_figure: go.Figure
    calibration_figure: go.Figure
    config_diff: pd.DataFrame  # the settings that differ between the runs
    notes: str
    comparison: Comparison
    paired: compare_stats.Versus


def show(runs: Sequence[Source], attribute: str, *, bootstrap: int, reference: str | None = None) -> CompareView:
    """Compare the runs on `attribute`, each setting paired against `reference` (a run's label; None or
    :data:`REFERENCE_AUTO`: the task's vanilla run). CompareError / ValueError for arguments no run can use."""
    comparison = compare_runs(runs, (attribute or "").strip(), bootstrap=bootstrap)
    chosen = None if reference in (None, "", REFERENCE_AUTO) else reference
    versus = compare_stats.versus(comparison, chosen) if not comparison.empty else compare_stats.versus(comparison)
    return CompareView(
        summary=summary_table(comparison),
        versus=versus_table(versus),
        groups=group_table(comparison),
        accuracy_figure=group_accuracy_figure(comparison),
        margin_figure=margin_figure(comparison),
        frontier_figure=frontier_figure(comparison),
        calibration_figure=calibration_figure(comparison),
        config_diff=config_diff(runs),
        notes=notes_markdown(comparison, versus),
        comparison=comparison,
        paired=versus,
    )


DIFF_FIELD_COLUMN = "Setting"
NO_DIFFERENCE = "The selected runs share every setting except those shown in the table (none differ)."
NOT_USED = "– (not used)"


def config_diff(runs: Sequence[Source]) -> pd.DataFrame:
    """What differs between the selected runs: one row per config field whose value is not the same for
    all of them (λ and w_max only where the method uses them), one column per run; an uploaded model
    has no config ('–')."""
    values: dict[str, dict[str, Any]] = {}
    for run in runs:
        if not isinstance(run, RunInfo):
            values[run.label()] = {}
            continue
        cfg, objective = run.settings, run.settings.objective
        fields = {k: v for k, v in cfg.model_dump().items() if k not in BOOKKEEPING_KEYS}
        fields["lam"] = cfg.lam if objective.uses_lambda else NOT_USED
        fields["w_max"] = cfg.w_max if objective.uses_w_max else NOT_USED
        values[run.label()] = fields
    names = list(dict.fromkeys(name for fields in values.values() for name in fields))
    rows = []
    for name in names:
        cells = [values[label].get(name, "–") for label in values]
        if len({json.dumps(cell, sort_keys=True, default=str) for cell in cells}) > 1:
            rows.append(
                {DIFF_FIELD_COLUMN: name, **{label: _shown(cell) for label, cell in zip(values, cells, strict=True)}}
            )
    return pd.DataFrame(rows, columns=[DIFF_FIELD_COLUMN, *values])


def _shown(value: Any) -> str:
    return "–" if value is None else value if isinstance(value, str) else json.dumps(value, default=str)


def reference_choices(keys: Sequence[str] | None) -> list[str]:
    """The reference dropdown: 'auto' (the task's vanilla run), then every selected run."""
    return [REFERENCE_AUTO, *(keys or [])]


def summary_table(comparison: Comparison) -> pd.DataFrame:
    """`compare_export.display_table` narrowed to fit a screen: each run named by its key ('fundus-fr (demo)'),
    λ and w_max folded into the method ('Hybrid λ=0.5 w_max=10'), flags beside the run's name
    ('skin-x ⚠ degenerate'), each gap followed by its noise floor and p-value; the seed, the demographic
    parity difference (neither paper reports it) and the raw columns are left to the CSV export."""
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
    for gap, title in GAP_TITLES.items():
        if title in table.columns:
            table[title] = [
                _with_floor(cell, floor, p)
                for cell, floor, p in zip(
                    table[title], comparison.table[f"{gap}_floor"], comparison.table[f"{gap}_floor_p"], strict=True
                )
            ]
    return table.drop(columns=[lam, w_max, *(COLUMN_TITLES[name] for name in SUMMARY_LEFT_OUT)])


def _with_floor(cell: str, floor, p) -> str:
    """'0.40 [0.33, 0.47] · chance 0.05, p=0.005': the gap beside what pure chance gives."""
    if floor is None or floor != floor or cell == "–":
        return cell
    return f"{cell} · chance {float(floor):.2f}, p={format_p(p)}"


def format_p(p) -> str:
    """'0.005', '0.04', '0.62'; '–' when undefined."""
    if p is None or p != p:
        return "–"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def versus_table(versus: compare_stats.Versus) -> pd.DataFrame:
    """One row per setting: each figure's paired difference against the reference, its interval, p and verdict."""
    columns = [VERSUS_SETTING_COLUMN, *(_figure_title(f) for f in VERSUS_FIGURES)]
    if versus.empty or versus.reference is None:
        return pd.DataFrame(columns=columns)
    rows = []
    for setting, rows_of in versus.table.groupby("setting", sort=False):
        first = rows_of.iloc[0]
        flag = " ⚠ degenerate" if first["flagged"] else ""
        runs = first["runs"] if first["seeds"] == 1 else f"{first['seeds']} seeds"
        row = {VERSUS_SETTING_COLUMN: f"{setting} ({runs}){flag}"}
        for figure in VERSUS_FIGURES:
            chosen = rows_of[rows_of["figure"] == figure]
            row[_figure_title(figure)] = _versus_cell(chosen.iloc[0]) if len(chosen) else "–"
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def versus_heading(versus: compare_stats.Versus) -> str:
    """The line above the vs-reference table: what the reference is and how it was paired."""
    if versus.reference is None:
        return "**vs reference**: no run to compare against."
    seeds = len(versus.reference.runs)
    return (
        f"**vs reference: {versus.reference.caption}** ({seeds} seed{'s' if seeds > 1 else ''}: "
        f"{', '.join(versus.reference.runs)}). Each setting's seeds are paired with the reference run of the same "
        "seed where one exists."
    )


def _figure_title(figure: str) -> str:
    return OVERALL_TITLES.get(figure) or GAP_TITLES[figure]


def _versus_cell(row) -> str:
    """'−0.060 [−0.100, −0.023] p=0.004 · fairer'."""
    if row["difference"] is None or row["difference"] != row["difference"]:
        return f"– · {row['verdict']}"
    interval = ""
    if row["ci_lo"] is not None and row["ci_lo"] == row["ci_lo"]:
        interval = f" [{_signed(row['ci_lo'])}, {_signed(row['ci_hi'])}]"
    return f"{_signed(row['difference'])}{interval} p={format_p(row['p_value'])} · {row['verdict']}"


def _signed(value: float) -> str:
    return f"{float(value) + 0.0:+.3f}".replace("-", "−")


def _setting(name: str, value) -> str:
    return "" if value in ("", None) or value != value else f"{name}={float(value):g}"


def group_table(comparison: Comparison) -> pd.DataFrame:
    """Per-group accuracy: a row per group, a column per run, each cell 'acc [lo, hi] (n=…)'.

    Groups are rows so an intersection's many groups do not push the table sideways. A group below the
    run's small-group rule reads '(n=12, left out of gaps)'; a degenerate run's column is marked ⚠."""
    if comparison.empty:
        return pd.DataFrame(columns=[GROUP_COLUMN])
    groups = comparison.groups
    order = sorted(groups["group"].unique(), key=_group_order)
    columns = {}
    for run, label, flags in zip(
        comparison.table["run"], comparison.table["label"], comparison.table["flags"], strict=True
    ):
        mine = groups[groups["run"] == run].set_index("group")
        title = f"{label} ⚠" if unreliable(flags) else label
        cells = []
        for group in order:
            if group not in mine.index:
                cells.append("–")
                continue
            g = mine.loc[group]
            cell = format_interval(g["accuracy"], g["accuracy_lo"], g["accuracy_hi"], digits=2)
            cells.append(f"{cell} (n={int(g['n'])}{', ' + LEFT_OUT if g['small'] else ''})")
        columns[title] = cells
    return pd.DataFrame({GROUP_COLUMN: order, **columns})


def _group_order(group: str) -> tuple:
    """Groups sorted with 'Unknown' parts last."""
    return tuple((part == "Unknown", part) for part in group.split(GROUP_JOINER))


def notes_markdown(comparison: Comparison, versus: compare_stats.Versus | None = None) -> str:
    notes = [*comparison.notes, *(versus.notes if versus else ())]
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


def write_versus_csv(versus: compare_stats.Versus, folder: Path, task: str, attribute: str) -> Path | None:
    """The paired comparisons (one row per setting and figure, every gap) as CSV; None without a reference."""
    if versus.reference is None or versus.empty:
        return None
    keys = [versus.reference.caption, *versus.table["setting"].unique()]
    path = Path(folder) / f"compare-{_slug(task, attribute, 'versus', *keys)}-versus.csv"
    path.write_text(versus.table.assign(reference=versus.reference.caption).to_csv(index=False))
    return path


def write_report(
    runs: Sequence[Source],
    folder: Path,
    task: str,
    *,
    bootstrap: int,
    attribute: str | None = None,
    reference: str | None = None,
    available: Sequence[RunInfo] = (),
) -> Path:
    """inference.report.build_report over the selected runs, as Markdown in `folder`: it follows the
    attribute and the reference chosen in Compare, and tells "not selected" from "does not exist" by
    the `available` runs."""
    keys = sorted(run.label() for run in runs)
    chosen = None if reference in (None, "", REFERENCE_AUTO) else reference
    path = Path(folder) / f"fairdx-report-{_slug(task, str(bootstrap), str(attribute), str(chosen), *keys)}.md"
    path.write_text(
        build_report(
            runs, bootstrap=bootstrap, sources=keys, attribute=attribute, reference=chosen, available=available
        )
    )
    return path
