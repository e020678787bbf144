"""Do the fairness objectives shrink the gaps, at what cost in accuracy, and how does it depend on λ and on the bias?

``python -m bench.fairness [--quick] [--fresh] [--dry-run] [--sections main lambda strength] [--seeds N]``

Trains on the synthetic benchmarks with the demo recipe (``training.demos.DEMOS``, changed only where
named below) and reads each run's ``eval.json`` (test split):

- **main**: vanilla, fr, gr, hybrid and cmac on fundus (tiny Qwen2.5-VL, attribute race) and skin
  (tiny CLIP, attribute sex+age_group), training seeds 0-9 (LoRA init, data order, dropout) on one
  draw of each benchmark (``Plan.data_seed``: a fixed, enriched test set -- at least 300 test images
  per race group, 50 malignant test images per sex × age subgroup -- so the spread is the
  training's). Every seed is kept. Reported: mean ± sample standard deviation over the seeds of
  overall accuracy and AUC, MaxAccGap on race and ethnicity (fundus), intersectional ΔTPR and
  MaxAccGap over sex × age group (skin), each at the threshold the run chose on its validation split;
  per method the paired difference to vanilla (same seed, same data) with its 95 % t interval and the
  paired t-test's p-value over all seeds; a "vanilla vs vanilla" row (seed k against seed k + 1), the
  change retraining alone produces; and how many seeds the degenerate-model guard flagged.
- **lambda**: λ ∈ {0.1, 0.5, 1.0} (Gu et al., Table 2) for fr and hybrid on fundus and cmac on skin.
- **strength**: every method at data bias strength 0, 0.5 and 1.0 (``synth:<task>:...,strength=s``):
  how each method's gap reduction depends on how biased the data is.
  The lambda and strength sections use the first seed only (the budget), so read them as one draw.

Runs whose setting another section already has are trained once (the names say the setting:
``<task>-<method>-l<λ>-s<strength>-seed<k>``). They go to ``bench/runs/fairness/`` (``--quick``:
``bench/runs/fairness-quick/``) as complete run directories, so ``python -m inference.report --runs
bench/runs/fairness`` reads them too. A run already there with the same settings is reused (the bench
resumes where it stopped; an interrupted run continues from its checkpoint), unless it recorded other
backbone weights than its backbone holds now (``versions.backbone``, e.g. after ``python -m
training.build_assets``): that run is stale. ``--fresh`` retrains.

Sizes (2 CPU cores): the full bench uses the n=2000 benchmark with a stratified subset of 960 training
samples (``FULL.max_samples``) and the demo recipe, 114 runs (``--workers 2`` trains two at a time);
``--quick`` a n=600 benchmark (smaller test enrichment), 160
samples, one epoch, one seed, the methods of each paper on its task (fundus: vanilla, fr, gr, hybrid;
skin: vanilla, cmac), one extra λ and one extra bias strength, 9 runs, so every method and every table
runs once. Runs use one torch thread (``--threads``): the tiny models gain nothing from a second, and
on a shared machine a 2-thread op that loses a core waits for it (10x slower steps were seen).
Prints the tables and writes ``bench/results/fairness.json`` (``--quick``: ``fairness_quick.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import statistics
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, RUNS_DIR, environment, environment_line, markdown_table, write_result
from training.methods import BASELINE, CMAC, FR, GR, HYBRID
from training.methods import NAMES as METHODS

VANILLA = BASELINE.name  # the reference of every paired change

TASKS = ("fundus", "skin")
SECTIONS = ("main", "lambda", "strength")
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 3

STALE_RUNS = (
    "{n} run(s) in {runs_dir} were trained with other settings or backbone weights than this bench asks for "
    "({names}); "
    "rerun with --fresh to retrain them, or pass another --runs-dir"
)
NOT_SYNTHETIC = "DEMOS['{task}'].data is '{data}'; the fairness bench needs a synthetic spec (synth:{task}...)"
UNKNOWN_SECTION = "unknown section '{name}'; choose from {choices}"
RUN_FAILED = "run {name} crashed ({error}); its traceback is in {log}"


class RunFailed(RuntimeError):
    """A training run crashed; the message names its log."""


@dataclass(frozen=True)
class Metric:
    """One figure read from eval.json: overall (attribute None) or of one attribute / intersection."""

    key: str
    label: str
    name: str
    attribute: str | None = None

    @property
    def is_gap(self) -> bool:
        return self.attribute is not None


ACCURACY, AUC = Metric("accuracy", "accuracy", "accuracy"), Metric("auc", "AUC", "auc")
METRICS: dict[str, tuple[Metric, ...]] = {
    "fundus": (
        ACCURACY,
        AUC,
        Metric("max_acc_gap:race", "MaxAccGap race", "max_acc_gap", "race"),
        Metric("max_acc_gap:ethnicity", "MaxAccGap ethnicity", "max_acc_gap", "ethnicity"),
    ),
    "skin": (
        ACCURACY,
        AUC,
        Metric("delta_tpr:sex+age_group", "ΔTPR sex×age", "delta_tpr", "sex+age_group"),
        Metric("max_acc_gap:sex+age_group", "MaxAccGap sex×age", "max_acc_gap", "sex+age_group"),
    ),
}
PRIMARY_GAP = {"fundus": "max_acc_gap:race", "skin": "delta_tpr:sex+age_group"}  # the gap each paper targets


@dataclass(frozen=True)
class Plan:
    """What one bench invocation trains: sizes, seeds, and which methods each section covers."""

    name: str
    n: int  # synthetic benchmark size (train/val/test 70/10/20)
    data_seed: int  # synthetic benchmark seed, the same for every run (the training seeds vary)
    max_samples: int | None  # stratified training subset (None = the whole training split)
    epochs: int | None  # None = the demo recipe's epochs
    seeds: tuple[int, ...]
    methods: dict[str, tuple[str, ...]]
    lambdas: tuple[float, ...]
    lambda_methods: dict[str, tuple[str, ...]]
    strengths: tuple[float, ...]
    strength_methods: dict[str, tuple[str, ...]]
    sections: tuple[str, ...] = SECTIONS
    test_min: dict[str, int] | None = None  # test-split enrichment per task (None: the demo spec's)
    runs_dir: Path = RUNS_DIR / "fairness"
    json_path: Path = RESULTS_DIR / "fairness.json"


FULL = Plan(
    name="full",
    n=2000,
    data_seed=0,
    max_samples=960,
    epochs=None,
    seeds=tuple(range(10)),
    methods=dict.fromkeys(TASKS, METHODS),
    lambdas=(0.1, 0.5, 1.0),
    lambda_methods={"fundus": (FR.name, HYBRID.name), "skin": (CMAC.name,)},
    strengths=(0.0, 0.5, 1.0),
    strength_methods={"fundus": (VANILLA, HYBRID.name), "skin": (VANILLA, CMAC.name)},
)
QUICK = Plan(
    name="quick",
    n=600,
    data_seed=0,
    max_samples=160,
    epochs=1,
    seeds=(0,),
    methods={"fundus": (VANILLA, FR.name, GR.name, HYBRID.name), "skin": (VANILLA, CMAC.name)},
    lambdas=(0.5, 1.0),
    lambda_methods={"fundus": (FR.name,)},
    strengths=(0.0, 1.0),
    strength_methods={"fundus": (VANILLA, HYBRID.name)},
    test_min={"fundus": 40, "skin": 8},
    runs_dir=RUNS_DIR / "fairness-quick",
    json_path=RESULTS_DIR / "fairness_quick.json",
)


@dataclass(frozen=True)
class BenchRun:
    """One training run of the bench, identified by its setting."""

    task: str
    method: str
    lam: float
    strength: float
    seed: int
    sections: tuple[str, ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        return run_name(self.task, self.method, self.lam, self.strength, self.seed)


def run_name(task: str, method: str, lam: float, strength: float, seed: int) -> str:
    return f"{task}-{method}-l{lam:g}-s{strength:g}-seed{seed}"


# ------------------------------------------------------------------------------------------ plan
def base_setting(task: str) -> tuple[float, float]:
    """(λ, bias strength) of the demo recipe: the main section's setting."""
    from training.data_spec import SYNTH_PREFIX, parse_synth
    from training.demos import DEMOS

    base = DEMOS[task]
    if not base.data.startswith(SYNTH_PREFIX):
        raise ValueError(NOT_SYNTHETIC.format(task=task, data=base.data))
    return float(base.lam), float(parse_synth(base.data).strength)


