"""Width and depth multipliers shared by every family (EfficientNet's compound scaling, Tan and Le 2019), and
the choice of a small-input stem."""

import math

from timm.layers import make_divisible

from cnnbench.errors import ConfigError


def scale_width(channels: int, width_mult: float) -> int:
    """Channels times `width_mult`, rounded to a multiple of 8; the paper's count at 1.0."""
    return channels if width_mult == 1.0 else make_divisible(channels * width_mult, 8)


def scale_depth(blocks: int, depth_mult: float) -> int:
    """Blocks per stage times `depth_mult`, rounded up, at least one."""
    return max(1, math.ceil(blocks * depth_mult))


def scale_stage(blocks: list, depth_mult: float) -> list:
    """A stage's per-block settings resampled to `scale_depth(len(blocks), depth_mult)` blocks, the first and
    last kept: for stages whose blocks differ (GoogLeNet's modules, MobileNetV3's expansions)."""
    n = scale_depth(len(blocks), depth_mult)
    if n == 1:
        return blocks[:1]
    return [blocks[round(i * (len(blocks) - 1) / (n - 1))] for i in range(n)]


def resolve_stem(stem: str, image_size: int) -> str:
    """`auto` is the small-input stem (`cifar`: no early downsampling) for images up to 64 pixels, else the
    paper's (`imagenet`)."""
    if stem not in ("auto", "cifar", "imagenet"):
        raise ConfigError(f"model.stem: 'auto', 'cifar' or 'imagenet', got {stem!r}")
    if stem == "auto":
        return "cifar" if image_size <= 64 else "imagenet"
    return stem
