"""Batches that depend only on (seed, epoch): the same for any worker count, world size or resume point.

Training: a seeded permutation of the set is cut into global batches of data.batch_size (the last,
incomplete one dropped); rank r takes the r-th contiguous share of each. Validation: each rank takes
a contiguous shard, no padding, so every sample counts exactly once whatever the world size.
"""

import logging
import math
import os

import torch
from torch.utils.data import default_collate

from cnnbench.errors import DataError

from .datasets import BadImage

log = logging.getLogger("cnnbench")


def batch_seed(seed: int, epoch: int, batch: int, rank: int) -> int:
    return (((seed * 1_000_003 + epoch) * 1_000_033 + batch) * 1_009 + rank) & 0x7FFF_FFFF_FFFF_FFFF


class TrainBatches(torch.utils.data.Sampler):
    def __init__(
        self, size: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1, limit: int | None = None
    ):
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self.rank, self.local_batch = rank, global_batch // world_size
        self.batches = min(size // global_batch, limit or math.inf)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0):
        """Next iteration yields `epoch`'s batches from batch `start` on (a resumed epoch skips the rest)."""
        self.epoch, self.start = epoch, start

    def __len__(self):
        return self.batches - self.start

    def order(self) -> torch.Tensor:
        """The epoch's permutation of the set, which its batches cut up."""
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def starts(self):
        """(seed, first) of each batch left: this rank's share is order()[first:first + local_batch]."""
        for b in range(self.start, self.batches):
            yield batch_seed(self.seed, self.epoch, b, self.rank), b * self.global_batch + self.rank * self.local_batch

    def __iter__(self):
        order = self.order()
        for seed, first in self.starts():
            yield seed, order[first : first + self.local_batch].tolist()


class ValBatches(torch.utils.data.Sampler):
    def __init__(self, size: int, batch_size: int, rank: int = 0, world_size: int = 1, limit: int | None = None):
        lo, hi = size * rank // world_size, size * (rank + 1) // world_size
        self.batches = [list(range(i, min(i + batch_size, hi))) for i in range(lo, hi, batch_size)][:limit]

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def collate_readable(samples: list) -> tuple:
    """(batch, unreadable files): a file that did not decode leaves its batch (a smaller one), the same
    file every epoch, on every rank and at every resume, so the batch order and sharding stay exact."""
    bad = [s for s in samples if isinstance(s, BadImage)]
    readable = [s for s in samples if not isinstance(s, BadImage)]
    return (default_collate(readable) if readable else None), bad


class ReadableBatches:
    """A DataLoader of `collate_readable` batches, applying data.on_bad_image in the main process (a
    worker's exception would reach the user as a traceback); `skipped` collects path -> reason. A batch
    with no readable image is left out where `skip_empty` (validation, which adds up its batches once at
    the end); a training step cannot be, as the ranks and the resume position count them."""

    def __init__(self, loader: torch.utils.data.DataLoader, on_bad_image: str, skipped: dict, skip_empty=False):
        self.loader, self.on_bad_image, self.skipped, self.skip_empty = loader, on_bad_image, skipped, skip_empty

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch, bad in self.loader:
            for path, reason in bad:
                if self.on_bad_image == "error":
                    raise DataError(
                        f"{path}: not a readable image ({reason}); data.on_bad_image=skip leaves such files out"
                    )
                if path not in self.skipped:
                    log.warning(f"skipped image {path}: {reason}")
                    self.skipped[path] = reason
            if batch is None and not self.skip_empty:
                raise DataError(
                    f"data: no image of a training batch is readable ({', '.join(p for p, _ in bad)}); "
                    f"a step cannot be left out: remove them from data.root"
                )
            if batch is not None:
                yield batch


def loader_workers(data_cfg, world_size: int = 1) -> int:
    """data.workers, or for null this rank's share of the CPU cores, at most 8 (beyond that, rarely faster)."""
    if data_cfg.workers is not None:
        return data_cfg.workers
    return max(1, min(8, len(os.sched_getaffinity(0)) // world_size))


class CudaPrefetcher:
    """Copies the next batch to the GPU on a side stream while the current one trains (timm's
    PrefetchLoader, less its float normalization: the batch stays uint8 and Normalize runs in the loop)."""

    def __init__(self, batches, device: torch.device):
        self.batches, self.device, self.stream = batches, device, None

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.stream = self.stream or torch.cuda.Stream(self.device)  # one for good: the allocator pools per stream
        ready = None
        for batch in self.batches:
            with torch.cuda.stream(self.stream):
                moved = [tensor.to(self.device, non_blocking=True) for tensor in batch]
            if ready is not None:
                yield ready
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_stream(self.stream)
            for tensor in moved:
                tensor.record_stream(consumer)  # freed only after the consumer's work on it
            ready = moved
        if ready is not None:
            yield ready
