"""inference.compare_engine, _figures and _export: every figure equals training.metrics.evaluate's on the same
predictions.csv.

Run directories are written into tmp_path with everything a run holds (config.json, a placeholder
adapter, metrics.jsonl, predictions.csv, eval.json from metrics.evaluate, README.md), so they pass
training.rundir.read_run. Predictions follow a known model of group gaps: within each group exactly
round(TPR·n_pos) positives and round(TNR·n_neg) negatives are classified correctly, so accuracies and
gaps are known numbers.
"""

from __future__ import annotations

import functools
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from scipy.stats import binomtest, gaussian_kde

from inference import compare_engine as engine
from inference.compare_engine import CompareError, cache_info, clear_cache, compare_runs
from inference.compare_export import display_table, to_csv
from inference.compare_figures import (
    METHOD_COLORS,
    SWEEP_NAME,
    frontier_figure,
    group_accuracy_figure,
    margin_figure,
    pareto_front,
)
from training import metrics, rundir
from training.rundir import read_run

FUNDUS_COUNTS = {"White": 400, "Black": 160, "Asian": 80}  # test-split group sizes (race)
SKIN_GROUPS = ("Female & 0-40", "Female & 40-60", "Female & 60+", "Male & 0-40", "Male & 40-60", "Male & 60+")
OTHER_FUNDUS = {
    "ethnicity": ("Non-Hispanic", "Hispanic", "Unknown"),
    "gender": ("Female", "Male"),
    "age_group": ("0-40", "40-60", "60+"),
}


# ---------------------------------------------------------------------------------------------------
# Building run directories


def group_predictions(
    rng: np.random.Generator,
    group_rates: dict[str, tuple[float, float]],
    counts: dict[str, int],
    prevalence: float = 0.5,
) -> pd.DataFrame:
    """Rows per group with exactly round(tpr·n_pos) correct positives and round(tnr·n_neg) correct negatives.

    A correct positive gets prob in [0.55, 0.95], a wrong one [0.05, 0.45] (mirrored for negatives);
    margin = log(p/(1−p)) signed for the true class, the margin of a two-class softmax.
    """
    parts = []
    for group, n in counts.items():
        tpr, tnr = group_rates[group]
        n_pos = round(prevalence * n)
        label = np.r_[np.ones(n_pos, int), np.zeros(n - n_pos, int)]
        correct = np.r_[np.arange(n_pos) < round(tpr * n_pos), np.arange(n - n_pos) < round(tnr * (n - n_pos))]
        confidence = rng.uniform(0.55, 0.95, n)
        p_true = np.where(correct, confidence, 1 - confidence)
        prob = np.where(label == 1, p_true, 1 - p_true).round(4)
        margin = np.log(p_true / (1 - p_true))
        parts.append(pd.DataFrame({"group": group, "label": label, "prob": prob, "margin": margin}))
    frame = pd.concat(parts, ignore_index=True)
    return frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)


