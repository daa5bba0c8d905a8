"""Training techniques (issue 8), each by its effect: EMA weights differ from the raw ones and resume
exactly; augmentation changes training images only; mixup mixes images and targets alike; the
distillation loss falls; drop path drops residuals in training only; pseudo-labels are the teacher's
probabilities for images outside the labeled part."""

import csv
import json

import pytest
import safetensors.torch
import torch

from cnnbench.config import check_config
from cnnbench.data import build_data
from cnnbench.data.datasets import load_split
from cnnbench.data.transforms import Lighting, Normalize, build_transforms
from cnnbench.engine.checkpoint import load_checkpoint, model_from_checkpoint
from cnnbench.engine.distill import load_teacher
from cnnbench.engine.inference import evaluate
from cnnbench.engine.losses import Objective, distillation_loss
from cnnbench.engine.trainer import train
from cnnbench.errors import CheckpointError, ConfigError, DataError
from cnnbench.models import create_model
from cnnbench.pseudolabel import balanced

from .helpers import SMOKE, make_config, reproducible_metrics, run_cli


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_ema_is_validated_beside_the_raw_model_and_checkpointed(tmp_path):
    summary = train(make_config(tmp_path, *SMOKE, "train.epochs=1", "train.ema_decay=0.9"))
    row = read_metrics(tmp_path)[0]
    assert 0 <= float(row["ema_val_top1"]) <= 100 and float(row["ema_val_loss"]) > 0
    assert summary["best_ema_val_top1"] == summary["final_ema_val_top1"] == float(row["ema_val_top1"])
    assert json.loads((tmp_path / "summary.json").read_text())["final_ema_val_top1"] == summary["final_ema_val_top1"]
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["ema"].keys() == state["model"].keys()
    floats = [k for k, v in state["model"].items() if v.is_floating_point()]
    assert floats and all(not torch.equal(state["model"][k], state["ema"][k]) for k in floats)


