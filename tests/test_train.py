"""End-to-end training on real and generated data, and what a run leaves behind."""
import csv
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench.data.datasets import DEBIAN_FASHION_MNIST
from cnnbench.engine.checkpoint import load_checkpoint
from cnnbench.engine.recorder import METRICS
from cnnbench.engine.trainer import train

from .helpers import make_config, make_image_tree, run_cli


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_fashion_mnist_learns(tmp_path):
    """A few dozen steps on the real Fashion-MNIST lift test accuracy far above chance (10%)."""
    cfg = make_config(tmp_path, "model=lenet5", "model.variant=modern", "data.train_size=6000",
                      "data.batch_size=64", "train.epochs=1", "data.val_size=2000", "hardware=cpu")
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["data"] == "fashion_mnist"
    assert summary["final_val_top1"] > 60
    rows = read_metrics(tmp_path)
    assert list(rows[0]) == METRICS and len(rows) == 1 and int(rows[0]["step"]) == 6000 // 64


def test_run_directory_holds_the_contract(tmp_path, smoke):
    summary = train(make_config(tmp_path, *smoke, "train.epochs=2", "train.log_every_steps=2"))
    for name in ("metrics.csv", "summary.json", "train.log", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    for key in ("model", "params", "gflops", "data", "best_val_top1", "best_val_top5", "best_epoch",
                "final_val_top1", "final_val_top5", "wall_time_s", "status"):
        assert key in on_disk, key
    rows = read_metrics(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(0 <= float(r[k]) <= 100 for r in rows for k in ("train_top1", "val_top1", "val_top5"))
    assert summary["best_val_top1"] == max(float(r["val_top1"]) for r in rows)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    assert state["config"]["model"]["name"] == "lenet5" and state["step"] == 2 * 256 // 32
    assert "epoch 1: train loss" in (tmp_path / "train.log").read_text()


def test_tensorboard_reader_finds_scalars(tmp_path, smoke):
    train(make_config(tmp_path, *smoke, "train.epochs=2", "train.log_every_steps=2"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("train/loss", "train/lr", "val/top1", "val/top5", "val/loss", "hparam/best_val_top1"):
        assert tag in tags, tag
    assert [e.step for e in events.Scalars("val/top1")] == [8, 16]
    rows = read_metrics(tmp_path)
    assert events.Scalars("val/top1")[-1].value == pytest.approx(float(rows[-1]["val_top1"]))


def test_fewer_than_five_classes_report_top_k(tmp_path, smoke):
    summary = train(make_config(tmp_path, *smoke, "data.num_classes=3", "train.epochs=1"))
    assert summary["top5_k"] == 3
    assert summary["final_val_top5"] == 100.0  # top-3 of 3 classes always hits
    assert "val_top5 is top-3" in (tmp_path / "train.log").read_text()


def test_imagenet_layout_trains_and_validates(tmp_path):
    classes = make_image_tree(tmp_path / "images")
    run = tmp_path / "run"
    summary = train(make_config(run, "data=imagenet", f"data.root={tmp_path / 'images'}", "data.image_size=32",
                                "data.batch_size=6", "data.workers=0", "augmentation=imagenet",
                                "model=resnet18", "model.width_mult=0.25", "train.epochs=1", "hardware=cpu"))
    assert summary["status"] == "completed" and summary["top5_k"] == 3
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["classes"] == list(classes)
    assert state["model"]["fc.weight"].shape[0] == 3


def test_synthetic_data_trains_with_grad_accumulation_and_clipping(tmp_path, smoke):
    summary = train(make_config(tmp_path, *smoke, "train.epochs=3", "train.grad_accum_steps=2",
                                "train.clip_grad_norm=1.0", "optimizer=adamw", "optimizer.lr=0.01", "scheduler=step",
                                "scheduler.decay_epochs=2", "scheduler.warmup_epochs=0.5"))
    rows = read_metrics(tmp_path)
    assert [int(r["step"]) for r in rows] == [4, 8, 12]  # 8 batches / 2 micro-steps per update
    assert float(rows[0]["train_loss"]) > float(rows[-1]["train_loss"])
    assert summary["final_val_top1"] > 30  # 10 prototype classes: learnable


@pytest.mark.slow  # a real command in a subprocess
def test_missing_fashion_mnist_is_a_clear_error(tmp_path):
    result = run_cli(f"data.root={tmp_path}", "data=mnist", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert result.returncode == 2
    assert "no mnist IDX files" in result.stderr and str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr


def test_fashion_mnist_is_installed():
    """`make setup` installs Debian's copy; the default run reads it from there."""
    assert (torch.load if False else open)(f"{DEBIAN_FASHION_MNIST}/t10k-labels-idx1-ubyte.gz", "rb").read(2)


def test_compound_scaling_grows_depth_width_and_image_size(tmp_path):
    """model.phi=1 (compound scaling, Tan and Le 2019): depth x1.2, width x1.1, image side x1.15 (32 -> 36)."""
    base = ["data=synthetic", "data.train_size=64", "data.val_size=32", "data.batch_size=32",
            "model=resnet18", "model.width_mult=0.25", "train.epochs=1", "hardware=cpu"]
    plain = train(make_config(tmp_path / "plain", *base))
    scaled = train(make_config(tmp_path / "scaled", *base, "model.phi=1"))
    config = load_checkpoint(tmp_path / "scaled" / "checkpoints" / "last.pt")["config"]
    assert config["data"]["image_size"] == 36
    assert scaled["params"] > plain["params"] and scaled["gflops"] > plain["gflops"]
