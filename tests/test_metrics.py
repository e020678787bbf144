"""training.metrics: every figure checked against sklearn on each group's mask and against fairlearn."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, roc_auc_score

from tests.conftest import exactly
from training import metrics
from training.metrics import MetricsError, UndefinedMetricWarning, evaluate, group_metrics
from training.metrics.__main__ import main as metrics_main

REPO = Path(__file__).resolve().parents[1]
ATTRIBUTES = ["race", "gender", "gender+age_group"]


def make_predictions(seed: int, n: int = 600) -> pd.DataFrame:
    """Groups of unequal size, prevalence and difficulty; probabilities rounded so ties occur."""
    rng = np.random.default_rng(seed)
    race = rng.choice(["Asian", "Black", "White"], n, p=[0.15, 0.25, 0.6])
    gender = rng.choice(["Female", "Male"], n, p=[0.45, 0.55])
    age = rng.choice(["<40", "40-60", "60+"], n)
    prevalence = np.select([race == "Black", race == "Asian"], [0.6, 0.3], 0.45)
    label = (rng.random(n) < prevalence).astype(int)
    noise = np.select([race == "Black", gender == "Female"], [0.35, 0.25], 0.2)
    prob = np.clip(0.5 + 0.25 * (2 * label - 1) + rng.normal(0, noise), 0, 1).round(2)
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "split": "test",
            "label": label,
            "prob": prob,
            "margin": rng.normal(0.2, 1.0, n),
            "race": race,
            "gender": gender,
            "age_group": age,
        }
    )


def group_values(df: pd.DataFrame, spec: str) -> pd.Series:
    columns = spec.split("+")
    return df[columns].astype(str).agg(" & ".join, axis=1)


# ---------------------------------------------------------------------------------------------------
# Point figures


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("attribute", ATTRIBUTES)
@pytest.mark.parametrize("threshold", [0.5, 0.37])
def test_each_group_matches_sklearn_on_its_mask(seed, attribute, threshold):
    df = make_predictions(seed)
    report = group_metrics(df, attribute, threshold=threshold)
    values = group_values(df, attribute)
    assert list(report.by_group.index) == sorted(values.unique())
    for name, row in report.by_group.iterrows():
        mask = (values == name).to_numpy()
        y, prob = df["label"].to_numpy()[mask], df["prob"].to_numpy()[mask]
        pred = (prob >= threshold).astype(int)
        assert row["n"] == mask.sum() and row["n_pos"] == y.sum()
        assert row["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert row["auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
        assert row["tpr"] == pytest.approx(pred[y == 1].mean(), abs=1e-12)
        assert row["fpr"] == pytest.approx(pred[y == 0].mean(), abs=1e-12)
        assert row["selection_rate"] == pytest.approx(pred.mean(), abs=1e-12)
        assert row["mean_margin"] == pytest.approx(df["margin"].to_numpy()[mask].mean(), abs=1e-12)
    y, prob = df["label"].to_numpy(), df["prob"].to_numpy()
    assert report.overall["auc"] == pytest.approx(roc_auc_score(y, prob), abs=1e-12)
    assert report.overall["accuracy"] == pytest.approx(accuracy_score(y, prob >= threshold), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_groups_and_gaps_match_fairlearn(seed, attribute):
    df = make_predictions(seed)
    y, prob = df["label"], df["prob"]
    pred = (prob >= 0.5).astype(int)
    sensitive = df[attribute.split("+")]
    frame = MetricFrame(
        metrics={
            "accuracy": accuracy_score,
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            "selection_rate": selection_rate,
        },
        y_true=y,
        y_pred=pred,
        sensitive_features=sensitive,
    )
    auc_frame = MetricFrame(metrics=roc_auc_score, y_true=y, y_pred=prob, sensitive_features=sensitive)
    report = group_metrics(df, attribute)

    def by_name(series):
        return {" & ".join(map(str, k)) if isinstance(k, tuple) else str(k): v for k, v in series.items()}

    for metric in ["accuracy", "tpr", "fpr", "selection_rate"]:
        expected = by_name(frame.by_group[metric])
        assert report.by_group[metric].to_dict() == pytest.approx(expected, abs=1e-9)
        assert report.difference(metric) == pytest.approx(frame.difference(method="between_groups")[metric], abs=1e-9)
        assert report.group_min(metric) == pytest.approx(frame.group_min()[metric], abs=1e-9)
        assert report.group_max(metric) == pytest.approx(frame.group_max()[metric], abs=1e-9)
    assert report.by_group["auc"].to_dict() == pytest.approx(by_name(auc_frame.by_group), abs=1e-9)

    gaps = report.gaps
    assert gaps["max_acc_gap"] == pytest.approx(frame.difference()["accuracy"], abs=1e-9)
    assert gaps["delta_tpr"] == pytest.approx(frame.difference()["tpr"], abs=1e-9)
    assert gaps["equalized_odds"] == pytest.approx(
        equalized_odds_difference(y, pred, sensitive_features=sensitive), abs=1e-9
    )
    assert gaps["dpd"] == pytest.approx(demographic_parity_difference(y, pred, sensitive_features=sensitive), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_es_auc_is_auc_over_one_plus_summed_group_deviation(seed, attribute):
    df = make_predictions(seed)
    values = group_values(df, attribute)
    overall = roc_auc_score(df["label"], df["prob"])
    deviation = sum(
        abs(overall - roc_auc_score(df["label"][values == g], df["prob"][values == g])) for g in values.unique()
    )
    assert group_metrics(df, attribute).gaps["es_auc"] == pytest.approx(overall / (1 + deviation), abs=1e-12)


def reference_ece(label, prob, n_bins=10):
    """Guo et al.'s temperature_scaling loop (ECE over the argmax class), in numpy."""
    probabilities = np.stack([1 - prob, prob], axis=1)
    confidences, predictions = probabilities.max(axis=1), probabilities.argmax(axis=1)
    accuracies = predictions == label
    ece = 0.0
    boundaries = np.linspace(0, 1, n_bins + 1)
    for lower, upper in itertools.pairwise(boundaries):
        in_bin = (confidences > lower) & (confidences <= upper)
        if in_bin.mean() > 0:
            ece += abs(confidences[in_bin].mean() - accuracies[in_bin].mean()) * in_bin.mean()
    return ece


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_loop_reference(seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, 500)
    # continuous values, values on the bin edges, and ties at 0.5
    prob = np.concatenate([rng.random(400), [0.0, 1.0, 0.5, 0.5, 0.3, 0.7, 0.6, 0.4, 0.9, 0.1] * 10])
    assert metrics.expected_calibration_error(label, prob) == pytest.approx(reference_ece(label, prob), abs=1e-12)
    df = pd.DataFrame({"label": label, "prob": prob, "g": "a"})
    assert evaluate(df, ["g"])["overall"]["ece"] == pytest.approx(reference_ece(label, prob), abs=1e-12)


