"""inference.compare_stats on the shipped demo runs: paired tests against a reference, seeds aggregated,
verdicts, and Compare's gaps against each run's own eval.json (the one small-group rule)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from inference import compare_stats
from inference.compare_engine import clear_cache, compare_runs
from training import metrics, rundir
from training.metrics import paired

DEMOS = {run.run_id: run for run in rundir.list_runs(rundir.DEMO_RUNS_DIR)}
FIGURES = ("accuracy", "auc", *metrics.GAPS)


@pytest.fixture(autouse=True)
def empty_cache():
    clear_cache()
    yield
    clear_cache()


def demo(run_id: str) -> rundir.RunInfo:
    return DEMOS[run_id]


def copy_run(
    run: rundir.RunInfo, folder, name: str, *, seed: int | None = None, change=None, **config_changes
) -> rundir.RunInfo:
    """A copy of a run under another id (and seed, and config values: another setting), its predictions
    changed by `change(frame) -> frame`."""
    target = folder / name
    shutil.copytree(run.path, target)
    config = json.loads((target / rundir.CONFIG).read_text())
    config.update(run_id=name, run_name=name, **({"seed": seed} if seed is not None else {}), **config_changes)
    (target / rundir.CONFIG).write_text(json.dumps(config))
    if change is not None:
        frame = pd.read_csv(target / rundir.PREDICTIONS)
        change(frame).to_csv(target / rundir.PREDICTIONS, index=False)
    return rundir.read_run(target)


def row(versus: compare_stats.Versus, setting_prefix: str, figure: str) -> dict:
    table = versus.table
    chosen = table[table["setting"].str.startswith(setting_prefix) & (table["figure"] == figure)]
    assert len(chosen) == 1, chosen
    return chosen.iloc[0].to_dict()


def cli_paired(run: rundir.RunInfo, reference: rundir.RunInfo, attribute: str, bootstrap: int, seed: int = 0):
    """What `python -m training.metrics RUN --reference REF` computes (training.metrics.paired)."""
    a, b = paired.join_runs(
        metrics.read_predictions(run.path / rundir.PREDICTIONS),
        metrics.read_predictions(reference.path / rundir.PREDICTIONS),
    )
    return paired.paired_comparison(
        a,
        b,
        [attribute],
        threshold=run.threshold,
        reference_threshold=reference.threshold,
        bootstrap=bootstrap,
        seed=seed,
        cluster_column=metrics.cluster_of(a),
    )


@pytest.mark.parametrize(
    ("task", "attribute"), [("fundus", "race"), ("skin", "sex+age_group")], ids=["fundus-race", "skin-lesions"]
)
def test_the_paired_row_is_the_paired_bootstrap_of_the_command_line(task, attribute):
    # Runs scored on the same test rows share evaluate's resamples, so replicate differences are the
    # paired bootstrap; on skin both resample whole lesions (the predictions' cluster column).
    runs = [demo(f"{task}-{m}") for m in ("vanilla", "hybrid", "gr")]
    comparison = compare_runs(runs, attribute, bootstrap=300, permutations=0)
    versus = compare_stats.versus(comparison)
    assert versus.reference.runs == (runs[0].label(),)
    expected = cli_paired(runs[1], runs[0], attribute, 300)
    for figure in FIGURES:
        got = row(versus, "Hybrid", figure)
        want = expected["overall" if figure in ("accuracy", "auc") else attribute][figure]
        assert got["difference"] == pytest.approx(want["difference"], abs=1e-12)
        assert [got["ci_lo"], got["ci_hi"]] == pytest.approx(want["ci"], abs=1e-12)
        assert got["p_value"] == pytest.approx(want["p_value"], abs=1e-12)
        assert got["seeds"] == 1 and got["runs"] == runs[1].label()


def test_runs_on_reordered_rows_are_joined_by_id_with_the_same_result(tmp_path):
    vanilla, hybrid = demo("skin-vanilla"), demo("skin-hybrid")
    shuffled = copy_run(vanilla, tmp_path, "skin-vanilla-shuffled", change=lambda f: f.sample(frac=1, random_state=3))
    aligned = compare_stats.versus(compare_runs([vanilla, hybrid], "sex+age_group", bootstrap=200, permutations=0))
    joined = compare_stats.versus(compare_runs([shuffled, hybrid], "sex+age_group", bootstrap=200, permutations=0))
    for figure in FIGURES:
        a, b = row(aligned, "Hybrid", figure), row(joined, "Hybrid", figure)
        assert (b["difference"], b["ci_lo"], b["ci_hi"], b["p_value"]) == pytest.approx(
            (a["difference"], a["ci_lo"], a["ci_hi"], a["p_value"]), abs=1e-12
        )


def test_seeds_of_one_setting_are_paired_seed_by_seed_and_averaged(tmp_path):
    vanilla, hybrid = demo("fundus-vanilla"), demo("fundus-hybrid")
    rng = np.random.default_rng(0)

    def jitter(frame):
        return frame.assign(prob=(frame["prob"] + rng.normal(0, 0.05, len(frame))).clip(0, 1))

    vanilla_1 = copy_run(vanilla, tmp_path, "fundus-vanilla-s1", seed=1, change=jitter)
    hybrid_1 = copy_run(hybrid, tmp_path, "fundus-hybrid-s1", seed=1, change=jitter)
    together = compare_runs([vanilla, hybrid, vanilla_1, hybrid_1], "race", bootstrap=200)
    assert [s.seeds for s in compare_stats.settings_of(together)] == [(1, 42), (1, 42)]
    both = compare_stats.versus(together)
    seed_42 = compare_stats.versus(compare_runs([vanilla, hybrid], "race", bootstrap=200))
    seed_1 = compare_stats.versus(compare_runs([vanilla_1, hybrid_1], "race", bootstrap=200))
    for figure in FIGURES:
        got = row(both, "Hybrid", figure)
        assert got["seeds"] == 2 and got["runs"] == f"{hybrid_1.label()}, {hybrid.label()}"
        mean = (row(seed_42, "Hybrid", figure)["difference"] + row(seed_1, "Hybrid", figure)["difference"]) / 2
        assert got["difference"] == pytest.approx(mean, abs=1e-12)
        assert got["ci_lo"] <= got["difference"] <= got["ci_hi"]
    assert both.reference.runs == (vanilla_1.label(), vanilla.label())


def test_a_gap_closed_by_lowering_the_best_group_is_levelling_down(tmp_path):
    vanilla = demo("fundus-vanilla")

    def worse_for_white(frame):
        """Flip enough of White's right answers to bring White's accuracy down to the other groups' mean."""
        test = frame[frame["split"] == "test"]
        right = (test["prob"] >= vanilla.threshold) == (test["label"] == 1)
        accuracy = right.groupby(test["race"]).mean()
        white = test["race"] == "White"
        excess = accuracy["White"] - accuracy.drop("White").mean()
        flipped = test.index[white & right][: round(excess * white.sum())]
        frame.loc[flipped, "prob"] = 1 - frame.loc[flipped, "prob"]
        return frame

    lowered = copy_run(vanilla, tmp_path, "fundus-lowered", change=worse_for_white, epochs=5)
    versus = compare_stats.versus(compare_runs([vanilla, lowered], "race", bootstrap=300), vanilla.label())
    assert versus.reference.caption == "Vanilla" and set(versus.table["setting"]) == {"Vanilla #2"}
    gap = row(versus, "Vanilla", "max_acc_gap")
    assert gap["difference"] < 0 and gap["p_value"] < 0.05
    assert gap["verdict"] == compare_stats.LEVELLED_DOWN  # smaller, but the worst-off group gained nothing
    assert row(versus, "Vanilla", "accuracy")["verdict"] == compare_stats.LOWER