def fundus_predictions(accuracy: dict[str, float], *, seed: int = 0, val: int = 100) -> pd.DataFrame:
    """Test rows whose race groups have the given accuracies (TPR = TNR = accuracy), plus val rows."""
    rng = np.random.default_rng(seed)
    test = group_predictions(rng, {g: (a, a) for g, a in accuracy.items()}, FUNDUS_COUNTS)
    test["split"] = "test"
    validation = group_predictions(
        rng, dict.fromkeys(FUNDUS_COUNTS, (0.5, 0.5)), dict.fromkeys(FUNDUS_COUNTS, val // 3)
    )
    validation["split"] = "val"
    frame = pd.concat([test, validation], ignore_index=True).rename(columns={"group": "race"})
    for column, values in OTHER_FUNDUS.items():
        frame[column] = rng.choice(values, len(frame), p=[0.8, 0.1, 0.1] if len(values) == 3 else None)
    return frame


def skin_predictions(tpr: dict[str, float], *, seed: int = 0, n_per_group: int = 100, tnr: float = 0.9) -> pd.DataFrame:
    """Test rows whose sex × age groups have the given TPR (the same TNR everywhere)."""
    rng = np.random.default_rng(seed)
    frame = group_predictions(rng, {g: (t, tnr) for g, t in tpr.items()}, dict.fromkeys(tpr, n_per_group), 0.4)
    frame["split"] = "test"
    frame[["sex", "age_group"]] = frame["group"].str.split(" & ", expand=True)
    frame["fitzpatrick"] = rng.choice(["I", "II", "III", "IV", "V", "VI"], len(frame))
    return frame.drop(columns="group")


def write_run(
    runs_dir: Path,
    run_id: str,
    predictions: pd.DataFrame,
    *,
    task: str = "fundus",
    method: str = "vanilla",
    lam: float = 0.5,
    w_max: float = 10.0,
    attribute: str = "race",
    seed: int = 42,
    cmac_attribute: str | None = None,
    data: str | None = None,
    eval_attributes: tuple[str, ...] | None = None,
    sweep: str | None = None,
) -> Path:
    """A complete run directory as training.train writes it (the adapter is a placeholder)."""
    path = Path(runs_dir) / run_id
    (path / "adapter").mkdir(parents=True)
    frame = predictions.copy()
    frame.insert(0, "id", [f"s{i:05d}" for i in range(len(frame))])
    columns = ["id", "split", "label", "prob", "margin"]
    frame = frame[columns + [c for c in frame.columns if c not in columns]]
    frame.to_csv(path / "predictions.csv", index=False)
    attributes = [c for c in frame.columns if c not in columns]
    config = {
        "method": method,
        "lam": lam,
        "w_max": w_max,
        "attribute": attribute,
        "cmac_attribute": cmac_attribute,
        "data": data or f"synth:{task}",
        "backbone": f"assets/backbones/tiny-{'clip' if task == 'skin' else 'qwen2.5-vl'}",
        "seed": seed,
        "epochs": 3,
        "task": task,
        "family": "clip" if task == "skin" else "qwen2_5_vl",
        "run_id": run_id,
        "created": "2026-11-22T00:00:00+00:00",
        "dataset": {"spec": data or f"synth:{task}", "attributes": attributes},
        **({"sweep": sweep} if sweep else {}),
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "adapter" / "adapter_config.json").write_text("{}")
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    (path / "metrics.jsonl").write_text(
        '{"event": "start", "total_steps": 1, "time": 0}\n{"event": "end", "seconds": 1}\n'
    )
    (path / "README.md").write_text(f"# {run_id}\n")
    with warnings.catch_warnings():  # groups without positives are the point of some tests
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        report = metrics.evaluate(
            metrics.read_predictions(path / "predictions.csv"),
            list(eval_attributes or [attribute]),
            bootstrap=50,
            split="test",
        )
    (path / "eval.json").write_text(
        json.dumps({"run_id": run_id, "split": "test", "attributes": [attribute], "report": report})
    )
    return path


FIVE_METHODS = {  # race accuracies (White, Black, Asian) per method
    "vanilla": {"White": 0.80, "Black": 0.70, "Asian": 0.60},
    "fr": {"White": 0.79, "Black": 0.75, "Asian": 0.70},
    "gr": {"White": 0.80, "Black": 0.775, "Asian": 0.75},
    "hybrid": {"White": 0.78, "Black": 0.775, "Asian": 0.75},
    "cmac": {"White": 0.80, "Black": 0.725, "Asian": 0.65},
}


@pytest.fixture(autouse=True)
def empty_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def five_runs(tmp_path):
    return [
        read_run(write_run(tmp_path, f"fundus-{method}", fundus_predictions(accuracy, seed=i), method=method))
        for i, (method, accuracy) in enumerate(FIVE_METHODS.items())
    ]


def evaluate_file(run, attribute, bootstrap, seed=0):
    """What training.metrics says about the run's file, the reference every figure is checked against."""
    frame = metrics.read_predictions(run.path / "predictions.csv")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        return metrics.evaluate(frame, [attribute], bootstrap=bootstrap, seed=seed, split="test")


# ---------------------------------------------------------------------------------------------------
# The table


def test_table_figures_equal_metrics_evaluate_on_the_same_file(five_runs):
    comparison = compare_runs(five_runs, "race", bootstrap=200, seed=3)
    assert list(comparison.table["run"]) == [run.run_id for run in five_runs]
    assert list(comparison.table["method"]) == list(FIVE_METHODS)
    for run, row in zip(five_runs, comparison.table.to_dict("records"), strict=True):
        expected = evaluate_file(run, "race", bootstrap=200, seed=3)
        overall, race = expected["overall"], expected["attributes"]["race"]
        assert row["n"] == 640
        assert row["accuracy"] == overall["accuracy"] and row["auc"] == overall["auc"]
        assert [row["accuracy_lo"], row["accuracy_hi"]] == overall["ci"]["accuracy"]
        for gap in metrics.GAPS:
            assert row[gap] == race[gap]
            assert [row[f"{gap}_lo"], row[f"{gap}_hi"]] == race["ci"][gap]
        assert comparison.reports[run.run_id] == expected
    gaps = dict(zip(comparison.table["method"], comparison.table["max_acc_gap"], strict=True))
    assert gaps == pytest.approx({"vanilla": 0.20, "fr": 0.09, "gr": 0.05, "hybrid": 0.03, "cmac": 0.15}, abs=1e-12)


def test_lambda_and_w_max_only_for_methods_that_use_them(five_runs):
    table = compare_runs(five_runs, "race", bootstrap=0).table.set_index("method")
    assert [table.loc[m, "lambda"] for m in ("fr", "hybrid", "cmac")] == [0.5, 0.5, 0.5]
    assert table.loc["gr", "w_max"] == 10.0 and table.loc["hybrid", "w_max"] == 10.0
    assert pd.isna(table.loc["vanilla", "lambda"]) and pd.isna(table.loc["gr", "lambda"])
    assert pd.isna(table.loc["vanilla", "w_max"]) and pd.isna(table.loc["fr", "w_max"])
    assert pd.isna(table.loc["vanilla", "trained_on"])  # vanilla does not use the attribute
    assert list(table["trained_on"])[1:] == ["race"] * 4


def test_per_group_accuracy_with_n_and_wilson_interval(five_runs):
    groups = compare_runs(five_runs, "race", bootstrap=0).groups
    vanilla = groups[groups["run"] == "fundus-vanilla"].set_index("group")
    assert vanilla["n"].to_dict() == {"Asian": 80, "Black": 160, "White": 400}
    assert vanilla["accuracy"].to_dict() == pytest.approx({"Asian": 0.60, "Black": 0.70, "White": 0.80})
    for _group, row in vanilla.iterrows():  # Wilson score interval, scipy's implementation as the reference
        reference = binomtest(round(row["accuracy"] * row["n"]), row["n"]).proportion_ci(0.95, method="wilson")
        assert (row["accuracy_lo"], row["accuracy_hi"]) == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert (vanilla.loc["Asian", "accuracy_lo"], vanilla.loc["Asian", "accuracy_hi"]) == pytest.approx(
        (0.4905, 0.7004), abs=1e-4
    )
    assert len(groups) == 15 and set(groups["method"]) == set(FIVE_METHODS)


@pytest.mark.parametrize("successes, n", [(0, 10), (10, 10), (1, 3), (97, 100)])
def test_wilson_interval_matches_scipy_at_the_edges(successes, n):
    reference = binomtest(successes, n).proportion_ci(0.95, method="wilson")
    assert engine.wilson_interval(successes, n) == pytest.approx((reference.low, reference.high), abs=1e-12)
    assert engine.wilson_interval(0, 0) == (None, None)


def test_intersection_attribute_and_split(tmp_path):
    tpr = dict(zip(SKIN_GROUPS, (0.4, 0.6, 0.8, 0.7, 0.8, 0.9), strict=True))
    run = read_run(write_run(tmp_path, "skin-vanilla", skin_predictions(tpr), task="skin", attribute="sex+age_group"))
    comparison = compare_runs([run], "sex+age_group", bootstrap=0)
    row = comparison.table.iloc[0]
    assert row["delta_tpr"] == pytest.approx(0.5, abs=1e-12)
    groups = comparison.groups.set_index("group")
    assert list(groups.index) == sorted(SKIN_GROUPS)
    assert groups["tpr"].to_dict() == pytest.approx(tpr)
    assert groups["n_pos"].to_dict() == dict.fromkeys(SKIN_GROUPS, 40)
    assert set(comparison.margins["group"]) == set(SKIN_GROUPS) and len(comparison.margins) == 600


def test_val_split_reads_only_val_rows(five_runs):
    comparison = compare_runs(five_runs[:1], "race", split="val", bootstrap=0)
    assert comparison.table.iloc[0]["n"] == 99
    assert comparison.table.iloc[0]["accuracy"] == pytest.approx(0.5, abs=0.02)


def test_run_without_the_attribute_is_skipped_with_a_note(five_runs, tmp_path):
    tpr = dict(zip(SKIN_GROUPS, (0.4, 0.6, 0.8, 0.7, 0.8, 0.9), strict=True))
    skin = read_run(
        write_run(
            tmp_path / "skin", "skin-cmac", skin_predictions(tpr), task="skin", method="cmac", attribute="sex+age_group"
        )
    )
    comparison = compare_runs([*five_runs[:2], skin], "race", bootstrap=0)
    assert list(comparison.table["run"]) == ["fundus-vanilla", "fundus-fr"]
    assert comparison.skipped == ("skin-cmac",)
    assert (
        engine.MISSING_ATTRIBUTE.format(
            run="skin-cmac", columns="'race'", attribute="race", available="sex, age_group, fitzpatrick"
        )
        in comparison.notes
    )


def test_run_with_bad_predictions_is_skipped_with_metrics_message(five_runs):
    path = five_runs[1].path / "predictions.csv"
    frame = pd.read_csv(path)
    frame.loc[3, "prob"] = 1.7
    frame.to_csv(path, index=False)
    comparison = compare_runs(five_runs[:2], "race", bootstrap=0)
    assert comparison.skipped == ("fundus-fr",)
    reason = metrics.PROB_NOT_PROBABILITY.format(count=1, values="1.7")
    assert engine.UNUSABLE_RUN.format(run="fundus-fr", reason=reason) in comparison.notes


def test_only_skipped_runs_give_an_empty_comparison_and_empty_figures(five_runs):
    comparison = compare_runs(five_runs[:1], "fitzpatrick", bootstrap=0)
    assert comparison.empty and comparison.skipped == ("fundus-vanilla",)
    for figure in (group_accuracy_figure(comparison), frontier_figure(comparison), margin_figure(comparison)):
        assert len(figure.data) == 0
        assert figure.layout.annotations[0].text.startswith("No runs to show: run 'fundus-vanilla' skipped")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(runs=[], attribute="race"), engine.NO_RUNS),
        (dict(attribute="race+"), engine.BAD_ATTRIBUTE.format(value="race+")),
        (dict(attribute="race", split="train"), engine.BAD_SPLIT.format(choices="val, test", value="train")),
        (dict(attribute="race", bootstrap=-1), engine.BAD_NUMBER.format(name="bootstrap", value=-1)),
    ],
)
def test_bad_arguments_are_named(five_runs, arguments, message):
    arguments = {"runs": five_runs[:1], **arguments}
    with pytest.raises(CompareError) as error:
        compare_runs(arguments.pop("runs"), arguments.pop("attribute"), **arguments)
    assert str(error.value) == message