def test_each_group_has_its_own_ece():
    rng = np.random.default_rng(4)
    label = rng.integers(0, 2, 600)
    group = np.repeat(["calibrated", "overconfident"], 300)
    prob = np.where(group == "calibrated", rng.random(600), np.where(label == 1, 0.99, 0.01))
    df = pd.DataFrame({"label": label, "prob": prob, "g": group})
    groups = evaluate(df, ["g"])["attributes"]["g"]["groups"]
    for name in ("calibrated", "overconfident"):
        mine = group == name
        assert groups[name]["ece"] == pytest.approx(reference_ece(label[mine], prob[mine]), abs=1e-12)


def test_ece_of_perfectly_calibrated_bins_is_zero_and_of_overconfidence_is_the_gap():
    prob = np.array([0.8] * 10)
    assert metrics.expected_calibration_error(np.array([1] * 8 + [0] * 2), prob) == pytest.approx(0.0)
    assert metrics.expected_calibration_error(np.array([1] * 5 + [0] * 5), prob) == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------------
# Undefined figures, small groups


def test_group_with_one_class_gets_null_warning_and_is_left_out_of_gaps():
    df = make_predictions(0)
    df.loc[df["race"] == "Asian", "label"] = 0
    n_asian = int((df["race"] == "Asian").sum())
    with pytest.warns(UndefinedMetricWarning) as caught:
        report = evaluate(df, ["race"])
    expected = metrics.UNDEFINED_GROUP_METRIC.format(
        attribute="race", group="Asian", missing="positive", n=n_asian, metrics="tpr and auc"
    )
    assert [str(w.message) for w in caught] == [expected]
    assert expected == (
        f"attribute 'race': group 'Asian' has no positive labels (n={n_asian}), so its tpr and auc are "
        "undefined; reported as null and left out of the gaps"
    )
    race = report["attributes"]["race"]
    assert race["groups"]["Asian"]["tpr"] is None and race["groups"]["Asian"]["auc"] is None
    assert race["groups"]["Asian"]["fpr"] is not None
    others = [race["groups"][g] for g in ("Black", "White")]
    assert race["delta_tpr"] == pytest.approx(abs(others[0]["tpr"] - others[1]["tpr"]), abs=1e-12)
    fprs = [g["fpr"] for g in race["groups"].values()]
    tpr_gap = abs(others[0]["tpr"] - others[1]["tpr"])
    assert race["equalized_odds"] == pytest.approx(max(tpr_gap, max(fprs) - min(fprs)), abs=1e-12)
    overall = report["overall"]["auc"]
    expected_es = overall / (1 + sum(abs(overall - g["auc"]) for g in others))
    assert race["es_auc"] == pytest.approx(expected_es, abs=1e-12)
    json.dumps(report, allow_nan=False)


