"""The runs the app offers, named by a key a visitor (or an API client) can pass back.

A run's key is its menu label from ``training.rundir.RunInfo.label``: ``fundus-fr (demo)`` for a shipped
demo run, the bare run id for the user's own, so a user run may reuse a demo's id without ambiguity.
A client never names a folder: keys are looked up among the complete runs of the app's run folders,
listed afresh on every call (a finished Studio job is offered without a restart; listing reads one
small config.json per run).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from training import methods
from training.rundir import RunInfo, list_runs

UNKNOWN_RUN = "no complete run '{key}'{task_words}; choose one of: {choices}"
NO_RUNS = "no complete runs{task_words} yet; train one in the Studio or with python -m training.train"
RUN_KEY_MISSING = "choose a run first"


def available_runs(run_dirs: Iterable[str | Path], task: str | None = None) -> list[RunInfo]:
    """Complete runs of the folders (demo runs first), optionally of one task."""
    return list_runs(*run_dirs, task=task)


def run_key(run: RunInfo) -> str:
    return run.label()


def run_title(run: RunInfo) -> str:
    """'fundus-hybrid (demo) · Hybrid, λ=0.5': the key with what sets the run apart."""
    method = run.method
    words = methods.title(method)
    if run.settings.objective.uses_lambda:
        words += f", λ={run.settings.lam:g}"
    flag = " · ⚠ degenerate" if run.degenerate else ""
    return f"{run_key(run)} · {words}{flag}"


def method_rank(run: RunInfo) -> tuple[int, int, str]:
    """Sort key: the five methods in the papers' order, demo runs before the user's, then by id."""
    method = methods.rank(run.method)
    return (0 if run.is_demo else 1, method, run.run_id)


def of_task(runs: Sequence[RunInfo], task: str) -> list[RunInfo]:
    """The task's runs, demo runs first, in the papers' method order."""
    return sorted((run for run in runs if run.task == task), key=method_rank)


def run_choices(runs: Sequence[RunInfo], task: str) -> list[tuple[str, str]]:
    """(title, key) of every run of the task, for a dropdown or a checkbox group."""
    return [(run_title(run), run_key(run)) for run in of_task(runs, task)]


def find_run(key: str | None, runs: Sequence[RunInfo], *, task: str | None = None) -> RunInfo:
    """The run with this key (or, when unambiguous, this bare run id); ValueError naming the choices."""
    if not key or not str(key).strip():
        raise ValueError(RUN_KEY_MISSING)
    key = str(key).strip()
    candidates = [run for run in runs if task is None or run.task == task]
    for run in candidates:
        if run_key(run) == key:
            return run
    same_id = [run for run in candidates if run.run_id == key]
    if len(same_id) == 1:
        return same_id[0]
    task_words = f" for task {task}" if task else ""
    if not candidates:
        raise ValueError(NO_RUNS.format(task_words=task_words))
    raise ValueError(
        UNKNOWN_RUN.format(
            key=key,
            task_words=task_words,
            choices=", ".join(run_key(run) for run in sorted(candidates, key=method_rank)),
        )
    )
