"""ResNet (He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", 2016) and its descendants:
a stem, four stages of residual blocks, a linear head.

A network is a handful of numbers (pycls): `layers` (blocks per stage), `block` (basic: two 3x3
convs; bottleneck: 1x1-3x3-1x1 with 4x expansion), `groups` x `width_per_group` (ResNeXt's
cardinality; Wide ResNet doubles width_per_group), `width_mult` and `depth_mult`. `shortcut` is the
paper's option (section 4.1, table 3): A zero-pads the identity where dimensions grow, B projects there (torchvision),
C projects every shortcut. `se` adds squeeze-and-excitation (SENet: Hu, Shen and Sun 2018) after each block's
last norm, as timm's seresnet does. `drop_path_rate` is stochastic depth (Huang et al.): each block's
residual branch is dropped per sample with a probability rising linearly to this value in the last
block. Module names follow torchvision (and timm) so their state dicts load.
`stem=cifar` (a 3x3 stride-1 conv, no max pool) keeps 28x28 and 32x32 images from collapsing;
`auto` picks it for images up to 64 pixels.
"""

import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, SEModule

from cnnbench.errors import ConfigError

from .registry import check_choice, register_model
from .scaling import resolve_stem, scale_depth, scale_width


def conv_bn(cin, cout, kernel, stride=1, groups=1):
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class ZeroPadShortcut(nn.Module):
    """Option A: the identity, subsampled by the stride, with zero channels appended (no parameters)."""

    def __init__(self, stride, extra_channels):
        super().__init__()
        self.stride, self.extra_channels = stride, extra_channels

    def forward(self, x):
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra_channels))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, downsample, groups=1, width_per_group=64, se=False, drop_path=0.0):
        super().__init__()
        if groups != 1 or width_per_group != 64:  # timm's BasicBlock asserts the same
            key, value = ("groups", groups) if groups != 1 else ("width_per_group", width_per_group)
            raise ConfigError(
                f"model.{key}: ResNet's basic blocks take groups=1 and width_per_group=64 "
                f"(ResNeXt needs block=bottleneck), got {value}"
            )
        self.conv1, self.bn1 = conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3)
        self.se = SEModule(planes) if se else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.drop_path(self.se(self.bn2(self.conv2(out)))) + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, downsample, groups=1, width_per_group=64, se=False, drop_path=0.0):
        super().__init__()
        width = int(planes * width_per_group / 64) * groups
        self.conv1, self.bn1 = conv_bn(cin, width, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride, groups)  # stride on the 3x3 (ResNet v1.5)
        self.conv3, self.bn3 = conv_bn(width, planes * self.expansion, 1)
        self.se = SEModule(planes * self.expansion) if se else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path) if drop_path else nn.Identity()

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.drop_path(self.se(self.bn3(self.conv3(out)))) + shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_shortcut(option, cin, cout, stride):
    reshapes = cin != cout or stride != 1
    if option == "C" or (option == "B" and reshapes):
        return nn.Sequential(*conv_bn(cin, cout, 1, stride))
    return ZeroPadShortcut(stride, cout - cin) if reshapes else None


class ResNet(nn.Module):
    def __init__(
        self,
        layers,
        block,
        num_classes,
        in_chans,
        stem,
        width_mult,
        groups,
        width_per_group,
        shortcut,
        se,
        drop_path_rate,
    ):
        super().__init__()
        stem_width = scale_width(64, width_mult)
        if stem == "imagenet":
            self.conv1, self.bn1 = conv_bn(in_chans, stem_width, 7, 2)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1, self.bn1 = conv_bn(in_chans, stem_width, 3)
            self.maxpool = nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        cin, done = stem_width, 0
        for i, depth in enumerate(layers):
            planes, stride = scale_width(64 * 2**i, width_mult), 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                cout, block_stride = planes * block.expansion, stride if j == 0 else 1
                downsample = make_shortcut(shortcut, cin, cout, block_stride)
                done += 1
                blocks.append(
                    block(
                        cin,
                        planes,
                        block_stride,
                        downsample,
                        groups,
                        width_per_group,
                        se,
                        drop_path_rate * done / sum(layers),
                    )
                )
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    layers=(2, 2, 2, 2),
    block: str = "basic",
    groups: int = 1,
    width_per_group: int = 64,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
    shortcut: str = "B",
    se: bool = False,
    drop_path_rate: float = 0.0,
):
    check_choice("block", block, sorted(BLOCKS))
    check_choice("shortcut", shortcut, ("A", "B", "C"))
    if len(layers) != 4:
        raise ConfigError(f"model.layers: four stage depths, got {list(layers)}")
    layers = [scale_depth(d, depth_mult) for d in layers]
    return ResNet(
        layers,
        BLOCKS[block],
        num_classes,
        in_chans,
        resolve_stem(stem, image_size),
        width_mult,
        groups,
        width_per_group,
        shortcut,
        se,
        drop_path_rate,
    )


def variant(name, reference, **defaults):
    register_model("resnet", name, reference, classifier="fc", **defaults)(resnet)


variant("resnet18", "torchvision:resnet18", layers=(2, 2, 2, 2), block="basic")
variant("resnet34", "torchvision:resnet34", layers=(3, 4, 6, 3), block="basic")
variant("resnet50", "torchvision:resnet50", layers=(3, 4, 6, 3), block="bottleneck")
variant("resnet101", "torchvision:resnet101", layers=(3, 4, 23, 3), block="bottleneck")
variant("resnet152", "torchvision:resnet152", layers=(3, 8, 36, 3), block="bottleneck")
variant("wide_resnet50_2", "torchvision:wide_resnet50_2", layers=(3, 4, 6, 3), block="bottleneck", width_per_group=128)
variant(
    "resnext50_32x4d",
    "torchvision:resnext50_32x4d",
    layers=(3, 4, 6, 3),
    block="bottleneck",
    groups=32,
    width_per_group=4,
)
variant(
    "resnext101_32x8d",
    "torchvision:resnext101_32x8d",
    layers=(3, 4, 23, 3),
    block="bottleneck",
    groups=32,
    width_per_group=8,
)
variant("se_resnet50", "timm:seresnet50", layers=(3, 4, 6, 3), block="bottleneck", se=True)
