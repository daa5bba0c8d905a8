"""Noisy Student's pseudo-labels (Xie, Luong, Hovy and Le 2020, "Self-training with Noisy Student improves
ImageNet classification"): a teacher's soft targets for the unlabeled pool.

The labeled part of a training split is its `data.train_size` subset; the rest is the pool. A file
written by `cnnbench.pseudolabel` holds the pool's indices into the whole training split, one soft
target (the teacher's class probabilities) per index, and the data set, labeled size and classes it
was made for, so a run on other data refuses it.
"""

import pickle
from pathlib import Path

import torch

from cnnbench.engine.checkpoint import save_checkpoint
from cnnbench.errors import DataError

from .datasets import Split


class SoftTargets(torch.utils.data.Dataset):
    """(image, class probabilities): the given soft targets, or one-hot vectors of the labels."""

    def __init__(self, dataset, num_classes: int, soft_targets: torch.Tensor | None = None):
        self.dataset, self.num_classes, self.soft_targets = dataset, num_classes, soft_targets

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        if self.soft_targets is not None:
            return image, self.soft_targets[index]
        return image, torch.nn.functional.one_hot(torch.as_tensor(label), self.num_classes).float()


def unlabeled_pool(split: Split, data_cfg, pool_size: int | None = None) -> tuple[torch.utils.data.Dataset, list[int]]:
    """The whole training split, and the indices outside its labeled `data.train_size` subset: all of them,
    or a fixed random `pool_size` of them (the same for pseudolabel and Meta Pseudo Labels)."""
    if not isinstance(split.dataset, torch.utils.data.Subset):
        raise DataError(
            f"data.train_size: marks the labeled part of {data_cfg.name}'s training split (the rest "
            f"is the unlabeled pool); set it below the split's size"
        )
    whole = split.dataset.dataset
    labeled = set(split.dataset.indices)
    pool = [i for i in range(len(whole)) if i not in labeled]
    if pool_size is not None and pool_size < len(pool):
        keep = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:pool_size]
        pool = sorted(pool[i] for i in keep.tolist())
    return whole, pool


def save_pseudo_labels(
    path: Path, indices: list[int], soft_targets: torch.Tensor, split: Split, data_cfg, teacher: str
) -> None:
    # Atomically, as a checkpoint is: an interrupted pseudolabel leaves no half-written file to train on.
    save_checkpoint(
        {
            "indices": torch.tensor(indices),
            "soft_targets": soft_targets,
            "classes": split.classes,
            "data": data_cfg.name,
            "train_size": data_cfg.train_size,
            "teacher": teacher,
        },
        path,
    )


def with_pseudo_labels(split: Split, data_cfg) -> Split:
    """The labeled subset (one-hot targets) joined by the pseudo-labeled pool (soft targets)."""
    path = Path(data_cfg.pseudo_labels)
    try:
        pseudo = torch.load(path, map_location="cpu", weights_only=True)
        indices, soft_targets = pseudo["indices"], pseudo["soft_targets"]
    except FileNotFoundError:
        raise DataError(f"data.pseudo_labels: no such file {path}") from None
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, TypeError) as e:
        raise DataError(f"data.pseudo_labels: {path} is not a cnnbench.pseudolabel file ({e})") from None
    made_for = (pseudo.get("data"), pseudo.get("train_size"), pseudo.get("classes"))
    if made_for != (data_cfg.name, data_cfg.train_size, split.classes):
        raise DataError(
            f"data.pseudo_labels: {path} labels the pool of {made_for[0]} with data.train_size="
            f"{made_for[1]}, not of {data_cfg.name} with data.train_size={data_cfg.train_size}"
        )
    whole, _ = unlabeled_pool(split, data_cfg)
    num_classes = len(split.classes)
    dataset = torch.utils.data.ConcatDataset(
        [
            SoftTargets(split.dataset, num_classes),
            SoftTargets(torch.utils.data.Subset(whole, indices.tolist()), num_classes, soft_targets),
        ]
    )
    return Split(dataset, split.classes)
