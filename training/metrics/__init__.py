"""Fairness metrics over a predictions file: per-group figures, gaps between groups, bootstrap intervals.

Input is a ``predictions.csv`` (see docs/architecture.md, "Run directory") read into a DataFrame with columns
``label`` (0/1), ``prob`` (probability of class 1), optionally ``margin`` (certainty margin) and
``split``, and one column per demographic attribute. An attribute spec ``"a+b"`` is the
intersection of columns ``a`` and ``b``; its groups are the values joined with ``" & "``
(``"Female & 60+"``, as ``training.data.group_key`` spells them). A spec that is itself a column name is that column.

A sample is predicted positive when ``prob >= threshold``. Per group we report ``n``, ``n_pos``,
``accuracy``, ``auc``, ``tpr``, ``fpr``, ``selection_rate`` (and ``mean_margin``), and between groups:

- ``max_acc_gap``     max_s Acc_s − min_s Acc_s, MaxAccGap of Gu et al. (fair LoRA for glaucoma), Eq. 1.
- ``delta_tpr``       max_s TPR_s − min_s TPR_s, the missed-diagnosis gap ΔTPR of the CMAC-MMD paper
                      (004, "Intersectional Fairness in VLMs for Medical Image Disease Classification",
                      arXiv 2512.15249), reported there over intersectional subgroups.
- ``equalized_odds``  max(TPR gap, FPR gap), as fairlearn's ``equalized_odds_difference``.
- ``dpd``             max_s − min_s selection rate, as fairlearn's ``demographic_parity_difference``.
- ``es_auc``          AUC / (1 + Σ_s |AUC − AUC_s|), the equity-scaled AUC of Luo et al.
                      (FairCLIP / Harvard-FairVLMed, CVPR 2024); AUC is over all samples.

A group with one class only has no AUC and no TPR (no positives) or FPR (no negatives): the figure is
None, an ``UndefinedMetricWarning`` names the group and metric, and the gaps use the other groups.
A gap needs two groups that define its metric, otherwise it is None. Groups smaller than ``min_n``
are kept in the gaps and flagged ``small``; groups smaller than ``gap_min_n`` (default :data:`GAP_MIN_N` = 30)
are reported but left out of the gaps (``in_gaps`` false): a gap between a group of 2 and one of 300
measures noise, e.g. HAM10000's few lesions of unknown sex.

Bootstrap intervals resample all rows with replacement (like fairlearn's MetricFrame bootstrap, not
stratified by group), one resample set shared by every attribute, and give percentile intervals.
With a cluster column (:data:`CLUSTER`, e.g. the lesion of a HAM10000 image: 1-4 images each) whole
clusters are resampled instead, so images of one lesion count as what they are, one lesion, and
the intervals are not too narrow.
A replicate counts as failed for a gap when a group that defines the gap's metric on the data has
no defining samples in that replicate (e.g. no positives left); failed replicates are left out and
counted. Percentile intervals of a max − min gap lean upwards when the true gap is near zero.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.numbers import as_float

LABEL, PROB, MARGIN, SPLIT = "label", "prob", "margin", "split"
ID = "id"
CLUSTER = "cluster"  # optional: samples sharing it (images of one lesion, eyes of one patient) are resampled together
RESERVED_COLUMNS = (ID, SPLIT, LABEL, PROB, MARGIN, CLUSTER)  # every other column of a predictions file is an attribute
INTERSECTION = "+"  # joins attribute names in a spec, as training.data.ATTRIBUTE_JOINER
GROUP_JOINER = " & "  # joins the values in a group label, as training.data.GROUP_JOINER
GAPS = ("max_acc_gap", "delta_tpr", "equalized_odds", "dpd", "es_auc")
GROUP_METRICS = ("accuracy", "auc", "tpr", "fpr", "selection_rate")
ECE_BINS = 10
GAP_MIN_N = 30
"""The one small-group rule: a group with fewer test samples is reported (with its n) but left out of
the gaps -- the max − min of six groups of 5 measures noise, not the model."""
_CHUNK_ELEMENTS = 1 << 22  # resample weights held at once (replicates × rows), 32 MiB of float64

# Messages: module constants, asserted word for word by the tests.
MISSING_COLUMN = "predictions file has no column {names}; columns are: {columns}"
MISSING_CLUSTER = "cluster column '{column}' is not in the predictions; columns are: {columns}"
EMPTY_CLUSTER = "cluster column '{column}' is empty in {n} row(s); every sample needs its cluster (e.g. its lesion id)"
EMPTY_FRAME = "predictions file has no rows; nothing to evaluate"
NO_ROWS_FOR_SPLIT = "predictions file has no rows with split '{split}'; splits present: {present}"
UNREADABLE_FILE = "cannot read predictions file '{path}': {reason}"
LABEL_NOT_BINARY = "column 'label' must hold only 0 and 1; found {values}"
PROB_NOT_PROBABILITY = (
    "column 'prob' must hold probabilities in [0, 1]; {count} row(s) are outside [0, 1] or missing, e.g. {values}"
)
MARGIN_NOT_FINITE = "column 'margin' must hold finite numbers; {count} row(s) are missing or infinite"
ATTRIBUTE_MISSING_VALUES = (
    "attribute column '{column}' has {count} missing value(s); fill them (e.g. with 'unknown') or drop those rows"
)
BAD_ATTRIBUTE_SPEC = "attribute '{spec}' is not a column name nor column names joined by '+' (e.g. 'gender+age_group')"
BAD_ARGUMENT = "{name} must be {rule}; got {value!r}"
UNDEFINED_GROUP_METRIC = (
    "attribute '{attribute}': group '{group}' has no {missing} labels (n={n}), so its {metrics} are "
    "undefined; reported as null and left out of the gaps"
)
UNDEFINED_OVERALL_METRIC = (
    "all {n} predictions have label {label}, so the overall {metrics} are undefined; reported as null"
)
MIXED_SPLITS = (
    "predictions cover several splits ({present}) and no split was chosen; the metrics pool them "
    "(pass split=... or --split)"
)


class MetricsError(ValueError):
    """A predictions file or an argument that the metrics cannot use; the message says what to fix."""


class UndefinedMetricWarning(UserWarning):
    """A group's metric is undefined (one class only) and is left out of the gaps."""


