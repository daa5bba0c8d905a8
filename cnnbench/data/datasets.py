"""Data sets as (image, label) pairs with their real class names.

Small sets (Fashion-MNIST, MNIST, CIFAR) live in memory as one uint8 tensor; ImageNet-layout trees
are read from disk. Every source works offline from local files; `data.download=true` lets
torchvision fetch what is missing.
"""

import contextlib
import gzip
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from PIL import Image

from cnnbench.errors import DataError

from . import imagenet

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


@dataclass
class Split:
    """One split: the data set, and the class names its labels index."""

    dataset: torch.utils.data.Dataset
    classes: list[str]
    warnings: list[str] = field(default_factory=list)  # for train.log, which opens after the data


class TensorImages(torch.utils.data.Dataset):
    """Images held as one uint8 tensor (N, C, H, W) with int64 labels."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, transform=None):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), self.targets[index]


@contextlib.contextmanager
def seeded(seed: int):
    """torch's CPU and Python's RNGs seeded for a block, and restored after it."""
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # torch.manual_seed would reseed every CUDA generator too
        random.seed(seed)
        yield
    random.setstate(python_state)


class SeededBatches(torch.utils.data.Dataset):
    """Fetched a batch at a time as (seed, indices): the batch's random augmentation depends on its
    seed alone, so batches are the same whatever the worker count or resume point."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitems__(self, batch):
        seed, indices = batch
        with seeded(seed):
            return [self.dataset[i] for i in indices]


class EncodedFiles(torch.utils.data.Dataset):
    """An image folder's files as their bytes, a batch at a time: (seed or None, [(path, bytes, label)]).
    The workers only read; the batch is decoded and transformed where data.decode_device says (decode.py)."""

    def __init__(self, dataset):
        self.samples = self.file_samples(dataset)

    @classmethod
    def file_samples(cls, dataset) -> list[tuple[str, int]]:
        if isinstance(dataset, torch.utils.data.Subset):
            samples = cls.file_samples(dataset.dataset)
            return [samples[i] for i in dataset.indices]
        return dataset.samples

    def __len__(self):
        return len(self.samples)

    def __getitems__(self, batch):
        seed, indices = batch if isinstance(batch, tuple) else (None, batch)
        return seed, [(path, Path(path).read_bytes(), label) for path, label in (self.samples[i] for i in indices)]


def _read_idx(path: Path) -> torch.Tensor:
    """An IDX file (LeCun's MNIST format), gzipped or not, as a uint8 tensor."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return torch.from_numpy(np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).copy()).view(shape)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def mnist_like(name: str, root: str | None, train: bool, download: bool) -> Split:
    """Fashion-MNIST or MNIST from IDX files: data.root, torchvision's layout below it, Debian's copy."""
    tv_class = torchvision.datasets.FashionMNIST if name == "fashion_mnist" else torchvision.datasets.MNIST
    dirs = []
    if root:
        dirs += [Path(root), Path(root) / tv_class.__name__ / "raw"]
    if name == "fashion_mnist":
        dirs.append(Path(DEBIAN_FASHION_MNIST))
    prefix = "train" if train else "t10k"
    images_file = _find_idx(dirs, f"{prefix}-images-idx3-ubyte")
    labels_file = _find_idx(dirs, f"{prefix}-labels-idx1-ubyte")
    if (images_file is None or labels_file is None) and download and root:
        try:
            tv_class(root, train=train, download=True)
        except Exception as e:  # torchvision raises whatever urllib does
            raise DataError(f"data: could not download {name} to {root}: {e}") from None
        return mnist_like(name, root, train, download=False)
    if images_file is None or labels_file is None:
        hint = "apt-get install dataset-fashion-mnist (Debian) or " if name == "fashion_mnist" else ""
        raise DataError(
            f"data: no {name} IDX files ({prefix}-images-idx3-ubyte[.gz]) in "
            f"{', '.join(map(str, dirs)) or '(no data.root)'}; get them with {hint}"
            f"data.root=DIR data.download=true"
        )
    images, targets = _read_idx(images_file), _read_idx(labels_file).long()
    return Split(TensorImages(images.unsqueeze(1), targets), list(tv_class.classes))


def cifar(name: str, root: str | None, train: bool, download: bool) -> Split:
    tv_class = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    if not root:
        raise DataError(f"data.root: {name} needs a directory (with cifar-*-batches-py/ in it)")
    try:
        ds = tv_class(root, train=train, download=download)
    except RuntimeError as e:
        raise DataError(f"data: {name} not found in {root} ({e}); add data.download=true when online") from None
    except Exception as e:
        raise DataError(f"data: could not download {name} to {root}: {e}") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return Split(TensorImages(images, torch.tensor(ds.targets)), list(ds.classes))


def _open_image(path: str) -> Image.Image:
    """Any PIL-readable file as RGB: grayscale, palette, CMYK and RGBA (alpha dropped) included."""
    with open(path, "rb") as f:
        image = Image.open(f)
        if image.mode.startswith("I"):  # 16-bit PNG: PIL's convert would clip every value above 255
            image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8))
        return image.convert("RGB")


class BadImage(NamedTuple):
    """What a sample becomes when its file does not decode: the batch leaves it out (loader.py)."""

    path: str
    reason: str


def class_folders(directory) -> tuple[list[str], list[str]]:
    """A split's class folders, sorted, and its hidden entries, which are never classes."""
    entries = list(os.scandir(directory))
    hidden = sorted(os.path.join(directory, e.name) for e in entries if e.name.startswith("."))
    return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".")), hidden


