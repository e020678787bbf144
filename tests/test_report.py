"""inference.report: tables carry metrics.evaluate's numbers and each verdict follows the data."""

from __future__ import annotations

import warnings

import pytest

from inference import report
from inference.compare_engine import clear_cache, wilson_interval
from inference.report import NOT_REPRODUCED, NOT_TESTABLE, REPRODUCED, assess_claims, build_report, collect
from tests.test_compare import FIVE_METHODS, SKIN_GROUPS, fundus_predictions, skin_predictions, write_run
from training import metrics, rundir
from training.rundir import list_runs

BOOTSTRAP = 100
VANILLA_TPR = dict(zip(SKIN_GROUPS, (0.4, 0.6, 0.8, 0.7, 0.8, 0.9), strict=True))  # ΔTPR 0.50, as CMAC-MMD's vanilla
CMAC_TPR = dict(zip(SKIN_GROUPS, (0.7, 0.75, 0.8, 0.75, 0.8, 0.85), strict=True))  # ΔTPR 0.15: −70 %


@pytest.fixture(autouse=True)
def empty_cache():
    clear_cache()
    yield
    clear_cache()


def write_fundus(root, accuracies=FIVE_METHODS):
    for i, (method, accuracy) in enumerate(accuracies.items()):
        write_run(root, f"fundus-{method}", fundus_predictions(accuracy, seed=i), method=method)


def write_skin(root, cmac_tpr=CMAC_TPR, **cmac):
    write_run(root, "skin-vanilla", skin_predictions(VANILLA_TPR, seed=1), task="skin", attribute="sex+age_group")
    write_run(
        root,
        "skin-cmac",
        skin_predictions(cmac_tpr, seed=2, **cmac),
        task="skin",
        method="cmac",
        attribute="sex+age_group",
    )


def claim(root, starts: str) -> report.Claim:
    evidence = collect(list_runs(root), bootstrap=BOOTSTRAP)
    found = [c for c in assess_claims(evidence) if c.title.startswith(starts)]
    assert len(found) == 1, [c.title for c in assess_claims(evidence)]
    return found[0]


def evaluated(path, attribute):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
        return metrics.evaluate(
            metrics.read_predictions(path / "predictions.csv"), [attribute], bootstrap=BOOTSTRAP, split="test"
        )


def percent_cell(value: float, interval: list[float]) -> str:
    return f"{100 * value:.2f} [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"


