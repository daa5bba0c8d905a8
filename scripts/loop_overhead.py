"""The trainer's images/s over a bare training step's, for the same model, batch, precision and optimizer,
measured in one process, alternating, so that load on the machine hits both alike.

    python scripts/loop_overhead.py [rounds] [hydra overrides ...]
    python scripts/loop_overhead.py 3 model=fmnist_cnn data.batch_size=128 hardware=cpu

Bare step: forward, cross-entropy, backward, optimizer step and zero_grad on one normalized batch already
on the device. Trainer: train(cfg) on Fashion-MNIST (device-resident, augmentation=none) for two epochs;
its second epoch's train_img_per_s (metrics.csv) counts, so both are warm.
"""
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from cnnbench.config import register_configs
from cnnbench.data import build_data
from cnnbench.engine.trainer import resolve_device, train
from cnnbench.models import create_model

CONF = str(Path(__file__).resolve().parents[1] / "conf")
STEPS = 40  # an epoch of the trainer, and the bare step's timed stretch


def config(run_dir: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=[
            f"run_dir={run_dir}", "model=fmnist_cnn", "data=fashion_mnist", "data.batch_size=128",
            "hardware=cpu", "hardware.channels_last=true", "augmentation=none", "train.epochs=2",
            f"train.limit_train_batches={STEPS}", "train.limit_val_batches=1", "train.log_every_steps=1000",
            *overrides])


def bare_step_images_per_s(cfg) -> float:
    device, _ = resolve_device(cfg.hardware)
    data = build_data(cfg, device=device)
    images, targets = next(iter(data.train_loader))
    images = data.normalize.to(device)(images.to(device, memory_format=torch.channels_last))
    model = create_model(**OmegaConf.to_container(cfg.model, resolve=True), num_classes=10, in_chans=1,
                         image_size=cfg.data.image_size).to(device, memory_format=torch.channels_last)
    optimizer_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    optimizer_cfg.pop("lr_reference_batch")
    optimizer = instantiate(optimizer_cfg)(model)

    def step():
        loss = F.cross_entropy(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    started = time.perf_counter()
    for _ in range(STEPS):
        step()
    return STEPS * len(targets) / (time.perf_counter() - started)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    register_configs()
    ratios = []
    for r in range(rounds):
        with tempfile.TemporaryDirectory() as run_dir:
            cfg = config(run_dir, sys.argv[2:])
            bare = bare_step_images_per_s(cfg)
            trainer = train(cfg)["train_img_per_s"]  # the last (second) epoch's
        ratios.append(trainer / bare)
        print(f"round {r}: bare step {bare:.0f} img/s, trainer {trainer:.0f} img/s, ratio {trainer / bare:.3f}",
              flush=True)
    print(f"trainer / bare step: median {statistics.median(ratios):.3f} over {rounds} rounds")


if __name__ == "__main__":
    main()
