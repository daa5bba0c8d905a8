"""EfficientNet (Tan and Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", 2019):
MobileNet v3's inverted residual blocks with squeeze-and-excitation and SiLU, B0 found by architecture search,
B1-B7 by compound scaling of its depth (alpha), width (beta) and image size (gamma): `model.phi` does the same
for any family (registry.py).

B0 is a table of stages (paper table 1); B1-B7 are B0 with torchvision's width and depth multipliers,
dropout and, for B5-B7 (weights ported from TensorFlow), BN eps 1e-3 and momentum 0.01. Module names
follow torchvision, so its state dicts load. `stochastic_depth_prob` is the drop probability of the last
block's residual, growing linearly from 0 at the first; `stem=cifar` makes the first conv stride 1.
"""

from functools import partial

import torch.nn as nn
from timm.layers import make_divisible
from torchvision.ops import Conv2dNormActivation, SqueezeExcitation

from .alexnet import ConvNet
from .mobilenet import InvertedResidual
from .registry import register_model
from .scaling import resolve_stem, scale_depth, scale_width

# B0 (paper table 1): (expansion, kernel, stride, channels, blocks) per stage after a 32-channel stem.
B0 = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]


def efficientnet(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    dropout: float = 0.2,
    stochastic_depth_prob: float = 0.2,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    norm = partial(nn.BatchNorm2d, eps=bn_eps, momentum=bn_momentum)
    se_layer = partial(SqueezeExcitation, activation=partial(nn.SiLU, inplace=True))
    cin = scale_width(32, width_mult)
    stride = 1 if resolve_stem(stem, image_size) == "cifar" else 2
    features = [Conv2dNormActivation(in_chans, cin, 3, stride, norm_layer=norm, activation_layer=nn.SiLU)]
    depths = [scale_depth(blocks, depth_mult) for *_, blocks in B0]
    done = 0
    for (expansion, kernel, first_stride, channels, _), depth in zip(B0, depths):
        cout, stage = scale_width(channels, width_mult), []
        for i in range(depth):
            stage.append(
                InvertedResidual(
                    cin,
                    make_divisible(cin * expansion, 8),
                    cout,
                    kernel,
                    first_stride if i == 0 else 1,
                    nn.SiLU,
                    max(1, cin // 4),
                    se_layer,
                    norm,
                    stochastic_depth_prob * done / sum(depths),
                )
            )
            cin, done = cout, done + 1
        features.append(nn.Sequential(*stage))
    features.append(Conv2dNormActivation(cin, 4 * cin, 1, norm_layer=norm, activation_layer=nn.SiLU))
    model = ConvNet(
        nn.Sequential(*features), 1, nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(4 * cin, num_classes))
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.uniform_(m.weight, -(m.out_features**-0.5), m.out_features**-0.5)
            nn.init.zeros_(m.bias)
    return model


# (width_mult, depth_mult, dropout) of B0-B7, as torchvision; (image side, eval crop) as the paper's
# reference code (timm's tf_efficientnet_b* configs): compound scaling grows the images too.
SCALES = [
    (1.0, 1.0, 0.2),
    (1.0, 1.1, 0.2),
    (1.1, 1.2, 0.3),
    (1.2, 1.4, 0.3),
    (1.4, 1.8, 0.4),
    (1.6, 2.2, 0.4),
    (1.8, 2.6, 0.5),
    (2.0, 3.1, 0.5),
]
INPUTS = [
    (224, 0.875),
    (240, 0.882),
    (260, 0.890),
    (300, 0.904),
    (380, 0.922),
    (456, 0.934),
    (528, 0.942),
    (600, 0.949),
]
for _b, ((_width, _depth, _dropout), (_size, _crop)) in enumerate(zip(SCALES, INPUTS)):
    _tf_bn = dict(bn_eps=1e-3, bn_momentum=0.01) if _b >= 5 else {}
    register_model(
        "efficientnet",
        f"efficientnet_b{_b}",
        f"torchvision:efficientnet_b{_b}",
        input_size=_size,
        crop_pct=_crop,
        classifier="classifier.1",
        width_mult=_width,
        depth_mult=_depth,
        dropout=_dropout,
        **_tf_bn,
    )(efficientnet)
