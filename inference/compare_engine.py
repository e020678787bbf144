"""The comparison engine behind the Compare tab and the reproduction report: several runs on one attribute.

Every figure comes from each run's ``predictions.csv`` through ``training.metrics.evaluate`` (the
one implementation of the metrics; nothing is recomputed here except what evaluate does not give).
Every frame names a run by ``RunInfo.label()`` (its id, with " (demo)" for a shipped demo), so a
user's run with a demo's id stays apart from the demo.

- ``Comparison.table``  one row per run: method, λ, w_max, the sweep it was queued with (a Studio grid
  sweep; the frontier draws a sweep's runs as one trace), overall accuracy and AUC, and every gap
  of ``training.metrics.GAPS`` (MaxAccGap of Gu et al. Eq. 1, ΔTPR of CMAC-MMD, equalized odds,
  demographic parity, ES-AUC), each with its bootstrap percentile interval (``<name>_lo/_hi``).
- ``Comparison.groups`` long format, one row per (run, group): n, n_pos, accuracy with a Wilson
  score interval, TPR, FPR, AUC, mean margin. evaluate's bootstrap gives intervals for the gaps
  only, so a group's accuracy interval is the Wilson interval of ``correct`` out of ``n`` at the same
  level (a binomial interval that stays inside [0, 1] and behaves at small n, unlike the normal one).
- ``Comparison.margins`` every sample with its group, label, probability and certainty margin, for
  CMAC-MMD's certainty distributions (margin < 0 means misclassified; NaN when a run has no margins)
  and the per-group calibration and ROC curves.

``attribute`` is a column or an intersection ``"a+b"`` (groups ``"A & B"``, as the loaders spell them).
A run whose predictions cannot give the attribute (column missing, no rows for the split, a bad
file) is skipped with a note instead of failing the whole comparison. A run picked twice is shown once.

Results are cached per run under (run path, predictions.csv mtime_ns and size, attribute, split,
bootstrap, seed), and whole comparisons under the tuple of their runs' keys, so refreshing the tab
is instant and a rewritten predictions file is picked up. Both caches are ``functools.lru_cache``s;
the cached objects are shared, so treat a returned ``Comparison`` (and its frames) as read-only.

Uncached runs are evaluated in a thread pool, one thread per core: most of evaluate's time is numpy
array work (fancy-index gathers, cumulative sums, BLAS products) that runs without the GIL, so runs
can overlap; bench/compare_speed.py measures the effect against a single thread.

The figures are drawn by ``inference.compare_figures``, the tables exported by ``inference.compare_export``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import math
import os
import threading
import warnings
from collections import Counter
from collections.abc import Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from inference.uploads import METHOD as UPLOADED_METHOD
from inference.uploads import UploadedRun
from training import guard, methods, metrics
from training.metrics import paired
from training.rundir import PREDICTIONS, RunInfo

Source = RunInfo | UploadedRun  # a FairDx run, or an uploaded model's predictions (inference.uploads)

try:  # installed with scikit-learn; without it BLAS keeps its own thread count
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

CI_LEVEL = 0.95
NOISE_PERMUTATIONS = 200  # relabellings per run for each gap's noise floor (p-values down to 1/201)
RUN_CACHE_SIZE = 512
COMPARISON_CACHE_SIZE = 32
SPLITS = ("val", "test")
MAX_WORKERS: int | None = None  # threads for uncached runs; None = one per CPU core (bench/ sets 1 to compare)
OVERALL_FIGURES = ("accuracy", "auc")  # the overall figures of a row, beside the gaps of metrics.GAPS
DEGENERATE_FLAG = "degenerate"  # shown in the Flags column and beside the run's point on the frontier

# Messages: module constants, asserted word for word by the tests.
NO_RUNS = "no runs selected; pick at least one run to compare"
BAD_ATTRIBUTE = "attribute must be a column name or names joined by '+' (e.g. 'sex+age_group'); got {value!r}"
BAD_SPLIT = "split must be one of {choices}; got {value!r}"
BAD_NUMBER = "{name} must be a whole number >= 0; got {value!r}"
UNKNOWN_CHOICE = "{name} must be one of {choices}; got {value!r}"
MISSING_ATTRIBUTE = (
    "run '{run}' skipped: its predictions have no column {columns} for attribute '{attribute}' "
    "(its attribute columns: {available})"
)
UNUSABLE_RUN = "run '{run}' skipped: {reason}"
PICKED_TWICE = "run '{run}' was selected more than once; it is shown once"
UNDEFINED_GROUPS = "run '{run}', {attribute}: {what} ({groups}), so {metrics} leave them out"
SMALL_GROUPS = (
    "run '{run}', {attribute}: groups with fewer than {min_n} test samples are shown but left out of the gaps "
    "(their figures are noise, not the model): {groups}"
)
NO_NOISE_FLOOR = "run '{run}', {attribute}: no noise floor ({reason})"
NO_MARGINS = "run '{run}' has no margin column; its certainty distribution is not shown"
ONE_CLASS = (
    "run '{run}' predicts class {label} for every {split} sample, so its TPR and FPR are the same in every group "
    "and its ΔTPR and equalized odds are 0 by construction, not by fairness"
)

_BASE_COLUMNS = set(metrics.RESERVED_COLUMNS)


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
    replicates: dict | None = field(default=None, repr=False)  # metrics.evaluate's bootstrap replicates
    alignment: str | None = None  # digest of the evaluated rows (ids, labels, clusters): equal = same resamples
    source: Source | None = field(default=None, repr=False, compare=False)


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
    results: dict[str, RunResult] = field(default_factory=dict, repr=False)  # run (its label) -> its result
    permutations: int = NOISE_PERMUTATIONS

    @property
    def empty(self) -> bool:
        return self.table.empty


# ---------------------------------------------------------------------------------------------------
# Comparing


@dataclass(frozen=True)
class _Job:
    """A run to evaluate, equal to (and hashed as) its cache key; the run itself rides along."""

    key: Hashable
    run: Source = field(compare=False)


@dataclass(frozen=True)
class _Arguments:
    attribute: str
    split: str
    bootstrap: int
    seed: int
    permutations: int


def compare_runs(
    runs: Sequence[Source],
    attribute: str,
    *,
    split: str = "test",
    bootstrap: int = 1000,
    seed: int = 0,
    permutations: int = NOISE_PERMUTATIONS,
) -> Comparison:
    """Evaluate each run's predictions on ``attribute`` and put them side by side.

    Each gap gets its bootstrap interval and, with ``permutations > 0``, its noise floor
    (``training.metrics.paired.noise_floor``: the gap expected when the groups do not differ, and the
    p-value of the observed one). Raises CompareError for arguments no run could use (no runs, a bad
    attribute, split or count); a problem with one run's predictions only skips that run, with a
    note. A run given twice (the same folder and predictions) is evaluated and shown once, with a note.
    """
    _check_arguments(runs, attribute, split, bootstrap, seed, permutations)
    arguments = _Arguments(attribute.strip(), split, bootstrap, seed, permutations)
    picked = [_Job(_run_key(run, arguments), run) for run in runs]
    jobs = tuple(dict.fromkeys(picked))  # the first of each, in the order picked
    comparison = _compare_jobs(jobs, arguments)
    if len(jobs) == len(picked):
        return comparison
    twice = [job.run.label() for job, count in Counter(picked).items() if count > 1]
    return dataclasses.replace(comparison, notes=(*(PICKED_TWICE.format(run=r) for r in twice), *comparison.notes))


def _check_arguments(runs, attribute, split, bootstrap, seed, permutations) -> None:
    problems = []
    if not runs:
        problems.append(NO_RUNS)
    parts = attribute.split(metrics.INTERSECTION) if isinstance(attribute, str) else [""]
    if any(not part.strip() for part in parts):
        problems.append(BAD_ATTRIBUTE.format(value=attribute))
    if split not in SPLITS:
        problems.append(BAD_SPLIT.format(choices=", ".join(SPLITS), value=split))
    for name, value in (("bootstrap", bootstrap), ("seed", seed), ("permutations", permutations)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            problems.append(BAD_NUMBER.format(name=name, value=value))
    if problems:
        raise CompareError("; ".join(problems))


def _run_key(run: Source, arguments: _Arguments) -> Hashable:
    """Identity of one evaluation: a rewritten predictions file (new mtime or size) is a new key."""
    path = Path(run.path).resolve()
    try:
        status = (path / PREDICTIONS).stat()
        stamp: tuple = (status.st_mtime_ns, status.st_size)
    except OSError:
        stamp = (None, None)
    return (str(path), *stamp, run.label(), run.threshold, arguments)


_COMPUTE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=COMPARISON_CACHE_SIZE)
def _compare_jobs(jobs: tuple[_Job, ...], arguments: _Arguments) -> Comparison:
    """The comparison of distinct runs; cached under their keys (which hold the arguments too)."""
    # One computation at a time: two at once would only share the same cores, the process-wide
    # settings in _evaluate_all stay consistent, and a caller that waited finds the runs cached.
    with _COMPUTE_LOCK:
        results = _evaluate_all(jobs, arguments)
    return _assemble(results, arguments)


@functools.lru_cache(maxsize=RUN_CACHE_SIZE)
def _evaluate_job(job: _Job, arguments: _Arguments) -> RunResult:
    """evaluate_run, cached under the job's key."""
    a = arguments
    return evaluate_run(
        job.run, a.attribute, split=a.split, bootstrap=a.bootstrap, seed=a.seed, permutations=a.permutations
    )


