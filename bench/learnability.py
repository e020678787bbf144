"""Do the embedded models learn the benchmark tasks -- better than simple image statistics, and how close
to what the generator allows?

``python -m bench.learnability [--runs assets/runs] [--json bench/results/learnability.json]``

For each task it takes the vanilla run in ``--runs`` (the shipped demo by default), the synthetic
benchmark that run was trained on (its ``config.json`` data spec, generated into the data cache if
missing) and reports, on that run's test split:

- **ceiling**: the AUC of the generator's own latent disease score (``training.synth.latent_scores``:
  fundus, the cup-to-disc ratio the image shows; skin, the lesion's malignancy cue) -- a model that
  read that one latent perfectly would reach it;
- **baseline**: ``bench.synth_bias``'s plain logistic regression on ~20-30 hand-made image statistics
  (colour, disc profile / lesion darkness, shape, asymmetry, border, colour variety), fit on the
  training split;
- **model**: the run's own test AUC from its ``predictions.csv`` (and accuracy at its threshold);
- the model's margin over the baseline and its share of the ceiling.

All three read the same test images, in the same run, so the comparison is like for like.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from bench import synth_bias
from bench.common import RESULTS_DIR, environment, environment_line, markdown_table, write_result
from training.methods import BASELINE

VANILLA = BASELINE.name  # the reference method

FEATURES = {"fundus": synth_bias.fundus_features, "skin": synth_bias.skin_features}
NO_VANILLA = "no complete vanilla run of task '{task}' in {runs}; train one (python -m training.demos --method vanilla)"


def measure(run_dir: Path, *, workers: int = 2) -> dict:
    """Ceiling, baseline and model AUC on one run's test split (see the module docstring)."""
    from training import data_spec, synth

    config = json.loads((run_dir / "config.json").read_text())
    task, spec = config["task"], data_spec.parse_synth(config["data"])
    root = data_spec.materialize(config["data"], progress=False)
    frame = synth_bias.read_fundus(root) if task == "fundus" else synth_bias.read_skin(root, 0)
    frame["id"] = [Path(f).stem for f in frame["filename"]] if task == "fundus" else frame["image_id"]
    started = time.perf_counter()
    features = synth_bias.compute_features(FEATURES[task], frame["path"].tolist(), workers)
    baseline = synth_bias.baseline(frame, features)
    test = (frame["split"] == "test").to_numpy()
    latent = synth.latent_scores(task, spec.n, spec.seed, synth.BiasConfig(spec.strength), spec.test_min, spec.val_min)
    predictions = pd.read_csv(run_dir / "predictions.csv")
    predictions = predictions[predictions["split"] == "test"]
    labels = frame.loc[test, "label"].to_numpy()
    ceiling = roc_auc_score(labels, latent.loc[frame.loc[test, "id"]].to_numpy())
    eval_report = json.loads((run_dir / "eval.json").read_text())["report"]
    model = float(roc_auc_score(predictions["label"], predictions["prob"]))
    return {
        "run": run_dir.name,
        "task": task,
        "data": config["data"],
        "n_test": int(test.sum()),
        "n_test_positive": int(labels.sum()),
        "ceiling_auc": float(ceiling),
        "baseline_auc": float(roc_auc_score(labels, baseline[test])),
        "model_auc": model,
        "model_accuracy": eval_report["overall"]["accuracy"],
        "threshold": eval_report.get("threshold"),
        "model_auc_reweighted": (eval_report["overall"].get("reweighted") or {}).get("auc"),
        "feature_seconds": round(time.perf_counter() - started, 1),
    }


def vanilla_runs(runs: Path) -> dict[str, Path]:
    """The first complete vanilla run of each task in ``runs`` (by name)."""
    from training import rundir

    found: dict[str, Path] = {}
    for run in rundir.list_runs(runs):
        if run.method == VANILLA:
            found.setdefault(run.task, run.path)
    return found


def report_text(results: list[dict]) -> str:
    rows = [
        [
            r["task"],
            r["run"],
            r["n_test"],
            r["n_test_positive"],
            f"{r['ceiling_auc']:.3f}",
            f"{r['baseline_auc']:.3f}",
            f"{r['model_auc']:.3f}",
            f"{r['model_auc'] - r['baseline_auc']:+.3f}".replace("-", "−"),
            f"{r['model_auc'] / r['ceiling_auc']:.0%}",
        ]
        for r in results
    ]
    return markdown_table(
        [
            "task",
            "vanilla run",
            "test n",
            "positives",
            "ceiling AUC",
            "baseline AUC",
            "model AUC",
            "model − baseline",
            "share of ceiling",
        ],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.learnability", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("assets/runs"), help="folder with the vanilla runs")
    parser.add_argument("--tasks", nargs="+", default=["fundus", "skin"], choices=["fundus", "skin"])
    parser.add_argument("--workers", type=int, default=2, help="processes for the image statistics")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "learnability.json")
    args = parser.parse_args(argv)
    found = vanilla_runs(args.runs)
    missing = [t for t in args.tasks if t not in found]
    if missing:
        print(f"error: {NO_VANILLA.format(task=missing[0], runs=args.runs)}", file=sys.stderr)
        return 2
    env = environment()
    results = [measure(found[task], workers=args.workers) for task in args.tasks]
    print(environment_line(env))
    print(report_text(results))
    print(f"wrote {write_result(args.json, {'results': results, 'runs': str(args.runs)}, env)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
