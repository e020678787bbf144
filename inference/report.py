"""``python -m inference.report``: does FairDx reproduce the two papers' claims on the runs at hand?

Reads complete runs (default: the shipped demos in assets/runs plus runs/; the app passes the runs
selected in Compare, uploaded models' predictions included), evaluates each run's predictions.csv
through ``inference.compare_engine.compare_runs`` (hence ``training.metrics.evaluate``, with
bootstrap intervals) and writes a Markdown report:

- Gu et al. (fair LoRA for glaucoma, task fundus): Table 1 (methods × overall accuracy / AUC /
  MaxAccGap on race and ethnicity), Table 2 (the λ ablation of FR and Hybrid, when runs with several
  λ exist), Table 3 (per-group accuracy with n), and the paper's Table 3 comparison of Hybrid with
  Vanilla across attributes;
- CMAC-MMD (task skin): vanilla against cmac on AUC and the intersectional ΔTPR over sex × age
  group, with each subgroup's TPR; the glaucoma counterpart on the attribute the fundus CMAC run
  aligned;
- with ``attribute`` (Compare's), a table per task of every setting paired against a reference run
  (``inference.compare_stats.versus``) on that attribute;
- one paragraph per claim with a verdict: *reproduced*, *not reproduced on this benchmark*, *not
  decidable on these runs* or *not testable here*. Claims are decided by paired comparisons with the
  vanilla baseline over all seeds of a setting (``inference.compare_stats``: each seed paired with
  the baseline on the same test samples, a bootstrap over seeds and samples), never from overlapping
  intervals: a reduction claim needs a significantly smaller gap (not closed by levelling down) of
  at least the claimed relative size; "no accuracy cost" and "keeps the AUC" are equivalence tests
  (two one-sided tests) with a stated margin.

Runs are grouped by task, then by setting (``compare_stats.setting_key``: everything but the seed).
One seed of a setting is shown with its bootstrap interval, several as mean ± standard deviation over
the seeds. A run's λ or w_max counts only for the methods that use it. The methods, their names and
the papers' citations come from the registry, ``training.methods``. A run that exists (``available``)
but was not selected is named as such, not as missing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from inference import compare_stats, uploads
from inference.compare_engine import CI_LEVEL, Comparison, Source, compare_runs, run_description
from inference.compare_export import GAP_TITLES, OVERALL_TITLES
from inference.uploads import UploadedRun
from training import methods, metrics
from training.data_spec import SYNTH_PREFIX
from training.metrics import paired
from training.numbers import as_float
from training.rundir import DEMO_RUNS_DIR, RunInfo, list_runs

DEFAULT_BOOTSTRAP = 1000
DEFAULT_RUNS_DIRS = (DEMO_RUNS_DIR, Path("runs"))
FUNDUS, SKIN = "fundus", "skin"
TABLE1_ATTRIBUTES = ("race", "ethnicity")  # Gu et al. report ethnicity (Table 1) and race (Table 3)
ACROSS_ATTRIBUTES = ("gender", "race", "ethnicity")  # Gu et al., Table 3
SKIN_INTERSECTION = "sex+age_group"  # CMAC-MMD: subgroups of sex × age group (0-40, 40-60, 60+)
FIGURES = ("accuracy", "auc", *metrics.GAPS)
PAIRED_FIGURES = ("accuracy", "auc", "max_acc_gap", "delta_tpr", "equalized_odds")  # the paired section's columns
GU_LAMBDA, GU_W_MAX = 0.5, 10.0  # Gu et al.'s main results (Table 1)
ACCURACY_TOLERANCE = 0.004  # Gu et al.: "all achieved overall accuracy within 0.4 percentage points"
AUC_MARGIN = paired.EQUIVALENCE_MARGINS["auc"]  # "keeps the AUC": equivalent within ±0.01
ALPHA = compare_stats.ALPHA

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced on this benchmark"
UNDECIDED = "not decidable on these runs"
NOT_TESTABLE = "not testable here"

# Gu et al.'s figures (percent) and CMAC-MMD's (fractions), shown beside ours for reference.
GU_TABLE1 = {  # method: (overall accuracy, MaxAccGap on ethnicity)
    methods.VANILLA.name: (53.50, 3.80),
    methods.FR.name: (53.55, 6.04),
    methods.GR.name: (53.15, 1.17),
    methods.HYBRID.name: (53.45, 3.80),
}
GU_TABLE2 = {0.1: (53.75, 2.10), 0.5: (53.55, 6.04), 1.0: (53.35, 2.01)}  # FR's λ: (accuracy, MaxAccGap)
GU_TABLE3 = {"gender": (4.51, 53.40, 3.89), "race": (4.36, 53.25, 1.74), "ethnicity": (3.80, 53.45, 3.80)}
CMAC_MMD_FIGURES = {
    SKIN: {methods.VANILLA.name: (0.94, 0.50), methods.CMAC.name: (0.97, 0.26)},  # (AUC, ΔTPR)
    FUNDUS: {methods.VANILLA.name: (0.71, 0.41), methods.CMAC.name: (0.72, 0.31)},
}
TASK_WORDS = {SKIN: "dermatology (task skin)", FUNDUS: "glaucoma (task fundus)"}
UPLOADED_DATA = "uploaded CSV"  # the runs table's Data cell for an uploaded model

NO_RUNS_FOUND = (
    "No complete runs were found in {dirs}; train some (python -m training.train) or rebuild the demos "
    "(python -m training.demos)."
)
NOT_SELECTED = (
    "{article} {method} run exists ({runs}) but was not selected in Compare; tick it, or run "
    "`python -m inference.report` over all runs"
)
NO_PAIRED_TEST = (
    "no paired test could be run (no bootstrap resamples, or the figure is undefined in every resample), so "
    "nothing is decided here; rerun with `--bootstrap 1000`"
)


@dataclass(frozen=True)
class Entry:
    """One setting of one task on one attribute (``compare_stats.setting_key``: the runs that differ only in
    their seed), aggregated over its runs."""

    method: str
    caption: str
    runs: tuple[str, ...]  # labels, seeds ascending (as compare_stats orders a setting)
    lam: float | None
    w_max: float | None
    trained_on: str | None
    context: tuple  # data, backbone, epochs, ..., task: what must match for a fair baseline
    values: dict[str, float | None]  # mean over runs
    spread: dict[str, float | None]  # standard deviation over runs (None with one run)
    intervals: dict[str, tuple[float, float] | None] | None  # one run: its bootstrap intervals; several: None
    groups: pd.DataFrame  # per group: n, n_pos, accuracy (± sd; Wilson bounds for one run), tpr (± sd), small
    key: tuple = ()  # compare_stats.setting_key of its runs
    extremes: dict[str, tuple[float, float]] = field(default_factory=dict)  # metric: (worst, best), see _extremes

    @property
    def seeds(self) -> int:
        return len(self.runs)


@dataclass(frozen=True)
class Claim:
    """A claim of a paper, tested on the runs at hand."""

    title: str
    source: str
    verdict: str
    text: str
    change: float | None = None  # measured relative change (−0.75 = 75 % smaller); accuracy claim: the difference
    p_value: float | None = None  # two-sided p of the paired difference the verdict rests on
    interval: tuple[float, float] | None = None  # its 95 % paired interval (seeds and samples resampled)
    equivalence_interval: tuple[float, float] | None = None  # its (1 − 2α) interval, for an equivalence test
    seeds: int | None = None  # seeds of the claimed setting the paired test ran over


@dataclass
class Evidence:
    """Everything the report says, computed once: comparisons and entries per (task, attribute)."""

    runs: list[Source]
    bootstrap: int
    seed: int
    split: str
    attribute: str | None = None  # Compare's attribute: evaluated for every task, with a paired section
    reference: str | None = None  # Compare's reference run (a label) for that section
    available: list[RunInfo] = field(default_factory=list)  # every run that exists (to tell "not selected")
    comparisons: dict[tuple[str, str], Comparison] = field(default_factory=dict)
    entries: dict[tuple[str, str], list[Entry]] = field(default_factory=dict)
    _versus: dict[tuple, compare_stats.Versus] = field(default_factory=dict, repr=False)

    def tasks(self) -> list[str]:
        return sorted({run.task for run in self.runs})

    def get(self, task: str, attribute: str) -> list[Entry]:
        return self.entries.get((task, attribute), [])

    def versus(
        self, task: str, attribute: str, reference: str | None, margins: dict[str, float] | None = None
    ) -> compare_stats.Versus:
        """compare_stats.versus on the (task, attribute) comparison, computed once per reference and margins."""
        key = (task, attribute, reference, tuple(sorted((margins or {}).items())))
        if key not in self._versus:
            self._versus[key] = compare_stats.versus(
                self.comparisons[(task, attribute)], reference, alpha=ALPHA, margins=margins
            )
        return self._versus[key]


# ---------------------------------------------------------------------------------------------------
# Collecting


def collect(
    runs: Sequence[Source],
    *,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    split: str = "test",
    attribute: str | None = None,
    reference: str | None = None,
    available: Sequence[RunInfo] = (),
) -> Evidence:
    """Compare the runs of each task on every attribute a table or a claim needs (and on ``attribute``)."""
    chosen = attribute.strip() if attribute and attribute.strip() else None
    evidence = Evidence(list(runs), bootstrap, seed, split, chosen, reference or None, list(available))
    for task in evidence.tasks():
        task_runs = [run for run in runs if run.task == task]
        for name in _attributes_for(task, task_runs, chosen):
            comparison = compare_runs(task_runs, name, split=split, bootstrap=bootstrap, seed=seed)
            evidence.comparisons[(task, name)] = comparison
            evidence.entries[(task, name)] = summarize(comparison)
    return evidence


def _attributes_for(task: str, runs: Sequence[Source], attribute: str | None = None) -> list[str]:
    wanted = list(ACROSS_ATTRIBUTES) if task == FUNDUS else [SKIN_INTERSECTION] if task == SKIN else []
    trained = [run_description(run)["trained_on"] for run in runs]
    return list(dict.fromkeys([*wanted, *(a for a in trained if a), *([attribute] if attribute else [])]))


def summarize(comparison: Comparison) -> list[Entry]:
    """Entries of a comparison: its runs grouped by setting (``compare_stats.settings_of``), in the registry's
    method order (uploaded models last)."""
    if comparison.empty:
        return []
    rows = {row["run"]: row for row in comparison.table.to_dict("records")}
    entries = [
        _entry(setting, [rows[run] for run in setting.runs], comparison.groups)
        for setting in compare_stats.settings_of(comparison)
        if all(run in rows for run in setting.runs)
    ]
    entries.sort(key=lambda e: (methods.rank(e.method), e.lam or 0, e.w_max or 0, str(e.trained_on), str(e.context)))
    return _distinct_captions(entries)


def _entry(setting: compare_stats.Setting, rows: list[dict], groups: pd.DataFrame) -> Entry:
    first = rows[0]
    uploaded = setting.method == uploads.METHOD
    lam, w_max = as_float(first["lambda"]), as_float(first["w_max"])
    trained_on = first["trained_on"] if isinstance(first["trained_on"], str) else None  # NaN in the frame
    values: dict[str, float | None] = {}
    spread: dict[str, float | None] = {}
    intervals: dict[str, tuple[float, float] | None] = {}
    for name in FIGURES:
        numbers = [number for row in rows if (number := as_float(row[name])) is not None]
        values[name] = statistics.fmean(numbers) if numbers else None
        spread[name] = statistics.stdev(numbers) if len(numbers) > 1 else None
        low, high = as_float(first[f"{name}_lo"]), as_float(first[f"{name}_hi"])
        intervals[name] = (low, high) if low is not None and high is not None else None
    run_ids = tuple(setting.runs)
    chosen = groups[groups["run"].isin(run_ids)]
    one = len(run_ids) == 1
    per_group = chosen.groupby("group", sort=True).agg(
        n=("n", "max"),
        n_pos=("n_pos", "max"),
        accuracy=("accuracy", "mean"),
        accuracy_sd=("accuracy", "std"),
        accuracy_lo=("accuracy_lo", "first"),
        accuracy_hi=("accuracy_hi", "first"),
        tpr=("tpr", "mean"),
        tpr_sd=("tpr", "std"),
        small=("small", "max"),
    )
    if not one:  # averaged Wilson bounds would be the interval of nothing: several seeds show mean ± sd
        per_group[["accuracy_lo", "accuracy_hi"]] = float("nan")
    caption = setting.caption if uploaded else _caption(setting.method, lam, w_max, trained_on)
    context = setting.key[-1] if not uploaded and len(setting.key) == 5 else setting.key
    return Entry(
        setting.method,
        caption,
        run_ids,
        lam,
        w_max,
        trained_on,
        context,
        values,
        spread,
        intervals if one else None,
        per_group,
        setting.key,
        {metric: _extremes(chosen, metric) for metric in GROUP_METRIC_WORDS},
    )


def _extremes(groups: pd.DataFrame, metric: str) -> tuple[float, float]:
    """(worst, best) group figure, as the gap itself is taken (groups the small-group rule leaves out are not
    counted): each run's lowest and highest, averaged over the runs (seeds)."""
    counted = groups[~groups["small"].astype(bool)] if "small" in groups else groups
    lows, highs = [], []
    for _, run_groups in counted.groupby("run", sort=False):
        values = run_groups[metric].dropna()
        if len(values):
            lows.append(float(values.min()))
            highs.append(float(values.max()))
    if not lows:
        return float("nan"), float("nan")
    return statistics.fmean(lows), statistics.fmean(highs)