def plan_runs(plan: Plan, tasks: Sequence[str] = TASKS) -> list[BenchRun]:
    """Every run the plan needs, each setting once (a run shared by sections lists them all)."""
    wanted: dict[tuple, set[str]] = {}  # setting -> sections, in the order first asked for

    def add(section: str, task: str, method: str, lam: float, strength: float, seed: int) -> None:
        wanted.setdefault((task, method, lam, strength, seed), set()).add(section)

    for task in tasks:
        lam0, strength0 = base_setting(task)
        if "main" in plan.sections:
            for seed in plan.seeds:
                for method in plan.methods.get(task, ()):
                    add("main", task, method, lam0, strength0, seed)
        if "lambda" in plan.sections and plan.lambda_methods.get(task):
            add("lambda", task, VANILLA, lam0, strength0, plan.seeds[0])  # the baseline of the relative change
            for method in plan.lambda_methods[task]:
                for lam in plan.lambdas:
                    add("lambda", task, method, lam, strength0, plan.seeds[0])
        if "strength" in plan.sections:
            methods = plan.strength_methods.get(task, ())
            for strength in plan.strengths:
                for method in dict.fromkeys((VANILLA, *methods)) if methods else ():
                    add("strength", task, method, lam0, strength, plan.seeds[0])
    return [BenchRun(*key, sections=tuple(s for s in SECTIONS if s in sections)) for key, sections in wanted.items()]


