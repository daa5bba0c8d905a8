"""End-to-end training on real and generated data, and what a run leaves behind."""

import csv
import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.plugins.hparams import api_pb2, metadata
from tensorboard.util import tensor_util

from cnnbench.data.datasets import DEBIAN_FASHION_MNIST
from cnnbench.data.transforms import unused_keys
from cnnbench.engine.checkpoint import load_checkpoint
from cnnbench.engine.hparams import CHOSEN, hparam_summaries
from cnnbench.engine.hparams import METRICS as HPARAM_METRICS
from cnnbench.engine.recorder import EPOCH_TAGS, METRICS, SUMMARY_TAGS
from cnnbench.engine.trainer import train

from .helpers import CONF, confusion_matrix, make_config, make_image_tree, run_cli, tensorboard_events


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_fashion_mnist_learns(tmp_path):
    """A few dozen steps on the real Fashion-MNIST lift test accuracy far above chance (10%)."""
    cfg = make_config(
        tmp_path,
        "model=lenet5",
        "model.variant=modern",
        "data.train_size=6000",
        "data.batch_size=64",
        "train.epochs=1",
        "data.val_size=2000",
        "hardware=cpu",
    )
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["data"] == "fashion_mnist"
    assert summary["final_val_top1"] > 60
    rows = read_metrics(tmp_path)
    assert list(rows[0]) == METRICS and len(rows) == 1 and int(rows[0]["step"]) == 6000 // 64