def one_blas_thread():
    """BLAS limited to one thread while the pool runs: one thread per run per core.

    OpenBLAS's own threads (one per core by default) spin while they wait, so on top of a thread
    per core they oversubscribe the machine and burn a core for nothing. Measured on 2 idle cores
    (bench/compare_speed.py, 20 runs × 2,000 predictions × 1,000 resamples, median wall time):
    2 pool threads + 1 BLAS thread 0.97 s; 2 + 2 BLAS threads 1.4-2.6 s; 1 + 1 BLAS thread 1.60 s;
    evaluate alone with 2 BLAS threads 1.60 s wall for 3.2 s of CPU.
    """
    return threadpool_limits(limits=1, user_api="blas") if threadpool_limits else contextlib.nullcontext()


def _evaluate_all(jobs: Sequence[_Job], arguments: _Arguments) -> list[RunResult]:
    """A RunResult per job, in order: from the run cache, or computed (several runs in parallel).

    UndefinedMetricWarning is silenced for the duration (its content becomes per-run notes built
    from the report instead). warnings filters and BLAS threads are process-wide, hence one setting
    around the whole pool (under _COMPUTE_LOCK) rather than one per worker thread.
    """
    with warnings.catch_warnings(), one_blas_thread():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        workers = min(len(jobs), MAX_WORKERS or os.cpu_count() or 1)
        if workers == 1:
            return [_evaluate_job(job, arguments) for job in jobs]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compare") as pool:
            return list(pool.map(lambda job: _evaluate_job(job, arguments), jobs))


