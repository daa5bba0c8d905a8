"""Fault injection: the checkpoint write killed or out of space, unreadable checkpoints and images, labels
that do not fit, NaN losses, malicious pickles. Each fault is real: a killed process, a full tmpfs, bytes
on disk; only the poisoned batch is injected into the loop from outside."""

import copy
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import nullcontext

import numpy as np
import pytest
import timm.models
import torch

from cnnbench.data import build_data
from cnnbench.data.datasets import _open_image
from cnnbench.data.loader import ReadableBatches
from cnnbench.data.transforms import Normalize
from cnnbench.engine.checkpoint import load_checkpoint, save_checkpoint
from cnnbench.engine.distributed import Dist
from cnnbench.engine.nonfinite import NonfiniteGuard
from cnnbench.engine.trainer import train
from cnnbench.errors import CheckpointError, ConfigError, DataError, NonfiniteLoss
from cnnbench.models import create_model

from .helpers import (
    ROOT,
    SMOKE,
    RunsCode,
    assert_same_weights_and_optimizer,
    bad_image_tree,
    make_config,
    make_image_tree,
    one_error_line,
    run_cli,
)


@pytest.mark.slow  # a real command in a subprocess
def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    train(make_config(tmp_path, *SMOKE, "train.epochs=1"))
    last = tmp_path / "checkpoints" / "last.pt"
    before = last.read_bytes()
    writer = subprocess.Popen(  # a 200 MB state: long enough to be caught in the middle of torch.save
        [
            sys.executable,
            "-c",
            "import sys, torch; from pathlib import Path; "
            "from cnnbench.engine.checkpoint import save_checkpoint; "
            "save_checkpoint({'model': {'w': torch.ones(50_000_000)}}, Path(sys.argv[1]))",
            str(last),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 60
    while not [p for p in last.parent.glob(".last.pt.*.tmp") if p.stat().st_size > 0]:
        assert writer.poll() is None and time.monotonic() < deadline, "the write ended before the kill"
        time.sleep(0.001)
    writer.send_signal(signal.SIGKILL)
    assert writer.wait() == -signal.SIGKILL
    (partial,) = last.parent.glob(".last.pt.*.tmp")
    assert partial.stat().st_size < 200_000_000
    with pytest.raises(CheckpointError):
        load_checkpoint(partial)
    assert last.read_bytes() == before and load_checkpoint(last)["step"] == 8

    summary = train(make_config(tmp_path, *SMOKE, "train.epochs=2", "resume=auto"))
    assert summary["step"] == 16 and f"resumed from {last}: epoch 1" in (tmp_path / "train.log").read_text()
    assert not partial.exists()  # the killed writer's leftover went with the next good write


def test_a_live_writers_temp_file_is_kept(tmp_path):
    live = tmp_path / f".last.pt.{os.getppid()}.tmp"  # another process still writing last.pt
    live.write_bytes(b"partial")
    save_checkpoint({"step": 1}, tmp_path / "last.pt")
    assert live.read_bytes() == b"partial"


@pytest.mark.slow  # a real command in a subprocess
@pytest.mark.parametrize("tiny_disk", ["4m"], indirect=True)  # a run's files: checkpoints, images, events
def test_a_full_disk_ends_with_one_line_and_the_checkpoint_kept(tiny_disk):
    run = tiny_disk / "run"
    train(make_config(run, *SMOKE, "train.epochs=1"))
    last = run / "checkpoints" / "last.pt"
    before = last.read_bytes()
    free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
    (tiny_disk / "filler").write_bytes(b"\0" * (free - 128 * 1024))  # room for logs, none for a checkpoint

    line = one_error_line(run_cli(*SMOKE, "train.epochs=2", "resume=auto", f"hydra.run.dir={run}"))
    assert line.startswith(f"cnnbench: error: {run / 'checkpoints'}/") and "No space left on device" in line
    assert last.read_bytes() == before and load_checkpoint(last)["step"] == 8
    assert not list(last.parent.glob(".*.tmp"))
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"

    (tiny_disk / "filler").unlink()
    assert train(make_config(run, *SMOKE, "train.epochs=2", "resume=auto"))["step"] == 16


def test_a_corrupt_last_checkpoint_falls_back_only_when_asked(tmp_path):
    train(make_config(tmp_path, *SMOKE, "train.epochs=1"))
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=f"{last}: unreadable.*best.pt.*resume_fallback=true"):
        train(make_config(tmp_path, *SMOKE, "train.epochs=2", "resume=auto"))

    summary = train(make_config(tmp_path, *SMOKE, "train.epochs=2", "resume=auto", "resume_fallback=true"))
    assert summary["status"] == "completed" and summary["step"] == 16
    log = (tmp_path / "train.log").read_text()
    assert f"resume_fallback=true: resuming from {tmp_path / 'checkpoints' / 'best.pt'} (step 8)" in log

    # The end of the run exports its weights as safetensors, as timm reads them.
    model = create_model(**summary_model(tmp_path), num_classes=10, in_chans=3, image_size=32)
    timm.models.load_checkpoint(model, str(tmp_path / "checkpoints" / "model.safetensors"))
    for key, tensor in load_checkpoint(last)["model"].items():
        assert torch.equal(model.state_dict()[key], tensor), key


def summary_model(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"]["model"]


IMAGES = [
    "data=imagefolder",
    "data.image_size=32",
    "data.batch_size=6",
    "data.workers=1",
    "model=lenet5",
    "train.epochs=1",
    "hardware=cpu",
]


def test_bad_images_are_skipped_and_named(tmp_path):
    bad = bad_image_tree(tmp_path / "images")
    for split in ("train", "val"):
        (tmp_path / "images" / split / "n09999999").mkdir()  # an empty class folder
    run = tmp_path / "run"
    summary = train(make_config(run, *IMAGES, f"data.root={tmp_path / 'images'}"))
    assert summary["status"] == "completed" and summary["skipped_image_count"] == 3
    assert sorted(summary["skipped_images"]) == bad
    assert json.loads((run / "summary.json").read_text())["skipped_images"] == summary["skipped_images"]
    log = (run / "train.log").read_text()
    for path in bad:
        assert f"skipped image {path}: " in log
    assert "n09999999 (kept as classes)" in log and "README.txt" in log
    assert load_checkpoint(run / "checkpoints" / "last.pt")["classes"][-1] == "n09999999"


def test_hidden_files_and_folders_are_neither_classes_nor_images(tmp_path):
    """Jupyter's .ipynb_checkpoints beside the classes and inside one, macOS's ._ copies, a .git folder: left
    out and counted in train.log; the classes and the images are the tree's own."""
    classes = make_image_tree(tmp_path / "images")
    train_split = tmp_path / "images" / "train"
    first = train_split / classes[0]
    for hidden in (train_split / ".ipynb_checkpoints" / "x", first / ".ipynb_checkpoints", train_split / ".git"):
        hidden.mkdir(parents=True)
        shutil.copy(first / "0.JPEG", hidden / "0.JPEG")
    (first / "._0.JPEG").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # not a JPEG: would be a bad image
    (tmp_path / "images" / "val" / ".ipynb_checkpoints").mkdir()
    run = tmp_path / "run"
    summary = train(make_config(run, *IMAGES, f"data.root={tmp_path / 'images'}"))
    assert summary["status"] == "completed" and not summary["skipped_images"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["classes"] == list(classes)
    log = (run / "train.log").read_text()
    assert f"data: 4 hidden files and folders in {train_split} left out: " in log
    assert f"data: 1 hidden files and folders in {tmp_path / 'images' / 'val'} left out: " in log


def test_splits_without_images_or_with_other_classes_name_what_differs(tmp_path):
    make_image_tree(tmp_path / "other", classes=("cat", "dog"))
    (tmp_path / "other" / "val" / "dog").rename(tmp_path / "other" / "val" / "emu")
    with pytest.raises(DataError, match=r"\(2 vs 2; only in train: 1: dog; only in val: 1: emu\)$"):
        build_data(make_config(tmp_path, *IMAGES, f"data.root={tmp_path / 'other'}"))
    for split in ("train", "val"):
        (tmp_path / "notes" / split / "a").mkdir(parents=True)
        (tmp_path / "notes" / split / "a" / "notes.txt").write_text("no image\n")
    with pytest.raises(
        DataError, match=f"^data: imagefolder's train split holds no images \\(data.root={tmp_path}/notes\\)$"
    ):
        build_data(make_config(tmp_path, *IMAGES, f"data.root={tmp_path / 'notes'}"))


def test_a_validation_batch_of_unreadable_images_alone_is_left_out(tmp_path):
    """The short last batch of validation may hold only unreadable files: it is left out (validation adds
    its batches up once, at the end) and the run goes on. A training batch cannot be: its step is counted."""
    make_image_tree(tmp_path / "images")
    last_class = tmp_path / "images" / "val" / "n01484850"
    (last_class / "zz.jpg").write_bytes((last_class / "0.JPEG").read_bytes()[:200])  # sorted last, alone
    summary = train(make_config(tmp_path / "run", *IMAGES, f"data.root={tmp_path / 'images'}"))  # val: 6, then 1
    assert summary["status"] == "completed" and list(summary["skipped_images"]) == [str(last_class / "zz.jpg")]
    unreadable = [(None, [("a.jpg", "OSError: Truncated File Read")])]
    with pytest.raises(DataError, match=r"^data: no image of a training batch is readable \(a.jpg\); a step cannot"):
        list(ReadableBatches(unreadable, "skip", {}))


def test_sixteen_bit_and_palette_images_decode_to_their_values(tmp_path):
    bad_image_tree(tmp_path)
    folder = tmp_path / "train" / "n01440764"
    deep = np.asarray(_open_image(str(folder / "deep.png")))
    assert np.array_equal(deep[..., 0], (np.arange(64 * 64).reshape(64, 64) * 16 >> 8).astype(np.uint8))
    assert np.asarray(_open_image(str(folder / "palette.png"))).max() == 6


@pytest.mark.slow  # a real command in a subprocess
def test_on_bad_image_error_stops_with_the_path_from_a_worker(tmp_path):
    make_image_tree(tmp_path / "images")
    broken = sorted((tmp_path / "images" / "train" / "n01443537").iterdir())[0]
    broken.write_bytes(broken.read_bytes()[:200])
    line = one_error_line(
        run_cli(
            *IMAGES, f"data.root={tmp_path / 'images'}", "data.on_bad_image=error", f"hydra.run.dir={tmp_path / 'run'}"
        )
    )
    assert line.startswith(f"cnnbench: error: {broken}: not a readable image")


def write_idx(path, array: np.ndarray):
    """LeCun's IDX format: magic (0, 0, uint8, ndim), big-endian sizes, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_labels_outside_the_classes_stop_before_training(tmp_path):
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", np.zeros((64, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(64) % 11)  # 10 is no MNIST digit
    with pytest.raises(
        DataError,
        match=r"^data: mnist \(train\) sample 10 has label 10, outside \[0, 10\) for "
        r"its 10 classes$",
    ):
        train(make_config(tmp_path / "run", "data=mnist", f"data.root={tmp_path}"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_on_other_classes_is_refused(tmp_path):
    make_image_tree(tmp_path / "a", classes=("cat", "dog", "fox"))
    make_image_tree(tmp_path / "b", classes=("cat", "dog", "owl"))
    common = [*IMAGES, "data.workers=0"]
    train(make_config(tmp_path / "run", *common, f"data.root={tmp_path / 'a'}"))
    with pytest.raises(CheckpointError, match="other classes.*fox.*owl"):
        train(make_config(tmp_path / "run", *common, f"data.root={tmp_path / 'b'}", "train.epochs=2", "resume=auto"))


def test_fine_tuning_onto_as_many_other_classes_needs_a_new_head(tmp_path):
    """A checkpoint's classifier on other classes of the same count would name them wrongly: refused before
    training, unless model.new_head=true, which starts that classifier afresh and keeps the rest."""
    make_image_tree(tmp_path / "a", classes=("cat", "dog", "fox"))
    make_image_tree(tmp_path / "b", classes=("cat", "dog", "owl"))
    common = [*IMAGES, "data.workers=0"]
    train(make_config(tmp_path / "run", *common, f"data.root={tmp_path / 'a'}"))
    weights = f"model.weights={tmp_path / 'run' / 'checkpoints' / 'last.pt'}"
    with pytest.raises(
        ConfigError,
        match=r"^model.weights: .*last.pt was trained on other classes \(3: cat, dog, "
        r"fox; here 3: cat, dog, owl\); model.new_head=true trains a new",
    ):
        train(make_config(tmp_path / "tuned", *common, f"data.root={tmp_path / 'b'}", weights))
    assert not (tmp_path / "tuned").exists()

    trained = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    kwargs = dict(num_classes=3, in_chans=3, image_size=32, weights=weights.partition("=")[2])
    kept = create_model("lenet5", classes=["cat", "dog", "fox"], **kwargs).state_dict()
    fresh = create_model("lenet5", classes=["cat", "dog", "owl"], new_head=True, **kwargs).state_dict()
    head = create_model("lenet5", **kwargs).pretrained_cfg["classifier"] + "."
    assert all(torch.equal(kept[k], v) for k, v in trained.items())
    assert all(torch.equal(fresh[k], v) != k.startswith(head) for k, v in trained.items() if "num_batches" not in k)
    train(make_config(tmp_path / "tuned", *common, f"data.root={tmp_path / 'b'}", weights, "model.new_head=true"))


@pytest.fixture
def poisoned_batch(monkeypatch):
    """The third batch the model sees (a training batch) holds NaN or huge values, as a corrupt sample
    or a bad augmentation would make it."""

    def poison(value):
        forward, calls = Normalize.forward, []

        def poisoned(self, images):
            calls.append(1)
            return forward(self, images) * value if len(calls) == 3 else forward(self, images)

        monkeypatch.setattr(Normalize, "forward", poisoned)

    return poison


def test_a_nan_batch_stops_the_run_at_its_step(tmp_path, poisoned_batch):
    poisoned_batch(float("nan"))
    with pytest.raises(NonfiniteLoss, match=r"loss nan at step 3 \(epoch 0, batch 3\)"):
        train(make_config(tmp_path, *SMOKE, "train.epochs=1", "train.checkpoint_every_steps=1"))
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 2 and all(t.isfinite().all() for t in state["model"].values())


def test_on_nonfinite_skip_skips_and_counts_the_step(tmp_path, poisoned_batch):
    poisoned_batch(float("inf"))
    summary = train(make_config(tmp_path, *SMOKE, "train.epochs=1", "train.on_nonfinite=skip"))
    assert summary["status"] == "completed" and summary["nonfinite_skipped_steps"] == 1
    assert re.search(
        r"train.on_nonfinite=skip: loss (nan|inf) at step 3 \(epoch 0, batch 3\), update skipped",
        (tmp_path / "train.log").read_text(),
    )
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert all(t.isfinite().all() for t in state["model"].values())
    assert np.isfinite(state["history"][0]["train_loss"])


@pytest.mark.parametrize("on_nonfinite", ["skip", "error"])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_nonfinite_update_is_decided_on_the_device_and_read_later(name, on_nonfinite, caplog):
    """The path a GPU takes (engine/nonfinite.py; issue 20, item 13), shown on the CPU: torch's fused kernel
    skips the poisoned update, torch.where puts back the batch-norm statistics, and the host hears of it
    at the next read. In error mode the updates until then are skipped too: the weights stay from before."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 2)
    )
    optimizer = (
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
        if name == "sgd"
        else torch.optim.AdamW(model.parameters(), lr=0.01, fused=True)
    )
    guard = NonfiniteGuard(model, optimizer, torch.amp.GradScaler("cpu", enabled=False), on_nonfinite, Dist())
    faults = {"nonfinite_skipped_steps": 0}

    def update(step: int, scale: float = 1.0) -> bool:
        guard.start_update()
        loss = model(torch.randn(8, 1, 6, 6) * scale).square().mean()
        loss.backward()
        loss = loss.detach().double()
        decided_on_device = guard.on_device()
        with guard.deciding(~loss.isfinite(), loss, (step, 0, step)) if decided_on_device else nullcontext():
            optimizer.step()  # a finite update where the host decides
        optimizer.zero_grad()
        return decided_on_device

    def state():
        return copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict()})

    # Fused SGD's first update with momentum is read on the host: its kernel, skipping, would leave the
    # momentum buffers it makes uninitialised.
    assert update(1) == (name == "adamw")
    guard.read(faults)
    before = state()
    assert update(2, float("inf")) and update(3)
    after = state()
    assert faults["nonfinite_skipped_steps"] == 0 and len(guard.unread) == 2  # nothing read yet
    parameters = dict(model.named_parameters())
    if on_nonfinite == "skip":
        update_3_changed = [k for k in parameters if not torch.equal(before["model"][k], after["model"][k])]
        assert update_3_changed  # the finite update after the skipped one trains
        with caplog.at_level(logging.WARNING, "cnnbench"):
            guard.read(faults)
        assert faults["nonfinite_skipped_steps"] == 1 and not guard.unread
        assert re.fullmatch(
            r"train.on_nonfinite=skip: loss (nan|inf) at step 2 \(epoch 0, batch 2\), update skipped",
            caplog.records[-1].getMessage(),
        )
        # The skipped update alone, replayed from `before`: weights, statistics and optimizer state untouched.
        model.load_state_dict(before["model"])
        optimizer.load_state_dict(before["optimizer"])
        update(2, float("inf"))
        assert_same_weights_and_optimizer(before, state())
    else:
        assert_same_weights_and_optimizer(
            {"model": {k: before["model"][k] for k in parameters}, "optimizer": before["optimizer"]}, after
        )
        with pytest.raises(
            NonfiniteLoss,
            match=r"^train: loss (nan|inf) at step 2 \(epoch 0, batch 2\); the "
            r"weights are kept from before it",
        ):
            guard.read(faults)