def bench_config(run: BenchRun, plan: Plan, runs_dir: Path):
    """The demo recipe of the run's task with the bench's changes: method, λ, seed, data, size, no bootstrap."""
    from training.data_spec import SYNTH_DEFAULTS, parse_synth
    from training.demos import DEMOS

    base = DEMOS[run.task]
    # val_min=0: bench/results/fairness.json was measured on the plain 10 % validation split, before the
    # demos enriched theirs (training.synth.VAL_ENRICHMENT); a re-run with it is left to the next full bench.
    spec = replace(parse_synth(base.data), n=plan.n, seed=plan.data_seed, strength=run.strength, val_min=0)
    if plan.test_min is not None:
        spec = replace(spec, test_min=plan.test_min[run.task])
    data = str(spec) + (f",image_size={spec.image_size}" if spec.image_size != SYNTH_DEFAULTS["image_size"] else "")
    return base.replace(
        method=run.method,
        lam=run.lam,
        seed=run.seed,
        data=data,
        max_samples=plan.max_samples if plan.max_samples is not None else base.max_samples,
        epochs=plan.epochs or base.epochs,
        eval_bootstrap=0,  # the bench reports the spread over seeds; inference.report bootstraps on its own
        runs_dir=str(runs_dir),
        run_name=run.name,
    )


# ----------------------------------------------------------------------------------------- train
def run_state(cfg) -> tuple[str, list[str]]:
    """'done' (complete, same settings), 'resume' (a checkpoint of the same settings), 'todo', or 'stale'
    (a run or checkpoint of other settings) with the fields that differ."""
    from training import rundir

    final = Path(cfg.runs_dir) / cfg.run_name
    checkpoint = rundir.staging_dir(cfg.runs_dir, cfg.run_name) / rundir.CHECKPOINT
    if final.exists():
        if rundir.missing_files(final):
            return "stale", ["incomplete run"]
        try:
            recorded = json.loads((final / rundir.CONFIG).read_text())
        except (OSError, json.JSONDecodeError):
            return "stale", ["config.json unreadable"]
        differs = _differences(cfg, recorded) + _backbone_rebuilt(cfg, recorded)
        return ("stale", differs) if differs else ("done", [])
    if checkpoint.is_dir():
        import torch

        try:
            recorded = torch.load(checkpoint / "state.pt", weights_only=True)["config"]
        except (OSError, RuntimeError, KeyError):
            return "stale", ["checkpoint unreadable"]
        differs = _differences(cfg, recorded)
        return ("stale", differs) if differs else ("resume", [])
    return "todo", []


def _differences(cfg, recorded: dict) -> list[str]:
    """Fields of the resolved config (backbone, lr filled in as the trainer does) that `recorded` has otherwise."""
    from training.train import resolve  # (heavy import: torch, transformers)

    expected = resolve(cfg, cfg.task).to_dict()
    return [k for k, v in expected.items() if k not in ("runs_dir", "trackers") and recorded.get(k) != v]


