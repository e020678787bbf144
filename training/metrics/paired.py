"""Audit statistics a reviewer accepts: paired comparisons of two runs, and the noise floor of a gap.

**Paired comparison** (``paired_comparison``). Two runs scored on the same test samples (joined by
sample id) are compared on the *same* resamples: every bootstrap replicate draws one set of rows --
or of clusters, e.g. lesions, which hold 1-4 images each in HAM10000 -- and both runs' accuracy, AUC
and gaps are computed on it (``training.metrics.figures_under_weights``). The replicate differences
give a percentile interval and a two-sided bootstrap p-value, ``p = 2·min(P*(d ≤ 0), P*(d ≥ 0))``
(Efron & Tibshirani 1993, §16.4; counted as (1 + k) / (1 + B), so never 0): the variability two runs
share (which images are in the test set) cancels, so a difference can be decided where two separate
intervals merely overlap. Replicates in which a figure is undefined (a group lost its positives) are
counted in ``n_failed``, never dropped silently.

**Noise floor** (``noise_floor``). A max − min gap over groups is positive even when the groups do not
differ at all: with six groups of ~13 positives, ΔTPR from noise alone is 0.3-0.4. The floor is the
gap expected when the group labels carry no information: the group labels are permuted over the
samples (over clusters, with a cluster column, so a lesion's images stay together) and the gap is
recomputed; ``expected`` is the mean permuted gap and ``p_value`` the share of permutations with a gap
at least the observed one (ties counted one half; with the +1 correction of Phipson & Smyth 2010).
The p-value is uniform when the groups do not differ.

**Equivalence** (``equivalent``). "No accuracy cost" is decided by a stated margin, not by overlapping
intervals: two one-sided tests (Schuirmann 1987) at level α, i.e. the (1 − 2α) paired interval of the
difference lies inside ±margin. :data:`EQUIVALENCE_MARGINS`: 1 accuracy point, 0.01 AUC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from training import metrics

PAIRED_FIGURES = ("accuracy", "auc")  # overall; each attribute adds metrics.GAPS
EQUIVALENCE_MARGINS = {"accuracy": 0.01, "auc": 0.01}
DEFAULT_PERMUTATIONS = 200
HIGHER_IS_FAIRER = frozenset({"es_auc"})  # for the other gaps, larger is less fair
ID = metrics.ID

NO_SHARED_SAMPLES = "the run and the reference share no sample ids{where}; compare runs scored on the same test split"
LABELS_DIFFER = (
    "the run and the reference disagree on the label of {n} shared sample(s) (e.g. id {example}); "
    "they were not scored on the same data"
)
NO_ID_COLUMN = "{which} predictions have no 'id' column; the paired comparison joins the runs by sample id"
MISSING_CLUSTER = metrics.MISSING_CLUSTER
CLUSTER_SPANS_GROUPS = (
    "cluster column '{column}': {n} cluster(s) hold samples of several '{attribute}' groups "
    "(e.g. {example}); the permutation keeps a cluster's samples together and needs one group each"
)


def join_runs(
    run: pd.DataFrame, reference: pd.DataFrame, *, split: str | None = "test"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two runs' rows for the samples both scored (inner join on id, in one order).

    The attribute columns (and a cluster column) come from `run`; labels must agree. Returns two
    frames with the same rows in the same order, ready for :func:`paired_comparison`.
    """
    for which, frame in (("the run's", run), ("the reference's", reference)):
        if ID not in frame.columns:
            raise metrics.MetricsError(NO_ID_COLUMN.format(which=which))
    run, reference = metrics.select_split(run, split), metrics.select_split(reference, split)
    shared = pd.Index(run[ID].astype(str)).intersection(pd.Index(reference[ID].astype(str)), sort=False)
    if not len(shared):
        raise metrics.MetricsError(NO_SHARED_SAMPLES.format(where=f" in split '{split}'" if split else ""))
    a = run.assign(**{ID: run[ID].astype(str)}).drop_duplicates(ID).set_index(ID).loc[shared]
    b = reference.assign(**{ID: reference[ID].astype(str)}).drop_duplicates(ID).set_index(ID).loc[shared]
    differ = a[metrics.LABEL].to_numpy() != b[metrics.LABEL].to_numpy()
    if differ.any():
        raise metrics.MetricsError(LABELS_DIFFER.format(n=int(differ.sum()), example=shared[int(np.argmax(differ))]))
    b = a.assign(**{metrics.PROB: b[metrics.PROB].to_numpy()})
    if metrics.MARGIN in b.columns:
        b = b.drop(columns=metrics.MARGIN)
    return a.reset_index(), b.reset_index()