def test_nonfinite_updates_decided_on_the_device_in_a_run(tmp_path, poisoned_batch):
    """optimizer.fused=true takes the device's path on the CPU: the run with a poisoned third batch ends
    with the very weights, statistics and optimizer state of the run that stopped before it."""
    common = [*SMOKE, "train.epochs=1", "optimizer.fused=true", "scheduler=constant", "train.on_nonfinite=skip"]
    train(make_config(tmp_path / "clean", *common, "train.limit_train_batches=2"))
    poisoned_batch(float("inf"))
    summary = train(make_config(tmp_path / "poisoned", *common, "train.limit_train_batches=3"))
    assert summary["status"] == "completed" and summary["nonfinite_skipped_steps"] == 1
    assert re.search(
        r"train.on_nonfinite=skip: loss (nan|inf) at step 3 \(epoch 0, batch 3\), update skipped",
        (tmp_path / "poisoned" / "train.log").read_text(),
    )
    clean, poisoned = (load_checkpoint(tmp_path / name / "checkpoints" / "last.pt") for name in ("clean", "poisoned"))
    assert poisoned["step"] == 3 and all(group["fused"] for group in poisoned["optimizer"]["param_groups"])
    assert_same_weights_and_optimizer(clean, poisoned)


def test_a_nonfinite_update_decided_on_the_device_stops_the_run_at_the_next_read(tmp_path, poisoned_batch):
    """train.on_nonfinite=error with optimizer.fused=true: the run stops at the first read after the poisoned
    step (here step 4's checkpoint, which is not written), naming that step."""
    poisoned_batch(float("nan"))
    with pytest.raises(NonfiniteLoss, match=r"loss nan at step 3 \(epoch 0, batch 3\)"):
        train(make_config(tmp_path, *SMOKE, "train.epochs=1", "optimizer.fused=true", "train.checkpoint_every_steps=2"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["step"] == 4  # the host's read every update stops at 2
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2


def test_fp16_overflow_skips_are_counted(tmp_path, poisoned_batch):
    """Inputs x1000 through a network without batch norm: finite loss, fp16 gradients that overflow."""
    poisoned_batch(1000.0)
    summary = train(
        make_config(
            tmp_path,
            *[a for a in SMOKE if "variant" not in a],
            "model=fmnist_cnn",
            "model.width_mult=0.25",
            "hardware.precision=fp16",
            "train.epochs=1",
            "train.limit_train_batches=4",
            "train.limit_val_batches=1",
        )
    )
    assert summary["scaler_skipped_steps"] >= 1 and summary["nonfinite_skipped_steps"] == 0
    assert (
        "step 3: fp16 gradients overflowed; the GradScaler skipped the update" in (tmp_path / "train.log").read_text()
    )


def test_an_absurd_learning_rate_stops_with_the_step_and_value(tmp_path):
    with pytest.raises(NonfiniteLoss, match=r"^train: loss (nan|inf|-inf) at step \d+ ") as error:
        train(make_config(tmp_path, *SMOKE, "train.epochs=1", "optimizer.lr=1e30", "train.checkpoint_every_steps=1"))
    bad_step = int(str(error.value).split(" at step ")[1].split()[0])
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    if bad_step > 1:
        state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
        assert state["step"] == bad_step - 1
    else:
        assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_a_pickle_that_runs_code_is_refused_everywhere(tmp_path):
    payload = RunsCode()
    payload.marker = tmp_path / "code_ran"
    malicious = tmp_path / "malicious.pt"
    torch.save({"model": payload, "optimizer": {}, "scheduler": {}, "epoch": 0, "step": 0, "config": {}}, malicious)
    with pytest.raises(CheckpointError, match=f"^{malicious}: .*refused: loading them could run code"):
        train(make_config(tmp_path / "run", *SMOKE, f"resume={malicious}"))
    with pytest.raises(ConfigError, match=str(malicious)):
        create_model("lenet5", weights=str(malicious), num_classes=10, in_chans=3, image_size=32)
    assert not payload.marker.exists()
