"""The Compare tab's logic: several runs side by side on one attribute, as tables and Plotly figures.

Every figure comes from each run's ``predictions.csv`` through ``training.metrics.evaluate`` (the
one implementation of the metrics; nothing is recomputed here except what evaluate does not give):

Every frame names a run by ``RunInfo.label()`` (its id, with " (demo)" for a shipped demo), so a
user's run with a demo's id stays apart from the demo.

- ``Comparison.table``  one row per run: method, λ, w_max, overall accuracy and AUC, and every gap
  of ``training.metrics.GAPS`` (MaxAccGap of seed 000 Eq. 1, ΔTPR of seed 004, equalized odds,
  demographic parity, ES-AUC), each with its bootstrap percentile interval (``<name>_lo/_hi``).
- ``Comparison.groups`` long format, one row per (run, group): n, n_pos, accuracy with a Wilson
  score interval, TPR, FPR, AUC, mean margin. evaluate's bootstrap gives intervals for the gaps
  only, so a group's accuracy interval is the Wilson interval of ``correct`` out of ``n`` at the same
  level (a binomial interval that stays inside [0, 1] and behaves at small n, unlike the normal one).
- ``Comparison.margins`` the certainty margin of every sample with its group, for the certainty
  distributions of seed 004 (margin < 0 means misclassified).

``attribute`` is a column or an intersection ``"a+b"`` (groups ``"A & B"``, as the loaders spell them).
A run whose predictions cannot give the attribute (column missing, no rows for the split, a bad
file) is skipped with a note instead of failing the whole comparison.

Results are cached per run under (run path, predictions.csv mtime_ns and size, attribute, split,
bootstrap, seed), and whole comparisons under the tuple of their runs' keys, so refreshing the tab
is instant and a rewritten predictions file is picked up. Both caches are bounded LRU caches; the
cached objects are shared, so treat a returned ``Comparison`` (and its frames) as read-only.

Uncached runs are evaluated in a thread pool, one thread per core: most of evaluate's time is numpy
array work (fancy-index gathers, cumulative sums, BLAS products) that runs without the GIL, so runs
can overlap; bench/compare_speed.py measures the effect against a single thread.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy import stats

from training import guard, metrics
from training.rundir import PREDICTIONS, RunInfo

try:  # installed with scikit-learn; without it BLAS keeps its own thread count
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

CI_LEVEL = 0.95
MIN_N = 30  # groups smaller than this are flagged ``small`` (training.metrics' default)
RUN_CACHE_SIZE = 512
COMPARISON_CACHE_SIZE = 32
SPLITS = ("val", "test")
MAX_WORKERS: int | None = None  # threads for uncached runs; None = one per CPU core (bench/ sets 1 to compare)

# Methods that read λ / w_max (training.losses.fairness_loss); the table leaves the others empty.
LAMBDA_METHODS = ("fr", "hybrid", "cmac")
WEIGHT_METHODS = ("gr", "hybrid")
METHOD_NAMES = {"vanilla": "Vanilla", "fr": "FR", "gr": "GR", "hybrid": "Hybrid", "cmac": "CMAC-MMD"}
METHOD_COLORS = {  # one colour per method, the same in every figure
    "vanilla": "#636363",
    "fr": "#1f77b4",
    "gr": "#2ca02c",
    "hybrid": "#9467bd",
    "cmac": "#ff7f0e",
}
OTHER_COLOR = "#8c564b"
PATTERNS = ("", "/", "x", ".", "\\", "+", "-", "|")  # tells apart runs of one method in the bars

GAP_TITLES = {
    "max_acc_gap": "MaxAccGap",
    "delta_tpr": "ΔTPR",
    "equalized_odds": "Equalized odds",
    "dpd": "Demographic parity diff.",
    "es_auc": "ES-AUC",
}
HIGHER_IS_FAIRER = frozenset({"es_auc"})
OVERALL_TITLES = {"accuracy": "Overall accuracy", "auc": "AUC"}
COLUMN_TITLES = {
    "run": "Run",
    "method": "Method",
    "lambda": "λ",
    "w_max": "w_max",
    "seed": "Seed",
    "trained_on": "Trained on",
    "n": "n",
    "flags": "Flags",
    **OVERALL_TITLES,
    **GAP_TITLES,
}

DEGENERATE_FLAG = "degenerate"  # shown in the Flags column and beside the run's point on the frontier

# Messages: module constants, asserted word for word by the tests.
NO_RUNS = "no runs selected; pick at least one run to compare"
BAD_ATTRIBUTE = "attribute must be a column name or names joined by '+' (e.g. 'sex+age_group'); got {value!r}"
BAD_SPLIT = "split must be one of {choices}; got {value!r}"
BAD_NUMBER = "{name} must be a whole number >= 0; got {value!r}"
MISSING_ATTRIBUTE = (
    "run '{run}' skipped: its predictions have no column {columns} for attribute '{attribute}' "
    "(its attribute columns: {available})"
)
UNUSABLE_RUN = "run '{run}' skipped: {reason}"
UNDEFINED_GROUPS = "run '{run}', {attribute}: {what} ({groups}), so {metrics} leave them out"
SMALL_GROUPS = "run '{run}', {attribute}: groups with fewer than {min_n} samples give noisy figures: {groups}"
NOTHING_TO_SHOW = "No runs to show: {reason}"
NO_MARGINS = "run '{run}' has no margin column; its certainty distribution is not shown"
ONE_CLASS = (
    "run '{run}' predicts class {label} for every {split} sample, so its TPR and FPR are the same in every group "
    "and its ΔTPR and equalized odds are 0 by construction, not by fairness"
)
UNKNOWN_FIGURE_CHOICE = "{name} must be one of {choices}; got {value!r}"

_BASE_COLUMNS = {"id", metrics.LABEL, metrics.PROB, metrics.MARGIN, metrics.SPLIT}


class CompareError(ValueError):
    """An argument the comparison cannot use; the message says what to pass instead."""


@dataclass(frozen=True)
class RunResult:
    """One run evaluated on one attribute: the unit of the per-run cache.

    ``error`` is set (and the frames empty) when the run was skipped.
    """

    run: str  # RunInfo.label(): the run id, '(demo)' added for a shipped demo, so a copy in runs/ differs
    row: dict[str, Any]
    groups: pd.DataFrame
    margins: pd.DataFrame
    report: dict | None
    notes: tuple[str, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Comparison:
    """Runs compared on one attribute; what the Compare tab shows and what the report reads."""

    attribute: str
    split: str
    bootstrap: int
    seed: int
    table: pd.DataFrame  # one row per usable run, see the module docstring
    groups: pd.DataFrame  # one row per (run, group)
    margins: pd.DataFrame  # run, method, group, label, margin: one row per sample
    reports: dict[str, dict] = field(repr=False)  # run (its label) -> metrics.evaluate output
    notes: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()  # runs (labels) left out
    ci_level: float = CI_LEVEL

    @property
    def empty(self) -> bool:
        return self.table.empty


# ---------------------------------------------------------------------------------------------------
# Comparing


def compare_runs(
    runs: Sequence[RunInfo], attribute: str, *, split: str = "test", bootstrap: int = 1000, seed: int = 0
) -> Comparison:
    """Evaluate each run's predictions on ``attribute`` and put them side by side.

    Raises CompareError for arguments no run could use (no runs, a bad attribute, split or count);
    a problem with one run's predictions only skips that run, with a note.
    """
    _check_arguments(runs, attribute, split, bootstrap, seed)
    attribute = attribute.strip()
    keys = [_run_key(run, attribute, split, bootstrap, seed) for run in runs]
    whole_key = (tuple(keys), attribute, split, bootstrap, seed)
    cached = _COMPARISONS.get(whole_key)
    if cached is not None:
        return cached

    # One computation at a time: two at once would only share the same cores, the process-wide
    # settings in _evaluate_all stay consistent, and a caller that waited finds the runs cached.
    with _COMPUTE_LOCK:
        results: dict[Hashable, RunResult | None] = {key: _RUNS.get(key) for key in dict.fromkeys(keys)}
        todo = list({key: (run, key) for key, run in zip(keys, runs) if results[key] is None}.values())  # each once
        for key, result in _evaluate_all(todo, attribute, split, bootstrap, seed):
            _RUNS.put(key, result)
            results[key] = result
    comparison = _assemble([results[key] for key in keys], attribute, split, bootstrap, seed)
    _COMPARISONS.put(whole_key, comparison)
    return comparison


def _check_arguments(runs, attribute, split, bootstrap, seed) -> None:
    problems = []
    if not runs:
        problems.append(NO_RUNS)
    parts = attribute.split(metrics.INTERSECTION) if isinstance(attribute, str) else [""]
    if any(not part.strip() for part in parts):
        problems.append(BAD_ATTRIBUTE.format(value=attribute))
    if split not in SPLITS:
        problems.append(BAD_SPLIT.format(choices=", ".join(SPLITS), value=split))
    for name, value in (("bootstrap", bootstrap), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            problems.append(BAD_NUMBER.format(name=name, value=value))
    if problems:
        raise CompareError("; ".join(problems))


def _run_key(run: RunInfo, attribute: str, split: str, bootstrap: int, seed: int) -> Hashable:
    """Identity of one evaluation: a rewritten predictions file (new mtime or size) is a new key."""
    path = Path(run.path).resolve()
    try:
        status = (path / PREDICTIONS).stat()
        stamp: tuple = (status.st_mtime_ns, status.st_size)
    except OSError:
        stamp = (None, None)
    return (str(path), *stamp, attribute, split, bootstrap, seed)


_COMPUTE_LOCK = threading.Lock()


def one_blas_thread():
    """BLAS limited to one thread while the pool runs: one thread per run per core.

    OpenBLAS's own threads (one per core by default) spin while they wait, so on top of a thread
    per core they oversubscribe the machine and burn a core for nothing. Measured on 2 idle cores
    (bench/compare_speed.py, 20 runs × 2,000 predictions × 1,000 resamples, median wall time):
    2 pool threads + 1 BLAS thread 0.97 s; 2 + 2 BLAS threads 1.4-2.6 s; 1 + 1 BLAS thread 1.60 s;
    evaluate alone with 2 BLAS threads 1.60 s wall for 3.2 s of CPU.
    """
    return threadpool_limits(limits=1, user_api="blas") if threadpool_limits else contextlib.nullcontext()


def _evaluate_all(todo, attribute: str, split: str, bootstrap: int, seed: int):
    """(key, RunResult) for every run to compute, in parallel when there are several.

    UndefinedMetricWarning is silenced for the duration (its content becomes per-run notes built
    from the report instead). warnings filters and BLAS threads are process-wide, hence one setting
    around the whole pool (under _COMPUTE_LOCK) rather than one per worker thread.
    """
    if not todo:
        return []
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        workers = min(len(todo), MAX_WORKERS or os.cpu_count() or 1)
        if workers == 1:
            return [
                (key, evaluate_run(run, attribute, split=split, bootstrap=bootstrap, seed=seed)) for run, key in todo
            ]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compare") as pool:
            futures = [
                (key, pool.submit(evaluate_run, run, attribute, split=split, bootstrap=bootstrap, seed=seed))
                for run, key in todo
            ]
            return [(key, future.result()) for key, future in futures]


def evaluate_run(run: RunInfo, attribute: str, *, split: str, bootstrap: int, seed: int) -> RunResult:
    """One run's row, groups and margins; never raises for a problem in the run's files."""
    try:
        frame = metrics.read_predictions(Path(run.path) / PREDICTIONS)
        columns = attribute_columns(attribute, frame.columns)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            available = [c for c in frame.columns if c not in _BASE_COLUMNS]
            message = MISSING_ATTRIBUTE.format(
                run=run.label(),
                columns=", ".join(f"'{c}'" for c in missing),
                attribute=attribute,
                available=", ".join(available) or "none",
            )
            return _skipped(run, message)
        frame = metrics.select_split(frame, split)  # the margins need the split's rows too
        report = metrics.evaluate(
            frame, [attribute], threshold=run.threshold, min_n=MIN_N,
            gap_min_n=run.config.get("eval_gap_min_n", metrics.GAP_MIN_N), bootstrap=bootstrap, seed=seed,
            ci=CI_LEVEL, split=split,
        )
    except metrics.MetricsError as error:
        return _skipped(run, UNUSABLE_RUN.format(run=run.label(), reason=error))
    row = {**run_description(run), "flags": DEGENERATE_FLAG if run.degenerate else None, **_figures(report, attribute)}
    groups = _group_frame(run, report["attributes"][attribute])
    margins = _margin_frame(run, frame, columns)
    notes = _group_notes(run.label(), attribute, groups)
    if run.degenerate:
        notes = (f"{run.label()}: {guard.warning_text(run.guard_reasons)}", *notes)
    if report["overall"]["selection_rate"] in (0.0, 1.0):
        label = int(report["overall"]["selection_rate"])
        notes = (ONE_CLASS.format(run=run.label(), label=label, split=split), *notes)
    if margins.empty:
        notes += (NO_MARGINS.format(run=run.label()),)
    return RunResult(run.label(), row, groups, margins, report, notes)


def _skipped(run: RunInfo, message: str) -> RunResult:
    return RunResult(run.label(), {}, pd.DataFrame(), pd.DataFrame(), None, (message,), message)


def attribute_columns(attribute: str, columns) -> list[str]:
    """The columns behind an attribute spec, as training.metrics reads it: a column, else 'a+b' split."""
    if attribute in columns:
        return [attribute]
    return [part.strip() for part in attribute.split(metrics.INTERSECTION)]


def run_description(run: RunInfo) -> dict[str, Any]:
    """The config side of a table row; λ and w_max only for the methods that use them, and the
    attribute only when training used it (vanilla uses it only for group-balanced batches)."""
    config = run.config
    method = run.method
    trained_on = config.get("cmac_attribute") if method == "cmac" else None
    if method == "vanilla" and not config.get("balanced_sampling"):
        return {**_description(run, config, method), "trained_on": None}
    return {**_description(run, config, method), "trained_on": trained_on or config.get("attribute")}


def _description(run: RunInfo, config: dict, method: str) -> dict[str, Any]:
    return {
        "run": run.label(),
        "label": run.label(),
        "task": config.get("task"),
        "method": method,
        "lambda": _number(config.get("lam")) if method in LAMBDA_METHODS else None,
        "w_max": _number(config.get("w_max")) if method in WEIGHT_METHODS else None,
        "seed": config.get("seed"),
    }


def _figures(report: dict, attribute: str) -> dict[str, Any]:
    overall = report["overall"]
    gaps = report["attributes"][attribute]
    row: dict[str, Any] = {"n": overall["n"]}
    for name in OVERALL_TITLES:
        row.update(_with_interval(name, overall[name], overall.get("ci", {}).get(name)))
    for name in metrics.GAPS:
        row.update(_with_interval(name, gaps[name], gaps.get("ci", {}).get(name)))
    return row


def _with_interval(name: str, value, interval) -> dict[str, Any]:
    low, high = interval if interval else (None, None)
    return {name: value, f"{name}_lo": low, f"{name}_hi": high}


def _group_frame(run: RunInfo, attribute_report: dict) -> pd.DataFrame:
    rows = []
    for group, figures in attribute_report["groups"].items():
        n, accuracy = figures["n"], figures["accuracy"]
        low, high = wilson_interval(round(accuracy * n), n, CI_LEVEL)
        rows.append(
            {
                "run": run.label(),
                "method": run.method,
                "group": group,
                "n": n,
                "n_pos": figures["n_pos"],
                "accuracy": accuracy,
                "accuracy_lo": low,
                "accuracy_hi": high,
                "tpr": figures["tpr"],
                "fpr": figures["fpr"],
                "auc": figures["auc"],
                "mean_margin": figures.get("mean_margin"),
                "small": figures["small"],
            }
        )
    return pd.DataFrame(rows)


def _margin_frame(run: RunInfo, frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    if metrics.MARGIN not in frame.columns:
        return pd.DataFrame()
    group = frame[columns[0]].astype(str)
    for column in columns[1:]:
        group = group + metrics.GROUP_JOINER + frame[column].astype(str)
    return pd.DataFrame(
        {
            "run": run.label(),
            "method": run.method,
            "group": group.to_numpy(),
            "label": pd.to_numeric(frame[metrics.LABEL]).to_numpy(int),
            "margin": pd.to_numeric(frame[metrics.MARGIN]).to_numpy(float),
        }
    )


def _group_notes(run_id: str, attribute: str, groups: pd.DataFrame) -> tuple[str, ...]:
    notes = []
    for column, what, gap_metrics in (
        ("tpr", "groups without positive labels", "TPR, AUC, ΔTPR and equalized odds"),
        ("fpr", "groups without negative labels", "FPR, AUC and equalized odds"),
    ):
        undefined = groups.loc[groups[column].isna(), "group"].tolist()
        if undefined:
            notes.append(UNDEFINED_GROUPS.format(
                run=run_id, attribute=attribute, what=what, groups=", ".join(undefined), metrics=gap_metrics
            ))
    small = groups[groups["small"]]
    if not small.empty:
        listed = ", ".join(f"{g} (n={n})" for g, n in zip(small["group"], small["n"]))
        notes.append(SMALL_GROUPS.format(run=run_id, attribute=attribute, min_n=MIN_N, groups=listed))
    return tuple(notes)


def _assemble(results: list[RunResult], attribute: str, split: str, bootstrap: int, seed: int) -> Comparison:
    usable = [r for r in results if r.error is None]
    notes = tuple(dict.fromkeys(note for r in results for note in r.notes))
    table = pd.DataFrame([r.row for r in usable], columns=table_columns())
    groups = _concat([r.groups for r in usable], GROUP_COLUMNS)
    margins = _concat([r.margins for r in usable], MARGIN_COLUMNS)
    return Comparison(
        attribute=attribute,
        split=split,
        bootstrap=bootstrap,
        seed=seed,
        table=table,
        groups=groups,
        margins=margins,
        reports={r.run: r.report for r in usable},
        notes=notes,
        skipped=tuple(r.run for r in results if r.error is not None),
    )


GROUP_COLUMNS = ["run", "method", "group", "n", "n_pos", "accuracy", "accuracy_lo", "accuracy_hi", "tpr", "fpr",
                 "auc", "mean_margin", "small"]
MARGIN_COLUMNS = ["run", "method", "group", "label", "margin"]


def table_columns() -> list[str]:
    """Column order of ``Comparison.table``."""
    figures = [f"{name}{suffix}" for name in (*OVERALL_TITLES, *metrics.GAPS) for suffix in ("", "_lo", "_hi")]
    return ["run", "label", "task", "method", "lambda", "w_max", "seed", "trained_on", "n", "flags", *figures]


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def wilson_interval(successes: int, n: int, level: float = CI_LEVEL) -> tuple[float | None, float | None]:
    """Wilson score interval for a proportion (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it).

    center = (p̂ + z²/2n) / (1 + z²/n), half width = z / (1 + z²/n) · √(p̂(1 − p̂)/n + z²/4n²).
    Unlike p̂ ± z·se it never leaves [0, 1] and does not collapse to a point at p̂ = 0 or 1.
    """
    if n <= 0:
        return None, None
    z = float(stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def _number(value) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------
# Cache


@dataclass(frozen=True)
class CacheInfo:
    run_hits: int
    run_misses: int
    runs_cached: int
    comparison_hits: int
    comparison_misses: int
    comparisons_cached: int


class _LRU:
    """A small thread-safe least-recently-used map (Gradio calls handlers from several threads)."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.hits = self.misses = 0
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


