"""The Fashion-MNIST CNN (Keras) of Géron, "Hands-On Machine Learning with Scikit-Learn, Keras and TensorFlow",
3rd ed. 2022, chapter 14, in PyTorch: a 7x7 conv, then two 3x3 conv pairs, each stage followed by 2x2 max
pooling and double the filters, then Dense 128-64 with dropout 0.5. At 28x28 and 10 classes it has 1,413,834
parameters, as in Keras.

`norm=batch` adds batch norm after each conv (not in the book): it trains in fewer epochs. `fmnist_cnn_bn`,
cnnbench's default model, is that variant at half width with dropout 0.1.
"""

import torch.nn as nn

from cnnbench.errors import ConfigError

from .registry import positional_keys_load, register_model
from .scaling import scale_depth, scale_width


@register_model("fmnist_cnn", input_size=28, classifier="fc")
@register_model(
    "fmnist_cnn", "fmnist_cnn_bn", input_size=28, classifier="fc", width_mult=0.5, norm="batch", drop_rate=0.1
)
def fmnist_cnn(
    num_classes=10,
    in_chans=1,
    image_size=28,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    norm: str = "none",
    drop_rate: float = 0.5,
):
    if norm not in ("none", "batch"):
        raise ConfigError(f"model.norm: 'none' or 'batch', got {norm!r}")

    def conv(cin, cout, k=3):
        if norm == "none":
            return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.ReLU(inplace=True)]
        return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    stem = scale_width(64, width_mult)
    layers, cin = conv(in_chans, stem, 7) + [nn.MaxPool2d(2)], stem
    for width in (128, 256):
        cout = scale_width(width, width_mult)
        for i in range(scale_depth(2, depth_mult)):
            layers += conv(cin if i == 0 else cout, cout)
        layers.append(nn.MaxPool2d(2))
        cin = cout
    side = image_size // 8
    model = nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(cin * side * side, 128),
        nn.ReLU(inplace=True),
        nn.Dropout(drop_rate),
        nn.Linear(128, 64),
        nn.ReLU(inplace=True),
        nn.Dropout(drop_rate),
    )
    model.add_module("fc", nn.Linear(64, num_classes))
    return positional_keys_load(model)