def test_gap_needs_two_groups_that_define_it():
    df = make_predictions(1)
    df.loc[df["gender"] == "Female", "label"] = 1
    with pytest.warns(UndefinedMetricWarning, match="group 'Female' has no negative labels"):
        report = group_metrics(df, "gender")
    assert report.gaps["equalized_odds"] is None  # the FPR gap has one group only
    assert report.difference("fpr") is None
    assert report.gaps["delta_tpr"] is not None and report.gaps["max_acc_gap"] is not None


def test_overall_with_one_class_warns_and_es_auc_is_null():
    df = pd.DataFrame({"label": [0] * 6, "prob": [0.1, 0.2, 0.6, 0.3, 0.4, 0.7], "g": list("aabbcc")})
    with pytest.warns(UndefinedMetricWarning) as caught:
        report = evaluate(df, ["g"], bootstrap=20)
    messages = [str(w.message) for w in caught]
    assert metrics.UNDEFINED_OVERALL_METRIC.format(n=6, label=0, metrics="tpr and auc") in messages
    assert report["overall"]["auc"] is None and report["attributes"]["g"]["es_auc"] is None
    assert report["attributes"]["g"]["ci"]["es_auc"] is None
    assert report["attributes"]["g"]["n_bootstrap_failed"]["es_auc"] == 20


def test_groups_below_min_n_are_flagged_small():
    df = make_predictions(2, n=300)
    report = evaluate(df, ["race"], min_n=60)
    sizes = df["race"].value_counts()
    for name, group in report["attributes"]["race"]["groups"].items():
        assert group["small"] is bool(sizes[name] < 60)
    assert any(g["small"] for g in report["attributes"]["race"]["groups"].values())
    assert not any(g["small"] for g in evaluate(df, ["race"], min_n=0)["attributes"]["race"]["groups"].values())


def test_literal_column_with_plus_in_its_name_is_one_attribute():
    df = make_predictions(0).rename(columns={"race": "race+eth"})
    assert set(group_metrics(df, "race+eth").by_group.index) == {"Asian", "Black", "White"}