def _backbone_rebuilt(cfg, recorded: dict) -> list[str]:
    """['backbone weights'] when the run recorded a fingerprint of other weights than its backbone holds now
    (e.g. after ``python -m training.build_assets``); runs from before fingerprints were recorded pass."""
    from training.backbones import backbone_fingerprint, resolve_backbone
    from training.train import resolve

    was = (recorded.get("versions") or {}).get("backbone")
    if not was:
        return []
    now = backbone_fingerprint(resolve_backbone(resolve(cfg, cfg.task).backbone))
    return ["backbone weights"] if now and now != was else []


def remove_run(cfg) -> None:
    from training import rundir

    for path in (Path(cfg.runs_dir) / cfg.run_name, rundir.staging_dir(cfg.runs_dir, cfg.run_name)):
        shutil.rmtree(path, ignore_errors=True)


def train_runs(configs: Sequence, states: dict[str, str], *, workers: int = 1, threads: int = 1) -> dict[str, float]:
    """Train the runs not done yet and return each one's wall seconds.

    ``workers`` > 1 trains that many runs at once in worker processes (spawned, each with ``threads``
    torch threads): the tiny models use one core each, so two workers on two cores halve the wall time.
    The trainer's own output (model summary, progress) goes to ``<runs_dir>/.logs/<run>.log``; the bench
    prints one line per run with an estimate of the time left.
    """
    todo = [c for c in configs if states[c.run_name] in ("todo", "resume")]
    seconds: dict[str, float] = {}

    def finished(cfg, took: float) -> None:
        seconds[cfg.run_name] = took
        left = len(todo) - len(seconds)
        eta = sum(_mean_seconds(seconds, c) for c in todo if c.run_name not in seconds) / max(1, workers)
        print(
            f"[{len(seconds)}/{len(todo)}] {cfg.run_name}: {took:.1f} s"
            + (f" (about {eta / 60:.1f} min left)" if left else ""),
            file=sys.stderr,
            flush=True,
        )

    if workers <= 1:
        for cfg in todo:
            finished(cfg, _train_one(cfg, states[cfg.run_name] == "resume", threads))
        return seconds
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_train_one, cfg, states[cfg.run_name] == "resume", threads): cfg for cfg in todo}
        for future in as_completed(futures):
            finished(futures[future], future.result())
    return seconds


def _train_one(cfg, resume: bool, threads: int) -> float:
    """One run, its output to its log file; a crash becomes RunFailed naming the log (picklable)."""
    import torch

    from training.train import train

    torch.set_num_threads(max(1, threads))
    log_path = Path(cfg.runs_dir) / ".logs" / f"{cfg.run_name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log_path.open("a") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        try:
            train(cfg, resume=resume, progress=False)
        except Exception as err:
            traceback.print_exc()
            raise RunFailed(RUN_FAILED.format(name=cfg.run_name, error=err, log=log_path)) from None
    return round(time.perf_counter() - start, 2)


def _mean_seconds(seconds: dict[str, float], cfg) -> float:
    """Mean time of the finished runs of the same task (or of all runs): the estimate for a run to come."""
    same = [s for name, s in seconds.items() if name.split("-")[0] == cfg.task]
    pool = same or list(seconds.values())
    return statistics.fmean(pool) if pool else 0.0


# --------------------------------------------------------------------------------------- collect
def metric_value(report: dict, metric: Metric) -> float | None:
    """A figure from eval.json's report; None when undefined (e.g. a group without positives) or absent."""
    if metric.attribute is None:
        value = report.get("overall", {}).get(metric.name)
    else:
        value = report.get("attributes", {}).get(metric.attribute, {}).get(metric.name)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def read_record(path: Path, run: BenchRun) -> dict[str, Any]:
    """The bench's view of one complete run directory."""
    report = json.loads((path / "eval.json").read_text())["report"]
    training = json.loads((path / "config.json").read_text()).get("training", {})
    return {
        "name": run.name,
        "task": run.task,
        "method": run.method,
        "lam": run.lam,
        "strength": run.strength,
        "seed": run.seed,
        "sections": list(run.sections),
        "metrics": {m.key: metric_value(report, m) for m in METRICS[run.task]},
        "degenerate": bool((report.get("guard") or {}).get("degenerate")),
        "guard": report.get("guard"),
        "threshold": report.get("threshold"),
        "reweighted": report.get("overall", {}).get("reweighted"),
        "train_seconds": training.get("seconds"),
        "steps": training.get("steps"),
        "fairness_active_fraction": training.get("fairness_active_fraction"),
    }


