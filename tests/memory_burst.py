"""A burst of large uploads through the Diagnose chain, in a fresh process: `python -m tests.memory_burst N`.

Each of N threads does what a Diagnose request does (SafeImage.preprocess of a 36 MP JPEG, then
ModelPool.predict on a demo adapter, alternating the Qwen and CLIP bases) all at once; the process then
prints its RSS before the burst, the peak during it and the idle RSS after it, in MiB, as JSON. A fresh
process, so that nothing else the test session allocated blurs the figures (tests/test_memory.py).
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from gradio.data_classes import ImageData
from PIL import Image

from inference import memory
from inference.safe_image import SafeImage
from inference.serving import ModelPool
from training.rundir import DEMO_RUNS_DIR, read_run

SIZE = (7360, 4912)  # a 36 MP camera frame


def camera_frame(path: Path) -> None:
    width, height = SIZE
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack(
        [
            np.broadcast_to(x, (height, width)),
            np.broadcast_to(y, (height, width)),
            np.full((height, width), 96, np.float32),
        ],
        axis=-1,
    ).astype(np.uint8)
    Image.fromarray(rgb).save(path, quality=92)


def main(n: int) -> dict:
    process = psutil.Process()

    def rss() -> float:
        return process.memory_info().rss / 2**20

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.jpg"
        camera_frame(path)
        gc.collect()
        pool = ModelPool()
        runs = [read_run(DEMO_RUNS_DIR / "fundus-vanilla"), read_run(DEMO_RUNS_DIR / "skin-fr")]
        intake = SafeImage()

        def diagnose(i: int) -> None:
            image = intake.preprocess(ImageData(path=str(path), orig_name="frame.jpg"))
            pool.predict(image, runs[i % len(runs)])

        for i in range(len(runs)):  # warm: bases loaded, first requests served
            diagnose(i)
        gc.collect()
        time.sleep(0.5)
        start = rss()
        peak, done = [start], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample)
        sampler.start()
        began = time.perf_counter()
        threads = [threading.Thread(target=diagnose, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
        gc.collect()
        time.sleep(memory.LATE_RELEASE_S + 1.0)
        done.set()
        sampler.join()
        return {
            "requests": n,
            "start_mib": round(start),
            "peak_mib": round(peak[0]),
            "idle_mib": round(rss()),
            "burst_s": round(seconds, 1),
        }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)))
