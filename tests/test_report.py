"""inference.report: tables carry metrics.evaluate's numbers and each verdict follows the paired test."""

from __future__ import annotations

import json
import shutil
import warnings

import pandas as pd
import pytest

from inference import compare_stats, report, uploads
from inference.compare_engine import clear_cache, wilson_interval
from inference.report import (
    NOT_REPRODUCED,
    NOT_TESTABLE,
    REPRODUCED,
    UNDECIDED,
    assess_claims,
    build_report,
    collect,
)
from tests.test_compare import FIVE_METHODS, SKIN_GROUPS, fundus_predictions, skin_predictions, write_run
from training import metrics, rundir
from training.rundir import list_runs, read_run

BOOTSTRAP = 100
DEMO_BOOTSTRAP = 200  # the demo runs: p down to 2/201, enough for their clear differences
VANILLA_TPR = dict(zip(SKIN_GROUPS, (0.4, 0.6, 0.8, 0.7, 0.8, 0.9), strict=True))  # ΔTPR 0.50, as CMAC-MMD's vanilla
CMAC_TPR = dict(zip(SKIN_GROUPS, (0.7, 0.75, 0.8, 0.75, 0.8, 0.85), strict=True))  # ΔTPR 0.15: −70 %
DATA_SEED = 0  # one benchmark: every run scores the same samples (ids, labels, groups), so runs pair up
GR_CLAIM = "GR-LoRA"
HYBRID_CLAIM = "Hybrid-LoRA"
ACCURACY_CLAIM = "Fairness-aware LoRA"
SKIN_DTPR_CLAIM = "CMAC-MMD cuts the intersectional ΔTPR (sex × age group) by ≥ 48 %"
SKIN_AUC_CLAIM = "CMAC-MMD keeps or improves AUC, dermatology"
FUNDUS_DTPR_CLAIM = "CMAC-MMD cuts the ΔTPR over the subgroups it aligns"
FUNDUS_AUC_CLAIM = "CMAC-MMD keeps or improves AUC, glaucoma"


@pytest.fixture(autouse=True)
def empty_cache():
    clear_cache()
    yield
    clear_cache()


def write_fundus(root, accuracies=FIVE_METHODS):
    for method, accuracy in accuracies.items():
        write_run(root, f"fundus-{method}", fundus_predictions(accuracy, seed=DATA_SEED), method=method)


def write_skin(root, cmac_tpr=CMAC_TPR, **cmac):
    write_run(
        root, "skin-vanilla", skin_predictions(VANILLA_TPR, seed=DATA_SEED), task="skin", attribute="sex+age_group"
    )
    write_run(
        root,
        "skin-cmac",
        skin_predictions(cmac_tpr, seed=DATA_SEED, **cmac),
        task="skin",
        method="cmac",
        attribute="sex+age_group",
    )


def find(claims: list[report.Claim], starts: str) -> report.Claim:
    found = [c for c in claims if c.title.startswith(starts)]
    assert len(found) == 1, [c.title for c in claims]
    return found[0]


def claim(root, starts: str, **kwargs) -> report.Claim:
    return find(assess_claims(collect(list_runs(root), bootstrap=BOOTSTRAP, **kwargs)), starts)


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


def signed(value: float, digits: int) -> str:
    return f"{round(value, digits) + 0.0:+.{digits}f}".replace("-", "−")


def p_text(p: float) -> str:
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def paired_text(row: dict, scale: float = 1, digits: int = 3, unit: str = "") -> str:
    """How a claim quotes a compare_stats.versus row."""
    seeds = row["seeds"]
    return (
        f"paired over {seeds} seed{'s' if seeds != 1 else ''}: {signed(row['difference'] * scale, digits)} "
        f"[{signed(row['ci_lo'] * scale, digits)}, {signed(row['ci_hi'] * scale, digits)}]{unit}, "
        f"p = {p_text(row['p_value'])}"
    )


def versus_row(evidence: report.Evidence, task: str, attribute: str, reference: str, runs: str, figure: str, **kw):
    """The row of compare_stats.versus itself (not the report's cached one)."""
    versus = compare_stats.versus(evidence.comparisons[(task, attribute)], reference, **kw)
    table = versus.table
    chosen = table[(table["runs"] == runs) & (table["figure"] == figure)]
    assert len(chosen) == 1, table[["runs", "figure"]]
    return chosen.iloc[0].to_dict()


