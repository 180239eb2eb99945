"""Data-parallel training under ``torchrun``: the helpers that training calls.

Training uses :class:`~torch.nn.parallel.DistributedDataParallel` whenever a
``torch.distributed`` process group with more than one rank is initialised;
:func:`init` creates that group from the variables ``torchrun`` sets
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``), with NCCL on GPUs
and Gloo on the CPU. The ``genindex`` command calls it; a script of yours run
by ``torchrun`` calls it before building an index::

    device = genindex.distributed.init()          # e.g. cuda:3 on local rank 3
    index = GenerativeIndex(d, config).to(device)
    index.train(x, labels)                        # every rank, all of x
    if genindex.distributed.is_main():
        index.add(x)
        index.save("my.index")

How the work is shared, so that N processes compute what one would:

* Every rank holds the whole training set and draws the same permutation
  from the same seeded generator; each global batch of ``batch_size`` items
  is cut into N slices and rank r trains on slice r. The per-rank losses are
  weighted so that DDP's mean of the gradients is the gradient of the global
  batch's mean loss: the optimizer takes the steps a single process takes.
* k-means refits of the codebooks run on every rank from the same features
  and generator; DDP broadcasts buffers from rank 0 at every step and
  :func:`sync_buffers` does so after the last refit, so all ranks agree.
* Progress bars, logging and saving happen on rank 0 only (:func:`is_main`).
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from .backbones import Backbone
from .checks import default_device

log = logging.getLogger(__name__)


class Shard(NamedTuple):
    """This rank's part of a global batch and the weight of its mean loss."""

    rows: torch.Tensor  # this rank's rows of the batch (cut along the first axis)
    weight: float  # world_size * len(index) / len(global batch); 1.0 on one process


def launched() -> bool:
    """Whether ``torchrun`` (or a similar launcher) started several processes."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank: the group's, else what the launcher set (0 without one)."""
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0 and in a single process: the rank that logs and saves."""
    return rank() == 0


def init(device: str | torch.device | None = None) -> torch.device:
    """Join the process group ``torchrun`` describes; returns this rank's device.

    Without a launcher (``WORLD_SIZE`` unset or 1) nothing happens and the
    device is ``device``, else CUDA when present, else the CPU. Under a
    launcher, CUDA ranks use ``cuda:LOCAL_RANK`` and NCCL; CPU ranks use Gloo.
    """
    wanted = torch.device(device) if device is not None else default_device()
    if not launched():
        return wanted
    if wanted.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA "
                             "devices are visible: use --nproc_per_node <= the GPU count")
        wanted = torch.device("cuda", local)
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ValueError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start "
                             "distributed runs with torchrun")
        backend = "nccl" if wanted.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=wanted if wanted.type == "cuda" else None)
        log.info("rank %d of %d joined the %s process group", rank(), world_size(), backend)
    return wanted


def shutdown() -> None:
    """Leave the process group (after a last barrier), if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def shard(batch: torch.Tensor) -> Shard:
    """This rank's slice of the global ``batch`` of training rows (its first axis).

    A batch smaller than the number of ranks is padded by repeating it, so that
    no rank trains on nothing (DDP needs every rank to step together).
    """
    return shard_of(batch, rank(), world_size())


def shard_of(batch: torch.Tensor, rank: int, world_size: int) -> Shard:
    """:func:`shard` for an explicit rank and world size (a pure function)."""
    if world_size == 1:
        return Shard(batch, 1.0)
    if len(batch) < world_size:
        batch = batch[torch.arange(world_size, device=batch.device) % len(batch)]
    part = batch.tensor_split(world_size)[rank]
    return Shard(part, world_size * len(part) / len(batch))


def split_range(n: int) -> range:
    """The items ``0..n-1`` this rank handles when work is split by rank (strided)."""
    return range(rank(), n, world_size())


def wrap(module: nn.Module) -> nn.Module:
    """``module`` in DistributedDataParallel when a process group is active, else itself."""
    if not active():
        return module
    device = next(module.parameters()).device
    has_backbone = any(isinstance(m, Backbone) for m in module.modules())
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device] if device.type == "cuda" else None,
        # a backbone may hold parameters its global feature or its tokens do not use
        find_unused_parameters=has_backbone)


def sync_buffers(module: nn.Module) -> None:
    """Copy every buffer of ``module`` (codebooks, batch-norm statistics) from rank 0."""
    if not active():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def mean(value: float, device: torch.device) -> float:
    """The mean of ``value`` over all ranks (``value`` itself on one process)."""
    if not active():
        return value
    backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([value], dtype=torch.float64, device=backend_device)
    dist.all_reduce(total)
    return float(total.item()) / world_size()
