"""Train and eval transforms (torchvision.transforms.v2) for `augmentation=none|basic|imagenet`.

Images arrive as uint8 tensors (in-memory sets) or PIL images (files) and leave as uint8 tensors of
data.channels x data.image_size x data.image_size: a quarter of float32's bytes to move, and
`Normalize` turns a whole batch to floats on the training device.
"""
import torch
from torchvision.transforms import v2

from cnnbench.errors import ConfigError

AUGMENTATIONS = ("none", "basic", "imagenet")


def build_transforms(aug, data, train: bool) -> v2.Compose:
    if aug.name not in AUGMENTATIONS:
        raise ConfigError(f"augmentation.name: one of {', '.join(AUGMENTATIONS)}, got '{aug.name}'")
    size = data.image_size
    to_channels = v2.Grayscale(1) if data.channels == 1 else v2.RGB()
    if aug.name == "imagenet":
        geometry = ([v2.RandomResizedCrop(size, scale=tuple(aug.scale), antialias=True),
                     v2.RandomHorizontalFlip(aug.hflip)] if train else
                    [v2.Resize(round(size / aug.eval_crop_ratio), antialias=True), v2.CenterCrop(size)])
    else:
        # Resize is a no-op for in-memory sets already at image_size.
        geometry = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        if aug.name == "basic" and train:
            geometry += [v2.RandomCrop(size, padding=aug.crop_padding), v2.RandomHorizontalFlip(aug.hflip)]
    return v2.Compose([v2.ToImage(), to_channels, *geometry])


class Normalize(torch.nn.Module):
    """uint8 batch -> float32, (x / 255 - mean) / std per channel, on whatever device the batch is."""

    def __init__(self, data):
        super().__init__()
        if len(data.mean) not in (1, data.channels) or len(data.std) != len(data.mean):
            raise ConfigError(f"data.mean/data.std: one value or one per channel ({data.channels}), "
                              f"got {list(data.mean)} and {list(data.std)}")
        std = torch.tensor(list(data.std)).view(1, -1, 1, 1)
        self.register_buffer("scale", 1 / (255 * std))
        self.register_buffer("shift", -torch.tensor(list(data.mean)).view(1, -1, 1, 1) / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)