# ------------------------------------------------------------------------------------- aggregate
def summarize(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the defined values."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return {"mean": None, "sd": None, "n": 0, "values": []}
    sd = statistics.stdev(kept) if len(kept) > 1 else 0.0
    return {"mean": statistics.fmean(kept), "sd": sd, "n": len(kept), "values": kept}


def relative_change(value: float | None, baseline: float | None) -> float | None:
    """(value − baseline) / baseline; None when either is undefined or the baseline is 0."""
    if value is None or baseline is None or baseline == 0:
        return None
    return (value - baseline) / baseline


def paired_test(differences: Iterable[float | None], level: float = 0.95) -> dict[str, Any]:
    """Mean of paired differences over seeds, its t interval at ``level`` and the two-sided p-value of a
    one-sample t-test against 0 (= the paired t-test of method vs vanilla on the same seeds).

    Every seed is kept; a seed whose figure is undefined is counted in ``n_undefined``. With fewer
    than two defined differences, or all equal, there is no interval and no p-value.
    """
    from scipy import stats

    values = list(differences)
    kept = [float(v) for v in values if v is not None]
    out: dict[str, Any] = {
        "mean": None,
        "ci": None,
        "p_value": None,
        "n": len(kept),
        "n_undefined": len(values) - len(kept),
        "values": kept,
    }
    if not kept:
        return out
    out["mean"] = statistics.fmean(kept)
    if len(kept) < 2 or statistics.pstdev(kept) == 0.0:
        return out
    sem = statistics.stdev(kept) / math.sqrt(len(kept))
    half = float(stats.t.ppf(0.5 + level / 2, len(kept) - 1)) * sem
    out["ci"] = [out["mean"] - half, out["mean"] + half]
    out["p_value"] = float(stats.ttest_1samp(kept, 0.0).pvalue)
    return out


def against_vanilla(records: Sequence[dict], vanilla: dict[int, dict], metrics: Sequence[Metric]) -> dict[str, Any]:
    """Per metric: the value over seeds, and the paired difference and relative change against vanilla.

    ``vanilla`` maps seed -> vanilla record of the same task and data; a seed without one is left out
    of the paired figures (not of the value). ``test`` is :func:`paired_test` of the differences.
    """
    out = {}
    for metric in metrics:
        values = [r["metrics"][metric.key] for r in records]
        pairs = [
            (r["metrics"][metric.key], vanilla[r["seed"]]["metrics"][metric.key])
            for r in records
            if r["seed"] in vanilla
        ]
        differences = [None if m is None or v is None else m - v for m, v in pairs]
        out[metric.key] = {
            "value": summarize(values),
            "delta": summarize(differences),
            "relative": summarize(relative_change(m, v) for m, v in pairs),
            "test": paired_test(differences),
        }
    out["degenerate_seeds"] = sorted(r["seed"] for r in records if r.get("degenerate"))
    return out


NOISE_FLOOR = "vanilla vs vanilla"
"""The noise-floor row: vanilla seed k against vanilla seed k + 1 (mod the seeds), i.e. the paired change
that retraining alone produces. A method's change inside this spread is not a method effect."""


def noise_floor(vanilla: dict[int, dict], metrics: Sequence[Metric]) -> dict[str, Any] | None:
    seeds = sorted(vanilla)
    if len(seeds) < 3:
        return None
    shifted = [{**vanilla[seed], "seed": seeds[(i - 1) % len(seeds)]} for i, seed in enumerate(seeds)]
    return against_vanilla(shifted, vanilla, metrics)


def vanilla_at(rows: Sequence[dict], strength: float) -> dict[int, dict]:
    """The vanilla runs among ``rows`` at this bias strength, by seed."""
    return {r["seed"]: r for r in rows if r["method"] == VANILLA and r["strength"] == strength}


def aggregate(records: Sequence[dict], plan: Plan) -> dict[str, Any]:
    """The three sections' figures from the run records (pure: no files, no training)."""
    result: dict[str, Any] = {"main": {}, "lambda": {}, "strength": {}}
    tasks = list(dict.fromkeys(r["task"] for r in records))
    for task in tasks:
        rows = [r for r in records if r["task"] == task]
        metrics = METRICS[task]
        lam0, strength0 = base_setting(task)

        if "main" in plan.sections:
            main_rows = [r for r in rows if "main" in r["sections"]]
            result["main"][task] = {
                method: against_vanilla(
                    [r for r in main_rows if r["method"] == method], vanilla_at(rows, strength0), metrics
                )
                for method in METHODS
                if any(r["method"] == method for r in main_rows)
            }
            floor = noise_floor({r["seed"]: r for r in main_rows if r["method"] == VANILLA}, metrics)
            if floor:
                result["main"][task][NOISE_FLOOR] = floor
        if "lambda" in plan.sections:
            by_method: dict[str, dict[str, Any]] = {}
            for method in plan.lambda_methods.get(task, ()):
                for lam in plan.lambdas:
                    chosen = [
                        r
                        for r in rows
                        if r["method"] == method
                        and r["lam"] == lam
                        and r["strength"] == strength0
                        and r["seed"] == plan.seeds[0]
                    ]
                    if chosen:
                        by_method.setdefault(method, {})[f"{lam:g}"] = against_vanilla(
                            chosen, vanilla_at(rows, strength0), metrics
                        )
            if by_method:
                result["lambda"][task] = by_method
        if "strength" in plan.sections and plan.strength_methods.get(task):
            by_strength: dict[str, dict[str, Any]] = {}
            for strength in plan.strengths:
                chosen = [
                    r for r in rows if r["strength"] == strength and r["lam"] == lam0 and r["seed"] == plan.seeds[0]
                ]
                for method in METHODS:
                    mine = [r for r in chosen if r["method"] == method]
                    if mine:
                        by_strength.setdefault(f"{strength:g}", {})[method] = against_vanilla(
                            mine, {r["seed"]: r for r in chosen if r["method"] == VANILLA}, metrics
                        )
            if by_strength:
                result["strength"][task] = by_strength
    return result


# ---------------------------------------------------------------------------------------- tables
def fmt_value(summary: dict[str, Any], digits: int = 3) -> str:
    """'0.712 ± 0.013' (± the sample sd over seeds; no ± for one seed); '–' when undefined."""
    if summary["mean"] is None:
        return "–"
    if summary["n"] > 1:
        return f"{summary['mean']:.{digits}f} ± {summary['sd']:.{digits}f}"
    return f"{summary['mean']:.{digits}f}"


def fmt_relative(summary: dict[str, Any]) -> str:
    """'−35% ± 12%' relative change; '–' when undefined."""
    if summary["mean"] is None:
        return "–"
    text = f"{100 * summary['mean']:+.0f}%".replace("-", "−")
    return text + (f" ± {100 * summary['sd']:.0f}%" if summary["n"] > 1 else "")


def fmt_points(summary: dict[str, Any]) -> str:
    """'+0.4 pt' difference in percentage points."""
    if summary["mean"] is None:
        return "–"
    text = f"{100 * summary['mean']:+.1f} pt".replace("-", "−")
    return text + (f" ± {100 * summary['sd']:.1f}" if summary["n"] > 1 else "")


def fmt_test(test: dict[str, Any], digits: int = 3) -> str:
    """'−0.061 [−0.092, −0.030] p=0.002': paired mean difference, its 95 % t interval and p-value."""
    if test is None or test["mean"] is None:
        return "–"
    text = f"{test['mean']:+.{digits}f}"
    if test["ci"]:
        text += f" [{test['ci'][0]:+.{digits}f}, {test['ci'][1]:+.{digits}f}] p={test['p_value']:.2g}"
    return text.replace("-", "−")


def figure_cells(figures: dict[str, Any], metrics: Sequence[Metric], *, with_delta: bool) -> list[str]:
    cells = []
    for metric in metrics:
        entry = figures[metric.key]
        cells.append(fmt_value(entry["value"]))
        if with_delta:
            cells.append(
                fmt_test(entry.get("test"))
                if entry.get("test") and entry["test"]["n"] > 1
                else fmt_relative(entry["relative"])
                if metric.is_gap
                else fmt_points(entry["delta"])
            )
    return cells


def figure_headers(metrics: Sequence[Metric], *, with_delta: bool) -> list[str]:
    headers = []
    for metric in metrics:
        headers.append(metric.label)
        if with_delta:
            headers.append("vs vanilla")
    return headers


def main_table(task: str, figures: dict[str, Any]) -> str:
    """One row per method (and the noise floor): value over seeds ± sd, then the paired difference to
    vanilla with its 95 % interval and p-value; 'degenerate' counts seeds the guard flagged."""
    metrics = METRICS[task]
    rows = []
    for method, entry in figures.items():
        cells = figure_cells(entry, metrics, with_delta=True)
        if method == VANILLA:  # the baseline: no change against itself
            cells = [cell if i % 2 == 0 else "" for i, cell in enumerate(cells)]
        if method == NOISE_FLOOR:  # only the change is meaningful: vanilla's own values again
            cells = ["" if i % 2 == 0 else cell for i, cell in enumerate(cells)]
        rows.append([method, entry[metrics[0].key]["value"]["n"], len(entry.get("degenerate_seeds", [])), *cells])
    headers = ["method", "seeds", "degenerate", *figure_headers(metrics, with_delta=True)]
    return markdown_table(headers, rows)


def lambda_table(task: str, figures: dict[str, Any]) -> str:
    metrics = METRICS[task]
    rows = [
        [method, lam, *figure_cells(entry, metrics, with_delta=True)]
        for method, by_lam in figures.items()
        for lam, entry in by_lam.items()
    ]
    return markdown_table(["method", "λ", *figure_headers(metrics, with_delta=True)], rows)


def strength_table(task: str, figures: dict[str, Any]) -> str:
    """One row per bias strength: vanilla's accuracy and primary gap, then each method's gap and its change."""
    gap = PRIMARY_GAP[task]
    label = next(m.label for m in METRICS[task] if m.key == gap)
    methods = [m for m in METHODS if any(m in by for by in figures.values())]
    headers = ["strength", "vanilla accuracy", f"vanilla {label}"]
    headers += [f"{m} {label} (vs vanilla)" for m in methods if m != VANILLA]
    rows = []
    for strength, by_method in figures.items():
        vanilla = by_method.get(VANILLA)
        row = [
            strength,
            fmt_value(vanilla["accuracy"]["value"]) if vanilla else "–",
            fmt_value(vanilla[gap]["value"]) if vanilla else "–",
        ]
        for method in methods:
            if method == VANILLA:
                continue
            entry = by_method.get(method)
            row.append(f"{fmt_value(entry[gap]['value'])} ({fmt_relative(entry[gap]['relative'])})" if entry else "–")
        rows.append(row)
    return markdown_table(headers, rows)


def report_text(result: dict[str, Any], plan: Plan) -> str:
    """All tables as Markdown, with the plan's sizes in the headings."""
    size = f"n={plan.n}, {plan.max_samples or 'all'} training samples, epochs {plan.epochs or 'as the demos'}"
    parts = []
    for task, figures in result["main"].items():
        parts += [
            f"## {task}: methods over seeds {', '.join(map(str, plan.seeds))} ({size})",
            "",
            main_table(task, figures),
            "",
        ]
    for task, figures in result["lambda"].items():
        parts += [f"## {task}: λ ablation (seed {plan.seeds[0]})", "", lambda_table(task, figures), ""]
    for task, figures in result["strength"].items():
        parts += [
            f"## {task}: gap against data bias strength (seed {plan.seeds[0]})",
            "",
            strength_table(task, figures),
            "",
        ]
    parts.append(
        "Gaps: lower is fairer. Values: mean ± sample sd over seeds. 'vs vanilla': mean paired difference "
        "(method − vanilla, same seed and data) with its 95 % t interval and the paired t-test's p-value "
        f"over all seeds; '{NOISE_FLOOR}' pairs vanilla seeds k and k+1, the change retraining alone "
        "gives. With one seed: relative change of a gap, points of accuracy/AUC."
    )
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fairness",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="the few-minute variant (one seed, small data, one epoch)")
    parser.add_argument("--fresh", action="store_true", help="retrain the planned runs even if they exist")
    parser.add_argument("--dry-run", action="store_true", help="list the planned runs and their state; train nothing")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=list(SECTIONS),
        metavar="NAME",
        help=f"sections to run, of {', '.join(SECTIONS)}",
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="tasks to run")
    parser.add_argument("--seeds", type=int, help="number of seeds (0..N-1) of the main section (default: the plan's)")
    parser.add_argument("--n", type=int, help="synthetic benchmark size (default: the plan's)")
    parser.add_argument("--max-samples", type=int, help="training subset per run (default: the plan's)")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the plan's)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (1: tiny models gain nothing from more, and a shared machine "
        "slows multi-threaded ops by up to 10x)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs trained at once, each in its own process (2 on a 2-core machine halves the time)",
    )
    parser.add_argument("--runs-dir", type=Path, help="where the runs go (default: bench/runs/fairness[-quick])")
    parser.add_argument("--json", type=Path, help="where the figures go (default: bench/results/fairness[_quick].json)")
    return parser


