"""Network in Network (Lin, Chen and Yan 2014): AlexNet's first three conv sizes, each followed by two 1x1 convs
(an MLP at every pixel) and 3x3/2 max pooling, then dropout and a block with one channel per class whose global
average is the logits: no fully connected layer (the code of Zhang, Lipton, Li and Smola, "Dive into Deep
Learning", chapter "Modern Convolutional Neural Networks"; 7,439,608 parameters at 1000 classes).

`stem=cifar` runs the first conv at stride 1 (same weights) so 28x28 and 32x32 images survive the
three poolings; `depth_mult` scales the 1x1 convs per block, `width_mult` every block but the last.
"""

import torch.nn as nn

from .registry import positional_keys_load, register_model
from .scaling import resolve_stem, scale_depth, scale_width


def nin_block(cin, cout, kernel, stride, padding, mlp_depth):
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding), nn.ReLU(inplace=True)]
    for _ in range(mlp_depth):
        layers += [nn.Conv2d(cout, cout, 1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


@register_model("nin", classifier="classifier")
def nin(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    dropout: float = 0.5,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    first = (11, 1, 5) if resolve_stem(stem, image_size) == "cifar" else (11, 4, 0)
    c1, c2, c3 = (scale_width(c, width_mult) for c in (96, 256, 384))
    mlp_depth = scale_depth(2, depth_mult)
    model = nn.Sequential(
        nin_block(in_chans, c1, *first, mlp_depth),
        nn.MaxPool2d(3, 2),
        nin_block(c1, c2, 5, 1, 2, mlp_depth),
        nn.MaxPool2d(3, 2),
        nin_block(c2, c3, 3, 1, 1, mlp_depth),
        nn.MaxPool2d(3, 2),
        nn.Dropout(dropout),
    )
    # The last mlpconv block is the classifier: each of its convs has one channel per class.
    model.add_module("classifier", nin_block(c3, num_classes, 3, 1, 1, mlp_depth))
    model.add_module("global_pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    return positional_keys_load(model)
