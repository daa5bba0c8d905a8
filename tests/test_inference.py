"""Using trained models: evaluate (TTA, per-class), predict (top-k, dense), convolutionize, LRN, fine-tuning."""

import csv
import json

import pytest
import torch
import torch.nn as nn
from PIL import Image

from cnnbench.config import TTA
from cnnbench.data.datasets import load_split
from cnnbench.data.transforms import Normalize
from cnnbench.engine.checkpoint import load_checkpoint
from cnnbench.engine.inference import evaluate, load_trained, predict, tta_transform
from cnnbench.engine.trainer import train
from cnnbench.engine.tta import tta_logits
from cnnbench.errors import CheckpointError, ConfigError, DataError
from cnnbench.models import convolutionize, create_model

from .helpers import make_config, run_cli

# 4 synthetic classes of 28x28 grayscale images: a checkpoint to evaluate, and to fine-tune onto
# Fashion-MNIST's 10 classes.
SYNTHETIC = [
    "data=synthetic",
    "data.image_size=28",
    "data.channels=1",
    "data.num_classes=4",
    "data.train_size=256",
    "data.val_size=64",
    "data.batch_size=32",
    "model=lenet5",
    "model.variant=modern",
    "hardware=cpu",
]
FASHION = [
    "data.train_size=2000",
    "data.val_size=500",
    "data.batch_size=50",
    "model=lenet5",
    "model.variant=modern",
    "optimizer=adamw",
    "optimizer.lr=0.01",  # a linear probe: Adam gets far in 40 steps
    "hardware=cpu",
    "train.epochs=1",
]
# lenet5's classifier: the last module of its Sequential
HEAD = (
    create_model("lenet5", num_classes=4, in_chans=1, image_size=28, variant="modern").pretrained_cfg["classifier"]
    + "."
)


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("synthetic")
    summary = train(make_config(run_dir, *SYNTHETIC, "train.epochs=2"))
    return run_dir, summary


@pytest.fixture(scope="module")
def fine_tuned(synthetic_run, tmp_path_factory):
    """The synthetic model's backbone, frozen, under a new 10-class head trained on Fashion-MNIST."""
    run_dir = tmp_path_factory.mktemp("fine_tuned")
    weights = synthetic_run[0] / "checkpoints" / "last.pt"
    summary = train(make_config(run_dir, *FASHION, f"model.weights={weights}", "model.freeze=backbone"))
    return run_dir, summary


@pytest.mark.slow  # a real command in a subprocess
def test_evaluate_reproduces_the_runs_own_val_metrics(synthetic_run, tmp_path):
    run_dir, summary = synthetic_run
    result = run_cli(
        f"checkpoint={run_dir}/checkpoints/best.pt",
        f"hydra.run.dir={tmp_path / 'eval'}",
        f"output={tmp_path / 'out' / 'eval.json'}",
        "hardware=cpu",
        module="cnnbench.evaluate",
    )
    assert result.returncode == 0, result.stderr
    on_disk = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert on_disk == json.loads((tmp_path / "out" / "eval.json").read_text())
    with open(run_dir / "metrics.csv") as f:
        best = next(r for r in csv.DictReader(f) if int(r["epoch"]) == summary["best_epoch"])
    assert on_disk["top1"] == pytest.approx(summary["best_val_top1"], abs=1e-9)
    assert on_disk["top5"] == pytest.approx(summary["best_val_top5"], abs=1e-9) and on_disk["top5_k"] == 4
    assert on_disk["loss"] == pytest.approx(float(best["val_loss"]), rel=1e-5)
    per_class = on_disk["per_class"]
    assert [c["class"] for c in per_class] == [f"class_{i}" for i in range(4)]
    assert sum(c["samples"] for c in per_class) == on_disk["samples"] == 64
    assert sum(c["top1"] * c["samples"] for c in per_class) / 64 == pytest.approx(on_disk["top1"])
    assert f"top-1 {on_disk['top1']:.2f}%" in result.stdout
    for c in per_class:
        assert f"{c['class']}  {c['samples']:>6}  {c['top1']:>6.2f}" in result.stdout


