"""The tensor-parallel group of this process: who we are (rank, size) and the collectives the
layers and the scheduler use.

One process per rank. `init_tp_group` joins torch.distributed with NCCL on CUDA (the device
group the model's all-reduce and all-gather run on) and gloo on the CPU; a second, gloo group
on the CPU carries the scheduler's Python objects (each loop's received requests). On the CPU
one gloo group serves both. With tp_size 1 nothing is initialized and every collective is the
identity, so single-GPU code pays nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# A collective that waits longer than this means a peer is gone: the rank fails instead of hanging
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass
class TPGroup:
    rank: int
    size: int
    device_group: Any = None  # the model's collectives (NCCL on CUDA, gloo on the CPU)
    cpu_group: Any = None  # Python objects between schedulers (always gloo)
    small_all_reduce: Any = None  # SymmMemAllReduce for decode-sized messages on CUDA, or None


_TP = TPGroup(rank=0, size=1)


def init_tp_group(rank: int, size: int, init_addr: str, device: torch.device,
                  custom_all_reduce: bool = True) -> TPGroup:
    """Join the group of `size` ranks that meet at `init_addr` ("host:port"; rank 0 listens there).
    custom_all_reduce: small all-reduces on CUDA through symm_mem_all_reduce (else all NCCL)."""
    global _TP
    if size == 1:
        _TP = TPGroup(rank=0, size=1)
        return _TP
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{init_addr}", rank=rank, world_size=size,
                            timeout=COLLECTIVE_TIMEOUT)
    device_group = dist.group.WORLD
    cpu_group = device_group if backend == "gloo" else dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    _TP = TPGroup(rank=rank, size=size, device_group=device_group, cpu_group=cpu_group)
    if backend == "nccl":  # NCCL sets up its communicator on the first collective: not inside a graph capture
        dist.all_reduce(torch.zeros(1, device=device), group=device_group)
        torch.cuda.synchronize(device)
        if custom_all_reduce:
            from sglserve.distributed.symm_mem_all_reduce import make_symm_mem_all_reduce

            _TP.small_all_reduce = make_symm_mem_all_reduce(device_group, device, all_reduce_min)
    logger.info("TP rank %d/%d joined at %s (%s), pid %d", rank, size, init_addr, backend, os.getpid())
    return _TP


def destroy_tp_group() -> None:
    global _TP
    if _TP.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
    _TP = TPGroup(rank=0, size=1)


def tp_group() -> TPGroup:
    return _TP


def get_tp_rank() -> int:
    return _TP.rank


def get_tp_size() -> int:
    return _TP.size


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (what a row-parallel layer's partial products need). Use the returned
    tensor: NCCL sums in place, the one-shot kernel into a new tensor."""
    if _TP.size == 1:
        return x
    if _TP.small_all_reduce is not None and _TP.small_all_reduce.fits(x):
        return _TP.small_all_reduce(x)
    dist.all_reduce(x, group=_TP.device_group)
    return x


def tp_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's `x` along `dim` in rank order (the vocab shards of the logits)."""
    if _TP.size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(_TP.size)]
    dist.all_gather(parts, x, group=_TP.device_group)
    return torch.cat(parts, dim=dim)


def broadcast_objects(objs: Optional[List[Any]]) -> List[Any]:
    """Rank 0's list of picklable objects, on every rank (the others pass None)."""
    if _TP.size == 1:
        return objs or []
    box = [objs if _TP.rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=_TP.cpu_group)
    return box[0]


def all_reduce_min(value: int) -> int:
    """The smallest of every rank's `value`: sizes that must agree (KV tokens) and counts that
    must (grammars ready) so that every rank takes the same scheduling decision."""
    if _TP.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=_TP.cpu_group)
    return int(t.item())
