"""AlexNet (Krizhevsky et al. 2012; seeds 000, 002, 003, 004): five convs (11x11/4, 5x5, three 3x3) with
max pooling, then three fully connected layers with dropout.

`channels=torchvision` is torchvision's one-GPU version (64, 192, 384, 256, 256; seed 003's listing),
whose state dict loads; `2012` is the paper's (96, 256, 384, 384, 256; seed 004 table 14-2). `lrn` adds
local response normalization after the first two ReLUs (r=5, alpha=1e-4, beta=0.75, k=2; seed 004
eq. 14-2). `depth_mult` scales the stack of 3x3 convs, `width_mult` every layer but the last.
`stem=cifar` runs the first conv at stride 1 (same weights) so 28x28 and 32x32 images survive the three
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


@register_model("alexnet", reference="torchvision:alexnet")
def alexnet(num_classes=1000, in_chans=3, image_size=224, channels: str = "torchvision", lrn: bool = False,
            dropout: float = 0.5, width_mult: float = 1.0, depth_mult: float = 1.0, stem: str = "auto"):
    check_choice("channels", channels, sorted(CHANNELS))
    c1, c2, *stack = (scale_width(c, width_mult) for c in CHANNELS[channels])

    def relu_lrn():  # torch divides alpha by the size, the paper does not
        return [nn.ReLU(inplace=True)] + ([nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)] if lrn else [])

    stride, padding = (1, 5) if resolve_stem(stem, image_size) == "cifar" else (4, 2)
    layers = [nn.Conv2d(in_chans, c1, 11, stride, padding), *relu_lrn(), nn.MaxPool2d(3, 2),
              nn.Conv2d(c1, c2, 5, padding=2), *relu_lrn(), nn.MaxPool2d(3, 2)]
    cin = c2
    for cout in scale_stage(stack, depth_mult):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
        cin = cout
    layers.append(nn.MaxPool2d(3, 2))
    return ConvNet(nn.Sequential(*layers), 6,
                   classifier(cin * 36, scale_width(4096, width_mult), num_classes, dropout, dropout_first=True))
