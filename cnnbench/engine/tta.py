"""Test-time augmentation: the model's logits averaged over views of each image (cnnbench.evaluate's
eval.tta, and validation in training)."""
import torch
from torchvision.transforms import v2

from cnnbench.config import TTA


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
