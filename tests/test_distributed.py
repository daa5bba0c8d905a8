"""DDP on CPU (gloo) with real processes: `python -m cnnbench.train hardware=ddp` starts its own ranks."""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from cnnbench.config import TTA
from cnnbench.data import build_data
from cnnbench.data.loader import ValBatches
from cnnbench.engine.checkpoint import load_checkpoint
from cnnbench.engine.device import place
from cnnbench.engine.distributed import Dist
from cnnbench.engine.trainer import STOP_AGREEMENT_STEPS, validate
from cnnbench.models import create_model

from .helpers import (
    ROOT,
    assert_same_weights_and_optimizer,
    confusion_matrix,
    make_config,
    make_image_tree,
    metrics,
    reproducible_metrics,
    run_cli,
)

pytestmark = pytest.mark.slow  # real DDP ranks and torchrun in subprocesses

# BN-free (LeNet-5 classic: tanh, average pooling), no augmentation, deterministic kernels: 2 ranks of
# 16 images add up to 1 rank of 32 up to float rounding. 63 validation images: not a multiple of 2.
# A fast EMA (0.9): every rank's copy must start from, and follow, the weights DDP trains.
RUN = [
    "data=synthetic",
    "data.image_size=32",
    "data.train_size=512",
    "data.val_size=63",
    "data.batch_size=32",
    "model=lenet5",
    "model.variant=classic",
    "augmentation=none",
    "hardware.device=cpu",
    "hardware.precision=fp32",
    "hardware.deterministic=true",
    "train.epochs=2",
    "train.checkpoint_every_steps=3",
    "train.ema_decay=0.9",
]
ONE_RANK, TWO_RANKS = ["hardware.nproc=1"], ["hardware=ddp", "hardware.nproc=2"]


