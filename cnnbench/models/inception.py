"""GoogLeNet / Inception v1 (Szegedy et al., "Going Deeper with Convolutions", 2015), Inception v3 (Szegedy et
al., "Rethinking the Inception Architecture for Computer Vision", 2016) and Inception v4 (2017): a stem, stages
of Inception modules (parallel branches of 1x1, 3x3, 5x5 or factorized 1xn | nx1 convs and pooling,
concatenated), global average pooling and one linear layer.

A module is a table of branches (`Mixed`), a network the list of its tables. Module names follow
torchvision (googlenet, inception_v3) and timm (inception_v4), so their state dicts load. `width_mult`
scales every branch, `depth_mult` the modules per stage. `aux_logits` adds the auxiliary classifiers
(GoogLeNet's after 4a and 4d, weight 0.3; v3's after 6e, weight 0.4; registry.py has the contract).
`stem=cifar` keeps the stem's convs but with stride 1, same padding and no pooling, so 28x28 and
32x32 images enter the body whole.
"""

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pooling import adaptive_avg_pool2d
from .registry import check_choice, register_model
from .scaling import resolve_stem, scale_depth, scale_stage, scale_width


class BasicConv2d(nn.Module):
    """Conv without bias, BN (eps 1e-3, as TensorFlow), ReLU; padding defaults to `same` at stride 1."""

    def __init__(self, cin, cout, kernel, stride=1, padding=None):
        super().__init__()
        if padding is None:
            padding = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
            padding = padding if stride == 1 else 0
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Split(tuple):
    """Steps applied side by side to one input, their outputs concatenated (v3's 1x3 | 3x1)."""


def build(spec, cin, width_mult):
    """A step's layer and its output channels: a conv (cout, kernel[, stride[, padding]]), a pooling
    module (channels unchanged) or a list of those (an nn.Sequential)."""
    if isinstance(spec, nn.Module):
        return spec, cin
    if isinstance(spec, list):
        layers = []
        for item in spec:
            layer, cin = build(item, cin, width_mult)
            layers.append(layer)
        return nn.Sequential(*layers), cin
    cout = scale_width(spec[0], width_mult)
    return BasicConv2d(cin, cout, *spec[1:]), cout


class Mixed(nn.Module):
    """An Inception module: branches run on the same input, outputs concatenated. A branch is a chain
    of named steps (see `build`), or of `Split`s of them."""

    def __init__(self, cin, branches, width_mult):
        super().__init__()
        self.chains, self.out_channels = [], 0
        for branch in branches:
            chain, channels = [], cin
            for step in branch:
                steps = step if isinstance(step, Split) else [step]
                outs = []
                for name, spec in steps:
                    layer, cout = build(spec, channels, width_mult)
                    self.add_module(name, layer)
                    outs.append(cout)
                chain.append([name for name, _ in steps])
                channels = sum(outs)
            self.chains.append(chain)
            self.out_channels += channels

    def forward(self, x):
        outs = []
        for chain in self.chains:
            y = x
            for names in chain:
                ys = [self._modules[name](y) for name in names]
                y = ys[0] if len(ys) == 1 else torch.cat(ys, 1)
            outs.append(y)
        return torch.cat(outs, 1)


class InceptionNet(nn.Module):
    """Children run in order; those named in `aux_names` branch off, in training only, as auxiliary
    classifiers: forward then returns (logits, [aux logits])."""

    def __init__(self, layers, aux_names, aux_weight):
        super().__init__()
        for name, layer in layers:
            self.add_module(name, layer)
        self.aux_names, self.aux_weight = set(aux_names), aux_weight

    def forward(self, x):
        aux = []
        for name, layer in self.named_children():
            if name not in self.aux_names:
                x = layer(x)
            elif self.training:
                aux.append(layer(x))
        return (x, aux) if aux else x


