"""Audit any model: a predictions CSV uploaded to Compare, checked and turned into a run-like source.

The contract is the one of a FairDx run's ``predictions.csv`` (docs/architecture.md, "Run directory"):

- ``label`` (0/1) and ``prob`` (the probability of class 1), required;
- one or more attribute columns (any other column: ``race``, ``sex``, ``age_group``, ...);
- optional ``id`` (needed to pair the upload with FairDx runs scored on the same images),
  ``split`` (``val``/``test``; only ``test`` rows are audited, ``val`` rows choose the threshold),
  ``margin`` (the certainty margin) and ``cluster`` (samples that are not independent -- images of one
  lesion, eyes of one patient -- are resampled and permuted together).

The decision threshold is chosen as for FairDx runs: Youden's J on the ``val`` rows
(``training.metrics.youden_threshold``), 0.5 without them. The degenerate-model guard
(``training.guard``) runs on the test rows, so a constant classifier is flagged here too.

A bad file gets one message naming every problem it has (:class:`UploadError`). The checked copy is
written into a folder the caller owns (the app keeps one per browser session and deletes it when the
session ends), never into the runs folders.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training import guard, metrics
from training.rundir import PREDICTIONS

MAX_BYTES = 20 * 1024 * 1024  # ~300,000 rows of a typical predictions file
METHOD = "uploaded"  # what the Method column shows for an uploaded model (it is no training method)
METHOD_TITLE = "Uploaded model"
SPLITS = ("val", "test")
LABEL_SUFFIX = " (uploaded)"

NOT_A_FILE = "the upload '{name}' could not be read: {reason}"
TOO_LARGE = (
    "the upload '{name}' is {size:.1f} MB; the limit is {limit:.0f} MB. Keep the test split's rows only, or "
    "audit it on the command line: python -m training.metrics {name} --attribute A --json"
)
NOT_CSV = "the upload '{name}' is not a readable CSV file: {reason}"
EMPTY = "the upload '{name}' has no rows"
MISSING_COLUMNS = "the upload '{name}' has no column {columns}; a predictions CSV needs 'label' (0/1) and 'prob'"
NO_ATTRIBUTES = (
    "the upload '{name}' has no attribute column: add at least one column of group labels (e.g. 'race' or "
    "'sex'); its columns: {columns}"
)
BAD_LABELS = "column 'label' must hold only 0 and 1; found {values} ({n} row(s))"
BAD_PROBS = "column 'prob' must hold probabilities in [0, 1]; found {values} ({n} row(s))"
BAD_MARGINS = "column 'margin' must hold finite numbers; {n} row(s) do not"
BAD_SPLITS = "column 'split' may hold only {choices}; found {values} ({n} row(s))"
NO_TEST_ROWS = "the upload '{name}' has a 'split' column but no 'test' rows; only test rows are audited"
DUPLICATE_IDS = "column 'id' must name each sample once; {n} id(s) repeat (e.g. {example})"
EMPTY_VALUES = "column '{column}' is empty in {n} row(s)"


class UploadError(ValueError):
    """An uploaded predictions CSV the audit cannot use; the message says what to fix."""


@dataclass(frozen=True)
class UploadedRun:
    """An uploaded model's predictions, with what the comparison engine reads of a run (``RunInfo``)."""

    run_id: str
    path: Path  # a folder holding the checked predictions.csv
    task: str
    threshold: float
    threshold_rule: str
    guard: dict[str, Any] = field(repr=False)
    n_rows: int = 0
    has_ids: bool = True

    method = METHOD
    is_demo = False

    def label(self) -> str:
        return f"{self.run_id}{LABEL_SUFFIX}"

    @property
    def degenerate(self) -> bool:
        return bool(self.guard.get("degenerate"))

    @property
    def guard_reasons(self) -> list[str]:
        return list(self.guard.get("reasons") or [])

    @functools.cached_property
    def attributes(self) -> list[str]:
        """The attribute columns of the checked file (read once: the copy never changes)."""
        header = pd.read_csv(self.path / PREDICTIONS, nrows=0).columns
        return [c for c in header if c not in metrics.RESERVED_COLUMNS]