def test_notes_name_groups_without_positives_and_small_groups(tmp_path):
    frame = fundus_predictions(FIVE_METHODS["vanilla"])
    frame.loc[(frame["race"] == "Asian") & (frame["split"] == "test"), "label"] = 0
    run = read_run(write_run(tmp_path, "no-positives", frame))
    comparison = compare_runs([run], "race+age_group", bootstrap=0)
    assert (
        engine.UNDEFINED_GROUPS.format(
            run="no-positives",
            attribute="race+age_group",
            what="groups without positive labels",
            groups="Asian & 0-40, Asian & 40-60, Asian & 60+",
            metrics="TPR, AUC, ΔTPR and equalized odds",
        )
        in comparison.notes
    )
    small = comparison.groups[comparison.groups["n"] < 30]
    assert (
        engine.SMALL_GROUPS.format(
            run="no-positives",
            attribute="race+age_group",
            min_n=30,
            groups=", ".join(f"{g} (n={n})" for g, n in zip(small["group"], small["n"], strict=True)),
        )
        in comparison.notes
    )
    assert len(small) >= 2 and comparison.groups["small"].sum() == len(small)


# ---------------------------------------------------------------------------------------------------
# Cache


def test_a_run_that_predicts_one_class_gets_a_note(tmp_path):
    tpr = dict.fromkeys(SKIN_GROUPS, 0.0)
    run = read_run(
        write_run(
            tmp_path, "skin-cmac", skin_predictions(tpr, tnr=1.0), task="skin", method="cmac", attribute="sex+age_group"
        )
    )
    comparison = compare_runs([run], "sex+age_group", bootstrap=0)
    assert comparison.table.iloc[0]["delta_tpr"] == 0.0
    assert comparison.notes[0] == engine.ONE_CLASS.format(run="skin-cmac", label=0, split="test")