def test_resume_with_ema_mixup_and_randaugment_is_bit_identical(tmp_path):
    # The EMA, mixup's numpy draws and RandAugment's torch draws all continue exactly across a resume
    # (a constant learning rate, so that stopping after epoch 1 of 1 equals stopping after 1 of 2).
    recipe = [
        *SMOKE,
        "hardware.deterministic=true",
        "scheduler=constant",
        "train.ema_decay=0.8",
        "augmentation=randaugment",
        "augmentation.mixup_alpha=0.4",
        "augmentation.cutmix_alpha=1.0",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(make_config(straight, *recipe, "train.epochs=2"))
    train(make_config(resumed, *recipe, "train.epochs=1"))
    train(make_config(resumed, *recipe, "train.epochs=2", "resume=auto"))
    a, b = (load_checkpoint(d / "checkpoints" / "last.pt") for d in (straight, resumed))
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    assert reproducible_metrics(straight) == reproducible_metrics(resumed)
    with pytest.raises(CheckpointError, match="train.ema_decay=0.8, resumed with None"):
        train(make_config(resumed, *SMOKE, "train.epochs=3", "resume=auto", "hardware.deterministic=true"))


def test_with_an_ema_best_pt_and_its_users_follow_the_weights_that_validate_best(tmp_path):
    """A constant, large learning rate: the raw weights swing, their EMA validates better. best.pt names the
    EMA as its best, and evaluate, a teacher, model.weights= and model.safetensors all take the EMA's weights."""
    summary = train(
        make_config(tmp_path, *SMOKE, "train.epochs=2", "train.ema_decay=0.8", "optimizer.lr=0.3", "scheduler=constant")
    )
    rows = read_metrics(tmp_path)
    assert summary["best_weights"] == "ema"
    assert (
        summary["best_val_top1"]
        == max(float(r["ema_val_top1"]) for r in rows)
        > max(float(r["val_top1"]) for r in rows)
    )
    best_pt = tmp_path / "checkpoints" / "best.pt"
    best = load_checkpoint(best_pt)
    assert best["best"]["weights"] == "ema" and best["epoch"] == summary["best_epoch"] + 1
    result = evaluate(make_config(tmp_path / "eval", f"checkpoint={best_pt}", "hardware=cpu", app="evaluate"))
    assert result["top1"] == pytest.approx(summary["best_val_top1"], abs=1e-9)
    teacher, _ = load_teacher(str(best_pt), best["classes"], 3, torch.device("cpu"))
    fine_tune = create_model(
        "lenet5",
        num_classes=10,
        in_chans=3,
        image_size=32,
        variant="modern",
        weights=str(best_pt),
        classes=best["classes"],
    )
    exported = safetensors.torch.load_file(tmp_path / "checkpoints" / "model.safetensors")
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    for name, tensor in best["ema"].items():
        assert torch.equal(teacher.state_dict()[name], tensor) and torch.equal(fine_tune.state_dict()[name], tensor)
        assert torch.equal(exported[name], last["ema"][name])


@pytest.mark.parametrize("preset", ["alexnet", "randaugment", "trivialaugment", "autoaugment"])
def test_augmentation_presets_change_training_images_only(preset, tmp_path):
    cfg = make_config(tmp_path, "data=synthetic", "data.image_size=56", "data.channels=3", f"augmentation={preset}")
    check_config(cfg)
    images = load_split(cfg.data, True, None).dataset.images[:16]
    train_tf, eval_tf = (build_transforms(cfg.augmentation, cfg.data, train=t) for t in (True, False))
    # The same crops without the policy (or, for alexnet, without the lighting noise).
    plain = make_config(
        tmp_path,
        "data=synthetic",
        "data.image_size=56",
        "data.channels=3",
        *(["augmentation=alexnet", "augmentation.lighting=0"] if preset == "alexnet" else ["augmentation=basic"]),
    )
    baseline = build_transforms(plain.augmentation, plain.data, train=True)
    outputs = []
    for tf in (train_tf, baseline):
        torch.manual_seed(0)
        outputs.append(torch.stack([tf(image) for image in images]))
    augmented, without_policy = outputs
    evaluated = torch.stack([eval_tf(image) for image in images])
    assert augmented.dtype == torch.uint8 and augmented.shape == evaluated.shape == (16, 3, 56, 56)
    assert not torch.equal(augmented, evaluated)
    assert not torch.equal(augmented, without_policy)  # the policy (or AlexNet's crop and lighting) acts
    assert torch.equal(evaluated, torch.stack([eval_tf(image) for image in images]))


def test_alexnet_lighting_shifts_colour_along_imagenet_principal_components():
    gray = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    lighting = Lighting(0.1)
    torch.manual_seed(0)
    shifts = torch.stack([lighting(gray).float().mean((1, 2)) - 128 for _ in range(400)])
    # Each image's shift is uniform over the image and equals 255 x eigvec @ (alpha x eigval).
    shifted = lighting(gray)
    assert torch.equal(shifted.amin((1, 2)), shifted.amax((1, 2)))
    alphas = (torch.linalg.inv(Lighting.EIGVEC) @ shifts.T).T / (255 * Lighting.EIGVAL)
    assert 0.08 < alphas[:, 0].std() < 0.12 and abs(alphas[:, 0].mean()) < 0.02
    one_channel = Lighting(0.1)(torch.full((1, 4, 4), 128, dtype=torch.uint8))
    assert one_channel.shape == (1, 4, 4) and one_channel.unique().numel() == 1


def test_random_erasing_erases(tmp_path):
    cfg = make_config(tmp_path, "data=synthetic", "data.image_size=32", "augmentation.random_erasing=1.0")
    white = torch.full((cfg.data.channels, 32, 32), 255, dtype=torch.uint8)
    erased = build_transforms(cfg.augmentation, cfg.data, train=True)(white)
    assert (erased == 0).any() and (erased == 255).any()
    assert torch.equal(build_transforms(cfg.augmentation, cfg.data, train=False)(white), white)


def test_mixup_mixes_images_and_targets_alike(tmp_path):
    cfg = make_config(tmp_path, "augmentation.mixup_alpha=1.0")
    objective = Objective(cfg.augmentation, num_classes=10, local_batch=8)
    torch.manual_seed(0)
    images, labels = torch.randn(8, 1, 4, 4), torch.arange(8)
    mixed, soft, hard = objective.mix(images.clone(), labels)
    lam = soft[0, 0].item()
    assert torch.allclose(soft.sum(1), torch.ones(8)) and 0 < lam < 1
    assert torch.allclose(soft[0, 7], torch.tensor(1 - lam))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
    assert torch.equal(hard, soft.argmax(1))  # train top-1: the label with the larger share
    _, loss = objective(torch.randn(8, 10), soft, mixed)
    assert loss > 0
    with pytest.raises(ConfigError, match="must be even, got 7"):
        Objective(cfg.augmentation, num_classes=10, local_batch=7)


def test_label_smoothing_raises_the_loss_of_confident_right_answers(tmp_path):
    logits, labels = torch.eye(4) * 20, torch.arange(4)
    losses = [
        Objective(make_config(tmp_path, f"augmentation.label_smoothing={s}").augmentation, 4, 4)(logits, labels, None)[
            1
        ]
        for s in (0.0, 0.1)
    ]
    assert losses[0] < 1e-6 < losses[1]


def test_distillation_loss_falls(tmp_path):
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    train(make_config(teacher_dir, *SMOKE, "train.epochs=2"))
    teacher = teacher_dir / "checkpoints" / "best.pt"
    # alpha=1: the train loss is the distillation loss alone.
    summary = train(
        make_config(
            student_dir,
            *SMOKE,
            "train.epochs=3",
            "seed=1",
            f"distill.teacher={teacher}",
            "distill.alpha=1.0",
            "distill.temperature=2.0",
        )
    )
    losses = [float(r["train_loss"]) for r in read_metrics(student_dir)]
    assert losses[-1] < losses[0] * 0.8, losses
    assert summary["status"] == "completed"
    logits = torch.randn(4, 10)
    assert distillation_loss(logits, logits, 4.0) < 1e-6 < distillation_loss(logits, torch.randn(4, 10), 4.0)
    with pytest.raises(CheckpointError, match="distill.teacher: .* other classes"):
        train(make_config(tmp_path / "other", *SMOKE, "data.num_classes=5", f"distill.teacher={teacher}"))


def test_drop_path_drops_residuals_in_training_only():
    kwargs = dict(num_classes=10, in_chans=1, image_size=16, width_mult=0.25)
    dropping, plain = create_model("resnet18", drop_path_rate=0.5, **kwargs), create_model("resnet18", **kwargs)
    x = torch.randn(4, 1, 16, 16)
    dropping.train()
    assert not torch.allclose(dropping(x), dropping(x))
    plain.load_state_dict(dropping.state_dict())
    dropping.eval(), plain.eval()
    assert torch.equal(dropping(x), plain(x))


@pytest.mark.slow  # a real command in a subprocess
def test_pseudo_labels_are_the_teachers_probabilities_for_the_pool(tmp_path):
    labeled = [
        "data=fashion_mnist",
        "data.train_size=512",
        "data.val_size=256",
        "data.batch_size=64",
        "model=lenet5",
        "model.variant=modern",
        "hardware=cpu",
    ]
    train(make_config(tmp_path / "teacher", *labeled, "train.epochs=1"))
    teacher = tmp_path / "teacher" / "checkpoints" / "last.pt"
    output = tmp_path / "pseudo.pt"
    result = run_cli(
        f"checkpoint={teacher}",
        "data.train_size=512",
        "pool_size=300",
        f"output={output}",
        "hardware=cpu",
        f"hydra.run.dir={tmp_path / 'pl'}",
        module="cnnbench.pseudolabel",
    )
    assert result.returncode == 0, result.stderr
    assert "pseudo-labelled 300 of 300 pool images" in result.stdout
    pseudo = torch.load(output, weights_only=True)
    cfg = make_config(tmp_path / "student", *labeled, "train.epochs=1", f"data.pseudo_labels={output}")
    split = load_split(cfg.data, True, None)
    labeled_indices = set(split.dataset.indices)
    assert len(pseudo["indices"]) == 300 and not labeled_indices & set(pseudo["indices"].tolist())
    # The soft targets are the teacher's softmax on those (unaugmented) images.
    model, _ = model_from_checkpoint(teacher)
    images = split.dataset.dataset.images[pseudo["indices"][:32]]
    with torch.no_grad():
        expected = model(Normalize(cfg.data)(images)).softmax(1)
    assert torch.allclose(pseudo["soft_targets"][:32], expected, atol=1e-5)

    # Training reads them back: labeled (one-hot) + pool (soft) images, (512 + 300) // 64 batches.
    data = build_data(cfg)
    assert len(data.train_batches) == 12
    images, targets = next(iter(data.train_loader))
    assert targets.shape == (64, 10) and torch.allclose(targets.sum(1), torch.ones(64))
    summary = train(cfg)
    assert summary["step"] == 12 and summary["status"] == "completed"
    with pytest.raises(DataError, match="data.pseudo_labels: .* data.train_size=512, not .* data.train_size=1000"):
        build_data(make_config(tmp_path / "x", *labeled, "data.train_size=1000", f"data.pseudo_labels={output}"))


def test_balanced_pseudo_labels_give_each_class_as_many_most_confident_first():
    """pseudolabel per_class=N: N of each predicted class, the most confident first, cycled where fewer."""
    confidence = torch.tensor([0.7, 0.9, 0.8, 0.6, 0.95, 0.5])
    predicted = torch.tensor([0, 0, 0, 0, 1, 2])
    assert balanced(torch.arange(6), confidence, predicted, 2, 3).tolist() == [1, 2, 4, 4, 5, 5]
    assert balanced(torch.tensor([0, 3, 4]), confidence, predicted, 3, 3).tolist() == [0, 3, 0, 4, 4, 4]


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.ema_decay=1.0", "train.ema_decay"),
        ("augmentation.mixup_alpha=-1", "augmentation.mixup_alpha"),
        ("augmentation.random_erasing=2", "augmentation.random_erasing"),
        ("distill.alpha=1.5", "distill.alpha"),
        ("distill.temperature=0", "distill.temperature"),
        ("augmentation.lighting=-0.1", "augmentation.lighting"),
        ("eval.tta=tencrop", "eval.tta"),
    ],
)
def test_bad_technique_values_name_their_key(override, key, tmp_path):
    with pytest.raises(ConfigError, match=key):
        check_config(make_config(tmp_path, override))