# ---------------------------------------------------------------------------------------------------
# Bootstrap


def test_resampled_auc_and_counts_match_sklearn_on_the_resampled_rows():
    df = make_predictions(3, n=300)
    preds = metrics._Predictions.from_frame(df, ["race"], 0.5)
    weights = metrics.resample_weights(np.random.default_rng(7), 5, preds.n)
    assert (weights.sum(axis=1) == preds.n).all()
    rates = metrics._Partition.build(preds, "race").rates(weights)
    names = sorted(df["race"].unique())
    for b in range(len(weights)):
        rows = np.repeat(np.arange(preds.n), weights[b].astype(int))
        resampled = df.iloc[rows]
        for g, name in enumerate(names):
            group = resampled[resampled["race"] == name]
            pred = group["prob"] >= 0.5
            assert rates["auc"][b, g] == pytest.approx(roc_auc_score(group["label"], group["prob"]), abs=1e-12)
            assert rates["accuracy"][b, g] == pytest.approx(accuracy_score(group["label"], pred), abs=1e-12)
            assert rates["tpr"][b, g] == pytest.approx(pred[group["label"] == 1].mean(), abs=1e-12)
            assert rates["fpr"][b, g] == pytest.approx(pred[group["label"] == 0].mean(), abs=1e-12)


def test_bootstrap_is_deterministic_for_a_seed():
    df = make_predictions(4)
    first = evaluate(df, ["race", "gender+age_group"], bootstrap=200, seed=3)
    assert first == evaluate(df, ["race", "gender+age_group"], bootstrap=200, seed=3)
    other = evaluate(df, ["race", "gender+age_group"], bootstrap=200, seed=4)
    assert other["attributes"]["race"]["ci"] != first["attributes"]["race"]["ci"]


def test_bootstrap_interval_contains_point_estimate_and_every_gap_has_one():
    df = make_predictions(0, n=2000)
    report = evaluate(df, ["race", "gender+age_group"], bootstrap=500)
    for attr in ("race", "gender+age_group"):
        entry = report["attributes"][attr]
        assert set(entry["ci"]) == set(metrics.GAPS)
        assert entry["n_bootstrap_failed"] == dict.fromkeys(metrics.GAPS, 0)
    race = report["attributes"]["race"]  # groups differ by design, so the gaps are far from zero
    for gap in metrics.GAPS:
        low, high = race["ci"][gap]
        assert low <= race[gap] <= high
    for name in ("accuracy", "auc"):
        low, high = report["overall"]["ci"][name]
        assert low <= report["overall"][name] <= high


def test_bootstrap_interval_narrows_with_more_samples():
    def width(n, gap):
        low, high = evaluate(make_predictions(6, n=n), ["race"], bootstrap=300)["attributes"]["race"]["ci"][gap]
        return high - low

    for gap in ["max_acc_gap", "delta_tpr", "es_auc"]:
        assert width(4000, gap) < 0.7 * width(500, gap)


def test_bootstrap_counts_replicates_where_a_group_loses_its_positives():
    df = make_predictions(5, n=400)
    asian = np.flatnonzero(df["race"] == "Asian")
    df.loc[asian, "label"] = 0
    df.loc[asian[0], "label"] = 1  # one positive: about a third of resamples lose it
    report = evaluate(df, ["race"], bootstrap=300)
    failed = report["attributes"]["race"]["n_bootstrap_failed"]
    assert 40 < failed["delta_tpr"] < 200
    assert failed["max_acc_gap"] == 0 and failed["dpd"] == 0
    assert failed["equalized_odds"] == failed["delta_tpr"]
    assert report["attributes"]["race"]["ci"]["delta_tpr"] is not None


def test_no_bootstrap_means_no_interval():
    report = evaluate(make_predictions(0), ["race"])
    assert report["bootstrap"] == 0
    assert "ci" not in report["attributes"]["race"] and "ci" not in report["overall"]
    assert "n_bootstrap_failed" not in report["attributes"]["race"]


