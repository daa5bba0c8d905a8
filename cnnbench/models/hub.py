"""Models from other libraries: `model=timm model.name=resnet10t` builds timm's resnet10t, and
`model=torchvision model.name=resnet18` torchvision's resnet18, for the data's classes and channels.
Their config says `source: timm` or `source: torchvision`; `create_model` passes `name` on as `arch`.
A timm model names its classifier in its own pretrained_cfg; torchvision's do not, and theirs is taken to be
the last layer with as many outputs as classes (registry.classifier_name: torchvision registers its heads
last)."""

import timm
import torch
import torch.nn as nn
import torchvision
from timm.models import adapt_input_conv

from cnnbench.errors import ConfigError

from .registry import fit_state_dict, reference_state_dict, register_model


@register_model("timm", "timm")
def timm_model(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    arch: str = "resnet10t",
    pretrained: bool = False,
    kwargs: dict | None = None,
):
    if not timm.is_model(arch):
        raise ConfigError(f"model.name: timm has no model '{arch}'")
    check_no_aux("timm", kwargs)
    if timm.models.get_pretrained_cfg_value(arch, "fixed_input_size"):  # a ViT's patch grid: built for the data's size
        kwargs = {"img_size": image_size, **(kwargs or {})}
    try:
        return timm.create_model(
            arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **(kwargs or {})
        )
    except OSError as e:  # weights not cached and no network
        raise ConfigError(
            f"model.pretrained: could not fetch weights for {arch} ({e}); "
            f"offline, save them once and pass model.weights=PATH"
        ) from None


@register_model("torchvision", "torchvision")
def torchvision_model(
    num_classes=1000,
    in_chans=3,
    image_size=224,
    arch: str = "resnet18",
    pretrained: bool = False,
    kwargs: dict | None = None,
):
    """torchvision's `arch`; for other input channels its first conv is rebuilt (pretrained: adapted)."""
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"model.name: torchvision has no classification model '{arch}'")
    check_no_aux("torchvision", kwargs)
    no_aux = {"aux_logits": False} if arch in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(arch, num_classes=num_classes, **{**no_aux, **(kwargs or {})})
    if pretrained:
        fit_state_dict(model, reference_state_dict(f"torchvision:{arch}"), f"torchvision:{arch}", "pretrained")
    if in_chans != 3:
        set_input_channels(model, in_chans)
    return model


def check_no_aux(library, kwargs):
    """The libraries' auxiliary outputs are their own tuples, not cnnbench's (logits, [aux]): the loss would
    misread them."""
    if (kwargs or {}).get("aux_logits"):
        raise ConfigError(
            f"model.kwargs: {library}'s aux_logits outputs are not cnnbench's; "
            f"model=googlenet and model=inception_v3 train auxiliary classifiers"
        )


def set_input_channels(model, in_chans):
    """Replace the first conv (torchvision hard-codes RGB) by one for `in_chans`, its weights adapted."""
    name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    conv = nn.Conv2d(
        in_chans,
        first.out_channels,
        first.kernel_size,
        first.stride,
        first.padding,
        first.dilation,
        first.groups,
        first.bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(adapt_input_conv(in_chans, first.weight))
        if first.bias is not None:
            conv.bias.copy_(first.bias)
    model.set_submodule(name, conv)
