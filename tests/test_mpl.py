"""Meta Pseudo Labels (Pham, Dai, Xie, Luong and Le 2021): both networks train from one step to the next, the
teacher starts from a cnnbench checkpoint or from scratch, the feedback moves the teacher towards labels that
helped the student, and a run killed with SIGKILL and resumed ends bit-identical to one never stopped."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cnnbench.config import check_config
from cnnbench.engine.checkpoint import load_checkpoint, model_from_checkpoint
from cnnbench.engine.trainer import train
from cnnbench.errors import CheckpointError, ConfigError

from .helpers import ROOT, assert_same_weights_and_optimizer, make_config, metrics, reproducible_metrics

# 256 labeled images in 8 batches of 32 an epoch; a pool of 512 in batches of 64 (8 a pass).
LABELED = [
    "data=fashion_mnist",
    "data.train_size=256",
    "data.val_size=128",
    "data.batch_size=32",
    "model=fmnist_cnn_bn",
    "model.width_mult=0.25",
    "model.drop_rate=0.3",
    "augmentation=basic",
    "hardware=cpu",
]
MPL = [*LABELED, "mpl.enabled=true", "mpl.pool_size=512", "mpl.unlabeled_batch_ratio=2"]


def test_teacher_from_a_checkpoint_and_student_both_train(tmp_path):
    train(make_config(tmp_path / "teacher", *LABELED, "train.epochs=1"))
    start = tmp_path / "teacher" / "checkpoints" / "last.pt"
    run = tmp_path / "mpl"
    summary = train(
        make_config(
            run,
            *MPL,
            f"mpl.teacher={start}",
            "mpl.pseudo_label=argmax",
            "mpl.uda_weight=1",
            "train.epochs=2",
            "train.log_every_steps=4",
        )
    )
    assert summary["status"] == "completed" and summary["step"] == 16
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    teacher_start = load_checkpoint(start)["model"]
    teacher = state["mpl"]["teacher"]
    assert teacher.keys() == teacher_start.keys()
    assert any(not torch.equal(teacher[k], teacher_start[k]) for k in teacher if teacher[k].is_floating_point())
    assert state["mpl"]["optimizer"]["state"] and state["mpl"]["scheduler"] == state["scheduler"]
    # The run's model is the student: every command that reads a checkpoint gets it.
    student, _ = model_from_checkpoint(run / "checkpoints" / "best.pt")
    assert sum(p.numel() for p in student.parameters()) == summary["params"]

    log = (run / "train.log").read_text()
    assert f"mpl: teacher {start}, a pool of 512 unlabeled images, batches of 64 with 32 labeled" in log
    assert "epoch 1 mpl: the teacher's pseudo-labels agree with the hidden labels on" in log
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    agreement = events.Scalars("train/mpl_pseudo_label_top1")
    assert [e.step for e in agreement] == [8, 16] and all(0 <= e.value <= 100 for e in agreement)
    assert [e.step for e in events.Scalars("train/mpl_feedback")] == [8, 16]
    rows = metrics(run)
    assert len(rows) == 2 and all(float(r["train_loss"]) > 0 for r in rows)


def test_the_feedback_makes_labels_that_helped_likelier():
    """h * CE(teacher, pseudo-label), descended: h > 0 (the student's labeled loss fell) raises the
    teacher's probability of the label, h < 0 lowers it."""
    for h, rises in ((0.5, True), (-0.5, False)):
        logits = torch.zeros(1, 10, requires_grad=True)
        label = torch.tensor([3])
        (h * F.cross_entropy(logits, label)).backward()
        after = (logits - 0.1 * logits.grad).softmax(1)[0, 3]
        assert (after > 0.1) == rises


def test_a_teacher_from_scratch_has_the_students_architecture(tmp_path):
    summary = train(make_config(tmp_path, *MPL, "train.epochs=1", "train.limit_train_batches=2"))
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert summary["step"] == 2
    assert state["mpl"]["teacher"].keys() == state["model"].keys()
    assert any(
        not torch.equal(state["mpl"]["teacher"][k], state["model"][k])
        for k in state["model"]
        if state["model"][k].is_floating_point()
    )


def test_a_teacher_for_other_classes_is_refused_naming_mpl_teacher(tmp_path):
    train(
        make_config(
            tmp_path / "teacher",
            "data=synthetic",
            "data.image_size=28",
            "data.channels=1",
            "data.mean=[0.5]",
            "data.std=[0.5]",
            "data.num_classes=3",
            "data.train_size=64",
            "data.val_size=32",
            "data.batch_size=32",
            "model=lenet5",
            "hardware=cpu",
            "train.epochs=1",
        )
    )
    start = tmp_path / "teacher" / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match=f"mpl.teacher: {start} was trained on other classes"):
        train(make_config(tmp_path / "mpl", *MPL, f"mpl.teacher={start}", "train.epochs=1"))


