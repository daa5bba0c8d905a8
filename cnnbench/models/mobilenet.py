"""MobileNet v1 (Howard et al. 2017), v2 (Sandler et al. 2018) and v3 (Howard et al. 2019): depthwise separable
convolutions (a 3x3 conv per channel, then a 1x1 conv across channels); v2 wraps them in inverted residuals (1x1
expansion, depthwise conv, linear 1x1 projection, identity shortcut), v3 adds squeeze-and-excitation and
hard-swish, found by architecture search.

Each network is a table of stages. Module names follow timm (v1) and torchvision (v2, v3), so their
state dicts load. `width_mult` scales channels (multiples of 8, as the papers round), `depth_mult` the
blocks per stage; `stem=cifar` makes the first conv stride 1 so 28x28 and 32x32 images keep detail.
"""

from collections import OrderedDict
from functools import partial

import torch.nn as nn
from timm.layers import BatchNormAct2d, make_divisible
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation, StochasticDepth

from .alexnet import ConvNet
from .registry import check_choice, register_model
from .scaling import resolve_stem, scale_depth, scale_stage, scale_width


def init_weights(model):
    """torchvision's init for its mobile networks."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


class DepthwiseSeparable(nn.Module):
    """MobileNet v1's block (timm's names): 3x3 depthwise conv, BN-ReLU6, 1x1 conv, BN-ReLU6."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = BatchNormAct2d(cin, act_layer=nn.ReLU6)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = BatchNormAct2d(cout, act_layer=nn.ReLU6)

    def forward(self, x):
        return self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))


# MobileNet v1 (timm's mobilenetv1_100): (channels, blocks, stride) per stage after a 32-channel stem.
V1 = [(64, 1, 1), (128, 2, 2), (256, 2, 2), (512, 6, 2), (1024, 2, 2)]