def plan_from_args(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else FULL
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        raise ValueError(UNKNOWN_SECTION.format(name=unknown[0], choices=", ".join(SECTIONS)))
    changes: dict[str, Any] = {"sections": tuple(s for s in SECTIONS if s in args.sections)}
    if args.seeds:
        changes["seeds"] = tuple(range(args.seeds))
    for name in ("n", "max_samples", "epochs"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.runs_dir:
        changes["runs_dir"] = args.runs_dir
    if args.json:
        changes["json_path"] = args.json
    return replace(plan, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = plan_from_args(args)
        runs = plan_runs(plan, args.tasks)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    from training.config import ConfigError, validate
    from training.data import DatasetError

    configs = [bench_config(run, plan, plan.runs_dir) for run in runs]
    try:
        if not args.dry_run:  # the synthetic sets are generated by the first run that needs each
            print(f"checking {len(configs)} configs and their data...", file=sys.stderr, flush=True)
        for cfg in configs:
            validate(cfg, check_data=not args.dry_run)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.fresh and not args.dry_run:
        for cfg in configs:
            remove_run(cfg)
    states = {cfg.run_name: run_state(cfg) for cfg in configs}
    counts = {s: sum(v[0] == s for v in states.values()) for s in ("done", "resume", "todo", "stale")}
    print(
        f"fairness bench ({plan.name}): {len(runs)} runs in {plan.runs_dir}: {counts['done']} done, "
        f"{counts['todo']} to train, {counts['resume']} to resume, {counts['stale']} stale",
        file=sys.stderr,
    )
    if args.dry_run:
        print(
            markdown_table(
                ["run", "sections", "state"],
                [[r.name, ", ".join(r.sections), " ".join([states[r.name][0], *states[r.name][1]])] for r in runs],
            )
        )
        return EXIT_OK
    stale = [f"{name}: {', '.join(why)}" for name, (state, why) in states.items() if state == "stale"]
    if stale:
        print(
            "error: " + STALE_RUNS.format(n=len(stale), runs_dir=plan.runs_dir, names="; ".join(stale)), file=sys.stderr
        )
        return EXIT_CONFIG

    import torch

    from training.train import Interrupted

    torch.set_num_threads(max(1, args.threads))
    env = environment()
    start = time.perf_counter()
    try:
        trained = train_runs(
            configs, {name: state for name, (state, _) in states.items()}, workers=args.workers, threads=args.threads
        )
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except Interrupted as err:
        print(f"interrupted: {err}; run the bench again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    wall = time.perf_counter() - start

    records = [read_record(plan.runs_dir / run.name, run) for run in runs]
    result = aggregate(records, plan)
    print(environment_line(env))
    print(report_text(result, plan))
    print(
        f"\n{len(trained)} runs trained in {wall / 60:.1f} min, {len(runs) - len(trained)} reused; "
        f"runs in {plan.runs_dir} (python -m inference.report --runs {plan.runs_dir})"
    )
    payload = {
        "plan": {
            **{k: v for k, v in asdict(plan).items() if k not in ("runs_dir", "json_path")},
            "runs_dir": str(plan.runs_dir),
            "base": {t: dict(zip(("lam", "strength"), base_setting(t), strict=True)) for t in args.tasks},
        },
        "metrics": {task: [asdict(m) for m in METRICS[task]] for task in args.tasks},
        "primary_gap": {task: PRIMARY_GAP[task] for task in args.tasks},
        **result,
        "runs": records,
        "threads": torch.get_num_threads(),
        "seconds": {
            "wall": round(wall, 1),
            "trained": trained,
            "n_trained": len(trained),
            "n_reused": len(runs) - len(trained),
        },
    }
    path = write_result(plan.json_path, payload, env)
    print(f"wrote {path}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