def test_cache_hit_returns_the_same_object_without_recomputation(five_runs):
    first = compare_runs(five_runs, "race", bootstrap=100)
    info = cache_info()
    assert info.run_misses == 5 and info.runs_cached == 5
    second = compare_runs(five_runs, "race", bootstrap=100)
    assert second is first
    after = cache_info()
    assert after.run_misses == 5 and after.comparison_hits == info.comparison_hits + 1


def test_cache_reuses_runs_across_selections_and_sees_a_rewritten_file(five_runs):
    compare_runs(five_runs[:3], "race", bootstrap=100)
    compare_runs(five_runs, "race", bootstrap=100)
    assert cache_info().run_misses == 5  # only the two new runs were computed
    other_seed = compare_runs(five_runs[:1], "race", bootstrap=100, seed=1)
    assert cache_info().run_misses == 6  # the seed is part of the key
    path = five_runs[0].path / "predictions.csv"
    frame = pd.read_csv(path)
    frame["prob"] = 1 - frame["prob"]
    frame.to_csv(path, index=False)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    rewritten = compare_runs(five_runs[:1], "race", bootstrap=100, seed=1)
    assert rewritten is not other_seed
    assert rewritten.table.iloc[0]["accuracy"] == pytest.approx(1 - other_seed.table.iloc[0]["accuracy"])