# ---------------------------------------------------------------------------------------------------
# The shipped demo runs (assets/runs: five fundus, five skin, one seed each)

DEMOS = {run.run_id: run for run in list_runs(rundir.DEMO_RUNS_DIR)}


def demos(task: str | None = None, *, without: tuple[str, ...] = ()) -> list[rundir.RunInfo]:
    return [run for run in DEMOS.values() if (task is None or run.task == task) and run.run_id not in without]


def copy_run(run: rundir.RunInfo, folder, name: str, *, seed: int, nudge: float = 0.0) -> rundir.RunInfo:
    """A copy of a demo run under another id and seed (the same setting), its probabilities nudged."""
    target = folder / name
    shutil.copytree(run.path, target)
    config = json.loads((target / rundir.CONFIG).read_text())
    config.update(run_id=name, run_name=name, seed=seed)
    (target / rundir.CONFIG).write_text(json.dumps(config))
    frame = pd.read_csv(target / rundir.PREDICTIONS)
    frame["prob"] = (frame["prob"] + nudge).clip(0, 1)
    frame.to_csv(target / rundir.PREDICTIONS, index=False)
    return read_run(target)


@pytest.fixture(scope="module")
def demo_evidence() -> report.Evidence:
    clear_cache()
    return collect(demos(), bootstrap=DEMO_BOOTSTRAP)


def test_demo_claims_quote_the_paired_test_over_seeds(demo_evidence):
    claims = assess_claims(demo_evidence)
    for starts, task, attribute, run, gap, claimed in (
        (GR_CLAIM, "fundus", "race", "fundus-gr (demo)", "max_acc_gap", 0.69),
        (HYBRID_CLAIM, "fundus", "race", "fundus-hybrid (demo)", "max_acc_gap", 0.60),
        (SKIN_DTPR_CLAIM, "skin", "sex+age_group", "skin-cmac (demo)", "delta_tpr", 0.48),
        (FUNDUS_DTPR_CLAIM, "fundus", "race", "fundus-cmac (demo)", "delta_tpr", 0.24),
    ):
        found = find(claims, starts)
        row = versus_row(demo_evidence, task, attribute, f"{task}-vanilla (demo)", run, gap)
        assert found.p_value == pytest.approx(row["p_value"])
        assert found.interval == pytest.approx((row["ci_lo"], row["ci_hi"]))
        assert found.seeds == 1
        scale, digits, unit = (100, 2, " pp") if gap == "max_acc_gap" else (1, 3, "")
        assert paired_text(row, scale, digits, unit) in found.text
        assert f"({row['verdict']})" in found.text
        change = (row["value"] - row["reference_value"]) / row["reference_value"]
        assert found.change == pytest.approx(change)
        reproduced = row["verdict"] == compare_stats.SMALLER_GAP and change <= -claimed
        assert found.verdict == (REPRODUCED if reproduced else NOT_REPRODUCED)
    # On the demos' learnt fundus model no objective narrows the race gap (README, "Demo runs"): measured
    # GR +19 % (p 0.56), Hybrid +14 % (p 0.37), both "no detectable change"
    for claim in (GR_CLAIM, HYBRID_CLAIM):
        found = find(claims, claim)
        assert found.verdict == NOT_REPRODUCED and found.p_value >= 0.05 and found.change > -0.60
        assert "Reproduced in direction" not in found.text
    gr = find(claims, GR_CLAIM)
    assert "bootstrap intervals" not in gr.text and "overlap" not in gr.text


