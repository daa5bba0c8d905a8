"""Helpers shared by more than one test module. Configs are built the way `python -m cnnbench.train` builds
them: Hydra's compose API on conf/."""

import atexit
import csv
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from cnnbench.config import register_configs
from cnnbench.engine.recorder import MEASURED

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
register_configs()


def make_config(run_dir: Path, *overrides: str, app: str = "train"):
    """The config of `python -m cnnbench.<app>` (train, evaluate, predict) with these overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(app, overrides=[f"run_dir={run_dir}", *overrides])


def run_cli(
    *args: str, module: str = "cnnbench.train", timeout: float = 300, cold: bool = False, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` as a user runs it, in a process of its own: forked from the suite's warm
    interpreter (tests/zygote.py), or with `cold` a fresh `python` that imports everything itself."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cold:
        return subprocess.run(
            [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
        )
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull) as stdin:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(zygote())
            request = {"module": module, "args": list(args), "cwd": str(cwd), "env": env}
            socket.send_fds(conn, [json.dumps(request).encode()], [stdin.fileno(), out.fileno(), err.fileno()])
            replies = conn.makefile()
            pid = int(replies.readline())
            conn.settimeout(timeout)
            try:
                returncode = int(replies.readline())
            except TimeoutError:
                os.kill(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired([module, *args], timeout) from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            [sys.executable, "-m", module, *args], returncode, out.read().decode(), err.read().decode()
        )


@functools.cache
def zygote() -> str:
    """The socket of this test process's warm interpreter, started on first use; it ends with this process
    (its stdin closes)."""
    path = os.path.join(tempfile.mkdtemp(prefix="cnnbench-zygote-"), "socket")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.zygote", path],
        stdin=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    atexit.register(process.stdin.close)
    while not os.path.exists(path):
        if process.poll() is not None:
            raise RuntimeError(f"tests/zygote.py exited with {process.returncode}")
        time.sleep(0.05)
    return path


# A run small enough for a test: tiny batches, synthetic 32x32 images, one thread of work.
SMOKE = [
    "data=synthetic",
    "data.image_size=32",
    "data.train_size=256",
    "data.val_size=64",
    "data.batch_size=32",
    "model=lenet5",
    "model.variant=modern",
    "hardware=cpu",
]


def assert_same_weights_and_optimizer(a: dict, b: dict) -> None:
    """Two checkpoints hold bit-identical model weights and optimizer state."""
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for param, state in a["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(tensor, b["optimizer"]["state"][param][key]), (param, key)


def metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def reproducible_metrics(run_dir):
    """metrics.csv without the columns that measure the machine (time, memory): what an exact resume repeats."""
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in metrics(run_dir)]


def confusion_matrix(run_dir) -> tuple[list[str], list[list[int]]]:
    """confusion_matrix.csv's classes and counts (true class x predicted)."""
    with open(run_dir / "confusion_matrix.csv") as f:
        header, *rows = csv.reader(f)
    assert [row[0] for row in rows] == header[1:]
    return header[1:], [[int(n) for n in row[1:]] for row in rows]


def tensorboard_events(run_dir) -> EventAccumulator:
    """tb/ as TensorBoard reads it, every image and tensor kept."""
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    return events


def tensorboard_tag_counts(run_dir) -> Counter:
    """How many times each tag was written to tb/, over all its event files (a resumed run adds one)."""
    return Counter(
        value.tag
        for path in sorted((run_dir / "tb").iterdir())
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    )


def one_error_line(result):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def make_image_tree(root, classes=("n01440764", "n01443537", "n01484850")):
    """An ImageNet-layout tree: RGB and grayscale JPEGs, CMYK JPEGs and RGBA PNGs, per class."""
    g = torch.Generator().manual_seed(0)
    for split, count in (("train", 6), ("val", 2)):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(40, 48, 3, generator=g) * 80 + 60 * c).byte().numpy()
                image = Image.fromarray(pixels)
                kind = i % 4
                if kind == 0:
                    image.save(folder / f"{i}.JPEG")
                elif kind == 1:
                    image.convert("L").save(folder / f"{i}.jpg")
                elif kind == 2:
                    image.convert("CMYK").save(folder / f"{i}.jpeg")
                else:
                    image.convert("RGBA").save(folder / f"{i}.png")
    return classes


def bad_image_tree(root):
    """make_image_tree plus every kind of file an image folder collects in practice."""
    make_image_tree(root)
    folder = root / "train" / "n01440764"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(folder / "whole.jpg")
    (folder / "truncated.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:1500])
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a JPEG\n")
    (folder / "README.txt").write_text("stray notes\n")
    Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64) % 7).convert("P").save(folder / "palette.png")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(folder / "deep.png")
    return [str(folder / name) for name in ("text.jpg", "truncated.jpg", "zero.jpg")]


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
