"""Data parallel for the PPO-RLHF loop: ``torchrun --nproc_per_node N -m rlkit.cli rlhf RECIPE``.

What each of the N processes (ranks) does, and why:

* its own seed (``rank_seed``): different prompts and different samples per rank;
  rank 0 uses the run's seed, so a 1-process run is the plain run;
* the same initial weights: the model is built under the run's seed on every rank
  and rank 0's trainable parameters (LoRA init, value head) are broadcast anyway;
* ``batch_size`` prompts per rank per update (the global batch is N x batch_size),
  the same number of optimiser steps on every rank;
* gradients averaged over ranks before clipping and the optimiser step
  (``average_gradients``: one all-reduce per bucket, what DDP does inside), so
  every rank applies the same update and the weights stay identical;
* metrics (score, KL, losses, ...) averaged over ranks (``reduce_mean``) before the
  KL controller sees them, so beta is the same everywhere;
* rank 0 alone builds shared artifacts (model conversion, reward model: the others
  wait at a barrier), writes logs, samples tables, checkpoints and summaries.

Advantage whitening stays per rank (over its own batch), as in TRL.  A plain
explicit all-reduce is used instead of wrapping the policy in
``torch.nn.parallel.DistributedDataParallel``: the same arithmetic, and
``generate`` / the adapter-disabled reference need no unwrapping.
Backends: NCCL on CUDA (device cuda:LOCAL_RANK), gloo on CPU.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BUCKET_ELEMENTS = 32 * 1024 * 1024  # gradients all-reduced in flat buckets of at most this many elements
SEED_STRIDE = 10_007


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # a process group with more than one rank is active
    owns_group: bool = False  # this module created the process group (and destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    """True under torchrun (or any launcher that sets RANK / WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device: str = "auto", timeout_minutes: float = 120.0) -> tuple[DistContext, torch.device]:
    """Join the torchrun process group when there is one; returns (context, this rank's device).

    ``device``: auto / cpu / cuda / cuda:i as in RLHFConfig; under torchrun a CUDA
    device becomes cuda:LOCAL_RANK (NCCL), CPU uses gloo.  The timeout is long
    because the other ranks wait while rank 0 trains the reward model.
    """
    from rlkit.ppo import resolve_device

    if dist.is_available() and dist.is_initialized():  # an already-initialised group (e.g. a test harness)
        ctx = DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", str(dist.get_rank()))),
                          enabled=dist.get_world_size() > 1)
    elif launched_distributed():
        ctx = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)),
                          enabled=True, owns_group=True)
    else:
        return DistContext(), resolve_device(device)
    target = resolve_device(device)
    if target.type == "cuda":
        target = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(target)
    if ctx.owns_group:
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes),
                                **({"device_id": target} if target.type == "cuda" else {}))
    return ctx, target


def cleanup(ctx: DistContext, completed: bool = True) -> None:
    """Destroy the process group this module created.

    After a completed run the ranks meet at a barrier first: a rank that tears down its gloo connections while
    its peer is still finishing the last collective can make the peer abort at exit ("terminate called without
    an active exception", SIGABRT): 2 runs in 17 on a loaded machine before, none in 116 with the barrier
    (tests/test_rlhf_ddp.py).  After a failure there is no barrier: a peer may be gone and would never arrive.
    """
    if ctx.owns_group and dist.is_initialized():
        if completed and ctx.enabled:
            dist.barrier()
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """Per-rank seed; rank 0 keeps the run's seed."""
    return seed + SEED_STRIDE * rank


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


@contextlib.contextmanager
def main_process_first(ctx: DistContext):
    """Rank 0 runs the block first (building shared files); the others run it after (finding them built)."""
    if not ctx.is_main:
        barrier(ctx)
    try:
        yield
    finally:
        if ctx.is_main:
            barrier(ctx)


def broadcast_object(value, ctx: DistContext, src: int = 0):
    """Rank src's ``value`` (any picklable object) on every rank."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src)
    return box[0]


@torch.no_grad()
def broadcast_parameters(params: list[torch.Tensor], ctx: DistContext, src: int = 0) -> None:
    """Copy rank src's values of these tensors to every rank."""
    if not ctx.enabled:
        return
    for p in params:
        dist.broadcast(p.data, src)


def _buckets(tensors: list[torch.Tensor]):
    bucket, size = [], 0
    for t in tensors:
        if bucket and size + t.numel() > BUCKET_ELEMENTS:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


@torch.no_grad()
def average_gradients(params: list[torch.Tensor], ctx: DistContext) -> None:
    """Replace every gradient by its mean over ranks (a missing gradient counts as zeros on that rank)."""
    if not ctx.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for bucket in _buckets([p.grad for p in params]):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= ctx.world_size
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def _reduce_device() -> torch.device:
    """Where small all-reduced tensors live: NCCL reduces only CUDA tensors, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def reduce_max(value: float, ctx: DistContext) -> float:
    """The largest of the ranks' values (e.g. a stop signal that only some ranks have received yet)."""
    if not ctx.enabled:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def reduce_mean(stats: dict[str, float], ctx: DistContext, weight: float = 1.0) -> dict[str, float]:
    """Mean of each metric over ranks, each rank weighted by ``weight`` (e.g. its sample count).

    Every rank must pass the same keys.
    """
    if not ctx.enabled:
        return dict(stats)
    keys = sorted(stats)
    values = torch.tensor([float(stats[k]) * weight for k in keys] + [float(weight)], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    total = values[-1].item()
    return {k: values[i].item() / total for i, k in enumerate(keys)}


@torch.no_grad()
def parameters_in_sync(params: list[torch.Tensor], ctx: DistContext, atol: float = 0.0) -> bool:
    """Whether every rank holds the same values (compares per-tensor sums and sums of squares, max vs min over ranks)."""
    if not ctx.enabled:
        return True
    stats = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]) for p in params]).reshape(-1)
    high, low = stats.clone(), stats.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return bool(((high - low).abs() <= atol).all())
