"""How fast is the Compare tab? The issue's goal: 20 runs × 2,000 predictions, 1,000 bootstrap
resamples, in about 2 s or less on 2 cores, uncached.

``python -m bench.compare_speed [--runs 20] [--n 2000] [--bootstrap 1000] [--repeat 5] [--attribute race]
[--profile] [--json bench/results/compare_speed.json]``

Builds the runs in a temporary folder (complete run directories, read back with
``training.rundir.list_runs``; predictions from a simple model with per-group accuracy gaps), then
times, in the same process:

- ``evaluate alone``: for each run, ``metrics.read_predictions`` + ``metrics.evaluate`` one after
  the other -- the floor any Compare implementation pays without parallelism -- with OpenBLAS's
  default thread count and with one BLAS thread (what compare_runs sets while it computes);
- ``compare_runs uncached, 1 thread`` and ``..., N threads``: ``inference.compare_engine.compare_runs``
  after ``clear_cache()`` without noise floors; the pool has one thread per core;
- ``compare_runs ..., with noise floors``: each gap's noise floor (200 permutations of the group labels);
- ``Compare refresh uncached``: what the tab computes, the comparison with noise floors then
  ``inference.compare_stats.versus`` (every setting paired against the vanilla reference);
- ``compare_runs cached``: the same call again (a refresh of the tab);
- ``figures``: the three Plotly figures built from the comparison.

Each timing is repeated ``--repeat`` times; the table gives the median and fastest wall time and the
median process CPU time (all threads); the JSON starts with bench.common's environment record (load
average before and after included), since other processes on a shared machine stretch wall times.
``--profile`` prints the top of a cProfile of one uncached single-thread comparison.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import RESULTS_DIR, environment, environment_line, markdown_table, write_result
from inference import compare_engine as engine
from inference import compare_stats
from inference.compare_figures import frontier_figure, group_accuracy_figure, margin_figure
from training import metrics
from training.methods import BASELINE, NAMES
from training.rundir import list_runs

RESULTS = RESULTS_DIR / "compare_speed.json"
METHODS = NAMES
RACE = {"White": 0.769, "Black": 0.149, "Asian": 0.082}  # Gu et al., fair LoRA §4.1 group mix
ETHNICITY = {"Non-Hispanic": 0.903, "Hispanic": 0.043, "Unknown": 0.054}
GENDER = {"Female": 0.571, "Male": 0.429}


def test_set(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """The test split every run is scored on: ids, labels and attributes (shared, so runs pair up)."""
    return pd.DataFrame(
        {
            "id": [f"s{i:05d}" for i in range(n)],
            "split": "test",
            "label": (rng.random(n) < 0.48).astype(int),
            "race": rng.choice(list(RACE), n, p=list(RACE.values())),
            "ethnicity": rng.choice(list(ETHNICITY), n, p=list(ETHNICITY.values())),
            "gender": rng.choice(list(GENDER), n, p=list(GENDER.values())),
            "age_group": rng.choice(["0-40", "40-60", "60+"], n),
        }
    )


def synthetic_predictions(rng: np.random.Generator, samples: pd.DataFrame, gap: float) -> pd.DataFrame:
    """A run's predictions on the shared test set: race groups harder by up to ``gap`` (noisier scores)."""
    race, label, n = samples["race"].to_numpy(), samples["label"].to_numpy(), len(samples)
    noise = 0.25 + gap * np.select([race == "Asian", race == "Black"], [1.0, 0.6], 0.0)
    logit = (2 * label - 1) * 1.2 + rng.normal(0, 1, n) * (1 + 4 * noise)
    prob = 1 / (1 + np.exp(-logit))
    margin = np.where(label == 1, logit, -logit)
    frame = samples.copy()
    frame.insert(3, "prob", prob.round(6))
    frame.insert(4, "margin", margin.round(6))
    return frame


def build_runs(root: Path, runs: int, n: int) -> None:
    """``runs`` complete run directories under ``root`` (placeholder adapters; eval.json without bootstrap),
    all scored on one test set, as runs of one benchmark are."""
    rng = np.random.default_rng(0)
    samples = test_set(rng, n)
    for k in range(runs):
        method = METHODS[k % len(METHODS)]
        run_id = f"fundus-{method}-{k:02d}"
        path = root / run_id
        (path / "adapter").mkdir(parents=True)
        frame = synthetic_predictions(rng, samples, gap=0.3 if method == BASELINE.name else 0.1)
        frame.to_csv(path / "predictions.csv", index=False)
        config = {
            "task": "fundus",
            "method": method,
            "backbone": "assets/backbones/tiny-qwen2.5-vl",
            "lam": 0.5,
            "w_max": 10.0,
            "attribute": "race",
            "seed": k,
            "run_id": run_id,
            "data": "synth:fundus",
        }
        (path / "config.json").write_text(json.dumps(config))
        (path / "adapter" / "adapter_config.json").write_text("{}")
        (path / "adapter" / "adapter_model.safetensors").write_bytes(b"")
        (path / "metrics.jsonl").write_text('{"event": "end", "seconds": 0}\n')
        (path / "README.md").write_text(f"# {run_id}\n")
        report = metrics.evaluate(frame, ["race", "ethnicity"], split="test")
        (path / "eval.json").write_text(json.dumps({"run_id": run_id, "split": "test", "report": report}))


