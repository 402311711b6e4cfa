"""Several processes, one job: PyTorch's own torch.distributed, as `torchrun` starts it.

`Distributed.from_env()` joins the process group that torchrun describes in the environment (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT; gloo on CPU, nccl on GPU) and is the single-process no-op
otherwise, so the same code runs both ways. Training uses it to shard batches and keep memory banks
consistent; encoding uses it to shard the images.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False  # in a torchrun process group (a group of one too: the same code path as of many)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str = "cpu") -> "Distributed":
        """The process group of a torchrun job (joined once), or the single process."""
        if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), True)

    def device(self, device: torch.device) -> torch.device:
        """Each process its own GPU; the CPU is shared."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.active else device

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensors of every rank, concatenated along dim 0 in rank order (the same shape on every rank)."""
        if not self.active:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Average the gradients of parameters outside DistributedDataParallel's reach (a method's own nets)."""
        if not self.active:
            return
        for p in parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world_size

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = Distributed()