def test_run_directory_holds_the_contract(tmp_path, smoke):
    summary = train(make_config(tmp_path, *smoke, "train.epochs=2", "train.log_every_steps=2"))
    for name in ("metrics.csv", "summary.json", "train.log", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / name).is_file(), name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    for key in (
        "model",
        "params",
        "gflops",
        "data",
        "best_val_top1",
        "best_val_top5",
        "best_epoch",
        "final_val_top1",
        "final_val_top5",
        "wall_time_s",
        "status",
    ):
        assert key in on_disk, key
    rows = read_metrics(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(0 <= float(r[k]) <= 100 for r in rows for k in ("train_top1", "val_top1", "val_top5"))
    assert summary["best_val_top1"] == max(float(r["val_top1"]) for r in rows)
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    assert state["config"]["model"]["name"] == "lenet5" and state["step"] == 2 * 256 // 32
    assert "epoch 1: train loss" in (tmp_path / "train.log").read_text()


def test_tensorboard_shows_curves_batch_config_and_confusion_matrix(tmp_path, smoke):
    """tb/ read back by TensorBoard: every metrics.csv column and the run's totals as scalars (the HParams
    metrics among them), the augmented first batch and the config once, the best epochs' confusion
    matrices; confusion_matrix.csv counts the validation set once and agrees with its top-1."""
    summary = train(make_config(tmp_path, *smoke, "train.epochs=2", "train.log_every_steps=2", "augmentation=basic"))
    events = tensorboard_events(tmp_path)
    tags = events.Tags()
    for tag in [*EPOCH_TAGS.values(), *SUMMARY_TAGS.values(), *HPARAM_METRICS, "train/step_loss"]:
        assert tag in tags["scalars"] or tag.startswith("val/ema_"), tag
    assert {tag.split("/")[0] for tag in tags["scalars"]} == {"train", "val", "whole_run"}  # whole_run sorts last
    rows = read_metrics(tmp_path)
    assert [e.step for e in events.Scalars("val/top1")] == [8, 16]
    assert [e.value for e in events.Scalars("train/epoch")] == [0, 1]
    for column, tag in EPOCH_TAGS.items():
        if column in rows[0]:  # at each epoch's end (train/lr at log steps too); TensorBoard keeps float32
            values = {e.step: e.value for e in events.Scalars(tag)}
            assert [values[int(r["step"])] for r in rows] == pytest.approx([float(r[column]) for r in rows], 1e-6), tag
    assert [e.step for e in events.Scalars("train/lr")][:2] == [0, 2]  # the schedule's start, then every 2 steps
    for key, tag in SUMMARY_TAGS.items():  # as of the last epoch's end; the run's wall time went on after it
        last = events.Scalars(tag)[-1].value
        assert 0 < last < summary[key] if key == "wall_time_s" else last == pytest.approx(summary[key]), tag
    for key in ("val_img_per_s", "epoch_time_s", "peak_memory_mb"):
        assert summary[key] > 0 and all(float(r[key]) > 0 for r in rows), key
    assert summary["precision"] == "float32"

    [batch] = events.Images("train/augmented_batch")
    assert (batch.step, batch.width, batch.height) == (0, 8 * 34 + 2, 4 * 34 + 2)  # 32 images of 32 px, 8 a row
    [config] = events.Tensors("config/text_summary")
    text = tensor_util.make_ndarray(config.tensor_proto)[0].decode()
    assert text.startswith("```yaml\n") and "  name: lenet5\n" in text and "hardware:\n" in text

    best, best_steps = -1.0, []  # the steps of the epochs that bettered the best
    for row in rows:
        if float(row["val_top1"]) > best:
            best, best_steps = float(row["val_top1"]), [*best_steps, int(row["step"])]
    assert [image.step for image in events.Images("val/confusion_matrix")] == best_steps
    assert [t.step for t in events.Tensors("val/per_class_top1/text_summary")] == best_steps
    classes, counts = confusion_matrix(tmp_path)
    assert classes == [f"class_{i}" for i in range(10)] and sum(map(sum, counts)) == 64  # data.val_size
    assert 100 * sum(counts[i][i] for i in range(10)) / 64 == pytest.approx(summary["best_val_top1"])
    with Image.open(tmp_path / "confusion_matrix.png") as image:
        assert image.format == "PNG" and image.width >= 600
    table = tensor_util.make_ndarray(events.Tensors("val/per_class_top1/text_summary")[-1].tensor_proto)[0].decode()
    assert f"class_3  {sum(counts[3]):>6}" in table  # evaluate's per-class table


def test_a_single_runs_hparams_are_the_chosen_settings(tmp_path, smoke):
    """No sweep: nothing marked as differing; the chosen settings, precision as configured and resolved,
    and no key of an augmentation policy the run does not use."""
    train(make_config(tmp_path, *smoke, "train.epochs=1"))
    content = tensorboard_events(tmp_path).PluginTagToContent(metadata.PLUGIN_NAME)
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    chosen = sorted(set(CHOSEN) - {"model.depth_mult"})  # LeNet-5 has no depth_mult
    assert sorted(info.name for info in experiment.hparam_infos) == sorted(start.hparams) == chosen
    assert not any(info.differs for info in experiment.hparam_infos)
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    assert start.hparams["hardware.precision"].string_value == "fp32"  # hardware=cpu
    assert start.hparams["precision"].string_value == "float32"
    assert start.hparams["model.name"].string_value == "lenet5" and start.hparams["seed"].number_value == 0
    assert end.status == api_pb2.STATUS_SUCCESS


def test_a_sweep_points_hparams_lead_with_its_swept_keys(tmp_path):
    """A point knows its sweep from its .hydra record and the sweep's multirun.yaml: the swept keys, with
    every value, marked as differing; a swept key of a policy this point does not use has no value here."""
    OmegaConf.save(
        {
            "hydra": {
                "sweeper": {"params": {"augmentation.randaugment_magnitude": "5,9"}},
                "overrides": {"task": ["augmentation=none,randaugment", "seed=3"]},
            }
        },
        tmp_path / "multirun.yaml",
    )
    for policy in ("none", "randaugment"):
        point = tmp_path / policy
        (point / ".hydra").mkdir(parents=True)
        OmegaConf.save({"hydra": {"mode": "MULTIRUN"}}, point / ".hydra" / "hydra.yaml")
        overrides = ["augmentation.randaugment_magnitude=5", f"augmentation={policy}", "seed=3"]
        OmegaConf.save(overrides, point / ".hydra" / "overrides.yaml")
        experiment, start = (
            summary.value[0].metadata.plugin_data.content
            for summary in hparam_summaries(make_config(point, *overrides), "float32")
        )
        policies, magnitudes = metadata.parse_experiment_plugin_data(experiment).hparam_infos[:2]
        assert (policies.name, policies.differs, magnitudes.name, magnitudes.differs) == (
            "augmentation",
            True,
            "augmentation.randaugment_magnitude",
            True,
        )
        assert [v.string_value for v in policies.domain_discrete.values] == ["none", "randaugment"]
        assert [v.number_value for v in magnitudes.domain_discrete.values] == [5, 9]
        values = metadata.parse_session_start_info_plugin_data(start).hparams
        assert values["augmentation"].string_value == values["augmentation.name"].string_value == policy
        assert ("augmentation.randaugment_magnitude" in values) == (policy == "randaugment")
        assert values["seed"].number_value == 3 and "augmentation.autoaugment_policy" not in values


def test_unused_augmentation_keys_are_another_policys():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name, unused in (
            ("none", {"autoaugment_policy", "crop", "crop_padding", "hflip", "randaugment_ops"}),
            ("randaugment", {"autoaugment_policy", "scale", "eval_crop_ratio"}),
        ):
            aug = compose("train", overrides=[f"augmentation={name}"]).augmentation
            assert unused <= unused_keys(aug) and "name" not in unused_keys(aug), name
            assert ("randaugment_magnitude" in unused_keys(aug)) == (name != "randaugment")


def test_fewer_than_five_classes_report_top_k(tmp_path, smoke):
    summary = train(make_config(tmp_path, *smoke, "data.num_classes=3", "train.epochs=1"))
    assert summary["top5_k"] == 3
    assert summary["final_val_top5"] == 100.0  # top-3 of 3 classes always hits
    assert "val_top5 is top-3" in (tmp_path / "train.log").read_text()


def test_imagenet_layout_trains_and_validates(tmp_path):
    classes = make_image_tree(tmp_path / "images")
    run = tmp_path / "run"
    summary = train(
        make_config(
            run,
            "data=imagenet",
            f"data.root={tmp_path / 'images'}",
            "data.image_size=32",
            "data.batch_size=6",
            "data.workers=0",
            "augmentation=imagenet",
            "model=resnet18",
            "model.width_mult=0.25",
            "train.epochs=1",
            "hardware=cpu",
        )
    )
    assert summary["status"] == "completed" and summary["top5_k"] == 3
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["classes"] == list(classes)
    assert state["model"]["fc.weight"].shape[0] == 3


def test_synthetic_data_trains_with_grad_accumulation_and_clipping(tmp_path, smoke):
    summary = train(
        make_config(
            tmp_path,
            *smoke,
            "train.epochs=3",
            "train.grad_accum_steps=2",
            "train.clip_grad_norm=1.0",
            "optimizer=adamw",
            "optimizer.lr=0.01",
            "scheduler=step",
            "scheduler.decay_epochs=2",
            "scheduler.warmup_epochs=0.5",
        )
    )
    rows = read_metrics(tmp_path)
    assert [int(r["step"]) for r in rows] == [4, 8, 12]  # 8 batches / 2 micro-steps per update
    assert float(rows[0]["train_loss"]) > float(rows[-1]["train_loss"])
    assert summary["final_val_top1"] > 30  # 10 prototype classes: learnable


@pytest.mark.slow  # a real command in a subprocess
def test_missing_fashion_mnist_is_a_clear_error(tmp_path):
    result = run_cli(f"data.root={tmp_path}", "data=mnist", f"hydra.run.dir={tmp_path / 'run'}", timeout=120)
    assert result.returncode == 2
    assert "no mnist IDX files" in result.stderr and str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr


def test_fashion_mnist_is_installed():
    """`make setup` installs Debian's copy; the default run reads it from there."""
    assert (torch.load if False else open)(f"{DEBIAN_FASHION_MNIST}/t10k-labels-idx1-ubyte.gz", "rb").read(2)


def test_compound_scaling_grows_depth_width_and_image_size(tmp_path):
    """model.phi=1 (compound scaling, Tan and Le 2019): depth x1.2, width x1.1, image side x1.15 (32 -> 36)."""
    base = [
        "data=synthetic",
        "data.train_size=64",
        "data.val_size=32",
        "data.batch_size=32",
        "model=resnet18",
        "model.width_mult=0.25",
        "train.epochs=1",
        "hardware=cpu",
    ]
    plain = train(make_config(tmp_path / "plain", *base))
    scaled = train(make_config(tmp_path / "scaled", *base, "model.phi=1"))
    config = load_checkpoint(tmp_path / "scaled" / "checkpoints" / "last.pt")["config"]
    assert config["data"]["image_size"] == 36
    assert scaled["params"] > plain["params"] and scaled["gflops"] > plain["gflops"]
