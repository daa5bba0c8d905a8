"""The objects a job builds from its config, the same way for train, bench and the inference commands:
the config a run records, the network and what it costs, and the optimizer with its schedule."""

import copy
import math
from dataclasses import dataclass

import timm.optim
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from cnnbench.errors import ConfigError
from cnnbench.models import create_model
from cnnbench.models.registry import compound_image_size

from .device import Placement
from .distributed import restartable


def run_config(cfg: DictConfig) -> DictConfig:
    """The config a job runs and records, resolved once: the user's with what follows from it filled in.
    Compound scaling (Tan and Le 2019, EfficientNet) grows the images with depth and width (alpha, beta,
    gamma ** phi), so a model.phi run's data.image_size is the grown one, as evaluate and predict read it.
    Under `torchrun --max-restarts` a restarted attempt continues the failed one's last.pt: resume=auto."""
    cfg = copy.deepcopy(cfg)
    if restartable():
        cfg.resume = cfg.resume or "auto"
    if cfg.model.get("phi"):
        cfg.data.image_size = compound_image_size(cfg.data.image_size, cfg.model.phi, cfg.model.gamma)
    return cfg


@dataclass
class Network:
    model: torch.nn.Module  # the bare model, on the job's device in its memory format
    params: int
    flops: int  # forward, one image
    image_shape: tuple[int, int, int]


def build_network(
    cfg: DictConfig, num_classes: int, placement: Placement, classes: list[str] | None = None, convert=None
) -> Network:
    """The model of cfg.model for cfg.data's images; `convert` (SyncBatchNorm) is applied before it is counted."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = create_model(
        **model_cfg,
        num_classes=num_classes,
        in_chans=cfg.data.channels,
        image_size=cfg.data.image_size,
        classes=classes,
    ).to(placement.device)
    if convert is not None:
        model = convert(model)
    return measure(model, (cfg.data.channels, cfg.data.image_size, cfg.data.image_size), placement)


def check_batch_statistics(model: torch.nn.Module, cfg: DictConfig, world_size: int) -> None:
    """Batch norm trains on each rank's batch statistics, and one image per rank makes them that image's:
    torch refuses outright where a feature map is 1x1 ("Expected more than 1 value per channel"), and
    elsewhere the running statistics that validation uses come out wrong (SyncBatchNorm pools the ranks')."""
    synced = cfg.hardware.sync_batchnorm and world_size > 1
    if cfg.data.batch_size // world_size > 1 or synced:
        return
    if any(isinstance(module, torch.nn.modules.batchnorm._BatchNorm) for module in model.modules()):
        per_rank = f" over {world_size} ranks is 1 image a rank," if world_size > 1 else " image a step is"
        raise ConfigError(
            f"data.batch_size: {cfg.data.batch_size}{per_rank} too few for {cfg.model.name}'s batch norm, "
            f"which trains on the batch's statistics: at least {2 * world_size}"
        )


def measure(model: torch.nn.Module, image_shape: tuple[int, int, int], placement: Placement) -> Network:
    """A model on the job's device as a Network: counted, in the hardware's memory format."""
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, image_shape, placement.device)
    return Network(model.to(memory_format=placement.memory_format), params, flops, image_shape)


def count_flops(model: torch.nn.Module, shape: tuple, device) -> int:
    """Forward FLOPs of one image (torch's counter: 2 per multiply-add)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape, device=device))
    model.train(was_training)
    return counter.get_total_flops()


FUSED_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)  # those with fused kernels, found_inf


def fused_optimizer(fused: bool | None, opt: str, placement: Placement) -> bool:
    """optimizer.fused: as set, or where null on a GPU for torch's SGD, Adam and AdamW, but not inside
    timm's Lookahead (whose step would not pass the non-finite flag on) nor under fp16's GradScaler (whose
    first update often overflows, see build_optimization)."""
    if fused is not None:
        return fused
    name = opt.lower().split("_")
    return (
        placement.device.type == "cuda"
        and placement.amp_dtype != torch.float16
        and len(name) == 1
        and timm.optim.get_optimizer_info(name[0]).opt_class in FUSED_OPTIMIZERS
    )


@dataclass(frozen=True)
class LengthOrigin:
    """Where the run's present cut of epochs into batches begins: step 0, or the checkpoint of a resumed run
    that changed its batches (data.batch_size, train.limit_train_batches) or its length (train.epochs, a
    budget) at an epoch's start. The steps and images before it are the checkpoint's."""

    step: int = 0
    epoch: int = 0
    images: int = 0


@dataclass
class TrainingLength:
    """How long a run trains: `steps` optimizer updates over `epochs` epochs, the last one cut short at
    `steps` where a budget ends mid-epoch. Every training batch is whole (the loader drops an incomplete
    last one), so the images a step count trained follow from the config (and the origin) alone."""

    steps: int
    epochs: int
    batches_per_epoch: int
    batch_size: int  # global
    grad_accum_steps: int
    flops: int  # forward, one image
    budget_tflop: float | None
    budget_images: int | None
    origin: LengthOrigin = LengthOrigin()

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.grad_accum_steps)

    def images(self, step: int) -> int:
        """The images `step` updates trained on."""
        epochs, updates = divmod(step - self.origin.step, self.updates_per_epoch)
        return (
            self.origin.images + (epochs * self.batches_per_epoch + updates * self.grad_accum_steps) * self.batch_size
        )

    def tflop(self, step: int) -> float:
        return TRAIN_FLOPS_PER_FORWARD * self.flops * self.images(step) / 1e12

    def record(self, step: int) -> dict:
        """summary.json's: the budget (null without one) and what `step` updates trained."""
        return {
            "budget_tflop": self.budget_tflop,
            "budget_images": self.budget_images,
            "trained_images": self.images(step),
            "trained_tflop": self.tflop(step),
        }

    def describe(self) -> str | None:
        """For train.log: what the budget comes to; None without one."""
        if self.budget_tflop is None and self.budget_images is None:
            return None
        budget = (
            f"train.budget_tflop={self.budget_tflop:g} (3 x {self.flops / 1e9:.4g} GFLOPs an image)"
            if self.budget_tflop is not None
            else f"train.budget_images={self.budget_images}"
        )
        return (
            f"{budget}: {self.steps} steps of {self.batch_size * self.grad_accum_steps} images, "
            f"{self.images(self.steps):,} images, {self.tflop(self.steps):.4g} TFLOP, in {self.epochs} epochs "
            f"of {self.updates_per_epoch} steps (train.epochs is not used)"
        )