def test_a_demo_and_a_users_run_with_the_same_id_stay_apart(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "DEMO_RUNS_DIR", tmp_path / "demos")
    demo = read_run(write_run(tmp_path / "demos", "fundus-gr", fundus_predictions(FIVE_METHODS["gr"]), method="gr"))
    mine = read_run(write_run(tmp_path / "runs", "fundus-gr", fundus_predictions(FIVE_METHODS["vanilla"]), method="gr"))
    comparison = compare_runs([demo, mine], "race", bootstrap=0)
    assert list(comparison.table["run"]) == ["fundus-gr (demo)", "fundus-gr"]
    assert list(comparison.table["max_acc_gap"]) == pytest.approx([0.05, 0.20])
    bars = group_accuracy_figure(comparison)
    assert [trace.name for trace in bars.data] == ["fundus-gr (demo) · GR, w_max=10", "fundus-gr · GR, w_max=10"]
    assert list(bars.data[0].y) == pytest.approx([0.75, 0.775, 0.80])  # the demo's three groups only
    assert list(bars.data[1].y) == pytest.approx([0.60, 0.70, 0.80])
    assert set(comparison.reports) == {"fundus-gr (demo)", "fundus-gr"}


def test_a_run_picked_twice_is_computed_once_and_shown_once(five_runs):
    # The same run twice used to give every frame two rows per group, and the tab "The truth value of a
    # Series is ambiguous"; now it is one run, with a note saying so.
    comparison = compare_runs([five_runs[0], five_runs[1], five_runs[0], five_runs[0]], "race", bootstrap=0)
    assert list(comparison.table["run"]) == ["fundus-vanilla", "fundus-fr"]
    assert list(comparison.groups["run"]).count("fundus-vanilla") == 3  # its three race groups, once each
    assert set(comparison.margins["run"]) == {"fundus-vanilla", "fundus-fr"}
    assert len(comparison.margins) == 2 * len(comparison.margins[comparison.margins["run"] == "fundus-fr"])
    assert comparison.notes[0] == engine.PICKED_TWICE.format(run="fundus-vanilla")
    assert cache_info().run_misses == 2
    once = compare_runs([five_runs[0], five_runs[1]], "race", bootstrap=0)
    assert once.notes == () and once.table.equals(comparison.table)  # the same comparison, without the note
    assert [trace.name for trace in group_accuracy_figure(comparison).data] == [
        "fundus-vanilla · Vanilla",
        "fundus-fr · FR, λ=0.5",
    ]


