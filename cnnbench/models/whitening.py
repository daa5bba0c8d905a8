"""A first convolution that starts as a whitening of its input patches (train.whiten_stem), as the CIFAR-10
speed records start theirs: David Page, "How to Train Your ResNet 8: Bag of Tricks" (2019), and Keller
Jordan, "94% on CIFAR-10 in 3.29 Seconds on a Single GPU" (airbench, 2024). Its filters are the
eigenvectors of the covariance of the training images' patches, each scaled by 1/sqrt(eigenvalue + eps)
and paired with its negative (a ReLU further on keeps both signs), so from the first step the layer
passes every direction of patch space at unit variance and the network starts from decorrelated features,
not random ones.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.errors import ConfigError

WHITENING_IMAGES = 1024  # training images whose patches are counted
WHITENING_PATCHES = 2**18  # at most about this many of their patches (a stride over larger images)
EPS = 5e-4  # airbench's: on normalized images, it bounds the gain of the smallest eigen-directions


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None:
        raise ConfigError("train.whiten_stem: the model has no convolution to whiten with")
    if conv.groups != 1 or conv.dilation != (1, 1):
        raise ConfigError(f"train.whiten_stem: the model's first convolution {name!r} is grouped or dilated")
    return name, conv


@torch.no_grad()
def whiten_first_conv(model: nn.Module, images: torch.Tensor) -> str:
    """Sets the model's first Conv2d from normalized training `images` (N, C, H, W); returns what it did, for
    train.log. Of its out_channels, 2k filters take the top k eigenvectors and their negatives (k at most
    the patch dimension C*kh*kw); any left over keep their initialization."""
    name, conv = first_conv(model)
    kernel = conv.kernel_size
    # Patches at a stride that keeps about WHITENING_PATCHES of them: every position of small images.
    positions = (images.shape[-2] - kernel[0] + 1) * (images.shape[-1] - kernel[1] + 1)
    stride = max(1, math.ceil(math.sqrt(positions * len(images) / WHITENING_PATCHES)))
    patches = F.unfold(images.double(), kernel, stride=stride).transpose(1, 2).flatten(0, 1)  # (n, C*kh*kw)
    covariance = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    k = min(conv.out_channels // 2, len(eigenvalues))
    top = (eigenvectors[:, -k:] / (eigenvalues[-k:] + EPS).sqrt()).T.flip(0)  # (k, C*kh*kw), largest first
    filters = torch.cat([top, -top]).view(2 * k, *conv.weight.shape[1:])
    conv.weight[: 2 * k] = filters.to(conv.weight.dtype)
    if conv.bias is not None:
        conv.bias[: 2 * k] = 0
    return (
        f"train.whiten_stem: {name} ({conv.in_channels}->{conv.out_channels}, {kernel[0]}x{kernel[1]}) whitens the "
        f"patches of {len(images)} training images: {2 * k} filters, the top {k} eigenvectors and their negatives"
    )
