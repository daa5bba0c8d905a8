"""Checkpoints: exact resume after a real SIGKILL, and refusal of anything that is not ours."""

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from omegaconf import OmegaConf

from cnnbench.engine.checkpoint import load_checkpoint, save_checkpoint
from cnnbench.engine.resume import config_changes, resume_path
from cnnbench.engine.trainer import train
from cnnbench.errors import CheckpointError, ConfigError, Interrupted

from .helpers import (
    ROOT,
    SMOKE,
    RunsCode,
    assert_same_weights_and_optimizer,
    make_config,
    reproducible_metrics,
    tensorboard_tag_counts,
)

pytestmark = pytest.mark.slow  # runs stopped by signals and resumed, in subprocesses

# Long enough to be killed mid-epoch: 32 steps an epoch, a checkpoint every 3.
EXACT = [
    *SMOKE,
    "data.train_size=1024",
    "train.epochs=2",
    "train.checkpoint_every_steps=3",
    "hardware.deterministic=true",
    "augmentation=basic",
    "model.variant=modern",
    "data.device_resident=true",
]


def launch(run_dir, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "cnnbench.train", *EXACT, f"hydra.run.dir={run_dir}", *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_checkpoint(process, last, after_ns=0):
    while not last.exists() or last.stat().st_mtime_ns <= after_ns:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.005)


def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path):
    """One run killed with SIGKILL three times, each at a random moment after a new checkpoint (mid-epoch
    ones included), resumed each time: model, optimizer, scheduler, RNGs and metrics end bit-identical."""
    seed = random.randrange(1000)  # named by any failure, to replay its kill delays
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert launch(straight).wait(timeout=300) == 0
    last, delays, kill_points = killed / "checkpoints" / "last.pt", random.Random(seed), []
    for attempt in range(3):
        victim = launch(killed, *(["resume=auto"] if attempt else []))
        wait_for_checkpoint(victim, last, after_ns=last.stat().st_mtime_ns if attempt else 0)
        time.sleep(delays.uniform(0, 0.4))
        victim.send_signal(signal.SIGKILL)
        assert victim.wait() == -signal.SIGKILL
        kill_points.append(load_checkpoint(last))
    steps = [state["step"] for state in kill_points]
    assert steps == sorted(set(steps)) and steps[-1] < 64, f"seed {seed}: killed at steps {steps}"
    assert any(step % 32 for step in steps), f"seed {seed}: no kill mid-epoch ({steps})"
    first, latest = kill_points[0]["model"], kill_points[-1]["model"]
    assert any(not torch.equal(first[k], latest[k]) for k in first), "checkpoints at two steps are the same"

    resumed = launch(killed, "resume=auto")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    assert f"resumed from {last}" in (killed / "train.log").read_text()

    a, b = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(last)
    assert a["step"] == b["step"] == 64
    assert_same_weights_and_optimizer(a, b)
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"]) and a["rng"][0]["python"] == b["rng"][0]["python"]
    assert torch.equal(a["rng"][0]["numpy"]["state"]["key"], b["rng"][0]["numpy"]["state"]["key"])
    assert reproducible_metrics(straight) == reproducible_metrics(killed)


def test_checkpoints_at_two_steps_differ(tmp_path):
    train(make_config(tmp_path, *SMOKE, "train.epochs=1"))
    first = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    train(make_config(tmp_path, *SMOKE, "train.epochs=2", "resume=auto"))
    second = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert (first["step"], second["step"]) == (8, 16)
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in second["model"])


def test_a_second_run_never_overwrites_the_first(tmp_path):
    train(make_config(tmp_path, *SMOKE, "train.epochs=1"))
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match="resume=auto"):
        train(make_config(tmp_path, *SMOKE, "train.epochs=1"))
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_auto_in_a_new_directory_starts_fresh(tmp_path):
    summary = train(make_config(tmp_path, *SMOKE, "train.epochs=1", "resume=auto"))
    assert summary["status"] == "completed" and summary["epochs"] == 1


def test_resume_continues_to_more_epochs(tmp_path):
    """... and writes what a run writes once (its first batch, config and HParams record) only once."""
    train(make_config(tmp_path, *SMOKE, "train.epochs=1"))
    summary = train(make_config(tmp_path, *SMOKE, "train.epochs=2", "resume=auto"))
    assert summary["epochs"] == 2 and summary["step"] == 16
    written = tensorboard_tag_counts(tmp_path)
    assert len(list((tmp_path / "tb").iterdir())) == 2  # an event file each
    for tag in ("train/augmented_batch", "config/text_summary", "_hparams_/experiment", "_hparams_/session_start_info"):
        assert written[tag] == 1, tag
    assert written["val/top1"] == written["train/epoch"] == 2


def test_resume_refuses_another_architecture(tmp_path):
    train(make_config(tmp_path, *SMOKE, "train.epochs=1"))
    with pytest.raises(CheckpointError, match="model.width_mult=1.0, not 2.0"):
        train(make_config(tmp_path, *SMOKE, "train.epochs=2", "resume=auto", "model.width_mult=2.0"))


