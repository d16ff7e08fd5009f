"""Data-parallel helpers over `torch.distributed` (gloo on CPU; started by `torchrun`).

Gradients are all-reduced once per optimiser step, after the sandwich subnets have accumulated,
instead of through `DistributedDataParallel`'s per-backward reducer: every subnet uses a different
subset of the shared parameters, which DDP's reducer handles only with `find_unused_parameters`
and one backward per synchronisation. All ranks draw the same subnets (the sampler is a function of
the step), so they hold gradients for the same parameters; the result equals the single-process
gradient of the union of the ranks' batches (equal-sized shards).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn


def world() -> tuple[int, int]:
    """`(rank, world_size)`; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env(backend: str = "gloo") -> tuple[int, int]:
    """Initialise the process group from torchrun's environment if it is set and not yet initialised."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return world()


@torch.no_grad()
def broadcast_parameters(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if world()[1] == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def allreduce_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients of `params` over ranks (one flat all-reduce)."""
    _, n = world()
    if n == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= n
    off = 0
    for g in grads:
        g.copy_(flat[off : off + g.numel()].view_as(g))
        off += g.numel()