_RUNS = _LRU(RUN_CACHE_SIZE)
_COMPARISONS = _LRU(COMPARISON_CACHE_SIZE)


def cache_info() -> CacheInfo:
    return CacheInfo(_RUNS.hits, _RUNS.misses, len(_RUNS), _COMPARISONS.hits, _COMPARISONS.misses, len(_COMPARISONS))


def clear_cache() -> None:
    """Forget every cached result (the benchmark times the uncached path this way)."""
    _RUNS.clear()
    _COMPARISONS.clear()


# ---------------------------------------------------------------------------------------------------
# Export and display


def to_csv(comparison: Comparison, *, which: str = "runs") -> str:
    """The runs table (``which="runs"``) or the per-group table (``"groups"``) as CSV text.

    Floats are written at full precision, so ``pd.read_csv`` gives the same numbers back.
    """
    frames = {"runs": comparison.table, "groups": comparison.groups}
    if which not in frames:
        raise CompareError(UNKNOWN_FIGURE_CHOICE.format(name="which", choices=", ".join(frames), value=which))
    buffer = io.StringIO()
    frames[which].to_csv(buffer, index=False)
    return buffer.getvalue()


def display_table(comparison: Comparison, *, digits: int = 3) -> pd.DataFrame:
    """The runs table for people: titled columns, each figure as 'value [low, high]'."""
    shown = {}
    table = comparison.table
    for column in ("run", "flags", "method", "lambda", "w_max", "seed", "trained_on", "n"):
        values = table[column]
        if column == "method":
            values = values.map(lambda m: METHOD_NAMES.get(m, m))
        shown[COLUMN_TITLES[column]] = values.map(lambda v: "" if v is None or v != v else v)
    for name in (*OVERALL_TITLES, *metrics.GAPS):
        bounds = zip(table[name], table[f"{name}_lo"], table[f"{name}_hi"])
        shown[COLUMN_TITLES[name]] = [format_interval(v, lo, hi, digits) for v, lo, hi in bounds]
    return pd.DataFrame(shown)


