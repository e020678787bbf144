"""The degenerate-model guard: is a run's classifier worth auditing at all?

A model can look "fair" because it is useless: a classifier that answers the same for everyone has
no accuracy gap and no TPR gap. CMAC-MMD names the failure ("levelling down": every subgroup made
equally bad) and our own CMAC runs once collapsed to p = 0.498 for every image. The guard is computed
once, when a run is evaluated, from its test predictions, and stored in ``eval.json`` under
``"guard"``; the model card, Compare and Diagnose show its flags, and such a run is never a task's
default adapter. The three checks, each with the figure that decided it:

- ``near_constant``: the standard deviation of the predicted probability is below
  :data:`MIN_PROB_SD` (a collapsed model's was 0.0001);
- ``one_class``: at the run's decision threshold, fewer than :data:`MIN_CLASS_SHARE` of the test
  samples fall in one of the two predicted classes;
- ``chance_auc``: the AUC cannot be told from 0.5 -- the two-sided Mann-Whitney test of positives'
  against negatives' scores has p >= :data:`CHANCE_ALPHA` (scipy's exact/asymptotic U test; the
  AUC is U / (n_pos n_neg)).

Levelling down needs a reference run (did every group get worse than under vanilla?), so it is
judged where two runs meet: ``inference.compare_engine`` and the reproduction report (``inference.report``).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import mannwhitneyu

MIN_PROB_SD = 0.02
MIN_CLASS_SHARE = 0.01
CHANCE_ALPHA = 0.05

REASONS = {
    "near_constant": "near-constant probabilities (sd {prob_sd:.4f} < {limit})",
    "one_class": "predicts one class for {share:.1%} of the test samples",
    "chance_auc": "AUC {auc:.3f} is indistinguishable from chance (Mann-Whitney p = {p:.2g})",
}
WARNING = "This adapter is flagged as degenerate: {reasons}. Its answers and its fairness figures are not meaningful."


def check(label: np.ndarray, prob: np.ndarray, threshold: float) -> dict:
    """The guard's verdict on one run's test predictions: JSON-able, with every figure it used."""
    label = np.asarray(label, dtype=int)
    prob = np.asarray(prob, dtype=float)
    prob_sd = float(prob.std())
    positive_share = float((prob >= threshold).mean())
    majority_share = max(positive_share, 1.0 - positive_share)
    pos, neg = prob[label == 1], prob[label == 0]
    if len(pos) and len(neg):
        u = mannwhitneyu(pos, neg, alternative="two-sided")
        auc, p_value = float(u.statistic / (len(pos) * len(neg))), float(u.pvalue)
    else:
        auc, p_value = None, None
    reasons = []
    if prob_sd < MIN_PROB_SD:
        reasons.append(REASONS["near_constant"].format(prob_sd=prob_sd, limit=MIN_PROB_SD))
    if 1.0 - majority_share < MIN_CLASS_SHARE:
        reasons.append(REASONS["one_class"].format(share=majority_share))
    if p_value is not None and p_value >= CHANCE_ALPHA:
        reasons.append(REASONS["chance_auc"].format(auc=auc, p=p_value))
    return {
        "degenerate": bool(reasons),
        "reasons": reasons,
        "prob_sd": prob_sd,
        "positive_share": positive_share,
        "auc": auc,
        "auc_p_value": p_value,
        "threshold": float(threshold),
        "limits": {"min_prob_sd": MIN_PROB_SD, "min_class_share": MIN_CLASS_SHARE, "chance_alpha": CHANCE_ALPHA},
    }


def warning_text(reasons: list[str]) -> str:
    """The one-line warning shown with a degenerate run's figures or answers."""
    return WARNING.format(reasons="; ".join(reasons))
