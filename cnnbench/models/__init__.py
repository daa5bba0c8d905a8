"""The model zoo: `create_model(name, num_classes=..., in_chans=..., image_size=..., **knobs)`."""
from . import fmnist_cnn, hub, lenet, resnet  # noqa: F401  (each module registers its family)
from .registry import create_model, get_entry, list_models, register_model

__all__ = ["create_model", "get_entry", "list_models", "register_model"]