# ---------------------------------------------------------------------------------------------------
# Public API


@dataclass(frozen=True)
class GroupReport:
    """Per-group metrics of one attribute (or intersection), in the manner of fairlearn's MetricFrame.

    ``by_group`` has one row per group (sorted by name) and columns n, n_pos, accuracy, auc, tpr, fpr,
    selection_rate, [mean_margin], ece, small, in_gaps; NaN marks an undefined figure. ``overall`` holds the same
    figures over all rows plus ``ece``. ``gaps`` maps each name in ``GAPS`` to a float or None.
    """

    attribute: str
    overall: dict
    by_group: pd.DataFrame
    gaps: dict

    def group_min(self, metric: str) -> float | None:
        return as_float(self.by_group[metric].min())

    def group_max(self, metric: str) -> float | None:
        return as_float(self.by_group[metric].max())

    def difference(self, metric: str) -> float | None:
        """max − min of ``metric`` over the groups that define it and enter the gaps (None with fewer than two)."""
        values = self.by_group[metric].to_numpy(float)[None]
        return as_float(_spread(values, ~np.isnan(values[0]) & self.by_group["in_gaps"].to_numpy())[0])

    def to_dict(self) -> dict:
        """JSON-able: {"groups": {name: {...}}, <gap>: value, ...}; undefined figures are None."""
        groups = {
            str(name): {
                key: (
                    bool(value)
                    if key in ("small", "in_gaps")
                    else int(value)
                    if key in ("n", "n_pos")
                    else as_float(value)
                )
                for key, value in row.items()
            }
            for name, row in self.by_group.iterrows()
        }
        return {"groups": groups, **self.gaps}


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read a predictions.csv keeping attribute values as written ("0", "60+", "NA" stay strings)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise MetricsError(UNREADABLE_FILE.format(path=path, reason=error)) from error


def select_split(df: pd.DataFrame, split: str | None) -> pd.DataFrame:
    """Rows of one split; with ``split=None`` all rows, warning when they pool several splits."""
    if split is None:
        if SPLIT in df.columns and df[SPLIT].nunique() > 1:
            warnings.warn(MIXED_SPLITS.format(present=", ".join(sorted(map(str, df[SPLIT].unique())))), stacklevel=2)
        return df
    if SPLIT not in df.columns:
        raise MetricsError(_missing_columns_message([SPLIT], df.columns))
    chosen = df[df[SPLIT].astype(str) == split]
    if chosen.empty:
        present = ", ".join(sorted(map(str, df[SPLIT].dropna().unique()))) or "none"
        raise MetricsError(NO_ROWS_FOR_SPLIT.format(split=split, present=present))
    return chosen