@pytest.mark.parametrize("kind", ["garbage", "truncated", "code", "not_ours"])
def test_non_checkpoints_are_refused(kind, tmp_path):
    path = tmp_path / "last.pt"
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        save_checkpoint(
            {"model": {"w": torch.randn(1000)}, "optimizer": {}, "scheduler": {}, "epoch": 0, "step": 0, "config": {}},
            path,
        )
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "code":
        payload = RunsCode()
        payload.marker = tmp_path / "code_ran"
        torch.save({"model": payload}, path)
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    assert not (tmp_path / "code_ran").exists()


def test_resume_from_a_bad_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = subprocess.run(
        [sys.executable, "-m", "cnnbench.train", *SMOKE, f"resume={bad}", f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert result.returncode == 2
    assert str(bad) in result.stderr and "Traceback" not in result.stderr


def test_sigterm_checkpoints_at_the_step_boundary_and_resumes(tmp_path):
    """On the DataLoader path: the SIGKILL test above runs device-resident."""
    victim = launch(tmp_path, "data.device_resident=false")
    last = tmp_path / "checkpoints" / "last.pt"
    while not last.exists():
        assert victim.poll() is None, victim.stderr.read().decode()
        time.sleep(0.005)
    victim.send_signal(signal.SIGTERM)
    assert victim.wait(timeout=60) == 143
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    at_stop = load_checkpoint(last)
    assert at_stop["step"] == summary["step"] < 64
    assert launch(tmp_path, "data.device_resident=false", "resume=auto").wait(timeout=300) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


def test_training_longer_rebuilds_the_schedule_from_the_step(tmp_path):
    """1 epoch, then resumed for 3: a cosine schedule over 24 steps from step 8, not the old one's lr 0."""
    train(make_config(tmp_path, *SMOKE, "train.epochs=1"))
    first = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    train(make_config(tmp_path, *SMOKE, "train.epochs=3", "resume=auto"))
    assert (
        "train.epochs 1 -> 3: the schedule is rebuilt for 3 epochs from step 8" in (tmp_path / "train.log").read_text()
    )
    rows = reproducible_metrics(tmp_path)
    peak = first["config"]["optimizer"]["lr"]
    assert float(rows[1]["lr"]) == pytest.approx(peak * (1 + math.cos(math.pi * 16 / 24)) / 2)
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert last["step"] == 24 and last["config"]["train"]["epochs"] == 3
    assert any(not torch.equal(first["model"][k], last["model"][k]) for k in first["model"])


@pytest.mark.parametrize(
    "change,steps,images",
    [("data.batch_size=64", 4, 256), ("data.batch_size=16", 16, 256), ("train.limit_train_batches=4", 4, 128)],
)
def test_other_batches_from_an_epochs_start_count_on_from_the_checkpoint(tmp_path, change, steps, images):
    """1 epoch of 8 steps, then a second cut into other batches: the 8 steps stay, the second epoch trains
    its own count of them, and the rebuilt schedule ends at its last step as the first did."""
    train(make_config(tmp_path, *SMOKE, "train.epochs=1"))
    resumed = train(make_config(tmp_path, *SMOKE, "train.epochs=2", "resume=auto", change))
    rows = reproducible_metrics(tmp_path)
    assert [(r["epoch"], r["step"]) for r in rows] == [("0", "8"), ("1", str(8 + steps))]
    assert float(rows[1]["lr"]) == float(rows[0]["lr"])  # the schedule's end, twice
    assert (resumed["step"], resumed["trained_images"]) == (8 + steps, 256 + images)
    origin = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["length_origin"]
    assert origin == {"step": 8, "epoch": 1, "images": 256}
    # Resumed again: unchanged, it counts from the saved origin (nothing is left); one epoch more is one more
    # epoch of the new batches
    same = train(make_config(tmp_path, *SMOKE, "train.epochs=2", "resume=auto", change))
    assert (same["step"], same["trained_images"]) == (8 + steps, 256 + images)
    again = train(make_config(tmp_path, *SMOKE, "train.epochs=3", "resume=auto", change))
    assert (again["step"], again["trained_images"]) == (8 + 2 * steps, 256 + 2 * images)


def interrupt_mid_epoch(run_dir, signum):
    """A run of EXACT stopped by `signum` at a step boundary after its first checkpoint; its exit status."""
    victim = launch(run_dir, "data.device_resident=false")
    wait_for_checkpoint(victim, run_dir / "checkpoints" / "last.pt")
    victim.send_signal(signum)
    return victim.wait(timeout=60)


def test_ctrl_c_checkpoints_and_config_changes_are_applied_or_refused(tmp_path):
    """Ctrl-C writes last.pt as SIGTERM does (exit 130). Resuming it mid-epoch: keys that cannot change are
    refused in one line naming each, before any work; those that can are applied and named in train.log."""
    assert interrupt_mid_epoch(tmp_path, signal.SIGINT) == 130
    summary = json.loads((tmp_path / "summary.json").read_text())
    last = tmp_path / "checkpoints" / "last.pt"
    at_stop = load_checkpoint(last)
    assert summary["status"] == "interrupted" and at_stop["step"] == summary["step"] and at_stop["batch_in_epoch"]
    assert "interrupted (SIGINT)" in (tmp_path / "train.log").read_text()

    resumed = [*EXACT, "data.device_resident=false", "resume=auto"]
    with pytest.raises(CheckpointError) as refused:
        train(
            make_config(
                tmp_path,
                *resumed,
                "data.batch_size=64",
                "seed=1",
                "augmentation=none",
                "model.width_mult=2.0",
                "optimizer.lr=0.02",
            )
        )
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{last}: trained with a different model (model.width_mult=1.0")
    for phrase in (
        "written with data.batch_size=32, resumed with 64 (it changes where an epoch starts only",
        "written with seed=0, resumed with 1",
        "written with augmentation.name=basic, resumed with none",
    ):
        assert phrase in message
    assert "optimizer.lr" not in message and load_checkpoint(last)["step"] == at_stop["step"]

    summary = train(
        make_config(
            tmp_path,
            *resumed,
            "optimizer.lr=0.02",
            "scheduler=constant",
            "train.log_every_steps=1",
            "hardware.precision=fp16",
        )
    )
    assert summary["status"] == "completed"
    log = (tmp_path / "train.log").read_text()
    for line in (
        f"optimizer.lr 0.05 -> 0.02: the schedule is rebuilt from step {at_stop['step']}",
        f"scheduler.sched cosine -> constant: the schedule is rebuilt from step {at_stop['step']}",
        "hardware.precision fp32 -> fp16: from step",
        "a fresh GradScaler starts",
        f"step {at_stop['step'] + 1}: loss",
    ):
        assert line in log
    assert f"step {at_stop['step'] + 1}: loss" in log and ", lr 0.02\n" in log
    recorded = load_checkpoint(last)["config"]
    assert (recorded["optimizer"]["lr"], recorded["scheduler"]["sched"], recorded["hardware"]["precision"]) == (
        0.02,
        "constant",
        "fp16",
    )


def test_a_key_the_checkpoint_predates_reads_as_its_default(tmp_path):
    """A checkpoint written before a key existed resumes where the run keeps the key's default, and is
    refused, naming the default, where it does not."""
    config = OmegaConf.to_container(make_config(tmp_path, *SMOKE), resolve=True, enum_to_str=True)
    older = {**config, "train": {k: v for k, v in config["train"].items() if k != "whiten_stem"}}
    state = {"world_size": 1, "config": older, "batch_in_epoch": 0, "step": 3}
    assert config_changes(state, config, tmp_path / "last.pt", 1) == []
    config["train"]["whiten_stem"] = True
    with pytest.raises(CheckpointError, match="written with train.whiten_stem=False, resumed with True"):
        config_changes(state, config, tmp_path / "last.pt", 1)


def test_a_signal_after_the_last_step_is_not_swallowed(tmp_path):
    """SIGTERM while the last epoch validates (a large val set): the run completes, says so, and exits 143."""
    victim = launch(
        tmp_path, "train.epochs=1", "train.limit_train_batches=3", "data.val_size=2000", "data.device_resident=false"
    )
    wait_for_checkpoint(victim, tmp_path / "checkpoints" / "last.pt")  # step 3: the last
    victim.send_signal(signal.SIGTERM)
    assert victim.wait(timeout=300) == 143
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    assert "SIGTERM after the last step: the run is complete" in (tmp_path / "train.log").read_text()


def test_a_torchrun_restart_continues_from_the_runs_own_last_checkpoint(tmp_path, monkeypatch):
    """resume=PATH under torchrun --max-restarts: the first attempt starts from PATH, a restart (torchrun's
    TORCHELASTIC_RESTART_COUNT > 0) from the last.pt the failed attempt left, not from PATH again."""
    given = tmp_path / "given.pt"
    cfg = make_config(tmp_path, *SMOKE, f"resume={given}")
    run_dir = tmp_path / "run"
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert resume_path(cfg, run_dir) == given  # the failed attempt left no checkpoint yet
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").touch()
    assert resume_path(cfg, run_dir) == run_dir / "checkpoints" / "last.pt"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert resume_path(cfg, run_dir) == given


def test_submitits_handler_is_called_after_the_checkpoint(tmp_path):
    """A handler installed before the run (submitit's requeue on SIGUSR2, its warning before a time limit) is
    called with the signal once last.pt holds the run, and is back in place afterwards."""
    calls = []

    def requeue(signum, frame):
        calls.append((signum, load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"]))

    def signal_after_the_first_checkpoint():
        while not (tmp_path / "checkpoints" / "last.pt").exists():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, requeue)
    try:
        threading.Thread(target=signal_after_the_first_checkpoint, daemon=True).start()
        with pytest.raises(Interrupted, match="SIGUSR2"):
            train(make_config(tmp_path, *EXACT))
        assert signal.getsignal(signal.SIGUSR2) is requeue
    finally:
        signal.signal(signal.SIGUSR2, previous)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and calls == [(signal.SIGUSR2, summary["step"])]