def _caption(method: str, lam: float | None, w_max: float | None, trained_on: str | None) -> str:
    settings = [
        f"λ={lam:g}" if lam is not None else None,
        f"w_max={w_max:g}" if w_max is not None else None,
        f"on {trained_on}" if trained_on else None,
    ]
    shown = ", ".join(s for s in settings if s)
    name = methods.title(method)
    return f"{name} ({shown})" if shown else name


def _distinct_captions(entries: list[Entry]) -> list[Entry]:
    """Settings that differ only in context (data, backbone, epochs, ...) get a numbered caption."""
    seen: dict[str, int] = {}
    distinct = []
    for entry in entries:
        count = seen.get(entry.caption, 0) + 1
        seen[entry.caption] = count
        if count > 1:
            entry = Entry(**{**entry.__dict__, "caption": f"{entry.caption} #{count}"})
        distinct.append(entry)
    return distinct


# ---------------------------------------------------------------------------------------------------
# Choosing what a claim compares


def main_entry(
    entries: list[Entry], method: str, *, trained_on: str | None = None, context: tuple | None = None
) -> Entry | None:
    """The setting of ``method`` closest to Gu et al.'s main one (λ=0.5, w_max=10), most seeds first."""
    candidates = [e for e in entries if e.method == method and (trained_on is None or e.trained_on == trained_on)]
    if context is not None and any(e.context == context for e in candidates):
        candidates = [e for e in candidates if e.context == context]
    if not candidates:
        return None

    def closeness(entry: Entry) -> tuple:
        return (entry.lam not in (None, GU_LAMBDA), entry.w_max not in (None, GU_W_MAX), -entry.seeds)

    return min(candidates, key=closeness)


def baseline_for(entries: list[Entry], entry: Entry | None) -> Entry | None:
    """The baseline (vanilla) setting to compare ``entry`` with: same data and backbone when one exists."""
    return main_entry(entries, methods.BASELINE.name, context=entry.context if entry else None)


