"""A compact all-3x3 batch-norm CNN for small images, the shape of the speed records (airbench,
Keller Jordan 2024; pycls's AnyNet as a handful of numbers): a 3x3 stem at full resolution, then
stages that each halve the side with 2x2 max pooling and run `depth` 3x3 conv-BN-ReLU layers of
`width` channels, then one linear layer on the flattened last map
(a 3x3 map at 28x28: where a shape's parts are, which Fashion-MNIST's classes differ by).

Pooling before a stage's convolutions keeps the FLOPs low: at 28x28 and the default widths a
forward pass costs 16 MFLOPs, a third of fmnist_cnn_bn's 46. A convolution followed by pooling is
normalized and activated after the pool (airbench's order: conv, pool, BN, ReLU), at a quarter of the
size: on a CPU these memory-bound layers, not the convolutions' FLOPs, set the cost of the
full-resolution end (this order trains about 30% faster than conv-BN-ReLU-pool; a stem_width of 24
about 25% slower than 16).
"""

import torch.nn as nn
from timm.layers import BatchNormAct2d, create_conv2d

from cnnbench.errors import ConfigError

from .registry import positional_keys_load, register_model
from .scaling import scale_depth, scale_width


@register_model("compact", input_size=28, classifier="fc")
def compact_cnn(
    num_classes=10,
    in_chans=1,
    image_size=28,
    stem_width: int = 16,
    widths: tuple = (64, 128, 256),
    depths: tuple = (1, 1, 1),
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
):
    if len(widths) != len(depths):
        raise ConfigError(f"model.depths: one per stage of model.widths, got {list(depths)} for {list(widths)}")
    side = image_size >> len(widths)  # the last map's
    if side == 0:
        raise ConfigError(f"model.widths: {len(widths)} stages halve {image_size} px images to nothing")
    cin = scale_width(stem_width, width_mult)
    layers = [create_conv2d(in_chans, cin, 3)]  # its BN and ReLU come after the first pool
    for width, depth in zip(widths, depths):
        cout = scale_width(width, width_mult)
        layers += [nn.MaxPool2d(2), BatchNormAct2d(cin)]
        for i in range(scale_depth(depth, depth_mult)):
            if i:
                layers.append(BatchNormAct2d(cout))
            layers.append(create_conv2d(cin if i == 0 else cout, cout, 3))
        cin = cout
    model = nn.Sequential(*layers, BatchNormAct2d(cin), nn.Flatten())
    model.add_module("fc", nn.Linear(cin * side * side, num_classes))
    return positional_keys_load(model)