@register_model("mobilenet", reference="timm:mobilenetv1_100", classifier="classifier")
def mobilenet_v1(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    dropout: float = 0.0,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    cin = scale_width(32, width_mult)
    stride = 1 if resolve_stem(stem, image_size) == "cifar" else 2
    stages = []
    for channels, blocks, first_stride in V1:
        cout, stage = scale_width(channels, width_mult), []
        for i in range(scale_depth(blocks, depth_mult)):
            stage.append(DepthwiseSeparable(cin, cout, first_stride if i == 0 else 1))
            cin = cout
        stages.append(nn.Sequential(*stage))
    return init_weights(
        nn.Sequential(
            OrderedDict(
                conv_stem=nn.Conv2d(in_chans, scale_width(32, width_mult), 3, stride, 1, bias=False),
                bn1=BatchNormAct2d(scale_width(32, width_mult), act_layer=nn.ReLU6),
                blocks=nn.Sequential(*stages),
                global_pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(),
                dropout=nn.Dropout(dropout),
                classifier=nn.Linear(cin, num_classes),
            )
        )
    )


class InvertedResidualV2(nn.Module):
    """MobileNet v2's block (torchvision's names): 1x1 expansion, 3x3 depthwise, linear 1x1 projection."""

    def __init__(self, cin, cout, stride, expand_ratio):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        expand = [Conv2dNormActivation(cin, hidden, 1, activation_layer=nn.ReLU6)] if expand_ratio != 1 else []
        self.conv = nn.Sequential(
            *expand,
            Conv2dNormActivation(hidden, hidden, 3, stride, groups=hidden, activation_layer=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# MobileNet v2 (paper table 2): (expansion t, channels c, blocks n, stride s) per stage.
V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


@register_model("mobilenet", reference="torchvision:mobilenet_v2", classifier="classifier.1")
def mobilenet_v2(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    dropout: float = 0.2,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    cin = scale_width(32, width_mult)
    stride = 1 if resolve_stem(stem, image_size) == "cifar" else 2
    features = [Conv2dNormActivation(in_chans, cin, 3, stride, activation_layer=nn.ReLU6)]
    for t, c, n, s in V2:
        cout = scale_width(c, width_mult)
        for i in range(scale_depth(n, depth_mult)):
            features.append(InvertedResidualV2(cin, cout, s if i == 0 else 1, t))
            cin = cout
    last = scale_width(1280, max(1.0, width_mult))  # the paper keeps the last layer wide when thinning
    features.append(Conv2dNormActivation(cin, last, 1, activation_layer=nn.ReLU6))
    return init_weights(
        ConvNet(nn.Sequential(*features), 1, nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes)))
    )


class InvertedResidual(nn.Module):
    """MobileNet v3's and EfficientNet's block (torchvision's names): 1x1 expansion, depthwise conv,
    squeeze-and-excitation, linear 1x1 projection; the identity shortcut's residual is dropped per
    sample with probability `drop_prob` (stochastic depth, EfficientNet)."""

    def __init__(self, cin, expanded, cout, kernel, stride, act, se_channels, se_layer, norm, drop_prob=0.0):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expand = (
            [Conv2dNormActivation(cin, expanded, 1, norm_layer=norm, activation_layer=act)] if expanded != cin else []
        )
        se = [se_layer(expanded, se_channels)] if se_channels else []
        self.block = nn.Sequential(
            *expand,
            Conv2dNormActivation(
                expanded, expanded, kernel, stride, groups=expanded, norm_layer=norm, activation_layer=act
            ),
            *se,
            Conv2dNormActivation(expanded, cout, 1, norm_layer=norm, activation_layer=None),
        )
        self.stochastic_depth = StochasticDepth(drop_prob, "row")

    def forward(self, x):
        out = self.block(x)
        return x + self.stochastic_depth(out) if self.use_res_connect else out


# MobileNet v3 (paper tables 1 and 2): per stage its stride and, per block, (kernel, expanded, out, SE,
# hard-swish); the stem has 16 channels.
V3 = {
    "large": [
        (1, [(3, 16, 16, False, False)]),
        (2, [(3, 64, 24, False, False), (3, 72, 24, False, False)]),
        (2, [(5, 72, 40, True, False), (5, 120, 40, True, False), (5, 120, 40, True, False)]),
        (
            2,
            [
                (3, 240, 80, False, True),
                (3, 200, 80, False, True),
                (3, 184, 80, False, True),
                (3, 184, 80, False, True),
                (3, 480, 112, True, True),
                (3, 672, 112, True, True),
            ],
        ),
        (2, [(5, 672, 160, True, True), (5, 960, 160, True, True), (5, 960, 160, True, True)]),
    ],
    "small": [
        (2, [(3, 16, 16, True, False)]),
        (2, [(3, 72, 24, False, False), (3, 88, 24, False, False)]),
        (
            2,
            [
                (5, 96, 40, True, True),
                (5, 240, 40, True, True),
                (5, 240, 40, True, True),
                (5, 120, 48, True, True),
                (5, 144, 48, True, True),
            ],
        ),
        (2, [(5, 288, 96, True, True), (5, 576, 96, True, True), (5, 576, 96, True, True)]),
    ],
}
V3_HIDDEN = {"large": 1280, "small": 1024}


def mobilenet_v3(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    size: str = "large",
    dropout: float = 0.2,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    check_choice("size", size, sorted(V3))
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)
    se_layer = partial(SqueezeExcitation, scale_activation=nn.Hardsigmoid)
    cin = scale_width(16, width_mult)
    stride = 1 if resolve_stem(stem, image_size) == "cifar" else 2
    features = [Conv2dNormActivation(in_chans, cin, 3, stride, norm_layer=norm, activation_layer=nn.Hardswish)]
    for first_stride, blocks in V3[size]:
        for i, (kernel, expanded, out, se, hswish) in enumerate(scale_stage(blocks, depth_mult)):
            expanded, cout = scale_width(expanded, width_mult), scale_width(out, width_mult)
            features.append(
                InvertedResidual(
                    cin,
                    expanded,
                    cout,
                    kernel,
                    first_stride if i == 0 else 1,
                    nn.Hardswish if hswish else nn.ReLU,
                    make_divisible(expanded // 4, 8) if se else 0,
                    se_layer,
                    norm,
                )
            )
            cin = cout
    features.append(Conv2dNormActivation(cin, 6 * cin, 1, norm_layer=norm, activation_layer=nn.Hardswish))
    hidden = scale_width(V3_HIDDEN[size], width_mult)
    return init_weights(
        ConvNet(
            nn.Sequential(*features),
            1,
            nn.Sequential(
                nn.Linear(6 * cin, hidden),
                nn.Hardswish(inplace=True),
                nn.Dropout(dropout, inplace=True),
                nn.Linear(hidden, num_classes),
            ),
        )
    )


register_model(
    "mobilenet", "mobilenet_v3_large", "torchvision:mobilenet_v3_large", classifier="classifier.3", size="large"
)(mobilenet_v3)
register_model(
    "mobilenet", "mobilenet_v3_small", "torchvision:mobilenet_v3_small", classifier="classifier.3", size="small"
)(mobilenet_v3)
