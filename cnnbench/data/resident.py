"""Device-resident data: a small in-memory set as one uint8 tensor on the training device, each batch
gathered by index there and augmented as a whole, with no DataLoader and no host-device copies.

The batches are TrainBatches' and ValBatches' own (same indices for a seed, per rank, from any resume
point), and a batch's augmentation depends only on its batch_seed, through a generator on the device.
Only augmentation=none and basic (crop_padding, hflip, random_erasing) run here; the per-image policies,
AlexNet's lighting and pseudo-labels take the DataLoader path.
"""

import math

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
    if aug.lighting:
        return "augmentation.lighting transforms each image on its own"
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


class BatchAugment:
    """augmentation=basic on a batch, as torchvision draws it per image: RandomCrop(size, padding=crop_padding)
    with zero fill and RandomHorizontalFlip(hflip) in one gather, then RandomErasing(random_erasing) (Zhong et
    al., "Random Erasing Data Augmentation", 2020: a rectangle of 2-33% of the image, aspect ratio 0.3-3.3,
    first of 10 draws that fits, set to 0). Every random number comes from one device generator seeded with
    the batch's seed."""

    ERASE_SCALE, ERASE_RATIO, ERASE_ATTEMPTS = (0.02, 0.33), (0.3, 3.3), 10  # torchvision's defaults

    def __init__(self, padding: int, hflip: float, erasing: float, device: torch.device):
        self.padding, self.hflip, self.erasing = padding, hflip, erasing
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
        images = padded[
            torch.arange(n, device=device)[:, None, None, None],
            torch.arange(c, device=device)[:, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        return self.erase(images, g) if self.erasing else images

    def erase(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, _, h, w = images.shape
        device, attempts = images.device, self.ERASE_ATTEMPTS
        area = h * w * torch.empty(n, attempts, device=device).uniform_(*self.ERASE_SCALE, generator=g)
        log_ratio = torch.empty(n, attempts, device=device).uniform_(*map(math.log, self.ERASE_RATIO), generator=g)
        eh, ew = (area * log_ratio.exp()).sqrt().round(), (area / log_ratio.exp()).sqrt().round()
        fits = (eh < h) & (ew < w)
        first = fits.int().argmax(1, keepdim=True)  # the first draw that fits, as torchvision takes it
        eh, ew = eh.gather(1, first), ew.gather(1, first)
        top = (torch.rand(n, 1, generator=g, device=device) * (h - eh + 1)).floor()
        left = (torch.rand(n, 1, generator=g, device=device) * (w - ew + 1)).floor()
        erased = torch.rand(n, 1, generator=g, device=device) < self.erasing
        erased &= fits.any(1, keepdim=True)
        y, x = torch.arange(h, device=device), torch.arange(w, device=device)
        inside_rows = (y >= top) & (y < top + eh)  # (n, h)
        inside_cols = (x >= left) & (x < left + ew)  # (n, w)
        mask = (erased & inside_rows)[:, None, :, None] & inside_cols[:, None, None, :]
        return images.masked_fill(mask, 0)


class ResidentBatches:
    """(images, targets) batches on the device: TrainBatches' (augmented, when `augment` is given) or
    ValBatches' contiguous shards."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        batches: TrainBatches | ValBatches,
        augment: BatchAugment | None = None,
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