def expected_calibration_error(label, prob, *, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error of Guo et al. (2017), "On Calibration of Modern Neural Networks".

    Each sample's predicted class is the argmax of (1 − p, p), so p > 0.5 gives class 1 and a tie at
    0.5 gives class 0 (argmax takes the first); its confidence is that class's probability,
    max(p, 1 − p) ∈ [0.5, 1]. Confidences fall into ``n_bins`` equal-width bins over [0, 1], bin m
    being (m/M, (m+1)/M] (the first also holds 0), exactly as the authors' temperature_scaling code.
    ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)|. It reads the probabilities alone: the decision
    threshold used for the other metrics does not enter.
    """
    label = np.asarray(label)
    prob = np.asarray(prob, dtype=float)
    predicted = (prob > 0.5).astype(int)
    confidence = np.where(predicted == 1, prob, 1 - prob)
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    excess = np.bincount(bins, weights=(predicted == label) - confidence, minlength=n_bins)
    return float(np.abs(excess).sum() / len(prob))


def youden_threshold(label, prob) -> float:
    """The decision threshold that maximises Youden's J = TPR − FPR on these predictions.

    Meant for the validation split: the threshold is chosen there and the test split is evaluated at
    it, so no test figure is tuned on the test data. Among equally good thresholds the midpoint of
    the best run of scores is taken; with one class only (no ROC) the default 0.5 is returned.
    """
    from sklearn.metrics import roc_curve

    label = np.asarray(label, dtype=int)
    prob = np.asarray(prob, dtype=float)
    if label.min(initial=0) == label.max(initial=0) or len(label) == 0:
        return 0.5
    fpr, tpr, thresholds = roc_curve(label, prob)
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max()))
    finite = thresholds[best][np.isfinite(thresholds[best])]
    return float(np.clip(np.median(finite), 0.0, 1.0)) if len(finite) else 0.5


def group_labels(df: pd.DataFrame, spec: str) -> pd.Series:
    """Each row's group of an attribute spec: the column's value, or the values joined by GROUP_JOINER."""
    columns = attribute_columns(spec, df.columns)
    values = df[columns[0]].astype(str)
    for column in columns[1:]:
        values = values + GROUP_JOINER + df[column].astype(str)
    return values


def population_weights(df: pd.DataFrame, attribute: str, shares: Mapping[str, float]) -> np.ndarray:
    """Per row, population share / sample share of its group of ``attribute``: the importance weights
    that turn figures over an enriched test split (minorities oversampled) into figures over the
    population's group mix. Groups missing from ``shares`` get weight 0."""
    values = group_labels(df, attribute)
    sample_share = values.map(values.value_counts(normalize=True))
    total = sum(shares.values())
    population = values.map({k: v / total for k, v in shares.items()}).fillna(0.0)
    return (population / sample_share).to_numpy(float)


def group_metrics(df: pd.DataFrame, attribute: str, *, threshold: float = 0.5, min_n: int = 30) -> GroupReport:
    """Per-group metrics and gaps of one attribute spec (a column, or columns joined by "+")."""
    _check_arguments(threshold=threshold, min_n=min_n)
    preds = _Predictions.from_frame(df, [attribute], threshold)
    overall = _overall_metrics(preds, _RankIndex.build(np.arange(preds.n), preds))
    return _group_report(preds, _Partition.build(preds, attribute), overall, min_n)


def evaluate(
    df: pd.DataFrame,
    attributes: Sequence[str],
    *,
    threshold: float = 0.5,
    min_n: int = 30,
    gap_min_n: int = GAP_MIN_N,
    bootstrap: int = 0,
    seed: int = 0,
    ci: float = 0.95,
    split: str | None = None,
    population: tuple[str, Mapping[str, float]] | None = None,
    cluster_column: str | None = None,
    replicates: dict | None = None,
) -> dict:
    """The JSON-able report of a predictions frame: overall figures, then groups and gaps per attribute.

    With ``bootstrap=B > 0`` every gap (and overall accuracy and AUC) gets a ``ci`` percentile
    interval at level ``ci`` from B seeded resamples, and ``n_bootstrap_failed`` counts the
    replicates left out per gap (see the module docstring). ``population=(attribute, shares)``
    adds ``overall["reweighted"]``: the overall figures with every row weighted by
    :func:`population_weights`, i.e. as they would be on the population's mix of that attribute's
    groups (used when the test split oversamples minorities). Per-group figures need no reweighting.
    """
    if isinstance(attributes, str) or not all(isinstance(a, str) for a in attributes):
        raise MetricsError(BAD_ARGUMENT.format(name="attributes", rule="a list of attribute names", value=attributes))
    _check_arguments(threshold=threshold, min_n=min_n, bootstrap=bootstrap, seed=seed, ci=ci)
    _check_arguments(min_n=gap_min_n)
    attributes = list(dict.fromkeys(attributes))
    preds = _Predictions.from_frame(select_split(df, split), attributes, threshold)
    everyone = _RankIndex.build(np.arange(preds.n), preds)
    partitions = {spec: _Partition.build(preds, spec) for spec in attributes}
    overall = _overall_metrics(preds, everyone)
    reports = {spec: _group_report(preds, part, overall, min_n, gap_min_n) for spec, part in partitions.items()}

    overall_out: dict[str, Any] = dict(overall)
    attributes_out: dict[str, dict[str, Any]] = {spec: report.to_dict() for spec, report in reports.items()}
    result: dict[str, Any] = {
        "threshold": threshold,
        "min_n": min_n,
        "gap_min_n": gap_min_n,
        "split": split,
        "bootstrap": bootstrap,
        "seed": seed,
        "ci_level": ci,
        "cluster_column": cluster_column,
        "overall": overall_out,
        "attributes": attributes_out,
    }
    if population is not None:
        attribute, shares = population
        weights = population_weights(preds.frame, attribute, shares)
        rates = _rates(everyone.stats(weights[None, :])[:, :, None])
        overall_out["reweighted"] = {
            "attribute": attribute,
            "shares": {k: float(v) for k, v in shares.items()},
            **{m: as_float(rates[m][0, 0]) for m in ("accuracy", "auc", "tpr", "fpr", "selection_rate")},
        }
    if bootstrap:
        clusters = cluster_labels(preds.frame, cluster_column) if cluster_column else None
        intervals = _bootstrap(
            preds,
            everyone,
            partitions,
            reports,
            n_boot=bootstrap,
            seed=seed,
            level=ci,
            clusters=clusters,
            keep=replicates,
        )
        for owner, per_name in intervals.items():
            target = overall_out if owner is None else attributes_out[owner]
            target["ci"] = {name: interval for name, (interval, _) in per_name.items()}
            target["n_bootstrap_failed"] = {name: failed for name, (_, failed) in per_name.items()}
    return result


