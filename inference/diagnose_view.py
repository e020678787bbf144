"""The Diagnose tab without Gradio: which adapters a task offers, and what a diagnosis shows.

app.py wires these to the components; every value shown is computed here and tested without a
browser. Demographics are never asked for: a diagnosis is a function of the image and the adapter.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from inference import saliency
from inference.catalog import find_run, of_task, run_choices, run_key
from inference.diagnosis import Diagnosis
from inference.images import describe_image
from training import guard, methods
from training.rundir import DEMO_RUNS_DIR, RunInfo
from training.tasks import TASKS, get_task

EXAMPLES_DIR = DEMO_RUNS_DIR.parent / "examples"
TASK_CHOICES = (("Glaucoma (fundus photograph)", "fundus"), ("Skin lesion (dermoscopy)", "skin"))

NOTICE = (
    "**Research demo — not a medical device.** The models here are tiny and trained on synthetic images; "
    "a result is not a diagnosis and must not inform care. No demographic information is asked for or used."
)
OUT_OF_DISTRIBUTION = (
    "> ⚠️ **This image does not look like this adapter's training data** (out-of-distribution score {score:.1f}; "
    "99 % of its validation images score below {threshold:.1f}). Is it the right task and kind of image? "
    "The answer below is not meaningful for it."
)
MARGIN_SCALE = (
    "*The margin is the predicted class's logit minus the other's, on the log-odds scale: 0 is a coin flip, "
    "0.62 means 65 % for the predicted class, 1.73 means 85 %, 2.94 means 95 %. It reads the model's own "
    "confidence, only as trustworthy as its calibration (see Compare's calibration per group).*"
)
NO_IMAGE = "Upload an image (or pick an example below) first."
WRONG_TASK = "adapter '{key}' was trained for task {run_task}, not {task}; pick one of the {task} adapters"
UNKNOWN_TASK = "task must be one of: {choices} (got {task!r})"


def check_task(task: str | None) -> str:
    if task not in TASKS:
        raise ValueError(UNKNOWN_TASK.format(choices=", ".join(TASKS), task=task))
    return task


def adapter_choices(runs: Sequence[RunInfo], task: str) -> list[tuple[str, str]]:
    """(title, key) of every complete run of the task: demo runs first, in the papers' method order. The
    title carries what a clinician weighs before trusting the adapter: its test AUC and its worst-off
    group's accuracy ('… · AUC 0.73, worst group 43%'), and a degenerate run's flag."""
    by_key = {run_key(run): run for run in runs}
    return [(f"{title}{_trust(by_key[key])}", key) for title, key in run_choices(runs, task)]


def _trust(run: RunInfo) -> str:
    auc = (run.evaluation.get("overall") or {}).get("auc")
    worst = validated_figures(run)["worst_group_accuracy"]
    parts = [f"AUC {auc:.2f}" if auc is not None else None, f"worst group {worst:.0%}" if worst is not None else None]
    shown = ", ".join(p for p in parts if p)
    return f" · {shown}" if shown else ""


def default_adapter(runs: Sequence[RunInfo], task: str) -> str | None:
    """The demo run of the method the task's paper proposes, else the first choice (None: no runs).

    A run the degenerate-model guard flagged (training.guard) is never the default: a visitor's first
    answer must not come from a constant classifier. It stays in the list, with its flag in the title.
    """
    candidates = [r for r in of_task(runs, task) if not r.degenerate]
    preferred = [r for r in candidates if r.is_demo and r.method == _proposed(task)]
    chosen = preferred or candidates
    return run_key(chosen[0]) if chosen else None


def _proposed(task: str) -> str | None:
    """The method the task's paper proposes (training.tasks), the adapter a visitor gets first."""
    return TASKS[task].proposed_method if task in TASKS else None


def keep_or_default(runs: Sequence[RunInfo], task: str, current: str | None) -> str | None:
    """After a refresh, keep the visitor's adapter if it is still offered for the task."""
    keys = [key for _, key in adapter_choices(runs, task)]
    return current if current in keys else default_adapter(runs, task)


def adapter_for(key: str | None, task: str, runs: Sequence[RunInfo]) -> RunInfo:
    """The run behind an adapter key; ValueError when it is unknown or of another task."""
    check_task(task)
    run = find_run(key, runs)
    if run.task != task:
        raise ValueError(WRONG_TASK.format(key=key, run_task=run.task, task=task))
    return run


