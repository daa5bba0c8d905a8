"""A model's logits over a loader, for validation, evaluate and pseudolabel alike, with test-time
augmentation: the logits averaged over views of each image (eval.tta)."""

import torch
from torchvision.transforms import v2

from cnnbench.config import TTA

from .device import Placement


def batch_logits(
    model: torch.nn.Module, loader, normalize, placement: Placement, tta: TTA = TTA.none, image_size: int | None = None
):
    """(logits, targets) of each batch, both on the device; `image_size`: tencrop's crops (default: the batch's)."""
    for images, targets in loader:
        images = normalize(placement.put(images))
        with placement.autocast:
            logits = tta_logits(model, images, tta, image_size or images.shape[-1])
        yield logits, targets.to(placement.device, non_blocking=True)


def tta_logits(model: torch.nn.Module, images: torch.Tensor, tta: TTA, image_size: int) -> torch.Tensor:
    """The mean of the model's logits over the views of a normalized batch (for tencrop, the larger images
    of `tta_transform`): one forward pass over all views at once."""
    if tta == TTA.flip:
        views = [images, images.flip(-1)]
    elif tta == TTA.tencrop:
        views = list(v2.functional.ten_crop(images, image_size))
    else:
        views = [images]
    return model(torch.cat(views)).float().view(len(views), len(images), -1).mean(0)