def test_tta_averages_the_logits_of_its_views(synthetic_run, tmp_path):
    """flip and tencrop change the logits, and are the mean of the views' logits, cut here by hand."""
    model, _, config = load_trained(synthetic_run[0] / "checkpoints" / "best.pt", torch.device("cpu"))
    normalize, size = Normalize(config.data), config.data.image_size
    batches = {}
    for tta in TTA:
        split = load_split(config.data, False, tta_transform(config.augmentation, config.data, tta))
        batches[tta] = normalize(torch.stack([split.dataset[i][0] for i in range(8)]))
    with torch.no_grad():
        logits = {tta: tta_logits(model, batches[tta], tta, size) for tta in TTA}
        plain = batches[TTA.none]
        assert torch.allclose(logits[TTA.none], model(plain))
        assert torch.allclose(logits[TTA.flip], (model(plain) + model(plain.flip(-1))) / 2, atol=1e-6)
        large = batches[TTA.tencrop]
        side = large.shape[-1]
        assert side == 32  # 28 / eval_crop_ratio 0.875: the larger image the crops come from
        corners = [
            (0, 0),
            (0, side - size),
            (side - size, 0),
            (side - size, side - size),
            ((side - size) // 2, (side - size) // 2),
        ]
        crops = [large[..., y : y + size, x : x + size] for y, x in corners]
        expected = torch.stack([model(c) for c in crops] + [model(c.flip(-1)) for c in crops]).mean(0)
        assert torch.allclose(logits[TTA.tencrop], expected, atol=1e-5)
    assert not torch.allclose(logits[TTA.none], logits[TTA.flip])
    assert not torch.allclose(logits[TTA.none], logits[TTA.tencrop])
    # the whole evaluation, with tencrop: its own numbers, every sample still counted once
    results = {
        tta: evaluate(
            make_config(
                tmp_path / tta.value,
                f"checkpoint={synthetic_run[0]}/checkpoints/best.pt",
                "hardware=cpu",
                f"eval.tta={tta.value}",
                app="evaluate",
            )
        )
        for tta in (TTA.none, TTA.tencrop)
    }
    assert results[TTA.tencrop]["samples"] == 64 and results[TTA.tencrop]["loss"] != results[TTA.none]["loss"]


def test_evaluate_refuses_data_of_other_classes(synthetic_run, tmp_path):
    checkpoint = synthetic_run[0] / "checkpoints" / "best.pt"
    cfg = make_config(
        tmp_path, f"checkpoint={checkpoint}", "data=fashion_mnist", "data.image_size=28", "hardware=cpu", app="evaluate"
    )
    with pytest.raises(CheckpointError, match=f"^{checkpoint}: trained on other classes than fashion_mnist's$"):
        evaluate(cfg)


@pytest.mark.parametrize("app, run, key", [("evaluate", evaluate, "checkpoint"), ("predict", predict, "images")])
def test_a_missing_mandatory_key_is_named(tmp_path, app, run, key):
    given = [] if app == "evaluate" else ["checkpoint=best.pt"]
    with pytest.raises(ConfigError, match=f"^{key}: missing; pass {key}="):
        run(make_config(tmp_path, *given, app=app))


def fashion_pngs(folder, config, count=2):
    """Fashion-MNIST test images as PNG files (lossless), with the val split's own tensors."""
    split = load_split(config.data, False, None)
    paths, tensors = [], []
    for i in range(count):
        image = split.dataset[i][0]
        paths.append(folder / f"fashion_{i}.png")
        Image.fromarray(image[0].numpy()).save(paths[-1])
        tensors.append(image)
    return paths, torch.stack(tensors)


@pytest.mark.slow  # a real command in a subprocess
def test_predict_prints_top_k_class_names(fine_tuned, tmp_path):
    checkpoint = fine_tuned[0] / "checkpoints" / "last.pt"
    model, classes, config = load_trained(checkpoint, torch.device("cpu"))
    paths, images = fashion_pngs(tmp_path, config)
    with torch.no_grad():
        probabilities = model(Normalize(config.data)(images)).softmax(1)
    result = run_cli(
        f"checkpoint={checkpoint}",
        f"images=[{','.join(map(str, paths))}]",
        "topk=3",
        "hardware=cpu",
        f"hydra.run.dir={tmp_path / 'predict'}",
        module="cnnbench.predict",
    )
    assert result.returncode == 0, result.stderr
    predictions = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    for path, prediction, expected in zip(paths, predictions, probabilities):
        scores, indices = expected.topk(3)
        assert prediction["image"] == str(path)
        assert [p["class"] for p in prediction["topk"]] == [classes[i] for i in indices]
        assert [p["probability"] for p in prediction["topk"]] == pytest.approx(scores.tolist(), abs=1e-6)
        top = prediction["topk"][0]
        assert f"#1 {top['probability'] * 100:6.2f}% {top['class']}" in result.stdout


@pytest.mark.slow  # a real command in a subprocess
def test_predict_dense_maps_classes_over_a_larger_image(fine_tuned, tmp_path):
    checkpoint = fine_tuned[0] / "checkpoints" / "last.pt"
    paths, _ = fashion_pngs(tmp_path, load_trained(checkpoint, torch.device("cpu"))[2], count=1)
    result = run_cli(
        f"checkpoint={checkpoint}",
        f"images=[{paths[0]}]",
        "dense=true",
        "dense_scale=2",
        "hardware=cpu",
        f"hydra.run.dir={tmp_path / 'predict'}",
        module="cnnbench.predict",
    )
    assert result.returncode == 0, result.stderr
    class_map = json.loads((tmp_path / "predict" / "predictions.json").read_text())[0]["class_map"]
    # lenet5 at 56 px: C5 sees 12x12 and gives 8x8 windows, where at 28 px it gave 1x1
    side = ((56 + 4 - 4) // 2 - 4) // 2 - 4
    assert len(class_map) == side and {len(row) for row in class_map} == {side}
    assert f"class map ({side}x{side} windows" in result.stdout and "mean over the windows" in result.stdout


@pytest.mark.parametrize("image, error", [("missing.png", "no such file"), ("notes.jpg", "is not an image")])
def test_predict_names_the_bad_image(synthetic_run, tmp_path, image, error):
    """The message (one line: cli.py prints it) names the file; nothing is written."""
    (tmp_path / "notes.jpg").write_text("not pixels")
    cfg = make_config(
        tmp_path,
        f"checkpoint={synthetic_run[0]}/checkpoints/best.pt",
        "hardware=cpu",
        f"images=[{tmp_path / image}]",
        app="predict",
    )
    with pytest.raises(DataError, match=f"^images: .*{tmp_path / image}") as raised:
        predict(cfg)
    assert error in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "predictions.json").exists()


@pytest.mark.parametrize(
    "name, knobs, channels, size",
    [
        ("alexnet", {"width_mult": 0.25}, 3, 32),  # adaptive pool 3x3 -> 6x6 folded into the first kernel
        ("vgg11_bn", {"width_mult": 0.125}, 3, 32),  # 1x1 -> 7x7
        ("fmnist_cnn", {"width_mult": 0.25, "norm": "batch"}, 1, 28),  # a Sequential, no pool
    ],
)
def test_convolutionize_keeps_outputs_and_maps_larger_images(name, knobs, channels, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=channels, image_size=size, **knobs).eval()
    dense = convolutionize(model, (channels, size, size))
    assert not any(isinstance(m, nn.Linear) for m in dense.modules())
    x = torch.randn(3, channels, size, size)
    with torch.no_grad():
        assert torch.allclose(dense(x).flatten(1), model(x), atol=1e-5)
        large = torch.randn(1, channels, 2 * size, 2 * size)
        features = model.features if hasattr(model, "features") else model[:-8]  # fmnist_cnn: up to Flatten
        grown = features(large).shape[-1] - features(x).shape[-1]
        assert dense(large).shape == (1, 10, grown + 1, grown + 1)


@pytest.mark.parametrize(
    "name, knobs, channels, size",
    [("alexnet", {"width_mult": 0.25}, 3, 32), ("fmnist_cnn", {"width_mult": 0.25, "norm": "batch"}, 1, 28)],
)
def test_convolutionize_builds_on_the_models_device_and_dtype(name, knobs, channels, size):
    # predict dense=true moves the model to the GPU before convolutionizing it (issue 20, item 1):
    # the meta device stands in for CUDA, float64 shows the dtype and that the outputs still match.
    with torch.device("meta"):
        on_meta = create_model(name, num_classes=10, in_chans=channels, image_size=size, **knobs).eval()
    dense = convolutionize(on_meta, (channels, size, size))
    assert {t.device.type for t in [*dense.parameters(), *dense.buffers()]} == {"meta"}
    model = create_model(name, num_classes=10, in_chans=channels, image_size=size, **knobs).double().eval()
    dense = convolutionize(model, (channels, size, size))
    assert {t.dtype for t in [*dense.parameters(), *dense.buffers()] if t.is_floating_point()} == {torch.float64}
    x = torch.randn(2, channels, size, size, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(dense(x).flatten(1), model(x), atol=1e-10)


def test_convolutionize_refuses_a_model_that_is_not_a_stack():
    with pytest.raises(ConfigError, match="^convolutionize: ResNet is not a stack of layers"):
        convolutionize(create_model("resnet18", width_mult=0.25, image_size=32), (3, 32, 32))


@pytest.mark.parametrize("name", ["alexnet", "googlenet"])
def test_local_response_normalization_is_a_model_key(name):
    with torch.device("meta"):
        plain = create_model(name, num_classes=10, image_size=224)
        with_lrn = create_model(name, num_classes=10, image_size=224, lrn=True)
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in plain.modules()) == 0
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in with_lrn.modules()) == 2
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in with_lrn.parameters())


