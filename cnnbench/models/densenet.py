"""DenseNet-BC (Huang et al., "Densely Connected Convolutional Networks", 2017): dense blocks, in which each
layer (BN-ReLU-1x1 conv to `bn_size` x `growth_rate` channels, BN-ReLU-3x3 conv to `growth_rate`) sees the
concatenation of all earlier outputs, joined by transitions (BN-ReLU-1x1 conv halving the channels, 2x2 average
pool).

`growth_rate`, `block_config` (layers per block), `num_init_features`, `bn_size` and `drop_rate` are
the design; `width_mult` scales the growth rate and the stem, `depth_mult` the layers per block.
Module names follow torchvision, so its state dicts load. `stem=cifar` (a 3x3 stride-1 conv, no max
pool, as the paper's CIFAR networks) keeps 28x28 and 32x32 images from collapsing.
"""

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .scaling import resolve_stem, scale_depth, scale_width


def bn_relu_conv(cin, cout, kernel):
    return [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False)]


def dense_layer(cin, growth_rate, bn_size, drop_rate):
    norm1, relu1, conv1 = bn_relu_conv(cin, bn_size * growth_rate, 1)
    norm2, relu2, conv2 = bn_relu_conv(bn_size * growth_rate, growth_rate, 3)
    return nn.Sequential(
        OrderedDict(
            norm1=norm1, relu1=relu1, conv1=conv1, norm2=norm2, relu2=relu2, conv2=conv2, dropout=nn.Dropout(drop_rate)
        )
    )


class DenseBlock(nn.ModuleDict):
    def forward(self, x):
        features = [x]
        for layer in self.values():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class DenseNet(nn.Module):
    def __init__(self, features, channels, num_classes):
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1))


def densenet(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    growth_rate: int = 32,
    block_config=(6, 12, 24, 16),
    num_init_features: int = 64,
    bn_size: int = 4,
    drop_rate: float = 0.0,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    growth, channels = scale_width(growth_rate, width_mult), scale_width(num_init_features, width_mult)
    small = resolve_stem(stem, image_size) == "cifar"
    kernel, stride = (3, 1) if small else (7, 2)
    stem_layers = [
        ("conv0", nn.Conv2d(in_chans, channels, kernel, stride, kernel // 2, bias=False)),
        ("norm0", nn.BatchNorm2d(channels)),
        ("relu0", nn.ReLU(inplace=True)),
    ]
    if not small:
        stem_layers.append(("pool0", nn.MaxPool2d(3, 2, 1)))
    features = nn.Sequential(OrderedDict(stem_layers))
    for i, num_layers in enumerate(block_config):
        block = DenseBlock()
        for j in range(scale_depth(num_layers, depth_mult)):
            block[f"denselayer{j + 1}"] = dense_layer(channels, growth, bn_size, drop_rate)
            channels += growth
        features.add_module(f"denseblock{i + 1}", block)
        if i < len(block_config) - 1:
            norm, relu, conv = bn_relu_conv(channels, channels // 2, 1)
            features.add_module(
                f"transition{i + 1}",
                nn.Sequential(OrderedDict(norm=norm, relu=relu, conv=conv, pool=nn.AvgPool2d(2, 2))),
            )
            channels //= 2
    features.add_module("norm5", nn.BatchNorm2d(channels))
    return DenseNet(features, channels, num_classes)


for _name, _blocks in {
    "densenet121": (6, 12, 24, 16),
    "densenet169": (6, 12, 32, 32),
    "densenet201": (6, 12, 48, 32),
    "densenet264": (6, 12, 64, 48),
}.items():
    _reference = None if _name == "densenet264" else f"torchvision:{_name}"  # torchvision has no densenet264
    register_model("densenet", _name, _reference, classifier="classifier", block_config=_blocks)(densenet)
