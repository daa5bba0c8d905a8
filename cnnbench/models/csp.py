"""CSPNet (Wang et al., "CSPNet: A New Backbone that can Enhance Learning Capability of CNN", 2020) on
ResNet-50: each Cross Stage Partial stage splits its feature map in two halves, sends one through the stage's
bottleneck blocks and concatenates it back with the other, which cuts computation and duplicate gradient paths;
leaky ReLU throughout.

Per stage: output channels, blocks, stride (after a stem of stride 4). Module names follow timm's
cspresnet50, so its state dicts load. `width_mult`, `depth_mult`; `stem=cifar` is a 3x3 stride-1 conv
without max pooling.
"""

from collections import OrderedDict
from functools import partial

import torch
import torch.nn as nn
from timm.layers import ConvNormAct

from .registry import register_model
from .scaling import resolve_stem, scale_depth, scale_width

conv_norm_act = partial(ConvNormAct, act_layer=nn.LeakyReLU)

# cspresnet50: (output channels, blocks, stride) per stage
STAGES = [(128, 3, 1), (256, 3, 2), (512, 5, 2), (1024, 2, 2)]


class BottleneckBlock(nn.Module):
    def __init__(self, channels, mid):
        super().__init__()
        self.conv1 = conv_norm_act(channels, mid, 1)
        self.conv2 = conv_norm_act(mid, mid, 3)
        self.conv3 = conv_norm_act(mid, channels, 1, apply_act=False)
        self.act3 = nn.LeakyReLU(inplace=True)
        nn.init.zeros_(self.conv3.bn.weight)  # each block starts as the identity

    def forward(self, x):
        return self.act3(self.conv3(self.conv2(self.conv1(x))) + x)


class CrossStage(nn.Module):
    def __init__(self, cin, cout, stride, depth):
        super().__init__()
        self.conv_down = conv_norm_act(cin, cin, 3, stride) if stride != 1 else nn.Identity()
        self.conv_exp = conv_norm_act(cin, 2 * cout, 1, apply_act=False)
        self.blocks = nn.Sequential(*[BottleneckBlock(cout, cout // 2) for _ in range(depth)])
        self.conv_transition_b = conv_norm_act(cout, cout, 1)
        self.conv_transition = conv_norm_act(2 * cout, cout, 1)

    def forward(self, x):
        shortcut, x = self.conv_exp(self.conv_down(x)).chunk(2, dim=1)
        return self.conv_transition(torch.cat([shortcut, self.conv_transition_b(self.blocks(x))], 1))


@register_model("csp", reference="timm:cspresnet50", input_size=256, crop_pct=0.887, classifier="head.fc")
def cspresnet50(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    dropout: float = 0.0,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    cin = scale_width(64, width_mult)
    if resolve_stem(stem, image_size) == "cifar":
        stem_layers = OrderedDict(conv1=conv_norm_act(in_chans, cin, 3), pool=nn.Identity())
    else:
        stem_layers = OrderedDict(conv1=conv_norm_act(in_chans, cin, 7, 2), pool=nn.MaxPool2d(3, 2, 1))
    stages = []
    for channels, blocks, stride in STAGES:
        stages.append(CrossStage(cin, scale_width(channels, width_mult), stride, scale_depth(blocks, depth_mult)))
        cin = scale_width(channels, width_mult)
    model = nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(stem_layers),
            stages=nn.Sequential(*stages),
            head=nn.Sequential(
                OrderedDict(
                    global_pool=nn.AdaptiveAvgPool2d(1),
                    flatten=nn.Flatten(),
                    drop=nn.Dropout(dropout),
                    fc=nn.Linear(cin, num_classes),
                )
            ),
        )
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
