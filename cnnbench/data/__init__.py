"""Data: `build_data(cfg)` gives the train and val loaders and what the model must know of the data."""
from dataclasses import dataclass, field

import torch

from cnnbench.errors import DataError

from .datasets import SeededBatches, load_split
from .loader import ReadableBatches, TrainBatches, ValBatches, collate_readable
from .pseudo_labels import with_pseudo_labels
from .resident import CropFlip, ResidentBatches, check_device_resident, resident, why_not_resident
from .transforms import Normalize, build_transforms


@dataclass
class Data:
    train_loader: ReadableBatches | ResidentBatches
    val_loader: ReadableBatches | ResidentBatches
    train_batches: TrainBatches
    classes: list[str]
    normalize: Normalize
    path: str = ""  # device-resident or DataLoader, and why: for train.log
    warnings: list[str] = field(default_factory=list)  # about the files, for train.log
    skipped_images: dict[str, str] = field(default_factory=dict)  # path -> why it did not decode, this rank's


def build_data(cfg, rank: int = 0, world_size: int = 1, device: torch.device = torch.device("cpu")) -> Data:
    data = cfg.data
    eval_transform = build_transforms(cfg.augmentation, data, train=False)
    train = load_split(data, True, build_transforms(cfg.augmentation, data, train=True))
    val = load_split(data, False, eval_transform)
    if data.pseudo_labels:
        train = with_pseudo_labels(train, data)
    if data.num_classes is not None and data.num_classes != len(train.classes):
        raise DataError(f"data.num_classes: {data.num_classes}, but {data.name} has {len(train.classes)} "
                        f"classes; leave it null to use the data set's own")
    if val.classes != train.classes:
        raise DataError(f"data: the val split's classes differ from train's ({len(val.classes)} vs {len(train.classes)})")
    if data.batch_size % world_size:
        raise DataError(f"data.batch_size: {data.batch_size} does not split over {world_size} ranks")
    if len(train.dataset) < data.batch_size:
        raise DataError(f"data.batch_size: {data.batch_size} is more than the {len(train.dataset)} training images")
    train_batches = TrainBatches(len(train.dataset), data.batch_size, cfg.seed, rank, world_size,
                                 cfg.train.limit_train_batches)
    val_batches = ValBatches(len(val.dataset), data.batch_size // world_size, rank, world_size,
                             cfg.train.limit_val_batches)
    common = dict(train_batches=train_batches, classes=train.classes, normalize=Normalize(data),
                  warnings=train.warnings + val.warnings)
    reason = why_not_resident(cfg, train, val, device)
    if check_device_resident(data.device_resident, reason):
        # The eval transform is the train one without its random crop and flip, which CropFlip does.
        (train_images, train_targets), (val_images, val_targets) = (
            resident(split, eval_transform, device) for split in (train, val))
        aug = cfg.augmentation
        crop_flip = CropFlip(aug.crop_padding, aug.hflip, device) if aug.name == "basic" else None
        return Data(train_loader=ResidentBatches(train_images, train_targets, train_batches, crop_flip),
                    val_loader=ResidentBatches(val_images, val_targets, val_batches),
                    path=f"device-resident on {device}: {(train_images.numel() + val_images.numel()) / 2**20:.1f} "
                         f"MiB of uint8 images, no DataLoader", **common)
    # The loaders' own generator: drawing worker seeds from the global RNG would shift dropout's
    # random numbers on resume, when an epoch's loader iterator is created a second time.
    loading = dict(num_workers=data.workers, pin_memory=torch.cuda.is_available(), collate_fn=collate_readable,
                   persistent_workers=data.workers > 0, generator=torch.Generator().manual_seed(cfg.seed))
    skipped = {}
    return Data(
        train_loader=ReadableBatches(torch.utils.data.DataLoader(SeededBatches(train.dataset),
                                                                 batch_sampler=train_batches, **loading),
                                     data.on_bad_image, skipped),
        val_loader=ReadableBatches(torch.utils.data.DataLoader(val.dataset, batch_sampler=val_batches, **loading),
                                   data.on_bad_image, skipped),
        path=f"DataLoader, data.workers={data.workers}" + (f" ({why})" if (why := "data.device_resident=false"
                                                                          if data.device_resident is False else reason) else ""),
        skipped_images=skipped, **common)
