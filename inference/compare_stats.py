"""Is one run fairer than another? Paired comparisons against a reference, aggregated over seeds.

Compare and the reproduction report decide "fairer" and "no accuracy cost" here, never from
overlapping intervals:

- **Paired on the same test samples.** Runs scored on the same test split (same ids, labels and
  clusters, in the same order: ``RunResult.alignment``) were bootstrapped by
  ``training.metrics.evaluate`` with the same resamples, so the difference of their replicates *is*
  the paired bootstrap of the difference (``training.metrics.paired``), at no extra cost. Runs whose
  rows differ are joined by sample id and resampled together (``paired.paired_replicates``); runs
  that share no ids cannot be paired and say so.
- **Settings, not runs.** Runs that differ only in their seed are one *setting*
  (:func:`setting_key`). A setting's difference is the mean over its seeds of (run − reference),
  each seed paired with the reference's run of the same seed when there is one. Its interval is a
  two-level bootstrap: each replicate draws the seeds with replacement and one shared resample of
  the test samples, so it covers both the seed-to-seed and the test-set variation (Davison &
  Hinkley 1997, §3.8; the p-value is the two-sided bootstrap p of ``paired.summarize``).
- **Equivalence for "no cost".** Accuracy and AUC are *equivalent* to the reference when the
  (1 − 2α) interval of the difference lies inside ± the margin (two one-sided tests, Schuirmann 1987;
  ``paired.EQUIVALENCE_MARGINS``: 1 accuracy point, 0.01 AUC).
- **Verdicts.** A gap is *smaller* / *larger* when p < α, else *no detectable change*; a smaller
  MaxAccGap or ΔTPR whose worst-off group did not gain is flagged *levelling down* (CMAC-MMD's warning:
  every group made equally bad); a degenerate model's figures get no verdict.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from inference.compare_engine import (
    OVERALL_FIGURES,
    Comparison,
    RunResult,
    Source,
    gap_min_n,
    run_description,
    unreliable,
)
from inference.uploads import UploadedRun
from training import methods, metrics
from training.metrics import paired
from training.rundir import PREDICTIONS

ALPHA = 0.05
FIGURES = (*OVERALL_FIGURES, *metrics.GAPS)
HIGHER_IS_FAIRER = paired.HIGHER_IS_FAIRER
WORST_GROUP_FIGURE = {"max_acc_gap": "accuracy", "delta_tpr": "tpr"}  # the group figure a gap spreads

# Verdicts, as the tables print them.
EQUIVALENT = "equivalent (±{margin:g})"
HIGHER, LOWER, INCONCLUSIVE = "higher", "lower", "inconclusive"
SMALLER_GAP, LARGER_GAP, NO_CHANGE = "fairer", "less fair", "no detectable change"
LEVELLED_DOWN = "fairer only by levelling down"
NOT_JUDGED = "not judged: degenerate model"
NO_PAIRING = "cannot be paired with the reference: {reason}"
NOT_PAIRED = "not paired: no test samples shared with the reference (see the notes)"
NO_REFERENCE = "pick a reference run to compare with"
UNKNOWN_REFERENCE = "reference '{reference}' is not among the compared runs ({runs})"


@dataclass(frozen=True)
class Setting:
    """Runs that differ only in their seed: one line of the vs-reference table."""

    key: tuple
    caption: str
    method: str
    runs: tuple[str, ...]  # labels, as the comparison names them
    seeds: tuple[int | None, ...]


@dataclass(frozen=True)
class Versus:
    """Every setting of a comparison against the reference setting."""

    reference: Setting | None
    table: pd.DataFrame  # long: one row per (setting, figure), see FRAME_COLUMNS
    notes: tuple[str, ...] = ()
    alpha: float = ALPHA
    margins: dict[str, float] = field(default_factory=lambda: dict(paired.EQUIVALENCE_MARGINS))

    @property
    def empty(self) -> bool:
        return self.table.empty


NUMBER_COLUMNS = (
    "value",
    "reference_value",
    "difference",
    "ci_lo",
    "ci_hi",
    "p_value",
    "equivalence_lo",
    "equivalence_hi",
)  # the float columns of Versus.table (NaN where undefined)
FRAME_COLUMNS = [
    "setting",
    "method",
    "runs",
    "seeds",
    "figure",
    *NUMBER_COLUMNS,
    "equivalent",
    "verdict",
    "n_failed",
    "flagged",
]


def setting_key(run: Source) -> tuple:
    """What makes two runs the same setting: everything but the seed (λ and w_max only where used)."""
    described = run_description(run)
    if isinstance(run, UploadedRun):
        return ("uploaded", run.label())
    cfg = run.settings
    context = (cfg.backbone, cfg.epochs, cfg.lr, cfg.max_samples, cfg.balanced_sampling, cfg.data, run.task)
    return (described["method"], described["lambda"], described["w_max"], described["trained_on"], context)


def settings_of(comparison: Comparison) -> list[Setting]:
    """The comparison's runs grouped by setting, in the registry's method order, seeds ascending."""
    grouped: dict[tuple, list[RunResult]] = {}
    for result in comparison.results.values():
        if result.source is not None:
            grouped.setdefault(setting_key(result.source), []).append(result)
    keys = sorted(grouped, key=lambda k: (methods.rank(k[0]), str(k[1:])))
    captions = _captions({key: grouped[key][0] for key in keys})
    settings = []
    for key in keys:
        results = sorted(grouped[key], key=lambda r: (_seed(r) is None, _seed(r) or 0, r.run))
        settings.append(
            Setting(key, captions[key], str(key[0]), tuple(r.run for r in results), tuple(_seed(r) for r in results))
        )
    return settings


def _seed(result: RunResult) -> int | None:
    return result.row.get("seed") if isinstance(result.row.get("seed"), (int, np.integer)) else None


def _captions(first: dict[tuple, RunResult]) -> dict[tuple, str]:
    """'Hybrid λ=0.5 w_max=10 on race'; settings that would read the same are numbered."""
    captions: dict[tuple, str] = {}
    seen: dict[str, int] = {}
    for key, result in first.items():
        if isinstance(result.source, UploadedRun):
            caption = result.run
        else:
            row = result.row
            parts = [methods.title(row["method"])]
            parts += [f"λ={row['lambda']:g}"] if row.get("lambda") is not None else []
            parts += [f"w_max={row['w_max']:g}"] if row.get("w_max") is not None else []
            parts += [f"on {row['trained_on']}"] if row.get("trained_on") else []
            caption = " ".join(parts)
        seen[caption] = seen.get(caption, 0) + 1
        captions[key] = caption if seen[caption] == 1 else f"{caption} #{seen[caption]}"
    return captions


def default_reference(comparison: Comparison) -> str | None:
    """The run to compare against: the vanilla setting with the most seeds (its first run), else the first run."""
    settings = settings_of(comparison)
    baselines = [s for s in settings if s.method == methods.BASELINE.name]
    chosen = max(baselines, key=lambda s: len(s.runs)) if baselines else (settings[0] if settings else None)
    return chosen.runs[0] if chosen else None


def versus(
    comparison: Comparison,
    reference: str | None = None,
    *,
    alpha: float = ALPHA,
    margins: dict[str, float] | None = None,
) -> Versus:
    """Each setting of `comparison` against the setting of run `reference` (a label; default:
    :func:`default_reference`). ValueError for a reference that is not among the compared runs."""
    margins = {**paired.EQUIVALENCE_MARGINS, **(margins or {})}
    settings = settings_of(comparison)
    reference = reference or default_reference(comparison)
    if reference is None:
        return Versus(None, pd.DataFrame(columns=FRAME_COLUMNS), (), alpha, margins)
    chosen = next((s for s in settings if reference in s.runs), None)
    if chosen is None:
        raise ValueError(UNKNOWN_REFERENCE.format(reference=reference, runs=", ".join(comparison.results) or "none"))
    rows: list[dict] = []
    notes: list[str] = []
    for setting in settings:
        if setting.key == chosen.key:
            continue
        try:
            rows += _setting_rows(comparison, setting, chosen, reference, alpha, margins)
        except metrics.MetricsError as error:
            notes.append(f"{setting.caption}: " + NO_PAIRING.format(reason=error))
            rows += _unpaired_rows(comparison, setting)
    return Versus(chosen, pd.DataFrame(rows, columns=FRAME_COLUMNS), tuple(notes), alpha, margins)


def _setting_rows(
    comparison: Comparison,
    setting: Setting,
    reference: Setting,
    picked: str,
    alpha: float,
    margins: dict[str, float],
) -> list[dict]:
    results = comparison.results
    by_seed = dict(zip(reference.seeds, reference.runs, strict=True))
    pairs = [(run, by_seed.get(seed, picked)) for run, seed in zip(setting.runs, setting.seeds, strict=True)]
    differences = [_pair_differences(results[a], results[b], comparison) for a, b in pairs]
    flagged = any(unreliable(results[run].row.get("flags")) for run in setting.runs)
    rng = np.random.default_rng(comparison.seed)
    rows = []
    for figure in FIGURES:
        per_seed = [d[figure] for d in differences]
        observed = float(np.mean([values[0] for values in per_seed]))
        replicates = _over_seeds(rng, np.stack([values[1:] for values in per_seed]))
        summary = paired.summarize(observed, replicates, 1 - alpha)
        narrow = paired.summarize(observed, replicates, 1 - 2 * alpha)  # for the equivalence test
        margin = margins.get(figure)
        equivalent = None
        if margin is not None and narrow["ci"] is not None:
            equivalent = bool(-margin < narrow["ci"][0] and narrow["ci"][1] < margin)
        ci = summary["ci"] or (None, None)
        rows.append(
            {
                "setting": setting.caption,
                "method": setting.method,
                "runs": ", ".join(setting.runs),
                "seeds": len(setting.runs),
                "figure": figure,
                "value": _mean_figure(comparison, setting.runs, figure),
                "reference_value": _mean_figure(comparison, tuple(b for _, b in pairs), figure),
                "difference": summary["difference"],
                "ci_lo": ci[0],
                "ci_hi": ci[1],
                "p_value": summary["p_value"],
                "equivalence_lo": (narrow["ci"] or (None, None))[0],
                "equivalence_hi": (narrow["ci"] or (None, None))[1],
                "equivalent": equivalent,
                "verdict": _verdict(comparison, figure, summary, equivalent, margin, alpha, flagged, setting, pairs),
                "n_failed": summary["n_failed"],
                "flagged": flagged,
            }
        )
    return rows


def _unpaired_rows(comparison: Comparison, setting: Setting) -> list[dict]:
    """A setting that shares no test samples with the reference: shown, with no difference and why."""
    flagged = any(unreliable(comparison.results[run].row.get("flags")) for run in setting.runs)
    return [
        {
            "setting": setting.caption,
            "method": setting.method,
            "runs": ", ".join(setting.runs),
            "seeds": len(setting.runs),
            "figure": figure,
            "value": _mean_figure(comparison, setting.runs, figure),
            "verdict": NOT_JUDGED if flagged else NOT_PAIRED,
            "n_failed": 0,
            "flagged": flagged,
        }
        for figure in FIGURES
    ]


def _over_seeds(rng: np.random.Generator, differences: np.ndarray) -> np.ndarray:
    """(seeds × B) paired differences → B replicates of their mean, the seeds drawn with replacement
    in each replicate (one seed: its replicates as they are)."""
    k, b = differences.shape
    if k == 1 or b == 0:
        return differences.mean(axis=0)
    drawn = rng.integers(0, k, size=(b, k))
    return differences[drawn, np.arange(b)[:, None]].mean(axis=1)


def _pair_differences(run: RunResult, reference: RunResult, comparison: Comparison) -> dict[str, np.ndarray]:
    """run − reference per figure: element 0 on the data, then one per paired bootstrap replicate."""
    attribute = comparison.attribute
    observed = {name: _point(run, attribute, name) - _point(reference, attribute, name) for name in FIGURES}
    if comparison.bootstrap and run.alignment and run.alignment == reference.alignment:
        return {
            name: np.concatenate(
                [[observed[name]], _replicates(run, attribute, name) - _replicates(reference, attribute, name)]
            )
            for name in FIGURES
        }
    if run.source is None or reference.source is None:
        raise metrics.MetricsError("a run of the comparison has no predictions to pair")
    joined = _joined_differences(
        _source_key(run.source),
        _source_key(reference.source),
        attribute,
        comparison.split,
        comparison.bootstrap,
        comparison.seed,
        max(gap_min_n(run.source), gap_min_n(reference.source)),
    )
    return {name: joined[name] for name in FIGURES}


def _point(result: RunResult, attribute: str, name: str) -> float:
    report = result.report or {}
    owner = report.get("overall", {}) if name in OVERALL_FIGURES else report.get("attributes", {}).get(attribute, {})
    value = owner.get(name)
    return float("nan") if value is None else float(value)


def _replicates(result: RunResult, attribute: str, name: str) -> np.ndarray:
    owner = None if name in OVERALL_FIGURES else attribute
    return np.asarray((result.replicates or {}).get(owner, {}).get(name, np.array([])), dtype=float)


def _source_key(source: Source) -> tuple[str, int, int, float]:
    """(predictions path, mtime, size, threshold): a rewritten file is a new key."""
    path = (source.path / PREDICTIONS).resolve()
    status = path.stat()
    return (str(path), status.st_mtime_ns, status.st_size, source.threshold)


@functools.lru_cache(maxsize=256)
def _joined_differences(
    run: tuple[str, int, int, float],
    reference: tuple[str, int, int, float],
    attribute: str,
    split: str,
    bootstrap: int,
    seed: int,
    gap_min_n: int,
) -> dict[str, np.ndarray]:
    """The slow path for runs scored on different rows: join by id, resample the shared rows together."""
    a, b = paired.join_runs(metrics.read_predictions(run[0]), metrics.read_predictions(reference[0]), split=split)
    replicates = paired.paired_replicates(
        a,
        b,
        [attribute],
        threshold=run[3],
        reference_threshold=reference[3],
        bootstrap=bootstrap,
        seed=seed,
        cluster_column=metrics.cluster_of(a),
        gap_min_n=gap_min_n,
    )
    return {**replicates["overall"], **replicates[attribute]}


def _mean_figure(comparison: Comparison, runs: Sequence[str], figure: str) -> float | None:
    values = [comparison.table.loc[comparison.table["run"] == run, figure] for run in runs]
    numbers = [float(v.iloc[0]) for v in values if len(v) and pd.notna(v.iloc[0])]
    return float(np.mean(numbers)) if numbers else None


def _verdict(comparison, figure, summary, equivalent, margin, alpha, flagged, setting, pairs) -> str:
    if flagged:
        return NOT_JUDGED
    difference, p = summary["difference"], summary["p_value"]
    if difference is None or p is None:
        return INCONCLUSIVE
    if figure in OVERALL_FIGURES:
        if equivalent:
            return EQUIVALENT.format(margin=margin)
        if p < alpha:
            return HIGHER if difference > 0 else LOWER
        return INCONCLUSIVE
    if p >= alpha:
        return NO_CHANGE
    fairer = difference > 0 if figure in HIGHER_IS_FAIRER else difference < 0
    if fairer and figure in WORST_GROUP_FIGURE and _levelled_down(comparison, figure, setting, pairs):
        return LEVELLED_DOWN
    return SMALLER_GAP if fairer else LARGER_GAP


def _levelled_down(comparison: Comparison, figure: str, setting: Setting, pairs) -> bool:
    """Did the worst-off group fail to gain (mean over seeds) while the gap closed?"""
    metric = WORST_GROUP_FIGURE[figure]
    groups = comparison.groups[~comparison.groups["small"].astype(bool)]

    def worst(runs) -> float:
        values = [groups.loc[groups["run"] == run, metric].dropna().min() for run in runs]
        return float(np.nanmean(values)) if values else float("nan")

    return worst(setting.runs) <= worst([b for _, b in pairs])