def check_image(image: Image.Image | None) -> Image.Image:
    if image is None:
        raise ValueError(NO_IMAGE)
    return image


@dataclass(frozen=True)
class DiagnosisView:
    """What the tab shows: confidences for gr.Label, a Markdown summary, and the whole record (API)."""

    confidences: dict[str, float]
    summary: str
    details: dict[str, Any]


def show(diagnosis: Diagnosis, run: RunInfo, image: Image.Image) -> DiagnosisView:
    classes = get_task(diagnosis.task).classes
    confidences = {classes[0]: 1.0 - diagnosis.prob_positive, classes[1]: diagnosis.prob_positive}
    method = methods.title(diagnosis.method)
    lam = "" if diagnosis.lam is None else f", λ = {diagnosis.lam:g}"
    warning = [f"> ⚠️ {guard.warning_text(run.guard_reasons)}", ""] if run.degenerate else []
    if diagnosis.in_distribution is False:
        warning += [OUT_OF_DISTRIBUTION.format(score=diagnosis.ood_score, threshold=diagnosis.ood_threshold), ""]
    truth = example_truth(image)
    known = [f"**Bundled example** — its true label is **{truth}** (a synthetic image).", ""] if truth else []
    summary = "\n".join(
        [
            *warning,
            *known,
            f"**Certainty margin {diagnosis.margin:.2f}** — {diagnosis.reading}.  ",
            MARGIN_SCALE,
            "",
            f"**Adapter** `{run_key(run)}` ({method}{lam}) on base model `{diagnosis.base_model}`  ",
            f"**Latency** {diagnosis.latency_ms:.0f} ms · image {describe_image(image)}",
        ]
    )
    details = {
        **diagnosis.as_dict(),
        "true_label": truth,
        "adapter": run_key(run),
        "image": describe_image(image),
        "degenerate": run.degenerate,
        "guard_reasons": run.guard_reasons,
    }
    return DiagnosisView(confidences, summary, details)


def explanation(attribution: saliency.Attribution, run: RunInfo) -> tuple[Image.Image, str]:
    """The saliency overlay (inference.saliency) and its caption, naming the method and the adapter."""
    return attribution.overlay(), f"*{attribution.caption()} Adapter `{run_key(run)}`.*"


ALL_COLUMNS = [
    "Adapter",
    "Answer (argmax)",
    "P(positive)",
    "Certainty margin",
    "At its validated threshold",
    "Test sensitivity",
    "Test specificity",
    "Worst-group accuracy",
    "Like its training data?",
    "Flags",
]
ALL_COLUMN_WIDTHS = ["16%", "8%", "6%", "10%", "12%", "7%", "7%", "15%", "13%", "6%"]  # fits a laptop screen
NO_ADAPTERS = "no complete runs of task {task} to diagnose with; train one in the Studio"


def validated_figures(run: RunInfo) -> dict[str, Any]:
    """A run's own test figures from its eval.json, at the threshold it chose on validation: sensitivity
    (TPR), specificity (1 − FPR) and the worst-off group's accuracy on the attribute it was trained on
    (the groups that enter its gaps); None where eval.json lacks them."""
    report = run.evaluation
    overall = report.get("overall") or {}
    tpr, fpr = overall.get("tpr"), overall.get("fpr")
    attribute = run.settings.fairness_attribute or run.settings.attribute
    groups = ((report.get("attributes") or {}).get(attribute) or {}).get("groups") or {}
    accuracies = {
        g: f["accuracy"] for g, f in groups.items() if f.get("in_gaps", True) and f.get("accuracy") is not None
    }
    worst = min(accuracies, key=accuracies.__getitem__) if accuracies else None
    return {
        "threshold": run.threshold,
        "sensitivity": tpr,
        "specificity": None if fpr is None else 1 - fpr,
        "worst_group": worst,
        "worst_group_accuracy": accuracies.get(worst) if worst else None,
        "attribute": attribute,
    }


def task_adapters(runs: Sequence[RunInfo], task: str) -> list[RunInfo]:
    """Every complete run of the task, in the adapter list's order (ValueError when there is none)."""
    check_task(task)
    chosen = list(of_task(runs, task))
    if not chosen:
        raise ValueError(NO_ADAPTERS.format(task=task))
    return chosen


