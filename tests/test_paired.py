"""Paired comparisons and noise floors (training.metrics.paired), judged on simulations with a known truth.

Each simulation draws a test set of two groups of 300 samples and two "runs" whose correctness
depends only on the group; the runs' errors are independent given the labels, as two models trained
with different objectives would be.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from training import metrics
from training.metrics import paired
from training.metrics.__main__ import main as metrics_main

N_PER_GROUP = 300


def simulated_run(
    rng: np.random.Generator, labels: np.ndarray, groups: np.ndarray, accuracy: dict[str, float]
) -> np.ndarray:
    """Probabilities of class 1 that are right (on the right side of 0.5) with each group's accuracy."""
    correct = rng.random(len(labels)) < np.vectorize(accuracy.get)(groups)
    confidence = 0.5 + 0.5 * rng.random(len(labels))
    towards_label = np.where(labels == 1, confidence, 1 - confidence)
    return np.where(correct, towards_label, 1 - towards_label)


def make_test_set(rng: np.random.Generator, clusters_of: int = 1) -> pd.DataFrame:
    groups = np.repeat(["A", "B"], N_PER_GROUP)
    return pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(len(groups))],
            "label": rng.integers(0, 2, len(groups)),
            "group": groups,
            "lesion": [f"l{i // clusters_of}" for i in range(len(groups))],
        }
    )


def pair(rng, base, run_accuracy, reference_accuracy):
    run = base.assign(prob=simulated_run(rng, base["label"].to_numpy(), base["group"].to_numpy(), run_accuracy))
    reference = base.assign(
        prob=simulated_run(rng, base["label"].to_numpy(), base["group"].to_numpy(), reference_accuracy)
    )
    return run, reference


def test_no_true_difference_is_called_significant_about_5_percent_of_the_time():
    rng = np.random.default_rng(0)
    p_values = []
    for draw in range(400):
        run, reference = pair(rng, make_test_set(rng), {"A": 0.85, "B": 0.70}, {"A": 0.85, "B": 0.70})
        result = paired.paired_comparison(run, reference, ["group"], bootstrap=200, seed=draw)
        p_values.append(result["group"]["max_acc_gap"]["p_value"])
    false_positive_rate = np.mean(np.array(p_values) < 0.05)
    assert false_positive_rate <= 0.08, false_positive_rate


def test_a_true_gap_reduction_of_0_2_is_found():
    rng = np.random.default_rng(1)
    found = []
    for draw in range(100):
        run, reference = pair(rng, make_test_set(rng), {"A": 0.85, "B": 0.75}, {"A": 0.90, "B": 0.60})
        gap = paired.paired_comparison(run, reference, ["group"], bootstrap=200, seed=draw)["group"]["max_acc_gap"]
        found.append(gap["p_value"] < 0.05 and gap["difference"] < 0)
    assert np.mean(found) >= 0.80, np.mean(found)


def test_paired_intervals_cover_the_true_difference_95_percent_of_the_time():
    # Known truth: MaxAccGap 0.10 against 0.30 (a difference of −0.20), accuracy 0.80 against 0.75 (+0.05).
    rng = np.random.default_rng(2)
    gap_hits, accuracy_hits = [], []
    for draw in range(200):
        run, reference = pair(rng, make_test_set(rng), {"A": 0.85, "B": 0.75}, {"A": 0.90, "B": 0.60})
        result = paired.paired_comparison(run, reference, ["group"], bootstrap=200, seed=draw)
        low, high = result["group"]["max_acc_gap"]["ci"]
        gap_hits.append(low <= -0.20 <= high)
        low, high = result["overall"]["accuracy"]["ci"]
        accuracy_hits.append(low <= 0.05 <= high)
    assert 0.90 <= np.mean(gap_hits) <= 0.99 and 0.90 <= np.mean(accuracy_hits) <= 0.99, (
        np.mean(gap_hits),
        np.mean(accuracy_hits),
    )


def test_the_noise_floor_p_value_is_uniform_when_groups_do_not_differ():
    rng = np.random.default_rng(2)
    p_values, expected = [], []
    for draw in range(200):
        frame = make_test_set(rng).pipe(
            lambda f: f.assign(
                prob=simulated_run(rng, f["label"].to_numpy(), f["group"].to_numpy(), {"A": 0.8, "B": 0.8})
            )
        )
        floor = paired.noise_floor(frame, "group", permutations=99, seed=draw)["max_acc_gap"]
        p_values.append(floor["p_value"])
        expected.append(floor["expected"])
    p_values = np.array(p_values)
    assert np.mean(p_values < 0.05) <= 0.08
    assert stats.kstest(p_values, "uniform").pvalue > 0.01  # discrete p-values on a 1/100 grid
    # the gap chance alone produces: two groups of 300 at accuracy 0.8 differ by ~0.026 on average
    assert 0.015 < np.mean(expected) < 0.04


