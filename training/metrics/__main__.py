"""``python -m training.metrics PRED.csv --attribute A [--reference REF.csv] [--permutations P] --json``.

Per-group figures and gaps of a predictions.csv (``training.metrics.evaluate``); with ``--reference``
a paired comparison against a second run on the samples both scored (with an equivalence test of
accuracy and AUC against ``--margin-accuracy`` / ``--margin-auc``), and with ``--permutations`` each
gap's noise floor (``training.metrics.paired``); ``--operating-point`` chooses the decision point
on the val rows and reports the test rows at it (``training.metrics.operating``). A ``cluster``
column in the predictions (or ``--cluster-column``) resamples and permutes whole clusters.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence

from training.metrics import (
    GAP_MIN_N,
    MetricsError,
    evaluate,
    format_report,
    operating,
    paired,
    read_predictions,
    select_split,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.metrics", description="Per-group fairness metrics of a predictions.csv."
    )
    parser.add_argument("predictions", help="predictions.csv (label, prob, [margin], [split], attribute columns)")
    parser.add_argument("--attribute", action="append", default=[], help="column, or columns joined by '+'; repeatable")
    parser.add_argument("--threshold", type=float, default=0.5, help="predict positive when prob >= threshold")
    parser.add_argument("--min-n", type=int, default=30, help="flag groups with fewer samples as small")
    parser.add_argument(
        "--gap-min-n", type=int, default=GAP_MIN_N, help="leave groups with fewer samples out of the gaps"
    )
    parser.add_argument("--bootstrap", type=int, default=0, help="resamples for the intervals (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples")
    parser.add_argument("--ci", type=float, default=0.95, help="interval level")
    parser.add_argument("--split", default=None, help="evaluate only rows of this split (e.g. test)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--reference",
        default=None,
        help="a second predictions.csv (e.g. the vanilla run's): adds a "
        "paired comparison on the samples both scored (joined by id) per attribute",
    )
    parser.add_argument(
        "--reference-threshold",
        type=float,
        default=None,
        help="the reference's decision threshold (default: --threshold)",
    )
    parser.add_argument(
        "--cluster-column",
        default=None,
        help="resample and permute whole clusters of this column (e.g. lesion_id: a lesion's images stay together)",
    )
    for figure, margin in paired.EQUIVALENCE_MARGINS.items():
        parser.add_argument(
            f"--margin-{figure}",
            type=float,
            default=margin,
            help=f"with --reference: the equivalence margin for {figure} (two one-sided tests; default {margin:g})",
        )
    parser.add_argument(
        "--permutations",
        type=int,
        default=0,
        help="permutations of the group labels for each "
        "gap's noise floor (0: none; 200 is plenty for p-values down to 0.005)",
    )
    parser.add_argument(
        "--operating-point",
        default=None,
        help="choose the decision point on the val rows and report the test rows at it: youden, sens=0.9, "
        "spec=0.9, or equal-tpr[=target] (one deterministic threshold per group of each attribute)",
    )
    args = parser.parse_args(argv)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            report = evaluate(
                read_predictions(args.predictions),
                args.attribute,
                threshold=args.threshold,
                min_n=args.min_n,
                gap_min_n=args.gap_min_n,
                bootstrap=args.bootstrap,
                seed=args.seed,
                ci=args.ci,
                split=args.split,
            )
            _add_audit_statistics(report, args)
            _add_operating_point(report, args)
        except MetricsError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(json.dumps(report, indent=2, allow_nan=False) if args.json else format_report(report))
    return 0


def _add_operating_point(report: dict, args: argparse.Namespace) -> None:
    """Per attribute, ``operating_point``: the threshold(s) chosen on val and the test figures at it."""
    if not args.operating_point:
        return
    point = operating.parse(args.operating_point)
    frame = read_predictions(args.predictions)  # every split: the point is chosen on val, reported on test
    for spec in report["attributes"]:
        report["attributes"][spec]["operating_point"] = operating.at_operating_point(frame, spec, point)


def _add_audit_statistics(report: dict, args: argparse.Namespace) -> None:
    """Per attribute, ``noise_floor`` (with --permutations) and ``paired`` against --reference (training.paired)."""
    if not args.reference and not args.permutations:
        return
    frame = select_split(read_predictions(args.predictions), args.split)
    if args.permutations:
        for spec in report["attributes"]:
            report["attributes"][spec]["noise_floor"] = paired.noise_floor(
                frame,
                spec,
                threshold=args.threshold,
                permutations=args.permutations,
                seed=args.seed,
                cluster_column=args.cluster_column,
                gap_min_n=args.gap_min_n,
            )
    if args.reference:
        run, reference = paired.join_runs(frame, read_predictions(args.reference), split=args.split)
        result = paired.paired_comparison(
            run,
            reference,
            list(report["attributes"]),
            threshold=args.threshold,
            reference_threshold=args.reference_threshold,
            bootstrap=args.bootstrap or 1000,
            seed=args.seed,
            cluster_column=args.cluster_column,
            level=args.ci,
            gap_min_n=args.gap_min_n,
        )
        equivalence = paired.equivalent(
            run,
            reference,
            threshold=args.threshold,
            reference_threshold=args.reference_threshold,
            margins={figure: getattr(args, f"margin_{figure}") for figure in paired.EQUIVALENCE_MARGINS},
            alpha=(1 - args.ci) / 2,
            bootstrap=args.bootstrap or 1000,
            seed=args.seed,
            cluster_column=args.cluster_column,
        )
        report["paired"] = {
            "reference": str(args.reference),
            "n_shared": len(run),
            **result.pop("overall"),
            "equivalence": equivalence,
        }
        for spec, figures in result.items():
            report["attributes"][spec]["paired"] = figures


if __name__ == "__main__":
    sys.exit(main())
