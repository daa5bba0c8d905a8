"""Budgeted training (train.budget_tflop, train.budget_images): the steps that follow from a budget, a
schedule that ends exactly there, and exact resume of a run whose last epoch the budget cuts short."""

import json
import math
import os
import signal
import threading
import time

import pytest
import torch
from hydra.utils import instantiate

from cnnbench.config import check_config
from cnnbench.engine.build import Network, build_optimization, training_length
from cnnbench.engine.checkpoint import load_checkpoint
from cnnbench.engine.device import place
from cnnbench.engine.trainer import train
from cnnbench.errors import CheckpointError, ConfigError, Interrupted

from .helpers import SMOKE, assert_same_weights_and_optimizer, make_config, metrics, reproducible_metrics

# SMOKE's 256 images in batches of 32: 8 steps an epoch. 384 images are 12 steps: one epoch and a half.
BUDGET = [*SMOKE, "hardware.deterministic=true", "train.budget_images=384"]


def test_a_budget_in_tflop_or_in_images_gives_the_same_steps(tmp_path):
    """3 x forward FLOPs x images: the same budget in either form is the same run; grad accumulation counts
    images per update, and a budget smaller than one step still trains one."""
    flops = 1_303_440
    images = make_config(tmp_path, *SMOKE, "train.budget_images=384")
    tflop = make_config(tmp_path, *SMOKE, f"train.budget_tflop={3 * flops * 384 / 1e12}")
    a, b = training_length(images, flops, 8), training_length(tflop, flops, 8)
    assert (a.steps, a.epochs, a.images(a.steps)) == (b.steps, b.epochs, b.images(b.steps)) == (12, 2, 384)
    assert b.tflop(b.steps) == pytest.approx(3 * flops * 384 / 1e12)
    accumulated = training_length(
        make_config(tmp_path, *SMOKE, "train.budget_images=384", "train.grad_accum_steps=3"), flops, 8
    )
    # 3 updates an epoch (3 + 3 + 2 batches): the 12 batches are one epoch and 4 more, whose whole updates
    # are 2 (6 batches): the first step count to reach the budget
    assert (accumulated.steps, accumulated.epochs, accumulated.images(accumulated.steps)) == (5, 2, 448)
    tiny = training_length(make_config(tmp_path, *SMOKE, "train.budget_tflop=1e-9"), flops, 8)
    assert (tiny.steps, tiny.epochs) == (1, 1)
    unbudgeted = training_length(make_config(tmp_path, *SMOKE, "train.epochs=3"), flops, 8)
    assert (unbudgeted.steps, unbudgeted.epochs, unbudgeted.describe()) == (24, 3, None)


@pytest.mark.parametrize("scheduler", ["cosine", "linear"])
def test_the_schedule_ends_at_the_budgets_step(tmp_path, scheduler):
    """Warm-up, then decay to zero exactly at the budget's last step (30 steps: 3.75 epochs of 8)."""
    cfg = make_config(
        tmp_path, *SMOKE, f"scheduler={scheduler}", "scheduler.warmup_epochs=1", "train.budget_images=960"
    )
    placement = place(cfg.hardware)
    model = torch.nn.Linear(2, 2)
    optimization = build_optimization(cfg, Network(model, 6, 12, (1, 1, 2)), 8, placement)
    assert (optimization.length.steps, optimization.length.epochs) == (30, 4)
    lrs = []
    for step in range(31):
        optimization.scheduler.step_update(step)
        lrs.append(optimization.optimizer.param_groups[0]["lr"])
    # timm's warm-up (one epoch: 8 steps) climbs to the decay's curve, which spans all 30 steps
    decayed = 8 / 30
    at_8 = (1 + math.cos(math.pi * decayed)) / 2 if scheduler == "cosine" else 1 - decayed
    assert lrs[0] == cfg.scheduler.warmup_lr and lrs[8] == pytest.approx(cfg.optimizer.lr * at_8)
    assert lrs[:8] == sorted(lrs[:8]) and lrs[8:] == sorted(lrs[8:], reverse=True)
    assert lrs[29] > 0 and lrs[30] == 0.0


def test_a_warm_up_as_long_as_the_run_is_refused_in_one_line(tmp_path):
    """A budget of 20 steps (2.5 epochs of 8) cannot hold 3 epochs of warm-up: the peak lr is never reached."""
    cfg = make_config(tmp_path, *SMOKE, "scheduler.warmup_epochs=3", "train.budget_images=640")
    with pytest.raises(ConfigError, match=r"^scheduler\.warmup_epochs=3 is 24 updates, and the run trains 20:"):
        build_optimization(cfg, Network(torch.nn.Linear(2, 2), 6, 12, (1, 1, 2)), 8, place(cfg.hardware))


def test_both_budgets_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^train\.budget_tflop, train\.budget_images: one budget") as refused:
        check_config(make_config(tmp_path, *SMOKE, "train.budget_tflop=1", "train.budget_images=100"))
    assert "\n" not in str(refused.value)
    with pytest.raises(ConfigError, match=r"^train\.budget_images: must be > 0, got 0$"):
        check_config(make_config(tmp_path, *SMOKE, "train.budget_images=0"))


