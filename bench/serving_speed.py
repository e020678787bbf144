"""How fast does the Diagnose tab answer, and what does hot-swapping adapters save over reloading?

``python -m bench.serving_speed [--n 50] [--reloads 5] [--json bench/results/serving_speed.json]``

For each embedded tiny backbone (fundus on tiny Qwen2.5-VL, skin on tiny CLIP) it builds two run
directories with distinct adapters (``synthetic_run``: the real backbone, LoRA with perturbed B
weights, saved with ``save_adapter``; no training needed) and measures, on this machine:

- cold start: a fresh Python process that imports ``inference.serving``, loads base + adapter and
  predicts one image (the time a restarted server needs before its first answer), split into import,
  load and first predict, plus the whole process wall time including interpreter start;
- predict latency: p50 / p95 of ``ModelPool.predict`` on one 224×224 image, ``--n`` predictions with
  the adapter already active;
- saliency: ``ModelPool.explain`` (Integrated Gradients, ``inference.saliency.DEFAULT_STEPS`` forward and
  backward passes) p50, and its ratio to predict p50 measured in the same run;
- adapter switch: ``ModelPool.activate`` alternating between two loaded adapters (``set_adapter``;
  median), predict-after-switch p50, a first adapter load onto a warm base (LRU of size 1, so every
  switch deletes one adapter and loads the other), and a full reload (new pool: base + adapter;
  median of ``--reloads``); the ratio full reload / switch is measured in the same run.

Prints a markdown table and writes the figures to ``--json``. Timings depend on the machine; the
JSON records its CPU count, torch threads, versions and the load average before and after (other
processes competing for the CPU inflate p95 most).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from training.methods import BASELINE, FR

VANILLA = BASELINE.name  # the reference method

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSON = REPO / "bench" / "results" / "serving_speed.json"
MODELS = {"fundus": "tiny Qwen2.5-VL", "skin": "tiny CLIP"}
IMAGE_SIZE = 224
LORA_B_SCALE = 0.1  # perturbation of LoRA B (which PEFT initialises at 0) so an adapter changes the output


# ------------------------------------------------------------------------------- run directories
def synthetic_run(
    runs_dir: Path,
    run_id: str,
    *,
    task: str,
    images: list,
    labels: list[int] | None = None,
    backbone: str | None = None,
    method: str = VANILLA,
    lam: float = 0.5,
    seed: int = 0,
    max_pixels: int | None = None,
):
    """A complete run directory without training: backbone + LoRA (seeded, B perturbed) + predictions.

    predictions.csv is written by ``training.train.predict``, the function that writes it for a trained
    run (batches of 32, softmax P(class 1), margin of the true class), from the images saved as PNG, so
    a serving test compares against exactly what a real run holds. Images alternate val / test.
    max_pixels: the Qwen2.5-VL image budget to train with (recorded in config.json like a real run).
    Returns the `training.rundir.RunInfo`.
    """
    import torch

    from training import rundir
    from training.backbones import add_lora, default_backbone, load_classifier, save_adapter
    from training.config import TrainConfig
    from training.data import Sample
    from training.train import predict

    backbone = backbone or default_backbone(task)
    labels = labels if labels is not None else [i % 2 for i in range(len(images))]
    clf = add_lora(load_classifier(backbone, task=task, seed=seed, max_pixels=max_pixels), seed=seed)
    generator = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for name, param in clf.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * LORA_B_SCALE)
    with tempfile.TemporaryDirectory(prefix="fairdx-images-") as folder:
        samples = []
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            image.save(Path(folder) / f"s{i}.png")
            samples.append(Sample(f"s{i}", Path(folder) / f"s{i}.png", label, {}, ("val", "test")[i % 2]))
        predictions = predict(clf, samples, [], progress=False)

    path = Path(runs_dir) / run_id
    path.mkdir(parents=True)
    save_adapter(clf, path / rundir.ADAPTER)
    config = {
        **TrainConfig(
            method=method,
            lam=lam,
            backbone=backbone,
            seed=seed,
            run_name=run_id,
            max_pixels=max_pixels,
            data="synthetic images",
        ).to_dict(),
        "task": task,
        "family": clf.family,
        "run_id": run_id,
    }
    rundir.write_json_atomic(path / rundir.CONFIG, config)
    predictions.to_csv(path / rundir.PREDICTIONS, index=False, float_format="%.8g", lineterminator="\n")
    rundir.write_json_atomic(path / rundir.EVAL, {"run_id": run_id, "split": "test", "attributes": [], "report": {}})
    (path / rundir.METRICS).write_text('{"event": "start", "total_steps": 0}\n{"event": "end", "seconds": 0}\n')
    (path / rundir.CARD).write_text(f"# {run_id}\n\nAdapter built by bench.serving_speed.synthetic_run (untrained).\n")
    return rundir.read_run(path)


def noise_images(n: int, *, seed: int = 0, size: int = IMAGE_SIZE) -> list:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


# ------------------------------------------------------------------------------------ measuring
def cold_child(run_dir: str) -> None:
    """Runs in a fresh process: import, load base + adapter, predict once; prints JSON timings."""
    t0 = time.perf_counter()
    from inference.serving import ModelPool  # torch, transformers, peft, training.*

    t1 = time.perf_counter()
    image = noise_images(1)[0]
    pool = ModelPool()
    pool.activate(run_dir)
    t2 = time.perf_counter()
    pool.predict(image, run_dir)
    t3 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2, "total_s": t3 - t0}))


def cold_start(run_dir: Path) -> dict[str, float]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.serving_speed", "--cold-child", str(run_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    wall = time.perf_counter() - start
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_wall_s": wall}


def percentile_ms(seconds: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def measure_model(task: str, runs_dir: Path, n: int, reloads: int) -> dict[str, Any]:
    from inference import saliency
    from inference.serving import ModelPool

    images = noise_images(4, seed=1)
    run_a = synthetic_run(runs_dir, f"{task}-a", task=task, images=images, seed=0)
    run_b = synthetic_run(runs_dir, f"{task}-b", task=task, images=images, seed=1, method=FR.name)
    image = noise_images(1, seed=2)[0]
    result: dict[str, Any] = {"model": MODELS[task], "task": task, "backbone": run_a.backbone}
    result["cold_start"] = cold_start(run_a.path)

    pool = ModelPool()
    pool.activate(run_a)
    pool.activate(run_b)
    for _ in range(3):
        pool.predict(image, run_a)
    latency = timed(lambda: pool.predict(image, run_a), n)
    result["predict_ms"] = {"p50": percentile_ms(latency, 50), "p95": percentile_ms(latency, 95), "n": n}
    # the saliency overlay (/explain): DEFAULT_STEPS forward+backward passes, timed against predict in this run
    explain = timed(lambda: pool.explain(image, run_a), max(3, n // 10))
    explain_ms = percentile_ms(explain, 50)
    result["explain"] = {
        "steps": saliency.DEFAULT_STEPS,
        "explain_ms_p50": explain_ms,
        "explain_over_predict": explain_ms / result["predict_ms"]["p50"],
    }

    runs = [run_a, run_b]
    switches = [timed(lambda r=runs[i % 2]: pool.activate(r), 1)[0] for i in range(2 * n)]
    after_switch = [timed(lambda r=runs[i % 2]: pool.predict(image, r), 1)[0] for i in range(n)]
    small = ModelPool(max_adapters_per_base=1)
    small.activate(run_a)
    loads = [timed(lambda r=runs[i % 2]: small.activate(r), 1)[0] for i in range(1, 11)]
    full = timed(lambda: ModelPool().activate(run_a), reloads)
    switch_ms = percentile_ms(switches, 50)
    reload_ms = percentile_ms(full, 50)
    result["switch"] = {
        "switch_ms_p50": switch_ms,
        "predict_after_switch_ms_p50": percentile_ms(after_switch, 50),
        "adapter_load_on_warm_base_ms_p50": percentile_ms(loads, 50),
        "full_reload_ms_p50": reload_ms,
        "full_reload_over_switch": reload_ms / switch_ms,
        "base_loads_in_switch_pool": pool.base_loads,
    }
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    lines = [
        (
            "| model | cold start (process) | import | load base+adapter | 1st predict | predict p50 | p95 "
            "| switch p50 | predict after switch | adapter load (warm base) | full reload | reload / switch "
            "| explain p50 | explain / predict |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        c, p, s = r["cold_start"], r["predict_ms"], r["switch"]
        lines.append(
            f"| {r['model']} | {c['process_wall_s']:.2f} s | {c['import_s']:.2f} s | {c['load_s']:.2f} s "
            f"| {c['first_predict_s'] * 1000:.0f} ms | {p['p50']:.1f} ms | {p['p95']:.1f} ms "
            f"| {s['switch_ms_p50']:.2f} ms | {s['predict_after_switch_ms_p50']:.1f} ms "
            f"| {s['adapter_load_on_warm_base_ms_p50']:.1f} ms | {s['full_reload_ms_p50']:.0f} ms "
            f"| {s['full_reload_over_switch']:.0f}× "
            f"| {r['explain']['explain_ms_p50']:.0f} ms | {r['explain']['explain_over_predict']:.0f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serving_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50, help="predictions per latency figure")
    parser.add_argument("--reloads", type=int, default=5, help="full reloads (base + adapter) to time")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the figures")
    parser.add_argument("--cold-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cold_child:
        cold_child(args.cold_child)
        return 0

    import peft
    import torch
    import transformers

    load_before = os.getloadavg()[0]  # other processes on the machine make every figure slower and noisier
    with tempfile.TemporaryDirectory(prefix="fairdx-serving-bench-") as tmp:
        results = [measure_model(task, Path(tmp), args.n, args.reloads) for task in MODELS]
    report = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "load_average_1m_before": load_before,
            "load_average_1m_after": os.getloadavg()[0],
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        "image": f"{IMAGE_SIZE}x{IMAGE_SIZE} RGB noise",
        "results": results,
    }
    print(markdown(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