def format_interval(value, low, high, digits: int = 3, scale: float = 1.0) -> str:
    """'0.123 [0.100, 0.150]'; '–' for an undefined figure, no brackets without an interval."""
    if value is None or value != value:
        return "–"
    text = f"{value * scale:.{digits}f}"
    if low is None or high is None or low != low or high != high:
        return text
    return f"{text} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def run_caption(row) -> str:
    """'fundus-gr (demo) · GR, w_max=10': the run with what distinguishes its method settings."""
    settings = []
    if row.get("lambda") is not None and row["lambda"] == row["lambda"]:
        settings.append(f"λ={row['lambda']:g}")
    if row.get("w_max") is not None and row["w_max"] == row["w_max"]:
        settings.append(f"w_max={row['w_max']:g}")
    method = METHOD_NAMES.get(row["method"], row["method"])
    return f"{row['run']} · {', '.join([method, *settings])}"


# ---------------------------------------------------------------------------------------------------
# Figures


def _method_color(method: str) -> str:
    return METHOD_COLORS.get(method, OTHER_COLOR)


def _empty_figure(title: str, reason: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=NOTHING_TO_SHOW.format(reason=reason), showarrow=False, x=0.5, y=0.5,
                          xref="paper", yref="paper", font={"size": 14})
    figure.update_layout(title=title, xaxis={"visible": False}, yaxis={"visible": False}, template="plotly_white")
    return figure