def test_blas_threads_are_restored_after_a_comparison(five_runs):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [pool["num_threads"] for pool in threadpoolctl.threadpool_info()]
    compare_runs(five_runs, "race", bootstrap=50)
    assert [pool["num_threads"] for pool in threadpoolctl.threadpool_info()] == before


def test_cache_is_bounded(five_runs, monkeypatch):
    monkeypatch.setattr(engine, "_evaluate_job", functools.lru_cache(maxsize=3)(engine._evaluate_job.__wrapped__))
    monkeypatch.setattr(engine, "_compare_jobs", functools.lru_cache(maxsize=2)(engine._compare_jobs.__wrapped__))
    for seed in range(4):
        compare_runs(five_runs, "race", bootstrap=0, seed=seed)
    info = cache_info()
    assert info.runs_cached == 3 and info.comparisons_cached == 2


# ---------------------------------------------------------------------------------------------------
# Export


def test_csv_round_trips(five_runs):
    comparison = compare_runs(five_runs, "race", bootstrap=100)
    back = pd.read_csv(io.StringIO(to_csv(comparison)))
    assert list(back.columns) == engine.table_columns()
    expected = comparison.table.astype({"lambda": float, "w_max": float})
    pd.testing.assert_frame_equal(back, expected, check_dtype=False, check_exact=True)
    groups = pd.read_csv(io.StringIO(to_csv(comparison, which="groups")))
    pd.testing.assert_frame_equal(groups, comparison.groups, check_dtype=False, check_exact=True)


def test_display_table_shows_intervals(five_runs):
    comparison = compare_runs(five_runs[:1], "race", bootstrap=100)
    shown = display_table(comparison)
    row = comparison.table.iloc[0]
    assert list(shown.columns)[:8] == ["Run", "Flags", "Method", "λ", "w_max", "Seed", "Trained on", "n"]
    assert shown.iloc[0]["Flags"] == ""  # a sound run carries no flag
    assert shown.iloc[0]["MaxAccGap"] == (
        f"{row['max_acc_gap']:.3f} [{row['max_acc_gap_lo']:.3f}, {row['max_acc_gap_hi']:.3f}]"
    )
    assert shown.iloc[0]["Method"] == "Vanilla" and shown.iloc[0]["λ"] == ""


# ---------------------------------------------------------------------------------------------------
# Figures


def test_group_accuracy_bars_one_trace_per_run_with_wilson_error_bars(five_runs):
    comparison = compare_runs(five_runs, "race", bootstrap=0)
    figure = group_accuracy_figure(comparison)
    assert isinstance(figure, go.Figure) and figure.layout.barmode == "group"
    assert [trace.name for trace in figure.data] == [
        "fundus-vanilla · Vanilla",
        "fundus-fr · FR, λ=0.5",
        "fundus-gr · GR, w_max=10",
        "fundus-hybrid · Hybrid, λ=0.5, w_max=10",
        "fundus-cmac · CMAC-MMD, λ=0.5",
    ]
    gr = figure.data[2]
    assert list(gr.x) == ["Asian", "Black", "White"] and list(gr.y) == pytest.approx([0.75, 0.775, 0.80])
    groups = comparison.groups[comparison.groups["run"] == "fundus-gr"]
    assert list(gr.error_y.array) == pytest.approx(list(groups["accuracy_hi"] - groups["accuracy"]))
    assert gr.marker.color == METHOD_COLORS["gr"]
    assert len({trace.marker.color for trace in figure.data}) == 5
    assert figure.layout.title.text == "Accuracy per race group (test split)"
    assert figure.layout.yaxis.title.text == "Accuracy (95% Wilson interval)"


