"""What does a fairness objective cost per training step, against vanilla's cross-entropy? Goal: ≤ 1.05×.

``python -m bench.overhead [--quick] [--repeats N] [--batches K] [--threads T] [--json bench/results/overhead.json]``

For each embedded tiny backbone (fundus: tiny Qwen2.5-VL, skin: tiny CLIP), with the demo recipe's
LoRA, batch size, λ, w_max and bandwidth (``training.demos.DEMOS``), in one process:

- **step**: one optimiser step as ``training.train`` takes it -- forward, ``compute_loss``, backward,
  gradient clipping, AdamW step, zero_grad -- on K batches of real synthetic images that are
  preprocessed once, before any timing (so image decoding and the processor are not in the figure).
  The timing goes in rounds: in each round every method takes one step on the same batch, in an order
  that rotates from round to round, so drift of the machine's speed hits the methods alike; each
  method's step time is divided by vanilla's *of the same round* and the figure is the median of those
  paired ratios (with their interquartile range) over repeats × K rounds.
- **loss**: ``compute_loss`` plus its backward to the logits alone, on the logits of one batch, timed the
  same way (many calls per timing). Its ratio to vanilla is large (cross-entropy alone costs microseconds);
  what matters is ``1 + loss extra / step``: the loss's extra time as a share of vanilla's step, the
  overhead one would predict from the loss alone.

Clocks. Other processes on a small shared machine make wall times swing by an order of magnitude
(a 2-thread torch op that loses one of its cores waits for it). So torch runs on ``--threads`` threads
(default 1) and the primary figure is the CPU time of the timing thread (``time.thread_time``), which
counts the work done, not the waiting; wall-clock ratios are reported beside it. Prints a table and
writes the figures with the machine's load average to ``--json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, environment, environment_line, markdown_table, write_result
from training.methods import BASELINE
from training.methods import NAMES as METHODS

VANILLA = BASELINE.name

TASKS = ("fundus", "skin")
MODELS = {"fundus": "tiny Qwen2.5-VL", "skin": "tiny CLIP"}
GOAL = 1.05
BAD_COUNTS = "error: --repeats, --batches and --threads must be at least 1"
DATA_N = 600  # the quick fairness bench's benchmark size: one cached set serves both
DEFAULTS = {
    "full": {"repeats": 20, "batches": 4, "loss_calls": 200},
    "quick": {"repeats": 4, "batches": 3, "loss_calls": 100},
}


@dataclass
class Setup:
    """One backbone with LoRA, its optimiser and pre-built batches (the expensive part, done once)."""

    task: str
    clf: Any
    optimizer: Any
    params: list
    batches: list[tuple[dict, Any, Any, Any]]  # (preprocessed inputs, labels, groups, subgroups)
    weights: Any
    cfg: Any


def build_setup(task: str, n_batches: int, seed: int = 0) -> Setup:
    """The demo recipe's model and objective settings, on `n_batches` batches of the training split."""
    import torch

    from training import data_spec
    from training.backbones import add_lora, default_backbone, load_classifier
    from training.demos import DEMOS
    from training.losses import group_weights
    from training.train import group_ids

    cfg = DEMOS[task]
    spec = replace(data_spec.parse_synth(cfg.data), n=DATA_N, seed=seed)
    samples = data_spec.load(str(spec), progress=False).split("train")
    groups, _ = group_ids(samples, cfg.attribute)
    subgroups, _ = group_ids(samples, cfg.cmac_attribute or cfg.attribute)
    weights = group_weights(torch.bincount(groups), cfg.w_max)
    torch.manual_seed(seed)
    clf = load_classifier(cfg.backbone or default_backbone(task), task=task, seed=seed)
    add_lora(clf, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, seed=seed)
    clf.train()
    params = [p for p in clf.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=cfg.weight_decay)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = []
    for k in range(n_batches):
        index = order[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        inputs = clf.preprocess([samples[i].load_image() for i in index])
        labels = torch.tensor([samples[i].label for i in index])
        batches.append((inputs, labels, groups[index], subgroups[index]))
    return Setup(task, clf, optimizer, params, batches, weights, cfg)


def train_step(setup: Setup, method: str, batch: tuple) -> None:
    """One optimiser step exactly as training.train takes it (one micro-batch, one process)."""
    import torch

    from training.losses import compute_loss

    inputs, labels, groups, subgroups = batch
    cfg = setup.cfg
    logits = setup.clf(inputs)
    parts = compute_loss(
        method,
        logits,
        labels,
        groups,
        lam=cfg.lam,
        group_weight=setup.weights,
        bandwidth=cfg.bandwidth,
        subgroups=subgroups,
    )
    parts.total.backward()
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(setup.params, cfg.max_grad_norm)
    setup.optimizer.step()
    setup.optimizer.zero_grad(set_to_none=True)


def loss_call(setup: Setup, method: str, logits, batch: tuple) -> Callable[[], None]:
    """compute_loss + backward to the logits, on fixed logits (the objective's own cost)."""
    from training.losses import compute_loss

    _, labels, groups, subgroups = batch
    cfg = setup.cfg

    def call() -> None:
        parts = compute_loss(
            method,
            logits,
            labels,
            groups,
            lam=cfg.lam,
            group_weight=setup.weights,
            bandwidth=cfg.bandwidth,
            subgroups=subgroups,
        )
        parts.total.backward()

    return call


def round_robin(
    calls: dict[str, Callable[[int], None]], rounds: int, inner: int = 1
) -> dict[str, dict[str, list[float]]]:
    """Seconds per call of each entry in each round, by clock ("cpu": this thread's CPU time, "wall").

    In round k every entry runs ``calls[name](k)`` (the same input for all), ``inner`` times; the order
    rotates by one each round.
    """
    names = list(calls)
    times: dict[str, dict[str, list[float]]] = {"cpu": {n: [] for n in names}, "wall": {n: [] for n in names}}
    for k in range(rounds):
        for name in names[k % len(names) :] + names[: k % len(names)]:
            wall, cpu = time.perf_counter(), time.thread_time()
            for _ in range(inner):
                calls[name](k)
            times["cpu"][name].append((time.thread_time() - cpu) / inner)
            times["wall"][name].append((time.perf_counter() - wall) / inner)
    return times


def paired_ratios(times: dict[str, list[float]], baseline: str = VANILLA) -> dict[str, dict[str, float]]:
    """Per entry: median seconds, and the median and quartiles of its per-round ratio to the baseline."""
    out = {}
    for name, values in times.items():
        ratios = sorted(v / b for v, b in zip(values, times[baseline], strict=True))
        quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
        out[name] = {
            "median_s": statistics.median(values),
            "ratio": statistics.median(ratios),
            "ratio_q1": quartiles[0],
            "ratio_q3": quartiles[2],
            "rounds": len(values),
        }
    return out


def measure_task(task: str, repeats: int, n_batches: int, loss_calls: int) -> dict[str, Any]:
    import torch

    setup = build_setup(task, n_batches)
    for method in METHODS:  # warm-up: allocator, optimiser state, first-call paths
        for batch in setup.batches:
            train_step(setup, method, batch)
    steps = round_robin(
        {m: (lambda k, m=m: train_step(setup, m, setup.batches[k % n_batches])) for m in METHODS}, repeats * n_batches
    )

    logits = torch.randn(len(setup.batches[0][1]), 2, generator=torch.Generator().manual_seed(0)).requires_grad_()
    calls = {m: loss_call(setup, m, logits, setup.batches[0]) for m in METHODS}
    for call in calls.values():
        call()
    losses = round_robin({m: (lambda k, call=call: call()) for m, call in calls.items()}, repeats, inner=loss_calls)
    result = {
        "model": MODELS[task],
        "task": task,
        "batch_size": setup.cfg.batch_size,
        "batches": n_batches,
        "repeats": repeats,
        "loss_calls": loss_calls,
        "trainable": sum(p.numel() for p in setup.params),
    }
    for clock in ("cpu", "wall"):
        step, loss = paired_ratios(steps[clock]), paired_ratios(losses[clock])
        for method in METHODS:
            loss[method]["extra_over_step"] = (loss[method]["median_s"] - loss[VANILLA]["median_s"]) / step[VANILLA][
                "median_s"
            ]
        result[clock] = {"step": step, "loss": loss}
    return result


def table(results: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in results:
        cpu, wall = r["cpu"], r["wall"]
        for method in METHODS:
            step, loss = cpu["step"][method], cpu["loss"][method]
            base = method == VANILLA
            rows.append(
                [
                    r["model"],
                    method,
                    f"{1000 * step['median_s']:.1f}",
                    f"{step['ratio']:.3f}",
                    f"{step['ratio_q1']:.3f}–{step['ratio_q3']:.3f}",
                    f"{wall['step'][method]['ratio']:.3f}",
                    f"{1e6 * loss['median_s']:.0f}",
                    f"{loss['ratio']:.1f}",
                    "" if base else f"{1 + loss['extra_over_step']:.3f}",
                    "" if base else ("yes" if step["ratio"] <= GOAL else "no"),
                ]
            )
    return markdown_table(
        [
            "model",
            "method",
            "step ms (CPU)",
            "step / vanilla",
            "IQR",
            "wall step / vanilla",
            "loss µs (CPU)",
            "loss / vanilla",
            "1 + loss extra / step",
            f"≤ {GOAL}",
        ],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and batches")
    parser.add_argument(
        "--repeats", type=int, help="repeats; each runs every batch once per method (default 20, quick 4)"
    )
    parser.add_argument("--batches", type=int, help="distinct pre-built batches (default 4, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time measures the work)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--json", type=Path, help="default bench/results/overhead[_quick].json")
    args = parser.parse_args(argv)
    mode = DEFAULTS["quick" if args.quick else "full"]
    repeats, n_batches = args.repeats or mode["repeats"], args.batches or mode["batches"]
    if repeats < 1 or n_batches < 1 or args.threads < 1:
        print(BAD_COUNTS, file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    env = environment()
    results = [measure_task(task, repeats, n_batches, mode["loss_calls"]) for task in args.tasks]
    print(environment_line(env))
    print(table(results))
    worst = {r["model"]: max(r["cpu"]["step"][m]["ratio"] for m in METHODS if m != VANILLA) for r in results}
    print("\nworst step ratio: " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()) + f" (goal ≤ {GOAL})")
    path = args.json or RESULTS_DIR / ("overhead_quick.json" if args.quick else "overhead.json")
    write_result(
        path,
        {
            "goal": GOAL,
            "threads": args.threads,
            "clock": "thread CPU time (primary), wall",
            "results": results,
            "worst_step_ratio": worst,
        },
        env,
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
