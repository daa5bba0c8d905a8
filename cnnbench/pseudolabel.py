"""`python -m cnnbench.pseudolabel checkpoint=TEACHER data.train_size=N [output=PATH]`: Noisy Student's
pseudo-labels (Xie, Luong, Hovy and Le 2020). The teacher, without noise (eval mode, eval crop), gives soft
labels to the training split's images outside its labeled data.train_size subset; `python -m cnnbench.train
data.train_size=N data.pseudo_labels=PATH augmentation=randaugment ...` then trains a noised student on both,
and the student becomes the next teacher (README, "Techniques").
"""

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cnnbench.cli import hydra_app
from cnnbench.config import AugmentationConfig, register_configs
from cnnbench.data.datasets import load_split
from cnnbench.data.loader import loader_workers
from cnnbench.data.pseudo_labels import save_pseudo_labels, unlabeled_pool
from cnnbench.data.transforms import Normalize, build_transforms
from cnnbench.engine.device import place
from cnnbench.engine.distill import load_teacher
from cnnbench.engine.tta import batch_logits
from cnnbench.errors import ConfigError
from cnnbench.sweep import run_job

log = logging.getLogger("cnnbench")
register_configs()


@torch.no_grad()
def pseudolabel(cfg: DictConfig) -> dict:
    if cfg.pool_size is not None and cfg.pool_size <= 0:
        raise ConfigError(f"pool_size: null or > 0, got {cfg.pool_size}")
    if not 0 <= cfg.threshold < 1:
        raise ConfigError(f"threshold: in [0, 1), got {cfg.threshold}")
    if cfg.per_class is not None and cfg.per_class <= 0:
        raise ConfigError(f"per_class: null or > 0, got {cfg.per_class}")
    placement = place(cfg.hardware)
    split = load_split(cfg.data, True, transform=None)
    teacher, state = load_teacher(cfg.checkpoint, split.classes, cfg.data.channels, placement.device, "checkpoint")
    whole, pool = unlabeled_pool(split, cfg.data, cfg.pool_size)
    # The teacher's own eval transform: it sees the pool as it saw its validation images.
    augmentation = OmegaConf.merge(OmegaConf.structured(AugmentationConfig), state["config"]["augmentation"])
    whole.transform = build_transforms(augmentation, cfg.data, train=False)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(whole, pool), batch_size=cfg.data.batch_size, num_workers=loader_workers(cfg.data)
    )
    probabilities, labels = [], []
    for logits, targets in batch_logits(teacher, loader, Normalize(cfg.data).to(placement.device), placement):
        probabilities.append(logits.softmax(1).cpu())
        labels.append(targets.cpu())
    probabilities, labels = torch.cat(probabilities), torch.cat(labels)
    confidence, predicted = probabilities.max(1)
    keep = (confidence >= cfg.threshold).nonzero().squeeze(1)
    if cfg.per_class is not None:
        keep = balanced(keep, confidence, predicted, cfg.per_class, len(split.classes))
    indices = [pool[i] for i in keep.tolist()]
    save_pseudo_labels(Path(cfg.output), indices, probabilities[keep], split, cfg.data, cfg.checkpoint)
    # The pool's true labels are at hand here (it is a labeled set posing as unlabeled): how good the teacher is.
    accuracy = 100 * (predicted[keep] == labels[keep]).float().mean().item()
    log.info(
        f"pseudo-labelled {len(indices)} of {len(pool)} pool images (threshold {cfg.threshold}, per_class "
        f"{cfg.per_class}) with {cfg.checkpoint}; their argmax agrees with the hidden labels on "
        f"{accuracy:.2f}%; wrote {cfg.output}"
    )
    return {"pool": len(pool), "kept": len(indices), "pseudo_label_top1": accuracy, "output": cfg.output}


def balanced(
    keep: torch.Tensor, confidence: torch.Tensor, predicted: torch.Tensor, per_class: int, num_classes: int
) -> torch.Tensor:
    """`per_class` of `keep` for each predicted class, most confident first, cycled where a class has fewer:
    without it the easy classes, where the teacher is confident, would outnumber the hard ones."""
    chosen = []
    for c in range(num_classes):
        members = keep[predicted[keep] == c]
        if len(members):
            members = members[confidence[members].argsort(descending=True, stable=True)]
            chosen.append(members.repeat(-(-per_class // len(members)))[:per_class])
    return torch.cat(chosen) if chosen else keep


@hydra_app("pseudolabel")
def main(cfg: DictConfig) -> None:
    run_job(cfg, pseudolabel, cfg, record=None)


if __name__ == "__main__":
    main()
