"""Group statistics across ranks: gather every rank's part of the effective batch, keeping gradients.

FR's soft MaxAccGap (Gu et al., Eq. 6) and CMAC's subgroup MMD (CMAC-MMD) are not sums over samples,
so under data parallelism each rank must see the whole effective batch to compute them. Every rank
gathers all ranks' logits with a *differentiable* all-gather and computes the same global loss L.
The all-gather's backward sums, into each rank's slice, the gradients that all ranks' copies of L
send it (world · ∂L/∂x_r); DDP then averages parameter gradients over ranks, which divides by world
again, so every rank ends up with exactly ∂L/∂θ — the gradient a single device would compute on the
whole effective batch. `tests/test_distributed.py` checks this with two CPU processes (gloo).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from every rank along dim 0 (rank order); gradients flow back to each rank.

    Every rank must pass the same shape except along dim 0 being equal too (the trainer gives each
    rank the same number of samples per step, except possibly the last step of an epoch, where the
    sizes are padded by `_pad_gather`).
    """
    if world_size() == 1:
        return tensor
    if not tensor.is_floating_point():
        return _gather_ints(tensor)
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(_trim(dist_fn.all_gather(_pad(tensor)), tensor), dim=0)


def _sizes(tensor: Tensor) -> list[int]:
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _pad(tensor: Tensor) -> Tensor:
    longest = max(_sizes(tensor))
    if tensor.shape[0] == longest:
        return tensor
    padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, padding], dim=0)


def _trim(parts: list[Tensor] | tuple[Tensor, ...], tensor: Tensor) -> list[Tensor]:
    sizes = _sizes(tensor)
    return [part[:n] for part, n in zip(parts, sizes, strict=True)]


def _gather_ints(tensor: Tensor) -> Tensor:
    padded = _pad(tensor)
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat(_trim(parts, tensor), dim=0)
