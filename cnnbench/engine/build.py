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


def build_network(cfg: DictConfig, num_classes: int, placement: Placement, classes: list[str] | None = None,
                  convert=None) -> Network:
    """The model of cfg.model for cfg.data's images; `convert` (SyncBatchNorm) is applied before it is counted."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = create_model(**model_cfg, num_classes=num_classes, in_chans=cfg.data.channels,
                         image_size=cfg.data.image_size, classes=classes).to(placement.device)
    if convert is not None:
        model = convert(model)
    image_shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
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
    return (placement.device.type == "cuda" and placement.amp_dtype != torch.float16 and len(name) == 1
            and timm.optim.get_optimizer_info(name[0]).opt_class in FUSED_OPTIMIZERS)


@dataclass
class Optimization:
    optimizer: torch.optim.Optimizer
    scheduler: object  # timm's, stepped per update
    scaler: torch.amp.GradScaler


def build_optimization(cfg: DictConfig, model: torch.nn.Module, batches_per_epoch: int,
                       placement: Placement) -> Optimization:
    """Optimizer and per-update schedule, built by timm's factories from their configs; a GradScaler in fp16."""
    updates_per_epoch = math.ceil(batches_per_epoch / cfg.train.grad_accum_steps)
    optimizer_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    if (reference_batch := optimizer_cfg.pop("lr_reference_batch")) is not None:
        optimizer_cfg["lr"] *= cfg.data.batch_size / reference_batch  # the linear scaling rule
    if fused := fused_optimizer(optimizer_cfg.pop("fused"), optimizer_cfg["opt"], placement):
        optimizer_cfg["fused"] = True
    optimizer = instantiate(optimizer_cfg)(model)
    scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.amp_dtype == torch.float16)
    if fused and scaler.is_enabled() and isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"]:
        # torch 2.14's fused SGD, skipping the update that makes its momentum buffers, leaves them as
        # torch.empty_like made them: NaN weights after a first fp16 update that overflows.
        raise ConfigError("optimizer.fused: fused SGD with momentum under fp16's GradScaler keeps uninitialised "
                          "momentum buffers when the scaler skips the first update; optimizer.fused=false, or "
                          "hardware.precision=bf16")
    scheduler, _ = instantiate(cfg.scheduler)(optimizer, num_epochs=cfg.train.epochs, step_on_epochs=False,
                                              updates_per_epoch=updates_per_epoch)
    return Optimization(optimizer, scheduler, scaler)
