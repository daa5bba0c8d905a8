"""Device-resident data: a small in-memory set as one uint8 tensor on the training device, each batch
gathered by index there and augmented as a whole, with no DataLoader and no host-device copies.

The batches are TrainBatches' and ValBatches' own (same indices for a seed, per rank, from any resume
point), and a batch's augmentation depends only on its batch_seed, through a generator on the device.
Only augmentation=none and basic (crop_padding, hflip) run here; the per-image policies, AlexNet's
lighting, random erasing and pseudo-labels take the DataLoader path.
"""

import torch
import torch.nn.functional as F

from cnnbench.errors import ConfigError

from .datasets import TensorImages
from .loader import TrainBatches, ValBatches

MAX_MEMORY_FRACTION = 0.25  # auto: the images of both splits take at most this much of the GPU's memory


def in_memory(dataset) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(images, targets) of a TensorImages set or of a data.train_size/val_size subset of one, else None."""
    if isinstance(dataset, torch.utils.data.Subset) and isinstance(dataset.dataset, TensorImages):
        keep = torch.as_tensor(dataset.indices)
        return dataset.dataset.images[keep], dataset.dataset.targets[keep]
    if isinstance(dataset, TensorImages):
        return dataset.images, dataset.targets
    return None


def why_not_resident(cfg, train, val, device: torch.device) -> str | None:
    """Why these splits cannot be (data.device_resident=true) or should not be (auto) device-resident;
    None when they can."""
    aug = cfg.augmentation
    if cfg.data.pseudo_labels:
        return "data.pseudo_labels joins soft targets to the images"
    if in_memory(train.dataset) is None or in_memory(val.dataset) is None:
        return f"data={cfg.data.name} is read from files, not held in memory"
    if aug.name not in ("none", "basic"):
        return f"augmentation={aug.name} transforms each image on its own"
    if aug.lighting or aug.random_erasing:
        return "augmentation.lighting and random_erasing transform each image on their own"
    if device.type == "cuda":
        size = sum(in_memory(split.dataset)[0].numel() for split in (train, val))
        room = torch.cuda.get_device_properties(device).total_memory * MAX_MEMORY_FRACTION
        if size > room:
            return f"the images take {size / 2**30:.1f} GiB, more than {MAX_MEMORY_FRACTION:.0%} of {device}'s memory"
    return None


def resident(split, transform, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images through its deterministic transform (channels, resize, centre crop: the same on a
    batch as per image), as one uint8 tensor on the device, and its targets there."""
    images, targets = in_memory(split.dataset)
    return transform(images).as_subclass(torch.Tensor).contiguous().to(device), targets.to(device)


class CropFlip:
    """augmentation=basic on a batch: per image RandomCrop(size, padding=crop_padding) with zero fill, then
    RandomHorizontalFlip(hflip), as torchvision draws them (offsets uniform in [0, 2 * padding]), in one
    gather; every random number comes from one device generator seeded with the batch's seed."""

    def __init__(self, padding: int, hflip: float, device: torch.device):
        self.padding, self.hflip = padding, hflip
        self.generator = torch.Generator(device)

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        n, c, h, w = images.shape
        p, device, g = self.padding, images.device, self.generator.manual_seed(seed)
        shift = torch.randint(0, 2 * p + 1, (2, n, 1), generator=g, device=device)
        flip = torch.rand(n, 1, generator=g, device=device) < self.hflip
        across = torch.arange(w, device=device)
        rows = shift[0] + torch.arange(h, device=device)
        cols = shift[1] + torch.where(flip, w - 1 - across, across)
        padded = F.pad(images, (p, p, p, p))
        return padded[
            torch.arange(n, device=device)[:, None, None, None],
            torch.arange(c, device=device)[:, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]


class ResidentBatches:
    """(images, targets) batches on the device: TrainBatches' (augmented, when `augment` is given) or
    ValBatches' contiguous shards."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        batches: TrainBatches | ValBatches,
        augment: CropFlip | None = None,
    ):
        self.images, self.targets, self.batches, self.augment = images, targets, batches, augment

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        if isinstance(self.batches, ValBatches):
            for batch in self.batches:
                yield self.images[batch[0] : batch[-1] + 1], self.targets[batch[0] : batch[-1] + 1]
            return
        order = self.batches.order().to(self.images.device)  # one copy an epoch
        for seed, first in self.batches.starts():
            indices = order[first : first + self.batches.local_batch]
            images = self.images[indices]
            yield (self.augment(images, seed) if self.augment else images), self.targets[indices]


def check_device_resident(setting, reason: str | None) -> bool:
    """data.device_resident: auto is resident where nothing stands against it; true insists."""
    if setting is True and reason:
        raise ConfigError(f"data.device_resident: true, but {reason}; auto or false use the DataLoader")
    return setting is True or setting == "auto" and reason is None
