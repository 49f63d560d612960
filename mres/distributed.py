"""Data-parallel glue: torch.distributed, started by ``torchrun --nproc_per_node=N -m mres …``.

Conventions, stated once:

* ``batch_size`` is the **global** batch. Every rank draws the same permutation and the same
  augmentation (one seed); rank r trains on rows ``[⌊B·r/W⌋, ⌊B·(r+1)/W⌋)`` of each global batch of
  B rows, W ranks.
* Rank r's loss is its shard's mean × (W·n_r / B): DistributedDataParallel averages gradients over
  the W ranks, so the step is that of the global batch's mean — exactly, also for an uneven last batch.
* Evaluation is sharded the same way and summed over ranks (``all_reduce``): every rank gets the
  metrics of the whole set.
* Rank 0 alone writes (checkpoints, metrics, summaries, reports); the others wait at a barrier
  after each write, so a file rank 0 wrote is there when any rank reads it.

Backends: ``nccl`` with CUDA, ``gloo`` on CPUs. One process (no ``WORLD_SIZE``) is the same code
with W = 1, r = 0 and no collectives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


_WORLD = World()


def init_from_env() -> World:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); otherwise one process."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or dist.is_initialized():
        return _WORLD
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local)
    dist.init_process_group(backend)
    _WORLD = World(dist.get_rank(), dist.get_world_size(), local)
    return _WORLD


def world() -> World:
    return _WORLD


def shard(n: int) -> slice:
    """This rank's rows of a global batch of n rows."""
    w = _WORLD
    return slice(n * w.rank // w.size, n * (w.rank + 1) // w.size)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (no-op in one process); gloo reduces on the CPU."""
    if _WORLD.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if _WORLD.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    if _WORLD.distributed:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
