"""Xception (Chollet, "Xception: Deep Learning with Depthwise Separable Convolutions", 2017): Inception taken to
the extreme, depthwise separable convolutions (a 3x3 conv per channel, then a 1x1 across channels) in residual
blocks: an entry flow of three downsampling blocks, a middle flow of eight identical 728-channel blocks, an exit
flow.

Module names follow timm's legacy_xception (the Keras port), so its state dicts load. `width_mult`
scales every layer, `depth_mult` the middle flow; `stem=cifar` gives the two stem convs stride 1 and
padding so 28x28 and 32x32 images keep detail.
"""

from collections import OrderedDict
from functools import partial

import torch.nn as nn

from .registry import register_model
from .scaling import resolve_stem, scale_depth, scale_width


class SeparableConv2d(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.conv1(x))


class Block(nn.Module):
    """`reps` x (ReLU, separable conv, BN), max pooling when strided; a 1x1 projection shortcut where the
    shape changes. `grow_first`: the first conv changes the width, else the last."""

    def __init__(self, cin, cout, reps, stride, start_with_relu=True, grow_first=True):
        super().__init__()
        self.skip = nn.Conv2d(cin, cout, 1, stride, bias=False) if cout != cin or stride != 1 else None
        if self.skip is not None:
            self.skipbn = nn.BatchNorm2d(cout)
        rep = []
        for i in range(reps):
            a, b = (cin if i == 0 else cout, cout) if grow_first else (cin, cin if i < reps - 1 else cout)
            rep += [nn.ReLU(inplace=i > 0), SeparableConv2d(a, b), nn.BatchNorm2d(b)]  # the shortcut needs the input
        rep = rep if start_with_relu else rep[1:]
        if stride != 1:
            rep.append(nn.MaxPool2d(3, stride, 1))
        self.rep = nn.Sequential(*rep)

    def forward(self, x):
        return self.rep(x) + (x if self.skip is None else self.skipbn(self.skip(x)))


@register_model("xception", reference="timm:legacy_xception", input_size=299, crop_pct=0.8975, classifier="fc")
def xception(
    num_classes=1000,
    in_chans=3,
    image_size=299,
    dropout: float = 0.5,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    c = partial(scale_width, width_mult=width_mult)
    stride, padding = (1, 1) if resolve_stem(stem, image_size) == "cifar" else (2, 0)
    blocks = [
        Block(c(64), c(128), 2, 2, start_with_relu=False),
        Block(c(128), c(256), 2, 2),
        Block(c(256), c(728), 2, 2),
    ]
    blocks += [Block(c(728), c(728), 3, 1) for _ in range(scale_depth(8, depth_mult))]
    blocks.append(Block(c(728), c(1024), 2, 2, grow_first=False))
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_chans, c(32), 3, stride, padding, bias=False),
            bn1=nn.BatchNorm2d(c(32)),
            act1=nn.ReLU(inplace=True),
            conv2=nn.Conv2d(c(32), c(64), 3, 1, padding, bias=False),
            bn2=nn.BatchNorm2d(c(64)),
            act2=nn.ReLU(inplace=True),
            **{f"block{i + 1}": block for i, block in enumerate(blocks)},
            conv3=SeparableConv2d(c(1024), c(1536)),
            bn3=nn.BatchNorm2d(c(1536)),
            act3=nn.ReLU(inplace=True),
            conv4=SeparableConv2d(c(1536), c(2048)),
            bn4=nn.BatchNorm2d(c(2048)),
            act4=nn.ReLU(inplace=True),
            global_pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            dropout=nn.Dropout(dropout),
            fc=nn.Linear(c(2048), num_classes),
        )
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
