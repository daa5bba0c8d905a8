"""The package as a user installs it: a wheel, outside the checkout, with the user's own configs and model."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from .helpers import ROOT

pytestmark = pytest.mark.slow

TINY = [
    "data=synthetic",
    "data.image_size=32",
    "data.train_size=64",
    "data.val_size=32",
    "data.batch_size=32",
    "hardware=cpu",
    "train.epochs=1",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, installed into a directory of its own (pip --target, no
    dependencies: the venv's torch stays), with the directory's console scripts."""
    tmp = tmp_path_factory.mktemp("install")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp / "wheel"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        cwd=tmp,
    )
    wheel = next((tmp / "wheel").glob("cnnbench-*.whl"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp / "site"), str(wheel)],
        check=True,
        capture_output=True,
        cwd=tmp,
    )
    user = tmp / "user"  # the user's own package and config directory, far from the checkout
    (user / "conf" / "model").mkdir(parents=True)
    (user / "usernets.py").write_text(
        textwrap.dedent("""
        import torch.nn as nn

        class TinyNet(nn.Module):
            def __init__(self, num_classes, in_chans=3, width_mult=1.0):
                super().__init__()
                width = int(16 * width_mult)
                self.features = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(),
                                              nn.AdaptiveAvgPool2d(1), nn.Flatten())
                self.head = nn.Linear(width, num_classes)

            def forward(self, x):
                return self.head(self.features(x))
        """)
    )
    (user / "conf" / "model" / "tinynet.yaml").write_text(
        "name: tinynet\n_target_: usernets.TinyNet\nwidth_mult: 1.0\n"
    )
    work = tmp / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{tmp / 'site'}:{user}"}
    return tmp / "site", user, work, env


def run_installed(installed, command: str, *args: str) -> subprocess.CompletedProcess:
    site, _, work, env = installed
    return subprocess.run(
        [str(site / "bin" / command), *args], capture_output=True, text=True, cwd=work, env=env, timeout=300
    )


def test_the_wheel_trains_evaluates_and_predicts_from_another_directory(installed):
    site, _, work, env = installed
    where = subprocess.run(
        [sys.executable, "-c", "import cnnbench.train; print(cnnbench.train.__file__)"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        check=True,
    )
    assert where.stdout.startswith(str(site)), where.stdout  # the wheel's code, not the checkout's

    train = run_installed(installed, "cnnbench-train", *TINY, "model=lenet5", "hydra.run.dir=run")
    assert train.returncode == 0, train.stderr
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["model"] == "lenet5"

    evaluate = run_installed(
        installed, "cnnbench-evaluate", "checkpoint=run/checkpoints/last.pt", "hardware=cpu", "hydra.run.dir=eval"
    )
    assert evaluate.returncode == 0, evaluate.stderr
    assert json.loads((work / "eval" / "evaluation.json").read_text())["top1"] == summary["final_val_top1"]

    Image.new("RGB", (32, 32), (200, 30, 30)).save(work / "red.png")
    predict = run_installed(
        installed,
        "cnnbench-predict",
        "checkpoint=run/checkpoints/last.pt",
        "images=[red.png]",
        "topk=2",
        "hardware=cpu",
        "hydra.run.dir=predict",
    )
    assert predict.returncode == 0, predict.stderr
    assert len(json.loads((work / "predict" / "predictions.json").read_text())[0]["topk"]) == 2


def test_a_users_own_config_directory_and_model_class_train_from_the_wheel(installed):
    _, user, work, _ = installed
    train = run_installed(
        installed,
        "cnnbench-train",
        f"hydra.searchpath=[file://{user / 'conf'}]",
        *TINY,
        "model=tinynet",
        "model.width_mult=2",
        "hydra.run.dir=user_run",
    )
    assert train.returncode == 0, train.stderr
    summary = json.loads((work / "user_run" / "summary.json").read_text())
    # TinyNet at width_mult 2: a 3x3 conv of 3 -> 32 channels and a 32 -> 10 head
    assert summary["status"] == "completed" and summary["params"] == (3 * 9 * 32 + 32) + (32 * 10 + 10)
