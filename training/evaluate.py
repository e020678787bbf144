"""``python -m training.evaluate RUN_DIR [--data SPEC]``: re-evaluate a finished run.

Without ``--data`` it recomputes the run's eval.json from its predictions.csv (e.g. with more bootstrap
resamples or other attributes) and prints the report. With ``--data`` it loads the run's base model
and adapter, predicts every val/test sample of that dataset (external validation: another site,
another bias strength, the real Harvard-FairVLMed) and writes ``RUN_DIR/external/<name>/``
(predictions.csv + eval.json); the run itself is never modified in that case.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Container, Sequence
from pathlib import Path

import pandas as pd
import torch

from training import data_spec, rundir
from training.backbones import load_run_classifier
from training.data import DatasetError
from training.metrics import GAP_MIN_N, MetricsError, evaluate_run, format_report, read_predictions
from training.train import predict

TASK_MISMATCH = "run '{run}' was trained for task '{task}' but {data} is a '{other}' dataset"


def report_attributes(run: rundir.RunInfo, columns: Container[str], requested: Sequence[str]) -> list[str]:
    """Requested attributes, else the run's, keeping those whose columns exist in the predictions."""
    wanted = list(requested) or list(run.record.group_counts) or [run.settings.attribute]
    return [a for a in wanted if all(part in columns for part in a.split("+"))]


def reevaluate(run: rundir.RunInfo, *, attributes: Sequence[str] = (), bootstrap: int = 200) -> dict:
    """Recompute eval.json from the run's own predictions.csv (atomically replaced)."""
    predictions = read_predictions(run.path / rundir.PREDICTIONS)
    reported = report_attributes(run, predictions.columns, attributes)
    report = _evaluate(run, predictions, reported, bootstrap)
    payload = {"run_id": run.run_id, "split": "test", "attributes": reported, "report": report}
    rundir.write_json_atomic(run.path / rundir.EVAL, payload)
    return payload


def _evaluate(
    run: rundir.RunInfo, predictions: pd.DataFrame, reported: Sequence[str], bootstrap: int, *, population: bool = True
) -> dict:
    """The run's own evaluation rule (threshold, small-group rule, population mix) on these predictions.

    External data is judged at the threshold the run chose on its own validation split, as a deployed
    model would be; its overall figures are not reweighted (its mix is the point of the exercise).
    """
    cfg = run.config
    shares = cfg.get("dataset", {}).get("group_counts", {}).get(cfg["attribute"]) if population else None
    threshold = cfg.get("eval_threshold")
    if not population:  # external: the run's own operating point, never one tuned on the new data
        threshold = run.eval().get("report", {}).get("threshold", 0.5) if threshold is None else threshold
    return evaluate_run(
        predictions,
        reported,
        bootstrap=bootstrap,
        seed=cfg.get("seed", 0),
        gap_min_n=cfg.get("eval_gap_min_n", GAP_MIN_N),
        threshold=threshold,
        population=(cfg["attribute"], shares) if shares else None,
    )


def external(
    run: rundir.RunInfo, spec: str, *, attributes: Sequence[str] = (), bootstrap: int = 200, progress: bool = True
) -> Path:
    """Predict another dataset with the run's adapter; write RUN_DIR/external/<name>/."""
    dataset = data_spec.load(spec, progress=progress)
    if dataset.task != run.task:
        raise DatasetError(TASK_MISMATCH.format(run=run.run_id, task=run.task, data=spec, other=dataset.task))
    clf = load_run_classifier(run)
    with torch.inference_mode():
        predictions = predict(clf, dataset.split("val") + dataset.split("test"), dataset.attributes, progress)
    out = run.path / "external" / re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec).strip("_")
    out.mkdir(parents=True, exist_ok=True)
    predictions.to_csv(out / rundir.PREDICTIONS, index=False, float_format="%.8g", lineterminator="\n")
    reported = report_attributes(run, predictions.columns, attributes)
    report = _evaluate(run, predictions, reported, bootstrap, population=False)
    rundir.write_json_atomic(
        out / rundir.EVAL,
        {"run_id": run.run_id, "data": spec, "split": "test", "attributes": reported, "report": report},
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="a complete run directory")
    parser.add_argument("--data", help="dataset folder or synth spec for external validation")
    parser.add_argument("--attribute", action="append", default=[], help="attribute or a+b; repeatable")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        run = rundir.read_run(args.run_dir)
        if args.data:
            out = external(
                run, args.data, attributes=args.attribute, bootstrap=args.bootstrap, progress=not args.no_progress
            )
            payload = pd.read_json(out / rundir.EVAL, typ="series").to_dict()
            print(f"wrote {out}")
        else:
            payload = reevaluate(run, attributes=args.attribute, bootstrap=args.bootstrap)
            print(f"updated {run.path / rundir.EVAL}")
    except (ValueError, DatasetError, MetricsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(payload["report"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