def row_of(text: str, heading: str, first_cell: str) -> list[str]:
    """Cells of the table row starting with ``first_cell`` in the section under ``heading``."""
    section = text[text.index(heading) :]
    line = next(line for line in section.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


# ---------------------------------------------------------------------------------------------------
# Tables


def test_table1_cells_are_metrics_evaluate_figures_with_intervals(tmp_path):
    write_fundus(tmp_path)
    text = build_report(list_runs(tmp_path), bootstrap=BOOTSTRAP)
    for method, caption in (
        ("vanilla", "Vanilla"),
        ("gr", "GR (w_max=10, on race)"),
        ("hybrid", "Hybrid (λ=0.5, w_max=10, on race)"),
    ):
        race = evaluated(tmp_path / f"fundus-{method}", "race")
        ethnicity = evaluated(tmp_path / f"fundus-{method}", "ethnicity")
        cells = row_of(text, "### Table 1", caption)
        overall = race["overall"]
        assert cells[1] == f"fundus-{method}"
        assert cells[2] == percent_cell(overall["accuracy"], overall["ci"]["accuracy"])
        assert cells[3] == "{:.3f} [{:.3f}, {:.3f}]".format(overall["auc"], *overall["ci"]["auc"])
        for cell, attribute in zip(cells[4:6], (race, ethnicity), strict=True):
            gap = attribute["attributes"][next(iter(attribute["attributes"]))]
            assert cell == percent_cell(gap["max_acc_gap"], gap["ci"]["max_acc_gap"])
    assert row_of(text, "### Table 1", "GR (w_max=10, on race)")[4].startswith("5.00 [")
    assert row_of(text, "### Table 1", "Vanilla")[4].startswith("20.00 [")
    assert row_of(text, "### Table 1", "Vanilla")[2].startswith("75.00 [")  # (320 + 112 + 48) / 640
    assert row_of(text, "### Table 1", "GR (w_max=10, on race)")[6] == "53.15 / 1.17"


def test_table3_per_group_accuracy_with_n_and_wilson_interval(tmp_path):
    write_fundus(tmp_path)
    text = build_report(list_runs(tmp_path), bootstrap=BOOTSTRAP)
    header = row_of(text, "### Table 3", "Setting")
    assert header == ["Setting", "Asian (n=80)", "Black (n=160)", "White (n=400)"]
    low, high = wilson_interval(48, 80)
    assert row_of(text, "### Table 3", "Vanilla")[1] == f"60.0 [{100 * low:.1f}, {100 * high:.1f}]"
    assert row_of(text, "### Table 3", "GR (w_max=10, on race)")[2].startswith("77.5 [")


def test_several_seeds_give_mean_and_spread(tmp_path):
    write_fundus(tmp_path, {"vanilla": FIVE_METHODS["vanilla"]})
    write_run(
        tmp_path,
        "fundus-gr-s1",
        fundus_predictions({"White": 0.80, "Black": 0.775, "Asian": 0.75}, seed=5),
        method="gr",
        seed=1,
    )
    write_run(
        tmp_path,
        "fundus-gr-s2",
        fundus_predictions({"White": 0.80, "Black": 0.775, "Asian": 0.70}, seed=6),
        method="gr",
        seed=2,
    )
    text = build_report(list_runs(tmp_path), bootstrap=BOOTSTRAP)
    cells = row_of(text, "### Table 1", "GR (w_max=10, on race)")
    assert cells[1] == "fundus-gr-s1, fundus-gr-s2"
    assert cells[4] == "7.50 ± 3.54 (2 seeds)"  # gaps 5 and 10: mean 7.5, sd 5/√2
    gr = claim(tmp_path, "GR-LoRA")
    assert gr.change == pytest.approx((0.075 - 0.20) / 0.20)  # −62.5 %: below the paper's 69 %
    assert gr.verdict == NOT_REPRODUCED


def test_lambda_ablation_not_run_then_run(tmp_path):
    write_fundus(tmp_path)
    text = build_report(list_runs(tmp_path), bootstrap=BOOTSTRAP)
    assert "FR: not run (needs runs at two or more λ; found λ: 0.5)." in text
    assert claim(tmp_path, "FR-LoRA's MaxAccGap").verdict == NOT_TESTABLE
    for lam, asian in ((0.1, 0.75), (1.0, 0.775)):
        write_run(
            tmp_path,
            f"fundus-fr-{lam:g}",
            fundus_predictions({"White": 0.80, "Black": 0.775, "Asian": asian}, seed=7),
            method="fr",
            lam=lam,
        )
    clear_cache()
    text = build_report(list_runs(tmp_path), bootstrap=BOOTSTRAP)
    assert row_of(text, "### Table 2", "0.1")[2].startswith("5.00 [")
    assert row_of(text, "### Table 2", "0.1")[3] == "+75.0 %"
    assert row_of(text, "### Table 2", "0.1")[4] == "53.75 / 2.10"
    assert row_of(text, "### Table 2", "0.5")[2].startswith("9.00 [")  # FR at λ=0.5: 0.79 − 0.70
    assert row_of(text, "### Table 2", "0 (Vanilla)")[2].startswith("20.00 [")
    lam_claim = claim(tmp_path, "FR-LoRA's MaxAccGap")
    assert lam_claim.verdict == REPRODUCED  # 9.00 at λ=0.5 is above 5.00 and 2.50


def test_seed_004_table_has_auc_delta_tpr_and_subgroup_tpr(tmp_path):
    write_skin(tmp_path)
    text = build_report(list_runs(tmp_path), bootstrap=BOOTSTRAP)
    expected = evaluated(tmp_path / "skin-cmac", "sex+age_group")
    gaps = expected["attributes"]["sex+age_group"]
    cells = row_of(text, "### Dermatology", "CMAC-MMD (λ=0.5, on sex+age_group)")
    assert cells[2] == "{:.3f} [{:.3f}, {:.3f}]".format(expected["overall"]["auc"], *expected["overall"]["ci"]["auc"])
    assert cells[3] == "{:.3f} [{:.3f}, {:.3f}]".format(gaps["delta_tpr"], *gaps["ci"]["delta_tpr"])
    assert cells[3].startswith("0.150 [") and cells[6] == "0.97 / 0.26"
    subgroups = row_of(text, "TPR per subgroup", "Setting")
    assert subgroups[1] == "Female & 0-40 (n_pos=40)"
    assert row_of(text, "TPR per subgroup", "Vanilla")[1:] == ["0.40", "0.60", "0.80", "0.70", "0.80", "0.90"]


# ---------------------------------------------------------------------------------------------------
# Verdicts follow the data


def test_gr_verdict_flips_with_the_data(tmp_path):
    write_fundus(tmp_path / "smaller")  # GR gap 0.05 against 0.20: −75 %
    gr = claim(tmp_path / "smaller", "GR-LoRA")
    assert gr.verdict == REPRODUCED and gr.change == pytest.approx(-0.75)
    assert "Worst-off group's accuracy: 60.0 % → 75.0 %; best group's: 80.0 % → 80.0 %." in gr.text
    assert "relative change of −75.0 % (the claim needs ≤ −69 %)" in gr.text
    clear_cache()
    same = {**FIVE_METHODS, "gr": FIVE_METHODS["vanilla"]}
    write_fundus(tmp_path / "same", same)
    gr = claim(tmp_path / "same", "GR-LoRA")
    assert gr.verdict == NOT_REPRODUCED and gr.change == pytest.approx(0.0)
    assert gr.overlap is True and "The gap does not shrink." in gr.text


def test_hybrid_race_claim_and_interval_overlap(tmp_path):
    write_fundus(tmp_path / "close")  # Hybrid gap 0.03 against 0.20: −85 %, but Asian has only 80 samples
    hybrid = claim(tmp_path / "close", "Hybrid-LoRA")
    assert hybrid.verdict == REPRODUCED and hybrid.change == pytest.approx(-0.85)
    assert hybrid.overlap is True and "intervals overlap, so one test set cannot rule out" in hybrid.text
    clear_cache()
    write_fundus(tmp_path / "far", {**FIVE_METHODS, "vanilla": {"White": 0.85, "Black": 0.70, "Asian": 0.50}})
    hybrid = claim(tmp_path / "far", "Hybrid-LoRA")
    assert hybrid.verdict == REPRODUCED and hybrid.change == pytest.approx((0.03 - 0.35) / 0.35)
    assert hybrid.overlap is False and "The two 95 % bootstrap intervals do not overlap." in hybrid.text
    assert hybrid.text.startswith("Reproduced. Hybrid (λ=0.5, w_max=10, on race) has MaxAccGap on race (%) 3.00 [")
    assert "against Vanilla's 35.00 [" in hybrid.text
    assert "relative change of −91.4 % (the claim needs ≤ −60 %)" in hybrid.text


def test_accuracy_cost_claim_flips(tmp_path):
    write_fundus(tmp_path / "free")  # every fairness method is at least as accurate as Vanilla (0.75)
    accuracy = claim(tmp_path / "free", "Fairness-aware LoRA")
    assert accuracy.verdict == REPRODUCED and accuracy.change == pytest.approx(0.76875 - 0.75)
    clear_cache()
    costly = {**FIVE_METHODS, "gr": {"White": 0.70, "Black": 0.70, "Asian": 0.70}}  # 0.70: 5 pp below
    write_fundus(tmp_path / "costly", costly)
    accuracy = claim(tmp_path / "costly", "Fairness-aware LoRA")
    assert accuracy.verdict == NOT_REPRODUCED and accuracy.change == pytest.approx(-0.05)
    assert "The largest loss is 5.00 pp (GR (w_max=10, on race), 70.00 [" in accuracy.text


def test_cmac_delta_tpr_verdict_flips(tmp_path):
    write_skin(tmp_path / "aligned")
    dtpr = claim(tmp_path / "aligned", "CMAC-MMD cuts the intersectional ΔTPR (sex × age group) by ≥ 48 %")
    assert dtpr.verdict == REPRODUCED and dtpr.change == pytest.approx(-0.70)
    assert "Worst-off group's TPR: 0.40 → 0.70; best group's: 0.90 → 0.85." in dtpr.text
    clear_cache()
    write_skin(
        tmp_path / "little", dict(zip(SKIN_GROUPS, (0.5, 0.6, 0.8, 0.7, 0.8, 0.9), strict=True))
    )  # ΔTPR 0.40: −20 %
    dtpr = claim(tmp_path / "little", "CMAC-MMD cuts the intersectional ΔTPR (sex × age group) by ≥ 48 %")
    assert dtpr.verdict == NOT_REPRODUCED and dtpr.change == pytest.approx(-0.20)
    assert "The gap does shrink, by less than the paper reports." in dtpr.text


@pytest.mark.parametrize(
    "cmac_tpr, worst, best",
    [
        (dict.fromkeys(SKIN_GROUPS, 0.0), "0.40 → 0.00", "0.90 → 0.00"),  # misses every positive: ΔTPR 0
        (
            dict(zip(SKIN_GROUPS, (0.4, 0.5, 0.5, 0.5, 0.5, 0.5), strict=True)),
            "0.40 → 0.40",
            "0.90 → 0.50",
        ),  # best lowered
    ],
)
def test_a_gap_closed_by_levelling_down_is_not_reproduced(tmp_path, cmac_tpr, worst, best):
    write_skin(tmp_path, cmac_tpr)
    dtpr = claim(tmp_path, "CMAC-MMD cuts the intersectional ΔTPR (sex × age group) by ≥ 48 %")
    assert dtpr.change <= -0.8 and dtpr.verdict == NOT_REPRODUCED
    assert f"Worst-off group's TPR: {worst}; best group's: {best}." in dtpr.text
    assert "The gap closed by levelling down" in dtpr.text


def test_cmac_auc_verdict_flips(tmp_path):
    write_skin(tmp_path / "kept")
    auc = claim(tmp_path / "kept", "CMAC-MMD keeps or improves AUC, dermatology")
    assert auc.verdict == REPRODUCED and auc.change > 0
    clear_cache()
    write_skin(tmp_path / "worse", dict.fromkeys(SKIN_GROUPS, 0.3))  # misses most positives: AUC falls
    auc = claim(tmp_path / "worse", "CMAC-MMD keeps or improves AUC, dermatology")
    assert auc.verdict == NOT_REPRODUCED and auc.overlap is False and auc.change < -0.2


def test_claims_without_runs_are_not_testable(tmp_path):
    write_skin(tmp_path)  # no fundus runs at all
    claims = {c.title: c for c in assess_claims(collect(list_runs(tmp_path), bootstrap=0))}
    fundus = [c for c in claims.values() if "dermatology" not in c.title]
    assert {c.verdict for c in fundus} == {NOT_TESTABLE}
    gr = next(c for c in fundus if c.title.startswith("GR-LoRA"))
    assert gr.text == (
        "Not testable here: no GR run on task fundus gives race figures; train one "
        "(`python -m training.train --data synth:fundus --method gr`)."
    )
    skin = [c for c in claims.values() if "dermatology" in c.title]
    assert all(c.verdict != NOT_TESTABLE for c in skin)
    dtpr = next(c for c in skin if "ΔTPR" in c.title)
    assert dtpr.overlap is None and "No bootstrap intervals were computed" in dtpr.text


def test_empty_report_says_so_and_states_synthetic_data(tmp_path):
    text = build_report([], bootstrap=0, sources=[str(tmp_path)])
    assert report.NO_RUNS_FOUND.format(dirs=str(tmp_path)) in text
    assert "**The benchmark is synthetic, not clinical data.**" in text
    assert text.count(f"— {NOT_TESTABLE}") == 8


def test_demo_runs_and_a_users_run_with_a_demo_id_are_both_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "DEMO_RUNS_DIR", tmp_path / "demos")
    write_fundus(tmp_path / "demos")
    write_run(tmp_path / "runs", "fundus-gr", fundus_predictions(FIVE_METHODS["vanilla"], seed=9), method="gr", seed=7)
    text = build_report(list_runs(tmp_path / "demos", tmp_path / "runs"), bootstrap=BOOTSTRAP)
    assert "| fundus-gr (demo) | fundus | GR | – | 10 | race | 42 | synth:fundus |" in text
    assert "| fundus-gr | fundus | GR | – | 10 | race | 7 | synth:fundus |" in text
    cells = row_of(text, "### Table 1", "GR (w_max=10, on race)")
    assert cells[1] == "fundus-gr (demo), fundus-gr" and cells[4] == "12.50 ± 10.61 (2 seeds)"  # gaps 5 and 20


def test_cli_writes_the_report(tmp_path):
    write_fundus(tmp_path / "runs")
    out = tmp_path / "report.md"
    assert report.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--bootstrap", "50"]) == 0
    text = out.read_text()
    assert text.startswith("# FairDx reproduction report")
    assert (
        "### 1. GR-LoRA cuts MaxAccGap on the attribute it balances by ≥ 69 % relative to Vanilla LoRA — reproduced"
    ) in text
    assert "Here GR was trained and measured on race, the paper's run on ethnicity." in text
    assert "| fundus-gr | fundus | GR | – | 10 | race | 42 | synth:fundus |" in text