def test_a_degenerate_run_gets_no_verdict_and_an_unknown_reference_is_named(tmp_path):
    vanilla = demo("skin-vanilla")
    broken = copy_run(vanilla, tmp_path, "skin-broken", epochs=5)
    payload = json.loads((broken.path / rundir.EVAL).read_text())
    payload["report"]["guard"] = {"degenerate": True, "reasons": ["near-constant probabilities (sd 0.0001 < 0.02)"]}
    (broken.path / rundir.EVAL).write_text(json.dumps(payload))
    broken = rundir.read_run(broken.path)
    comparison = compare_runs([vanilla, broken], "sex+age_group", bootstrap=50, permutations=0)
    versus = compare_stats.versus(comparison, vanilla.label())
    assert set(versus.table["verdict"]) == {compare_stats.NOT_JUDGED} and versus.table["flagged"].all()
    with pytest.raises(ValueError, match="reference 'nope' is not among the compared runs"):
        compare_stats.versus(comparison, "nope")


def test_equivalence_uses_the_stated_margin():
    runs = [demo("fundus-vanilla"), demo("fundus-gr")]
    comparison = compare_runs(runs, "race", bootstrap=300, permutations=0)
    narrow = row(compare_stats.versus(comparison, margins={"accuracy": 1e-6}), "GR", "accuracy")
    wide = row(compare_stats.versus(comparison, margins={"accuracy": 0.5}), "GR", "accuracy")
    assert narrow["equivalent"] is False and wide["equivalent"] is True
    assert wide["verdict"] == compare_stats.EQUIVALENT.format(margin=0.5)
    assert -0.5 < wide["equivalence_lo"] <= wide["equivalence_hi"] < 0.5  # the 90 % interval (α = 0.05)
    assert wide["ci_lo"] <= wide["equivalence_lo"] and wide["equivalence_hi"] <= wide["ci_hi"]