def test_weights_start_the_backbone_under_a_new_head(synthetic_run):
    checkpoint = synthetic_run[0] / "checkpoints" / "last.pt"
    trained = load_checkpoint(checkpoint)["model"]
    model = create_model("lenet5", num_classes=10, in_chans=1, image_size=28, variant="modern", weights=str(checkpoint))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.items() if not k.startswith(HEAD))
    assert state[f"{HEAD}weight"].shape == (10, 84) and trained[f"{HEAD}weight"].shape == (4, 84)


def test_fine_tuning_with_a_frozen_backbone_trains_only_the_head(synthetic_run, fine_tuned):
    """Synthetic 4 classes -> Fashion-MNIST 10: the backbone (batch norm statistics included) stays the
    synthetic run's, bit for bit; the new head learns Fashion-MNIST well above chance."""
    before = load_checkpoint(synthetic_run[0] / "checkpoints" / "last.pt")["model"]
    after = load_checkpoint(fine_tuned[0] / "checkpoints" / "last.pt")["model"]
    backbone = [k for k in before if not k.startswith(HEAD) and not k.endswith("num_batches_tracked")]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    assert after[f"{HEAD}weight"].shape == (10, 84)
    assert fine_tuned[1]["final_val_top1"] > 35  # chance: 10%; 48 when written