def unselected(evidence: Evidence, task: str, method: str, trained_on: str | None = None) -> list[RunInfo]:
    """Runs of ``method`` on ``task`` (trained on ``trained_on`` when given) that exist but are not among the
    report's runs."""
    picked = {run.label() for run in evidence.runs}
    return [
        run
        for run in evidence.available
        if run.task == task
        and run.method == method
        and run.label() not in picked
        and (trained_on is None or run_description(run)["trained_on"] == trained_on)
    ]


def _not_selected(method: str, runs: Sequence[RunInfo]) -> str:
    title = methods.title(method)
    article = "an" if title[:1] in "AEIOF" else "a"  # "an FR run", "a GR run"
    return NOT_SELECTED.format(article=article, method=title, runs=", ".join(run.label() for run in runs))


def paired_row(
    evidence: Evidence,
    task: str,
    attribute: str,
    baseline: Entry,
    entry: Entry,
    figure: str,
    margins: dict[str, float] | None = None,
) -> tuple[dict[str, Any] | None, compare_stats.Versus]:
    """The compare_stats.versus row of ``entry``'s setting and ``figure`` against ``baseline`` (its first run
    as reference, every seed paired), or None when the setting could not be paired (the Versus notes say why)."""
    versus = evidence.versus(task, attribute, baseline.runs[0], margins)
    table = versus.table
    chosen = table[(table["runs"] == ", ".join(entry.runs)) & (table["figure"] == figure)]
    if chosen.empty:
        return None, versus
    row: dict[str, Any] = {str(name): value for name, value in chosen.iloc[0].items()}
    for name in compare_stats.NUMBER_COLUMNS:
        row[name] = as_float(row[name])
    equivalent = row["equivalent"]
    row["equivalent"] = None if equivalent is None or equivalent != equivalent else bool(equivalent)  # NaN: None
    return row, versus


# ---------------------------------------------------------------------------------------------------
# Claims


def assess_claims(evidence: Evidence) -> list[Claim]:
    """Every claim the report tests, in the order the report lists them."""
    fundus = evidence.get(FUNDUS, "race")  # used only to find the main GR run's trained attribute
    gr = main_entry(fundus, methods.GR.name)
    gr_attribute = gr.trained_on if gr and gr.trained_on else "race"
    claims = [
        _reduction_claim(
            evidence,
            FUNDUS,
            gr_attribute,
            methods.GR.name,
            None,
            "max_acc_gap",
            0.69,
            title="GR-LoRA cuts MaxAccGap on the attribute it balances by ≥ 69 % relative to Vanilla LoRA",
            source="Gu et al., Table 1 (GR trained and measured on ethnicity: 3.80 % → 1.17 %)",
            context=""
            if gr_attribute == "ethnicity"
            else f" Here GR was trained and measured on {gr_attribute}, the paper's run on ethnicity.",
        ),
        _reduction_claim(
            evidence,
            FUNDUS,
            "race",
            methods.HYBRID.name,
            "race",
            "max_acc_gap",
            0.60,
            title="Hybrid-LoRA trained on race cuts race MaxAccGap by ≥ 60 % relative to Vanilla LoRA",
            source="Gu et al., Table 3 (4.36 % → 1.74 %)",
        ),
        _accuracy_claim(evidence),
        _lambda_claim(evidence),
    ]
    for task in (SKIN, FUNDUS):
        auc_vanilla, dtpr_vanilla = CMAC_MMD_FIGURES[task][methods.VANILLA.name]
        auc_cmac, dtpr_cmac = CMAC_MMD_FIGURES[task][methods.CMAC.name]
        reduction = round((dtpr_vanilla - dtpr_cmac) / dtpr_vanilla, 2)  # whole percent, as the claim is stated
        attribute = SKIN_INTERSECTION if task == SKIN else _cmac_attribute(evidence, task)
        subgroups = "intersectional ΔTPR (sex × age group)" if task == SKIN else "ΔTPR over the subgroups it aligns"
        claims.append(
            _reduction_claim(
                evidence,
                task,
                attribute,
                methods.CMAC.name,
                None,
                "delta_tpr",
                reduction,
                title=f"CMAC-MMD cuts the {subgroups} by ≥ {_percent(reduction, 0)} relative to vanilla fine-tuning, "
                f"{TASK_WORDS[task]}",
                source=f"CMAC-MMD, ΔTPR {dtpr_vanilla:.2f} → {dtpr_cmac:.2f}",
                context=""
                if task == SKIN
                else f" The paper's glaucoma subgroups are intersections of demographic attributes; here they are the "
                f"{attribute} groups the fundus CMAC run aligned.",
            )
        )
        claims.append(_auc_claim(evidence, task, attribute, auc_vanilla, auc_cmac))
    return claims


def _cmac_attribute(evidence: Evidence, task: str) -> str:
    entries = [e for (t, _), es in evidence.entries.items() if t == task for e in es if e.method == methods.CMAC.name]
    return entries[0].trained_on if entries and entries[0].trained_on else "race"


def _pair(evidence: Evidence, task: str, attribute: str, method: str, trained_on: str | None):
    entries = evidence.get(task, attribute)
    entry = main_entry(entries, method, trained_on=trained_on)
    return baseline_for(entries, entry), entry


def _missing(
    evidence: Evidence, task: str, attribute: str, method: str, trained_on: str | None, baseline, entry
) -> str | None:
    if entry is None:
        existing = unselected(evidence, task, method, trained_on)
        if existing:
            return _not_selected(method, existing)
        on = f" trained on {trained_on}" if trained_on else ""
        command = f"python -m training.train --data synth:{task} --method {method}" + (
            f" --attribute {trained_on}" if trained_on else ""
        )
        return f"no {methods.title(method)} run{on} on task {task} gives {attribute} figures; train one (`{command}`)"
    if baseline is None:
        vanilla = methods.BASELINE
        existing = unselected(evidence, task, vanilla.name)
        if existing:
            return f"there is no baseline to compare with: {_not_selected(vanilla.name, existing)}"
        return (
            f"no {vanilla.title} run on task {task} gives {attribute} figures to compare with; train one "
            f"(`python -m training.train --data synth:{task} --method {vanilla.name}`)"
        )
    return None


def _unpaired(versus: compare_stats.Versus, baseline: Entry) -> str:
    why = " ".join(versus.notes) or "the comparison holds no paired figures for it"
    return f"Not testable here: the run cannot be paired with {baseline.caption} on the same test samples ({why})."


def _paired_figures(row: dict[str, Any], scale: float = 1, digits: int = 3, unit: str = "") -> str:
    """'paired over 10 seeds: −0.141 [−0.167, −0.116], p = 0.002' (the 95 % interval; seeds and samples resampled)."""
    seeds = int(row["seeds"])
    over = f"paired over {seeds} seed{'s' if seeds != 1 else ''}"
    if row["difference"] is None:
        return f"{over}: no difference could be computed"
    text = f"{over}: {_signed(row['difference'] * scale, digits)}"
    if row["ci_lo"] is not None and row["ci_hi"] is not None:
        text += f" [{_signed(row['ci_lo'] * scale, digits)}, {_signed(row['ci_hi'] * scale, digits)}]"
    text += unit
    return text + (f", p = {_p(row['p_value'])}" if row["p_value"] is not None else ", no p-value (no resamples)")


def _interval(row: dict[str, Any], low: str = "ci_lo", high: str = "ci_hi") -> tuple[float, float] | None:
    return (row[low], row[high]) if row[low] is not None and row[high] is not None else None