@pytest.mark.parametrize("task", ["fundus", "skin"])
def test_compare_gaps_match_each_demo_runs_eval_json(task):
    # The one small-group rule: eval.json and Compare leave the same groups out of the same gaps.
    attribute = "race+ethnicity" if task == "fundus" else "sex+age_group"
    runs = [run for run in DEMOS.values() if run.task == task]
    comparison = compare_runs(runs, attribute, bootstrap=0, permutations=0)
    for run in runs:
        own = run.eval()["report"]["attributes"][attribute]
        shown = comparison.table.set_index("run").loc[run.label()]
        for gap in metrics.GAPS:
            assert shown[gap] == pytest.approx(own[gap], abs=1e-9), (run.run_id, gap)
        left_out = comparison.groups[(comparison.groups["run"] == run.label()) & comparison.groups["small"]]
        assert set(left_out["group"]) == {g for g, f in own["groups"].items() if not f["in_gaps"]}
        assert left_out["excluded"].str.startswith("left out of the gaps: n < 30").all()
    assert not comparison.table[list(metrics.GAPS[:3])].isin([1.0]).any().any()  # no more 1.00 for every method


def test_noise_floor_is_in_the_row_and_equals_the_permutation_test():
    run = demo("skin-cmac")
    comparison = compare_runs([run], "sex+age_group", bootstrap=0, permutations=100, seed=5)
    frame = metrics.select_split(metrics.read_predictions(run.path / rundir.PREDICTIONS), "test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        expected = paired.noise_floor(
            frame, "sex+age_group", threshold=run.threshold, permutations=100, seed=5, cluster_column="cluster"
        )
    shown = comparison.table.iloc[0]
    for gap in metrics.GAPS:
        assert shown[f"{gap}_floor"] == pytest.approx(expected[gap]["expected"])
        assert shown[f"{gap}_floor_p"] == pytest.approx(expected[gap]["p_value"])


def test_calibration_and_roc_per_group_use_each_groups_own_figures():
    from inference.compare_figures import calibration_figure

    runs = [demo("fundus-vanilla"), demo("fundus-gr")]
    comparison = compare_runs(runs, "race", bootstrap=0, permutations=0)
    figure = calibration_figure(comparison)
    groups = comparison.groups.set_index(["run", "group"])
    reliability = [t for t in figure.data if t.mode == "lines+markers"]
    roc = [t for t in figure.data if t.mode == "lines" and t.name in {"Asian", "Black", "White"}]
    assert len(reliability) == len(roc) == 6  # 2 runs × 3 groups, in each panel kind
    for trace in reliability:
        assert min(trace.x) >= 0 and max(trace.x) <= 1 and sum(trace.customdata) > 0
    first = reliability[0]
    ece = groups.loc[(runs[0].label(), first.name), "ece"]
    assert f"ECE {ece:.3f}" in first.hovertemplate
    own = runs[0].eval()["report"]["attributes"]["race"]["groups"][first.name]["ece"]
    assert ece == pytest.approx(own, abs=1e-9)  # the same figure as the run's eval.json


def test_the_config_diff_lists_only_what_differs(tmp_path):
    from inference import compare_view

    vanilla = demo("fundus-vanilla")
    longer = copy_run(vanilla, tmp_path, "fundus-longer", epochs=6)
    diff = compare_view.config_diff([vanilla, longer])
    assert diff.columns.tolist() == ["Setting", vanilla.label(), longer.label()]
    assert diff["Setting"].tolist() == ["epochs"] and diff.iloc[0, 1:].tolist() == ["4", "6"]
    with_gr = compare_view.config_diff([vanilla, demo("fundus-gr")])
    assert with_gr.set_index("Setting").loc["w_max"].tolist() == [compare_view.NOT_USED, "10.0"]