def test_bootstrap_in_several_chunks_gives_a_full_set(monkeypatch):
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 600 * 7)  # 7 replicates a chunk
    report = evaluate(make_predictions(0), ["race"], bootstrap=50)
    assert report["attributes"]["race"]["n_bootstrap_failed"]["max_acc_gap"] == 0
    low, high = report["attributes"]["race"]["ci"]["max_acc_gap"]
    assert 0 <= low < high


# ---------------------------------------------------------------------------------------------------
# Errors


def test_missing_column_names_it_and_lists_columns():
    df = make_predictions(0)[["label", "prob", "gender"]]
    with pytest.raises(MetricsError) as error:
        evaluate(df, ["race"])
    assert str(error.value) == "predictions file has no column 'race'; columns are: label, prob, gender"
    assert str(error.value) == metrics.MISSING_COLUMN.format(names="'race'", columns="label, prob, gender")
    with pytest.raises(MetricsError, match="no column 'age_group'"):
        group_metrics(df, "gender+age_group")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"label": [0, 1, 2, "yes"]}, metrics.LABEL_NOT_BINARY.format(values="2, yes")),
        ({"prob": [0.1, 1.5, -0.2, 0.4]}, metrics.PROB_NOT_PROBABILITY.format(count=2, values="-0.2, 1.5")),
        ({"prob": [0.1, np.nan, 0.3, 0.4]}, metrics.PROB_NOT_PROBABILITY.format(count=1, values="nan")),
        ({"margin": [0.1, np.inf, 0.3, np.nan]}, metrics.MARGIN_NOT_FINITE.format(count=2)),
        ({"race": ["a", None, "b", ""]}, metrics.ATTRIBUTE_MISSING_VALUES.format(column="race", count=2)),
    ],
)
def test_bad_values_are_named(change, message):
    df = pd.DataFrame({"label": [0, 1, 0, 1], "prob": [0.1, 0.9, 0.3, 0.4], "race": list("abab")})
    df = df.assign(**change)
    with pytest.raises(MetricsError) as error:
        evaluate(df, ["race"])
    assert str(error.value) == message


def test_all_value_problems_in_one_error():
    df = pd.DataFrame({"label": [0, 3], "prob": [0.1, 7.0], "race": ["a", "b"]})
    with pytest.raises(MetricsError) as error:
        evaluate(df, ["race"])
    assert str(error.value) == "; ".join(
        [metrics.LABEL_NOT_BINARY.format(values="3"), metrics.PROB_NOT_PROBABILITY.format(count=1, values="7.0")]
    )


def test_empty_frame_and_empty_split():
    df = make_predictions(0)
    with pytest.raises(MetricsError) as error:
        evaluate(df.iloc[:0], ["race"])
    assert str(error.value) == metrics.EMPTY_FRAME
    with pytest.raises(MetricsError) as error:
        evaluate(df, ["race"], split="val")
    assert str(error.value) == "predictions file has no rows with split 'val'; splits present: test"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 1.5}, metrics.BAD_ARGUMENT.format(name="threshold", rule="a number in [0, 1]", value=1.5)),
        ({"bootstrap": -1}, metrics.BAD_ARGUMENT.format(name="bootstrap", rule="a whole number >= 0", value=-1)),
        ({"ci": 1.0}, metrics.BAD_ARGUMENT.format(name="ci", rule="a number strictly between 0 and 1", value=1.0)),
        ({"min_n": 2.5}, metrics.BAD_ARGUMENT.format(name="min_n", rule="a whole number >= 0", value=2.5)),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(MetricsError) as error:
        evaluate(make_predictions(0), ["race"], **kwargs)
    assert str(error.value) == message


def test_attributes_must_be_a_list_and_specs_well_formed():
    with pytest.raises(MetricsError, match="attributes must be a list of attribute names"):
        evaluate(make_predictions(0), "race")
    with pytest.raises(MetricsError) as error:
        evaluate(make_predictions(0), ["race+"])
    assert str(error.value) == metrics.BAD_ATTRIBUTE_SPEC.format(spec="race+")


