"""Data: `build_data(cfg)` gives the train and val loaders and what the model must know of the data."""
from dataclasses import dataclass, field

import torch

from cnnbench.errors import DataError

from .datasets import SeededBatches, load_split
from .loader import ReadableBatches, TrainBatches, ValBatches, collate_readable
from .pseudo_labels import with_pseudo_labels
from .transforms import Normalize, build_transforms


@dataclass
class Data:
    train_loader: ReadableBatches
    val_loader: ReadableBatches
    train_batches: TrainBatches
    classes: list[str]
    normalize: Normalize
    warnings: list[str] = field(default_factory=list)  # about the files, for train.log
    skipped_images: dict[str, str] = field(default_factory=dict)  # path -> why it did not decode, this rank's


def build_data(cfg, rank: int = 0, world_size: int = 1) -> Data:
    data = cfg.data
    train = load_split(data, True, build_transforms(cfg.augmentation, data, train=True))
    val = load_split(data, False, build_transforms(cfg.augmentation, data, train=False))
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
    # The loaders' own generator: drawing worker seeds from the global RNG would shift dropout's
    # random numbers on resume, when an epoch's loader iterator is created a second time.
    common = dict(num_workers=data.workers, pin_memory=torch.cuda.is_available(), collate_fn=collate_readable,
                  persistent_workers=data.workers > 0, generator=torch.Generator().manual_seed(cfg.seed))
    skipped = {}
    return Data(
        train_loader=ReadableBatches(torch.utils.data.DataLoader(SeededBatches(train.dataset),
                                                                 batch_sampler=train_batches, **common),
                                     data.on_bad_image, skipped),
        val_loader=ReadableBatches(torch.utils.data.DataLoader(val.dataset, batch_sampler=val_batches, **common),
                                   data.on_bad_image, skipped),
        train_batches=train_batches,
        classes=train.classes,
        normalize=Normalize(data),
        warnings=train.warnings + val.warnings,
        skipped_images=skipped,
    )
