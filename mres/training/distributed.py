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

* ``parallel: variants`` (coarse-to-fine) runs whole phases on single ranks instead: inside
  :func:`alone` this rank sees a world of one (no collectives, it writes its own files), and
  :func:`barrier_all` is the only meeting point of the ranks.

Backends: ``nccl`` with CUDA, ``gloo`` on CPUs. One process (no ``WORLD_SIZE``) is the same code
with W = 1, r = 0 and no collectives. The process group's timeout (``MRES_DIST_TIMEOUT_S``; unset: torch's
default, 30 min for gloo, 10 min for nccl) bounds how long a rank waits at a barrier for the others'
phases — set it for ``parallel: variants`` jobs whose phases run longer; a rank that fails ends the
job sooner (torchrun stops the other ranks).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

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
_GROUP = World()  # the process group's world, also while a rank works alone


def init_from_env() -> World:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); otherwise one process."""
    global _WORLD, _GROUP
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or dist.is_initialized():
        return _WORLD
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local)
    timeout = os.environ.get("MRES_DIST_TIMEOUT_S")  # unset: torch's default (gloo 30 min, nccl 10 min)
    dist.init_process_group(backend, **({"timeout": timedelta(seconds=float(timeout))} if timeout else {}))
    _WORLD = _GROUP = World(dist.get_rank(), dist.get_world_size(), local)
    return _WORLD


def world() -> World:
    return _WORLD


def group() -> World:
    """Every rank of the job (the same as :func:`world` except inside :func:`alone`)."""
    return _GROUP


@contextmanager
def alone() -> Iterator[None]:
    """This rank as a process of its own: training and evaluation use no collectives and it writes its
    own files (``parallel: variants``: a phase runs on one rank, its device)."""
    global _WORLD
    saved, _WORLD = _WORLD, World(0, 1, _GROUP.local_rank)
    try:
        yield
    finally:
        _WORLD = saved


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


def agreed(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank. For a decision that guards a write with a barrier (``if not
    path.exists(): write``): rank 0 may have written the file before another rank looks, and ranks that
    branch differently around a collective deadlock."""
    if not _WORLD.distributed:
        return flag
    box = [flag if _WORLD.main else None]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def barrier() -> None:
    if _WORLD.distributed:
        dist.barrier()


def barrier_all() -> None:
    """Wait for every rank of the job, also from inside :func:`alone`."""
    if _GROUP.distributed:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
