"""AlexNet (Krizhevsky, Sutskever and Hinton, "ImageNet Classification with Deep Convolutional Neural Networks",
2012): five convs (11x11/4, 5x5, three 3x3) with max pooling, then three fully connected layers with dropout;
and ZFNet (Zeiler and Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014), AlexNet with a
7x7/2 first conv and a strided second one.

`channels=torchvision` is torchvision's one-GPU version (64, 192, 384, 256, 256), whose state dict loads; `2012`
is the paper's (96, 256, 384, 384, 256; its section 3.5), ZFNet's too (dense, 62,357,608 parameters at 1000
classes). `lrn` adds local response normalization after the first two ReLUs (r=5, alpha=1e-4, beta=0.75, k=2;
the paper's section 3.3): off in torchvision's AlexNet, on in ZFNet as in both papers. `depth_mult` scales the
stack of 3x3 convs, `width_mult` every layer but the last.
`stem=cifar` runs the strided convs at stride 1 (same weights) so 28x28 and 32x32 images survive the three
max pools; the adaptive 6x6 pooling before the classifier then takes any size.
"""

import torch.nn as nn

from .pooling import AdaptiveAvgPool2d
from .registry import check_choice, register_model
from .scaling import resolve_stem, scale_stage, scale_width

CHANNELS = {"torchvision": (64, 192, 384, 256, 256), "2012": (96, 256, 384, 384, 256)}


class ConvNet(nn.Module):
    """torchvision's layout for AlexNet and VGG: `features`, a fixed-size adaptive pool, `classifier`."""

    def __init__(self, features, pool_size, classifier):
        super().__init__()
        self.features = features
        self.avgpool = AdaptiveAvgPool2d(pool_size)  # skipped at 224 px: deterministic on CUDA
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def classifier(cin, hidden, num_classes, dropout, dropout_first):
    """Two hidden fully connected layers with dropout: before each in AlexNet, after each in VGG."""

    def hidden_layer(a, b):
        layer = [nn.Linear(a, b), nn.ReLU(inplace=True)]
        return [nn.Dropout(dropout)] + layer if dropout_first else layer + [nn.Dropout(dropout)]

    return nn.Sequential(*hidden_layer(cin, hidden), *hidden_layer(hidden, hidden), nn.Linear(hidden, num_classes))


def relu_lrn(lrn):
    """A ReLU, then local response normalization where the paper has it (torch divides alpha by the size,
    the paper does not)."""
    return [nn.ReLU(inplace=True)] + ([nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)] if lrn else [])


def features(in_chans, convs, stack, depth_mult, lrn, pool):
    """The two large convs (channels, kernel, stride, padding), each followed by ReLU[-LRN] and `pool()`, then
    the 3x3 convs of `stack` (scaled by `depth_mult`) and a last pool; returns the layers and their width."""
    layers, cin = [], in_chans
    for cout, kernel, stride, padding in convs:
        layers += [nn.Conv2d(cin, cout, kernel, stride, padding), *relu_lrn(lrn), pool()]
        cin = cout
    for cout in scale_stage(stack, depth_mult):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
        cin = cout
    return nn.Sequential(*layers, pool()), cin


@register_model("alexnet", reference="torchvision:alexnet", classifier="classifier.6")
def alexnet(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    channels: str = "torchvision",
    lrn: bool = False,
    dropout: float = 0.5,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    check_choice("channels", channels, sorted(CHANNELS))
    c1, c2, *stack = (scale_width(c, width_mult) for c in CHANNELS[channels])
    stride, padding = (1, 5) if resolve_stem(stem, image_size) == "cifar" else (4, 2)
    layers, cout = features(
        in_chans, [(c1, 11, stride, padding), (c2, 5, 1, 2)], stack, depth_mult, lrn, lambda: nn.MaxPool2d(3, 2)
    )
    return ConvNet(
        layers, 6, classifier(cout * 36, scale_width(4096, width_mult), num_classes, dropout, dropout_first=True)
    )


@register_model("alexnet", classifier="classifier.6")
def zfnet(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    lrn: bool = True,
    dropout: float = 0.5,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    """The paper's figure 3: 96 7x7/2 convs (padding 1) and 256 5x5/2 ones, pooled as Caffe does (ceil
    mode): 224 -> 110 -> 55 -> 26 -> 13 -> 13 -> 6. `stem=cifar`: both at stride 1, same padding."""
    c1, c2, *stack = (scale_width(c, width_mult) for c in CHANNELS["2012"])
    if resolve_stem(stem, image_size) == "cifar":
        convs = [(c1, 7, 1, 3), (c2, 5, 1, 2)]
    else:
        convs = [(c1, 7, 2, 1), (c2, 5, 2, 0)]
    layers, cout = features(in_chans, convs, stack, depth_mult, lrn, lambda: nn.MaxPool2d(3, 2, ceil_mode=True))
    return ConvNet(
        layers, 6, classifier(cout * 36, scale_width(4096, width_mult), num_classes, dropout, dropout_first=True)
    )