@pytest.mark.parametrize(
    "override,key",
    [
        ("data.train_size=null", "data.train_size"),
        ("mpl.teacher_lr=0", "mpl.teacher_lr"),
        ("mpl.unlabeled_batch_ratio=0", "mpl.unlabeled_batch_ratio"),
        ("mpl.uda_weight=-1", "mpl.uda_weight"),
        ("mpl.uda_threshold=1", "mpl.uda_threshold"),
        ("distill.teacher=x.pt", "distill.teacher"),
        ("augmentation.mixup_alpha=0.2", "augmentation.mixup_alpha"),
        ("train.grad_accum_steps=2", "train.grad_accum_steps"),
        ("hardware.precision=fp16", "hardware.precision=fp16"),
    ],
)
def test_bad_mpl_settings_name_their_key(override, key, tmp_path):
    with pytest.raises(ConfigError, match=key):
        check_config(make_config(tmp_path, *MPL, override))


def test_the_preset_is_the_noisy_student_split(tmp_path):
    cfg = make_config(tmp_path, "experiment=fmnist_mpl")
    check_config(cfg)
    assert cfg.mpl.enabled and (cfg.data.train_size, cfg.mpl.pool_size) == (1000, 20000)
    assert (cfg.model.norm, cfg.model.width_mult, cfg.model.drop_rate) == ("batch", 0.5, 0.3)


# Killed and resumed: two epochs of 8 steps, a checkpoint every 3; dropout, UDA and sampled labels all draw.
EXACT = [*MPL, "mpl.uda_weight=1", "train.epochs=2", "train.checkpoint_every_steps=3", "hardware.deterministic=true"]


@pytest.mark.slow  # a run killed and resumed in subprocesses
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    """The teacher's weights, optimizer and schedule, the student's, the RNGs and metrics.csv: a run killed with
    SIGKILL after a checkpoint and resumed with resume=auto ends as one never stopped."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(make_config(straight, *EXACT))

    def launch(*extra):
        return subprocess.Popen(
            [sys.executable, "-m", "cnnbench.train", *EXACT, f"hydra.run.dir={killed}", *extra],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    last = killed / "checkpoints" / "last.pt"
    victim = launch()
    while not last.exists():
        assert victim.poll() is None, victim.stderr.read().decode()
        time.sleep(0.005)
    time.sleep(random.uniform(0, 0.05))
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    at_kill = load_checkpoint(last)
    assert at_kill["step"] < 16
    resumed = launch("resume=auto")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert (
        f"resumed from {last}: epoch {at_kill['epoch']}, batch {at_kill['batch_in_epoch']}"
        in (killed / "train.log").read_text()
    )

    a, b = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(last)
    assert a["step"] == b["step"] == 16
    assert_same_weights_and_optimizer(a, b)
    assert_same_weights_and_optimizer(
        {"model": a["mpl"]["teacher"], "optimizer": a["mpl"]["optimizer"]},
        {"model": b["mpl"]["teacher"], "optimizer": b["mpl"]["optimizer"]},
    )
    assert a["mpl"]["scheduler"] == b["mpl"]["scheduler"] and a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert reproducible_metrics(straight) == reproducible_metrics(killed)
