"""``python -m training.demos``: rebuild the shipped demo runs (5 methods x 2 tasks) in assets/runs/.

- fundus: the synthetic Harvard-FairVLMed-layout benchmark on the embedded tiny Qwen2.5-VL, fairness
  attribute race (Gu et al. also report ethnicity; eval.json covers every attribute);
- skin: the synthetic HAM10000-layout benchmark on the embedded tiny CLIP, fairness attribute the
  sex x age intersection (CMAC-MMD).

Every run is one call of the training CLI's `train()` with the settings in DEMOS, written to a
temporary runs folder and moved into assets/runs/<task>-<method> only when complete, so an
interrupted rebuild never leaves a half-written demo. The settings are the same for every method of
a task (only the method changes), so the comparison is fair; they are not tuned per method.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from training.config import TrainConfig
from training.data_spec import TEST_MIN_DEFAULTS
from training.methods import NAMES as METHODS
from training.rundir import DEMO_RUNS_DIR
from training.train import resolved_run_name, train

# The recipe every method of a task shares (only the method changes between the five runs):
# - an effective batch of 32 (8 x 4 accumulated micro-batches) with stratified batches, so each optimiser
#   step holds every group of the fairness attribute in its training share -- CMAC-MMD needs "enough
#   samples of every subgroup in each mini-batch" (at batch 8 only 2.3 subgroups had two samples and its
#   penalty collapsed the model); the fairness terms of FR and Hybrid see the same batches;
# - one epoch of plain cross-entropy before any fairness term, then λ ramps up over half an epoch: a penalty on
#   a model still at chance can only push it towards a constant answer;
# - evaluation at the threshold chosen on the validation split (Youden's J), 1000 bootstrap resamples; the
#   validation split is enriched like the test split (val_min = test_min: 300 per race group, 50 malignant
#   images per sex x age subgroup), so a threshold chosen on it -- Youden's, or `--operating-point sens=0.9`
#   -- holds on test (on the plain 10 % split, ~30 skin positives, sens=0.9 gave 0.79 on test).
RECIPE = dict(
    lam=0.5,
    w_max=10.0,
    epochs=4,
    batch_size=8,
    grad_accum=4,
    stratified_batches=True,
    warmup_steps=15,
    fairness_delay_epochs=1.0,
    fairness_ramp_epochs=0.5,
    eval_bootstrap=1000,
    seed=42,
    num_threads=1,
)
DEMOS: dict[str, TrainConfig] = {
    "fundus": TrainConfig(data=f"synth:fundus:val_min={TEST_MIN_DEFAULTS['fundus']}", attribute="race", **RECIPE),
    "skin": TrainConfig(data=f"synth:skin:val_min={TEST_MIN_DEFAULTS['skin']}", attribute="sex+age_group", **RECIPE),
}


def demo_config(task: str, method: str, runs_dir: Path) -> TrainConfig:
    return DEMOS[task].replace(method=method, runs_dir=str(runs_dir), run_name=f"{task}-{method}")


def build(
    out: Path = DEMO_RUNS_DIR,
    *,
    tasks: Sequence[str] = tuple(DEMOS),
    methods: Sequence[str] = METHODS,
    progress: bool = True,
) -> dict[str, float]:
    """Train every demo run and move it into `out`; return the wall time of each run in seconds."""
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=".demos-", dir=out) as scratch:
        for task in tasks:
            for method in methods:
                cfg = demo_config(task, method, Path(scratch))
                name = resolved_run_name(cfg)
                start = time.perf_counter()
                run = train(cfg, progress=progress)
                times[name] = round(time.perf_counter() - start, 1)
                _replace(run, out / name)
                print(f"{name}: {times[name]} s", file=sys.stderr)
    return times


def _replace(run: Path, target: Path) -> None:
    """Swap the new run in; the old one is removed only after the new one is in place."""
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        target.rename(old)
    run.rename(target)
    shutil.rmtree(old, ignore_errors=True)


EXAMPLES_DIR = DEMO_RUNS_DIR.parent / "examples"
EXAMPLE_SEED = 7_777  # neither a benchmark seed (0, 3, ...) nor the pretraining seed


def write_examples(out: Path = EXAMPLES_DIR, per_class: int = 2) -> list[Path]:
    """Bundled Diagnose examples: a few images per class of each task from a seed no run trains on."""
    from training import data_spec

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for task in DEMOS:
        dataset = data_spec.load(f"synth:{task}:n=40,seed={EXAMPLE_SEED},test_min=0", progress=False)
        for label in (0, 1):
            chosen = [s for s in dataset.samples if s.label == label][:per_class]
            for i, sample in enumerate(chosen):
                path = out / f"{task}-{'positive' if label else 'negative'}-{i + 1}.png"
                sample.load_image().save(path, optimize=True)
                written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demos", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEMO_RUNS_DIR, help="folder for the demo runs")
    parser.add_argument("--task", action="append", choices=sorted(DEMOS), help="only this task (repeatable)")
    parser.add_argument("--method", action="append", choices=METHODS, help="only this method (repeatable)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--examples-only", action="store_true", help="only rewrite the bundled example images")
    parser.add_argument(
        "--no-examples",
        action="store_true",
        help="leave the example images alone (e.g. when two processes rebuild one task each)",
    )
    args = parser.parse_args(argv)
    if not args.no_examples:
        write_examples()
    if args.examples_only:
        return 0
    start = time.perf_counter()
    times = build(
        args.out, tasks=args.task or tuple(DEMOS), methods=args.method or METHODS, progress=not args.no_progress
    )
    total = time.perf_counter() - start
    print(json.dumps({"seconds": times, "total_seconds": round(total, 1)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
