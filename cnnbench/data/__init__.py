"""Data: `build_data(cfg)` gives the train and val loaders and what the model must know of the data."""

from dataclasses import dataclass, field

import torch

from cnnbench.errors import ConfigError, DataError, short_list

from .datasets import EncodedFiles, SeededBatches, Split, dataset, load_split
from .decode import DecodedBatches, encoded_batch
from .loader import CudaPrefetcher, ReadableBatches, TrainBatches, ValBatches, collate_readable, loader_workers
from .pseudo_labels import with_pseudo_labels
from .resident import BatchAugment, ResidentBatches, check_device_resident, resident, why_not_resident
from .transforms import Normalize, build_transforms


@dataclass
class Data:
    train_loader: ReadableBatches | ResidentBatches
    val_loader: ReadableBatches | ResidentBatches
    train_batches: TrainBatches
    classes: list[str]
    normalize: Normalize
    path: str = ""  # device-resident or DataLoader, and why: for train.log
    workers: int = 0  # each DataLoader's worker processes
    warnings: list[str] = field(default_factory=list)  # about the files, for train.log
    skipped_images: dict[str, str] = field(default_factory=dict)  # path -> why it did not decode, this rank's


def check_splits(data, train: Split, val: Split, world_size: int) -> None:
    """The splits agree on their classes, and the training images make whole batches on every rank."""
    if data.num_classes is not None and data.num_classes != len(train.classes):
        raise DataError(
            f"data.num_classes: {data.num_classes}, but {data.name} has {len(train.classes)} "
            f"classes; leave it null to use the data set's own"
        )
    if val.classes != train.classes:
        only_train, only_val = (
            sorted(set(train.classes) - set(val.classes)),
            sorted(set(val.classes) - set(train.classes)),
        )
        raise DataError(
            f"data: the val split's classes differ from train's ({len(val.classes)} vs {len(train.classes)}; "
            f"only in train: {short_list(only_train)}; only in val: {short_list(only_val)})"
        )
    if not len(train.dataset):
        raise DataError(
            f"data: {data.name}'s train split holds no images" + (f" (data.root={data.root})" if data.root else "")
        )
    if data.batch_size % world_size:
        raise DataError(f"data.batch_size: {data.batch_size} does not split over {world_size} ranks")
    if len(train.dataset) < data.batch_size:
        raise DataError(f"data.batch_size: {data.batch_size} is more than the {len(train.dataset)} training images")


def build_data(cfg, rank: int = 0, world_size: int = 1, device: torch.device = torch.device("cpu")) -> Data:
    """`device`: the training device; on CUDA the loaders' batches are prefetched to it (or decoded there)."""
    data = cfg.data
    train_transform = build_transforms(cfg.augmentation, data, train=True)
    eval_transform = build_transforms(cfg.augmentation, data, train=False)
    train, val = load_split(data, True, train_transform), load_split(data, False, eval_transform)
    if data.pseudo_labels:
        train = with_pseudo_labels(train, data)
    check_splits(data, train, val, world_size)
    train_batches = TrainBatches(
        len(train.dataset), data.batch_size, cfg.seed, rank, world_size, cfg.train.limit_train_batches
    )
    val_batches = ValBatches(
        len(val.dataset), data.batch_size // world_size, rank, world_size, cfg.train.limit_val_batches
    )
    common = dict(
        train_batches=train_batches,
        classes=train.classes,
        normalize=Normalize(data),
        warnings=train.warnings + val.warnings,
    )
    decode_device = data.decode_device and resolve_decode_device(data, device)
    reason = why_not_resident(cfg, train, val, device)
    if check_device_resident(data.device_resident, reason):
        # The eval transform is the train one without its random crop, flip and erasing: BatchAugment's.
        (train_images, train_targets), (val_images, val_targets) = (
            resident(split, eval_transform, device) for split in (train, val)
        )
        aug = cfg.augmentation
        basic = aug.name == "basic"
        augment = (
            BatchAugment(aug.crop_padding if basic else 0, aug.hflip if basic else 0.0, aug.random_erasing, device)
            if basic or aug.random_erasing
            else None
        )
        return Data(
            train_loader=ResidentBatches(train_images, train_targets, train_batches, augment),
            val_loader=ResidentBatches(val_images, val_targets, val_batches),
            path=f"device-resident on {device}: {(train_images.numel() + val_images.numel()) / 2**20:.1f} "
            f"MiB of uint8 images, no DataLoader",
            **common,
        )
    workers = loader_workers(data, world_size)
    # The loaders' own generator: drawing worker seeds from the global RNG would shift dropout's
    # random numbers on resume, when an epoch's loader iterator is created a second time.
    loading = dict(
        num_workers=workers,
        prefetch_factor=data.prefetch_factor,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    skipped = {}

    def loader(split, batch_sampler, transform, seeded: bool):
        if decode_device:
            files = torch.utils.data.DataLoader(
                EncodedFiles(split.dataset), batch_sampler=batch_sampler, collate_fn=encoded_batch, **loading
            )
            batches = DecodedBatches(files, transform, decode_device)
        else:
            batches = torch.utils.data.DataLoader(
                SeededBatches(split.dataset) if seeded else split.dataset,
                batch_sampler=batch_sampler,
                collate_fn=collate_readable,
                pin_memory=device.type == "cuda",
                **loading,
            )
        readable = ReadableBatches(
            batches, data.on_bad_image, skipped, skip_empty=not seeded
        )  # validation leaves an empty batch out
        return CudaPrefetcher(readable, device) if device.type == "cuda" else readable

    return Data(
        train_loader=loader(train, train_batches, train_transform, seeded=True),
        val_loader=loader(val, val_batches, eval_transform, seeded=False),
        path=(
            f"DataLoader, {workers} workers"
            + (f", decoded on {decode_device}" if decode_device else "")
            + (
                f" ({why})"
                if (why := "data.device_resident=false" if data.device_resident is False else reason)
                else ""
            )
        ),
        workers=workers,
        skipped_images=skipped,
        **common,
    )


def resolve_decode_device(data, device: torch.device) -> torch.device:
    """data.decode_device: cpu, cuda, or auto (the training device)."""
    if not dataset(data.name).files or data.pseudo_labels:
        raise ConfigError(
            f"data.decode_device: decodes the files of imagenet or imagefolder (without "
            f"pseudo_labels), not {data.name}; leave it null"
        )
    if data.decode_device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("data.decode_device: cuda asked for, but torch sees no CUDA device")
    return device if data.decode_device == "auto" else torch.device(data.decode_device.value)
