"""A one-shot all-reduce over PyTorch's symmetric memory, for the small messages of decode.

At batch 1 a Llama layer all-reduces 2 x hidden_size values twice; NCCL spends most of its
time on latency there, and an 8B model at TP=2 does 64 of them a token. The one-shot kernel
(`torch.ops.symm_mem.one_shot_all_reduce_copy_out`) copies this rank's input into its slot of a
buffer every rank can read over NVLink, waits on the peers' signal pads, and sums every peer's
slot itself: one kernel, no multicast (which the GPUs here must not use), and it records into
a CUDA graph like any kernel.

The kernel has a barrier before the sum and none after it, so a rank that runs ahead could
overwrite its slot while a slower peer still reads the previous message there. Two slots
taken in turn close that gap: to reach the slot again a rank must pass the next all-reduce's
barrier, which every peer reaches only after finishing the read. Every rank runs the same
sequence of all-reduces (the same scheduling decisions, the same graphs), so the turns agree.
A graph bakes its slots in at capture, so two replays in a row may use one slot back to back
(a forward with an odd number of all-reduces); the logits' all-gather (NCCL) between them is a
barrier too: no rank finishes it before every peer has finished the forward's last read.
Larger messages, and every message on a setup where the buffer cannot be made, go to NCCL.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

ONE_SHOT_MAX_BYTES = 512 * 1024  # each rank reads world_size x this; beyond it NCCL's ring is as fast
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class SymmMemAllReduce:
    def __init__(self, group: Any, device: torch.device, max_bytes: int = ONE_SHOT_MAX_BYTES) -> None:
        import torch.distributed._symmetric_memory as symm_mem

        self.group_name = group.group_name
        self.max_bytes = max_bytes
        if torch.torch_version.TorchVersion(torch.__version__) < (2, 9):  # later: deprecated, a no-op that warns
            symm_mem.enable_symm_mem_for_group(self.group_name)
        self.buffer = symm_mem.empty(2 * max_bytes, dtype=torch.uint8, device=device)
        self.turn = 0

    def rendezvous(self) -> None:
        """Exchange the buffers' handles: collective, so only once every rank has allocated."""
        import torch.distributed._symmetric_memory as symm_mem

        symm_mem.rendezvous(self.buffer, self.group_name)

    def fits(self, x: torch.Tensor) -> bool:
        nbytes = x.numel() * x.element_size()
        return x.is_cuda and x.dtype in DTYPES and x.is_contiguous() and 0 < nbytes <= self.max_bytes \
            and nbytes % 16 == 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's `x`, in a new tensor (x is left as it was)."""
        nbytes = x.numel() * x.element_size()
        start = self.turn * self.max_bytes
        self.turn ^= 1
        slot = self.buffer[start:start + nbytes].view(x.dtype)
        out = torch.empty_like(x)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(slot, x.view(-1), "sum", self.group_name, out.view(-1))
        return out


def make_symm_mem_all_reduce(group: Any, device: torch.device, agree) -> Optional[SymmMemAllReduce]:
    """The one-shot all-reduce if every rank could set it up, else None (NCCL for everything).
    `agree` takes this rank's 1/0 and returns the minimum over ranks, so that no rank uses it alone."""
    made, why = None, ""
    try:
        made = SymmMemAllReduce(group, device)
    except Exception as e:  # no P2P between these GPUs, an old torch, ...: NCCL still works
        why = f"{type(e).__name__}: {e}"
    if not agree(1 if made is not None else 0):
        logger.warning("symmetric-memory all-reduce unavailable (%s); every all-reduce goes through NCCL",
                       why or "on another rank")
        return None
    try:  # every rank meets here; a refusal (e.g. two ranks on one device) is the same on all of them
        made.rendezvous()
    except Exception as e:
        logger.warning("symmetric-memory rendezvous failed (%s: %s); every all-reduce goes through NCCL",
                       type(e).__name__, e)
        return None
    logger.info("Small all-reduces (<= %d KiB) go through the one-shot symmetric-memory kernel", ONE_SHOT_MAX_BYTES >> 10)
    return made
