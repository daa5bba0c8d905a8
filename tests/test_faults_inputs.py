"""Careless and hostile inputs (issue 21): each ends in one line naming the culprit and what to do, exits
non-zero and loses nothing, or is handled as a user would want (linked folders followed, never mislabelled)."""

import logging
import os
import shutil
import subprocess
import zlib
from collections import Counter
from unittest.mock import ANY

import pytest
import safetensors.torch
import timm.utils
import torch
from PIL import Image

from cnnbench.cli import memory_error_message
from cnnbench.config import check_config
from cnnbench.data.datasets import ImageFiles, _open_image, image_folder
from cnnbench.engine.build import check_batch_statistics
from cnnbench.engine.checkpoint import load_checkpoint
from cnnbench.engine.distributed import check_cpu_rank_count
from cnnbench.engine.inference import predict
from cnnbench.engine.trainer import train
from cnnbench.errors import CheckpointError, ConfigError
from cnnbench.models import create_model

from .helpers import SMOKE, make_config, make_image_tree, one_error_line, run_cli

pytestmark = pytest.mark.slow  # every case is a real command in a subprocess


def test_linked_folders_are_followed_but_never_into_a_loop_or_another_class(tmp_path):
    root = tmp_path / "images"
    make_image_tree(root)
    split = root / "train"
    os.symlink("..", split / "n01440764" / "loop")  # every class again, under the first
    os.symlink("../n01443537", split / "n01440764" / "sibling")
    # Legitimate links: a class folder kept elsewhere, a linked folder and a linked image inside a class.
    shutil.move(split / "n01484850", tmp_path / "shared")
    os.symlink(tmp_path / "shared", split / "n01484850")
    (tmp_path / "more").mkdir()
    shutil.copy(tmp_path / "shared" / "0.JPEG", tmp_path / "more" / "extra.JPEG")
    os.symlink(tmp_path / "more", split / "n01484850" / "more")
    os.symlink(tmp_path / "shared" / "1.jpg", split / "n01443537" / "linked.jpg")

    found = image_folder("imagefolder", str(root), True, False, on_bad_image="skip")
    assert found.classes == ["n01440764", "n01443537", "n01484850"]
    assert Counter(found.dataset.targets) == {0: 6, 1: 7, 2: 7}
    for path, label in found.dataset.samples:
        assert path.startswith(str(split / found.classes[label])), path
    (warning,) = [w for w in found.warnings if "linked" in w]
    assert f"{split / 'n01440764' / 'loop'} -> {split}" in warning
    assert f"{split / 'n01440764' / 'sibling'} -> {split / 'n01443537'}" in warning