def stop_after_step(run_dir, step):
    """SIGUSR1 once checkpoints/last.pt holds `step` or later: the run stops at its next step boundary."""
    last = run_dir / "checkpoints" / "last.pt"
    while True:
        time.sleep(0.005)
        try:
            if last.exists() and load_checkpoint(last)["step"] >= step:
                break
        except CheckpointError:  # replaced while read
            continue
    os.kill(os.getpid(), signal.SIGUSR1)


def test_a_budgeted_run_stops_at_its_step_and_resumes_exactly(tmp_path):
    """12 steps: epoch 0 whole, epoch 1 cut after 4 of its 8 steps and validated; the lr ends at zero.
    A run stopped inside the cut epoch and resumed ends bit-identical to it."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    summary = train(make_config(straight, *BUDGET))
    rows = metrics(straight)
    assert [(r["epoch"], r["step"]) for r in rows] == [("0", "8"), ("1", "12")]
    peak = make_config(straight, *BUDGET).optimizer.lr
    assert float(rows[0]["lr"]) == pytest.approx(peak * (1 + math.cos(math.pi * 8 / 12)) / 2)  # cosine over 12
    assert float(rows[1]["lr"]) == 0.0
    assert (summary["step"], summary["epochs"], summary["status"]) == (12, 2, "completed")
    assert (summary["budget_images"], summary["budget_tflop"], summary["trained_images"]) == (384, None, 384)
    assert summary["trained_tflop"] == pytest.approx(3 * summary["gflops"] * 1e9 * 384 / 1e12, rel=1e-5)
    assert json.loads((straight / "summary.json").read_text())["trained_images"] == 384
    assert "train.budget_images=384: 12 steps of 32 images, 384 images" in (straight / "train.log").read_text()

    previous = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, lambda *_: None)  # the run's own handler replaces it while it runs
    try:
        threading.Thread(target=stop_after_step, args=(stopped, 9), daemon=True).start()
        with pytest.raises(Interrupted):
            train(make_config(stopped, *BUDGET, "train.checkpoint_every_steps=1"))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    at_stop = load_checkpoint(stopped / "checkpoints" / "last.pt")
    assert 9 <= at_stop["step"] < 12 and at_stop["epoch"] == 1 and at_stop["batch_in_epoch"]
    resumed = train(make_config(stopped, *BUDGET, "train.checkpoint_every_steps=1", "resume=auto"))
    a, b = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(stopped / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 12
    assert_same_weights_and_optimizer(a, b)
    assert reproducible_metrics(straight) == reproducible_metrics(stopped)
    assert (resumed["step"], resumed["trained_images"]) == (12, 384)


def test_a_larger_budget_after_one_that_ended_mid_epoch_trains_up_to_it(tmp_path):
    """96 images end epoch 0 after 3 of its 8 steps; resumed for 512, the run trains the 13 batches that
    are left (8 in epoch 1, 5 in epoch 2), not the rest of epoch 0 again nor one epoch short of the budget."""
    first = train(make_config(tmp_path, *SMOKE, "train.budget_images=96"))
    resumed = train(make_config(tmp_path, *SMOKE, "train.budget_images=512", "resume=auto"))
    rows = metrics(tmp_path)
    assert [(r["epoch"], r["step"]) for r in rows] == [("0", "3"), ("1", "11"), ("2", "16")]
    assert float(rows[-1]["lr"]) == float(rows[0]["lr"]) == 0.0  # each schedule ends at its last step
    assert (first["trained_images"], resumed["trained_images"], resumed["status"]) == (96, 512, "completed")
    log = (tmp_path / "train.log").read_text()
    assert "train.budget_images=512: 16 steps of 32 images, 512 images" in log and "in 3 epochs" in log


@pytest.mark.parametrize("scheduler", ["step", "multistep", "cosine"])
def test_without_a_budget_the_schedule_is_timms_over_whole_epochs(tmp_path, scheduler):
    """The schedule in updates is the one timm builds from epochs (it multiplies them by updates_per_epoch)."""
    cfg = make_config(
        tmp_path,
        *SMOKE,
        f"scheduler={scheduler}",
        "scheduler.warmup_epochs=0.5",
        "scheduler.decay_epochs=2",
        "scheduler.decay_milestones=[1,3]",
        "train.epochs=4",
    )
    ours = build_optimization(cfg, Network(torch.nn.Linear(2, 2), 6, 12, (1, 1, 2)), 7, place(cfg.hardware))
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=cfg.optimizer.lr)
    timms, _ = instantiate(cfg.scheduler)(optimizer, num_epochs=4, step_on_epochs=False, updates_per_epoch=7)
    for step in range(29):
        ours.scheduler.step_update(step)
        timms.step_update(step)
        assert ours.optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"], step
