"""BiT (Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", 2020): a pre-activation
ResNet (v2: norm and ReLU before each conv) whose BatchNorm is replaced by GroupNorm (32 groups) and whose convs
are weight standardized, so it trains at any batch size and transfers well; `width_factor` widens every layer
(BiT's R50x1 to R50x4).

Module names follow timm's resnetv2_50x1_bit, so its state dicts load. `layers` (blocks per stage),
`width_factor`, `width_mult`, `depth_mult`; `stem=cifar` is a 3x3 stride-1 conv without max pooling.
"""

import math
from collections import OrderedDict
from functools import partial

import torch.nn as nn
from timm.layers import GroupNormAct, StdConv2d

from cnnbench.errors import ConfigError

from .registry import register_model
from .scaling import resolve_stem, scale_depth, scale_width

conv = partial(StdConv2d, eps=1e-8)  # BiT's standardization epsilon


def group_norm(channels):
    """GroupNorm + ReLU with BiT's 32 groups, fewer when a narrowed width is not a multiple of 32."""
    return GroupNormAct(channels, num_groups=math.gcd(32, channels))


class PreActBottleneck(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        mid = cout // 4
        self.downsample = (
            nn.Sequential(OrderedDict(conv=conv(cin, cout, 1, stride))) if cin != cout or stride != 1 else None
        )
        self.norm1, self.conv1 = group_norm(cin), conv(cin, mid, 1)
        self.norm2, self.conv2 = group_norm(mid), conv(mid, mid, 3, stride)
        self.norm3, self.conv3 = group_norm(mid), conv(mid, cout, 1)

    def forward(self, x):
        x_preact = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample(x_preact)
        return self.conv3(self.norm3(self.conv2(self.norm2(self.conv1(x_preact))))) + shortcut


@register_model("bit", reference="timm:resnetv2_50x1_bit", classifier="head.fc")
def bit_resnet50x1(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    layers=(3, 4, 6, 3),
    width_factor: int = 1,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    if width_factor < 1:
        raise ConfigError(f"model.width_factor: BiT's x1 to x4 (any integer >= 1), got {width_factor}")

    def c(channels):
        return scale_width(channels * width_factor, width_mult)

    if resolve_stem(stem, image_size) == "cifar":
        stem_layers = OrderedDict(conv=conv(in_chans, c(64), 3))
    else:
        stem_layers = OrderedDict(
            conv=conv(in_chans, c(64), 7, 2), pad=nn.ConstantPad2d(1, 0.0), pool=nn.MaxPool2d(3, 2)
        )
    stages, cin = [], c(64)
    for i, depth in enumerate(layers):
        blocks = []
        for j in range(scale_depth(depth, depth_mult)):
            blocks.append(PreActBottleneck(cin, c(256 * 2**i), 2 if i > 0 and j == 0 else 1))
            cin = c(256 * 2**i)
        stages.append(nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks))))
    fc = nn.Conv2d(cin, num_classes, 1)  # BiT's head is a 1x1 conv
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(stem_layers),
            stages=nn.Sequential(*stages),
            norm=group_norm(cin),
            head=nn.Sequential(OrderedDict(global_pool=nn.AdaptiveAvgPool2d(1), fc=fc, flatten=nn.Flatten())),
        )
    )