def timed(
    function: Callable[[], object], repeat: int, before: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Wall seconds and process CPU seconds (all threads) of each repetition.

    CPU time is the steadier figure on a shared machine: other processes stretch the wall time of a
    run but barely its CPU time. Wall < CPU means the threads ran in parallel.
    """
    wall, cpu = [], []
    for _ in range(repeat):
        before()
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": wall, "cpu": cpu}


def measure(root: Path, attribute: str, bootstrap: int, repeat: int) -> dict[str, dict[str, list[float]]]:
    runs = list_runs(root)

    def evaluate_alone() -> None:
        for run in runs:
            frame = metrics.read_predictions(run.path / "predictions.csv")
            metrics.evaluate(frame, [attribute], bootstrap=bootstrap, split="test")

    def comparison(permutations: int = engine.NOISE_PERMUTATIONS) -> engine.Comparison:
        return engine.compare_runs(runs, attribute, bootstrap=bootstrap, permutations=permutations)

    def refresh() -> compare_stats.Versus:
        """What the Compare tab computes: every run with its noise floors, then each setting vs the reference."""
        return compare_stats.versus(comparison())

    def with_workers(workers: int | None, function: Callable[[], object]) -> dict[str, list[float]]:
        engine.MAX_WORKERS = workers
        try:
            return timed(function, repeat, before=engine.clear_cache)
        finally:
            engine.MAX_WORKERS = None

    threads = os.cpu_count()
    timings = {"evaluate alone (serial, default BLAS threads)": timed(evaluate_alone, repeat)}
    with engine.one_blas_thread():
        timings["evaluate alone (serial, 1 BLAS thread)"] = timed(evaluate_alone, repeat)
    timings["compare_runs uncached, no noise floors, 1 thread"] = with_workers(1, lambda: comparison(0))
    timings[f"compare_runs uncached, no noise floors, {threads} threads"] = with_workers(None, lambda: comparison(0))
    timings[f"compare_runs uncached, with noise floors, {threads} threads"] = with_workers(None, comparison)
    timings[f"Compare refresh uncached: noise floors + paired vs reference, {threads} threads"] = with_workers(
        None, refresh
    )
    engine.clear_cache()
    result = comparison()
    timings["compare_runs cached"] = timed(comparison, repeat)
    timings["paired vs reference on a cached comparison"] = timed(lambda: compare_stats.versus(result), repeat)
    timings["figures (bars + frontier + violins)"] = timed(
        lambda: (group_accuracy_figure(result), frontier_figure(result), margin_figure(result)),
        repeat,
    )
    return timings


def profile(root: Path, attribute: str, bootstrap: int, lines: int = 15) -> str:
    """cProfile of one uncached single-thread comparison (threads hide their work from cProfile)."""
    runs = list_runs(root)
    engine.clear_cache()
    engine.MAX_WORKERS = 1
    profiler = cProfile.Profile()
    try:
        profiler.runcall(engine.compare_runs, runs, attribute, bootstrap=bootstrap)
    finally:
        engine.MAX_WORKERS = None
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def table(timings: dict[str, dict[str, list[float]]]) -> str:
    rows = [
        [name, f"{statistics.median(s['wall']):.4f}", f"{min(s['wall']):.4f}", f"{statistics.median(s['cpu']):.4f}"]
        for name, s in timings.items()
    ]
    return markdown_table(["what", "wall median s", "wall fastest s", "CPU median s"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="run directories to compare")
    parser.add_argument("--n", type=int, default=2000, help="test predictions per run")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per run")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions of each timing")
    parser.add_argument("--attribute", default="race", help="attribute compared ('a+b' for an intersection)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one uncached comparison")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the figures")
    args = parser.parse_args(argv)

    warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
    env = environment()  # with the load average: other processes on a shared machine stretch wall times
    with tempfile.TemporaryDirectory(prefix="fairdx-compare-speed-") as folder:
        root = Path(folder)
        start = time.perf_counter()
        build_runs(root, args.runs, args.n)
        build_seconds = time.perf_counter() - start
        timings = measure(root, args.attribute, args.bootstrap, args.repeat)
        profile_text = profile(root, args.attribute, args.bootstrap) if args.profile else None

    setup = (
        f"{args.runs} runs × {args.n} predictions, {args.bootstrap} bootstrap resamples, attribute "
        f"'{args.attribute}', {os.cpu_count()} CPU cores, {args.repeat} repeats (built in {build_seconds:.1f} s)"
    )
    print(environment_line(env))
    print(setup)
    print(table(timings))
    if profile_text:
        print(profile_text)
    results = {
        "setup": {
            "runs": args.runs,
            "n": args.n,
            "bootstrap": args.bootstrap,
            "attribute": args.attribute,
            "repeat": args.repeat,
            "pandas": pd.__version__,
            "blas_threads_during_compare": 1,
        },
        "seconds": timings,
        "median_wall_seconds": {name: statistics.median(values["wall"]) for name, values in timings.items()},
        "fastest_wall_seconds": {name: min(values["wall"]) for name, values in timings.items()},
        "median_cpu_seconds": {name: statistics.median(values["cpu"]) for name, values in timings.items()},
        "goal_seconds": 2.0,
    }
    write_result(args.json, results, env)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