def _empty_reason(comparison: Comparison) -> str:
    return "; ".join(comparison.notes) if comparison.notes else "no run could be evaluated"


def _in_method_order(table: pd.DataFrame) -> pd.DataFrame:
    """Rows ordered vanilla, fr, gr, hybrid, cmac (others last), keeping the given order within a method,
    so every figure lists the methods the same way whatever order the runs were picked in."""
    rank = {method: i for i, method in enumerate(METHOD_NAMES)}
    order = sorted(range(len(table)), key=lambda i: (rank.get(table["method"].iloc[i], len(rank)), i))
    return table.iloc[order]


def _pattern_for_runs(table: pd.DataFrame) -> dict[str, str]:
    """A bar pattern per run: the first run of each method plain, further ones hatched."""
    seen: dict[str, int] = {}
    patterns = {}
    for run, method in zip(table["run"], table["method"]):
        count = seen.get(method, 0)
        patterns[run] = PATTERNS[count % len(PATTERNS)]
        seen[method] = count + 1
    return patterns


def group_accuracy_figure(comparison: Comparison) -> go.Figure:
    """Grouped bars: accuracy per group, one trace (colour) per run, Wilson intervals as error bars."""
    title = f"Accuracy per {comparison.attribute} group ({comparison.split} split)"
    if comparison.empty:
        return _empty_figure(title, _empty_reason(comparison))
    figure = go.Figure()
    table = _in_method_order(comparison.table)
    patterns = _pattern_for_runs(table)
    level = f"{comparison.ci_level:.0%}"
    for row in table.to_dict("records"):
        groups = comparison.groups[comparison.groups["run"] == row["run"]]
        accuracy = groups["accuracy"].to_numpy(float)
        figure.add_bar(
            name=run_caption(row),
            x=groups["group"],
            y=accuracy,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": groups["accuracy_hi"].to_numpy(float) - accuracy,
                "arrayminus": accuracy - groups["accuracy_lo"].to_numpy(float),
            },
            marker={"color": _method_color(row["method"]), "pattern": {"shape": patterns[row["run"]]}},
            customdata=np.stack([groups["n"], groups["accuracy_lo"], groups["accuracy_hi"]], axis=1),
            hovertemplate=(
                f"<b>{run_caption(row)}</b><br>group %{{x}} (n=%{{customdata[0]}})<br>accuracy %{{y:.3f}}"
                f"<br>{level} Wilson interval [%{{customdata[1]:.3f}}, %{{customdata[2]:.3f}}]<extra></extra>"
            ),
        )
    figure.update_layout(
        title=title,
        barmode="group",
        xaxis_title=f"{comparison.attribute} group",
        yaxis_title=f"Accuracy ({level} Wilson interval)",
        yaxis_range=[0, 1.05],
        legend_title="Run (method)",
        template="plotly_white",
    )
    return figure


