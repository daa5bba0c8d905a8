"""Device-resident data: the DataLoader path's batches without a DataLoader, augmented on the device."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cnnbench.data import build_data
from cnnbench.data.loader import ReadableBatches
from cnnbench.data.resident import ResidentBatches
from cnnbench.engine.trainer import train
from cnnbench.errors import ConfigError

from .helpers import SMOKE, make_config, run_cli

# Real Fashion-MNIST, resized to 32 and made RGB: the transform the set goes through once must equal
# the DataLoader's per-image one. 1000 images, 4 global batches of 96 an epoch (2 ranks: 48 each).
FMNIST = [
    "data=fashion_mnist",
    "data.train_size=400",
    "data.val_size=100",
    "data.batch_size=96",
    "data.image_size=32",
    "data.channels=3",
    "data.mean=[0.5,0.5,0.5]",
    "data.std=[0.25,0.25,0.25]",
    "model=lenet5",
    "hardware=cpu",
]


def epoch_batches(data, epoch: int, start: int = 0) -> list:
    data.train_batches.set_epoch(epoch, start)
    return list(data.train_loader)


@pytest.mark.parametrize("rank,world_size", [(0, 1), (1, 2)])
def test_same_batches_as_the_dataloader_path(rank, world_size, tmp_path):
    """augmentation=none: every train batch (an epoch from its start and a resumed one from batch 2) and
    every val shard is the DataLoader path's, image for image and label for label."""
    resident, loaded = (
        build_data(
            make_config(tmp_path, *FMNIST, "augmentation=none", "seed=7", f"data.device_resident={setting}"),
            rank,
            world_size,
        )
        for setting in ("true", "false")
    )
    assert isinstance(resident.train_loader, ResidentBatches) and isinstance(loaded.train_loader, ReadableBatches)
    assert "device-resident on cpu" in resident.path and "DataLoader" in loaded.path
    for epoch, start in ((0, 0), (1, 2)):
        got, expected = epoch_batches(resident, epoch, start), epoch_batches(loaded, epoch, start)
        assert len(got) == len(expected) == 4 - start
        for (images, targets), (want_images, want_targets) in zip(got, expected, strict=True):
            assert images.shape == (96 // world_size, 3, 32, 32) and images.dtype == torch.uint8
            assert torch.equal(images, want_images) and torch.equal(targets, want_targets)
    val, want_val = list(resident.val_loader), list(loaded.val_loader)
    assert sum(len(t) for _, t in val) == 100 // world_size
    for (images, targets), (want_images, want_targets) in zip(val, want_val, strict=True):
        assert torch.equal(images, want_images) and torch.equal(targets, want_targets)


def crops_and_flips(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every image RandomCrop(padding=padding) + RandomHorizontalFlip can make of `image`."""
    h, w = image.shape[-2:]
    padded = F.pad(image, (padding,) * 4)
    crops = [padded[:, y : y + h, x : x + w] for y, x in itertools.product(range(2 * padding + 1), repeat=2)]
    return crops + [crop.flip(-1) for crop in crops]


def test_basic_augmentation_crops_and_flips_each_image_from_the_batch_seed(tmp_path):
    raw, augmented = (
        build_data(make_config(tmp_path, *FMNIST, f"augmentation={aug}", "data.device_resident=true"))
        for aug in ("none", "basic")
    )
    changed = 0
    for (images, targets), (raw_images, raw_targets) in zip(epoch_batches(augmented, 1), epoch_batches(raw, 1)):
        assert torch.equal(targets, raw_targets)
        for image, raw_image in zip(images, raw_images):
            assert any(torch.equal(image, candidate) for candidate in crops_and_flips(raw_image, 4))
            changed += not torch.equal(image, raw_image)
    assert changed > 0.9 * 4 * 96  # 1 in 162 (crop, flip) pairs is the image itself
    # The same (seed, epoch, batch) gives the same augmentation, from any start; another epoch another.
    assert all(
        torch.equal(a[0], b[0])
        for a, b in zip(epoch_batches(augmented, 1)[2:], epoch_batches(augmented, 1, 2), strict=True)
    )
    assert not torch.equal(epoch_batches(augmented, 1)[0][0], epoch_batches(augmented, 2)[0][0])
    # Validation is never augmented.
    assert all(torch.equal(a[0], b[0]) for a, b in zip(augmented.val_loader, raw.val_loader, strict=True))


def test_auto_is_resident_where_it_can_be_and_says_why_not(tmp_path, smoke):
    assert isinstance(build_data(make_config(tmp_path, *smoke, "augmentation=basic")).train_loader, ResidentBatches)
    forced = build_data(make_config(tmp_path, *smoke, "data.device_resident=false"))
    assert isinstance(forced.train_loader, ReadableBatches) and "data.device_resident=false" in forced.path
    per_image = build_data(make_config(tmp_path, *smoke, "augmentation=randaugment"))
    assert isinstance(per_image.train_loader, ReadableBatches)
    assert "augmentation=randaugment transforms each image on its own" in per_image.path
    with pytest.raises(ConfigError, match="data.device_resident: true, but augmentation.lighting"):
        build_data(make_config(tmp_path, *smoke, "augmentation.lighting=0.1", "data.device_resident=true"))


@pytest.mark.slow  # a real command in a subprocess
def test_device_resident_errors_are_one_line(tmp_path):
    result = run_cli(*SMOKE, "augmentation=randaugment", "data.device_resident=true", f"hydra.run.dir={tmp_path / 'a'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "cnnbench: error: data.device_resident: true, but augmentation=randaugment "
        "transforms each image on its own; auto or false use the DataLoader"
    )
    with pytest.raises(ConfigError, match="^data.device_resident: auto, true or false, got 'maybe'$"):
        train(make_config(tmp_path / "b", *SMOKE, "data.device_resident=maybe"))


def test_random_erasing_on_the_batch_erases_one_rectangle_as_torchvision_draws_it(tmp_path):
    """augmentation.random_erasing on device-resident batches: each erased image is the raw one with one
    rectangle set to 0, from the batch's seed; the share of images erased and their mean erased area are
    those of torchvision's RandomErasing (over 2,000 white images, both seeded)."""
    data = build_data(make_config(tmp_path, *FMNIST, "augmentation.random_erasing=0.5", "data.device_resident=true"))
    assert isinstance(data.train_loader, ResidentBatches) and data.train_loader.augment.erasing == 0.5
    white = torch.full((2000, 3, 32, 32), 255, dtype=torch.uint8)
    batch = data.train_loader.augment(white, seed=3)
    assert torch.equal(batch, data.train_loader.augment(white, seed=3))
    areas = []
    for image in batch:
        erased = image == 0
        assert (erased == erased[0]).all()  # every channel alike
        rows, cols = erased[0].any(1).nonzero(), erased[0].any(0).nonzero()
        if len(rows):
            assert erased[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one rectangle
        areas.append(erased[0].float().mean().item())
    torch.manual_seed(0)
    torchvision_areas = [(v2.RandomErasing(0.5)(image) == 0)[0].float().mean().item() for image in white]
    for got, want in ((areas, "batch"), (torchvision_areas, "torchvision")):
        assert 0.45 < sum(a > 0 for a in got) / len(got) < 0.55, want
    mean_area, torchvision_mean_area = (sum(a) / sum(x > 0 for x in a) for a in (areas, torchvision_areas))
    assert abs(mean_area - torchvision_mean_area) < 0.02, (mean_area, torchvision_mean_area)