def evaluate_run(
    predictions: pd.DataFrame,
    attributes: Sequence[str],
    *,
    bootstrap: int = 0,
    seed: int = 0,
    gap_min_n: int = GAP_MIN_N,
    threshold: float | None = None,
    population: tuple[str, Mapping[str, float]] | None = None,
) -> dict:
    """A run's test report as ``eval.json`` holds it: operating point, figures, degenerate-model guard.

    The decision threshold is ``threshold`` if given, else :func:`youden_threshold` of the rows with
    split ``val`` (0.5 when there are none): chosen on validation, reported on test, so a model whose
    probabilities are shifted (common at 19 % prevalence) is not judged at an arbitrary 0.5. The
    report gains ``threshold_rule`` and ``guard`` (:func:`training.guard.check` on the test rows).
    The bootstrap resamples clusters when the predictions have a :data:`CLUSTER` column.
    """
    from training import guard

    rule = "given"
    if threshold is None:
        val = predictions[predictions[SPLIT] == "val"] if SPLIT in predictions.columns else predictions.iloc[:0]
        threshold = youden_threshold(val[LABEL], val[PROB]) if len(val) else 0.5
        rule = "youden_on_val" if len(val) else "default_0.5"
    report = evaluate(
        predictions,
        attributes,
        threshold=threshold,
        split="test",
        bootstrap=bootstrap,
        seed=seed,
        gap_min_n=gap_min_n,
        population=population,
        cluster_column=cluster_of(predictions),
    )
    test = select_split(predictions, "test")
    report["threshold_rule"] = rule
    report["guard"] = guard.check(
        pd.to_numeric(test[LABEL]).to_numpy(), pd.to_numeric(test[PROB]).to_numpy(), threshold
    )
    return report


# ---------------------------------------------------------------------------------------------------
# Validated arrays and group indices


@dataclass(frozen=True)
class _Predictions:
    frame: pd.DataFrame
    label: np.ndarray  # int 0/1
    prob: np.ndarray
    selected: np.ndarray  # bool, prob >= threshold
    margin: np.ndarray | None

    @property
    def n(self) -> int:
        return len(self.label)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, attributes: Sequence[str], threshold: float) -> _Predictions:
        """Check every column the attributes need, then every value; one error names all value problems."""
        attribute_cols = list(dict.fromkeys(c for spec in attributes for c in attribute_columns(spec, df.columns)))
        missing = [c for c in [LABEL, PROB, *attribute_cols] if c not in df.columns]
        if missing:
            raise MetricsError(_missing_columns_message(missing, df.columns))
        if df.empty:
            raise MetricsError(EMPTY_FRAME)

        problems = []
        label = pd.to_numeric(df[LABEL], errors="coerce")
        bad = ~label.isin([0, 1])
        if bad.any():
            problems.append(LABEL_NOT_BINARY.format(values=_examples(df[LABEL][bad])))
        prob = pd.to_numeric(df[PROB], errors="coerce")
        bad = ~prob.between(0, 1)
        if bad.any():
            problems.append(PROB_NOT_PROBABILITY.format(count=int(bad.sum()), values=_examples(df[PROB][bad])))
        margin = None
        if MARGIN in df.columns:
            margin = pd.to_numeric(df[MARGIN], errors="coerce").to_numpy(float)
            if not np.isfinite(margin).all():
                problems.append(MARGIN_NOT_FINITE.format(count=int((~np.isfinite(margin)).sum())))
        for column in attribute_cols:
            absent = df[column].isna() | (df[column].astype(str).str.strip() == "")
            if absent.any():
                problems.append(ATTRIBUTE_MISSING_VALUES.format(column=column, count=int(absent.sum())))
        if problems:
            raise MetricsError("; ".join(problems))

        prob_array = prob.to_numpy(float)
        return cls(df, label.to_numpy().astype(np.int64), prob_array, prob_array >= threshold, margin)