def gap_min_n(run: Source) -> int:
    """The run's small-group rule (groups below it are left out of the gaps): the one it was evaluated
    with (``eval_gap_min_n`` of its config), the project default for an uploaded model."""
    return run.settings.eval_gap_min_n if isinstance(run, RunInfo) else metrics.GAP_MIN_N


def evaluate_run(
    run: Source,
    attribute: str,
    *,
    split: str,
    bootstrap: int,
    seed: int,
    permutations: int = NOISE_PERMUTATIONS,
) -> RunResult:
    """One run's row, groups and margins; never raises for a problem in the run's files."""
    try:
        frame = metrics.read_predictions(Path(run.path) / PREDICTIONS)
        columns = metrics.attribute_columns(attribute, frame.columns)
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
        replicates: dict = {}
        small = gap_min_n(run)
        report = metrics.evaluate(
            frame,
            [attribute],
            threshold=run.threshold,
            min_n=small,
            gap_min_n=small,
            bootstrap=bootstrap,
            seed=seed,
            ci=CI_LEVEL,
            split=split,
            cluster_column=metrics.cluster_of(frame),
            replicates=replicates,
        )
    except metrics.MetricsError as error:
        return _skipped(run, UNUSABLE_RUN.format(run=run.label(), reason=error))
    floor, floor_note = _noise_floor(run, frame, attribute, permutations, seed)
    flags = run_flags(run, report)
    row = {**run_description(run), "flags": "; ".join(flags) or None, **_figures(report, attribute), **floor}
    groups = _group_frame(run, report["attributes"][attribute])
    margins = _margin_frame(run, frame, columns)
    notes = _group_notes(run.label(), attribute, groups, small)
    if run.degenerate:
        notes = (f"{run.label()}: {guard.warning_text(run.guard_reasons)}", *notes)
    if report["overall"]["selection_rate"] in (0.0, 1.0):
        label = int(report["overall"]["selection_rate"])
        notes = (ONE_CLASS.format(run=run.label(), label=label, split=split), *notes)
    if floor_note:
        notes += (floor_note,)
    if metrics.MARGIN not in frame.columns:
        notes += (NO_MARGINS.format(run=run.label()),)
    return RunResult(run.label(), row, groups, margins, report, notes, None, replicates, _alignment(frame), run)


ONE_CLASS_FLAG = "one class"
UNRELIABLE_FLAGS = (DEGENERATE_FLAG, ONE_CLASS_FLAG)  # a run with one of these is no point on the frontier


