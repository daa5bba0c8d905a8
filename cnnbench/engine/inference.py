"""Using a trained model: `evaluate(cfg)` (top-1, top-5, per-class accuracy, test-time augmentation) and
`predict(cfg)` (the top-k classes of image files, or a dense map of them). Everything the model needs
comes from its checkpoint: architecture, class names, data config and val transform.

    python -m cnnbench.evaluate checkpoint=outputs/fmnist/checkpoints/best.pt eval.tta=tencrop
    python -m cnnbench.predict checkpoint=outputs/fmnist/checkpoints/best.pt images=[shoe.png] topk=3
"""

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import v2

from cnnbench.config import TTA
from cnnbench.data.datasets import load_split
from cnnbench.data.imagenet import class_name, display_name
from cnnbench.data.loader import ValBatches, loader_workers
from cnnbench.data.transforms import Normalize, build_transforms
from cnnbench.errors import CheckpointError, ConfigError, DataError
from cnnbench.files import write_json
from cnnbench.models import convolutionize

from .checkpoint import model_from_checkpoint
from .device import place
from .tta import batch_logits

log = logging.getLogger("cnnbench")

MAX_DENSE_SIDE = 4096  # dense prediction's resized image: 16 M pixels, a few GB of activations for a ResNet-50


def check_given(cfg: DictConfig) -> None:
    """A mandatory key left out (checkpoint, images) is named in one line, not by OmegaConf's traceback."""
    if missing := sorted(OmegaConf.missing_keys(cfg)):
        raise ConfigError(f"{missing[0]}: missing; pass {missing[0]}=...")


def load_trained(path: str, device: torch.device) -> tuple[torch.nn.Module, list[str], DictConfig]:
    """The checkpoint's model in eval mode, its class names and its run's config."""
    model, state = model_from_checkpoint(Path(path))
    return model.to(device), state["classes"], OmegaConf.create(state["config"])


def tta_transform(augmentation: DictConfig, data: DictConfig, tta: TTA) -> v2.Compose:
    """The val transform; for tencrop, the larger square the crops are cut from: the image resized to
    image_size / eval_crop_ratio (AlexNet's 256 for 224 crops; 32 for Fashion-MNIST's 28)."""
    if tta != TTA.tencrop:
        return build_transforms(augmentation, data, train=False)
    larger = round(data.image_size / augmentation.eval_crop_ratio)
    return build_transforms(
        OmegaConf.merge(augmentation, {"name": "none"}), OmegaConf.merge(data, {"image_size": larger}), train=False
    )


def evaluation_data(cfg: DictConfig, config: DictConfig) -> DictConfig:
    """The data to evaluate on: the checkpoint's, or `data=NAME` if it fits the model."""
    if cfg.data is None:
        return config.data
    data = cfg.data
    if OmegaConf.is_interpolation(data, "image_size"):  # data=imagenet's "the model's native size": the trained one
        data.image_size = config.data.image_size
    if (data.channels, data.image_size) != (config.data.channels, config.data.image_size):
        raise ConfigError(
            f"data: the model takes {config.data.channels}-channel {config.data.image_size} px "
            f"images; pass data.channels={config.data.channels} data.image_size={config.data.image_size}"
        )
    return data