def test_layer_decay_gives_the_backbone_smaller_learning_rates(synthetic_run, tmp_path):
    weights = synthetic_run[0] / "checkpoints" / "last.pt"
    train(
        make_config(
            tmp_path,
            *SYNTHETIC,
            "data.num_classes=3",
            f"model.weights={weights}",
            "train.epochs=1",
            "train.limit_train_batches=2",
            "optimizer.layer_decay=0.5",
            "scheduler=constant",
        )
    )
    groups = load_checkpoint(tmp_path / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    scales = sorted({g["lr_scale"] for g in groups})
    assert scales == [0.5, 1.0]  # lenet5: one group of backbone layers below the head
    assert {g["lr"] / g["lr_scale"] for g in groups} == {groups[0]["lr"] / groups[0]["lr_scale"]}
    with open(tmp_path / "metrics.csv") as f:
        logged = float(list(csv.DictReader(f))[-1]["lr"])
    assert logged == pytest.approx(max(g["lr"] for g in groups))  # the head's, not the most decayed group's


@pytest.mark.slow  # a real command in a subprocess
def test_pretrained_offline_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_cli(
        "model=timm",
        "model.name=resnet10t",
        "model.pretrained=true",
        "data=synthetic",
        "hardware=cpu",
        f"hydra.run.dir={tmp_path}",
        timeout=60,
        cold=True,
    )  # huggingface_hub reads HF_HUB_OFFLINE when it is imported
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("cnnbench: error: model.pretrained: could not fetch weights for resnet10t")
    assert len(result.stderr.strip().splitlines()) == 1
