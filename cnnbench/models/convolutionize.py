"""Convolutionize (Sermanet et al., "OverFeat: Integrated Recognition, Localization and Detection using
Convolutional Networks", 2014): a classifier's Linear layers become convolutions, so the network slides over an
image larger than it was trained on and gives a map of predictions, sharing the feature extractor's work between
neighbouring windows.

The first Linear becomes a conv whose kernel covers the whole feature map it saw at the training size;
the later ones become 1x1 convs. An adaptive average pool in front of the classifier (AlexNet's and
VGG's 6x6 and 7x7, ResNet's global pool) is a fixed linear map at the training size: it is folded into
that first kernel, so the outputs at the training size are unchanged, whatever the pool's size. The new
layers are built on the model's device and in its dtype (predict moves the model to the GPU first).
"""

import torch
import torch.nn as nn

from cnnbench.errors import ConfigError


def layers_in_order(model: nn.Module) -> list[nn.Module]:
    """A model's layers as the forward pass runs them: a Sequential, or AlexNet/VGG's layout
    (`features`, `avgpool`, `classifier`: cnnbench's and torchvision's)."""
    if all(hasattr(model, name) for name in ("features", "avgpool", "classifier")):
        return [*model.features, model.avgpool, nn.Flatten(), *model.classifier]
    if isinstance(model, nn.Sequential):
        return [layer for m in model for layer in (layers_in_order(m) if isinstance(m, nn.Sequential) else [m])]
    raise ConfigError(
        f"convolutionize: {type(model).__name__} is not a stack of layers "
        f"(an nn.Sequential or features/avgpool/classifier, as AlexNet and VGG)"
    )


def placement(module: nn.Module) -> dict:
    """The device and dtype of a module's floating-point tensors: where its replacement is built."""
    tensor = next((t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()), torch.empty(0))
    return {"device": tensor.device, "dtype": tensor.dtype}


def pooled_linear_as_conv(linear: nn.Linear, feature_shape: torch.Size, pool: nn.Module | None) -> nn.Conv2d:
    """`linear(flatten(pool(x)))` for x of `feature_shape` (C, H, W), as one conv with an H x W kernel."""
    channels, height, width = feature_shape
    # The pool's own map from each input cell to each output cell, read off by pooling one-hot images.
    like = placement(linear)
    basis = torch.eye(height * width, **like).view(height * width, 1, height, width)
    pooling = pool(basis) if pool is not None else basis  # (H*W, 1, h, w)
    weight = linear.weight.detach().view(linear.out_features, channels, *pooling.shape[2:])
    conv = nn.Conv2d(channels, linear.out_features, (height, width), **like)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("ocij,pij->ocp", weight, pooling[:, 0]).view(conv.weight.shape))
        conv.bias.copy_(linear.bias)
    return conv


def linear_as_1x1(linear: nn.Linear) -> nn.Conv2d:
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, **placement(linear))
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        conv.bias.copy_(linear.bias)
    return conv


def batchnorm_as_2d(norm: nn.BatchNorm1d) -> nn.BatchNorm2d:
    norm2d = nn.BatchNorm2d(
        norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats, **placement(norm)
    )
    norm2d.load_state_dict(norm.state_dict())
    return norm2d


@torch.no_grad()
def convolutionize(model: nn.Module, input_size: tuple[int, int, int]) -> nn.Sequential:
    """`model` (for (C, H, W) inputs of `input_size`) as a fully convolutional nn.Sequential: the same
    logits, as (N, classes, 1, 1), at `input_size`; a (N, classes, h, w) map of them on larger images."""
    layers, pool, feature_shape, first_done = [], None, None, False
    x = torch.zeros(1, *input_size, **placement(model))
    was_training = model.training
    model.eval()
    for m in layers_in_order(model):
        if isinstance(m, nn.AdaptiveAvgPool2d) and not first_done:
            pool, feature_shape = m, x.shape[1:]  # folded into the first Linear, if nothing but these come between
        elif isinstance(m, nn.Flatten):
            feature_shape = feature_shape if pool is not None else x.shape[1:]
        elif isinstance(m, nn.Linear):
            layers.append(linear_as_1x1(m) if first_done else pooled_linear_as_conv(m, feature_shape, pool))
            first_done = True
        elif isinstance(m, nn.BatchNorm1d):
            layers.append(batchnorm_as_2d(m))
        else:
            if pool is not None and not first_done and not isinstance(m, nn.Dropout):
                layers.append(pool)  # a pool inside the features: kept as it is
                pool = None
            layers.append(m)
        x = m(x)
    model.train(was_training)
    return nn.Sequential(*layers).train(was_training)
