"""The speedrun presets (conf/experiment/): they compose into a real run, and what they add to the trainer
(flip TTA in validation, the linear schedule) does what it says. The full run is not a test: its
command and result are in README.md."""

import csv

import pytest

from cnnbench.engine.inference import evaluate
from cnnbench.engine.trainer import train

from .helpers import make_config

# The CPU preset on 2048 real Fashion-MNIST images: two updates of its batch of 512.
SPEEDRUN = [
    "experiment=fmnist_speedrun",
    "data.train_size=2048",
    "data.val_size=512",
    "train.budget_tflop=null",  # the preset's budget is 14 epochs: one epoch of two batches here
    "train.epochs=1",
    "train.limit_train_batches=2",
    "hardware=cpu",
]


@pytest.fixture(scope="module")
def speedrun(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("speedrun")
    cfg = make_config(run_dir, *SPEEDRUN)
    return run_dir, cfg, train(cfg)


def test_speedrun_preset_composes_and_trains(speedrun):
    run_dir, cfg, summary = speedrun
    assert (cfg.model.name, cfg.optimizer.opt, cfg.scheduler.sched, cfg.augmentation.name, cfg.eval.tta.value) == (
        "compact_cnn",
        "sgd",
        "poly",
        "basic",
        "flip",
    )
    assert summary["status"] == "completed" and summary["model"] == "compact_cnn" and summary["step"] == 2
    log = (run_dir / "train.log").read_text()
    assert "device-resident" in log and "train.whiten_stem: 0 (1->16, 3x3) whitens the patches" in log
    with open(run_dir / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["lr"]) == 0.0  # the linear schedule ends at min_lr
    assert 0 <= float(row["val_top1"]) <= 100


@pytest.mark.parametrize("gpu", [False, True], ids=["fmnist_speedrun", "fmnist_speedrun_gpu"])
def test_presets_compose(gpu, tmp_path):
    cfg = make_config(tmp_path, f"experiment={'fmnist_speedrun_gpu' if gpu else 'fmnist_speedrun'}")
    assert cfg.model.name == "compact_cnn" and cfg.data.device_resident is True
    assert (cfg.hardware.device.value, cfg.hardware.compile) == (("cuda", True) if gpu else ("auto", "auto"))
    # the CPU record's budget (40 TFLOP at most); the GPU preset's 10 epochs of a wider net
    assert (cfg.train.budget_tflop, cfg.train.whiten_stem) == ((None, True) if gpu else (39.9, True))


def test_flip_tta_validation_gives_what_evaluate_gives(speedrun, tmp_path):
    """eval.tta=flip in training gives the numbers cnnbench.evaluate gives with eval.tta=flip (and not
    those without it), on the same checkpoint and val split."""
    run_dir, _, summary = speedrun
    with open(run_dir / "metrics.csv") as f:
        (row,) = list(csv.DictReader(f))
    results = {
        tta: evaluate(
            make_config(
                tmp_path / tta,
                f"checkpoint={run_dir}/checkpoints/best.pt",
                "hardware=cpu",
                f"eval.tta={tta}",
                app="evaluate",
            )
        )
        for tta in ("flip", "none")
    }
    assert results["flip"]["samples"] == 512
    assert results["flip"]["top1"] == pytest.approx(summary["best_val_top1"], abs=1e-9)
    assert results["flip"]["loss"] == pytest.approx(float(row["val_loss"]), rel=1e-5)
    assert results["none"]["loss"] != pytest.approx(float(row["val_loss"]), rel=1e-5)