def read_upload(path: str | Path, folder: str | Path, *, task: str, name: str | None = None) -> UploadedRun:
    """Check the CSV at `path` and write its checked copy into a new subfolder of `folder`.

    `name` is how the model is shown (default: the file's stem). Raises UploadError naming every
    problem of the file; nothing is written then.
    """
    path = Path(path)
    shown = name or path.name
    try:
        size = path.stat().st_size
    except OSError as error:
        raise UploadError(NOT_A_FILE.format(name=shown, reason=error.strerror or error)) from None
    if size > MAX_BYTES:
        raise UploadError(TOO_LARGE.format(name=shown, size=size / 1e6, limit=MAX_BYTES / 1e6))
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise UploadError(NOT_CSV.format(name=shown, reason=str(error).strip().splitlines()[0])) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    checked = check_predictions(frame, shown)
    threshold, rule = _threshold(checked)
    test = metrics.select_split(checked, "test")
    verdict = guard.check(test[metrics.LABEL].to_numpy(int), test[metrics.PROB].to_numpy(float), threshold)
    run_id = _run_id(name or path.stem, path)
    target = Path(folder) / run_id
    target.mkdir(parents=True, exist_ok=True)
    staging = target / f".{PREDICTIONS}.partial"
    checked.to_csv(staging, index=False, lineterminator="\n")
    staging.replace(target / PREDICTIONS)  # never a half-written predictions file
    return UploadedRun(
        run_id, target, task, threshold, rule, verdict, n_rows=len(test), has_ids=metrics.ID in frame.columns
    )


def check_predictions(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """The frame with numeric label/prob/margin, or UploadError listing every problem."""
    if frame.empty:
        raise UploadError(EMPTY.format(name=name))
    missing = [c for c in (metrics.LABEL, metrics.PROB) if c not in frame.columns]
    if missing:
        raise UploadError(MISSING_COLUMNS.format(name=name, columns=" or ".join(f"'{c}'" for c in missing)))
    attributes = [c for c in frame.columns if c not in metrics.RESERVED_COLUMNS]
    if not attributes:
        raise UploadError(NO_ATTRIBUTES.format(name=name, columns=", ".join(frame.columns)))
    problems = []
    label = pd.to_numeric(frame[metrics.LABEL], errors="coerce")
    bad = ~label.isin([0, 1])
    if bad.any():
        problems.append(BAD_LABELS.format(values=_examples(frame[metrics.LABEL][bad]), n=int(bad.sum())))
    prob = pd.to_numeric(frame[metrics.PROB], errors="coerce")
    bad = ~prob.between(0, 1)
    if bad.any():
        problems.append(BAD_PROBS.format(values=_examples(frame[metrics.PROB][bad]), n=int(bad.sum())))
    out = frame.copy()
    if metrics.MARGIN in frame.columns:
        margin = pd.to_numeric(frame[metrics.MARGIN], errors="coerce")
        bad = ~np.isfinite(margin.to_numpy(float))
        if bad.any():
            problems.append(BAD_MARGINS.format(n=int(bad.sum())))
        out[metrics.MARGIN] = margin
    if metrics.SPLIT in frame.columns:
        split = frame[metrics.SPLIT].str.strip().str.lower()
        bad = ~split.isin(SPLITS)
        if bad.any():
            problems.append(
                BAD_SPLITS.format(
                    choices=", ".join(SPLITS), values=_examples(frame[metrics.SPLIT][bad]), n=int(bad.sum())
                )
            )
        elif not (split == "test").any():
            problems.append(NO_TEST_ROWS.format(name=name))
        out[metrics.SPLIT] = split
    if metrics.ID in frame.columns:
        ids = frame[metrics.ID].str.strip()
        repeated = ids[ids.duplicated()]
        if len(repeated):
            problems.append(DUPLICATE_IDS.format(n=repeated.nunique(), example=repeated.iloc[0]))
    for column in [*attributes, *(c for c in (metrics.ID, metrics.CLUSTER) if c in frame.columns)]:
        empty = frame[column].str.strip() == ""
        if empty.any():
            problems.append(EMPTY_VALUES.format(column=column, n=int(empty.sum())))
    if problems:
        raise UploadError(f"the upload '{name}' cannot be audited: " + "; ".join(problems))
    out[metrics.LABEL] = label.astype(int)
    out[metrics.PROB] = prob.astype(float)
    if metrics.SPLIT not in out.columns:  # without a split column every row is a test row
        out.insert(0, metrics.SPLIT, "test")
    return out


def _threshold(frame: pd.DataFrame) -> tuple[float, str]:
    """Youden's J on the val rows, as for FairDx runs (training.metrics.evaluate_run); 0.5 without them."""
    val = frame[frame[metrics.SPLIT] == "val"]
    if val.empty or val[metrics.LABEL].nunique() < 2:
        return 0.5, "default_0.5"
    return metrics.youden_threshold(val[metrics.LABEL], val[metrics.PROB]), "youden_on_val"


def _run_id(stem: str, path: Path) -> str:
    """A readable, unique-per-content id: the file's stem, cleaned, with a short content digest."""
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:6]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.")[:40] or "model"
    return f"{readable}-{digest}"


def _examples(values: pd.Series, limit: int = 3) -> str:
    return ", ".join(repr(v) for v in sorted(set(map(str, values)))[:limit])
