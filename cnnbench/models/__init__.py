"""The model zoo: `create_model(name, num_classes=..., in_chans=..., image_size=..., **knobs)`."""

from . import (  # noqa: F401  (each module registers its family)
    alexnet,
    bit,
    compact,
    csp,
    densenet,
    efficientnet,
    fmnist_cnn,
    hub,
    inception,
    lenet,
    mobilenet,
    nin,
    regnet,
    resnet,
    vgg,
    wrn,
    xception,
)
from .convolutionize import convolutionize
from .registry import create_model, get_entry, list_models, register_model

__all__ = ["convolutionize", "create_model", "get_entry", "list_models", "register_model"]
