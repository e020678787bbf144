"""What the Diagnose tab shows for one image: the predicted class, how certain, and which adapter said so.

The certainty margin at inference time
    CMAC-MMD's margin is the true class's score minus the best competing class's score; it needs the
    true label, so it exists only in training and evaluation (``predictions.csv`` holds it). At
    inference there is no label, so a `Diagnosis` reports the margin of the *predicted* class:

        margin = logit[predicted] − logit[other] = |logit1 − logit0|  ≥ 0

    which is `training.losses.certainty_margin(logits, predicted)`. When the prediction is right it
    equals the paper's margin; when it is wrong the paper's margin is −margin. On CLIP the logits are
    logit_scale · cosine, so this is logit_scale × the paper's cosine margin (see `certainty_margin`).
    For two classes the softmax makes it one-to-one with the probability of the predicted class:
    probability = sigmoid(margin).

The plain-language reading
    Read from the probability of the predicted class, i.e. from its distance to the 0.5 coin flip:

        distance < 0.15  (p < 0.65,  margin < 0.62)   low certainty: borderline case
        distance < 0.35  (p < 0.85,  margin < 1.73)   moderate certainty
        otherwise        (p ≥ 0.85,  margin ≥ 1.73)   high certainty

    Within 15 points of a coin flip a model's call is as likely to flip with a small change of the
    image as not, so it is called borderline; "high" needs odds of at least 5.7 : 1. These read the
    model's own confidence: they are only as trustworthy as its calibration (eval.json reports the
    ECE of each run), and they never replace a clinician's judgement.

Demographics are never an input: a `Diagnosis` is a function of the image and the adapter only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from training.losses import certainty_margin
from training.tasks import get_task

LOW_CERTAINTY_BELOW = 0.15  # |p − 0.5| below this: borderline
HIGH_CERTAINTY_FROM = 0.35  # |p − 0.5| from this on: high certainty

READING_LOW = "low certainty: borderline case — consider a second opinion"
READING_MODERATE = "moderate certainty — read it together with the clinical findings"
READING_HIGH = "high certainty — a decision aid, not a diagnosis"
READINGS = {"low": READING_LOW, "moderate": READING_MODERATE, "high": READING_HIGH}

# Methods whose objective has a fairness weight λ (training.config: "fr, hybrid, cmac").
from training.methods import LAMBDA_METHODS as METHODS_WITH_LAMBDA  # noqa: E402


def certainty_level(probability: float) -> str:
    """'low', 'moderate' or 'high' from the predicted class's probability (its distance to 0.5)."""
    distance = abs(probability - 0.5)
    if distance < LOW_CERTAINTY_BELOW:
        return "low"
    return "moderate" if distance < HIGH_CERTAINTY_FROM else "high"


def reading(label: str, probability: float) -> str:
    """The plain-language sentence shown under the label."""
    return READINGS[certainty_level(probability)].format(label=label)


def margin_for_probability(probability: float) -> float:
    """The margin at which the predicted class has `probability` (inverse of sigmoid); for documentation and tests."""
    return math.log(probability / (1.0 - probability))


@dataclass(frozen=True)
class Diagnosis:
    """One image's result under one adapter.

    label / probability: the predicted class's name (training.tasks) and its softmax probability.
    prob_positive: P(class 1), the figure predictions.csv stores as ``prob``.
    margin: |logit1 − logit0|, the predicted class's certainty margin (module docstring).
    certainty / reading: 'low' | 'moderate' | 'high' and the sentence for it.
    run_id, method, lam: the adapter; lam is None for methods without a fairness weight (vanilla, gr).
    base_model: the backbone id the run records; task: the task name.
    in_distribution / ood_score / ood_threshold: does the image look like the adapter's training data
    (training.ood: Mahalanobis distance of its embedding, threshold set on the validation split)?
    latency_ms: wall time of the predict call that produced it (a batch shares one figure), including
    waiting for the base model and loading the adapter the first time.
    """

    label: str
    probability: float
    prob_positive: float
    margin: float
    certainty: str
    reading: str
    run_id: str
    method: str
    lam: float | None
    base_model: str
    task: str
    latency_ms: float
    in_distribution: bool | None = None  # None: the run has no out-of-distribution model (training.ood)
    ood_score: float | None = None  # Mahalanobis distance of the image's embedding to the training embeddings
    ood_threshold: float | None = None  # the 99 % quantile of the validation images' distances

    @classmethod
    def from_logits(cls, logits: Tensor, *, run_config: dict[str, Any], run_id: str, latency_ms: float) -> Diagnosis:
        """Build from one row of class logits [2] and the run's config.json."""
        logits = logits.detach().float().reshape(1, -1)
        predicted = logits.argmax(dim=1)
        probs = logits.softmax(dim=1)[0]
        index = int(predicted.item())
        task = get_task(run_config["task"])
        label = task.classes[index]
        probability = float(probs[index])
        method = run_config["method"]
        return cls(
            label=label,
            probability=probability,
            prob_positive=float(probs[1]),
            margin=float(certainty_margin(logits, predicted)[0]),
            certainty=certainty_level(probability),
            reading=reading(label, probability),
            run_id=run_id,
            method=method,
            lam=float(run_config["lam"]) if method in METHODS_WITH_LAMBDA and "lam" in run_config else None,
            base_model=run_config["backbone"],
            task=task.name,
            latency_ms=latency_ms,
        )

    def summary(self) -> str:
        """One line, e.g. "glaucoma (91%) — high certainty: glaucoma — a decision aid, not a diagnosis"."""
        return f"{self.label} ({self.probability:.0%}) — {self.reading}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = [
    "HIGH_CERTAINTY_FROM",
    "LOW_CERTAINTY_BELOW",
    "METHODS_WITH_LAMBDA",
    "READING_HIGH",
    "READING_LOW",
    "READING_MODERATE",
    "Diagnosis",
    "certainty_level",
    "margin_for_probability",
    "reading",
]