def _reduction_claim(
    evidence: Evidence,
    task: str,
    attribute: str,
    method: str,
    trained_on: str | None,
    gap: str,
    reduction: float,
    *,
    title: str,
    source: str,
    context: str = "",
) -> Claim:
    """Reproduced when ``method``'s gap is significantly smaller than vanilla's (the paired test over all seeds,
    not by levelling down) and the means fall by at least ``reduction`` (a fraction)."""
    baseline, entry = _pair(evidence, task, attribute, method, trained_on)
    reason = _missing(evidence, task, attribute, method, trained_on, baseline, entry)
    if reason:
        return Claim(title, source, NOT_TESTABLE, f"Not testable here: {reason}.")
    before, after = baseline.values[gap], entry.values[gap]
    if before is None or after is None or before == 0:
        text = (
            f"Not testable here: {GAP_TITLES[gap]} on {attribute} is "
            f"{'undefined' if before is None or after is None else 'zero for Vanilla'}, so a relative change "
            "has no meaning."
        )
        return Claim(title, source, NOT_TESTABLE, text)
    row, versus = paired_row(evidence, task, attribute, baseline, entry, gap)
    if row is None:
        return Claim(title, source, NOT_TESTABLE, _unpaired(versus, baseline))
    figures = {"p_value": row["p_value"], "interval": _interval(row), "seeds": int(row["seeds"])}
    if row["verdict"] == compare_stats.NOT_JUDGED:
        text = (
            f"Not testable here: {entry.caption} is flagged ({_flags(evidence, task, attribute, entry)}), so its "
            f"{GAP_TITLES[gap]} is no evidence of fairness and gets no verdict."
        )
        return Claim(title, source, NOT_TESTABLE, text, **figures)
    value, reference = row["value"], row["reference_value"]
    if value is None or not reference:
        value, reference = after, before
    change = (value - reference) / reference
    sized = change <= -reduction
    paired_verdict = row["verdict"]
    if paired_verdict == compare_stats.SMALLER_GAP and sized:
        verdict = REPRODUCED
    elif paired_verdict == compare_stats.INCONCLUSIVE:
        verdict = UNDECIDED
    else:
        verdict = NOT_REPRODUCED
    group_metric = GAP_GROUP_METRIC[gap]
    worst_before, best_before = baseline.extremes[group_metric]
    worst_after, best_after = entry.extremes[group_metric]
    scale, digits, unit = (100, 2, " pp") if gap == "max_acc_gap" else (1, 3, "")
    shown = (lambda value: f"{value * 100:.1f} %") if group_metric == "accuracy" else (lambda value: f"{value:.2f}")
    text = (
        f"{_verdict_word(verdict)} {entry.caption} has {GAP_TITLES[gap]} on {attribute}"
        f"{' (%)' if gap == 'max_acc_gap' else ''} {_cell(entry, gap, scale)} against {baseline.caption}'s "
        f"{_cell(baseline, gap, scale)}: a relative change of {_percent(change, signed=True)} (the claim needs "
        f"≤ −{_percent(reduction, 0)}); {_paired_figures(row, scale, digits, unit)} ({paired_verdict}). "
        f"Worst-off group's {GROUP_METRIC_WORDS[group_metric]}: {shown(worst_before)} → {shown(worst_after)}; "
        f"best group's: {shown(best_before)} → {shown(best_after)}."
    )
    if verdict == REPRODUCED:
        text += (
            f" The gap is significantly smaller (p < {ALPHA:g} over seeds and test samples) and by at least the "
            "claimed size."
        )
    elif paired_verdict == compare_stats.SMALLER_GAP:
        text += (
            " Reproduced in direction, not in size: the gap is significantly smaller, by less than the paper reports."
        )
    elif paired_verdict == compare_stats.LEVELLED_DOWN:
        text += (
            " The gap closed by levelling down: the worst-off group gained nothing, so the smaller gap comes "
            "from lowering the others (the failure CMAC-MMD warns of), not from a fairer model."
        )
    elif paired_verdict == compare_stats.NO_CHANGE:
        text += (
            f" The gap does not shrink detectably: p ≥ {ALPHA:g}, so the difference is within what resampling the "
            "seeds and the test samples gives."
        )
    elif paired_verdict == compare_stats.LARGER_GAP:
        text += " The gap is significantly larger."
    else:
        text += f" Not decided: {NO_PAIRED_TEST}."
    return Claim(title, source, verdict, text + context, change, **figures)


GAP_GROUP_METRIC = {"max_acc_gap": "accuracy", "delta_tpr": "tpr"}  # the group figure each gap spreads
GROUP_METRIC_WORDS = {"accuracy": "accuracy", "tpr": "TPR"}


def _flags(evidence: Evidence, task: str, attribute: str, entry: Entry) -> str:
    table = evidence.comparisons[(task, attribute)].table
    flags = table.loc[table["run"].isin(entry.runs), "flags"].dropna()
    return "; ".join(dict.fromkeys("; ".join(flags).split("; "))) or "unreliable"


def _accuracy_claim(evidence: Evidence) -> Claim:
    """Gu et al., Table 1: no fine-tuned method costs more than 0.4 pp of Vanilla's overall accuracy, decided per
    method by two one-sided tests on the paired difference over all seeds (margin ACCURACY_TOLERANCE).

    Reproduced when every method's (1 − 2α) interval lies above −ACCURACY_TOLERANCE (equivalent within the margin,
    or more accurate); not reproduced when one lies entirely below it; otherwise not decidable on these runs."""
    title = "Fairness-aware LoRA (FR, GR, Hybrid) costs at most 0.4 percentage points of overall accuracy"
    source = "Gu et al., Table 1 (53.15-53.55 % for all four fine-tuned methods)"
    entries = evidence.get(FUNDUS, "race")
    fine_tuned = (methods.FR.name, methods.GR.name, methods.HYBRID.name)
    found = [e for e in (main_entry(entries, m) for m in fine_tuned) if e is not None]
    baseline = baseline_for(entries, found[0] if found else None)
    missing = [m for m in fine_tuned if main_entry(entries, m) is None]
    missing += [methods.BASELINE.name] if baseline is None else []
    not_selected = [_not_selected(m, runs) for m in missing if (runs := unselected(evidence, FUNDUS, m))]
    aside = "".join(f" {sentence[0].upper()}{sentence[1:]}." for sentence in not_selected)
    if not found or baseline is None:
        text = "Not testable here: it needs a Vanilla run and at least one FR, GR or Hybrid run on task fundus."
        return Claim(title, source, NOT_TESTABLE, text + aside)
    if baseline.values["accuracy"] is None or any(e.values["accuracy"] is None for e in found):
        return Claim(title, source, NOT_TESTABLE, "Not testable here: the overall accuracy is undefined.")
    judged: list[tuple[Entry, dict[str, Any], str]] = []
    for entry in found:
        row, versus = paired_row(evidence, FUNDUS, "race", baseline, entry, "accuracy", ACCURACY_MARGINS)
        if row is None:
            return Claim(title, source, NOT_TESTABLE, _unpaired(versus, baseline))
        judged.append((entry, row, _cost_status(row)))
    statuses = {status for _, _, status in judged}
    below = [(e, r) for e, r, status in judged if status == COST_BELOW]
    if below:
        verdict, (entry, row) = NOT_REPRODUCED, min(below, key=lambda pair: pair[1]["equivalence_hi"])
    else:
        if compare_stats.NOT_JUDGED in statuses:
            verdict = NOT_TESTABLE
        elif statuses <= {COST_EQUIVALENT, COST_NONE}:
            verdict = REPRODUCED
        else:
            verdict = UNDECIDED
        entry, row = min(((e, r) for e, r, _ in judged), key=_lowest_bound)
    tolerance = f"{ACCURACY_TOLERANCE * 100:.2f} pp"
    level = _percent(1 - 2 * ALPHA, 0)
    per_method = "; ".join(
        f"{e.caption} {_paired_figures(r, 100, 2, ' pp')}, {level} interval {_bounds(r, 100, 2)} pp: "
        + status.format(margin=tolerance)
        for e, r, status in judged
    )
    lead = "Not testable here." if verdict == NOT_TESTABLE else _verdict_word(verdict)
    text = (
        f"{lead} Overall accuracy (%) against {baseline.caption}'s {_cell(baseline, 'accuracy')}; each method's "
        f"paired difference with its 95 % interval, and the {level} interval of the equivalence test (two "
        f"one-sided tests at α = {ALPHA:g}, margin ±{tolerance}): {per_method}."
    )
    if verdict == NOT_REPRODUCED:
        text += f" {entry.caption} costs more than {tolerance}: its {level} interval lies entirely below −{tolerance}."
    elif verdict == NOT_TESTABLE:
        flagged = [e for e, _, status in judged if status == compare_stats.NOT_JUDGED]
        text += (
            " "
            + "; ".join(f"{e.caption} is flagged ({_flags(evidence, FUNDUS, 'race', e)})" for e in flagged)
            + ", so its accuracy is no evidence about the method."
        )
    elif verdict == REPRODUCED:
        text += f" No method costs more than {tolerance}: every {level} interval lies above −{tolerance}."
    elif COST_NO_TEST in statuses:
        text += f" Not decided: {NO_PAIRED_TEST}."
    else:
        open_ = [e.caption for e, _, status in judged if status == COST_OPEN]
        text += (
            f" The {level} interval of {', '.join(open_)} is wider than the ±{tolerance} tolerance, so these runs "
            f"show neither that the cost is at most {tolerance} nor that it is larger; more seeds or a larger test "
            "set would decide it."
        )
    return Claim(
        title,
        source,
        verdict,
        text + aside,
        row["difference"],
        row["p_value"],
        _interval(row),
        _interval(row, "equivalence_lo", "equivalence_hi"),
        int(row["seeds"]),
    )