MARGIN_KINDS = ("violin", "kde")


def margin_figure(
    comparison: Comparison, runs: Sequence[str] | None = None, *, kind: str = "violin", label: int | None = None
) -> go.Figure:
    """Certainty-margin distributions per group for each run (seed 004's "certainty gap" view).

    ``kind="violin"``: one trace per group, runs side by side on the x axis. ``kind="kde"``: one
    panel per run, one Gaussian KDE curve (scipy.stats.gaussian_kde, Scott's bandwidth) per group.
    ``label=1`` keeps the positives only: margin < 0 there is a missed diagnosis, the gap seed 004
    reports. Margin 0 is the decision boundary.
    """
    if kind not in MARGIN_KINDS:
        raise CompareError(UNKNOWN_FIGURE_CHOICE.format(name="kind", choices=", ".join(MARGIN_KINDS), value=kind))
    if label not in (None, 0, 1):
        raise CompareError(UNKNOWN_FIGURE_CHOICE.format(name="label", choices="None, 0, 1", value=label))
    who = {None: "all samples", 1: "positives (label 1)", 0: "negatives (label 0)"}[label]
    title = f"Certainty margin per {comparison.attribute} group, {who}"
    margins = comparison.margins
    if runs is not None:
        margins = margins[margins["run"].isin(list(runs))]
    if label is not None:
        margins = margins[margins["label"] == label]
    if margins.empty:
        return _empty_figure(title, _empty_reason(comparison) if comparison.empty else "no margins for these runs")
    captions = {row["run"]: run_caption(row) for row in comparison.table.to_dict("records")}
    order = [run for run in _in_method_order(comparison.table)["run"] if run in set(margins["run"])]
    groups = sorted(margins["group"].unique())
    if kind == "violin":
        figure = _margin_violins(margins, order, groups, captions)
    else:
        figure = _margin_kdes(margins, order, groups, captions)
    figure.update_layout(title=title, legend_title=f"{comparison.attribute} group", template="plotly_white")
    return figure


