"""Data: `build_data(cfg)` gives the train and val loaders and what the model must know of the data."""
from dataclasses import dataclass, field

import torch

from cnnbench.errors import ConfigError, DataError

from .datasets import EncodedFiles, SeededBatches, load_split
from .decode import DecodedBatches, encoded_batch
from .loader import CudaPrefetcher, ReadableBatches, TrainBatches, ValBatches, collate_readable, loader_workers
from .pseudo_labels import with_pseudo_labels
from .transforms import Normalize, build_transforms


@dataclass
class Data:
    train_loader: ReadableBatches
    val_loader: ReadableBatches
    train_batches: TrainBatches
    classes: list[str]
    normalize: Normalize
    workers: int  # DataLoader worker processes, each loader's
    warnings: list[str] = field(default_factory=list)  # about the files, for train.log
    skipped_images: dict[str, str] = field(default_factory=dict)  # path -> why it did not decode, this rank's


def build_data(cfg, rank: int = 0, world_size: int = 1, device: torch.device | None = None) -> Data:
    """`device`: the training device; on CUDA the batches are prefetched to it (or decoded there)."""
    data = cfg.data
    train_transform = build_transforms(cfg.augmentation, data, train=True)
    val_transform = build_transforms(cfg.augmentation, data, train=False)
    train, val = load_split(data, True, train_transform), load_split(data, False, val_transform)
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
    workers = loader_workers(data, world_size)
    decode_device = data.decode_device and resolve_decode_device(data, device)
    # The loaders' own generator: drawing worker seeds from the global RNG would shift dropout's
    # random numbers on resume, when an epoch's loader iterator is created a second time.
    common = dict(num_workers=workers, prefetch_factor=data.prefetch_factor, persistent_workers=workers > 0,
                  generator=torch.Generator().manual_seed(cfg.seed))
    skipped = {}

    def loader(split, batch_sampler, transform, seeded: bool):
        if decode_device:
            files = torch.utils.data.DataLoader(EncodedFiles(split.dataset), batch_sampler=batch_sampler,
                                                collate_fn=encoded_batch, **common)
            batches = DecodedBatches(files, transform, decode_device)
        else:
            batches = torch.utils.data.DataLoader(SeededBatches(split.dataset) if seeded else split.dataset,
                                                  batch_sampler=batch_sampler, collate_fn=collate_readable,
                                                  pin_memory=device is not None and device.type == "cuda", **common)
        readable = ReadableBatches(batches, data.on_bad_image, skipped)
        return CudaPrefetcher(readable, device) if device is not None and device.type == "cuda" else readable

    return Data(
        train_loader=loader(train, train_batches, train_transform, seeded=True),
        val_loader=loader(val, val_batches, val_transform, seeded=False),
        train_batches=train_batches,
        classes=train.classes,
        normalize=Normalize(data),
        workers=workers,
        warnings=train.warnings + val.warnings,
        skipped_images=skipped,
    )


def resolve_decode_device(data, device: torch.device | None) -> torch.device:
    """data.decode_device: cpu, cuda, or auto (the training device)."""
    if data.name not in ("imagenet", "imagefolder") or data.pseudo_labels:
        raise ConfigError(f"data.decode_device: decodes the files of imagenet or imagefolder (without "
                          f"pseudo_labels), not {data.name}; leave it null")
    if data.decode_device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("data.decode_device: cuda asked for, but torch sees no CUDA device")
    if data.decode_device == "auto":
        return device or torch.device("cpu")
    return torch.device(data.decode_device.value)