@dataclass(frozen=True)
class _RankIndex:
    """Column indices of one group, precomputed so that any resample costs only gathers and sums.

    ``stats(weights)`` takes a (B × n) matrix of how often each row appears in each resample (ones
    for the data itself) and returns, per resample, n_pos, n_neg, TP, FP and the AUC as the
    Mann–Whitney statistic: the weighted share of (positive, negative) pairs the score orders
    correctly, ties counting one half (equal to sklearn's roc_auc_score).
    """

    pos: np.ndarray  # row indices of positives
    neg: np.ndarray  # row indices of negatives, by increasing score
    pos_selected: np.ndarray  # 0/1 float per positive
    neg_selected: np.ndarray
    below: np.ndarray  # per positive: how many negatives score strictly lower
    upto: np.ndarray  # per positive: how many negatives score lower or equal

    @classmethod
    def build(cls, members: np.ndarray, preds: _Predictions) -> _RankIndex:
        pos = members[preds.label[members] == 1]
        neg = members[preds.label[members] == 0]
        neg = neg[np.argsort(preds.prob[neg], kind="stable")]
        neg_scores = preds.prob[neg]
        return cls(
            pos=pos,
            neg=neg,
            pos_selected=preds.selected[pos].astype(float),
            neg_selected=preds.selected[neg].astype(float),
            below=np.searchsorted(neg_scores, preds.prob[pos], side="left"),
            upto=np.searchsorted(neg_scores, preds.prob[pos], side="right"),
        )

    def stats(self, weights: np.ndarray) -> np.ndarray:
        w_pos = weights[:, self.pos]
        w_neg = weights[:, self.neg]
        cumulative = np.zeros((len(weights), len(self.neg) + 1))
        np.cumsum(w_neg, axis=1, out=cumulative[:, 1:])
        n_pos = w_pos.sum(axis=1)
        n_neg = cumulative[:, -1]
        tp = w_pos @ self.pos_selected
        fp = w_neg @ self.neg_selected
        # negatives below a positive plus half the tied ones = (cum[below] + cum[upto]) / 2
        pairs = 0.5 * np.einsum("bi,bi->b", w_pos, cumulative[:, self.below] + cumulative[:, self.upto])
        with np.errstate(divide="ignore", invalid="ignore"):
            auc = np.where((n_pos > 0) & (n_neg > 0), pairs / (n_pos * n_neg), np.nan)
        return np.stack([n_pos, n_neg, tp, fp, auc])


@dataclass(frozen=True)
class _Partition:
    spec: str
    names: list[str]
    codes: np.ndarray
    groups: list[_RankIndex]

    @classmethod
    def build(cls, preds: _Predictions, spec: str) -> _Partition:
        codes, names = pd.factorize(group_labels(preds.frame, spec), sort=True)
        groups = [_RankIndex.build(np.flatnonzero(codes == g), preds) for g in range(len(names))]
        return cls(spec, [str(name) for name in names], codes, groups)

    def rates(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric as a (B × groups) array."""
        return _rates(np.stack([group.stats(weights) for group in self.groups], axis=-1))


def _rates(stats: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics from stacked (n_pos, n_neg, TP, FP, AUC); NaN where a denominator is zero."""
    n_pos, n_neg, tp, fp, auc = stats
    n = n_pos + n_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "n": n,
            "n_pos": n_pos,
            "accuracy": (tp + n_neg - fp) / n,
            "auc": auc,
            "tpr": tp / n_pos,
            "fpr": fp / n_neg,
            "selection_rate": (tp + fp) / n,
        }


def _spread(values: np.ndarray, include: np.ndarray) -> np.ndarray:
    """Per row, max − min over the included columns; NaN with fewer than two or any included NaN."""
    if include.sum() < 2:
        return np.full(len(values), np.nan)
    kept = values[:, include]
    return kept.max(axis=1) - kept.min(axis=1)