def _margin_violins(margins: pd.DataFrame, order: list[str], groups: list[str], captions: dict) -> go.Figure:
    figure = go.Figure()
    for group in groups:
        chosen = margins[margins["group"] == group]
        figure.add_violin(
            name=group,
            x=chosen["run"].map(captions),
            y=chosen["margin"],
            box_visible=True,
            meanline_visible=True,
            points=False,
            scalegroup=group,
            hoverinfo="y+name",
        )
    figure.add_hline(y=0, line_dash="dash", line_color="black", annotation_text="decision boundary",
                     annotation_position="bottom right")
    figure.update_layout(
        violinmode="group",
        xaxis={"title": "Run (method)", "categoryorder": "array", "categoryarray": [captions[r] for r in order]},
        yaxis_title="Certainty margin (true-class score − other class)",
    )
    return figure


def _margin_kdes(margins: pd.DataFrame, order: list[str], groups: list[str], captions: dict) -> go.Figure:
    figure = make_subplots(rows=len(order), cols=1, shared_xaxes=True, subplot_titles=[captions[r] for r in order],
                           vertical_spacing=min(0.08, 0.3 / max(1, len(order))))
    grid = np.linspace(margins["margin"].min(), margins["margin"].max(), 200)
    palette = _group_palette(groups)
    for panel, run in enumerate(order, start=1):
        for group in groups:
            values = margins.loc[(margins["run"] == run) & (margins["group"] == group), "margin"].to_numpy(float)
            if len(np.unique(values)) < 2:
                continue  # a KDE needs spread; such a group has no curve in this panel
            density = stats.gaussian_kde(values)(grid)
            figure.add_scatter(
                x=grid, y=density, mode="lines", name=group, legendgroup=group, showlegend=panel == 1,
                line={"color": palette[group]},
                hovertemplate=f"{group} (n={len(values)})<br>margin %{{x:.2f}}<br>density %{{y:.3f}}<extra></extra>",
                row=panel, col=1,
            )
        figure.add_vline(x=0, line_dash="dash", line_color="black", row=panel, col=1)
        figure.update_yaxes(title_text="density", row=panel, col=1)
    figure.update_xaxes(title_text="Certainty margin (true-class score − other class)", row=len(order), col=1)
    figure.update_layout(height=max(400, 220 * len(order)))
    return figure