ACCURACY_MARGINS = {"accuracy": ACCURACY_TOLERANCE}
# One method's standing in the accuracy claim ({margin}: the tolerance as written).
COST_EQUIVALENT = "equivalent within ±{margin}"
COST_NONE = "no cost, more accurate (the interval lies above −{margin})"
COST_BELOW = "costs more than {margin} (the interval lies below −{margin})"
COST_OPEN = "not decidable (the interval is wider than ±{margin})"
COST_NO_TEST = "no paired test"


def _cost_status(row: dict[str, Any]) -> str:
    """One method's standing in the accuracy claim, from its paired row (margin: ACCURACY_TOLERANCE)."""
    if row["verdict"] == compare_stats.NOT_JUDGED:
        return compare_stats.NOT_JUDGED
    low, high = row["equivalence_lo"], row["equivalence_hi"]
    if low is None or high is None:
        return COST_NO_TEST
    if row["equivalent"]:
        return COST_EQUIVALENT
    if high < -ACCURACY_TOLERANCE:
        return COST_BELOW
    if low > -ACCURACY_TOLERANCE:  # the whole interval above −margin: no cost (non-inferior), here a gain
        return COST_NONE
    return COST_OPEN


def _lowest_bound(pair: tuple[Entry, dict[str, Any]]) -> float:
    low = pair[1]["equivalence_lo"]
    return float("-inf") if low is None else low


def _bounds(row: dict[str, Any], scale: float, digits: int) -> str:
    interval = _interval(row, "equivalence_lo", "equivalence_hi")
    if interval is None:
        return "[–]"
    return f"[{_signed(interval[0] * scale, digits)}, {_signed(interval[1] * scale, digits)}]"


def _lambda_claim(evidence: Evidence) -> Claim:
    """Gu et al., Table 2: FR's MaxAccGap is non-monotonic in λ, worst at λ = 0.5."""
    title = "FR-LoRA's MaxAccGap is not monotonic in λ: λ = 0.5 is worse than both λ = 0.1 and λ = 1.0"
    source = "Gu et al., Table 2 (2.10 / 6.04 / 2.01 % at λ = 0.1 / 0.5 / 1.0)"
    attribute, rows = _lambda_rows(evidence, methods.FR.name)
    found = {lam: entry.values["max_acc_gap"] for lam, entry in rows.items()}
    gaps = {lam: gap for lam, gap in found.items() if gap is not None}
    if not {0.1, 0.5, 1.0} <= set(found) or len(gaps) < len(found):
        present = ", ".join(f"{lam:g}" for lam in sorted(found)) or "none"
        return Claim(
            title,
            source,
            NOT_TESTABLE,
            f"Not testable here: it needs FR runs at λ = 0.1, 0.5 and 1.0 "
            f"(found λ: {present}); train them with `python -m training.train --method {methods.FR.name} "
            "--lambda 0.1` etc.",
        )
    verdict = REPRODUCED if gaps[0.5] > max(gaps[0.1], gaps[1.0]) else NOT_REPRODUCED
    shown = "; ".join(f"λ = {lam:g}: {_cell(rows[lam], 'max_acc_gap')}" for lam in (0.1, 0.5, 1.0))
    worst = max(gaps, key=gaps.__getitem__)
    text = f"{_verdict_word(verdict)} FR's MaxAccGap on {attribute} (%): {shown}. The largest gap is at λ = {worst:g}."
    return Claim(title, source, verdict, text)


def _lambda_rows(evidence: Evidence, method: str) -> tuple[str, dict[float, Entry]]:
    """λ → the entry of ``method`` at that λ, on the attribute those runs were trained on."""
    race = [e for e in evidence.get(FUNDUS, "race") if e.method == method]
    attribute = race[0].trained_on if race and race[0].trained_on else "race"
    rows: dict[float, Entry] = {}
    for entry in evidence.get(FUNDUS, attribute):
        if (
            entry.method == method
            and entry.trained_on == attribute
            and entry.lam is not None
            and (entry.lam not in rows or entry.seeds > rows[entry.lam].seeds)
        ):
            rows[entry.lam] = entry
    return attribute, dict(sorted(rows.items()))


def _auc_claim(evidence: Evidence, task: str, attribute: str, paper_vanilla: float, paper_cmac: float) -> Claim:
    """CMAC-MMD keeps or improves AUC: reproduced when the paired difference is equivalent to 0 within ±AUC_MARGIN
    or significantly positive, not reproduced when it is significantly negative and not equivalent."""
    title = f"CMAC-MMD keeps or improves AUC, {TASK_WORDS[task]}"
    source = f"CMAC-MMD (AUC {paper_vanilla:.2f} → {paper_cmac:.2f})"
    baseline, entry = _pair(evidence, task, attribute, methods.CMAC.name, None)
    reason = _missing(evidence, task, attribute, methods.CMAC.name, None, baseline, entry)
    if reason:
        return Claim(title, source, NOT_TESTABLE, f"Not testable here: {reason}.")
    before, after = baseline.values["auc"], entry.values["auc"]
    if before is None or after is None:
        return Claim(title, source, NOT_TESTABLE, "Not testable here: the AUC is undefined (one class only).")
    change = (after - before) / before
    row, versus = paired_row(evidence, task, attribute, baseline, entry, "auc")
    if row is None:
        return Claim(title, source, NOT_TESTABLE, _unpaired(versus, baseline), change)
    figures = {
        "p_value": row["p_value"],
        "interval": _interval(row),
        "equivalence_interval": _interval(row, "equivalence_lo", "equivalence_hi"),
        "seeds": int(row["seeds"]),
    }
    margin = versus.margins.get("auc", AUC_MARGIN)
    paired_verdict = row["verdict"]
    if paired_verdict == compare_stats.NOT_JUDGED:
        text = (
            f"Not testable here: {entry.caption} is flagged ({_flags(evidence, task, attribute, entry)}), so its AUC "
            "gets no verdict."
        )
        return Claim(title, source, NOT_TESTABLE, text, change, **figures)
    significant = row["p_value"] is not None and row["p_value"] < ALPHA and row["difference"] is not None
    higher = significant and row["difference"] > 0
    lower = paired_verdict == compare_stats.LOWER
    if row["equivalent"] or higher:
        verdict = REPRODUCED
    elif lower:
        verdict = NOT_REPRODUCED
    else:
        verdict = UNDECIDED
    level = _percent(1 - 2 * ALPHA, 0)
    text = (
        f"{_verdict_word(verdict)} AUC {_cell(entry, 'auc', 1)} for {entry.caption} against "
        f"{_cell(baseline, 'auc', 1)} for {baseline.caption} ({_percent(change, signed=True)}); "
        f"{_paired_figures(row)}, {level} interval {_bounds(row, 1, 3)} ({paired_verdict})."
    )
    if row["equivalent"]:
        text += (
            f" CMAC-MMD keeps the AUC: the {level} interval lies within ±{margin:g} (two one-sided tests at "
            f"α = {ALPHA:g})" + (", and the AUC is significantly higher." if higher else ".")
        )
    elif higher:
        text += f" CMAC-MMD improves the AUC significantly (p < {ALPHA:g})."
    elif lower:
        text += f" The AUC is significantly lower (p < {ALPHA:g}) and not within ±{margin:g} of the baseline's."
    elif row["equivalence_lo"] is None:
        text += f" Not decided: {NO_PAIRED_TEST}."
    else:
        text += (
            f" The difference is not significant, but the {level} interval is wider "
            f"than the ±{margin:g} margin, so these runs show neither that the AUC is kept nor that it falls; more "
            "seeds or a larger test set would decide it."
        )
    return Claim(title, source, verdict, text, change, **figures)


