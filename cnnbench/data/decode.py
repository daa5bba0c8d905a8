"""`data.decode_device`: an image folder's batches decoded where they train.

The DataLoader workers only read the files' bytes; here the batch's JPEGs are decoded together by
`torchvision.io.decode_jpeg(list, device=...)` (nvJPEG on a GPU), then each image goes through the
same transforms as the PIL path (torchvision.transforms.v2 runs on tensors on any device), seeded by
the batch's seed, so a batch depends on (seed, epoch) alone here too. Other formats (PNG, ...) are
decoded on the CPU by `torchvision.io.decode_image`. A file that decodes nowhere becomes a BadImage.
"""

import contextlib

import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import to_dtype

from .datasets import BadImage, seeded
from .transforms import Lighting

JPEG_START = b"\xff\xd8"


def decode_one(data: torch.Tensor, device: torch.device) -> torch.Tensor:
    if bytes(data[:2]) == JPEG_START:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    # 16-bit PNGs decode to uint16: scaled to uint8 as the PIL path does (the top 8 bits).
    return to_dtype(decode_image(data, mode=ImageReadMode.RGB), torch.uint8, scale=True).to(device)


def decode(files: list[tuple[str, bytes, int]], device: torch.device) -> tuple[list, list[int], list[BadImage]]:
    """(images, labels, bad files): the JPEGs in one call; a batch that fails is retried file by file."""
    data = [
        torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        for _, raw, _ in files
    ]
    jpegs = [i for i, d in enumerate(data) if bytes(d[:2]) == JPEG_START and len(d) > 2]
    decoded = {}
    try:
        if jpegs:  # decode_jpeg([]) raises: a batch of PNGs has none
            decoded = dict(zip(jpegs, decode_jpeg([data[i] for i in jpegs], mode=ImageReadMode.RGB, device=device)))
    except RuntimeError:
        pass  # a corrupt JPEG among them: each is tried alone below, and the culprit named
    images, labels, bad = [], [], []
    for i, (path, _, label) in enumerate(files):
        try:
            images.append(decoded[i] if i in decoded else decode_one(data[i], device))
            labels.append(label)
        except RuntimeError as e:
            bad.append(BadImage(path, str(e).rsplit(", ", 1)[-1]))  # torchvision's message, less its C++ source line
    return images, labels, bad


class DecodedBatches:
    """Batches of EncodedFiles decoded and transformed on `device`: yields ((images, labels) or None, bad)
    as a DataLoader with collate_readable does, for ReadableBatches to apply data.on_bad_image.
    AlexNet's lighting, when last (no random erasing after it), shifts the stacked batch at once: one copy
    and one add a batch, not a copy and a few kernels an image. Each image's shift is still drawn right
    after its crop and flip, where the per-image transform draws it, so the images are the PIL path's (one
    draw for the batch would take other numbers: the crops' draws come between, and torch's CPU normal
    sampler draws 16 values or more another way)."""

    def __init__(self, loader: torch.utils.data.DataLoader, transform, device: torch.device):
        self.loader, self.device = loader, device
        self.transform, self.lighting = transform, None
        if isinstance(transform, v2.Compose) and isinstance(transform.transforms[-1], Lighting):
            self.transform, self.lighting = v2.Compose(transform.transforms[:-1]), transform.transforms[-1]

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for seed, files in self.loader:
            images, labels, bad = decode(files, self.device)
            if not images:
                yield None, bad
                continue
            with seeded(seed) if seed is not None else contextlib.nullcontext():  # val: no randomness
                transformed, shifts = [], []
                for image in images:
                    transformed.append(self.transform(image))
                    if self.lighting:
                        shifts.append(self.lighting.shift(transformed[-1].shape[-3]))
            batch = torch.stack(transformed)
            if self.lighting:
                batch = self.lighting.add(batch, torch.stack(shifts))
            yield (batch, torch.tensor(labels)), bad


def encoded_batch(batch):
    """The DataLoader's collate_fn for EncodedFiles: its __getitems__ already made the batch."""
    return batch
