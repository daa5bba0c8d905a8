"""One process per rank, found from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    ctx = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    return ctx


def all_reduce_sum(t: torch.Tensor, ctx: Dist) -> torch.Tensor:
    if ctx.world_size > 1:
        dist.all_reduce(t)
    return t
