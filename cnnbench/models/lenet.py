"""LeNet-5 (LeCun, Bottou, Bengio and Haffner, "Gradient-Based Learning Applied to Document Recognition", 1998;
table 14-1 of Géron's "Hands-On Machine Learning", 3rd ed. 2022): C1-S2-C3-S4-C5-F6-out.

`variant=classic` is the paper's tanh + average pooling; `modern` swaps in ReLU, max pooling and
batch norm, as today's CNNs do (Géron's chapter 14 calls the activation the main difference).
"""

import torch.nn as nn

from cnnbench.errors import ConfigError

from .registry import positional_keys_load, register_model
from .scaling import scale_width


@register_model("lenet", input_size=32, classifier="fc")
def lenet5(num_classes=10, in_chans=1, image_size=32, variant: str = "classic", width_mult: float = 1.0):
    if variant not in ("classic", "modern"):
        raise ConfigError(f"model.variant: 'classic' or 'modern', got {variant!r}")
    modern = variant == "modern"
    act = nn.ReLU if modern else nn.Tanh
    pool = nn.MaxPool2d if modern else nn.AvgPool2d
    c1, c3, c5 = (scale_width(c, width_mult) for c in (6, 16, 120))

    def conv(cin, cout, padding=0):
        layers = [nn.Conv2d(cin, cout, 5, padding=padding, bias=not modern)]
        return layers + ([nn.BatchNorm2d(cout)] if modern else []) + [act()]

    # C1 pads a 28x28 image to the paper's 32x32 so C5 still sees 5x5.
    pad = 2 if image_size == 28 else 0
    size = ((image_size + 2 * pad - 4) // 2 - 4) // 2 - 4  # C5's output side
    model = nn.Sequential(
        *conv(in_chans, c1, pad),
        pool(2),
        *conv(c1, c3),
        pool(2),
        *conv(c3, c5),
        nn.Flatten(),
        nn.Linear(c5 * size * size, 84),
        act(),
    )
    model.add_module("fc", nn.Linear(84, num_classes))
    return positional_keys_load(model)