# Training compute per image seen: the forward, and the backward's two products (the gradients of the
# activations and of the weights), each as costly as the forward (Kaplan et al., "Scaling Laws for Neural
# Language Models", 2020: 6N per token for 2N forward).
TRAIN_FLOPS_PER_FORWARD = 3


def training_length(
    cfg: DictConfig, flops: int, batches_per_epoch: int, origin: LengthOrigin = LengthOrigin()
) -> TrainingLength:
    """train.epochs whole epochs, or the steps that first reach a budget: train.budget_images images seen, or
    train.budget_tflop TFLOP of training compute (3 x forward FLOPs x images). Steps follow from the config,
    the model's FLOPs and the origin alone, so a resumed run derives the same ones."""
    train = cfg.train
    length = TrainingLength(
        0,
        0,
        batches_per_epoch,
        cfg.data.batch_size,
        train.grad_accum_steps,
        flops,
        train.budget_tflop,
        train.budget_images,
        origin,
    )
    if train.budget_images is not None:
        batches = math.ceil((train.budget_images - origin.images) / cfg.data.batch_size)
    elif train.budget_tflop is not None:
        images = train.budget_tflop * 1e12 / (TRAIN_FLOPS_PER_FORWARD * flops)
        batches = math.ceil((images - origin.images) / cfg.data.batch_size)
    else:
        batches = (train.epochs - origin.epoch) * batches_per_epoch
    epochs, batches_left = divmod(max(batches, 0), batches_per_epoch)
    updates = epochs * length.updates_per_epoch + math.ceil(batches_left / train.grad_accum_steps)
    length.steps = origin.step + updates
    length.epochs = origin.epoch + math.ceil(updates / length.updates_per_epoch)
    return length


@dataclass
class Optimization:
    optimizer: torch.optim.Optimizer
    scheduler: object  # timm's, stepped per update
    scaler: torch.amp.GradScaler
    length: TrainingLength  # the steps the schedule spans, which the run trains


def build_optimization(
    cfg: DictConfig,
    network: Network,
    batches_per_epoch: int,
    placement: Placement,
    origin: LengthOrigin = LengthOrigin(),
) -> Optimization:
    """Optimizer and per-update schedule, built by timm's factories from their configs; a GradScaler in fp16.
    The schedule spans the run's steps (`training_length`), and so ends exactly at a budget's last step."""
    length = training_length(cfg, network.flops, batches_per_epoch, origin)
    optimizer_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    if (reference_batch := optimizer_cfg.pop("lr_reference_batch")) is not None:
        optimizer_cfg["lr"] *= cfg.data.batch_size / reference_batch  # the linear scaling rule
    if fused := fused_optimizer(optimizer_cfg.pop("fused"), optimizer_cfg["opt"], placement):
        optimizer_cfg["fused"] = True
    optimizer = instantiate(optimizer_cfg)(network.model)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.amp_dtype == torch.float16)
    if fused and scaler.is_enabled() and isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"]:
        # torch 2.14's fused SGD, skipping the update that makes its momentum buffers, leaves them as
        # torch.empty_like made them: NaN weights after a first fp16 update that overflows.
        raise ConfigError(
            "optimizer.fused: fused SGD with momentum under fp16's GradScaler keeps uninitialised "
            "momentum buffers when the scaler skips the first update; optimizer.fused=false, or "
            "hardware.precision=bf16"
        )
    # In updates, as timm converts epochs itself (times updates_per_epoch), but with the run's step count as
    # the length: a budget's need not be whole epochs.
    scheduler_cfg = OmegaConf.to_container(cfg.scheduler, resolve=True)
    for key in ("warmup_epochs", "decay_epochs"):
        scheduler_cfg[key] *= length.updates_per_epoch
    scheduler_cfg["decay_milestones"] = [m * length.updates_per_epoch for m in scheduler_cfg["decay_milestones"]]
    if scheduler_cfg["warmup_epochs"] and length.steps <= scheduler_cfg["warmup_epochs"]:  # easy with a budget
        raise ConfigError(
            f"scheduler.warmup_epochs={cfg.scheduler.warmup_epochs:g} is {scheduler_cfg['warmup_epochs']:g} "
            f"updates, and the run trains {length.steps}: the learning rate would never leave its warm-up; "
            f"a shorter warm-up, or a longer run"
        )
    scheduler, _ = instantiate(scheduler_cfg)(
        optimizer, num_epochs=length.steps, step_on_epochs=False, updates_per_epoch=1
    )
    return Optimization(optimizer, scheduler, scaler, length)