def test_figures_list_methods_in_one_order_whatever_the_selection_order(five_runs):
    comparison = compare_runs(five_runs[::-1], "race", bootstrap=0)
    assert list(comparison.table["method"]) == list(FIVE_METHODS)[::-1]  # the table keeps the caller's order
    bars = group_accuracy_figure(comparison)
    assert [trace.name.split(" ")[0] for trace in bars.data] == [f"fundus-{m}" for m in FIVE_METHODS]
    frontier = frontier_figure(comparison)
    assert [trace.name for trace in frontier.data] == ["Vanilla", "FR", "GR", "Hybrid", "CMAC-MMD"]


def test_second_run_of_a_method_is_hatched(five_runs, tmp_path):
    again = read_run(
        write_run(
            tmp_path / "more", "fundus-gr-seed1", fundus_predictions(FIVE_METHODS["gr"], seed=9), method="gr", seed=1
        )
    )
    figure = group_accuracy_figure(compare_runs([*five_runs, again], "race", bootstrap=0))
    shapes = {trace.name.split(" ")[0]: trace.marker.pattern.shape for trace in figure.data}
    assert shapes["fundus-gr"] == "" and shapes["fundus-gr-seed1"] == "/"


def test_margin_violins_one_trace_per_group(five_runs):
    comparison = compare_runs(five_runs, "race", bootstrap=0)
    figure = margin_figure(comparison, runs=["fundus-vanilla", "fundus-gr"])
    assert [trace.name for trace in figure.data] == ["Asian", "Black", "White"]
    assert all(trace.type == "violin" for trace in figure.data)
    asian = figure.data[0]
    assert set(asian.x) == {"fundus-vanilla · Vanilla", "fundus-gr · GR, w_max=10"}
    expected = comparison.margins.query("run in ['fundus-vanilla', 'fundus-gr'] and group == 'Asian'")["margin"]
    assert sorted(asian.y) == pytest.approx(sorted(expected))
    # misclassified samples (margin < 0) of vanilla's Asian group: 40 % of 80
    vanilla = comparison.margins.query("run == 'fundus-vanilla' and group == 'Asian'")
    assert (vanilla["margin"] < 0).sum() == 32


def test_margin_kde_one_curve_per_run_and_group_positives_only(five_runs):
    comparison = compare_runs(five_runs, "race", bootstrap=0)
    figure = margin_figure(comparison, runs=["fundus-vanilla", "fundus-cmac"], kind="kde", label=1)
    assert len(figure.data) == 6
    assert [trace.name for trace in figure.data if trace.showlegend] == ["Asian", "Black", "White"]
    assert figure.layout.title.text == "Certainty margin per race group, positives (label 1)"
    first = figure.data[0]
    values = comparison.margins.query("run == 'fundus-vanilla' and group == 'Asian' and label == 1")["margin"]
    assert list(first.y) == pytest.approx(list(gaussian_kde(values.to_numpy())(np.asarray(first.x))))


