"""The cross-rank group statistics: two CPU processes (gloo) give the single-device gradient."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

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
    return compute_loss(method, logits, labels, groups, lam=1.0, group_weight=torch.tensor([1.0, 2.0, 3.0]),
                        bandwidth=None).total


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_give_the_single_device_gradient():
    ctx = mp.get_context("spawn")
    for method in ("fr", "cmac", "hybrid"):
        model = _model()
        x, labels, groups = _data()
        loss = _loss(method, model(x), labels, groups)
        loss.backward()
        with ctx.Manager() as manager:
            out = manager.dict()
            mp.start_processes(_worker, args=(2, _free_port(), method, out), nprocs=2, join=True,
                               start_method="spawn")
            results = dict(out)
        for rank in (0, 1):
            rank_loss, grad = results[rank]
            assert abs(rank_loss - loss.item()) < 1e-6, method
            assert torch.allclose(grad, model.weight.grad, atol=1e-6), (method, grad, model.weight.grad)
