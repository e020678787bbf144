"""A comparison in words: titled columns, 'value [low, high]' cells, run captions and the CSV export.

What the Compare tab's tables, its downloads, the figures' legends and the reproduction report print
about an ``inference.compare_engine.Comparison``; nothing here computes a figure.
"""

from __future__ import annotations

import io

import pandas as pd

from inference.compare_engine import UNKNOWN_CHOICE, CompareError, Comparison
from inference.uploads import METHOD as UPLOADED
from inference.uploads import METHOD_TITLE as UPLOADED_TITLE
from training import methods, metrics

GAP_TITLES = {
    "max_acc_gap": "MaxAccGap",
    "delta_tpr": "ΔTPR",
    "equalized_odds": "Equalized odds",
    "dpd": "Demographic parity diff.",
    "es_auc": "ES-AUC",
}
OVERALL_TITLES = {"accuracy": "Overall accuracy", "auc": "AUC"}  # keyed by compare_engine.OVERALL_FIGURES
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
EXPORTS = ("runs", "groups")  # what to_csv writes


def to_csv(comparison: Comparison, *, which: str = "runs") -> str:
    """The runs table (``which="runs"``) or the per-group table (``"groups"``) as CSV text.

    Floats are written at full precision, so ``pd.read_csv`` gives the same numbers back.
    """
    if which not in EXPORTS:
        raise CompareError(UNKNOWN_CHOICE.format(name="which", choices=", ".join(EXPORTS), value=which))
    frame = comparison.table if which == "runs" else comparison.groups
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def display_table(comparison: Comparison, *, digits: int = 3) -> pd.DataFrame:
    """The runs table for people: titled columns, each figure as 'value [low, high]'."""
    shown: dict[str, pd.Series | list[str]] = {}
    table = comparison.table
    for column in ("run", "flags", "method", "lambda", "w_max", "seed", "trained_on", "n"):
        values = table[column]
        if column == "method":
            values = values.map(method_title)
        shown[COLUMN_TITLES[column]] = values.map(lambda v: "" if v is None or v != v else v)
    for name in (*OVERALL_TITLES, *metrics.GAPS):
        bounds = zip(table[name], table[f"{name}_lo"], table[f"{name}_hi"], strict=True)
        shown[COLUMN_TITLES[name]] = [format_interval(v, lo, hi, digits) for v, lo, hi in bounds]
    return pd.DataFrame(shown)


def method_title(name: str | None) -> str:
    """The Method column's words: the registry's title, 'Uploaded model' for an uploaded CSV."""
    return UPLOADED_TITLE if name == UPLOADED else methods.title(name)


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
    method = method_title(row["method"])
    return f"{row['run']} · {', '.join([method, *settings])}"