def test_cluster_resampling_widens_intervals_when_images_repeat_a_lesion():
    """Four images per lesion, scored alike: rows are not independent, clusters are."""
    rng = np.random.default_rng(3)
    base = make_test_set(rng, clusters_of=4)
    lesion_label = rng.integers(0, 2, base["lesion"].nunique())
    codes = pd.factorize(base["lesion"])[0]
    base = base.assign(label=lesion_label[codes])
    lesion_prob = simulated_run(
        rng, lesion_label, base.groupby(codes)["group"].first().to_numpy(), {"A": 0.85, "B": 0.7}
    )
    other_prob = simulated_run(
        rng, lesion_label, base.groupby(codes)["group"].first().to_numpy(), {"A": 0.85, "B": 0.7}
    )
    run, reference = base.assign(prob=lesion_prob[codes]), base.assign(prob=other_prob[codes])
    rows = paired.paired_comparison(run, reference, ["group"], bootstrap=400, seed=0)
    lesions = paired.paired_comparison(run, reference, ["group"], bootstrap=400, seed=0, cluster_column="lesion")
    width = lambda r: r["overall"]["accuracy"]["ci"][1] - r["overall"]["accuracy"]["ci"][0]  # noqa: E731
    assert width(lesions) > 1.6 * width(rows)  # ≈ √4 = 2 for perfectly repeated images
    assert paired.noise_floor(run, "group", permutations=20, cluster_column="lesion")["max_acc_gap"]["p_value"]
    with pytest.raises(metrics.MetricsError, match="several 'group' groups"):
        paired.noise_floor(run.assign(lesion="one"), "group", permutations=5, cluster_column="lesion")


def test_equivalence_by_a_stated_margin_not_by_overlap():
    rng = np.random.default_rng(4)
    same = pair(rng, make_test_set(rng), {"A": 0.85, "B": 0.8}, {"A": 0.85, "B": 0.8})
    worse = pair(rng, make_test_set(rng), {"A": 0.75, "B": 0.7}, {"A": 0.85, "B": 0.8})
    assert paired.equivalent(*worse, bootstrap=300)["accuracy"]["equivalent"] is False
    loose = paired.equivalent(*same, bootstrap=300, margins={"accuracy": 0.08})["accuracy"]
    assert loose["equivalent"] is True and loose["margin"] == 0.08


def test_runs_join_by_id_in_one_order(tmp_path):
    rng = np.random.default_rng(5)
    run, reference = pair(rng, make_test_set(rng), {"A": 0.85, "B": 0.75}, {"A": 0.90, "B": 0.60})
    shuffled = reference.assign(split="test").sample(frac=1, random_state=0).iloc[:500]
    joined, ref = paired.join_runs(run.assign(split="test"), shuffled)
    assert len(joined) == len(ref) == 500 and (joined["id"] == ref["id"]).all()
    assert (ref["group"] == joined["group"]).all()  # the run's attribute columns on both sides


def test_cli_json_holds_paired_and_noise_floor(tmp_path, capsys):
    rng = np.random.default_rng(6)
    run, reference = pair(rng, make_test_set(rng), {"A": 0.85, "B": 0.75}, {"A": 0.90, "B": 0.60})
    run.to_csv(tmp_path / "run.csv", index=False)
    reference.to_csv(tmp_path / "ref.csv", index=False)
    assert (
        metrics_main(
            [
                str(tmp_path / "run.csv"),
                "--attribute",
                "group",
                "--reference",
                str(tmp_path / "ref.csv"),
                "--bootstrap",
                "200",
                "--permutations",
                "50",
                "--json",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    group = report["attributes"]["group"]
    assert set(group["paired"]) == set(metrics.GAPS)
    assert set(group["paired"]["max_acc_gap"]) == {"difference", "ci", "p_value", "n_failed"}
    assert group["paired"]["max_acc_gap"]["difference"] == pytest.approx(
        group["max_acc_gap"] - metrics.evaluate(reference, ["group"])["attributes"]["group"]["max_acc_gap"]
    )
    assert set(group["noise_floor"]["max_acc_gap"]) >= {"expected", "p_value"}
    assert report["paired"]["n_shared"] == 2 * N_PER_GROUP and "accuracy" in report["paired"]
    equivalence = report["paired"]["equivalence"]["accuracy"]
    assert equivalence["margin"] == paired.EQUIVALENCE_MARGINS["accuracy"] and equivalence["equivalent"] is False
    assert equivalence["ci"][1] > 0.01  # the run is ~5 points more accurate: not "equivalent within 1 point"


def test_runs_scored_on_other_samples_are_refused(tmp_path):
    rng = np.random.default_rng(7)
    run, reference = pair(rng, make_test_set(rng), {"A": 0.8, "B": 0.8}, {"A": 0.8, "B": 0.8})
    with pytest.raises(metrics.MetricsError, match="share no sample ids"):
        paired.join_runs(run, reference.assign(id=reference["id"] + "x"), split=None)
    with pytest.raises(metrics.MetricsError, match="disagree on the label"):
        paired.join_runs(run, reference.assign(label=1 - reference["label"]), split=None)