def resample_weights(rng: np.random.Generator, replicates: int, clusters: np.ndarray | None, n: int) -> np.ndarray:
    """(replicates × n) counts of each row: rows drawn with replacement, or whole clusters when given."""
    return metrics.resample_weights(rng, replicates, n, clusters)


def paired_comparison(
    run: pd.DataFrame,
    reference: pd.DataFrame,
    attributes: Sequence[str],
    *,
    threshold: float = 0.5,
    reference_threshold: float | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    cluster_column: str | None = None,
    level: float = 0.95,
    gap_min_n: int = metrics.GAP_MIN_N,
) -> dict[str, dict[str, dict[str, Any]]]:
    """run − reference for overall accuracy and AUC (key ``"overall"``) and every gap of every attribute.

    `run` and `reference` hold the same rows in the same order (:func:`join_runs`); each run is
    thresholded at its own operating point. Per figure: ``difference`` (on the data), ``ci`` (paired
    percentile interval at `level`), ``p_value`` (two-sided, H0: no difference), ``n_failed``.
    """
    replicates = paired_replicates(
        run,
        reference,
        attributes,
        threshold=threshold,
        reference_threshold=reference_threshold,
        bootstrap=bootstrap,
        seed=seed,
        cluster_column=cluster_column,
        gap_min_n=gap_min_n,
    )
    return {
        owner: {name: summarize(values[0], values[1:], level) for name, values in figures.items()}
        for owner, figures in replicates.items()
    }


def paired_replicates(
    run: pd.DataFrame,
    reference: pd.DataFrame,
    attributes: Sequence[str],
    *,
    threshold: float = 0.5,
    reference_threshold: float | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    cluster_column: str | None = None,
    gap_min_n: int = metrics.GAP_MIN_N,
) -> dict[str, dict[str, np.ndarray]]:
    """The differences run − reference per figure: element 0 on the data, then one per paired resample."""
    if len(run) != len(reference):
        raise metrics.MetricsError("run and reference must hold the same rows; join them with join_runs")
    clusters = _clusters(run, cluster_column)
    weights = np.vstack(
        [np.ones((1, len(run))), resample_weights(np.random.default_rng(seed), bootstrap, clusters, len(run))]
    )
    a = metrics.figures_under_weights(run, attributes, weights, threshold=threshold, gap_min_n=gap_min_n)
    b = metrics.figures_under_weights(
        reference,
        attributes,
        weights,
        threshold=threshold if reference_threshold is None else reference_threshold,
        gap_min_n=gap_min_n,
    )
    return {owner: {name: a[owner][name] - b[owner][name] for name in a[owner]} for owner in a}


