"""RegNet (Radosavovic et al. 2020, "Designing Network Design Spaces"): a stem, four stages of
ResNeXt-style bottleneck blocks (optionally with squeeze-and-excitation: RegNetY), a linear head. The
stage widths and depths are not listed but generated from five numbers: `depth` blocks whose widths
grow linearly (`w0` + `wa` x block index), quantized to powers of `wm` and multiples of 8, grouped
convs of `group_width` channels per group (torchvision's BlockParams does the quantization).

`width_mult` scales w0 and wa, `depth_mult` the generated blocks per stage. Module names follow
torchvision, so its state dicts load. `stem=cifar` makes the stem conv stride 1.
"""

from collections import OrderedDict
from functools import partial

import torch
import torch.nn as nn
from torchvision.models.regnet import BlockParams
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation

from cnnbench.errors import ConfigError

from .registry import register_model
from .scaling import resolve_stem, scale_depth, scale_width


class ResBottleneckBlock(nn.Module):
    """1x1, grouped 3x3 (with the stride), optional SE, 1x1; a projection shortcut where the shape changes."""

    def __init__(self, cin, cout, stride, group_width, bottleneck_multiplier, se_ratio):
        super().__init__()
        cna = partial(Conv2dNormActivation, norm_layer=nn.BatchNorm2d)
        self.proj = cna(cin, cout, 1, stride, activation_layer=None) if cin != cout or stride != 1 else None
        width = int(round(cout * bottleneck_multiplier))
        layers = OrderedDict(a=cna(cin, width, 1), b=cna(width, width, 3, stride, groups=width // group_width))
        if se_ratio:
            layers["se"] = SqueezeExcitation(width, int(round(se_ratio * cin)))
        layers["c"] = cna(width, cout, 1, activation_layer=None)
        self.f = nn.Sequential(layers)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.activation((x if self.proj is None else self.proj(x)) + self.f(x))


class RegNet(nn.Module):
    def __init__(self, stem, trunk_output, channels, num_classes):
        super().__init__()
        self.stem, self.trunk_output = stem, trunk_output
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, (2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.fc(self.avgpool(self.trunk_output(self.stem(x))).flatten(1))


def regnet(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    depth: int = 22,
    w0: int = 24,
    wa: float = 24.48,
    wm: float = 2.54,
    group_width: int = 16,
    bottleneck_multiplier: float = 1.0,
    se_ratio: float = 0.0,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    try:
        with torch.device("cpu"):  # BlockParams computes with tensors, even when the model is built on meta
            params = BlockParams.from_init_params(
                depth, scale_width(w0, width_mult), wa * width_mult, wm, group_width, bottleneck_multiplier
            )
    except ValueError:
        raise ConfigError(
            f"model.w0: RegNet needs w0 > 0 and a multiple of 8, wa >= 0, wm > 1; got w0={w0}, wa={wa}, wm={wm}"
        ) from None
    stride = 1 if resolve_stem(stem, image_size) == "cifar" else 2
    cin = scale_width(32, width_mult)
    stem_layer = Conv2dNormActivation(in_chans, cin, 3, stride, norm_layer=nn.BatchNorm2d)
    stages = []
    for i, (cout, stage_stride, blocks, gw, bm) in enumerate(
        zip(params.widths, params.strides, params.depths, params.group_widths, params.bottleneck_multipliers)
    ):
        stage = nn.Sequential()
        for j in range(scale_depth(blocks, depth_mult)):
            stage.add_module(
                f"block{i + 1}-{j}", ResBottleneckBlock(cin, cout, stage_stride if j == 0 else 1, gw, bm, se_ratio)
            )
            cin = cout
        stages.append((f"block{i + 1}", stage))
    return RegNet(stem_layer, nn.Sequential(OrderedDict(stages)), cin, num_classes)


register_model(
    "regnet",
    "regnet_x_400mf",
    "torchvision:regnet_x_400mf",
    classifier="fc",
    depth=22,
    w0=24,
    wa=24.48,
    wm=2.54,
    group_width=16,
)(regnet)
register_model(
    "regnet",
    "regnet_y_400mf",
    "torchvision:regnet_y_400mf",
    classifier="fc",
    depth=16,
    w0=48,
    wa=27.89,
    wm=2.09,
    group_width=8,
    se_ratio=0.25,
)(regnet)
