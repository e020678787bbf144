"""Progress of a training run, read from the files it writes (docs/architecture.md "Jobs").

The trainer appends one JSON line per logged optimiser step to ``metrics.jsonl`` (first line
``{"event": "start", "total_steps": N}``, or ``"resume"`` after ``--resume``; last line
``{"event": "end"}``), and its stdout/stderr
go to a log file. Reading progress from those files, not from the worker's memory, is what lets
a page reload or an app restart lose nothing. The file is read while it is being written, so a
half-written last line (or any unreadable line) is skipped instead of raising.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.numbers import as_float

TAIL_BLOCK = 8192
DEFAULT_TAIL_LINES = 40


@dataclass(frozen=True)
class Progress:
    """What the Studio shows for one job: where it is, how fast it goes, its loss curve and log."""

    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    elapsed_s: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    finished: bool = False
    curve: list[tuple[int, float, float | None, float | None]] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)
    val_curve: list[tuple[int, float | None, float | None]] = field(default_factory=list)  # step, loss, gap
    val_attribute: str | None = None

    @property
    def fraction(self) -> float:
        """Share of optimiser steps done, in [0, 1]; 1 once the trainer logged its end event."""
        if self.finished:
            return 1.0
        if not self.total_steps:
            return 0.0
        return min(1.0, self.step / self.total_steps)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every readable JSON object in a metrics.jsonl (missing file = []; bad or partial lines skipped)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    records = []
    for line in text.split("\n"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def summarize(records: list[dict[str, Any]]) -> Progress:
    """Step, total, rate, ETA and loss curve from metrics.jsonl records (log_tail left empty).

    The ETA assumes the remaining steps run at the average rate so far (elapsed_s / step); it
    excludes the evaluation after the last step, which the trainer does not log ahead of time.
    A logged NaN stays NaN (a step whose loss diverged is still a step).
    """
    total: int | None = None
    finished = False
    steps: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    for r in records:
        if r.get("event") == "val" and isinstance(r.get("step"), int):
            val.append(r)
        elif r.get("event") in ("start", "resume") and isinstance(r.get("total_steps"), int):
            total = r["total_steps"]
        elif r.get("event") == "end":
            finished = True
        elif isinstance(r.get("step"), int) and as_float(r.get("loss"), allow_nan=True) is not None:
            steps.append(r)
    val_curve = [(r["step"], as_float(r.get("val_loss")), as_float(r.get("val_gap"))) for r in val]
    val_attribute = val[-1].get("val_gap_attribute") if val else None
    if not steps:
        return Progress(total_steps=total, finished=finished, val_curve=val_curve, val_attribute=val_attribute)
    last = steps[-1]
    total = _int(last.get("total_steps")) or total
    elapsed = as_float(last.get("elapsed_s"), allow_nan=True)
    eta = None
    if total and elapsed is not None and last["step"] > 0 and not finished:
        eta = max(0.0, (total - last["step"]) * elapsed / last["step"])
    curve = [
        (
            r["step"],
            float(r["loss"]),
            as_float(r.get("ce"), allow_nan=True),
            as_float(r.get("fairness"), allow_nan=True),
        )
        for r in steps
    ]
    return Progress(
        step=last["step"],
        total_steps=total,
        epoch=as_float(last.get("epoch"), allow_nan=True),
        elapsed_s=elapsed,
        samples_per_s=as_float(last.get("samples_per_s"), allow_nan=True),
        eta_s=0.0 if finished else eta,
        finished=finished,
        curve=curve,
        val_curve=val_curve,
        val_attribute=val_attribute,
    )


def tail_lines(path: str | Path, n: int = DEFAULT_TAIL_LINES) -> list[str]:
    """The last ``n`` lines of a log, read from its end (a long log is not read whole).

    A carriage return inside a line (a progress bar redrawn in place) keeps only what a terminal
    would show: the text after the last ``\\r``.
    """
    if n <= 0:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = pos = f.tell()
            data = b""
            while pos > 0 and data.count(b"\n") <= n:
                pos = max(0, pos - TAIL_BLOCK)
                f.seek(pos)
                data = f.read(end - pos)
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").split("\n")  # not splitlines(): it splits at \r too
    if lines[-1] == "":
        lines.pop()
    if pos > 0:
        lines = lines[1:]  # the first line may be cut
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines[-n:]]


def read_progress(
    metrics_path: str | Path, log_path: str | Path | None = None, *, tail: int = DEFAULT_TAIL_LINES
) -> Progress:
    """Progress of a run from its metrics.jsonl, plus the last ``tail`` lines of its log."""
    progress = summarize(read_metrics(metrics_path))
    if log_path is None:
        return progress
    return dataclasses.replace(progress, log_tail=tail_lines(log_path, tail))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