def summarize(observed: float, replicates: np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """A difference on the data and its paired replicates → ``difference``, percentile ``ci`` at `level`,
    two-sided bootstrap ``p_value`` and ``n_failed`` (replicates where the figure was undefined)."""
    replicates = np.asarray(replicates, dtype=float)
    valid = replicates[~np.isnan(replicates)]
    failed = len(replicates) - len(valid)
    if observed is None or np.isnan(observed) or not len(valid):
        return {"difference": None, "ci": None, "p_value": None, "n_failed": failed}
    low, high = np.quantile(valid, [(1 - level) / 2, (1 + level) / 2])
    # never 0: a replicate count of k on the far side reads (1 + k) / (1 + B), as for permutations
    p = min(1.0, 2 * (1 + min(int((valid <= 0).sum()), int((valid >= 0).sum()))) / (1 + len(valid)))
    return {"difference": float(observed), "ci": [float(low), float(high)], "p_value": float(p), "n_failed": failed}


def equivalent(
    run: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    threshold: float = 0.5,
    reference_threshold: float | None = None,
    margins: dict[str, float] | None = None,
    alpha: float = 0.05,
    bootstrap: int = 1000,
    seed: int = 0,
    cluster_column: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Is the run's overall accuracy / AUC equivalent to the reference's within ±margin (two one-sided tests)?

    Per figure: ``margin``, the (1 − 2α) paired interval ``ci`` and ``equivalent`` (True when the
    interval lies inside ±margin; None when undefined).
    """
    margins = {**EQUIVALENCE_MARGINS, **(margins or {})}
    paired = paired_comparison(
        run,
        reference,
        [],
        threshold=threshold,
        reference_threshold=reference_threshold,
        bootstrap=bootstrap,
        seed=seed,
        cluster_column=cluster_column,
        level=1 - 2 * alpha,
    )
    result = {}
    for name, margin in margins.items():
        figure = paired["overall"][name]
        ci = figure["ci"]
        result[name] = {
            "margin": margin,
            "difference": figure["difference"],
            "ci": ci,
            "alpha": alpha,
            "equivalent": None if ci is None else bool(-margin < ci[0] and ci[1] < margin),
        }
    return result


def noise_floor(
    df: pd.DataFrame,
    attribute: str,
    *,
    threshold: float = 0.5,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    cluster_column: str | None = None,
    gap_min_n: int = metrics.GAP_MIN_N,
) -> dict[str, dict[str, Any]]:
    """Each gap of `attribute`: ``observed``, ``expected`` under permuted group labels, ``p_value``."""
    ones = np.ones((1, len(df)))
    observed = metrics.figures_under_weights(df, [attribute], ones, threshold=threshold, gap_min_n=gap_min_n)[attribute]
    rng = np.random.default_rng(seed)
    if cluster_column is None:
        orders = [rng.permutation(len(df)) for _ in range(permutations)]
    else:
        codes, _ = pd.factorize(_cluster_labels(df, cluster_column))
        first = pd.Series(np.arange(len(df))).groupby(codes).first().to_numpy()  # one row per cluster
        _check_one_group_per_cluster(
            df, codes, metrics.attribute_columns(attribute, df.columns), cluster_column, attribute
        )
        orders = [first[rng.permutation(len(first))][codes] for _ in range(permutations)]
    permuted = metrics.gaps_under_relabelling(df, attribute, orders, threshold=threshold, gap_min_n=gap_min_n)
    result = {}
    for gap, value in observed.items():
        null = permuted.get(gap, np.array([]))
        null = null[~np.isnan(null)]
        seen = float(value[0])
        if np.isnan(seen) or not len(null):
            result[gap] = {
                "observed": None if np.isnan(seen) else seen,
                "expected": None,
                "p_value": None,
                "permutations": len(null),
            }
            continue
        # es_auc is higher-is-fairer: "at least as unfair" is at most the observed value. Gaps of counts
        # tie often; a tie counts one half (mid-p), which keeps the p-value uniform under no difference.
        tied = np.isclose(null, seen, rtol=0, atol=1e-12)
        beyond = ((null < seen) if gap in HIGHER_IS_FAIRER else (null > seen)) & ~tied
        p_value = (1 + beyond.sum() + 0.5 * tied.sum()) / (1 + len(null))
        result[gap] = {
            "observed": seen,
            "expected": float(null.mean()),
            "p_value": float(min(1.0, p_value)),
            "permutations": len(null),
        }
    return result


def _clusters(df: pd.DataFrame, column: str | None) -> np.ndarray | None:
    return None if column is None else _cluster_labels(df, column)


def _cluster_labels(df: pd.DataFrame, column: str) -> np.ndarray:
    return metrics.cluster_labels(df, column)


def _check_one_group_per_cluster(
    df: pd.DataFrame, codes: np.ndarray, columns: list[str], column: str, attribute: str
) -> None:
    groups = df[columns].astype(str).agg(" & ".join, axis=1)
    spans = groups.groupby(codes).nunique()
    if (spans > 1).any():
        example = df[column].astype(str).to_numpy()[np.flatnonzero(codes == spans[spans > 1].index[0])[0]]
        raise metrics.MetricsError(
            CLUSTER_SPANS_GROUPS.format(column=column, n=int((spans > 1).sum()), attribute=attribute, example=example)
        )
