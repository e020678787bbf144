"""Resumable checkpoints and run locks of training.train, without training a model.

- A checkpoint restores every RNG a step may draw from (python ``random``, numpy's global generator
  with its position and cached gaussian, torch CPU, and CUDA where there is one), also when the process
  that saved it was SIGKILLed right after: LoRA dropout then repeats after ``--resume``.
- One trainer per run name: a second one refuses (exit 2) instead of deleting the first one's folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import FUNDUS_SPEC, REPO
from training import rundir
from training.config import ConfigError, TrainConfig

# Saves a checkpoint of a tiny model at step 3, prints what every RNG draws next, then waits to be killed.
SAVER = r"""
import json, random, sys, time
from pathlib import Path
import numpy as np, torch
from accelerate import Accelerator
from training.config import TrainConfig
from training.train import _checkpoint_weights, save_checkpoint

def draws():
    out = {"python": [random.random() for _ in range(3)], "numpy_normal": np.random.standard_normal(3).tolist(),
           "numpy": np.random.rand(3).tolist(), "torch": torch.rand(3).tolist()}
    if torch.cuda.is_available():
        out["cuda"] = torch.rand(3, device="cuda").tolist()
    return out

accelerator = Accelerator(step_scheduler_with_optimizer=False)
model = torch.nn.Linear(3, 2)
optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
_checkpoint_weights(accelerator, model)
random.seed(1), np.random.seed(1), torch.manual_seed(1)
for _ in range(3):  # move every generator, and leave numpy a cached gaussian (pos and has_gauss matter)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step(), scheduler.step(), optimizer.zero_grad()
    random.random(), np.random.standard_normal(), np.random.rand(5)
save_checkpoint(accelerator, Path(sys.argv[1]), 3, TrainConfig())
print(json.dumps({"draws": draws(), "weight": model.weight.tolist(), "lr": scheduler.get_last_lr()}), flush=True)
time.sleep(600)
"""


def _resumer(checkpoint: Path):
    """A fresh model, optimiser and scheduler with other RNG states, as a resumed run has before loading."""
    import random

    import numpy as np
    from accelerate import Accelerator

    from training.train import _checkpoint_weights

    accelerator = Accelerator(step_scheduler_with_optimizer=False)
    torch.manual_seed(99)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    _checkpoint_weights(accelerator, model)
    random.seed(99), np.random.seed(99), np.random.standard_normal()  # noqa: NPY002 (the global generator)
    return accelerator, model, scheduler


def _draws() -> dict:
    import random

    import numpy as np

    out = {
        "python": [random.random() for _ in range(3)],
        "numpy_normal": np.random.standard_normal(3).tolist(),  # noqa: NPY002 (the global generator)
        "numpy": np.random.rand(3).tolist(),  # noqa: NPY002 (the global generator)
        "torch": torch.rand(3).tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.rand(3, device="cuda").tolist()
    return out


def test_resume_after_a_kill_restores_every_rng_weights_and_schedule(tmp_path):
    from training.train import CHECKPOINT_STATE, checkpoint_step, load_checkpoint

    checkpoint = tmp_path / ".staging-run" / rundir.CHECKPOINT
    checkpoint.parent.mkdir()
    saver = subprocess.Popen(
        [sys.executable, "-c", SAVER, str(checkpoint)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = saver.stdout.readline()
        assert line, saver.stderr.read()
    finally:
        saver.kill()
        saver.wait()
    assert saver.returncode == -signal.SIGKILL
    saved = json.loads(line)
    assert rundir.checkpoint_in(checkpoint.parent) == checkpoint
    assert not (checkpoint.parent / rundir.CHECKPOINT_TMP).exists()
    assert {"random_states_0.pkl", "optimizer.bin", "scheduler.bin", CHECKPOINT_STATE} <= {
        p.name for p in checkpoint.iterdir()
    }
    assert not (checkpoint / "model.safetensors").exists(), "the checkpoint holds the trainable weights only"

    accelerator, model, scheduler = _resumer(checkpoint)
    assert checkpoint_step(checkpoint, TrainConfig(), 1) == 3
    load_checkpoint(accelerator, checkpoint)
    assert _draws() == saved["draws"], "every RNG continues where the killed process left it"
    assert model.weight.tolist() == saved["weight"] and scheduler.get_last_lr() == saved["lr"]

    with pytest.raises(ConfigError, match="made on 1 process"):
        checkpoint_step(checkpoint, TrainConfig(), 2)
    with pytest.raises(ConfigError, match=r"different config \(seed\)"):
        checkpoint_step(checkpoint, TrainConfig(seed=TrainConfig().seed + 1), 1)
    (checkpoint / "random_states_0.pkl").unlink()  # accelerate would only log this and go on
    accelerator, _, _ = _resumer(checkpoint)
    with pytest.raises(ConfigError, match="random number generators were not restored"):
        load_checkpoint(accelerator, checkpoint)


# ----------------------------------------------------------------------------- one trainer per run name
HOLDER = """
import sys, time
from training import rundir
print(rundir.lock_run(sys.argv[1], "busy") is not None, flush=True)
time.sleep(600)
"""


def test_a_second_trainer_of_a_run_name_in_use_refuses_and_deletes_nothing(tmp_path, capsys):
    from training.train import main as train_main

    staging = rundir.staging_dir(tmp_path, "busy")
    staging.mkdir(parents=True)
    (staging / rundir.METRICS).write_text('{"event": "start", "step": 0}\n')  # no checkpoint yet
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "True"  # a live trainer (a Studio job, say) of run 'busy'
        assert rundir.lock_run(tmp_path, "busy") is None
        code = train_main(
            [
                "--data",
                FUNDUS_SPEC,
                "--runs-dir",
                str(tmp_path),
                "--run-name",
                "busy",
                "--epochs",
                "1",
                "--max-samples",
                "16",
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        assert (
            rundir.RUN_LOCKED.format(
                name="busy", holder=f" (pid {holder.pid})", lock=rundir.lock_path(tmp_path, "busy")
            )
            in err
        )
        assert (staging / rundir.METRICS).read_text() == '{"event": "start", "step": 0}\n', "its folder is kept"
    finally:
        holder.kill()
        holder.wait()
    # the kernel drops a killed holder's lock: the name is usable again, and a lock leaves no file behind
    lock = rundir.lock_run(tmp_path, "busy")
    assert lock is not None and rundir.lock_holder(tmp_path, "busy") == os.getpid()
    lock.release()
    assert not rundir.lock_path(tmp_path, "busy").exists()