def test_frontier_one_trace_per_method_with_interval_error_bars(five_runs):
    comparison = compare_runs(five_runs, "race", bootstrap=100)
    figure = frontier_figure(comparison, gap="max_acc_gap", metric="auc")
    assert [trace.name for trace in figure.data] == ["Vanilla", "FR", "GR", "Hybrid", "CMAC-MMD"]
    row = comparison.table.set_index("method").loc["gr"]
    gr = figure.data[2]
    assert gr.x[0] == row["max_acc_gap"] and gr.y[0] == row["auc"]
    assert gr.error_x.array[0] == pytest.approx(row["max_acc_gap_hi"] - row["max_acc_gap"])
    assert gr.error_x.arrayminus[0] == pytest.approx(row["max_acc_gap"] - row["max_acc_gap_lo"])
    assert gr.error_y.array[0] == pytest.approx(row["auc_hi"] - row["auc"])
    assert figure.layout.xaxis.title.text == "MaxAccGap on race (lower is fairer; 95% bootstrap range)"
    assert figure.layout.yaxis.title.text == "AUC (95% bootstrap interval)"
    # bounded by the metric's range, legend below the plot, no overlapping text labels
    low, high = figure.layout.xaxis.range
    assert 0 <= low <= comparison.table["max_acc_gap_lo"].min()
    assert comparison.table["max_acc_gap_hi"].max() <= high <= 1
    assert figure.layout.legend.orientation == "h" and all(trace.mode == "markers" for trace in figure.data)
    floor = comparison.table["max_acc_gap_floor"].mean()
    assert [shape.x0 for shape in figure.layout.shapes] == [pytest.approx(floor)]  # the noise-floor line
    with pytest.raises(CompareError) as error:
        frontier_figure(comparison, gap="gap")
    assert str(error.value) == engine.UNKNOWN_CHOICE.format(name="gap", choices=", ".join(metrics.GAPS), value="gap")


# ---------------------------------------------------------------------------------------------------
# Sweeps on the frontier

SWEEP_POINTS = {  # race accuracies of three FR runs of one sweep: B beats C on both axes, A is the fairest
    0.1: {"White": 0.76, "Black": 0.75, "Asian": 0.75},  # A: gap ~0.01, accuracy ~0.76
    0.5: {"White": 0.82, "Black": 0.78, "Asian": 0.75},  # B: gap ~0.07, accuracy ~0.80
    1.0: {"White": 0.80, "Black": 0.70, "Asian": 0.65},  # C: gap ~0.15, accuracy ~0.76: dominated by B
}


def test_the_pareto_front_keeps_the_points_no_other_beats_from_the_fairest_on():
    gaps = [0.10, 0.02, 0.05, 0.05, 0.20, float("nan")]
    accuracy = [0.70, 0.60, 0.75, 0.72, 0.80, 0.99]
    assert pareto_front(gaps, accuracy) == [1, 2, 4]  # 0 and 3 are beaten by 2; a missing figure is on no front
    assert pareto_front([0.9, 0.8], [0.7, 0.8], lower_gap_is_fairer=False) == [0, 1]  # ES-AUC: higher is fairer
    assert pareto_front([], []) == []


def test_a_sweeps_runs_are_one_trace_joined_along_its_pareto_front(five_runs, tmp_path):
    swept = [
        read_run(
            write_run(
                tmp_path / "sweep",
                f"fr-l{lam:g}",
                fundus_predictions(rates, seed=20 + i),
                method="fr",
                lam=lam,
                sweep="fundus-fr-sweep-1",
            )
        )
        for i, (lam, rates) in enumerate(SWEEP_POINTS.items())
    ]
    comparison = compare_runs([*five_runs, *swept], "race", bootstrap=0)
    assert list(comparison.table["sweep"].iloc[-3:]) == ["fundus-fr-sweep-1"] * 3
    assert comparison.table["sweep"].iloc[:5].isna().all()
    figure = frontier_figure(comparison)
    name = SWEEP_NAME.format(sweep="fundus-fr-sweep-1", method="FR")
    assert [trace.name for trace in figure.data] == [
        "Vanilla",
        "FR",
        "GR",
        "Hybrid",
        "CMAC-MMD",
        name,
        f"{name}: Pareto front",
    ]  # the sweep's runs are not among the single FR run's
    points, front = figure.data[5], figure.data[6]
    assert len(points.x) == 3 and points.marker.symbol == "diamond" and points.marker.color == METHOD_COLORS["fr"]
    rows = comparison.table.set_index("run")
    assert list(front.x) == [rows.loc["fr-l0.1", "max_acc_gap"], rows.loc["fr-l0.5", "max_acc_gap"]]
    assert list(front.y) == [rows.loc["fr-l0.1", "accuracy"], rows.loc["fr-l0.5", "accuracy"]]
    assert front.mode == "lines" and front.legendgroup == points.legendgroup == name and not front.showlegend