def head(cin, num_classes, dropout, names=("avgpool", "dropout", "fc")):
    pool, drop, fc = names
    return [
        (pool, nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        (drop, nn.Dropout(dropout)),
        (fc, nn.Linear(cin, num_classes)),
    ]


def stage(layers, cin, prefix, tables, width_mult, first_letter="a"):
    """Append one Mixed per table to `layers`, named prefix + a, b, c...; returns the output channels."""
    for i, table in enumerate(tables):
        module = Mixed(cin, table, width_mult)
        layers.append((f"{prefix}{chr(ord(first_letter) + i)}", module))
        cin = module.out_channels
    return cin


# GoogLeNet: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per module, as torchvision and the paper's table 1.
GOOGLENET = {
    3: [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)],
    4: [
        (192, 96, 208, 16, 48, 64),
        (160, 112, 224, 24, 64, 64),
        (128, 128, 256, 24, 64, 64),
        (112, 144, 288, 32, 64, 64),
        (256, 160, 320, 32, 128, 128),
    ],
    5: [(256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)],
}


def inception_v1(c1, c3r, c3, c5r, c5, pool, branch3_kernel):
    return [
        [("branch1", (c1, 1))],
        [("branch2", [(c3r, 1), (c3, 3)])],
        [("branch3", [(c5r, 1), (c5, branch3_kernel)])],
        [("branch4", [nn.MaxPool2d(3, 1, 1, ceil_mode=True), (pool, 1)])],
    ]