def test_demo_accuracy_and_auc_claims_are_equivalence_tests(demo_evidence):
    claims = assess_claims(demo_evidence)
    accuracy = find(claims, ACCURACY_CLAIM)
    rows = {
        run: versus_row(
            demo_evidence,
            "fundus",
            "race",
            "fundus-vanilla (demo)",
            f"{run} (demo)",
            "accuracy",
            margins={"accuracy": report.ACCURACY_TOLERANCE},
        )
        for run in ("fundus-fr", "fundus-gr", "fundus-hybrid")
    }
    below = any(r["equivalence_hi"] < -report.ACCURACY_TOLERANCE for r in rows.values())
    above = all(r["equivalence_lo"] > -report.ACCURACY_TOLERANCE for r in rows.values())
    assert accuracy.verdict == (NOT_REPRODUCED if below else REPRODUCED if above else UNDECIDED)
    lowest = min(rows.values(), key=lambda r: r["equivalence_lo"])
    assert accuracy.equivalence_interval == pytest.approx((lowest["equivalence_lo"], lowest["equivalence_hi"]))
    assert accuracy.change == pytest.approx(lowest["difference"])
    for r in rows.values():
        assert paired_text(r, 100, 2, " pp") in accuracy.text
        low, high = signed(100 * r["equivalence_lo"], 2), signed(100 * r["equivalence_hi"], 2)
        assert f"90 % interval [{low}, {high}] pp" in accuracy.text
    for task, attribute, starts in (("skin", "sex+age_group", SKIN_AUC_CLAIM), ("fundus", "race", FUNDUS_AUC_CLAIM)):
        auc = find(claims, starts)
        row = versus_row(demo_evidence, task, attribute, f"{task}-vanilla (demo)", f"{task}-cmac (demo)", "auc")
        assert auc.p_value == pytest.approx(row["p_value"])
        assert auc.equivalence_interval == pytest.approx((row["equivalence_lo"], row["equivalence_hi"]))
        higher = row["p_value"] < 0.05 and row["difference"] > 0
        if row["equivalent"] or higher:
            assert auc.verdict == REPRODUCED
        elif row["verdict"] == compare_stats.LOWER:
            assert auc.verdict == NOT_REPRODUCED
        else:
            assert auc.verdict == UNDECIDED and "The difference is not significant" in auc.text


def test_a_run_that_exists_but_was_not_selected_is_named(tmp_path):
    selected = demos("fundus", without=("fundus-gr",))
    text = build_report(selected, bootstrap=0, available=demos())
    not_selected = (
        "Not testable here: a GR run exists (fundus-gr (demo)) but was not selected in Compare; tick it, or run "
        "`python -m inference.report` over all runs."
    )
    assert not_selected in text
    assert "train one (`python -m training.train --data synth:fundus --method gr`)" not in text
    only_cmac = [DEMOS["fundus-cmac"]]
    claims = assess_claims(collect(only_cmac, bootstrap=0, available=demos()))
    auc = find(claims, FUNDUS_AUC_CLAIM)
    assert auc.verdict == NOT_TESTABLE
    assert "a Vanilla run exists (fundus-vanilla (demo)) but was not selected in Compare" in auc.text
    accuracy = find(claims, ACCURACY_CLAIM)
    assert "An FR run exists (fundus-fr (demo)) but was not selected in Compare" in accuracy.text
    # without `available` (or with the runs themselves) nothing is "not selected": train one
    gr = find(assess_claims(collect(selected, bootstrap=0)), GR_CLAIM)
    assert "train one" in gr.text and "not selected" not in gr.text


def test_compares_attribute_gets_a_paired_section(tmp_path):
    runs = demos("fundus")
    text = build_report(runs, bootstrap=DEMO_BOOTSTRAP, attribute="race+ethnicity")
    heading = "## Paired comparisons on race+ethnicity — glaucoma (task fundus)"
    assert heading in text
    section = text[text.index(heading) : text.index("## Gu et al.")]
    assert "Reference: **Vanilla** (fundus-vanilla (demo); 1 seed)." in section
    assert "paired runs share the test samples" in section and "over the seeds and the samples" in section
    assert row_of(section, heading, "Setting (seeds)") == [
        "Setting (seeds)",
        "Overall accuracy",
        "AUC",
        "MaxAccGap",
        "ΔTPR",
        "Equalized odds",
    ]
    evidence = collect(runs, bootstrap=DEMO_BOOTSTRAP, attribute="race+ethnicity")
    assert ("fundus", "race+ethnicity") in evidence.comparisons
    cells = row_of(section, heading, "GR (w_max=10, on race) (1 seed)")
    for cell, figure in zip(cells[1:], report.PAIRED_FIGURES, strict=True):
        row = versus_row(evidence, "fundus", "race+ethnicity", "fundus-vanilla (demo)", "fundus-gr (demo)", figure)
        expected = (
            f"{signed(row['difference'], 3)} [{signed(row['ci_lo'], 3)}, {signed(row['ci_hi'], 3)}], "
            f"p = {p_text(row['p_value'])}, {row['verdict']}"
        )
        assert cell == expected
    assert "| Vanilla (1 seed) |" not in section  # the reference is no row of its own
    chosen = build_report(runs, bootstrap=DEMO_BOOTSTRAP, attribute="race+ethnicity", reference="fundus-gr (demo)")
    assert "Reference: **GR (w_max=10, on race)** (fundus-gr (demo); 1 seed)." in chosen
    assert "| Vanilla (1 seed) |" in chosen
    assert "## Paired comparisons" not in build_report(runs, bootstrap=0)  # no attribute from Compare: no section