def launch(run_dir, *extra):
    """A run in its own process group, so that a test can kill all of its processes at once."""
    return subprocess.Popen(
        [sys.executable, "-m", "cnnbench.train", *RUN, f"hydra.run.dir={run_dir}", *extra],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process, timeout=240):
    """Exit status and stderr; then asserts that nothing of the run (launcher, ranks, their data
    loader workers) outlives it."""
    try:
        _, stderr = process.communicate(timeout=timeout)
        deadline = time.monotonic() + 5
        while not subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True).returncode:
            assert time.monotonic() < deadline, f"processes left behind in group {process.pid}"
            time.sleep(0.1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, stderr


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted runs: one rank, and two ranks at the same global batch."""
    runs = {}
    for name, ranks in (("one_rank", ONE_RANK), ("two_ranks", TWO_RANKS)):
        runs[name] = tmp_path_factory.mktemp(name)
        returncode, stderr = finish(launch(runs[name], *ranks))
        assert returncode == 0, stderr
    return runs


def test_two_ranks_match_one_rank_at_the_same_global_batch(straight):
    one, two = (load_checkpoint(straight[k] / "checkpoints" / "last.pt") for k in ("one_rank", "two_ranks"))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["step"] == two["step"] == 2 * 512 // 32
    for weights in ("model", "ema"):
        for key, tensor in one[weights].items():
            torch.testing.assert_close(two[weights][key], tensor, rtol=1e-5, atol=1e-6, msg=f"{weights}: {key}")
    for a, b in zip(metrics(straight["one_rank"]), metrics(straight["two_ranks"]), strict=True):
        for prefix in ("", "ema_"):
            assert (a[f"{prefix}val_top1"], a[f"{prefix}val_top5"]) == (b[f"{prefix}val_top1"], b[f"{prefix}val_top5"])
        for key in ("val_loss", "ema_val_loss", "train_loss", "train_top1"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5), key
    log = (straight["two_ranks"] / "train.log").read_text()
    assert log.count("epoch 1: train loss") == 1  # rank 0 writes the run directory


def test_validation_over_two_ranks_counts_every_sample_once(straight):
    """63 images over 2 ranks: what they report is what one process measures on the same weights, the
    model's and the EMA's (the checkpoint holds rank 0's)."""
    run_dir = straight["two_ranks"]
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    cfg = make_config(run_dir, *RUN)
    data = build_data(cfg)
    model = create_model(**state["config"]["model"], num_classes=10, in_chans=3, image_size=32)
    shards = [sum(ValBatches(63, 16, rank, 2).batches, []) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(63))
    reported = metrics(run_dir)[-1]
    for prefix, weights in (("", "model"), ("ema_", "ema")):
        model.load_state_dict(state[weights])
        val = validate(model, data.val_loader, data.normalize, place(cfg.hardware), 5, Dist(), TTA.none, 10).metrics
        assert float(reported[f"{prefix}val_top1"]) == pytest.approx(val["val_top1"], abs=1e-9), weights
        assert float(reported[f"{prefix}val_top5"]) == pytest.approx(val["val_top5"], abs=1e-9), weights
        assert float(reported[f"{prefix}val_loss"]) == pytest.approx(val["val_loss"], rel=1e-6), weights
    # The best epoch's confusion matrix, added up over both ranks: every image once
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"])
    confusion = validate(model, data.val_loader, data.normalize, place(cfg.hardware), 5, Dist(), TTA.none, 10).confusion
    assert confusion_matrix(run_dir)[1] == confusion.tolist() and confusion.sum() == 63


@pytest.mark.parametrize("stop", ["sigkill_all", "sigusr1_launcher"])
def test_stopped_mid_epoch_then_resumed_on_two_ranks_is_bit_identical(straight, stop, tmp_path):
    """Killed with SIGKILL, launcher and ranks at once (a lost node); or SIGUSR1 to the launcher alone
    (SLURM's warning before preemption), which passes it on: both ranks checkpoint at the same step."""
    victim = launch(tmp_path, *TWO_RANKS)
    last = tmp_path / "checkpoints" / "last.pt"
    while not last.exists():
        assert victim.poll() is None, victim.stderr.read()
        time.sleep(0.005)
    time.sleep(random.Random().uniform(0, 0.5))
    if stop == "sigkill_all":
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
    else:
        victim.send_signal(signal.SIGUSR1)
        returncode, stderr = finish(victim, timeout=60)
        assert returncode == 143, stderr
        assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(last)["step"] < 32, "the run finished before it was stopped"

    returncode, stderr = finish(launch(tmp_path, *TWO_RANKS, "resume=auto"))
    assert returncode == 0, stderr
    a, b = load_checkpoint(straight["two_ranks"] / "checkpoints" / "last.pt"), load_checkpoint(last)
    assert a["step"] == b["step"] == 32
    assert_same_weights_and_optimizer(a, b)
    for rank in (0, 1):
        assert torch.equal(a["rng"][rank]["torch"], b["rng"][rank]["torch"])
    assert reproducible_metrics(straight["two_ranks"]) == reproducible_metrics(tmp_path)


def test_two_ranks_deciding_on_the_device_agree_on_a_stop_every_few_updates(tmp_path):
    """optimizer.fused=true, the path of GPUs: the non-finite flag all-reduced beside the update (gloo here,
    NCCL there) and the stop signal agreed on the CPU every STOP_AGREEMENT_STEPS updates and at the epoch's
    end. SIGUSR1 stops both ranks at one of those, and the resumed run is bit-identical to a straight one."""
    fused = [*TWO_RANKS, "optimizer.fused=true", "train.on_nonfinite=skip"]
    returncode, stderr = finish(launch(tmp_path / "straight", *fused))
    assert returncode == 0, stderr
    victim = launch(tmp_path / "stopped", *fused)
    last = tmp_path / "stopped" / "checkpoints" / "last.pt"
    while not last.exists():
        assert victim.poll() is None, victim.stderr.read()
        time.sleep(0.005)
    victim.send_signal(signal.SIGUSR1)
    returncode, stderr = finish(victim, timeout=60)
    assert returncode == 143, stderr
    step = load_checkpoint(last)["step"]
    assert step % STOP_AGREEMENT_STEPS == 0 or step % (512 // 32) == 0, step
    returncode, stderr = finish(launch(tmp_path / "stopped", *fused, "resume=auto"))
    assert returncode == 0, stderr
    a, b = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("straight", "stopped"))
    assert a["step"] == b["step"] == 32 and a["optimizer"]["param_groups"][0]["fused"]
    assert_same_weights_and_optimizer(a, b)


@pytest.mark.parametrize("written_by,resumed_with", [("two_ranks", ONE_RANK), ("one_rank", TWO_RANKS)])
def test_resume_with_another_world_size_is_refused(straight, written_by, resumed_with, tmp_path):
    shutil.copytree(straight[written_by], tmp_path, dirs_exist_ok=True)
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    result = run_cli(*RUN, f"hydra.run.dir={tmp_path}", *resumed_with, "train.epochs=3", "resume=auto")
    assert result.returncode == 2, result.stderr
    ranks = {"one_rank": 1, "two_ranks": 2}[written_by]
    assert f"written by {ranks} ranks, resumed with {3 - ranks}" in result.stderr
    assert result.stderr.count("cnnbench: error:") == 1 and "Traceback" not in result.stderr
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == before


def test_a_failing_rank_stops_every_rank_and_is_named(tmp_path):
    """A real fault on one rank only: the last validation image is corrupt (data.on_bad_image=error), and
    only rank 1's contiguous shard holds it. Rank 0 waits for rank 1 in the validation all-reduce."""
    make_image_tree(tmp_path / "images")
    corrupt = sorted((tmp_path / "images" / "val").rglob("*.*"))[-1]
    corrupt.write_bytes(b"not an image")
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cnnbench.train",
            "data=imagefolder",
            f"data.root={tmp_path / 'images'}",
            "data.image_size=32",
            "data.batch_size=6",
            "data.workers=1",
            "data.on_bad_image=error",
            "model=lenet5",
            "train.epochs=1",
            *TWO_RANKS,
            "hardware.device=cpu",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    returncode, stderr = finish(run)  # no rank waits forever: a hang is the timeout, however fast the machine
    assert returncode == 2
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"cnnbench: error: {corrupt}: not a readable image"), stderr


def test_torchrun_restarts_a_killed_rank_which_resumes_bit_identical(straight, tmp_path):
    """The README's `torchrun --standalone ... --max-restarts=1` with no hydra.run.dir: rank 1 dies (SIGKILL)
    after the first checkpoint; torchrun restarts both ranks, which find the run directory and its
    checkpoints/last.pt again, and end as the uninterrupted run."""
    # torchrun gives each rank one thread; the self-launched reference ranks took a share of the cores.
    threads = str(max(1, len(os.sched_getaffinity(0)) // 2))
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "--max-restarts=1",
            "-m",
            "cnnbench.train",
            *RUN,
            "hardware=ddp",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": threads},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not (found := list(tmp_path.glob("outputs/*/checkpoints/last.pt"))):
        assert run.poll() is None, run.stderr.read()
        time.sleep(0.005)
    workers = subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True).stdout.split()
    rank1 = next(pid for pid in workers if b"\0RANK=1\0" in b"\0" + open(f"/proc/{pid}/environ", "rb").read())
    os.kill(int(rank1), signal.SIGKILL)
    killed_at = load_checkpoint(found[0])["step"]

    returncode, stderr = finish(run)
    assert returncode == 0, stderr
    assert killed_at < 32, "the run finished before rank 1 was killed"
    [run_dir] = (tmp_path / "outputs").iterdir()  # one for both ranks and both attempts
    assert "resumed from" in (run_dir / "train.log").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (straight["two_ranks"], run_dir))
    assert a["step"] == b["step"] == 32
    assert_same_weights_and_optimizer(a, b)
    assert reproducible_metrics(straight["two_ranks"]) == reproducible_metrics(run_dir)