def _signed(value: float, digits: int) -> str:
    """'+1.25' / '−1.25' with a true minus sign, as the claims are written."""
    return f"{round(value, digits) + 0.0:+.{digits}f}".replace("-", "−")  # + 0.0: no '−0.00'


def _percent(fraction: float, digits: int = 1, *, signed: bool = False) -> str:
    """0.75 → '75.0 %' ('+75.0 %' / '−75.0 %' when signed)."""
    return (_signed(100 * fraction, digits) if signed else f"{100 * fraction:.{digits}f}") + " %"


def _p(p: float | None) -> str:
    """'0.002', '0.04', '0.62' (as Compare prints p); '–' when undefined."""
    if p is None:
        return "–"
    return f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def _verdict_word(verdict: str) -> str:
    return {
        REPRODUCED: "Reproduced.",
        NOT_REPRODUCED: "Not reproduced on this benchmark.",
        UNDECIDED: "Not decidable on these runs.",
        NOT_TESTABLE: "Not testable here.",
    }[verdict]


# ---------------------------------------------------------------------------------------------------
# Rendering


def _cell(entry: Entry, name: str, scale: float = 100, digits: int | None = None) -> str:
    """'53.50 [51.30, 55.70]' for one run, '53.50 ± 0.40 (3 seeds)' for several; '–' if undefined."""
    digits = digits if digits is not None else (2 if scale == 100 else 3)
    value = entry.values[name]
    if value is None:
        return "–"
    text = f"{value * scale:.{digits}f}"
    if entry.seeds > 1 or entry.intervals is None:  # several seeds: their spread, never an averaged interval
        spread = entry.spread[name]
        shown = f" ± {spread * scale:.{digits}f}" if spread is not None else ""
        return f"{text}{shown} ({entry.seeds} seeds)"
    interval = entry.intervals[name]
    return f"{text} [{interval[0] * scale:.{digits}f}, {interval[1] * scale:.{digits}f}]" if interval else text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def render(evidence: Evidence, claims: list[Claim], *, sources: Sequence[str] = ()) -> str:
    """The Markdown report."""
    lines = [
        "# FairDx reproduction report",
        "",
        _data_statement(evidence),
        "",
        _statistics_statement(evidence, sources),
    ]
    lines += [""]
    if not evidence.runs:
        lines += [NO_RUNS_FOUND.format(dirs=", ".join(map(str, sources)) or "the given folders"), ""]
    else:
        lines += ["## Runs", "", *_runs_table(evidence), ""]
    lines += _paired_section(evidence)
    lines += _gu_section(evidence)
    lines += _cmac_mmd_section(evidence)
    lines += ["## Claims", ""]
    for number, claim in enumerate(claims, start=1):
        lines += [f"### {number}. {claim.title} — {claim.verdict}", "", f"*Claim:* {claim.source}.", "", claim.text, ""]
    notes = [note for comparison in evidence.comparisons.values() for note in comparison.notes]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in dict.fromkeys(notes)), ""]
    return "\n".join(lines).rstrip() + "\n"


def _statistics_statement(evidence: Evidence, sources: Sequence[str]) -> str:
    """What the brackets, the ± and the verdicts are, as computed."""
    where = f" from {', '.join(map(str, sources))}" if sources else ""
    level, narrow = _percent(CI_LEVEL, 0), _percent(1 - 2 * ALPHA, 0)
    return (
        f"Generated {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} from {len(evidence.runs)} "
        f"run(s){where}. All figures are on the {evidence.split} split. A setting is a method with its settings "
        f"(λ, w_max, trained attribute, data, backbone, ...); its runs differ only in the seed. **One seed:** the "
        f"figure with its {level} bootstrap percentile interval in brackets ({evidence.bootstrap} resamples, seed "
        f"{evidence.seed}; whole clusters resampled where the predictions have a cluster column), and per-group "
        f"accuracy with its {level} Wilson interval. **Several seeds:** mean ± standard deviation over the seeds "
        "(a spread, not an interval; per-seed intervals are not averaged). **Claims** are decided by paired "
        "comparisons with the vanilla baseline (inference.compare_stats): each seed of a setting is paired with "
        "the baseline run of the same seed where there is one, on the same test samples, and the difference is "
        "bootstrapped over the seeds and the samples together (one shared resample of the samples per replicate), "
        f'giving a {level} interval and a two-sided p (α = {ALPHA:g}). "No accuracy cost" and "keeps the '
        f'AUC" are equivalence tests, two one-sided tests on the {narrow} paired interval, with margins '
        f"±{ACCURACY_TOLERANCE * 100:.1f} accuracy points (Gu et al.'s tolerance) and ±{AUC_MARGIN:g} AUC; "
        "a smaller gap whose worst-off group did not gain is levelling down, not fairness. A max − min gap over "
        "groups is positive even when the groups do not differ: Compare shows each gap's noise floor (the gap "
        "under permuted group labels) beside it."
    )


def _data_statement(evidence: Evidence) -> str:
    specs = sorted({run.settings.data for run in evidence.runs if isinstance(run, RunInfo)})
    real = [spec for spec in specs if not spec.startswith(SYNTH_PREFIX)]
    statement = (
        "**The benchmark is synthetic, not clinical data.** The images come from FairDx's generator "
        "(training/synth.py) with a designed, documented group bias and tiny embedded backbones, not from "
        "Harvard-GF/FairVLMed or HAM10000 and not from the papers' 7B/CLIP models. A verdict below says "
        "whether a method reacts to a known bias the way the paper reports; it says nothing about patients "
        "or about the papers' own numbers."
    )
    if real:
        statement += (
            f" Some runs used other data ({', '.join(real)}); their figures are reported as they are, "
            "without any claim about that data's provenance."
        )
    return statement