def test_split_selects_rows_and_pooling_splits_warns():
    df = make_predictions(0)
    df.loc[df.index[:200], "split"] = "val"
    chosen = evaluate(df, ["race"], split="test")
    assert chosen["overall"]["n"] == 400 and chosen["split"] == "test"
    assert chosen["overall"]["auc"] == pytest.approx(roc_auc_score(df["label"][200:], df["prob"][200:]))
    mixed = metrics.MIXED_SPLITS.format(present="test, val")
    with pytest.warns(UserWarning, match=exactly(mixed)) as caught:
        evaluate(df, ["race"])
    assert [str(w.message) for w in caught] == [mixed]


# ---------------------------------------------------------------------------------------------------
# Command line


def write_csv(df: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "predictions.csv"
    df.to_csv(path, index=False)
    return path


def test_cli_json_matches_evaluate(tmp_path, capsys):
    df = make_predictions(1)
    df.loc[df.index[:100], "split"] = "val"
    path = write_csv(df, tmp_path)
    argv = [str(path), "--attribute", "race", "--attribute", "gender+age_group", "--split", "test"]
    code = metrics_main([*argv, "--bootstrap", "100", "--seed", "2", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    expected = evaluate(df, ["race", "gender+age_group"], split="test", bootstrap=100, seed=2)
    assert printed == json.loads(json.dumps(expected))
    test_rows = df[df["split"] == "test"]
    white = test_rows[test_rows["race"] == "White"]
    assert printed["attributes"]["race"]["groups"]["White"]["auc"] == pytest.approx(
        roc_auc_score(white["label"], white["prob"]), abs=1e-12
    )
    assert printed["attributes"]["gender+age_group"]["groups"]["Female & 60+"]["n"] == int(
        ((test_rows["gender"] == "Female") & (test_rows["age_group"] == "60+")).sum()
    )


def test_cli_keeps_attribute_values_as_written(tmp_path, capsys):
    df = pd.DataFrame({"label": [0, 1, 0, 1], "prob": [0.2, 0.8, 0.6, 0.4], "race": ["0", "0", "NA", "NA"]})
    assert metrics_main([str(write_csv(df, tmp_path)), "--attribute", "race", "--min-n", "1", "--json"]) == 0
    assert list(json.loads(capsys.readouterr().out)["attributes"]["race"]["groups"]) == ["0", "NA"]


def test_cli_table_shows_groups_gaps_and_intervals(tmp_path, capsys):
    path = write_csv(make_predictions(2), tmp_path)
    assert metrics_main([str(path), "--attribute", "race", "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    report = evaluate(make_predictions(2), ["race"], bootstrap=50)
    for name, group in report["attributes"]["race"]["groups"].items():
        assert f"{name:<5} {group['n']:>6} {group['accuracy']:>7.3f}" in out
    low, high = report["attributes"]["race"]["ci"]["max_acc_gap"]
    assert f"max_acc_gap    {report['attributes']['race']['max_acc_gap']:>7.3f}  [{low:.3f}, {high:.3f}]" in out


def test_cli_error_is_one_line_and_exit_code_2(tmp_path):
    path = write_csv(make_predictions(0)[["label", "prob", "gender"]], tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "training.metrics", str(path), "--attribute", "race", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "error: predictions file has no column 'race'; columns are: label, prob, gender\n"


def test_cli_missing_file_and_warnings(tmp_path, capsys):
    assert metrics_main([str(tmp_path / "nope.csv"), "--attribute", "race"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read predictions file '{tmp_path / 'nope.csv'}':") and err.count("\n") == 1

    df = make_predictions(0)
    df.loc[df["race"] == "Asian", "label"] = 1
    assert metrics_main([str(write_csv(df, tmp_path)), "--attribute", "race", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("warning: attribute 'race': group 'Asian' has no negative labels")
    assert json.loads(captured.out)["attributes"]["race"]["groups"]["Asian"]["fpr"] is None


def test_group_labels_match_the_loaders_spelling():
    from training import data

    assert metrics.INTERSECTION == data.ATTRIBUTE_JOINER
    assert metrics.GROUP_JOINER == data.GROUP_JOINER


def test_groups_below_gap_min_n_are_reported_but_left_out_of_the_gaps():
    df = pd.DataFrame(
        {
            "label": [1, 0] * 20 + [1, 0],
            "prob": [0.9, 0.1] * 20 + [0.1, 0.9],  # the two-sample group is always wrong
            "sex": ["Female"] * 20 + ["Male"] * 20 + ["Unknown"] * 2,
        }
    )
    everyone = evaluate(df, ["sex"], gap_min_n=1)["attributes"]["sex"]
    assert everyone["max_acc_gap"] == 1.0
    assert evaluate(df, ["sex"])["gap_min_n"] == metrics.GAP_MIN_N == 30  # the one default: groups of 20 are out
    assert evaluate(df, ["sex"])["attributes"]["sex"]["max_acc_gap"] is None
    filtered = evaluate(df, ["sex"], gap_min_n=10, bootstrap=50)["attributes"]["sex"]
    assert filtered["groups"]["Unknown"]["accuracy"] == 0.0
    assert filtered["groups"]["Unknown"]["in_gaps"] is False
    assert filtered["max_acc_gap"] == 0.0
    assert filtered["ci"]["max_acc_gap"] == [0.0, 0.0]


# ----------------------------------------------------------------------------- operating point and population mix


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_youden_threshold_maximises_tpr_minus_fpr(seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, 300)
    prob = np.clip(rng.normal(0.35 + 0.3 * label, 0.2), 0, 1)
    threshold = metrics.youden_threshold(label, prob)

    def j(t):
        predicted = prob >= t
        return predicted[label == 1].mean() - predicted[label == 0].mean()

    best = max(j(t) for t in np.unique(prob))
    assert j(threshold) == pytest.approx(best, abs=1e-12)
    assert metrics.youden_threshold(np.zeros(5, int), np.linspace(0, 1, 5)) == 0.5  # one class: no ROC


def test_reweighted_overall_figures_are_the_population_mix():
    """An enriched test split (group b oversampled 4x) reweighted to the training mix gives the figures of
    a population test set: each group's own figure, mixed by the population shares."""
    rng = np.random.default_rng(7)
    groups = np.array(["a"] * 500 + ["b"] * 500)
    label = rng.integers(0, 2, 1000)
    prob = np.clip(label * np.where(groups == "a", 0.8, 0.55) + rng.normal(0.1, 0.15, 1000), 0, 1)
    frame = pd.DataFrame({"label": label, "prob": prob, "g": groups})
    report = evaluate(frame, ["g"], population=("g", {"a": 800, "b": 200}))
    by_group = report["attributes"]["g"]["groups"]
    again = report["overall"]["reweighted"]
    assert again["accuracy"] == pytest.approx(0.8 * by_group["a"]["accuracy"] + 0.2 * by_group["b"]["accuracy"])
    assert again["tpr"] == pytest.approx(
        (
            0.8 * by_group["a"]["tpr"] * by_group["a"]["n_pos"] / 500
            + 0.2 * by_group["b"]["tpr"] * by_group["b"]["n_pos"] / 500
        )
        / (0.8 * by_group["a"]["n_pos"] / 500 + 0.2 * by_group["b"]["n_pos"] / 500)
    )
    from sklearn.metrics import roc_auc_score

    weights = metrics.population_weights(frame, "g", {"a": 800, "b": 200})
    assert again["auc"] == pytest.approx(roc_auc_score(label, prob, sample_weight=weights), abs=1e-9)
    assert report["overall"]["accuracy"] != pytest.approx(again["accuracy"])
