"""training.guard: a useless model is flagged, a sound one is not; the flag reaches card, Diagnose and Compare."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from training import guard, metrics, rundir


def _predictions(seed: int, n: int = 400, separation: float = 2.0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    score = rng.normal(separation * label, 1.0)
    return label, 1.0 / (1.0 + np.exp(-score))


def test_a_sound_model_passes():
    label, prob = _predictions(0)
    verdict = guard.check(label, prob, 0.5)
    assert verdict["degenerate"] is False and verdict["reasons"] == []
    assert verdict["auc"] > 0.85 and verdict["auc_p_value"] < 1e-10
    assert verdict["prob_sd"] > 0.2


def test_a_collapsed_model_is_flagged_for_every_reason_it_has():
    """The first CMAC demo: p = 0.498 (sd 0.0001) for every image."""
    label, _ = _predictions(1)
    prob = 0.498 + 0.0001 * np.random.default_rng(2).standard_normal(len(label))
    verdict = guard.check(label, prob, 0.5)
    assert verdict["degenerate"] is True
    assert [r.split(" (")[0].split(" is ")[0] for r in verdict["reasons"]] == [
        "near-constant probabilities",
        "predicts one class for 100.0% of the test samples",
        f"AUC {verdict['auc']:.3f}",
    ]
    assert "indistinguishable from chance" in verdict["reasons"][2]


def test_chance_auc_alone_is_flagged_and_a_real_but_weak_model_is_not():
    label, prob = _predictions(3, separation=0.0)  # spread-out probabilities, no signal
    assert guard.check(label, prob, 0.5)["reasons"] == [
        guard.REASONS["chance_auc"].format(
            auc=guard.check(label, prob, 0.5)["auc"], p=guard.check(label, prob, 0.5)["auc_p_value"]
        )
    ]
    weak_label, weak_prob = _predictions(4, n=2000, separation=0.3)
    assert guard.check(weak_label, weak_prob, 0.5)["degenerate"] is False


def test_the_mann_whitney_auc_is_sklearns():
    from sklearn.metrics import roc_auc_score

    label, prob = _predictions(5, separation=0.7)
    assert guard.check(label, prob, 0.5)["auc"] == pytest.approx(roc_auc_score(label, prob), abs=1e-12)


def test_evaluate_run_stores_threshold_rule_and_guard():
    label, prob = _predictions(6)
    import pandas as pd

    frame = pd.DataFrame(
        {
            "label": label,
            "prob": prob,
            "split": ["val"] * 200 + ["test"] * 200,
            "group": np.where(np.arange(400) % 3 == 0, "a", "b"),
        }
    )
    report = metrics.evaluate_run(frame, ["group"])
    val = frame[frame["split"] == "val"]
    assert report["threshold"] == metrics.youden_threshold(val["label"], val["prob"])
    assert report["threshold_rule"] == "youden_on_val"
    assert report["guard"]["degenerate"] is False and report["guard"]["threshold"] == report["threshold"]
    assert metrics.evaluate_run(frame, ["group"], threshold=0.3)["threshold_rule"] == "given"


def test_a_degenerate_run_is_flagged_in_its_card_and_never_the_default_adapter(tmp_path):
    from inference import diagnose_view
    from training.card import render_card

    demo = rundir.read_run(rundir.DEMO_RUNS_DIR / "skin-vanilla")
    broken_path = shutil.copytree(demo.path, tmp_path / "skin-broken")
    payload = json.loads((broken_path / "eval.json").read_text())
    payload["report"]["guard"] = {"degenerate": True, "reasons": ["near-constant probabilities (sd 0.0001 < 0.02)"]}
    (broken_path / "eval.json").write_text(json.dumps(payload))
    broken = rundir.read_run(broken_path)
    assert broken.degenerate and not demo.degenerate
    card = render_card(broken.config, payload)
    assert "**Warning: degenerate model.** This adapter is flagged as degenerate: near-constant" in card
    assert diagnose_view.default_adapter([broken], "skin") is None
    assert diagnose_view.default_adapter([broken, demo], "skin") == demo.label()
    assert "⚠ degenerate" in {k: t for t, k in diagnose_view.adapter_choices([broken], "skin")}[broken.label()]
    from inference.compare_engine import compare_runs
    from inference.compare_export import display_table
    from inference.compare_figures import FLAGGED_NAME, frontier_figure

    comparison = compare_runs([demo, broken], "sex+age_group", bootstrap=0)
    flags = dict(zip(comparison.table["run"], comparison.table["flags"].fillna(""), strict=True))
    assert flags == {demo.label(): "", broken.label(): "degenerate"}
    assert display_table(comparison)["Flags"].tolist().count("degenerate") == 1
    from inference.compare_view import summary_table

    assert f"{broken.label()} ⚠ degenerate" in summary_table(comparison)["Run"].tolist()
    assert any("This adapter is flagged as degenerate" in note for note in comparison.notes)
    traces = {trace.name: trace for trace in frontier_figure(comparison).data}
    flagged = traces[f"⚠ Vanilla: {FLAGGED_NAME}"]  # a legend entry of its own, drawn as ✕ with its flag
    assert flagged.marker.symbol == "x" and list(flagged.text) == ["⚠ degenerate"]
    assert traces["Vanilla"].marker.symbol == "circle" and traces["Vanilla"].text is None