class ImageFiles(torchvision.datasets.ImageFolder):
    """ImageFolder whose unreadable files (truncated, empty, not images) become BadImage samples, found
    where they are decoded: in the DataLoader workers. Linked folders are followed (data sets shared between
    users), except into a loop or into another class, whose images would be mislabelled. Hidden files and
    folders (.ipynb_checkpoints, macOS's ._ copies, .git) are tools' leftovers: never classes nor images."""

    def find_classes(self, directory):
        classes, self.hidden = class_folders(directory)
        if not classes:
            raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
        return classes, {name: index for index, name in enumerate(classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        self.skipped_links = []
        if is_valid_file is None:

            def is_valid_file(path):
                return torchvision.datasets.folder.has_file_allowed_extension(path, extensions)

        split = os.path.realpath(directory)
        samples = []
        for name, index in sorted(class_to_idx.items()):
            top = os.path.join(directory, name)
            own, visited = os.path.realpath(top), {os.path.realpath(top)}
            for folder, subfolders, files in os.walk(top, followlinks=True):
                self.hidden += [os.path.join(folder, f) for f in files + subfolders if f.startswith(".")]
                subfolders[:] = [sub for sub in subfolders if not sub.startswith(".")]
                files = [f for f in files if not f.startswith(".")]
                for sub in list(subfolders):
                    real = os.path.realpath(os.path.join(folder, sub))
                    into_other_class = (
                        os.path.commonpath([real, split]) == split and os.path.commonpath([real, own]) != own
                    )
                    if real in visited or own.startswith(real + os.sep) or into_other_class:
                        subfolders.remove(sub)
                        self.skipped_links.append(f"{os.path.join(folder, sub)} -> {real}")
                    visited.add(real)
                subfolders.sort()
                samples += [
                    (path, index) for path in (os.path.join(folder, f) for f in sorted(files)) if is_valid_file(path)
                ]
        return samples

    def __getitem__(self, index):
        try:
            return super().__getitem__(index)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for a corrupt file
            return BadImage(self.samples[index][0], f"{type(e).__name__}: {e}")


def image_folder(name: str, root: str | None, train: bool, download: bool, *, on_bad_image: str) -> Split:
    """ImageNet's layout: root/train/<class>/* and root/val/<class>/* (class = wnid or any name)."""
    split = Path(root or ".") / ("train" if train else "val")
    if not root or not split.is_dir():
        raise DataError(
            f"data.root: {name} expects class folders in {split} (root/train/<class>/*.jpg and root/val/<class>/*.jpg)"
        )
    not_images = []

    def is_image(path: str) -> bool:
        if torchvision.datasets.folder.has_file_allowed_extension(path, torchvision.datasets.folder.IMG_EXTENSIONS):
            return True
        not_images.append(path)
        return False

    try:
        ds = ImageFiles(str(split), loader=_open_image, is_valid_file=is_image, allow_empty=True)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"data.root: {e}") from None
    warnings = []
    if not_images:
        warnings.append(
            f"data: {len(not_images)} files in {split} are not images by their names, left out: "
            f"{', '.join(not_images[:5])}{', ...' if len(not_images) > 5 else ''}"
        )
    if ds.hidden:
        warnings.append(
            f"data: {len(ds.hidden)} hidden files and folders in {split} left out: "
            f"{', '.join(ds.hidden[:5])}{', ...' if len(ds.hidden) > 5 else ''}"
        )
    if ds.skipped_links:
        warnings.append(
            f"data: linked folders in {split} left out (a loop, or another class's images): "
            f"{', '.join(ds.skipped_links)}"
        )
    empty = sorted(set(ds.classes) - {ds.classes[target] for target in ds.targets})
    if empty and on_bad_image == "error":
        raise DataError(f"data.root: class folders without images in {split}: {', '.join(empty)}")
    if empty:
        warnings.append(f"data: class folders without images in {split}: {', '.join(empty)} (kept as classes)")
    return Split(ds, list(ds.classes), warnings)


class ListedFiles(ImageFiles):
    """ImageFiles over listed (path, class index) samples instead of class folders."""

    def __init__(self, root: str, classes: list[str], samples: list[tuple[str, int]], **kwargs):
        self.listed = classes, samples
        super().__init__(root, **kwargs)

    def find_classes(self, directory):
        return self.listed[0], {c: i for i, c in enumerate(self.listed[0])}

    def make_dataset(self, directory, class_to_idx, **kwargs):
        return self.listed[1]


def labelled_val(root: str, labels_file: Path) -> Split:
    """ImageNet's val split as it ships (root/val/*.JPEG and a labels file, imagenet.py), in the classes of
    root/train's folders; without root/train (evaluating elsewhere), the classes the labels name."""
    train_folder, val_folder = Path(root) / "train", Path(root) / "val"
    labels = imagenet.read_val_labels(labels_file)
    classes = class_folders(train_folder)[0] if train_folder.is_dir() else sorted(set(labels.values()))
    samples, not_images = imagenet.val_samples(val_folder, labels, labels_file, classes)
    warnings = (
        [
            f"data: {len(not_images)} files in {val_folder} are not images by their names, left out: "
            f"{', '.join(not_images[:5])}{', ...' if len(not_images) > 5 else ''}"
        ]
        if not_images
        else []
    )
    return Split(ListedFiles(str(val_folder), classes, samples, loader=_open_image), classes, warnings)


def synthetic(
    name: str, root, train: bool, download, *, size: int, image_size: int, channels: int, num_classes: int
) -> Split:
    """Random images around one random prototype per class: learnable, so a smoke run shows learning.
    Built in uint8 throughout: a GPU benchmark's set at 224 px is gigabytes, and int64 eight times that."""
    g = torch.Generator().manual_seed(0)
    shape = (channels, image_size, image_size)
    prototypes = torch.randint(0, 256, (num_classes, *shape), generator=g, dtype=torch.uint8)
    g.manual_seed(1 if train else 2)
    targets = torch.randint(0, num_classes, (size,), generator=g)
    noise = torch.randint(0, 256, (size, *shape), generator=g, dtype=torch.uint8)
    like = prototypes[targets]
    images = (noise >> 1).add_(like >> 1).add_(noise & like & 1)  # (noise + like) // 2, within uint8
    return Split(TensorImages(images, targets), [f"class_{i}" for i in range(num_classes)])


@dataclass(frozen=True)
class DataSet:
    """What cnnbench knows of a data set besides its conf/data/NAME.yaml (channels, size, mean and std): how
    its splits are read, and its class count where it is fixed, for bench, which reads no file."""

    load: object  # (name, root, train, download) -> Split
    num_classes: int | None = None  # None: its files say (or data.num_classes, for synthetic)

    @property
    def files(self) -> bool:
        """An ImageFolder tree of image files (ImageNet's layout), decoded per batch."""
        return self.load is image_folder


DATASETS = {
    "fashion_mnist": DataSet(mnist_like, 10),
    "mnist": DataSet(mnist_like, 10),
    "cifar10": DataSet(cifar, 10),
    "cifar100": DataSet(cifar, 100),
    "imagenet": DataSet(image_folder, 1000),
    "imagefolder": DataSet(image_folder),
    "synthetic": DataSet(synthetic),
}


def dataset(name: str) -> DataSet:
    if name not in DATASETS:
        raise DataError(f"data.name: unknown data set '{name}' (known: {', '.join(DATASETS)})")
    return DATASETS[name]


def load_split(data_cfg, train: bool, transform) -> Split:
    """One split of data set `data.name`, its samples passed through `transform`."""
    source = dataset(data_cfg.name)
    root = os.path.expanduser(data_cfg.root) if data_cfg.root else None
    if source.load is synthetic:
        size = (data_cfg.train_size if train else data_cfg.val_size) or (1024 if train else 256)
        split = synthetic(
            data_cfg.name,
            root,
            train,
            False,
            size=size,
            image_size=data_cfg.image_size,
            channels=data_cfg.channels,
            num_classes=data_cfg.num_classes or 10,
        )
    elif (
        source.files
        and not train
        and root
        and (labels_file := imagenet.val_labels_file(Path(root), data_cfg.get("val_labels")))
    ):
        split = labelled_val(root, labels_file)
    elif source.files:
        split = image_folder(data_cfg.name, root, train, data_cfg.download, on_bad_image=data_cfg.on_bad_image)
    else:
        split = source.load(data_cfg.name, root, train, data_cfg.download)
    targets = torch.as_tensor(split.dataset.targets)
    if len(targets) and not 0 <= targets.min() <= targets.max() < len(split.classes):
        index = int(((targets < 0) | (targets >= len(split.classes))).nonzero()[0])
        raise DataError(
            f"data: {data_cfg.name} ({'train' if train else 'val'}) sample {index} has label "
            f"{int(targets[index])}, outside [0, {len(split.classes)}) "
            f"for its {len(split.classes)} classes"
        )
    split.dataset.transform = transform
    limit = data_cfg.train_size if train else data_cfg.val_size
    if limit is not None and limit < len(split.dataset):
        # A fixed random subset (seed 0), so every run of a sweep sees the same samples.
        keep = torch.randperm(len(split.dataset), generator=torch.Generator().manual_seed(0))[:limit]
        split.dataset = torch.utils.data.Subset(split.dataset, keep.sort().values.tolist())
    return split