def _runs_table(evidence: Evidence) -> list[str]:
    rows = []
    for run in sorted(evidence.runs, key=lambda r: (r.task, methods.rank(r.method), r.run_id)):
        if isinstance(run, UploadedRun):
            rows.append([run.label(), run.task, uploads.METHOD_TITLE, "–", "–", "–", "–", UPLOADED_DATA])
            continue
        described = run_description(run)
        rows.append(
            [
                run.label(),
                run.task,
                methods.title(run.method),
                _maybe(described["lambda"]),
                _maybe(described["w_max"]),
                described["trained_on"] or "–",
                described["seed"] if described["seed"] is not None else "–",
                run.settings.data,
            ]
        )
    return _table(["Run", "Task", "Method", "λ", "w_max", "Trained on", "Seed", "Data"], rows)


def _maybe(value) -> str:
    return "–" if value is None else f"{value:g}"


def _paired_section(evidence: Evidence) -> list[str]:
    """Compare's attribute: per task, every setting paired against the reference run (compare_stats.versus)."""
    attribute = evidence.attribute
    if not attribute:
        return []
    lines: list[str] = []
    for task in evidence.tasks():
        lines += [f"## Paired comparisons on {attribute} — {TASK_WORDS.get(task, f'task {task}')}", ""]
        comparison = evidence.comparisons.get((task, attribute))
        if comparison is None or comparison.empty:
            lines += [f"No {task} run gives {attribute} figures (see the notes).", ""]
            continue
        reference, remark = _section_reference(evidence, task, comparison)
        versus = evidence.versus(task, attribute, reference)
        if versus.reference is None:
            lines += [compare_stats.NO_REFERENCE.capitalize() + ".", ""]
            continue
        captions = {", ".join(e.runs): e.caption for e in evidence.get(task, attribute)}
        lines += [_reference_statement(evidence, versus, captions, reference) + remark, ""]
        if versus.empty:
            lines += ["No other setting to compare with the reference.", ""]
        else:
            lines += [
                *_table(
                    ["Setting (seeds)", *(_figure_title(f) for f in PAIRED_FIGURES)], _versus_rows(versus, captions)
                ),
                "",
            ]
        lines += [*(f"- {note}" for note in versus.notes), *([""] if versus.notes else [])]
    return lines


def _reference_statement(
    evidence: Evidence, versus: compare_stats.Versus, captions: dict[str, str], reference: str | None
) -> str:
    """What the paired section compares with, and how the pairs are formed."""
    chosen = versus.reference
    if chosen is None:
        return ""
    seeds = len(chosen.runs)
    caption = captions.get(", ".join(chosen.runs), chosen.caption)
    return (
        f"Reference: **{caption}** ({', '.join(chosen.runs)}; {seeds} seed{'s' if seeds != 1 else ''}). Each cell "
        "is setting − reference: every seed of a setting is paired with the reference run of the same seed where "
        f"there is one (else with {reference}), and paired runs share the test samples (runs scored on different "
        f"rows are joined by sample id), so the {_percent(CI_LEVEL, 0)} interval is a paired bootstrap over the "
        f"seeds and the samples together ({evidence.bootstrap} resamples) and p is two-sided. Accuracy and AUC are "
        f"equivalent when the {_percent(1 - 2 * ALPHA, 0)} interval lies within ±{versus.margins['accuracy']:g} "
        f"(accuracy) / ±{versus.margins['auc']:g} (AUC), two one-sided tests; a smaller MaxAccGap or ΔTPR whose "
        "worst-off group did not gain is levelling down. Differences are fractions (0.010 = 1 percentage point)."
    )


def _section_reference(evidence: Evidence, task: str, comparison: Comparison) -> tuple[str | None, str]:
    """The reference of a task's paired section: the chosen run when it is among this task's compared runs,
    else compare_stats.default_reference (with a sentence saying why, unless it is another task's run)."""
    chosen = evidence.reference
    fallback = compare_stats.default_reference(comparison)
    if chosen is None or chosen in comparison.results:
        return chosen or fallback, ""
    if any(run.label() == chosen and run.task != task for run in evidence.runs):
        return fallback, ""
    why = "was skipped on this attribute" if chosen in comparison.skipped else "is not among the selected runs"
    return fallback, f" The chosen reference {chosen} {why}, so the default reference is used."


def _versus_rows(versus: compare_stats.Versus, captions: dict[str, str]) -> list[list[str]]:
    rows = []
    for runs, figures in versus.table.groupby("runs", sort=False):
        first = figures.iloc[0]
        seeds = int(first["seeds"])
        flag = " ⚠ degenerate" if first["flagged"] else ""
        cells = [f"{captions.get(str(runs), first['setting'])} ({seeds} seed{'s' if seeds != 1 else ''}){flag}"]
        for figure in PAIRED_FIGURES:
            chosen = figures[figures["figure"] == figure]
            cells.append(_versus_cell({str(k): v for k, v in chosen.iloc[0].items()}) if len(chosen) else "–")
        rows.append(cells)
    return rows


def _versus_cell(row: dict[str, Any]) -> str:
    """'−0.060 [−0.100, −0.023], p = 0.004, fairer'."""
    difference, low, high = as_float(row["difference"]), as_float(row["ci_lo"]), as_float(row["ci_hi"])
    if difference is None:
        return f"–, {row['verdict']}"
    interval = f" [{_signed(low, 3)}, {_signed(high, 3)}]" if low is not None and high is not None else ""
    return f"{_signed(difference, 3)}{interval}, p = {_p(as_float(row['p_value']))}, {row['verdict']}"


def _figure_title(figure: str) -> str:
    return OVERALL_TITLES.get(figure) or GAP_TITLES[figure]


def _gu_section(evidence: Evidence) -> list[str]:
    lines = ["## Gu et al. — fair LoRA for glaucoma (task fundus)", "", f"{methods.GU_FAIR_LORA.citation}.", ""]
    if FUNDUS not in evidence.tasks():
        return lines + ["Not run: no fundus runs.", ""]
    race = evidence.get(FUNDUS, "race")
    lines += ["### Table 1 — overall accuracy, AUC and MaxAccGap (%)", ""]
    header = [
        "Setting",
        "Runs",
        "Overall accuracy",
        "AUC",
        *(f"MaxAccGap {a}" for a in TABLE1_ATTRIBUTES),
        "Paper (ethnicity): acc / MaxAccGap",
    ]
    rows = []
    for entry in race:
        paper = _paper_table1(entry)
        gaps = [
            _cell(e, "max_acc_gap") if (e := _same(evidence.get(FUNDUS, a), entry)) else "–" for a in TABLE1_ATTRIBUTES
        ]
        rows.append(
            [
                entry.caption,
                ", ".join(entry.runs),
                _cell(entry, "accuracy"),
                _cell(entry, "auc", 1),
                *gaps,
                f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else "–",
            ]
        )
    lines += [*_table(header, rows), "", "AUC as a fraction; the paper's Table 1 reports no AUC.", ""]
    lines += _table2(evidence)
    lines += ["### Table 3 — per-group accuracy with n (%)", ""]
    for attribute in TABLE1_ATTRIBUTES:
        lines += [f"**{attribute}**", "", *_group_table(evidence.get(FUNDUS, attribute), "accuracy"), ""]
    lines += _across_attributes(evidence)
    return lines


def _paper_table1(entry: Entry) -> tuple[float, float] | None:
    """The paper's (accuracy, MaxAccGap) for this setting: Table 1 at λ=0.5 / w_max=10, Table 2 for FR's λ."""
    if entry.method == methods.FR.name and entry.lam in GU_TABLE2:
        return GU_TABLE2[entry.lam]
    if entry.lam not in (None, GU_LAMBDA) or entry.w_max not in (None, GU_W_MAX):
        return None
    return GU_TABLE1.get(entry.method)


def _same(entries: list[Entry], entry: Entry) -> Entry | None:
    """The entry for the same runs in another attribute's comparison."""
    return next((e for e in entries if e.runs == entry.runs), None)


