"""Wide Residual Networks for small images (Zagoruyko and Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k is a 3x3 stem of 16 channels, three groups of n = (d - 4) / 6 pre-activation basic blocks of 16k,
32k and 64k channels at strides 1, 2, 2, a last BN-ReLU, global average pooling and a linear layer. A block
is BN-ReLU-conv3x3, dropout, BN-ReLU-conv3x3 (the paper's B(3,3) with dropout between the convs); where the
shape changes its shortcut is a 1x1 conv of the pre-activated input, as in the authors' code. WRN-28-10
has 36,479,194 parameters on 10 classes (the paper's 36.5M), WRN-40-4 8,949,818 (8.9M).
`depth_mult` scales the blocks per group, `width_mult` the channels of every layer. The global pool (the
paper's 8x8 average pool at 32x32) takes Fashion-MNIST's 28x28 as well as CIFAR's 32x32 and larger.
`wide_resnet50_2` (resnet.py) is the paper's ImageNet network, with bottleneck blocks.
"""

import torch.nn as nn

from cnnbench.errors import ConfigError

from .registry import register_model
from .scaling import scale_depth, scale_width


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride, dropout):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if cin != cout or stride != 1 else None

    def forward(self, x):
        act = self.relu(self.bn1(x))
        out = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(act)))))
        return out + (x if self.shortcut is None else self.shortcut(act))


class WideResNet(nn.Module):
    def __init__(self, blocks, widths, num_classes, in_chans, dropout):
        super().__init__()
        cin = widths[0]
        self.conv1 = nn.Conv2d(in_chans, cin, 3, 1, 1, bias=False)
        for i, (cout, stride) in enumerate(zip(widths[1:], (1, 2, 2))):
            self.add_module(
                f"layer{i + 1}",
                nn.Sequential(
                    *(
                        PreActBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1, dropout)
                        for j in range(blocks)
                    )
                ),
            )
            cin = cout
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():  # the authors' init: He normal (fan out) convs; BN 1 and 0 (torch's default)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.avgpool(self.relu(self.bn(x))).flatten(1))


def wrn(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    depth: int = 28,
    widen_factor: int = 10,
    dropout: float = 0.3,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
):
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(
            f"model.depth: WRN depth is 6n + 4 with n >= 1 blocks per group (10, 16, 22, 28, 40, ...), got {depth}"
        )
    if widen_factor < 1:
        raise ConfigError(f"model.widen_factor: must be >= 1, got {widen_factor}")
    widths = [scale_width(c, width_mult) for c in (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)]
    return WideResNet(scale_depth((depth - 4) // 6, depth_mult), widths, num_classes, in_chans, dropout)


# dropout 0.3: the paper's CIFAR setting (its WRN-28-10-dropout)
register_model("wrn", "wrn28_10", input_size=32, classifier="fc", depth=28, widen_factor=10)(wrn)
register_model("wrn", "wrn40_4", input_size=32, classifier="fc", depth=40, widen_factor=4)(wrn)