@torch.no_grad()
def evaluate(cfg: DictConfig) -> dict:
    check_given(cfg)
    placement = place(cfg.hardware)
    device = placement.device
    model, classes, config = load_trained(cfg.checkpoint, device)
    model = model.to(memory_format=placement.memory_format)
    data = evaluation_data(cfg, config)
    split = load_split(data, False, tta_transform(config.augmentation, data, cfg.eval.tta))
    if split.classes != classes:
        raise CheckpointError(f"{cfg.checkpoint}: trained on other classes than {data.name}'s")
    loader = torch.utils.data.DataLoader(
        split.dataset,
        batch_sampler=ValBatches(len(split.dataset), data.batch_size),
        num_workers=loader_workers(data),
        pin_memory=device.type == "cuda",
    )
    topk = min(5, len(classes))
    # per class: samples, top-1 hits, top-k hits; and the loss sum
    counts = torch.zeros(3, len(classes), dtype=torch.float64, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    for logits, targets in batch_logits(
        model, loader, Normalize(data).to(device), placement, cfg.eval.tta, data.image_size
    ):
        hits = logits.topk(topk, 1).indices == targets[:, None]
        for row, weights in enumerate((None, hits[:, 0].double(), hits.any(1).double())):
            counts[row] += torch.bincount(targets, weights, minlength=len(classes)).double()
        loss += F.cross_entropy(logits, targets, reduction="sum").double()
    samples, top1, topk_hits = counts.cpu().tolist()
    total = sum(samples)
    result = {
        "checkpoint": str(cfg.checkpoint),
        "data": data.name,
        "tta": cfg.eval.tta.value,
        "samples": int(total),
        "top1": 100 * sum(top1) / total,
        "top5": 100 * sum(topk_hits) / total,
        "top5_k": topk,
        "loss": loss.item() / total,
        "per_class": per_class_top1(classes, samples, top1),
    }
    print(evaluation_table(result))
    write_json(Path(cfg.run_dir) / "evaluation.json", result)
    if cfg.output:
        write_json(Path(cfg.output), result)
    return result


def per_class_top1(classes: list[str], samples, hits) -> list[dict]:
    """Each class's images and top-1 accuracy (None for a class without images), from per-class counts."""
    return [
        {"class": label, "name": class_name(label), "samples": int(n), "top1": 100 * hit / n if n else None}
        for label, n, hit in zip(classes, samples, hits)
    ]


def per_class_table(per_class: list[dict]) -> str:
    """per_class_top1's classes as a table: class, images, top-1."""
    shown = [display_name(c["class"]) for c in per_class]
    width = max(len("class"), *map(len, shown))
    lines = [f"{'class':<{width}}  {'images':>6}  {'top-1':>6}"]
    for c, label in zip(per_class, shown):
        lines.append(
            f"{label:<{width}}  {c['samples']:>6}  " + (f"{c['top1']:>6.2f}" if c["top1"] is not None else f"{'-':>6}")
        )
    return "\n".join(lines)


def evaluation_table(result: dict) -> str:
    return (
        f"{result['checkpoint']} on {result['data']} ({result['samples']} images, tta {result['tta']}): "
        f"top-1 {result['top1']:.2f}%, top-{result['top5_k']} {result['top5']:.2f}%, loss {result['loss']:.4f}\n"
        + per_class_table(result["per_class"])
    )


def read_image(path: str, channels: int) -> Image.Image:
    """PIL's own conversion to the model's channels: a grayscale file keeps its exact grey levels."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise DataError(f"images: no such file {path}") from None
    except (UnidentifiedImageError, IsADirectoryError, OSError) as e:
        raise DataError(f"images: {path} is not an image ({str(e).splitlines()[0]})") from None
    except Image.DecompressionBombError as e:  # what training skips too (data.on_bad_image)
        raise DataError(f"images: {path} is too large to decode ({e}); shrink it or leave it out") from None


@torch.no_grad()
def predict(cfg: DictConfig) -> list[dict]:
    """Per image, the top-k classes and their probabilities; with `dense`, the convolutionized model's
    map of classes over the image at dense_scale times the training size, and the map's mean prediction."""
    check_given(cfg)
    if not cfg.images:
        raise ConfigError("images: empty; pass the image files, images=[a.jpg,b.png]")
    if cfg.topk <= 0 or cfg.dense_scale < 1:
        raise ConfigError("topk: must be > 0" if cfg.topk <= 0 else f"dense_scale: must be >= 1, got {cfg.dense_scale}")
    placement = place(cfg.hardware)
    device = placement.device
    model, classes, config = load_trained(cfg.checkpoint, device)
    data = config.data
    if cfg.dense and round(cfg.dense_scale * data.image_size) > MAX_DENSE_SIDE:
        raise ConfigError(
            f"dense_scale: at most {MAX_DENSE_SIDE / data.image_size:g} for this model's "
            f"{data.image_size} px images (a {MAX_DENSE_SIDE} px side), got {cfg.dense_scale}"
        )
    if cfg.dense:
        model = convolutionize(model, (data.channels, data.image_size, data.image_size))
        data = OmegaConf.merge(data, {"image_size": round(cfg.dense_scale * data.image_size)})
    transform = build_transforms(config.augmentation, data, train=False)
    normalize = Normalize(data).to(device)
    images = [read_image(path, data.channels) for path in cfg.images]  # every file checked before any work
    k = min(cfg.topk, len(classes))
    results = []
    for path, image in zip(cfg.images, images):
        logits = model(normalize(transform(image)[None].to(device)))
        result = {"image": path}
        if cfg.dense:  # (1, classes, h, w): a prediction per window
            result["class_map"] = logits[0].argmax(0).tolist()
            probabilities = logits[0].softmax(0).mean((1, 2))
        else:
            probabilities = logits[0].softmax(0)
        scores, indices = probabilities.topk(k)
        result["topk"] = [
            {"class": classes[i], "name": class_name(classes[i]), "probability": p}
            for p, i in zip(scores.tolist(), indices.tolist())
        ]
        results.append(result)
        print(prediction_text(result, classes))
    write_json(Path(cfg.run_dir) / "predictions.json", results)
    return results


def prediction_text(result: dict, classes: list[str]) -> str:
    lines = [result["image"]]
    if "class_map" in result:
        class_map = result["class_map"]
        lines.append(f"  class map ({len(class_map)}x{len(class_map[0])} windows; class indices):")
        lines += ["    " + " ".join(f"{c:>2}" for c in row) for row in class_map]
        seen = sorted({c for row in class_map for c in row})
        lines.append("    " + ", ".join(f"{c}: {display_name(classes[c])}" for c in seen))
        lines.append("  mean over the windows:")
    lines += [
        f"  #{rank} {p['probability'] * 100:6.2f}% {display_name(p['class'])}"
        for rank, p in enumerate(result["topk"], 1)
    ]
    return "\n".join(lines)
