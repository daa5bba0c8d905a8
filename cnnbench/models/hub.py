"""Models from other libraries: `model=timm model.name=resnet10t` builds timm's resnet10t for the data's
classes and channels. Their config says `source: timm`; `create_model` passes `name` on as `arch`."""
import timm

from cnnbench.errors import ConfigError

from .registry import register_model


@register_model("timm", "timm")
def timm_model(num_classes=1000, in_chans=3, image_size=224, arch: str = "resnet10t",
               pretrained: bool = False, kwargs: dict | None = None):
    if not timm.is_model(arch):
        raise ConfigError(f"model.name: timm has no model '{arch}'")
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                                 **(kwargs or {}))
    except OSError as e:  # weights not cached and no network
        raise ConfigError(f"model.pretrained: could not fetch weights for {arch} ({e}); "
                          f"offline, save them once and pass model.weights=PATH") from None