def _gaps(
    rates: dict[str, np.ndarray], overall_auc: np.ndarray, include: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The five gaps per row (replicate), over the groups ``include`` marks per metric."""
    tpr_gap = _spread(rates["tpr"], include["tpr"])
    fpr_gap = _spread(rates["fpr"], include["fpr"])
    if include["auc"].any():
        spread = np.abs(overall_auc[:, None] - rates["auc"][:, include["auc"]]).sum(axis=1)
        es_auc = overall_auc / (1 + spread)
    else:
        es_auc = np.full(len(overall_auc), np.nan)
    return {
        "max_acc_gap": _spread(rates["accuracy"], include["accuracy"]),
        "delta_tpr": tpr_gap,
        "equalized_odds": np.maximum(tpr_gap, fpr_gap),
        "dpd": _spread(rates["selection_rate"], include["selection_rate"]),
        "es_auc": es_auc,
    }


def _defined(by_group: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per metric, the groups that enter the gaps: metric defined and the group not below gap_min_n."""
    in_gaps = by_group["in_gaps"].to_numpy()
    return {metric: by_group[metric].notna().to_numpy() & in_gaps for metric in GROUP_METRICS}


# ---------------------------------------------------------------------------------------------------
# Point estimates


def _overall_metrics(preds: _Predictions, everyone: _RankIndex) -> dict:
    rates = _rates(everyone.stats(np.ones((1, preds.n)))[:, :, None])
    undefined = [m for m in ("tpr", "fpr", "auc") if np.isnan(rates[m][0, 0])]
    if undefined:
        warnings.warn(
            UNDEFINED_OVERALL_METRIC.format(n=preds.n, label=int(preds.label[0]), metrics=" and ".join(undefined)),
            UndefinedMetricWarning,
            stacklevel=3,
        )
    overall: dict[str, float | None] = {"n": preds.n, "n_pos": int(preds.label.sum())}
    overall.update({m: as_float(rates[m][0, 0]) for m in GROUP_METRICS})
    overall["ece"] = expected_calibration_error(preds.label, preds.prob)
    if preds.margin is not None:
        overall["mean_margin"] = float(preds.margin.mean())
    return overall


def _group_report(preds: _Predictions, part: _Partition, overall: dict, min_n: int, gap_min_n: int = 1) -> GroupReport:
    rates = part.rates(np.ones((1, preds.n)))
    by_group = pd.DataFrame({m: rates[m][0] for m in ("n", "n_pos", *GROUP_METRICS)}, index=part.names)
    by_group[["n", "n_pos"]] = by_group[["n", "n_pos"]].astype(int)
    if preds.margin is not None:
        by_group["mean_margin"] = np.bincount(part.codes, weights=preds.margin) / by_group["n"].to_numpy()
    # calibration per group (Guo et al.'s ECE on the group's rows): a model can rank every group well and
    # still be over-confident for one of them
    by_group["ece"] = [
        expected_calibration_error(preds.label[part.codes == g], preds.prob[part.codes == g])
        for g in range(len(part.names))
    ]
    by_group["small"] = by_group["n"] < min_n
    by_group["in_gaps"] = by_group["n"] >= gap_min_n
    for name, row in by_group.iterrows():
        if row["n_pos"] in (0, row["n"]):
            missing, undefined = ("positive", "tpr and auc") if row["n_pos"] == 0 else ("negative", "fpr and auc")
            message = UNDEFINED_GROUP_METRIC.format(
                attribute=part.spec, group=name, missing=missing, n=row["n"], metrics=undefined
            )
            warnings.warn(
                message,
                UndefinedMetricWarning,
                stacklevel=3,
            )
    overall_auc = np.array([np.nan if overall["auc"] is None else overall["auc"]])
    gaps = {name: as_float(value[0]) for name, value in _gaps(rates, overall_auc, _defined(by_group)).items()}
    return GroupReport(part.spec, overall, by_group, gaps)


# ---------------------------------------------------------------------------------------------------
# Figures under given weights (for paired comparisons and permutation tests: training.paired)


def figures_under_weights(
    df: pd.DataFrame,
    attributes: Sequence[str],
    weights: np.ndarray,
    *,
    threshold: float = 0.5,
    gap_min_n: int = GAP_MIN_N,
) -> dict[str, dict[str, np.ndarray]]:
    """Overall accuracy and AUC, and each attribute's gaps, under each row of `weights`.

    weights: (R × n) how often each row of `df` counts in each of R resamples (a row of ones is the
    data itself). Returns ``{"overall": {"accuracy", "auc"}, attribute: {gap: ...}}``, each an array of
    R values (NaN where a resample leaves a figure undefined). Which groups enter a gap is decided on
    the data (defined there and at least `gap_min_n` samples), as in :func:`evaluate`, so two runs
    scored on the same rows with the same weights are compared on the same groups.
    """
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    preds = _Predictions.from_frame(df, attributes, threshold)
    if weights.shape[1] != preds.n:
        raise MetricsError(BAD_ARGUMENT.format(name="weights", rule=f"a (R × {preds.n}) matrix", value=weights.shape))
    everyone = _RankIndex.build(np.arange(preds.n), preds)
    overall = _rates(everyone.stats(weights)[:, :, None])
    result = {"overall": {"accuracy": overall["accuracy"][:, 0], "auc": overall["auc"][:, 0]}}
    ones = np.ones((1, preds.n))
    for spec in dict.fromkeys(attributes):
        part = _Partition.build(preds, spec)
        point = part.rates(ones)
        in_gaps = point["n"][0] >= gap_min_n
        include = {m: ~np.isnan(point[m][0]) & in_gaps for m in GROUP_METRICS}
        result[spec] = _gaps(part.rates(weights), overall["auc"][:, 0], include)
    return result


def gaps_under_relabelling(
    df: pd.DataFrame,
    attribute: str,
    orders: Sequence[np.ndarray],
    *,
    threshold: float = 0.5,
    gap_min_n: int = GAP_MIN_N,
) -> dict[str, np.ndarray]:
    """Each gap of `attribute` once per order: the rows' group labels taken in that order (a permutation).

    The predictions are validated and ranked once; a relabelling only changes which rows count for
    which group, so every group's figures under all relabellings come from one weighted pass over the
    ranked rows (a 0/1 membership matrix as weights), vectorised over the relabellings. The groups
    that enter the gaps are those of the data (their sizes are the same under any permutation); a
    group whose metric a relabelling leaves undefined (no positives drawn) sits that relabelling out.
    """
    preds = _Predictions.from_frame(df, [attribute], threshold)
    everyone = _RankIndex.build(np.arange(preds.n), preds)
    overall_auc = _rates(everyone.stats(np.ones((1, preds.n)))[:, :, None])["auc"][:, 0]
    data = _Partition.build(preds, attribute)
    point = data.rates(np.ones((1, preds.n)))
    in_gaps = point["n"][0] >= gap_min_n
    include = {m: ~np.isnan(point[m][0]) & in_gaps for m in GROUP_METRICS}
    if not len(orders):
        return {gap: np.array([]) for gap in GAPS}
    relabelled = data.codes[np.asarray(orders)]  # (P × n): each row's group under each relabelling
    rates = _rates(np.stack([everyone.stats((relabelled == g).astype(float)) for g in range(len(data.names))], axis=-1))
    defined = {m: include[m][None, :] & ~np.isnan(rates[m]) for m in GROUP_METRICS}
    return _gaps_per_row(rates, np.repeat(overall_auc, len(relabelled)), defined)


def _gaps_per_row(
    rates: dict[str, np.ndarray], overall_auc: np.ndarray, defined: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """:func:`_gaps` with the groups that enter chosen per row: ``defined`` holds (rows × groups) masks."""

    def spread(metric: str) -> np.ndarray:
        mask = defined[metric]
        values = rates[metric]
        high = np.where(mask, values, -np.inf).max(axis=1)
        low = np.where(mask, values, np.inf).min(axis=1)
        return np.where(mask.sum(axis=1) >= 2, high - low, np.nan)

    tpr_gap, fpr_gap = spread("tpr"), spread("fpr")
    auc_mask = defined["auc"]
    deviation = np.where(auc_mask, np.abs(overall_auc[:, None] - np.nan_to_num(rates["auc"])), 0.0).sum(axis=1)
    return {
        "max_acc_gap": spread("accuracy"),
        "delta_tpr": tpr_gap,
        "equalized_odds": np.maximum(tpr_gap, fpr_gap),
        "dpd": spread("selection_rate"),
        "es_auc": np.where(auc_mask.any(axis=1), overall_auc / (1 + deviation), np.nan),
    }


# ---------------------------------------------------------------------------------------------------
# Bootstrap


def resample_weights(
    rng: np.random.Generator, replicates: int, n: int, clusters: np.ndarray | None = None
) -> np.ndarray:
    """(replicates × n) counts of each row: n rows drawn with replacement, or, given each row's
    cluster, as many clusters as there are drawn with replacement, every row counting as often as
    its cluster was drawn (the cluster bootstrap, Davison & Hinkley 1997, §3.8)."""
    if clusters is None:
        return _counts(rng, replicates, n)
    codes, _ = pd.factorize(np.asarray(clusters))
    return _counts(rng, replicates, int(codes.max()) + 1)[:, codes]


def _counts(rng: np.random.Generator, replicates: int, k: int) -> np.ndarray:
    drawn = rng.integers(0, k, size=(replicates, k)) + (np.arange(replicates) * k)[:, None]
    return np.bincount(drawn.ravel(), minlength=replicates * k).reshape(replicates, k).astype(float)


def cluster_of(df: pd.DataFrame) -> str | None:
    """:data:`CLUSTER` when the predictions carry it, else None (rows are resampled one by one)."""
    return CLUSTER if CLUSTER in df.columns else None


def cluster_labels(df: pd.DataFrame, column: str) -> np.ndarray:
    """Each row's cluster as text (MetricsError naming the columns when `column` is missing or empty)."""
    if column not in df.columns:
        raise MetricsError(MISSING_CLUSTER.format(column=column, columns=", ".join(map(str, df.columns))))
    values = df[column]
    if values.isna().any() or (values.astype(str).str.strip() == "").any():
        raise MetricsError(
            EMPTY_CLUSTER.format(column=column, n=int((values.isna() | (values.astype(str).str.strip() == "")).sum()))
        )
    return values.astype(str).to_numpy()


def _bootstrap(
    preds: _Predictions,
    everyone: _RankIndex,
    partitions: dict[str, _Partition],
    reports: dict[str, GroupReport],
    *,
    n_boot: int,
    seed: int,
    level: float,
    clusters: np.ndarray | None = None,
    keep: dict | None = None,
) -> dict[str | None, dict[str, tuple[list[float] | None, int]]]:
    """Percentile intervals and failure counts, keyed by attribute (None for overall) then figure name.

    Vectorised over replicates: a weight matrix per chunk of replicates, gathers and BLAS sums per group.
    """
    rng = np.random.default_rng(seed)
    include = {spec: _defined(report.by_group) for spec, report in reports.items()}
    chunk = max(1, _CHUNK_ELEMENTS // preds.n)
    collected: dict[tuple[str | None, str], list[np.ndarray]] = {}
    for start in range(0, n_boot, chunk):
        weights = resample_weights(rng, min(chunk, n_boot - start), preds.n, clusters)
        overall = _rates(everyone.stats(weights)[:, :, None])
        collected.setdefault((None, "accuracy"), []).append(overall["accuracy"][:, 0])
        collected.setdefault((None, "auc"), []).append(overall["auc"][:, 0])
        for spec, part in partitions.items():
            for gap, values in _gaps(part.rates(weights), overall["auc"][:, 0], include[spec]).items():
                collected.setdefault((spec, gap), []).append(values)
    intervals: dict = {}
    for (owner, name), chunks in collected.items():
        values = np.concatenate(chunks)
        intervals.setdefault(owner, {})[name] = _percentile_interval(values, level)
        if keep is not None:
            keep.setdefault(owner, {})[name] = values
    return intervals


def _percentile_interval(values: np.ndarray, level: float) -> tuple[list[float] | None, int]:
    valid = values[~np.isnan(values)]
    failed = len(values) - len(valid)
    if not len(valid):
        return None, failed
    low, high = np.quantile(valid, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)], failed


# ---------------------------------------------------------------------------------------------------
# Small helpers


def attribute_columns(spec: str, columns) -> list[str]:
    """The columns behind an attribute spec: the column itself, else the parts of an intersection 'a+b'."""
    if spec in columns:
        return [spec]
    parts = spec.split(INTERSECTION)
    if not spec or any(not part.strip() for part in parts):
        raise MetricsError(BAD_ATTRIBUTE_SPEC.format(spec=spec))
    return parts


def _missing_columns_message(missing: Sequence[str], columns) -> str:
    return MISSING_COLUMN.format(names=", ".join(f"'{c}'" for c in missing), columns=", ".join(map(str, columns)))


def _examples(values: pd.Series, limit: int = 5) -> str:
    return ", ".join(sorted(set(map(str, values)))[:limit])


def _check_arguments(**arguments) -> None:
    rules = {
        "threshold": ("a number in [0, 1]", lambda v: 0 <= v <= 1),
        "min_n": ("a whole number >= 0", lambda v: isinstance(v, (int, np.integer)) and v >= 0),
        "bootstrap": ("a whole number >= 0", lambda v: isinstance(v, (int, np.integer)) and v >= 0),
        "seed": ("a whole number >= 0", lambda v: isinstance(v, (int, np.integer)) and v >= 0),
        "ci": ("a number strictly between 0 and 1", lambda v: 0 < v < 1),
    }
    problems = []
    for name, value in arguments.items():
        rule, ok = rules[name]
        try:
            good = not isinstance(value, bool) and bool(ok(value))
        except TypeError:
            good = False
        if not good:
            problems.append(BAD_ARGUMENT.format(name=name, rule=rule, value=value))
    if problems:
        raise MetricsError("; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# Command line


def _format(value, width: int = 7) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.3f}"


def format_report(report: dict) -> str:
    """A readable table per attribute: group, n, acc, auc, tpr, fpr, sel rate; then gaps with intervals."""
    overall = report["overall"]
    lines = [
        (
            f"overall  n={overall['n']}  acc={_format(overall['accuracy'], 0)}  auc={_format(overall['auc'], 0)}"
            f"  ece={_format(overall['ece'], 0)}  (threshold {report['threshold']}, split {report['split'] or 'all'})"
        )
    ]
    for name, interval in (overall.get("ci") or {}).items():
        if interval:
            lines.append(f"  {name:<15}{_format(overall[name])}  [{interval[0]:.3f}, {interval[1]:.3f}]")
    for spec, attr in report["attributes"].items():
        width = max(5, *(len(name) for name in attr["groups"]))
        lines += ["", f"{spec}", f"{'group':<{width}} {'n':>6} {'acc':>7} {'auc':>7} {'tpr':>7} {'fpr':>7} {'sel':>7}"]
        for name, group in attr["groups"].items():
            figures = " ".join(_format(group[m]) for m in ("accuracy", "auc", "tpr", "fpr", "selection_rate"))
            lines.append(f"{name:<{width}} {group['n']:>6} {figures}" + ("  small" if group["small"] else ""))
        for gap in GAPS:
            interval = (attr.get("ci") or {}).get(gap)
            shown = f"  [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
            lines.append(f"  {gap:<15}{_format(attr[gap])}{shown}")
    return "\n".join(lines)