def unreliable(flags: str | None) -> bool:
    """Does a row's Flags cell say its figures are not meaningful (degenerate, or one class)?"""
    return isinstance(flags, str) and any(flag in flags.split("; ") for flag in UNRELIABLE_FLAGS)


def run_flags(run: Source, report: dict) -> list[str]:
    """What a reader must know before trusting any of a run's figures, in the words the tables show (groups
    left out by the small-group rule are marked where the groups are shown, not here)."""
    flags = []
    if run.degenerate:
        flags.append(DEGENERATE_FLAG)
    if report["overall"]["selection_rate"] in (0.0, 1.0):
        flags.append(ONE_CLASS_FLAG)
    return flags


def _noise_floor(run: Source, frame: pd.DataFrame, attribute: str, permutations: int, seed: int):
    """Row columns ``<gap>_floor`` (gap expected under permuted group labels) and ``<gap>_floor_p``."""
    empty = {f"{gap}_floor{suffix}": None for gap in metrics.GAPS for suffix in ("", "_p")}
    if not permutations:
        return empty, None
    try:
        floors = paired.noise_floor(
            frame,
            attribute,
            threshold=run.threshold,
            permutations=permutations,
            seed=seed,
            cluster_column=metrics.cluster_of(frame),
            gap_min_n=gap_min_n(run),
        )
    except metrics.MetricsError as error:
        return empty, NO_NOISE_FLOOR.format(run=run.label(), attribute=attribute, reason=error)
    for gap, figures in floors.items():
        empty[f"{gap}_floor"] = figures["expected"]
        empty[f"{gap}_floor_p"] = figures["p_value"]
    return empty, None


def _alignment(frame: pd.DataFrame) -> str:
    """A digest of what the bootstrap resamples (ids, labels, clusters, in order): two runs with the same
    digest, bootstrap count and seed were resampled identically, so their replicates pair up."""
    columns = [c for c in (metrics.ID, metrics.LABEL, metrics.CLUSTER) if c in frame.columns]
    hashed = pd.util.hash_pandas_object(frame[columns].astype(str), index=False).to_numpy()
    return hashlib.sha1(hashed.tobytes()).hexdigest() if metrics.ID in frame.columns else ""


def _skipped(run: Source, message: str) -> RunResult:
    return RunResult(run.label(), {}, pd.DataFrame(), pd.DataFrame(), None, (message,), message, source=run)


# ---------------------------------------------------------------------------------------------------
# One run's rows


def run_description(run: Source) -> dict[str, Any]:
    """The config side of a table row; λ and w_max only for the methods that use them, and the
    attribute only when training used it (vanilla uses it only for group-balanced batches). An
    uploaded model has no training settings."""
    if isinstance(run, UploadedRun):
        return {
            "run": run.label(),
            "label": run.label(),
            "task": run.task,
            "method": UPLOADED_METHOD,
            "lambda": None,
            "w_max": None,
            "seed": None,
            "sweep": None,
            "trained_on": None,
        }
    cfg, objective = run.settings, run.settings.objective
    untrained = objective is methods.BASELINE and not cfg.balanced_sampling
    return {
        "run": run.label(),
        "label": run.label(),
        "task": run.task,
        "method": run.method,
        "lambda": cfg.lam if objective.uses_lambda else None,
        "w_max": cfg.w_max if objective.uses_w_max else None,
        "seed": cfg.seed,
        "sweep": cfg.sweep,
        "trained_on": None if untrained else cfg.fairness_attribute,
    }


def _figures(report: dict, attribute: str) -> dict[str, Any]:
    overall = report["overall"]
    gaps = report["attributes"][attribute]
    row: dict[str, Any] = {"n": overall["n"]}
    for name in OVERALL_FIGURES:
        row.update(_with_interval(name, overall[name], overall.get("ci", {}).get(name)))
    for name in metrics.GAPS:
        row.update(_with_interval(name, gaps[name], gaps.get("ci", {}).get(name)))
    return row


def _with_interval(name: str, value, interval) -> dict[str, Any]:
    low, high = interval or (None, None)
    return {name: value, f"{name}_lo": low, f"{name}_hi": high}


LEFT_OUT_REASON = "left out of the gaps: n < {min_n} (the small-group rule, gap_min_n)"


def _group_frame(run: Source, attribute_report: dict) -> pd.DataFrame:
    rows = []
    min_n = gap_min_n(run)
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
                "ece": figures.get("ece"),
                "small": not figures["in_gaps"],  # the one small-group rule: shown, left out of the gaps
                "unreliable": run.degenerate,  # a degenerate model's group AUCs are noise around 0.5
                "excluded": None if figures["in_gaps"] else LEFT_OUT_REASON.format(min_n=min_n),
            }
        )
    return pd.DataFrame(rows)


