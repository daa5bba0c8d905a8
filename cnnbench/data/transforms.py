"""Train and eval transforms (torchvision.transforms.v2) for `augmentation=none|basic|imagenet|alexnet`
(crops) and `randaugment|trivialaugment|autoaugment` (augmentation.crop, then the policy); in training
also AlexNet's PCA lighting noise and random erasing where their keys are set.

Images arrive as uint8 tensors (in-memory sets) or PIL images (files) and leave as uint8 tensors of
data.channels x data.image_size x data.image_size: a quarter of float32's bytes to move, and
`Normalize` turns a whole batch to floats on the training device.
"""

import torch
from torchvision.transforms import v2

from cnnbench.errors import ConfigError

CROPS = ("none", "basic", "imagenet", "alexnet")
POLICIES = ("randaugment", "trivialaugment", "autoaugment")


def build_transforms(aug, data, train: bool) -> v2.Compose:
    if aug.name not in CROPS + POLICIES:
        raise ConfigError(f"augmentation.name: one of {', '.join(CROPS + POLICIES)}, got '{aug.name}'")
    crop = aug.crop if aug.name in POLICIES else aug.name
    if crop not in CROPS:
        raise ConfigError(f"augmentation.crop: one of {', '.join(CROPS)}, got '{crop}'")
    size = data.image_size
    to_channels = v2.Grayscale(1) if data.channels == 1 else v2.RGB()
    if crop in ("imagenet", "alexnet") and not train:
        geometry = [v2.Resize(round(size / aug.eval_crop_ratio), antialias=True), v2.CenterCrop(size)]
    elif crop == "imagenet":
        geometry = [
            v2.RandomResizedCrop(size, scale=tuple(aug.scale), antialias=True),
            v2.RandomHorizontalFlip(aug.hflip),
        ]
    elif crop == "alexnet":
        # AlexNet: random 224 crops of the 256 image, and their mirror images.
        geometry = [
            v2.Resize(round(size / aug.eval_crop_ratio), antialias=True),
            v2.RandomCrop(size),
            v2.RandomHorizontalFlip(aug.hflip),
        ]
    else:
        # Resize is a no-op for in-memory sets already at image_size.
        geometry = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        if crop == "basic" and train:
            geometry += [v2.RandomCrop(size, padding=aug.crop_padding), v2.RandomHorizontalFlip(aug.hflip)]
    noise = []
    if train and aug.name == "randaugment":
        noise.append(v2.RandAugment(aug.randaugment_ops, aug.randaugment_magnitude))
    elif train and aug.name == "trivialaugment":
        noise.append(v2.TrivialAugmentWide())
    elif train and aug.name == "autoaugment":
        noise.append(v2.AutoAugment(autoaugment_policy(aug.autoaugment_policy)))
    if train and aug.lighting:
        noise.append(Lighting(aug.lighting))
    if train and aug.random_erasing:
        noise.append(v2.RandomErasing(aug.random_erasing))
    return v2.Compose([v2.ToImage(), to_channels, *geometry, *noise])


def unused_keys(aug) -> set[str]:
    """The augmentation keys that build_transforms and the batch mixing leave unused under this policy
    (another crop's or policy's knobs): settings a record of the run should not show."""
    crop = aug.crop if aug.name in POLICIES else aug.name
    used = {"name", "lighting", "random_erasing", "label_smoothing", "mixup_alpha", "cutmix_alpha"}
    used |= {"hflip"} if crop in ("basic", "imagenet", "alexnet") else set()
    used |= {"crop_padding"} if crop == "basic" else set()
    used |= {"scale"} if crop == "imagenet" else set()
    used |= {"eval_crop_ratio"} if crop in ("imagenet", "alexnet") else set()
    used |= {"crop"} if aug.name in POLICIES else set()
    used |= {"randaugment_ops", "randaugment_magnitude"} if aug.name == "randaugment" else set()
    used |= {"autoaugment_policy"} if aug.name == "autoaugment" else set()
    used |= {"mixup_prob"} if aug.mixup_alpha > 0 or aug.cutmix_alpha > 0 else set()
    used |= {"mixup_switch_prob"} if aug.mixup_alpha > 0 and aug.cutmix_alpha > 0 else set()
    return set(aug) - used


def autoaugment_policy(name: str) -> v2.AutoAugmentPolicy:
    try:
        return v2.AutoAugmentPolicy(name)
    except ValueError:
        raise ConfigError(
            f"augmentation.autoaugment_policy: one of {', '.join(p.value for p in v2.AutoAugmentPolicy)}, got '{name}'"
        ) from None


class Lighting(torch.nn.Module):
    """AlexNet's PCA colour augmentation (Krizhevsky, Sutskever and Hinton, "ImageNet Classification with
    Deep Convolutional Neural Networks", 2012): add eigvec @ (alpha * eigval), alpha ~ N(0, std) per image,
    with the eigen decomposition of ImageNet's RGB pixel covariance (pixels in [0, 1]). Neither
    torchvision nor timm has it. A grayscale image gets the mean of the three channels' shifts.
    On a batch (data.decode_device), `shift` per image and one `add` for all: the same images."""

    EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
    EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.add(image, self.shift(image.shape[-3]))

    def shift(self, channels: int) -> torch.Tensor:
        """One image's shift, (channels,): drawn from torch's CPU generator, as the PIL path draws it, so
        that a batch decoded on a GPU gets the same images."""
        alpha = torch.randn(3) * self.std
        shift = 255 * self.EIGVEC @ (alpha * self.EIGVAL)
        return shift.mean(0, keepdim=True) if channels == 1 else shift

    @staticmethod
    def add(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """uint8 images (..., C, H, W) plus shifts (..., C), on the images' device: the shifts copied there
        without a host sync."""
        shifts = shifts[..., None, None].to(images.device, non_blocking=True)
        return (images.float() + shifts).round_().clamp_(0, 255).to(torch.uint8)


class Normalize(torch.nn.Module):
    """uint8 batch -> float32, (x / 255 - mean) / std per channel, on whatever device the batch is."""

    def __init__(self, data):
        super().__init__()
        if len(data.mean) not in (1, data.channels) or len(data.std) != len(data.mean):
            raise ConfigError(
                f"data.mean/data.std: one value or one per channel ({data.channels}), "
                f"got {list(data.mean)} and {list(data.std)}"
            )
        std = torch.tensor(list(data.std)).view(1, -1, 1, 1)
        self.register_buffer("scale", 1 / (255 * std))
        self.register_buffer("shift", -torch.tensor(list(data.mean)).view(1, -1, 1, 1) / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)

    def denormalize(self, normalized: torch.Tensor) -> torch.Tensor:
        """A normalized batch back to pixel values in [0, 1], for a person to look at."""
        return ((normalized.float() - self.shift) / (255 * self.scale)).clamp(0, 1)