def test_several_seeds_of_a_demo_setting_are_aggregated(tmp_path):
    second = copy_run(DEMOS["fundus-gr"], tmp_path, "fundus-gr-s7", seed=7, nudge=0.02)
    runs = [*demos("fundus"), second]
    evidence = collect(runs, bootstrap=DEMO_BOOTSTRAP)
    gr = report.main_entry(evidence.get("fundus", "race"), "gr")
    assert gr is not None and gr.runs == ("fundus-gr-s7", "fundus-gr (demo)")  # seeds ascending
    assert gr.intervals is None  # no "mean of per-seed intervals"
    text = report.render(evidence, assess_claims(evidence))
    cells = row_of(text, "### Table 1", "GR (w_max=10, on race)")
    assert cells[1] == "fundus-gr-s7, fundus-gr (demo)"
    for cell in cells[2:6]:
        assert cell.endswith(" (2 seeds)") and " ± " in cell and "[" not in cell
    groups = row_of(text, "### Table 3", "GR (w_max=10, on race)")
    assert all(" ± " in cell and "[" not in cell for cell in groups[1:])
    assert "mean of the per-seed" not in text and "(for several seeds" not in text
    found = find(assess_claims(evidence), GR_CLAIM)
    assert found.seeds == 2 and "paired over 2 seeds: " in found.text
    row = versus_row(
        evidence, "fundus", "race", "fundus-vanilla (demo)", "fundus-gr-s7, fundus-gr (demo)", "max_acc_gap"
    )
    assert row["seeds"] == 2 and found.p_value == pytest.approx(row["p_value"])
    assert paired_text(row, 100, 2, " pp") in found.text


def test_an_uploaded_model_is_listed_paired_and_kept_out_of_the_claims(tmp_path):
    frame = pd.read_csv(DEMOS["fundus-vanilla"].path / rundir.PREDICTIONS)
    frame["prob"] = (frame["prob"] * 0.9 + 0.05).round(6)
    csv = tmp_path / "my-model.csv"
    frame[["id", "split", "label", "prob", "race", "ethnicity"]].to_csv(csv, index=False)
    upload = uploads.read_upload(csv, tmp_path / "uploads", task="fundus")
    runs = [*demos("fundus"), upload]
    evidence = collect(runs, bootstrap=DEMO_BOOTSTRAP, attribute="race")
    text = report.render(evidence, assess_claims(evidence))
    label = upload.label()
    assert f"| {label} | fundus | {uploads.METHOD_TITLE} | – | – | – | – | {report.UPLOADED_DATA} |" in text
    assert "Some runs used other data" not in text  # the data statement is about FairDx runs
    heading = "## Paired comparisons on race — glaucoma (task fundus)"
    section = text[text.index(heading) : text.index("## Gu et al.")]
    row = versus_row(evidence, "fundus", "race", "fundus-vanilla (demo)", label, "auc")
    cell = row_of(section, heading, f"{label} (1 seed)")[2]
    assert cell.startswith(f"{signed(row['difference'], 3)} [") and cell.endswith(f", {row['verdict']}")
    with_upload = {c.title: c for c in assess_claims(collect(runs, bootstrap=DEMO_BOOTSTRAP))}
    without = {c.title: c for c in assess_claims(collect(demos("fundus"), bootstrap=DEMO_BOOTSTRAP))}
    assert {t: c.verdict for t, c in with_upload.items()} == {t: c.verdict for t, c in without.items()}
    assert all(label not in c.text for c in with_upload.values())


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
    for seed, asian in ((1, 0.75), (2, 0.70)):
        write_run(
            tmp_path,
            f"fundus-gr-s{seed}",
            fundus_predictions({"White": 0.80, "Black": 0.775, "Asian": asian}, seed=DATA_SEED),
            method="gr",
            seed=seed,
        )
    text = build_report(list_runs(tmp_path), bootstrap=BOOTSTRAP)
    cells = row_of(text, "### Table 1", "GR (w_max=10, on race)")
    assert cells[1] == "fundus-gr-s1, fundus-gr-s2"
    assert cells[4] == "7.50 ± 3.54 (2 seeds)"  # gaps 5 and 10: mean 7.5, sd 5/√2
    assert row_of(text, "### Table 3", "GR (w_max=10, on race)")[1] == "72.5 ± 3.5"  # Asian: 75 and 70
    gr = claim(tmp_path, GR_CLAIM)
    assert gr.change == pytest.approx((0.075 - 0.20) / 0.20)  # −62.5 %: below the paper's 69 %
    assert gr.verdict == NOT_REPRODUCED and gr.seeds == 2 and "paired over 2 seeds: " in gr.text