def _group_palette(groups: list[str]) -> dict[str, str]:
    import plotly.express as px

    colors = px.colors.qualitative.Safe + px.colors.qualitative.Dark24
    return {group: colors[i % len(colors)] for i, group in enumerate(groups)}


FRONTIER_METRICS = tuple(OVERALL_TITLES)


def frontier_figure(comparison: Comparison, *, gap: str = "max_acc_gap", metric: str = "accuracy") -> go.Figure:
    """Accuracy (or AUC) against a gap across runs: one trace per method, intervals as error bars."""
    if gap not in metrics.GAPS:
        raise CompareError(UNKNOWN_FIGURE_CHOICE.format(name="gap", choices=", ".join(metrics.GAPS), value=gap))
    if metric not in FRONTIER_METRICS:
        raise CompareError(
            UNKNOWN_FIGURE_CHOICE.format(name="metric", choices=", ".join(FRONTIER_METRICS), value=metric)
        )
    direction = "higher is fairer" if gap in HIGHER_IS_FAIRER else "lower is fairer"
    title = f"{OVERALL_TITLES[metric]} vs {GAP_TITLES[gap]} on {comparison.attribute}"
    if comparison.empty:
        return _empty_figure(title, _empty_reason(comparison))
    figure = go.Figure()
    table = _in_method_order(comparison.table)
    for method in dict.fromkeys(table["method"]):
        rows = table[table["method"] == method]
        x, y = rows[gap].to_numpy(float), rows[metric].to_numpy(float)
        captions = [run_caption(row) for row in rows.to_dict("records")]
        flagged = (rows["flags"].fillna("") != "").to_numpy() if "flags" in rows else np.zeros(len(rows), bool)
        figure.add_scatter(
            name=METHOD_NAMES.get(method, method),
            x=x,
            y=y,
            mode="markers+text",
            text=[f"⚠ {run} ({DEGENERATE_FLAG})" if bad else run for run, bad in zip(rows["run"], flagged)],
            textposition="top center",
            marker={"size": 12, "color": _method_color(method),
                    "symbol": ["x" if bad else "circle" for bad in flagged]},
            error_x=_error_bars(x, rows[f"{gap}_lo"], rows[f"{gap}_hi"]),
            error_y=_error_bars(y, rows[f"{metric}_lo"], rows[f"{metric}_hi"]),
            customdata=list(zip(captions, *(_numbers(rows[c]) for c in (f"{gap}_lo", f"{gap}_hi", f"{metric}_lo",
                                                                         f"{metric}_hi")))),
            hovertemplate=(
                f"<b>%{{customdata[0]}}</b><br>{GAP_TITLES[gap]} %{{x:.3f}} [%{{customdata[1]:.3f}}, "
                f"%{{customdata[2]:.3f}}]<br>{OVERALL_TITLES[metric]} %{{y:.3f}} [%{{customdata[3]:.3f}}, "
                f"%{{customdata[4]:.3f}}]<extra></extra>"
            ),
        )
    level = f"{comparison.ci_level:.0%}"
    figure.update_layout(
        title=title,
        xaxis_title=f"{GAP_TITLES[gap]} on {comparison.attribute} ({direction}; {level} bootstrap interval)",
        yaxis_title=f"{OVERALL_TITLES[metric]} ({level} bootstrap interval)",
        legend_title="Method",
        template="plotly_white",
    )
    return figure


def _numbers(values) -> np.ndarray:
    """Floats with NaN for None (interval columns hold None when a run has no bootstrap)."""
    return pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)


def _error_bars(values: np.ndarray, low, high) -> dict:
    """Asymmetric error bars; a run without an interval (bootstrap 0) gets none."""
    low, high = _numbers(low), _numbers(high)
    return {
        "type": "data",
        "symmetric": False,
        "array": np.nan_to_num(high - values),
        "arrayminus": np.nan_to_num(values - low),
        "visible": bool(np.isfinite(low).any()),
    }