class AuxV1(nn.Module):
    """GoogLeNet's auxiliary classifier: 4x4 average pool, 1x1 conv, two fully connected layers."""

    def __init__(self, cin, num_classes, width_mult):
        super().__init__()
        width, hidden = scale_width(128, width_mult), scale_width(1024, width_mult)
        self.conv = BasicConv2d(cin, width, 1)
        self.fc1 = nn.Linear(16 * width, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.dropout = nn.Dropout(0.7)

    def forward(self, x):
        x = self.conv(adaptive_avg_pool2d(x, 4)).flatten(1)
        return self.fc2(self.dropout(F.relu(self.fc1(x), inplace=True)))


@register_model("inception", reference="torchvision:googlenet", classifier="fc")
def googlenet(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    aux_logits: bool = True,
    branch3_kernel: int = 3,
    lrn: bool = False,
    dropout: float = 0.2,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    """`branch3_kernel`: 5 is the paper's 5x5 branch; torchvision (and its weights) use 3. `lrn`: the
    paper's local response normalization after the first max pool and after conv3 (torchvision has
    none; it holds no parameters, so the weights still load)."""
    check_choice("branch3_kernel", branch3_kernel, (3, 5))
    small = resolve_stem(stem, image_size) == "cifar"
    c = partial(scale_width, width_mult=width_mult)
    pool = partial(nn.Identity) if small else partial(nn.MaxPool2d, 3, 2, ceil_mode=True)

    def norm(name):  # AlexNet's (alexnet.py)
        return [(name, nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0))] if lrn else []

    layers = [
        ("conv1", BasicConv2d(in_chans, c(64), 7, 1 if small else 2, 3)),
        ("maxpool1", pool()),
        *norm("lrn1"),
        ("conv2", BasicConv2d(c(64), c(64), 1)),
        ("conv3", BasicConv2d(c(64), c(192), 3)),
        *norm("lrn2"),
        ("maxpool2", pool()),
    ]
    cin, aux_names = c(192), []
    for number, modules in GOOGLENET.items():
        modules = scale_stage(modules, depth_mult)
        for i, channels in enumerate(modules):
            module = Mixed(cin, inception_v1(*channels, branch3_kernel), width_mult)
            layers.append((f"inception{number}{chr(ord('a') + i)}", module))
            cin = module.out_channels
            if aux_logits and number == 4 and i in (0, len(modules) - 2):  # after 4a and 4d
                aux_names.append(f"aux{len(aux_names) + 1}")
                layers.append((aux_names[-1], AuxV1(cin, num_classes, width_mult)))
        if number < 5:
            layers.append((f"maxpool{number}", nn.MaxPool2d(3 if number == 3 else 2, 2, ceil_mode=True)))
    return InceptionNet(layers + head(cin, num_classes, dropout), aux_names, aux_weight=0.3)


def v3_a(pool):
    return [
        [("branch1x1", (64, 1))],
        [("branch5x5_1", (48, 1)), ("branch5x5_2", (64, 5))],
        [("branch3x3dbl_1", (64, 1)), ("branch3x3dbl_2", (96, 3)), ("branch3x3dbl_3", (96, 3))],
        [("pool", nn.AvgPool2d(3, 1, 1)), ("branch_pool", (pool, 1))],
    ]


def v3_b():
    return [
        [("branch3x3", (384, 3, 2))],
        [("branch3x3dbl_1", (64, 1)), ("branch3x3dbl_2", (96, 3)), ("branch3x3dbl_3", (96, 3, 2))],
        [("pool", nn.MaxPool2d(3, 2))],
    ]


def v3_c(c7):
    return [
        [("branch1x1", (192, 1))],
        [("branch7x7_1", (c7, 1)), ("branch7x7_2", (c7, (1, 7))), ("branch7x7_3", (192, (7, 1)))],
        [
            ("branch7x7dbl_1", (c7, 1)),
            ("branch7x7dbl_2", (c7, (7, 1))),
            ("branch7x7dbl_3", (c7, (1, 7))),
            ("branch7x7dbl_4", (c7, (7, 1))),
            ("branch7x7dbl_5", (192, (1, 7))),
        ],
        [("pool", nn.AvgPool2d(3, 1, 1)), ("branch_pool", (192, 1))],
    ]


def v3_d():
    return [
        [("branch3x3_1", (192, 1)), ("branch3x3_2", (320, 3, 2))],
        [
            ("branch7x7x3_1", (192, 1)),
            ("branch7x7x3_2", (192, (1, 7))),
            ("branch7x7x3_3", (192, (7, 1))),
            ("branch7x7x3_4", (192, 3, 2)),
        ],
        [("pool", nn.MaxPool2d(3, 2))],
    ]


def v3_e():
    return [
        [("branch1x1", (320, 1))],
        [("branch3x3_1", (384, 1)), Split([("branch3x3_2a", (384, (1, 3))), ("branch3x3_2b", (384, (3, 1)))])],
        [
            ("branch3x3dbl_1", (448, 1)),
            ("branch3x3dbl_2", (384, 3)),
            Split([("branch3x3dbl_3a", (384, (1, 3))), ("branch3x3dbl_3b", (384, (3, 1)))]),
        ],
        [("pool", nn.AvgPool2d(3, 1, 1)), ("branch_pool", (192, 1))],
    ]


class AuxV3(nn.Module):
    """Inception v3's auxiliary classifier: 5x5/3 average pool, 1x1 conv, 5x5 conv, linear."""

    def __init__(self, cin, num_classes, width_mult):
        super().__init__()
        self.conv0 = BasicConv2d(cin, scale_width(128, width_mult), 1)
        self.conv1 = BasicConv2d(scale_width(128, width_mult), scale_width(768, width_mult), 5, padding=0)
        self.fc = nn.Linear(scale_width(768, width_mult), num_classes)

    def forward(self, x):
        # the paper's pool sees 17x17 maps (299 px input); smaller ones pool to the 5x5 that conv1 needs
        x = F.avg_pool2d(x, 5, 3) if x.shape[-1] >= 17 else adaptive_avg_pool2d(x, 5)
        return self.fc(F.adaptive_avg_pool2d(self.conv1(self.conv0(x)), 1).flatten(1))


@register_model("inception", reference="torchvision:inception_v3", input_size=299, classifier="fc")
def inception_v3(
    num_classes=1000,
    in_chans=3,
    image_size=299,
    aux_logits: bool = True,
    dropout: float = 0.5,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    small = resolve_stem(stem, image_size) == "cifar"
    stride, valid = (1, 1) if small else (2, 0)  # `valid`: the padding of the paper's unpadded stem convs
    c = partial(scale_width, width_mult=width_mult)
    layers = [
        ("Conv2d_1a_3x3", BasicConv2d(in_chans, c(32), 3, stride, valid)),
        ("Conv2d_2a_3x3", BasicConv2d(c(32), c(32), 3, 1, valid)),
        ("Conv2d_2b_3x3", BasicConv2d(c(32), c(64), 3)),
        ("maxpool1", nn.Identity() if small else nn.MaxPool2d(3, 2)),
        ("Conv2d_3b_1x1", BasicConv2d(c(64), c(80), 1)),
        ("Conv2d_4a_3x3", BasicConv2d(c(80), c(192), 3, 1, valid)),
        ("maxpool2", nn.Identity() if small else nn.MaxPool2d(3, 2)),
    ]
    cin = stage(layers, c(192), "Mixed_5", [v3_a(p) for p in scale_stage([32, 64, 64], depth_mult)], width_mult, "b")
    cin = stage(layers, cin, "Mixed_6", [v3_b()], width_mult)
    cin = stage(
        layers, cin, "Mixed_6", [v3_c(c7) for c7 in scale_stage([128, 160, 160, 192], depth_mult)], width_mult, "b"
    )
    if aux_logits:
        layers.append(("AuxLogits", AuxV3(cin, num_classes, width_mult)))
    cin = stage(layers, cin, "Mixed_7", [v3_d()], width_mult)
    cin = stage(layers, cin, "Mixed_7", [v3_e() for _ in range(scale_depth(2, depth_mult))], width_mult, "b")
    return InceptionNet(layers + head(cin, num_classes, dropout), ["AuxLogits"] if aux_logits else [], aux_weight=0.4)


def v4_a():
    return [
        [("branch0", (96, 1))],
        [("branch1", [(64, 1), (96, 3)])],
        [("branch2", [(64, 1), (96, 3), (96, 3)])],
        [("branch3", [nn.AvgPool2d(3, 1, 1, count_include_pad=False), (96, 1)])],
    ]


def v4_reduction_a():
    return [
        [("branch0", (384, 3, 2))],
        [("branch1", [(192, 1), (224, 3), (256, 3, 2)])],
        [("branch2", nn.MaxPool2d(3, 2))],
    ]


def v4_b():
    return [
        [("branch0", (384, 1))],
        [("branch1", [(192, 1), (224, (1, 7)), (256, (7, 1))])],
        [("branch2", [(192, 1), (192, (7, 1)), (224, (1, 7)), (224, (7, 1)), (256, (1, 7))])],
        [("branch3", [nn.AvgPool2d(3, 1, 1, count_include_pad=False), (128, 1)])],
    ]


def v4_reduction_b():
    return [
        [("branch0", [(192, 1), (192, 3, 2)])],
        [("branch1", [(256, 1), (256, (1, 7)), (320, (7, 1)), (320, 3, 2)])],
        [("branch2", nn.MaxPool2d(3, 2))],
    ]


def v4_c():
    return [
        [("branch0", (256, 1))],
        [("branch1_0", (384, 1)), Split([("branch1_1a", (256, (1, 3))), ("branch1_1b", (256, (3, 1)))])],
        [
            ("branch2_0", (384, 1)),
            ("branch2_1", (448, (3, 1))),
            ("branch2_2", (512, (1, 3))),
            Split([("branch2_3a", (256, (1, 3))), ("branch2_3b", (256, (3, 1)))]),
        ],
        [("branch3", [nn.AvgPool2d(3, 1, 1, count_include_pad=False), (256, 1)])],
    ]


@register_model("inception", reference="timm:inception_v4", input_size=299, classifier="last_linear")
def inception_v4(
    num_classes=1000,
    in_chans=3,
    image_size=299,
    dropout: float = 0.2,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    stem: str = "auto",
):
    small = resolve_stem(stem, image_size) == "cifar"
    stride, valid = (1, 1) if small else (2, 0)  # `valid`: the padding of the paper's unpadded stem convs
    c = partial(scale_width, width_mult=width_mult)
    pool = partial(nn.MaxPool2d, 3, stride, valid)
    stem_tables = [
        [[("maxpool", pool())], [("conv", (96, 3, stride, valid))]],
        [
            [("branch0", [(64, 1), (96, 3, 1, valid)])],
            [("branch1", [(64, 1), (64, (1, 7)), (64, (7, 1)), (96, 3, 1, valid)])],
        ],
        [[("conv", (192, 3, stride, valid))], [("maxpool", pool())]],
    ]
    stages = (
        stem_tables
        + [v4_a() for _ in range(scale_depth(4, depth_mult))]
        + [v4_reduction_a()]
        + [v4_b() for _ in range(scale_depth(7, depth_mult))]
        + [v4_reduction_b()]
        + [v4_c() for _ in range(scale_depth(3, depth_mult))]
    )
    features = [
        BasicConv2d(in_chans, c(32), 3, stride, valid),
        BasicConv2d(c(32), c(32), 3, 1, valid),
        BasicConv2d(c(32), c(64), 3),
    ]
    cin = c(64)
    for table in stages:
        features.append(Mixed(cin, table, width_mult))
        cin = features[-1].out_channels
    return InceptionNet(
        [("features", nn.Sequential(*features))]
        + head(cin, num_classes, dropout, ("global_pool", "head_drop", "last_linear")),
        [],
        0.0,
    )