def test_lambda_ablation_not_run_then_run(tmp_path):
    write_fundus(tmp_path)
    text = build_report(list_runs(tmp_path), bootstrap=BOOTSTRAP)
    assert "FR: not run (needs runs at two or more λ; found λ: 0.5)." in text
    assert claim(tmp_path, "FR-LoRA's MaxAccGap").verdict == NOT_TESTABLE
    for lam, asian in ((0.1, 0.75), (1.0, 0.775)):
        write_run(
            tmp_path,
            f"fundus-fr-{lam:g}",
            fundus_predictions({"White": 0.80, "Black": 0.775, "Asian": asian}, seed=DATA_SEED),
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
# Verdicts follow the paired test


def test_gr_verdict_flips_with_the_data(tmp_path):
    write_fundus(tmp_path / "smaller")  # GR gap 0.05 against 0.20: −75 %, significant on the paired test
    gr = claim(tmp_path / "smaller", GR_CLAIM)
    assert gr.verdict == REPRODUCED and gr.change == pytest.approx(-0.75) and gr.p_value < 0.05
    assert "Worst-off group's accuracy: 60.0 % → 75.0 %; best group's: 80.0 % → 80.0 %." in gr.text
    assert "relative change of −75.0 % (the claim needs ≤ −69 %); paired over 1 seed: −15.00 [" in gr.text
    clear_cache()
    same = {**FIVE_METHODS, "gr": FIVE_METHODS["vanilla"]}
    write_fundus(tmp_path / "same", same)  # GR's predictions are Vanilla's
    gr = claim(tmp_path / "same", GR_CLAIM)
    assert gr.verdict == NOT_REPRODUCED and gr.change == pytest.approx(0.0)
    assert gr.p_value == 1.0 and gr.interval == (0.0, 0.0)
    assert "The gap does not shrink detectably" in gr.text


def test_a_large_but_noisy_reduction_is_not_reproduced(tmp_path):
    write_fundus(tmp_path / "close")  # Hybrid gap 0.03 against 0.20: −85 %, but Asian has only 80 samples
    hybrid = claim(tmp_path / "close", HYBRID_CLAIM)
    assert hybrid.change == pytest.approx(-0.85)
    assert hybrid.verdict == NOT_REPRODUCED and hybrid.p_value >= 0.05
    assert "(no detectable change)" in hybrid.text and "The gap does not shrink detectably" in hybrid.text
    clear_cache()
    write_fundus(tmp_path / "far", {**FIVE_METHODS, "vanilla": {"White": 0.85, "Black": 0.70, "Asian": 0.50}})
    hybrid = claim(tmp_path / "far", HYBRID_CLAIM)
    assert hybrid.verdict == REPRODUCED and hybrid.change == pytest.approx((0.03 - 0.35) / 0.35)
    assert hybrid.p_value < 0.05 and hybrid.interval[1] < 0
    assert hybrid.text.startswith("Reproduced. Hybrid (λ=0.5, w_max=10, on race) has MaxAccGap on race (%) 3.00 [")
    assert "against Vanilla's 35.00 [" in hybrid.text
    assert "relative change of −91.4 % (the claim needs ≤ −60 %); paired over 1 seed: −32.00 [" in hybrid.text


def test_accuracy_cost_claim_is_an_equivalence_test(tmp_path):
    copies = dict.fromkeys(("vanilla", "fr", "gr", "hybrid"), FIVE_METHODS["vanilla"])
    write_fundus(tmp_path / "copies", copies)  # the same predictions: difference 0, interval [0, 0]
    accuracy = claim(tmp_path / "copies", ACCURACY_CLAIM)
    assert accuracy.verdict == REPRODUCED and accuracy.change == 0.0
    assert accuracy.equivalence_interval == (0.0, 0.0)
    assert accuracy.text.count("equivalent within ±0.40 pp") == 3
    clear_cache()
    write_fundus(tmp_path / "free")  # every fairness method significantly more accurate than Vanilla (0.75)
    accuracy = claim(tmp_path / "free", ACCURACY_CLAIM)
    assert accuracy.verdict == REPRODUCED and accuracy.change == pytest.approx(0.76875 - 0.75)
    assert accuracy.equivalence_interval[0] > -report.ACCURACY_TOLERANCE
    assert "no cost, more accurate (the interval lies above −0.40 pp)" in accuracy.text
    clear_cache()
    costly = {**FIVE_METHODS, "gr": {"White": 0.70, "Black": 0.70, "Asian": 0.70}}  # 0.70: 5 pp below
    write_fundus(tmp_path / "costly", costly)
    accuracy = claim(tmp_path / "costly", ACCURACY_CLAIM)
    assert accuracy.verdict == NOT_REPRODUCED and accuracy.change == pytest.approx(-0.05)
    assert accuracy.equivalence_interval[1] < -report.ACCURACY_TOLERANCE
    assert "GR (w_max=10, on race) costs more than 0.40 pp: its 90 % interval lies entirely below −0.40 pp." in (
        accuracy.text
    )
    clear_cache()
    write_fundus(tmp_path / "open", {**FIVE_METHODS, "vanilla": {"White": 0.85, "Black": 0.70, "Asian": 0.50}})
    accuracy = claim(tmp_path / "open", ACCURACY_CLAIM)  # FR as accurate as Vanilla, but ±1.5 pp of noise
    assert accuracy.verdict == UNDECIDED == "not decidable on these runs"
    low, high = accuracy.equivalence_interval
    assert low < -report.ACCURACY_TOLERANCE < high
    assert "is wider than the ±0.40 pp tolerance" in accuracy.text


def test_cmac_delta_tpr_verdict_flips(tmp_path):
    write_skin(tmp_path / "aligned")
    dtpr = claim(tmp_path / "aligned", SKIN_DTPR_CLAIM)
    assert dtpr.verdict == REPRODUCED and dtpr.change == pytest.approx(-0.70)
    assert "Worst-off group's TPR: 0.40 → 0.70; best group's: 0.90 → 0.85." in dtpr.text
    clear_cache()
    little = dict(zip(SKIN_GROUPS, (0.5, 0.6, 0.8, 0.7, 0.8, 0.9), strict=True))  # ΔTPR 0.40: −20 %
    write_skin(tmp_path / "little", little)
    dtpr = claim(tmp_path / "little", SKIN_DTPR_CLAIM)
    assert dtpr.verdict == NOT_REPRODUCED and dtpr.change == pytest.approx(-0.20)
    assert "The gap does not shrink detectably" in dtpr.text


def test_a_significant_but_small_reduction_is_reproduced_in_direction_only(tmp_path):
    little = dict(zip(SKIN_GROUPS, (0.5, 0.6, 0.8, 0.7, 0.8, 0.9), strict=True))  # ΔTPR 0.40: −20 %
    for method, tpr in (("vanilla", VANILLA_TPR), ("cmac", little)):  # ten times the samples: −0.10 is no noise
        predictions = skin_predictions(tpr, seed=DATA_SEED, n_per_group=1000)
        write_run(tmp_path, f"skin-{method}", predictions, task="skin", method=method, attribute="sex+age_group")
    dtpr = claim(tmp_path, SKIN_DTPR_CLAIM)
    assert dtpr.verdict == NOT_REPRODUCED and dtpr.change == pytest.approx(-0.20) and dtpr.p_value < 0.05
    assert "(fairer)" in dtpr.text and "Reproduced in direction, not in size" in dtpr.text


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
    dtpr = claim(tmp_path, SKIN_DTPR_CLAIM)
    assert dtpr.change <= -0.8 and dtpr.verdict == NOT_REPRODUCED
    assert f"({compare_stats.LEVELLED_DOWN})" in dtpr.text
    assert f"Worst-off group's TPR: {worst}; best group's: {best}." in dtpr.text
    assert "The gap closed by levelling down" in dtpr.text


def test_cmac_auc_verdict_flips(tmp_path):
    write_skin(tmp_path / "kept")
    auc = claim(tmp_path / "kept", SKIN_AUC_CLAIM)
    assert auc.verdict == REPRODUCED and auc.change > 0 and auc.p_value < 0.05
    clear_cache()
    write_skin(tmp_path / "worse", dict.fromkeys(SKIN_GROUPS, 0.3))  # misses most positives: AUC falls
    auc = claim(tmp_path / "worse", SKIN_AUC_CLAIM)
    assert auc.verdict == NOT_REPRODUCED and auc.change < -0.2 and auc.interval[1] < -report.AUC_MARGIN
    assert "The AUC is significantly lower" in auc.text
    clear_cache()
    write_skin(tmp_path / "same", VANILLA_TPR)  # the same predictions: equivalent
    auc = claim(tmp_path / "same", SKIN_AUC_CLAIM)
    assert auc.verdict == REPRODUCED and auc.equivalence_interval == (0.0, 0.0)
    assert "CMAC-MMD keeps the AUC: the 90 % interval lies within ±0.01" in auc.text


def test_claims_without_runs_are_not_testable_and_without_resamples_undecided(tmp_path):
    write_skin(tmp_path)  # no fundus runs at all
    claims = {c.title: c for c in assess_claims(collect(list_runs(tmp_path), bootstrap=0))}
    fundus = [c for c in claims.values() if "dermatology" not in c.title]
    assert {c.verdict for c in fundus} == {NOT_TESTABLE}
    gr = next(c for c in fundus if c.title.startswith(GR_CLAIM))
    assert gr.text == (
        "Not testable here: no GR run on task fundus gives race figures; train one "
        "(`python -m training.train --data synth:fundus --method gr`)."
    )
    skin = [c for c in claims.values() if "dermatology" in c.title]
    assert {c.verdict for c in skin} == {UNDECIDED}  # bootstrap=0: no paired test decides anything
    dtpr = next(c for c in skin if "ΔTPR" in c.title)
    assert dtpr.p_value is None and "no paired test could be run" in dtpr.text


def test_empty_report_says_so_and_states_synthetic_data(tmp_path):
    text = build_report([], bootstrap=0, sources=[str(tmp_path)])
    assert report.NO_RUNS_FOUND.format(dirs=str(tmp_path)) in text
    assert "**The benchmark is synthetic, not clinical data.**" in text
    assert text.count(f"— {NOT_TESTABLE}") == 8


def test_header_states_the_statistics_honestly(tmp_path):
    write_fundus(tmp_path)
    text = build_report(list_runs(tmp_path), bootstrap=BOOTSTRAP)
    header = text[: text.index("## Runs")]
    assert "**One seed:** the figure with its 95 % bootstrap percentile interval" in header
    assert "**Several seeds:** mean ± standard deviation over the seeds" in header
    assert "bootstrapped over the seeds and the samples together" in header
    assert "two one-sided tests on the 90 % paired interval" in header and "±0.4 accuracy points" in header
    assert "noise floor" in header
    assert "overlap" not in text


def test_demo_runs_and_a_users_run_with_a_demo_id_are_both_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "DEMO_RUNS_DIR", tmp_path / "demos")
    write_fundus(tmp_path / "demos")
    write_run(
        tmp_path / "runs",
        "fundus-gr",
        fundus_predictions(FIVE_METHODS["vanilla"], seed=DATA_SEED),
        method="gr",
        seed=7,
    )
    text = build_report(list_runs(tmp_path / "demos", tmp_path / "runs"), bootstrap=BOOTSTRAP)
    assert "| fundus-gr (demo) | fundus | GR | – | 10 | race | 42 | synth:fundus |" in text
    assert "| fundus-gr | fundus | GR | – | 10 | race | 7 | synth:fundus |" in text
    cells = row_of(text, "### Table 1", "GR (w_max=10, on race)")
    assert cells[1] == "fundus-gr, fundus-gr (demo)" and cells[4] == "12.50 ± 10.61 (2 seeds)"  # gaps 20 and 5


def test_cli_writes_the_report(tmp_path):
    write_fundus(tmp_path / "runs")
    out = tmp_path / "report.md"
    assert report.main(["--runs", str(tmp_path / "runs"), "--out", str(out), "--bootstrap", "50"]) == 0
    text = out.read_text()
    assert text.startswith("# FairDx reproduction report")
    gr = find(assess_claims(collect(list_runs(tmp_path / "runs"), bootstrap=50)), GR_CLAIM)
    assert f"### 1. {gr.title} — {gr.verdict}" in text and gr.text in text
    assert "Here GR was trained and measured on race, the paper's run on ethnicity." in text
    assert "| fundus-gr | fundus | GR | – | 10 | race | 42 | synth:fundus |" in text
