"""``python -m bench [--quick]``: every FairDx benchmark in sequence, their tables, and one summary.

Stages (each a fresh ``python -m bench.<module>`` process, so one stage's memory or failure does not
touch the next; each prints its own table and writes ``bench/results/<name>.json``):

    synth_bias      how biased the synthetic benchmark is (logistic baseline per group)
    fairness        the five objectives' gaps and accuracy, λ ablation, bias-strength sweep
    overhead        step time of each objective / vanilla's (goal ≤ 1.05)
    serving         Diagnose-tab latency, adapter switch against full reload
    compare_speed   Compare-tab time for 20 runs × 2,000 predictions
    gpu_throughput  full-size Qwen2.5-VL-7B / CLIP ViT-B/16 LoRA training: samples/s, memory, MFU (CUDA only)

``--quick`` runs the few-minute variant of each (smaller data, fewer repeats) and writes
``<name>_quick.json`` and ``summary_quick.json``, leaving the full results alone. The summary table
gives each stage's status, wall time and headline figures; ``bench/results/summary[_quick].json``
holds them with the environment. Exit status 1 if any stage failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS_DIR, environment, environment_line, markdown_table, write_result
from training.methods import BASELINE

VANILLA = BASELINE.name  # the reference method

Headline = Callable[[dict[str, Any]], str]


def _synth_bias(result: dict) -> str:
    runs = result["runs"]
    strengths = sorted({key.split("@")[1] for key in runs}, key=float)
    low, high = strengths[0], strengths[-1]
    fundus = [runs[f"fundus@{s}"]["baseline"]["race"]["max_acc_gap"] for s in (low, high)]
    skin = [runs[f"skin@{s}"]["baseline"]["delta_tpr"] for s in (low, high)]
    return (
        f"baseline MaxAccGap race {fundus[0]:.3f} → {fundus[1]:.3f}, ΔTPR sex×age {skin[0]:.3f} → {skin[1]:.3f} "
        f"(strength {low} → {high})"
    )


def _fairness(result: dict) -> str:
    parts = []
    for task, methods in result["main"].items():
        gap = result["primary_gap"][task]
        changes = []
        for method, figures in methods.items():
            rel = figures[gap]["relative"]["mean"]
            if method != VANILLA:
                changes.append(f"{method} {'–' if rel is None else f'{100 * rel:+.0f}%'}")
        label = next(m["label"] for m in result["metrics"][task] if m["key"] == gap)
        parts.append(f"{task} {label} vs vanilla: " + ", ".join(changes))
    return "; ".join(parts)


def _overhead(result: dict) -> str:
    return (
        "worst step ratio "
        + ", ".join(f"{model} {ratio:.3f}" for model, ratio in result["worst_step_ratio"].items())
        + f" (goal ≤ {result['goal']})"
    )


def _serving(result: dict) -> str:
    return "; ".join(
        f"{r['model']}: predict p50 {r['predict_ms']['p50']:.1f} ms, switch {r['switch']['switch_ms_p50']:.2f} ms, "
        f"reload/switch {r['switch']['full_reload_over_switch']:.0f}×, "
        f"explain/predict {r['explain']['explain_over_predict']:.0f}×"
        for r in result["results"]
    )


def _compare(result: dict) -> str:
    medians = result["median_wall_seconds"]
    uncached = next(v for k, v in medians.items() if k.startswith("compare_runs uncached") and "1 thread" not in k)
    return (
        f"{result['setup']['runs']} runs × {result['setup']['n']}: uncached {uncached:.2f} s "
        f"(1 thread {medians['compare_runs uncached, 1 thread']:.2f} s), "
        f"cached {medians['compare_runs cached'] * 1000:.1f} ms"
    )


def _gpu(result: dict) -> str:
    def mfu(row: dict) -> str:
        return "–" if row["mfu"] is None else f"{100 * row['mfu']:.0f}%"

    return "; ".join(
        f"{r['model']} ckpt {'on' if r['gradient_checkpointing'] else 'off'}: {r['samples_per_s']:.1f} samples/s, "
        f"{r['peak_memory_gib']:.0f} GiB, MFU {mfu(r)}"
        for r in result["results"]
    )


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    full_args: tuple[str, ...]
    quick_args: tuple[str, ...]
    result: str  # JSON basename, without _quick
    headline: Headline
    needs_cuda: bool = False

    def args(self, quick: bool) -> list[str]:
        return [*(self.quick_args if quick else self.full_args), "--json", str(self.result_path(quick))]

    def result_path(self, quick: bool) -> Path:
        return RESULTS_DIR / f"{self.result}{'_quick' if quick else ''}.json"


STAGES = (
    Stage(
        "synth_bias",
        "bench.synth_bias",
        ("--n", "2000", "--strengths", "0", "0.5", "1"),
        ("--n", "400", "--strengths", "0", "1"),
        "synth_bias",
        _synth_bias,
    ),
    Stage("fairness", "bench.fairness", (), ("--quick",), "fairness", _fairness),
    Stage("overhead", "bench.overhead", (), ("--quick",), "overhead", _overhead),
    Stage("serving", "bench.serving_speed", (), ("--n", "10", "--reloads", "2"), "serving_speed", _serving),
    Stage("compare_speed", "bench.compare_speed", (), ("--repeat", "1"), "compare_speed", _compare),
    Stage(
        "gpu_throughput",
        "bench.gpu_throughput",
        (),
        ("--steps", "3", "--warmup", "1"),
        "gpu_throughput",
        _gpu,
        needs_cuda=True,
    ),
)
NAMES = tuple(stage.name for stage in STAGES)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_stage(stage: Stage, quick: bool) -> dict[str, Any]:
    """Run one stage as its own process (output goes straight to the terminal); read back its JSON."""
    path = stage.result_path(quick)
    command = [sys.executable, "-m", stage.module, *stage.args(quick)]
    print(f"\n# {stage.name}: {' '.join(command[1:])}\n", flush=True)
    start = time.perf_counter()
    before = path.stat().st_mtime if path.exists() else None
    rc = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}).returncode
    seconds = round(time.perf_counter() - start, 1)
    entry: dict[str, Any] = {
        "stage": stage.name,
        "command": " ".join(command[1:]),
        "rc": rc,
        "seconds": seconds,
        "result": str(path.relative_to(REPO)),
    }
    fresh = path.exists() and path.stat().st_mtime != before
    if rc != 0 or not fresh:
        entry["status"] = f"failed (exit {rc})" if rc != 0 else "failed (no result written)"
        return entry
    entry["status"] = "ok"
    try:
        entry["headline"] = stage.headline(json.loads(path.read_text()))
    except (KeyError, TypeError, ValueError, StopIteration, IndexError) as err:
        entry["headline"] = f"(could not summarise {path.name}: {err!r})"
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the few-minute variant of every stage")
    parser.add_argument("--only", nargs="+", choices=NAMES, metavar="STAGE", help="run only these stages")
    parser.add_argument("--skip", nargs="+", choices=NAMES, default=[], metavar="STAGE", help="leave these stages out")
    args = parser.parse_args(argv)
    env = environment()
    chosen = [s for s in STAGES if (not args.only or s.name in args.only) and s.name not in args.skip]
    has_cuda = cuda_available()
    start = time.perf_counter()
    entries = []
    for stage in chosen:
        if stage.needs_cuda and not has_cuda:
            entries.append({"stage": stage.name, "status": "skipped (no CUDA)", "seconds": 0.0})
            continue
        entries.append(run_stage(stage, args.quick))
    total = round(time.perf_counter() - start, 1)

    mode = "quick" if args.quick else "full"
    print(f"\n# summary ({mode}, {total / 60:.1f} min)\n\n{environment_line(env)}\n")
    print(
        markdown_table(
            ["stage", "status", "seconds", "headline"],
            [[e["stage"], e["status"], f"{e['seconds']:.0f}", e.get("headline", "")] for e in entries],
        )
    )
    path = write_result(
        RESULTS_DIR / f"summary{'_quick' if args.quick else ''}.json",
        {"mode": mode, "total_seconds": total, "stages": entries},
        env,
    )
    print(f"\nwrote {path}")
    return 0 if all(e["status"] == "ok" or e["status"].startswith("skipped") for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