def all_adapters_table(results: Sequence[tuple[Diagnosis, RunInfo]]) -> pd.DataFrame:
    """One row per adapter of the task: its answer for this image, and how far its answers can be trusted
    (its own validated test sensitivity, specificity and worst-group accuracy), so one sees which
    objective changes the decision. The answer is given twice: the argmax (as Diagnose reports it) and
    at the run's validated threshold, the operating point its test figures are measured at."""
    rows = []
    for diagnosis, run in results:
        figures = validated_figures(run)
        classes = get_task(diagnosis.task).classes
        at_threshold = classes[int(diagnosis.prob_positive >= figures["threshold"])]
        worst = figures["worst_group_accuracy"]
        rows.append(
            {
                "Adapter": f"{run_key(run)} · {methods.title(run.method)}",
                "Answer (argmax)": diagnosis.label,
                "P(positive)": f"{diagnosis.prob_positive:.3f}",
                "Certainty margin": f"{diagnosis.margin:.2f} ({diagnosis.certainty})",
                "At its validated threshold": f"{at_threshold} (t = {figures['threshold']:.3f})",
                "Test sensitivity": _percent(figures["sensitivity"]),
                "Test specificity": _percent(figures["specificity"]),
                "Worst-group accuracy": (
                    f"{_percent(worst)} ({figures['worst_group']}, {figures['attribute']})"
                    if worst is not None
                    else "–"
                ),
                "Like its training data?": _likeness(diagnosis),
                "Flags": "⚠ degenerate" if run.degenerate else "",
            }
        )
    return pd.DataFrame(rows, columns=ALL_COLUMNS)


def agreement(results: Sequence[tuple[Diagnosis, RunInfo]]) -> str:
    """'4 of 5 adapters call it glaucoma at their validated thresholds (flagged runs left out).'"""
    trusted = [(d, r) for d, r in results if not r.degenerate]
    if not trusted:
        return "No unflagged adapter to compare."
    classes = get_task(trusted[0][0].task).classes
    calls = [classes[int(d.prob_positive >= r.threshold)] for d, r in trusted]
    top = max(set(calls), key=calls.count)
    left_out = len(results) - len(trusted)
    note = f" ({left_out} flagged run{'s' if left_out != 1 else ''} left out)" if left_out else ""
    return f"**{calls.count(top)} of {len(calls)} adapters call it {top}** at their validated thresholds{note}."


def _likeness(diagnosis: Diagnosis) -> str:
    if diagnosis.in_distribution is None:
        return "– (no out-of-distribution model)"
    verdict = "yes" if diagnosis.in_distribution else "⚠ no"
    return f"{verdict} ({diagnosis.ood_score:.1f} vs {diagnosis.ood_threshold:.1f})"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


@functools.cache
def _example_digests(folder: Path = EXAMPLES_DIR) -> dict[str, str]:
    """Pixel digest → true label of each bundled example (file names say it: fundus-positive-1.png)."""
    digests = {}
    for path in sorted(folder.glob("*.png")):
        task, _, rest = path.stem.partition("-")
        if task not in TASKS:
            continue
        classes = get_task(task).classes
        truth = rest.partition("-")[0]
        if truth in ("positive", "negative"):
            with Image.open(path) as image:
                digests[_digest(image)] = classes[1] if truth == "positive" else classes[0]
    return digests


def _digest(image: Image.Image) -> str:
    rgb = image.convert("RGB")
    return hashlib.sha1(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()


def example_truth(image: Image.Image | None) -> str | None:
    """The true label when the image is one of the bundled (synthetic) examples, else None."""
    return None if image is None else _example_digests().get(_digest(image))


def example_rows(folder: Path = EXAMPLES_DIR) -> tuple[list[list[str]], list[str]]:
    """Bundled example images as gr.Examples rows [image path, task] with a label for each.

    File names say the task and the (synthetic) ground truth: fundus-positive-1.png is a glaucoma case.
    """
    rows, labels = [], []
    for path in sorted(folder.glob("*.png")):
        task, _, rest = path.stem.partition("-")
        if task not in TASKS:
            continue
        truth, _, number = rest.partition("-")
        classes = get_task(task).classes
        truth_label = classes[1] if truth == "positive" else classes[0] if truth == "negative" else truth
        rows.append([str(path), task])
        labels.append(f"{task} · {truth_label} {number}".strip())
    return rows, labels
