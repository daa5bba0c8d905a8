"""Speed features, checked for correctness (never for time): the trainer-vs-bare-step benchmark, JPEG
decoding on a device (exercised on `cpu` through the code a GPU runs), the loader keys, compile=auto."""

import json
import os
import statistics

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from cnnbench.bench import TRAIN_FLOP_FORMULAS
from cnnbench.config import check_config
from cnnbench.data import build_data
from cnnbench.engine.device import compiles
from cnnbench.engine.trainer import train
from cnnbench.errors import ConfigError, DataError
from cnnbench.report import main as report

from .helpers import bad_image_tree, make_config, run_cli

TINY_BENCH = [
    "model=lenet5",
    "data=synthetic",
    "data.image_size=28",
    "data.channels=1",
    "data.batch_size=16",
    "hardware=cpu",
    "bench.warmup_steps=1",
    "bench.windows=2",
    "bench.steps_per_window=2",
    "bench.matmul_size=256",
]


@pytest.mark.parametrize("groups", [1, 64])
def test_a_convolutions_backward_counts_its_forward_once_per_gradient(groups):
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=groups, bias=False)
    images = torch.randn(8, 64, 14, 14, requires_grad=True)
    with FlopCounterMode(display=False) as forward:
        conv(images)
    with FlopCounterMode(display=False, custom_mapping=TRAIN_FLOP_FORMULAS) as train:
        conv(images).sum().backward()
    assert train.get_total_flops() == 3 * forward.get_total_flops()  # forward, input and weight gradients
    if groups == 1:  # torch's own count, where it is right
        with FlopCounterMode(display=False) as torch_count:
            conv(images).sum().backward()
        assert train.get_total_flops() == torch_count.get_total_flops()


@pytest.mark.slow  # a real command in a subprocess
def test_bench_trainer_columns_are_consistent(tmp_path, capsys):
    result = run_cli(
        *TINY_BENCH,
        "bench.trainer=true",
        "bench.trainer_rounds=2",
        f"hydra.run.dir={tmp_path / 'lenet5'}",
        module="cnnbench.bench",
    )
    assert result.returncode == 0, result.stderr
    assert "epoch 1: train loss" in result.stdout  # the timed numbers came from train()'s own epochs
    b = json.loads((tmp_path / "lenet5" / "bench.json").read_text())
    assert b["trainer_img_per_s"] > 0 and b["train_img_per_s"] > 0
    # Two rounds, each against the bare step timed just before and after it: their median.
    assert len(b["trainer_round_ratios"]) == 2 and all(r > 0 for r in b["trainer_round_ratios"])
    assert b["trainer_ratio"] == pytest.approx(statistics.median(b["trainer_round_ratios"]))
    assert b["trainer_tflops"] == pytest.approx(b["train_gflops"] * b["trainer_img_per_s"] / 1e3, rel=1e-3)
    assert b["trainer_matmul_fraction"] == pytest.approx(b["trainer_tflops"] / b["matmul_tflops"], rel=2e-3, abs=1e-4)
    report([str(tmp_path)])
    header, _, row = (tmp_path / "bench.md").read_text().splitlines()
    cells = dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | ")))
    assert float(cells["trainer_ratio"]) == pytest.approx(b["trainer_ratio"], rel=1e-3)
    assert "input_img_per_s" not in cells  # only what was measured


@pytest.fixture(scope="module")
def image_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root, bad_image_tree(root)


def loaders(root, *overrides):
    cfg = make_config(
        root / "run",
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=32",
        "data.batch_size=6",
        "data.workers=1",
        "model=lenet5",
        "hardware=cpu",
        "augmentation=imagenet",
        *overrides,
    )
    return build_data(cfg)


def test_decode_on_a_device_matches_pil_and_skips_the_same_files(image_tree):
    root, bad = image_tree
    pil, decoded = loaders(root), loaders(root, "data.decode_device=cpu")
    for loader in ("val_loader", "train_loader"):  # the same seeds: the same random crops and flips
        pairs = list(zip(getattr(pil, loader), getattr(decoded, loader), strict=True))
        for (pil_images, pil_labels), (images, labels) in pairs:
            assert torch.equal(pil_labels, labels) and images.shape == pil_images.shape == (len(labels), 3, 32, 32)
            assert images.dtype == torch.uint8 and images.device.type == "cpu"
            difference = (images.int() - pil_images.int()).abs()
            assert difference.float().mean() <= 1 and difference.max() <= 16  # two JPEG decoders' rounding
    assert sorted(decoded.skipped_images) == sorted(pil.skipped_images) == bad
    with pytest.raises(DataError, match="not a readable image"):
        list(loaders(root, "data.decode_device=cpu", "data.on_bad_image=error").train_loader)


