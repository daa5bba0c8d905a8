"""Careless and hostile inputs (issue 21): each ends in one line naming the culprit and what to do, exits
non-zero and loses nothing, or is handled as a user would want (linked folders followed, never mislabelled)."""
import logging
import os
import shutil
from collections import Counter

import pytest
import safetensors.torch
import timm.utils
import torch

from cnnbench.config import check_config
from cnnbench.data.datasets import image_folder
from cnnbench.errors import ConfigError
from cnnbench.models import create_model

from .conftest import SMOKE, make_config, run_cli
from .test_train import make_image_tree


def one_error_line(result):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_linked_folders_are_followed_but_never_into_a_loop_or_another_class(tmp_path):
    root = tmp_path / "images"
    make_image_tree(root)
    train = root / "train"
    os.symlink("..", train / "n01440764" / "loop")  # every class again, under the first
    os.symlink("../n01443537", train / "n01440764" / "sibling")
    # Legitimate links: a class folder kept elsewhere, a linked folder and a linked image inside a class.
    shutil.move(train / "n01484850", tmp_path / "shared")
    os.symlink(tmp_path / "shared", train / "n01484850")
    (tmp_path / "more").mkdir()
    shutil.copy(tmp_path / "shared" / "0.JPEG", tmp_path / "more" / "extra.JPEG")
    os.symlink(tmp_path / "more", train / "n01484850" / "more")
    os.symlink(tmp_path / "shared" / "1.jpg", train / "n01443537" / "linked.jpg")

    split = image_folder("imagefolder", str(root), True, False, on_bad_image="skip")
    assert split.classes == ["n01440764", "n01443537", "n01484850"]
    assert Counter(split.dataset.targets) == {0: 6, 1: 7, 2: 7}
    for path, label in split.dataset.samples:
        assert path.startswith(str(train / split.classes[label])), path
    (warning,) = [w for w in split.warnings if "linked" in w]
    assert f"{train / 'n01440764' / 'loop'} -> {train}" in warning
    assert f"{train / 'n01440764' / 'sibling'} -> {train / 'n01443537'}" in warning


def test_a_model_too_big_for_the_images_names_the_smallest_size(tmp_path):
    run = tmp_path / "run"
    line = one_error_line(run_cli(*[a for a in SMOKE if "variant" not in a], "model=alexnet", "data.image_size=8", f"hydra.run.dir={run}"))
    assert line == "cnnbench: error: model.name=alexnet: needs data.image_size >= 15, got 8"
    assert not (run / "checkpoints").exists()
    for name, size, smallest in (("lenet5", 2, 28), ("lenet5", 30, 32), ("nin", 8, 15)):
        with pytest.raises(ConfigError, match=f"^model.name={name}: needs data.image_size >= {smallest}, got {size}$"):
            create_model(name, num_classes=10, image_size=size)
        create_model(name, num_classes=10, image_size=smallest)(torch.zeros(2, 3, smallest, smallest))


def test_weights_of_another_channel_count_adapt_the_first_conv(tmp_path, caplog):
    gray = create_model("lenet5", num_classes=10, in_chans=1, image_size=32).eval()
    path = tmp_path / "gray.safetensors"
    safetensors.torch.save_file(gray.state_dict(), path)
    with caplog.at_level(logging.WARNING, "cnnbench"):
        rgb = create_model("lenet5", num_classes=10, in_chans=3, image_size=32, weights=str(path)).eval()
    assert f"model.weights: 0.weight of {path} adapted from 1 input channels to 3" in caplog.text
    images = torch.rand(2, 1, 32, 32)  # a gray image and its RGB copy meet the same network
    torch.testing.assert_close(rgb(images.expand(-1, 3, -1, -1)), gray(images))
    with pytest.raises(ConfigError, match=r"^model.weights: .*gray.safetensors does not fit this model: \S+ is "
                                          r"\[16\] there, \[32\] here"):  # another width: no adapting that
        create_model("lenet5", num_classes=10, in_chans=1, image_size=32, width_mult=2.0, weights=str(path))


def test_seeds_outside_numpys_range_stop_naming_the_range(tmp_path):
    line = one_error_line(run_cli(*SMOKE, "seed=99999999999999999999", f"hydra.run.dir={tmp_path / 'run'}"))
    assert line == ("cnnbench: error: seed: in [0, 4294967295] (numpy's range, less one per extra rank: rank r "
                    "uses seed + r; here 1 ranks), got 99999999999999999999")
    with pytest.raises(ConfigError, match=r"^seed: in \[0, 4294967295\] .* got -1$"):
        check_config(make_config(tmp_path, *SMOKE, "seed=-1"))
    # Two ranks: rank 1 would seed numpy with seed + 1, so the top seed is one less.
    with pytest.raises(ConfigError, match=r"^seed: in \[0, 4294967294\] .*here 2 ranks\), got 4294967295$"):
        check_config(make_config(tmp_path, *SMOKE, "hardware.nproc=2", "seed=4294967295"))
    with pytest.raises(ValueError):
        timm.utils.random_seed(4294967295, 1)  # what the check saves rank 1 from
    check_config(make_config(tmp_path, *SMOKE, "hardware.nproc=2", "seed=4294967294"))
    timm.utils.random_seed(4294967294, 1)
