"""Configs are built the way `python -m cnnbench.train` builds them: Hydra's compose API on conf/."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from cnnbench.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
register_configs()


def make_config(run_dir: Path, *overrides: str, app: str = "train"):
    """The config of `python -m cnnbench.<app>` (train, evaluate, predict) with these overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(app, overrides=[f"run_dir={run_dir}", *overrides])


def run_cli(*args: str, module: str = "cnnbench.train", timeout: float = 300) -> subprocess.CompletedProcess:
    """An entry point as a user runs it, in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


# A run small enough for a test: tiny batches, synthetic 32x32 images, one thread of work.
SMOKE = ["data=synthetic", "data.image_size=32", "data.train_size=256", "data.val_size=64",
         "data.batch_size=32", "model=lenet5", "model.variant=modern", "hardware=cpu"]


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA device: skipped, with the reason, where torch sees none (CI, a laptop)."""
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture
def smoke():
    return list(SMOKE)


def assert_same_weights_and_optimizer(a: dict, b: dict) -> None:
    """Two checkpoints hold bit-identical model weights and optimizer state."""
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    for param, state in a["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(tensor, b["optimizer"]["state"][param][key]), (param, key)


@pytest.fixture
def tiny_disk(tmp_path, request):
    """A tmpfs (root only) of 2 MiB, or of the size given by indirect parametrization: a disk that really
    fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    size = getattr(request, "param", "2m")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)
