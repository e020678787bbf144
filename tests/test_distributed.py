"""The cross-rank group statistics: two CPU processes (gloo) give the single-device gradient."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from studio.jobs import free_port
from training.distributed import gather_with_grad
from training.losses import compute_loss

N, D = 12, 5


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    labels = torch.randint(0, 2, (N,), generator=g)
    groups = torch.tensor([0, 1, 2] * 4)
    return x, labels, groups


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(D, 2)


def _loss(method, logits, labels, groups):
    return compute_loss(
        method, logits, labels, groups, lam=1.0, group_weight=torch.tensor([1.0, 2.0, 3.0]), bandwidth=None
    ).total


def _worker(rank: int, world: int, port: int, method: str, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, labels, groups = _data()
    model = DistributedDataParallel(_model())
    # uneven shards (7 + 5) exercise the padding of the gather
    local = slice(0, 7) if rank == 0 else slice(7, N)
    logits = gather_with_grad(model(x[local]))
    loss = _loss(method, logits, gather_with_grad(labels[local]), gather_with_grad(groups[local]))
    loss.backward()
    out[rank] = (loss.item(), model.module.weight.grad.clone())
    dist.destroy_process_group()


def test_two_ranks_give_the_single_device_gradient():
    ctx = mp.get_context("spawn")
    for method in ("fr", "cmac", "hybrid"):
        model = _model()
        x, labels, groups = _data()
        loss = _loss(method, model(x), labels, groups)
        loss.backward()
        with ctx.Manager() as manager:
            out = manager.dict()
            mp.start_processes(_worker, args=(2, free_port(), method, out), nprocs=2, join=True, start_method="spawn")
            results = dict(out)
        for rank in (0, 1):
            rank_loss, grad = results[rank]
            assert abs(rank_loss - loss.item()) < 1e-6, method
            assert torch.allclose(grad, model.weight.grad, atol=1e-6), (method, grad, model.weight.grad)


# ----------------------------------------------------------------------------- the trainer on two processes
# 33 samples in steps of 4 + 4: the 5th step has one sample, so rank 1 has none (it pads its share)
TWO_STEPS = [
    "--method",
    "fr",
    "--lambda",
    "0.5",
    "--epochs",
    "1",
    "--max-samples",
    "33",
    "--batch-size",
    "4",
    "--warmup-steps",
    "2",
    "--lr",
    "0.001",
    "--eval-bootstrap",
    "0",
    "--no-progress",
]
STEPS = 5


def launch_two(runs, name: str, *extra: str, wait: bool = True):
    """``accelerate launch`` of the training CLI on two CPU processes (gloo).

    ``accelerate launch --cpu`` starts a single process unless it has mpirun, so the launch asks for
    two processes (``--multi_gpu``, i.e. torch.distributed.run) and ACCELERATE_USE_CPU=1 puts them on
    the CPU with gloo.
    """
    from tests.conftest import FUNDUS_SPEC, REPO
    from training import data_spec
    from training.config import launch_arguments

    data_spec.materialize(FUNDUS_SPEC, progress=False)  # generated once, not by both ranks
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launch_arguments(2),  # what the Studio launches a job of two processes with
        "--main_process_port",
        str(free_port()),
        "-m",
        "training.train",
        "--data",
        FUNDUS_SPEC,
        "--runs-dir",
        str(runs),
        "--run-name",
        name,
        *TWO_STEPS,
        *extra,
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def check_clean_run(runs, name: str, lr: float = 1e-3, warmup: int = 2):
    """One complete run and nothing else; each step logged once, at the lr of one scheduler step a step."""
    from training import rundir
    from training.train import lr_lambda

    assert sorted(p.name for p in runs.iterdir()) == [name], "no staging folder or lock file is left"
    run = rundir.read_run(runs / name)
    assert not any(p.name.startswith("checkpoint") for p in run.path.iterdir())
    training = run.config["training"]
    assert (training["effective_batch"], training["total_steps"]) == (8, STEPS), "4 samples a step on each of 2"
    records = [json.loads(line) for line in (run.path / rundir.METRICS).read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, STEPS + 1)), "each optimiser step logged exactly once"
    schedule = lr_lambda(warmup, STEPS)  # accelerate would step it once per process, twice as fast
    assert [r["lr"] for r in records if "loss" in r] == pytest.approx([lr * schedule(s) for s in steps])
    return run, records


def test_two_processes_under_accelerate_launch_write_one_clean_run(tmp_path):
    """Two processes end to end on the tiny Qwen backbone; checkpoints every 2 steps make both ranks
    save mid-run, and the last step leaves rank 1 without a sample. Only the main process writes the
    run folder."""
    runs = tmp_path / "runs"
    proc = launch_two(runs, "two", "--save-every", "2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("run complete:") == 1, proc.stdout
    _, records = check_clean_run(runs, "two")
    # one validation record per epoch, written by the main process only
    events = [r["event"] for r in records if "event" in r]
    assert events[0] == "start" and events[-1] == "end" and set(events[1:-1]) <= {"val"}


@pytest.mark.skipif(
    not os.environ.get("FAIRDX_SLOW_TESTS"),
    reason="three 2-process launches (~80 s of CPU); "
    "set FAIRDX_SLOW_TESTS=1. tests/test_train.py and test_checkpoints.py resume on one process",
)
def test_two_processes_stopped_on_one_rank_resume_to_the_weights_of_an_uninterrupted_run(tmp_path):
    """SIGTERM to rank 1 only: both ranks stop at the same step and save (each its own RNG states);
    ``--resume`` on two processes then ends with the weights of a run that was never stopped."""
    import psutil
    from safetensors.torch import load_file

    from training import rundir

    straight = launch_two(tmp_path / "a", "run")
    assert straight.returncode == 0, straight.stderr[-4000:]
    runs = tmp_path / "b"
    proc = launch_two(runs, "run", wait=False)
    log = rundir.staging_dir(runs, "run") / rundir.METRICS
    poll_until = time.monotonic() + 120
    while time.monotonic() < poll_until and '"step": 2,' not in (log.read_text() if log.exists() else ""):
        time.sleep(0.02)
    [rank1] = [p for p in psutil.Process(proc.pid).children(recursive=True) if p.environ().get("RANK") == "1"]
    rank1.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "interrupted: stopped at step" in err, err[-4000:]
    checkpoint = rundir.checkpoint_in(rundir.staging_dir(runs, "run"))
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in checkpoint.iterdir()}

    resumed = launch_two(runs, "run", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    run, _ = check_clean_run(runs, "run")
    assert run.config["training"]["resumed_from_step"] >= 2
    for name in ("adapter_model.safetensors", "head.safetensors"):
        a, b = load_file(str(tmp_path / "a" / "run" / "adapter" / name)), load_file(str(run.path / "adapter" / name))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name