def _margin_frame(run: Source, frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per sample: its group, label, probability and certainty margin (NaN when the run has none)."""
    group = frame[columns[0]].astype(str)
    for column in columns[1:]:
        group = group + metrics.GROUP_JOINER + frame[column].astype(str)
    margin = (
        pd.to_numeric(frame[metrics.MARGIN]).to_numpy(float)
        if metrics.MARGIN in frame.columns
        else np.full(len(frame), np.nan)
    )
    return pd.DataFrame(
        {
            "run": run.label(),
            "method": run.method,
            "group": group.to_numpy(),
            "label": pd.to_numeric(frame[metrics.LABEL]).to_numpy(int),
            "prob": pd.to_numeric(frame[metrics.PROB]).to_numpy(float),
            "margin": margin,
        }
    )


def _group_notes(run_id: str, attribute: str, groups: pd.DataFrame, min_n: int) -> tuple[str, ...]:
    notes = []
    for column, what, gap_metrics in (
        ("tpr", "groups without positive labels", "TPR, AUC, ΔTPR and equalized odds"),
        ("fpr", "groups without negative labels", "FPR, AUC and equalized odds"),
    ):
        undefined = groups.loc[groups[column].isna(), "group"].tolist()
        if undefined:
            notes.append(
                UNDEFINED_GROUPS.format(
                    run=run_id, attribute=attribute, what=what, groups=", ".join(undefined), metrics=gap_metrics
                )
            )
    small = groups[groups["small"]]
    if not small.empty:
        listed = ", ".join(f"{g} (n={n})" for g, n in zip(small["group"], small["n"], strict=True))
        notes.append(SMALL_GROUPS.format(run=run_id, attribute=attribute, min_n=min_n, groups=listed))
    return tuple(notes)


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


# ---------------------------------------------------------------------------------------------------
# The runs together


GROUP_COLUMNS = [
    "run",
    "method",
    "group",
    "n",
    "n_pos",
    "accuracy",
    "accuracy_lo",
    "accuracy_hi",
    "tpr",
    "fpr",
    "auc",
    "mean_margin",
    "ece",
    "small",
    "unreliable",
    "excluded",
]
MARGIN_COLUMNS = ["run", "method", "group", "label", "prob", "margin"]


def table_columns() -> list[str]:
    """Column order of ``Comparison.table``."""
    figures = [f"{name}{suffix}" for name in (*OVERALL_FIGURES, *metrics.GAPS) for suffix in ("", "_lo", "_hi")]
    floors = [f"{gap}_floor{suffix}" for gap in metrics.GAPS for suffix in ("", "_p")]
    return [
        *("run", "label", "task", "method", "lambda", "w_max", "seed", "sweep", "trained_on", "n", "flags"),
        *figures,
        *floors,
    ]


def _assemble(results: list[RunResult], arguments: _Arguments) -> Comparison:
    usable = [r for r in results if r.error is None]
    notes = tuple(dict.fromkeys(note for r in results for note in r.notes))
    table = pd.DataFrame([r.row for r in usable], columns=table_columns())
    groups = _concat([r.groups for r in usable], GROUP_COLUMNS)
    margins = _concat([r.margins for r in usable], MARGIN_COLUMNS)
    reports = {}
    for r in usable:
        if r.report is None:  # evaluate_run sets exactly one of report and error
            raise RuntimeError(f"run {r.run} has neither a report nor an error")
        reports[r.run] = r.report
    return Comparison(
        attribute=arguments.attribute,
        split=arguments.split,
        bootstrap=arguments.bootstrap,
        seed=arguments.seed,
        table=table,
        groups=groups,
        margins=margins,
        reports=reports,
        notes=notes,
        skipped=tuple(r.run for r in results if r.error is not None),
        results={r.run: r for r in usable},
        permutations=arguments.permutations,
    )


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


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


def cache_info() -> CacheInfo:
    """Hits, misses and sizes of the two caches since the last clear_cache()."""
    runs, comparisons = _evaluate_job.cache_info(), _compare_jobs.cache_info()
    return CacheInfo(runs.hits, runs.misses, runs.currsize, comparisons.hits, comparisons.misses, comparisons.currsize)


def clear_cache() -> None:
    """Forget every cached result and the counts (the benchmark times the uncached path this way)."""
    _evaluate_job.cache_clear()
    _compare_jobs.cache_clear()