def _table2(evidence: Evidence) -> list[str]:
    lines = ["### Table 2 — λ ablation (%)", ""]
    any_rows = False
    for method in (methods.FR.name, methods.HYBRID.name):
        attribute, rows = _lambda_rows(evidence, method)
        name = methods.title(method)
        if len(rows) < 2:
            found = ", ".join(f"{lam:g}" for lam in rows) or "none"
            lines += [f"{name}: not run (needs runs at two or more λ; found λ: {found}).", ""]
            continue
        any_rows = True
        baseline = baseline_for(evidence.get(FUNDUS, attribute), next(iter(rows.values())))
        table = []
        if baseline:
            paper = GU_TABLE1[methods.VANILLA.name] if method == methods.FR.name else None
            table.append(
                [
                    f"0 ({baseline.caption})",
                    _cell(baseline, "accuracy"),
                    _cell(baseline, "max_acc_gap"),
                    "–",
                    f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else "–",
                ]
            )
        for lam, entry in rows.items():
            change = "–"
            if baseline and baseline.values["max_acc_gap"] and entry.values["max_acc_gap"] is not None:
                before = baseline.values["max_acc_gap"]
                change = _percent((before - entry.values["max_acc_gap"]) / before, signed=True)
            paper = GU_TABLE2.get(lam) if method == methods.FR.name else None
            table.append(
                [
                    f"{lam:g}",
                    _cell(entry, "accuracy"),
                    _cell(entry, "max_acc_gap"),
                    change,
                    f"{paper[0]:.2f} / {paper[1]:.2f}" if paper else "–",
                ]
            )
        lines += [
            f"**{name}, MaxAccGap on {attribute}**",
            "",
            *_table(
                [
                    "λ",
                    "Overall accuracy",
                    "MaxAccGap",
                    "Gap reduction vs Vanilla",
                    "Paper (ethnicity): acc / MaxAccGap",
                ],
                table,
            ),
            "",
        ]
    if not any_rows:
        lines[-1:] = ["", "The λ ablation was not run on these runs.", ""]
    return lines


def _group_table(entries: list[Entry], metric: str, *, count: str = "n", scale: float = 100) -> list[str]:
    if not entries:
        return ["Not run: no runs give these figures."]
    groups = sorted(set().union(*(e.groups.index for e in entries)))
    counts = {g: {int(e.groups.loc[g, count]) for e in entries if g in e.groups.index} for g in groups}
    header = ["Setting", *(f"{g} ({count}={counts[g].pop()})" if len(counts[g]) == 1 else g for g in groups)]
    rows = []
    for entry in entries:
        cells = []
        for group in groups:
            if group not in entry.groups.index or pd.isna(entry.groups.loc[group, metric]):
                cells.append("–")
                continue
            figures = entry.groups.loc[group]
            digits = 1 if scale == 100 else 2
            text = f"{figures[metric] * scale:.{digits}f}"
            if entry.seeds > 1:  # mean ± sd over the seeds, never averaged Wilson bounds
                spread = figures[f"{metric}_sd"]
                text += f" ± {spread * scale:.{digits}f}" if not pd.isna(spread) else ""
            elif metric == "accuracy" and not pd.isna(figures["accuracy_lo"]):
                text += f" [{figures['accuracy_lo'] * scale:.1f}, {figures['accuracy_hi'] * scale:.1f}]"
            if not header[1 + groups.index(group)].endswith(")"):
                text += f" ({count}={int(figures[count])})"
            cells.append(text)
        rows.append([entry.caption, *cells])
    return _table(header, rows)


def _across_attributes(evidence: Evidence) -> list[str]:
    lines = ["### Hybrid vs Vanilla across attributes (%) — the shape of the paper's Table 3", ""]
    rows = []
    for attribute in ACROSS_ATTRIBUTES:
        entries = evidence.get(FUNDUS, attribute)
        hybrid = main_entry(entries, methods.HYBRID.name, trained_on=attribute)
        vanilla = baseline_for(entries, hybrid)
        paper = GU_TABLE3[attribute]
        cells = [_cell(vanilla, "accuracy"), _cell(vanilla, "max_acc_gap")] if vanilla else ["–", "–"]
        if hybrid:
            cells += [_cell(hybrid, "accuracy"), _cell(hybrid, "max_acc_gap")]
        else:
            cells += [f"not run (no Hybrid run trained on {attribute})", "–"]
        rows.append([attribute, *cells, f"{paper[0]:.2f} → {paper[2]:.2f}"])
    lines += _table(
        [
            "Attribute",
            "Vanilla acc",
            "Vanilla MaxAccGap",
            "Hybrid acc",
            "Hybrid MaxAccGap",
            "Paper MaxAccGap: Vanilla → Hybrid",
        ],
        rows,
    )
    return lines + ["", "Vanilla is attribute-agnostic: one model evaluated on every attribute, as in the paper.", ""]


def _cmac_mmd_section(evidence: Evidence) -> list[str]:
    lines = ["## CMAC-MMD — intersectional ΔTPR and AUC", "", f"{methods.CMAC_MMD.citation}.", ""]
    for task in (SKIN, FUNDUS):
        attribute = SKIN_INTERSECTION if task == SKIN else _cmac_attribute(evidence, task)
        entries = evidence.get(task, attribute)
        lines += [f"### {TASK_WORDS[task].capitalize()}, subgroups of {attribute.replace('+', ' × ')}", ""]
        if not entries:
            lines += [f"Not run: no {task} runs give {attribute} figures.", ""]
            continue
        paper = CMAC_MMD_FIGURES[task]
        rows = [
            [
                e.caption,
                ", ".join(e.runs),
                _cell(e, "auc", 1),
                _cell(e, "delta_tpr", 1),
                _cell(e, "equalized_odds", 1),
                _cell(e, "accuracy"),
                f"{paper[e.method][0]:.2f} / {paper[e.method][1]:.2f}" if e.method in paper else "–",
            ]
            for e in entries
        ]
        lines += _table(
            ["Setting", "Runs", "AUC", "ΔTPR", "Equalized odds", "Overall accuracy (%)", "Paper: AUC / ΔTPR"], rows
        )
        lines += [
            "",
            "TPR per subgroup (n_pos = positives in the subgroup):",
            "",
            *_group_table(entries, "tpr", count="n_pos", scale=1),
            "",
        ]
    return lines


# ---------------------------------------------------------------------------------------------------
# Entry points


def build_report(
    runs: Sequence[Source],
    *,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    split: str = "test",
    sources: Sequence[str] = (),
    attribute: str | None = None,
    reference: str | None = None,
    available: Sequence[RunInfo] = (),
) -> str:
    """The Markdown report for ``runs`` (FairDx runs and uploaded models; the app's "Build reproduction report"
    button passes the runs selected in Compare).

    ``attribute`` (Compare's) is evaluated for every task and gets a section of paired comparisons against
    ``reference`` (a run's label; default ``compare_stats.default_reference``). ``available``: every run that
    exists, so that a claim whose run was not selected says so instead of asking to train one.
    """
    evidence = collect(
        runs, bootstrap=bootstrap, seed=seed, split=split, attribute=attribute, reference=reference, available=available
    )
    return render(evidence, assess_claims(evidence), sources=sources)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        action="append",
        type=Path,
        default=None,
        help="folder of run directories (repeatable; default: assets/runs and runs/)",
    )
    parser.add_argument("--out", type=Path, help="write the report here (default: print it)")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP, help="bootstrap resamples per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    parser.add_argument("--split", default="test", choices=("val", "test"), help="split to evaluate")
    args = parser.parse_args(argv)
    dirs = args.runs or list(DEFAULT_RUNS_DIRS)
    runs = list_runs(*dirs)
    text = build_report(
        runs, bootstrap=args.bootstrap, seed=args.seed, split=args.split, sources=[str(d) for d in dirs]
    )
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out} ({len(runs)} runs)", file=sys.stderr)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
