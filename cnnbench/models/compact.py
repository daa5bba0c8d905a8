"""A compact all-3x3 batch-norm CNN for small images, the shape of the speed records (airbench,
Keller Jordan 2024; pycls's AnyNet as a handful of numbers): a 3x3 stem at full resolution, then
stages that each halve the side with 2x2 max pooling and run `depth` 3x3 conv-BN-ReLU layers of
`width` channels, then one linear layer on the flattened last map
(a 3x3 map at 28x28: where a shape's parts are, which Fashion-MNIST's classes differ by).

Pooling before a stage's convolutions keeps the FLOPs low: at 28x28 and the default widths a
forward pass costs 16 MFLOPs, a third of fmnist_cnn_bn's 46. The stem is narrow because on a CPU its
full-resolution activations, not its FLOPs, set its cost (stem_width 24 trains about 25% slower than 16).
"""
import torch.nn as nn
from timm.layers import ConvNormAct

from cnnbench.errors import ConfigError

from .registry import register_model
from .scaling import scale_depth, scale_width


@register_model("compact")
def compact_cnn(num_classes=10, in_chans=1, image_size=28, stem_width: int = 16,
                widths: tuple = (64, 128, 256), depths: tuple = (1, 1, 1),
                width_mult: float = 1.0, depth_mult: float = 1.0):
    if len(widths) != len(depths):
        raise ConfigError(f"model.depths: one per stage of model.widths, got {list(depths)} for {list(widths)}")
    side = image_size >> len(widths)  # the last map's
    if side == 0:
        raise ConfigError(f"model.widths: {len(widths)} stages halve {image_size} px images to nothing")
    cin = scale_width(stem_width, width_mult)
    layers = [ConvNormAct(in_chans, cin, 3)]
    for width, depth in zip(widths, depths):
        cout = scale_width(width, width_mult)
        layers.append(nn.MaxPool2d(2))
        for i in range(scale_depth(depth, depth_mult)):
            layers.append(ConvNormAct(cin if i == 0 else cout, cout, 3))
        cin = cout
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(cin * side * side, num_classes))
