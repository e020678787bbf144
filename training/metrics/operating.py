"""Operating points chosen on the validation split, reported on the test split.

A classifier's gaps depend on where it decides. ``python -m training.metrics PRED.csv --attribute A
--operating-point P`` chooses the decision threshold on the rows with split ``val`` and reports the
test rows at it, so no test figure is tuned on test data:

- ``youden``: the threshold maximising TPR − FPR (``training.metrics.youden_threshold``);
- ``sens=0.9``: the highest threshold whose validation sensitivity (TPR) is at least 0.9 (a screening
  tool that may miss at most one case in ten);
- ``spec=0.9``: the lowest threshold whose validation specificity (1 − FPR) is at least 0.9;
- ``equal-tpr`` (or ``equal-tpr=0.85``): one threshold per group of `attribute`, each the highest
  whose validation TPR in that group reaches the target (default: the overall validation TPR at the
  Youden threshold), so every group's missed-diagnosis rate is the same on validation. Unlike
  fairlearn's ThresholdOptimizer, which randomises between two thresholds per group, these thresholds
  are deterministic: the same image always gets the same answer. The price is reported: each group's
  specificity at its threshold, and the overall specificity against the single Youden threshold's.

The test figures come twice: on the test rows as they are (``test``) and weighted to the validation
split's mix of `attribute`'s groups (``test_at_val_mix``). A test split that oversamples minorities
(FairDx's enriched benchmark; many audits) is harder than the population the point was chosen on, so
``sens=0.9`` holds at the val mix but not necessarily on the enriched rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from training import metrics

KINDS = ("youden", "sens", "spec", "equal-tpr")
BAD_POINT = (
    "operating point must be one of youden, sens=<0..1>, spec=<0..1>, equal-tpr or equal-tpr=<0..1> "
    "(e.g. sens=0.9); got {value!r}"
)
NO_VALIDATION = (
    "the operating point is chosen on the validation split, but the predictions have no rows with split 'val' "
    "of both labels; add them, or fix a threshold with --threshold"
)
NO_POSITIVES_IN_GROUP = "group '{group}' has no positive validation samples, so no threshold gives it a TPR"


@dataclass(frozen=True)
class OperatingPoint:
    kind: str
    target: float | None = None

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}={self.target:g}"


def parse(text: str) -> OperatingPoint:
    """'youden', 'sens=0.9', 'spec=0.95', 'equal-tpr', 'equal-tpr=0.85' (MetricsError otherwise)."""
    match = re.fullmatch(r"\s*(youden|sens|spec|equal-tpr)\s*(?:=\s*([0-9.]+)\s*)?", str(text))
    if not match:
        raise metrics.MetricsError(BAD_POINT.format(value=text))
    kind, value = match.group(1), match.group(2)
    needs_target = kind in ("sens", "spec")
    if (needs_target and value is None) or (kind == "youden" and value is not None):
        raise metrics.MetricsError(BAD_POINT.format(value=text))
    try:
        target = None if value is None else float(value)
    except ValueError:
        raise metrics.MetricsError(BAD_POINT.format(value=text)) from None
    if target is not None and not 0 < target <= 1:
        raise metrics.MetricsError(BAD_POINT.format(value=text))
    return OperatingPoint(kind, target)


def sensitivity_threshold(label, prob, target: float) -> float:
    """The highest threshold t with TPR(prob >= t) >= target: the k-th largest positive score."""
    positives = np.sort(np.asarray(prob, dtype=float)[np.asarray(label) == 1])[::-1]
    if not len(positives):
        raise metrics.MetricsError(NO_VALIDATION)
    k = int(np.ceil(target * len(positives) - 1e-9))
    return float(positives[max(k, 1) - 1])


def specificity_threshold(label, prob, target: float) -> float:
    """The lowest threshold t with TNR(prob < t) >= target: just above the k-th smallest negative score."""
    negatives = np.sort(np.asarray(prob, dtype=float)[np.asarray(label) == 0])
    if not len(negatives):
        raise metrics.MetricsError(NO_VALIDATION)
    k = int(np.ceil(target * len(negatives) - 1e-9))
    return float(np.nextafter(negatives[max(k, 1) - 1], np.inf))


def choose(val: pd.DataFrame, point: OperatingPoint, attribute: str | None = None) -> dict[str, Any]:
    """The threshold (or, for equal-tpr, one per group of `attribute`) chosen on validation rows."""
    label = pd.to_numeric(val[metrics.LABEL]).to_numpy(int)
    prob = pd.to_numeric(val[metrics.PROB]).to_numpy(float)
    if len(label) == 0 or label.min() == label.max():
        raise metrics.MetricsError(NO_VALIDATION)
    if point.kind == "youden":
        return {"threshold": metrics.youden_threshold(label, prob)}
    if point.kind == "sens":
        return {"threshold": sensitivity_threshold(label, prob, float(point.target or 0))}
    if point.kind == "spec":
        return {"threshold": specificity_threshold(label, prob, float(point.target or 0))}
    if attribute is None:
        raise metrics.MetricsError("equal-tpr needs an attribute whose groups get their own thresholds")
    youden = metrics.youden_threshold(label, prob)
    target = point.target if point.target is not None else float((prob[label == 1] >= youden).mean())
    groups = metrics.group_labels(val, attribute).to_numpy()
    thresholds = {}
    for group in sorted(set(groups)):
        mine = groups == group
        if not (label[mine] == 1).any():
            raise metrics.MetricsError(NO_POSITIVES_IN_GROUP.format(group=group))
        thresholds[str(group)] = sensitivity_threshold(label[mine], prob[mine], target)
    return {"thresholds": thresholds, "target_tpr": target, "youden_threshold": youden}


def at_operating_point(df: pd.DataFrame, attribute: str, point: OperatingPoint) -> dict[str, Any]:
    """Choose on the val rows, report the test rows: overall and per-group TPR, FPR, specificity, accuracy."""
    if metrics.SPLIT not in df.columns:
        raise metrics.MetricsError(NO_VALIDATION)
    val, test = metrics.select_split(df, "val"), metrics.select_split(df, "test")
    chosen = choose(val, point, attribute)
    groups = metrics.group_labels(test, attribute).to_numpy().astype(str)
    prob = pd.to_numeric(test[metrics.PROB]).to_numpy(float)
    label = pd.to_numeric(test[metrics.LABEL]).to_numpy(int)
    if "thresholds" in chosen:
        # a group the validation split never saw has no threshold of its own: it gets the Youden one
        per_row = np.array([chosen["thresholds"].get(g, chosen["youden_threshold"]) for g in groups])
    else:
        per_row = np.full(len(prob), chosen["threshold"])
    predicted = prob >= per_row
    val_mix = {str(group): float(count) for group, count in metrics.group_labels(val, attribute).value_counts().items()}
    weights = metrics.population_weights(test, attribute, val_mix)
    result: dict[str, Any] = {
        "operating_point": str(point),
        "chosen_on": "val",
        **chosen,
        "test": _rates(label, predicted),
        # an enriched test split (minorities oversampled, as FairDx's benchmark and many audits do) is not
        # the population the point was chosen on; weighting each group to its val share undoes that
        "test_at_val_mix": _rates(label, predicted, weights),
        "groups": {},
    }
    for group in sorted(set(groups)):
        mine = groups == group
        result["groups"][group] = {
            "threshold": float(per_row[mine][0]),
            **_rates(label[mine], predicted[mine]),
        }
    tprs = [g["tpr"] for g in result["groups"].values() if g["tpr"] is not None and g["n"] >= metrics.GAP_MIN_N]
    result["test"]["delta_tpr"] = float(max(tprs) - min(tprs)) if len(tprs) >= 2 else None
    if "thresholds" in chosen:
        youden = prob >= chosen["youden_threshold"]
        result["youden_test"] = _rates(label, youden)  # the single threshold's figures: the cost of equal TPR
    return result


def _rates(label: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None) -> dict[str, Any]:
    """TPR, FPR, specificity and accuracy (weighted by `weights` when given: importance weights)."""
    w = np.ones(len(label)) if weights is None else np.asarray(weights, dtype=float)
    positives, negatives = label == 1, label == 0

    def share(mask: np.ndarray, of: np.ndarray) -> float | None:
        total = float(w[of].sum())
        return float(w[of & mask].sum() / total) if total > 0 else None

    tpr, fpr = share(predicted, positives), share(predicted, negatives)
    return {
        "n": len(label),
        "n_pos": int(positives.sum()),
        "tpr": tpr,
        "fpr": fpr,
        "specificity": None if fpr is None else 1 - fpr,
        "accuracy": share(predicted == positives, np.ones(len(label), dtype=bool)),
    }