def png_tree(root):
    """Two classes of lossless PNGs: decoded anywhere, the same pixels."""
    for split, count in (("train", 6), ("val", 2)):
        for c in range(2):
            (root / split / f"class_{c}").mkdir(parents=True)
            for i in range(count):
                pixels = np.random.default_rng(i).integers(0, 255, (40, 48, 3), np.uint8)
                Image.fromarray(pixels).save(root / split / f"class_{c}" / f"{i}.png")


def test_decode_on_a_device_takes_a_batch_without_jpegs(tmp_path):
    png_tree(tmp_path)  # PNGs only: no batch holds a JPEG (issue 20, item 2)
    pil, decoded = loaders(tmp_path), loaders(tmp_path, "data.decode_device=cpu")
    for loader in ("val_loader", "train_loader"):
        pairs = list(zip(getattr(pil, loader), getattr(decoded, loader), strict=True))
        assert pairs
        for (pil_images, pil_labels), (images, labels) in pairs:  # lossless files: the same pixels
            assert torch.equal(pil_labels, labels) and torch.equal(pil_images, images)


@pytest.mark.parametrize("channels", [3, 1])
def test_decode_on_a_device_lights_the_batch_at_once_as_pil_lights_each_image(tmp_path, channels):
    """AlexNet's lighting after imagenet crops: one add for the decoded batch (issue 20, item 13), each
    image's shift drawn where the per-image transform draws it, so the images are the PIL path's."""
    png_tree(tmp_path)
    lit = [
        "augmentation.lighting=0.1",
        f"data.channels={channels}",
        *(["data.mean=[0.5]", "data.std=[0.25]"] if channels == 1 else []),
    ]
    pil, decoded = loaders(tmp_path, *lit), loaders(tmp_path, *lit, "data.decode_device=cpu")
    assert decoded.train_loader.loader.lighting is not None  # the batched path, not the per-image one
    pairs = list(zip(pil.train_loader, decoded.train_loader, strict=True))
    assert pairs
    for (pil_images, pil_labels), (images, labels) in pairs:
        assert images.shape == (len(labels), channels, 32, 32)
        assert torch.equal(pil_labels, labels) and torch.equal(pil_images, images)


def test_training_with_decode_device_auto_names_the_bad_files(image_tree, tmp_path):
    root, bad = image_tree
    summary = train(
        make_config(
            tmp_path,
            "data=imagefolder",
            f"data.root={root}",
            "data.image_size=32",
            "data.batch_size=6",
            "data.workers=0",
            "model=lenet5",
            "hardware=cpu",
            "train.epochs=1",
            "data.decode_device=auto",
        )
    )
    assert summary["status"] == "completed" and sorted(summary["skipped_images"]) == bad


def test_loader_keys(image_tree, tmp_path):
    root, _ = image_tree
    loader = loaders(root, "data.workers=null", "data.prefetch_factor=3").train_loader.loader
    assert loader.num_workers == min(8, len(os.sched_getaffinity(0)))
    assert loader.prefetch_factor == 3 and loader.persistent_workers and not loader.pin_memory  # pinned on CUDA only
    for overrides, message in [
        (["data.prefetch_factor=2", "data.workers=0"], "data.prefetch_factor: workers"),
        (["data.decode_device=cpu"], "data.decode_device: decodes the files"),
        (["hardware.compile=sometimes"], "hardware.compile: true, false or auto"),
    ]:
        with pytest.raises(ConfigError, match=message):
            cfg = make_config(tmp_path, *overrides)
            check_config(cfg)
            build_data(cfg)


def test_compile_auto_is_on_for_gpus_only(tmp_path):
    hardware = make_config(tmp_path).hardware
    assert hardware.compile == "auto"
    assert not compiles(hardware, torch.device("cpu")) and compiles(hardware, torch.device("cuda"))
    hardware.compile = True
    assert compiles(hardware, torch.device("cpu"))