def test_a_model_too_big_for_the_images_names_the_smallest_size(tmp_path):
    run = tmp_path / "run"
    line = one_error_line(
        run_cli(*[a for a in SMOKE if "variant" not in a], "model=alexnet", "data.image_size=8", f"hydra.run.dir={run}")
    )
    assert line == "cnnbench: error: model.name=alexnet: needs data.image_size >= 15, got 8"
    assert not (run / "checkpoints").exists()
    for name, size, smallest in (("lenet5", 2, 28), ("lenet5", 30, 32), ("nin", 8, 15)):
        with pytest.raises(ConfigError, match=f"^model.name={name}: needs data.image_size >= {smallest}, got {size}$"):
            create_model(name, num_classes=10, image_size=size)
        create_model(name, num_classes=10, image_size=smallest)(torch.zeros(2, 3, smallest, smallest))
    with pytest.raises(ConfigError, match="^model.name=inception_v3: needs data.image_size >= 75, got 32$"):
        create_model("inception_v3", source="torchvision", num_classes=10, image_size=32)  # named, not "torchvision"
    vit = create_model("vit_tiny_patch16_224", source="timm", num_classes=10, image_size=32)  # fixed size: built for it
    assert vit(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_one_image_a_rank_is_refused_where_batch_norm_would_train_on_it(tmp_path):
    """Batch norm trains on the batch's statistics: on one image, torch raises where a feature map is 1x1
    (Inception v3's auxiliary head at 32 px) and elsewhere trains on that image's. Without it, one will do."""
    base = [a for a in SMOKE if "batch_size" not in a and "variant" not in a]
    run = tmp_path / "run"
    line = one_error_line(run_cli(*base, "model=inception_v3", "data.batch_size=1", f"hydra.run.dir={run}"))
    assert line == (
        "cnnbench: error: data.batch_size: 1 image a step is too few for inception_v3's batch norm, "
        "which trains on the batch's statistics: at least 2"
    )
    assert not (run / "checkpoints").exists()
    cfg = make_config(tmp_path, *base, "data.batch_size=2")
    with pytest.raises(ConfigError, match=r"^data.batch_size: 2 over 2 ranks is 1 image a rank, too few .*least 4$"):
        check_batch_statistics(create_model("lenet5", variant="modern", num_classes=10, image_size=32), cfg, 2)
    check_batch_statistics(create_model("lenet5", variant="classic", num_classes=10, image_size=32), cfg, 2)


def test_weights_of_another_channel_count_adapt_the_first_conv(tmp_path, caplog):
    gray = create_model("lenet5", num_classes=10, in_chans=1, image_size=32).eval()
    path = tmp_path / "gray.safetensors"
    safetensors.torch.save_file(gray.state_dict(), path)
    with caplog.at_level(logging.WARNING, "cnnbench"):
        rgb = create_model("lenet5", num_classes=10, in_chans=3, image_size=32, weights=str(path)).eval()
    assert f"model.weights: 0.weight of {path} adapted from 1 input channels to 3" in caplog.text
    images = torch.rand(2, 1, 32, 32)  # a gray image and its RGB copy meet the same network
    torch.testing.assert_close(rgb(images.expand(-1, 3, -1, -1)), gray(images))
    with pytest.raises(
        ConfigError,
        match=r"^model.weights: .*gray.safetensors does not fit this model: \S+ is "
        r"\[16\] there, \[32\] here",
    ):  # another width: no adapting that
        create_model("lenet5", num_classes=10, in_chans=1, image_size=32, width_mult=2.0, weights=str(path))


def test_seeds_outside_numpys_range_stop_naming_the_range(tmp_path):
    line = one_error_line(run_cli(*SMOKE, "seed=99999999999999999999", f"hydra.run.dir={tmp_path / 'run'}"))
    assert line == (
        "cnnbench: error: seed: in [0, 4294967295] (numpy's range, less one per extra rank: rank r "
        "uses seed + r; here 1 ranks), got 99999999999999999999"
    )
    with pytest.raises(ConfigError, match=r"^seed: in \[0, 4294967295\] .* got -1$"):
        check_config(make_config(tmp_path, *SMOKE, "seed=-1"))
    # Two ranks: rank 1 would seed numpy with seed + 1, so the top seed is one less.
    with pytest.raises(ConfigError, match=r"^seed: in \[0, 4294967294\] .*here 2 ranks\), got 4294967295$"):
        check_config(make_config(tmp_path, *SMOKE, "hardware.nproc=2", "seed=4294967295"))
    with pytest.raises(ValueError):
        timm.utils.random_seed(4294967295, 1)  # what the check saves rank 1 from
    check_config(make_config(tmp_path, *SMOKE, "hardware.nproc=2", "seed=4294967294"))
    timm.utils.random_seed(4294967294, 1)


@pytest.mark.parametrize(
    "module, key, kind, message",
    [
        ("cnnbench.evaluate", "checkpoint", "empty", "is empty (0 bytes)"),
        ("cnnbench.predict", "checkpoint", "text", "is not a checkpoint file (it is text)"),
        ("cnnbench.train", "model.weights", "directory", "is a directory; pass a .pt or .safetensors file"),
        ("cnnbench.train", "model.weights", "empty", "is empty (0 bytes)"),
    ],
)
def test_files_that_are_no_checkpoint_say_what_they_are(tmp_path, module, key, kind, message):
    path = tmp_path / ("weights.safetensors" if kind == "empty" and key == "model.weights" else "model.pt")
    if kind == "directory":
        path.mkdir()
    else:
        path.write_text("" if kind == "empty" else "step 10: loss 0.5\n")
    args = {
        "cnnbench.train": [*SMOKE, f"hydra.run.dir={tmp_path / 'run'}"],
        "cnnbench.predict": [f"images=[{tmp_path / 'x.png'}]"],
    }.get(module, [])
    line = one_error_line(run_cli(*args, f"{key}={path}", module=module))
    assert line.startswith("cnnbench: error: ") and line.endswith(
        f"{path} {message}" if key == "model.weights" else f"{path}: {message}"
    )


def test_an_empty_last_checkpoint_falls_back_to_the_valid_one(tmp_path):
    train(make_config(tmp_path, *SMOKE, "train.epochs=1"))
    last = tmp_path / "checkpoints" / "last.pt"
    last.write_bytes(b"")  # a disk that filled up or a copy that failed, under its final name
    with pytest.raises(CheckpointError, match=f"^{last}: is empty \\(0 bytes\\); best.pt beside it is valid"):
        train(make_config(tmp_path, *SMOKE, "train.epochs=2", "resume=auto"))
    summary = train(make_config(tmp_path, *SMOKE, "train.epochs=2", "resume=auto", "resume_fallback=true"))
    assert summary["status"] == "completed" and summary["step"] == 16


def decompression_bomb(path, side=30_000):
    """A PNG whose header claims side x side pixels (PIL refuses over 2 * MAX_IMAGE_PIXELS before decoding):
    a small image's IHDR chunk rewritten, its CRC too, so no memory goes into making it."""
    Image.new("P", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = side.to_bytes(4, "big") * 2  # IHDR: width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


def test_predict_names_a_decompression_bomb_and_bounds_dense_scale(tmp_path):
    (tmp_path / "images" / "cat").mkdir(parents=True)
    bomb = tmp_path / "images" / "cat" / "bomb.png"
    decompression_bomb(bomb)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    # Training leaves it out of its batch (as test_faults.py::test_bad_images_are_skipped_and_named), predict names it.
    assert ImageFiles(str(tmp_path / "images"), loader=_open_image)[0] == (str(bomb), ANY)
    train(
        make_config(
            tmp_path / "run", *SMOKE, "train.epochs=1", "train.limit_train_batches=1", "train.limit_val_batches=1"
        )
    )
    checkpoint = f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.pt'}"
    line = one_error_line(run_cli(checkpoint, f"images=[{bomb}]", "hardware=cpu", module="cnnbench.predict"))
    assert line.startswith(f"cnnbench: error: images: {bomb} is too large to decode (Image size (900000000 pixels)")
    Image.new("RGB", (32, 32)).save(tmp_path / "fine.png")
    line = one_error_line(
        run_cli(
            checkpoint,
            f"images=[{tmp_path / 'fine.png'}]",
            "dense=true",
            "dense_scale=1000",
            "hardware=cpu",
            module="cnnbench.predict",
        )
    )
    assert line == (
        "cnnbench: error: dense_scale: at most 128 for this model's 32 px images (a 4096 px side), got 1000.0"
    )


@pytest.fixture
def read_only_dir(tiny_disk):
    """A read-only tmpfs: chmod stops no root, a read-only mount stops everyone."""
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    return tiny_disk


def test_paths_that_cannot_be_used_end_in_one_line(tmp_path, read_only_dir):
    long_root = tmp_path / ("a" * 300)
    line = one_error_line(
        run_cli("data=imagefolder", f"data.root={long_root}", "hardware=cpu", f"hydra.run.dir={tmp_path / 'run'}")
    )
    assert (
        line == f"cnnbench: error: {long_root / 'train'}: File name too long; use a shorter path (the system "
        f"allows 255 bytes a name, 4096 in all)"
    )
    (tmp_path / "taken").write_text("notes\n")
    for run_dir, reason in (
        (tmp_path / "taken", "File exists; a file stands where a directory is needed"),
        (tmp_path / "taken" / "run", "Not a directory; a file stands where a directory is needed"),
        (read_only_dir / "run", "Read-only file system; choose a place on a writable file system"),
        (read_only_dir, "Read-only file system; choose a place on a writable file system"),
        ("/proc/cnnbench-run", "No such file or directory; it does not exist, or cannot be made there (/proc)"),
    ):
        line = one_error_line(run_cli(*SMOKE, f"hydra.run.dir={run_dir}"))
        assert line.startswith(f"cnnbench: error: hydra.run.dir={run_dir}: {reason}"), line
    assert (tmp_path / "taken").read_text() == "notes\n"
    line = one_error_line(
        run_cli("checkpoint=best.pt", f"hydra.run.dir={tmp_path / 'taken'}", module="cnnbench.evaluate")
    )
    assert line.startswith(f"cnnbench: error: hydra.run.dir={tmp_path / 'taken'}: File exists")


def test_cpu_ranks_beyond_the_cores_are_warned_and_far_beyond_refused(tmp_path, caplog):
    cores = len(os.sched_getaffinity(0))
    line = one_error_line(run_cli(*SMOKE, f"hardware.nproc={4 * cores + 1}", f"hydra.run.dir={tmp_path / 'run'}"))
    assert line.startswith(
        f"cnnbench: error: hardware.nproc: {4 * cores + 1} CPU ranks are too many for {cores} cores and "
    ) and line.endswith(f"{cores} run at full speed")
    assert not (tmp_path / "run" / "train.log").exists()
    with caplog.at_level(logging.WARNING, "cnnbench"):
        check_cpu_rank_count(make_config(tmp_path, *SMOKE, f"hardware.nproc={cores + 1}").hardware)
    assert f"hardware.nproc: {cores + 1} CPU ranks share {cores} cores" in caplog.text


@pytest.mark.parametrize(
    "module,override,line",
    [
        ("train", "model.widht_mult=2", "model.widht_mult: not a key of the config; did you mean model.width_mult?"),
        ("train", "epochs=3", "epochs: not a key of the config; did you mean train.epochs?"),
        ("train", "train.epochs=abc", "train.epochs: Value 'abc' of type 'str' could not be converted to Integer"),
        (
            "train",
            "model=resnet",
            "model=resnet: not an option of model; did you mean resnet50, resnet34, resnet18? --help lists them",
        ),
        (
            "train",
            "train.epochs=[1",
            "train.epochs=[1: not an override Hydra can parse (no viable alternative at input '[1')",
        ),
        ("evaluate", "checkpint=best.pt", "checkpint: not a key of the config; did you mean checkpoint?"),
        ("predict", "images=a.jpg", "images: a list, written in brackets: images=[a,b]"),
    ],
)
def test_hydras_own_errors_end_in_one_line_naming_the_key(tmp_path, module, override, line):
    """A mistyped key or option, a value of the wrong type, an override Hydra cannot parse: Hydra's message
    (and its exit 1) turned into the project's line, with the name the user most likely meant."""
    run = tmp_path / "run"
    result = run_cli(override, f"hydra.run.dir={run}", module=f"cnnbench.{module}")
    assert one_error_line(result) == f"cnnbench: error: {line}" and len(result.stderr.splitlines()) == 1
    assert not run.exists()


def test_out_of_memory_ends_in_one_line_naming_the_sizes(tmp_path):
    """Synthetic images of a million pixels a side ask the host for terabytes; a GPU's OutOfMemoryError
    (here its message, without a GPU) reads the same."""
    result = run_cli(*SMOKE, "data.image_size=1000000", f"hydra.run.dir={tmp_path / 'run'}")
    assert one_error_line(result).startswith("cnnbench: error: out of memory on the host (it asked for ")
    assert "GiB more): a smaller data.batch_size, data.image_size" in result.stderr
    cuda = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139 GiB"
    )
    assert memory_error_message(cuda).startswith("out of memory on a GPU (it asked for 2.00 GiB more): ")
    assert memory_error_message(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None


def test_a_tired_users_inputs(tmp_path, monkeypatch):
    """predict with no images; paths typed with ~ (quoted, as Hydra's grammar needs: model.weights='~/w.pt')."""
    with pytest.raises(ConfigError, match=r"^images: empty; pass the image files, images=\[a.jpg,b.png\]$"):
        predict(make_config(tmp_path, "checkpoint=best.pt", "images=[]", "hardware=cpu", app="predict"))
    monkeypatch.setenv("HOME", str(tmp_path))
    model = create_model("lenet5", num_classes=10, in_chans=3, image_size=32)
    safetensors.torch.save_file(model.state_dict(), tmp_path / "w.safetensors")
    create_model("lenet5", num_classes=10, in_chans=3, image_size=32, weights="~/w.safetensors")
    with pytest.raises(CheckpointError, match=f"^{tmp_path / 'w.safetensors'}: holds a model's weights alone"):
        load_checkpoint("~/w.safetensors")
