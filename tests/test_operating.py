"""Operating points chosen on validation, reported on test (training.metrics.operating and the CLI)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from training import metrics, rundir
from training.metrics import operating
from training.metrics.__main__ import main as metrics_main

SKIN = rundir.DEMO_RUNS_DIR / "skin-vanilla" / rundir.PREDICTIONS
FUNDUS = rundir.DEMO_RUNS_DIR / "fundus-vanilla" / rundir.PREDICTIONS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("youden", operating.OperatingPoint("youden")),
        ("sens=0.9", operating.OperatingPoint("sens", 0.9)),
        (" spec = 0.95 ", operating.OperatingPoint("spec", 0.95)),
        ("equal-tpr", operating.OperatingPoint("equal-tpr")),
        ("equal-tpr=0.8", operating.OperatingPoint("equal-tpr", 0.8)),
    ],
)
def test_operating_points_parse(text, expected):
    assert operating.parse(text) == expected


@pytest.mark.parametrize("text", ["sens", "sens=1.5", "youden=0.3", "f1", "spec=0", ""])
def test_bad_operating_points_are_named(text):
    with pytest.raises(metrics.MetricsError, match="operating point must be one of youden"):
        operating.parse(text)


def test_thresholds_reach_their_target_on_the_rows_they_were_chosen_on():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 500)
    prob = np.clip(0.5 * label + rng.normal(0.25, 0.2, 500), 0, 1)
    t = operating.sensitivity_threshold(label, prob, 0.9)
    assert (prob[label == 1] >= t).mean() >= 0.9
    assert (prob[label == 1] >= np.nextafter(t, 1)).mean() < 0.9  # the highest such threshold
    t = operating.specificity_threshold(label, prob, 0.9)
    assert (prob[label == 0] < t).mean() >= 0.9
    assert (prob[label == 0] < np.nextafter(t, 0)).mean() < 0.9


def test_sensitivity_90_on_a_demo_run_is_chosen_on_val_and_reported_on_test():
    frame = metrics.read_predictions(SKIN)
    result = operating.at_operating_point(frame, "sex", operating.parse("sens=0.9"))
    val = metrics.select_split(frame, "val")
    label, prob = val["label"].astype(int).to_numpy(), val["prob"].astype(float).to_numpy()
    assert result["chosen_on"] == "val"
    assert result["threshold"] == operating.sensitivity_threshold(label, prob, 0.9)
    assert (prob[label == 1] >= result["threshold"]).mean() >= 0.9
    test = metrics.select_split(frame, "test")
    positives = test["prob"].astype(float)[test["label"].astype(int) == 1]
    assert result["test"]["tpr"] == pytest.approx((positives >= result["threshold"]).mean())
    assert 0 <= result["test_at_val_mix"]["tpr"] <= 1 and result["test"]["n"] == len(test)


def test_equal_tpr_gives_each_group_its_threshold_and_reports_the_cost():
    frame = metrics.read_predictions(FUNDUS)
    result = operating.at_operating_point(frame, "race", operating.parse("equal-tpr"))
    assert set(result["thresholds"]) == {"Asian", "Black", "White"}
    val = metrics.select_split(frame, "val")
    for group, threshold in result["thresholds"].items():
        mine = val[val["race"] == group]
        positives = mine["prob"].astype(float)[mine["label"].astype(int) == 1]
        assert (positives >= threshold).mean() >= result["target_tpr"]
        assert result["groups"][group]["threshold"] == threshold
    youden = operating.at_operating_point(frame, "race", operating.parse("youden"))
    assert result["test"]["delta_tpr"] < youden["test"]["delta_tpr"]  # equalised on val, narrower on test
    single = {key: value for key, value in youden["test"].items() if key != "delta_tpr"}
    assert result["youden_test"] == single  # the single threshold's figures, to read the cost against
    assert result["test"]["specificity"] < single["specificity"]  # equal TPR costs specificity here


def test_without_validation_rows_the_message_says_what_to_do():
    frame = metrics.select_split(metrics.read_predictions(FUNDUS), "test")
    with pytest.raises(metrics.MetricsError, match="no rows with split 'val'"):
        operating.at_operating_point(frame, "race", operating.parse("youden"))
    test_only = frame.drop(columns=["split"])
    with pytest.raises(metrics.MetricsError, match="no rows with split 'val'"):
        operating.at_operating_point(test_only, "race", operating.parse("youden"))


def test_the_command_line_reports_the_operating_point(capsys):
    code = metrics_main([str(SKIN), "--attribute", "sex+age_group", "--operating-point", "sens=0.9", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    point = report["attributes"]["sex+age_group"]["operating_point"]
    assert point["operating_point"] == "sens=0.9" and point["chosen_on"] == "val"
    assert point["threshold"] > 0 and point["test"]["n"] > 0 and "test_at_val_mix" in point
    assert all("threshold" in group for group in point["groups"].values())
    assert metrics_main([str(SKIN), "--attribute", "sex", "--operating-point", "f1"]) == 2
    assert "operating point must be one of" in capsys.readouterr().err


def test_a_frame_of_one_label_in_val_is_refused():
    frame = pd.DataFrame(
        {
            "split": ["val", "val", "test", "test"],
            "label": [1, 1, 0, 1],
            "prob": [0.6, 0.7, 0.2, 0.9],
            "g": list("abab"),
        }
    )
    with pytest.raises(metrics.MetricsError, match="of both labels"):
        operating.at_operating_point(frame, "g", operating.parse("sens=0.9"))
