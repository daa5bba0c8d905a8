"""VGG (Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition", 2015):
stages of 3x3 convs, each closed by 2x2 max pooling, then AlexNet's three fully connected layers. `depths`
(convs per stage) and `widths` are the whole design (the VGG-11 arch tuple of Zhang et al.'s "Dive into Deep
Learning"); `batch_norm` adds BN after each conv (the _bn variants). Module names follow torchvision, so its
state dicts load. The max pools round up (28 -> 14 -> 7 -> 4 -> 2 -> 1; the same as torchvision's at 224 and 32)
and the adaptive 7x7 pooling before the classifier takes what is left, so 28x28 and 32x32 images go through.
"""

import torch.nn as nn

from cnnbench.errors import ConfigError

from .alexnet import ConvNet, classifier
from .registry import register_model
from .scaling import scale_depth, scale_width


def vgg(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    depths=(1, 1, 2, 2, 2),
    widths=(64, 128, 256, 512, 512),
    batch_norm: bool = False,
    dropout: float = 0.5,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
):
    if len(depths) != len(widths):
        raise ConfigError(f"model.depths: one per stage of model.widths, got {list(depths)} for {list(widths)}")
    layers, cin = [], in_chans
    for depth, width in zip(depths, widths):
        cout = scale_width(width, width_mult)
        for _ in range(scale_depth(depth, depth_mult)):
            norm = [nn.BatchNorm2d(cout)] if batch_norm else []
            layers += [nn.Conv2d(cin, cout, 3, padding=1), *norm, nn.ReLU(inplace=True)]
            cin = cout
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    model = ConvNet(
        nn.Sequential(*layers),
        7,
        classifier(cin * 49, scale_width(4096, width_mult), num_classes, dropout, dropout_first=False),
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):  # plain VGG does not train from PyTorch's default init
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model


DEPTHS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
for _name, _depths in DEPTHS.items():
    register_model("vgg", _name, f"torchvision:{_name}", classifier="classifier.6", depths=_depths)(vgg)
    register_model(
        "vgg", f"{_name}_bn", f"torchvision:{_name}_bn", classifier="classifier.6", depths=_depths, batch_norm=True
    )(vgg)
