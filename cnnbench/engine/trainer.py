"""train(cfg): build everything once from the config, then epochs of train steps and validation.

    python -m cnnbench.train                                      # fmnist_cnn on Fashion-MNIST, CPU or GPU
    python -m cnnbench.train model=resnet18 data=cifar10 data.root=~/data
    torchrun --standalone --nproc_per_node=4 -m cnnbench.train hardware=ddp

Exact resume: the batches depend only on (seed, epoch), each batch's augmentation only on its own
seed, and a checkpoint holds every RNG state and the position inside the epoch, so a run resumed
from any checkpoint continues bit for bit as if never stopped.
"""
import contextlib
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import timm.utils
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from cnnbench.config import TTA, Device, Precision, check_config
from cnnbench.data import build_data
from cnnbench.errors import CheckpointError, ConfigError, Interrupted, NonfiniteLoss, short_list
from cnnbench.models import create_model
from cnnbench.models.registry import compound_image_size

from .checkpoint import export_weights, rng_state, save_checkpoint, set_rng_state
from .device import bf16_native, use_deterministic_algorithms
from .distill import load_teacher
from .distributed import all_reduce_sum, any_rank, init_distributed, restartable, sync_batchnorm
from .losses import Objective
from .recorder import EMA_METRICS, METRICS, Recorder
from .resume import StopSignals, config_changes, load_resume_state, restore_training_state, resume_path
from .tta import tta_logits

log = logging.getLogger("cnnbench")
DTYPES = {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def resolve_device(hw) -> tuple[torch.device, torch.dtype]:
    """The device and autocast dtype of a one-process job (evaluate, predict, bench, pseudolabel)."""
    device = device_of(hw)
    return device, resolve_precision(hw, device)


def device_of(hw) -> torch.device:
    if hw.device == Device.cuda and not torch.cuda.is_available():
        raise ConfigError("hardware.device: cuda asked for, but torch sees no CUDA device")
    cuda = hw.device == Device.cuda or hw.device == Device.auto and torch.cuda.is_available()
    return torch.device("cuda" if cuda else "cpu")


def resolve_precision(hw, device: torch.device) -> torch.dtype:
    """hardware.precision=auto: bf16 where the GPU runs it natively (its probe runs on this rank's GPU, so
    after init_distributed's set_device), else fp32."""
    precision = hw.precision
    if precision == Precision.auto:
        precision = Precision.bf16 if device.type == "cuda" and bf16_native() else Precision.fp32
    return DTYPES[precision]


def peak_lr(optimizer) -> float:
    """The learning rate logged: the largest group's (under layer decay the first group is the most decayed)."""
    return max(group["lr"] for group in optimizer.param_groups)


def compiles(hw, device: torch.device) -> bool:
    """hardware.compile=auto: on a GPU; on CPU compiling costs a minute and gains nothing (docs/performance.md).
    Not with hardware.sync_batchnorm: SyncBatchNorm breaks the graph at every layer and syncs every forward."""
    return device.type == "cuda" and not hw.sync_batchnorm if hw.compile == "auto" else hw.compile


def mixed_precision(device: torch.device, amp_dtype: torch.dtype) -> torch.autocast:
    """Autocast to the run's precision; a no-op in fp32. Reusable as a context manager."""
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32)


def count_flops(model: torch.nn.Module, shape: tuple, device) -> int:
    """Forward FLOPs of one image (torch's counter: 2 per multiply-add)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape, device=device))
    model.train(was_training)
    return counter.get_total_flops()


def train(cfg: DictConfig) -> dict:
    with StopSignals() as stops:  # a signal while the data or the model is built stops at the first step
        return train_until_stopped(cfg, stops)


def train_until_stopped(cfg: DictConfig, stops: StopSignals) -> dict:
    check_config(cfg)
    if cfg.model.get("phi"):
        # Compound scaling (Tan and Le 2019) grows the images with depth and width: alpha, beta, gamma ** phi.
        cfg.data.image_size = compound_image_size(cfg.data.image_size, cfg.model.phi, cfg.model.gamma)
    started = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    device = device_of(cfg.hardware)
    ctx = init_distributed(device.type)
    if ctx.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    amp_dtype = resolve_precision(cfg.hardware, device)
    # torch, numpy (mixup, cutmix), random: each rank its own; data order is seeded apart
    timm.utils.random_seed(cfg.seed, ctx.rank)
    use_deterministic_algorithms(cfg.hardware.deterministic)
    if restartable():  # torchrun restarts the ranks in the same run dir: the failed attempt left its last.pt
        cfg.resume = cfg.resume or "auto"
    resume_from = resume_path(cfg, run_dir)
    config_record = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if resume_from is not None:  # a config the checkpoint cannot continue is refused before any work
        state, resume_from, fallback_note = load_resume_state(resume_from, cfg)
        changes = config_changes(state, config_record, resume_from, ctx.world_size)

    # Data, and what it tells the model: classes, channels, image size.
    data = build_data(cfg, ctx.rank, ctx.world_size, device)
    normalize = data.normalize.to(device)
    num_classes, topk = len(data.classes), min(5, len(data.classes))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = create_model(**model_cfg, num_classes=num_classes, in_chans=cfg.data.channels,
                         image_size=cfg.data.image_size, classes=data.classes).to(device)
    if cfg.hardware.sync_batchnorm and ctx.world_size > 1:
        if device.type != "cuda":
            raise ConfigError("hardware.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only")
        model = sync_batchnorm(model)
    image_shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, image_shape, device)
    if cfg.hardware.channels_last:
        model = model.to(memory_format=torch.channels_last)
    memory_format = torch.channels_last if cfg.hardware.channels_last else torch.contiguous_format
    # The EMA of the weights is validated beside the raw model every epoch (and checkpointed with it).
    ema = ModelEmaV3(model, decay=cfg.train.ema_decay) if cfg.train.ema_decay is not None else None
    teacher = (load_teacher(cfg.distill.teacher, data.classes, cfg.data.channels, device)[0]
               if cfg.distill.teacher else None)
    objective = Objective(cfg.augmentation, num_classes, cfg.data.batch_size // ctx.world_size,
                          getattr(model, "aux_weight", 0.0), teacher, cfg.distill)

    # Optimizer and per-update schedule, built by timm's factories from their configs.
    updates_per_epoch = math.ceil(len(data.train_batches) / cfg.train.grad_accum_steps)
    optimizer_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    if (reference_batch := optimizer_cfg.pop("lr_reference_batch")) is not None:
        optimizer_cfg["lr"] *= cfg.data.batch_size / reference_batch  # the linear scaling rule
    optimizer = instantiate(optimizer_cfg)(model)
    scheduler, _ = instantiate(cfg.scheduler)(optimizer, num_epochs=cfg.train.epochs, step_on_epochs=False,
                                              updates_per_epoch=updates_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = mixed_precision(device, amp_dtype)

    # Where to start: a fresh run, or exactly where a checkpoint left off.
    epoch, batch_in_epoch, step, history, best, elapsed = 0, 0, 0, [], {"val_top1": -1.0}, 0.0
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # train loss sum, correct, samples
    faults = {"skipped_images": data.skipped_images, "nonfinite_skipped_steps": 0, "scaler_skipped_steps": 0}
    if resume_from is not None:
        if state["classes"] != data.classes:
            raise CheckpointError(f"{resume_from}: trained on other classes than {cfg.data.name}'s (there "
                                  f"{short_list(state['classes'])}; here {short_list(data.classes)})")
        changes += restore_training_state(state, model, optimizer, scheduler, scaler, ema)
        epoch, batch_in_epoch, step = state["epoch"], state["batch_in_epoch"], state["step"]
        history, best, elapsed = state["history"], state["best"], state["wall_time_s"]
        sums = state["epoch_sums"][ctx.rank].to(device)
        set_rng_state(state["rng"][ctx.rank], device)
        if "faults" in state:  # checkpoints from before the fault counts
            data.skipped_images.update(state["faults"]["skipped_images"])
            faults.update(state["faults"], skipped_images=data.skipped_images)
    bare_model = model
    if ctx.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[ctx.local_rank] if device.type == "cuda" else None,
                                        find_unused_parameters=cfg.hardware.find_unused_parameters)
    if compiles(cfg.hardware, device):
        model = torch.compile(model)

    recorder = Recorder(run_dir, history, step, METRICS + EMA_METRICS if ema else METRICS) if ctx.is_main else None
    if recorder and step == 0:
        recorder.step(0, {"train/lr": peak_lr(optimizer)})  # the schedule's start (warm-up's first lr)
    for warning in data.warnings:
        log.warning(warning)
    if resume_from is not None:
        if fallback_note:
            log.warning(fallback_note)
        log.info(f"resumed from {resume_from}: epoch {epoch}, batch {batch_in_epoch}, step {step}")
        for change in changes:
            log.info(change)

    def checkpoint(name: str, epoch: int, batch_in_epoch: int):
        # Each rank's own: its RNGs, and its part of the epoch's train sums.
        ranks = [None] * ctx.world_size
        if ctx.world_size > 1:
            torch.distributed.all_gather_object(ranks, (rng_state(device), sums.cpu(), data.skipped_images))
        else:
            ranks = [(rng_state(device), sums.cpu(), {})]
        if not ctx.is_main:
            return
        for rank, (_, _, skipped) in enumerate(ranks[1:], start=1):
            for path in skipped.keys() - data.skipped_images.keys():
                log.warning(f"skipped image {path} (rank {rank}): {skipped[path]}")
            data.skipped_images.update(skipped)
        save_checkpoint({
            "model": bare_model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "ema": ema.module.state_dict() if ema else None,
            "epoch": epoch, "batch_in_epoch": batch_in_epoch, "step": step,
            "epoch_sums": [rank[1] for rank in ranks], "rng": [rank[0] for rank in ranks], "faults": faults,
            "best": best, "history": history, "wall_time_s": elapsed + time.perf_counter() - started,
            "world_size": ctx.world_size, "classes": data.classes, "config": config_record,
        }, run_dir / "checkpoints" / name)

    def summary(status: str) -> dict:
        final = history[-1] if history else {}
        return {
            "model": model_cfg["name"], "params": params, "gflops": flops / 1e9, "data": cfg.data.name,
            "best_val_top1": best.get("val_top1") if history else None,
            "best_val_top5": best.get("val_top5"), "best_epoch": best.get("epoch"),
            "final_val_top1": final.get("val_top1"), "final_val_top5": final.get("val_top5"),
            "top5_k": topk, "epochs": len(history), "step": step,
            "train_img_per_s": steady_throughput(history),
            **({"best_weights": best.get("weights"),
                "best_ema_val_top1": max((r["ema_val_top1"] for r in history), default=None),
                "final_ema_val_top1": final.get("ema_val_top1")} if ema else {}),
            "wall_time_s": round(elapsed + time.perf_counter() - started, 3), "status": status,
            "skipped_image_count": len(faults["skipped_images"]), **faults,
        }

    log.info(f"model {model_cfg['name']}: {params:,} parameters, {flops / 1e9:.3f} GFLOPs per image; "
             f"data {cfg.data.name}: {len(data.classes)} classes, {len(data.train_batches)} batches of "
             f"{cfg.data.batch_size} an epoch ({data.path}); device {device}, {str(amp_dtype).removeprefix('torch.')}"
             f"{', compiled' if compiles(cfg.hardware, device) else ''}")
    if topk < 5:
        log.info(f"{num_classes} classes: val_top5 is top-{topk}")

    status = "failed"
    scale = scaler.get_scale()  # falls when fp16 gradients overflow and the GradScaler skips an update
    try:
        if ctx.is_main:
            recorder.start(summary("running"))
        while epoch < cfg.train.epochs:
            # Train one epoch (or what is left of it).
            epoch_started = time.perf_counter()
            model.train()
            data.train_batches.set_epoch(epoch, batch_in_epoch)
            batches = len(data.train_batches) + batch_in_epoch
            bar = tqdm(total=batches, initial=batch_in_epoch, desc=f"epoch {epoch}", leave=False,
                       disable=not (ctx.is_main and sys.stderr.isatty()), dynamic_ncols=True)
            images_seen = 0
            nonfinite = torch.zeros((), dtype=torch.bool, device=device)  # any micro-batch of this update
            for i, (images, targets) in enumerate(data.train_loader, start=batch_in_epoch):
                if cfg.train.on_nonfinite == "skip" and i % cfg.train.grad_accum_steps == 0:
                    buffers = [b.clone() for b in bare_model.buffers()]  # a skipped update's forward moved BN stats
                images = normalize(images.to(device, non_blocking=True, memory_format=memory_format))
                images, targets, labels = objective.mix(images, targets.to(device, non_blocking=True))
                last_micro_step = (i + 1) % cfg.train.grad_accum_steps == 0 or i + 1 == batches
                sync = contextlib.nullcontext() if last_micro_step or ctx.world_size == 1 else model.no_sync()
                with sync:
                    with autocast:
                        logits, loss = objective(model(images), targets, images)
                    scaler.scale(loss / cfg.train.grad_accum_steps).backward()
                # Train metrics add up on the device (a non-finite loss leaves them), read at the epoch's end.
                loss = loss.detach().double()
                finite = torch.isfinite(loss)
                nonfinite |= ~finite
                sums += torch.where(finite, torch.stack([loss * len(targets), (logits.argmax(1) == labels).sum(),
                                                         loss.new_full((), len(targets))]), 0)
                images_seen += len(targets)
                bar.update()
                if not last_micro_step:
                    continue
                # What an update reads on the host: the non-finite flag, decided before the poisoned gradients
                # touch the weights (free on the CPU, the one device sync of a step on a GPU; fp16 adds the
                # GradScaler's own), and with DDP one all-reduce on the CPU carrying it and the stop signal.
                # Everything else (loss, metrics, lr) is read at log intervals and epoch ends.
                nonfinite_anywhere, stop = any_rank((bool(nonfinite), bool(stops)), ctx)
                if nonfinite_anywhere:
                    where = f"at step {step + 1} (epoch {epoch}, batch {i + 1})"
                    if cfg.train.on_nonfinite == "error":
                        log.error(message := f"train: loss {loss.item()} {where}; the weights are kept from "
                                             f"before it (train.on_nonfinite=skip skips such steps)")
                        raise NonfiniteLoss(message)
                    faults["nonfinite_skipped_steps"] += 1
                    torch._foreach_copy_(list(bare_model.buffers()), buffers)
                    log.warning(f"train.on_nonfinite=skip: loss {loss.item()} {where}, update skipped")
                    nonfinite.zero_()
                else:
                    if cfg.train.clip_grad_norm:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
                    scaler.step(optimizer)
                    scaler.update()
                    if scaler.is_enabled():  # one read, after the GradScaler's own sync in step()
                        scale, previous_scale = scaler.get_scale(), scale
                        if scale < previous_scale:
                            faults["scaler_skipped_steps"] += 1
                            log.info(f"step {step + 1}: fp16 gradients overflowed; the GradScaler skipped the "
                                     f"update and lowered its scale to {scale:g}")
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if ema is not None:
                    ema.update(bare_model, step)
                scheduler.step_update(step)
                if step % cfg.train.log_every_steps == 0 and ctx.is_main:
                    loss_value, lr = loss.item(), peak_lr(optimizer)
                    recorder.step(step, {"train/step_loss": loss_value, "train/lr": lr})
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}")
                    if bar.disable:
                        log.info(f"epoch {epoch} batch {i + 1}/{batches} step {step}: "
                                 f"loss {loss_value:.4f}, lr {lr:.4g}")
                if stop or cfg.train.checkpoint_every_steps and step % cfg.train.checkpoint_every_steps == 0:
                    checkpoint("last.pt", epoch, i + 1)
                if stop:
                    raise Interrupted(stops.name if stops else "another rank's signal")
            bar.close()
            train_time = time.perf_counter() - epoch_started
            train_loss, train_correct, train_count = all_reduce_sum(sums.clone(), ctx).tolist()

            val = validate(model, data.val_loader, normalize, device, memory_format, autocast, topk, ctx, cfg.eval.tta)
            if ema is not None:
                ema_val = validate(ema.module, data.val_loader, normalize, device, memory_format, autocast, topk, ctx,
                                   cfg.eval.tta)
                val.update({f"ema_{key}": value for key, value in ema_val.items()})
            row = {"epoch": epoch, "step": step, "lr": peak_lr(optimizer),
                   "train_loss": train_loss / train_count, "train_top1": 100 * train_correct / train_count, **val,
                   "epoch_time_s": round(time.perf_counter() - epoch_started, 3),
                   "train_img_per_s": round(images_seen * ctx.world_size / train_time, 1)}
            epoch, batch_in_epoch = epoch + 1, 0
            sums.zero_()
            if ctx.is_main:
                recorder.epoch(row)
            else:
                history.append(row)
            log.info(f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} top1 {row['train_top1']:.2f} | "
                     f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f} top{topk} {row['val_top5']:.2f} | "
                     + (f"ema val top1 {row['ema_val_top1']:.2f} | " if ema else "")
                     + f"{row['train_img_per_s']:.0f} img/s, {row['epoch_time_s']:.1f}s")
            if (candidate := best_of(row))["val_top1"] > best["val_top1"]:
                best = candidate
                checkpoint("best.pt", epoch, 0)
            checkpoint("last.pt", epoch, 0)
        if ctx.is_main:
            export_weights(ema.module if best.get("weights") == "ema" else bare_model,
                           run_dir / "checkpoints" / "model.safetensors")
        status = "completed"
        if stops:
            log.info(f"{stops.name} after the last step: the run is complete, and stops there")
    except Interrupted as e:
        status = "interrupted"
        log.info(f"interrupted ({e}) at step {step}: checkpoints/last.pt holds the run, resume=auto continues it")
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        log.info(f"stopped at once by a second Ctrl-C at step {step}, without a checkpoint: resume=auto "
                 f"continues from the last one")
        raise
    finally:
        result = summary(status)
        if ctx.is_main:
            recorder.finish(result, hparam_record(cfg))
        if ctx.world_size > 1:
            torch.distributed.destroy_process_group()
    log.info(f"done: best val top1 {result['best_val_top1']:.2f} (epoch {result['best_epoch']}), "
             f"{result['wall_time_s']:.0f}s; results in {run_dir}")
    return result


def steady_throughput(history: list[dict]) -> float | None:
    """Training images/s of a run: the median over its epochs after the first (whose warm-up, allocator and
    autotuning would count otherwise); the first alone in a one-epoch run."""
    rates = [row["train_img_per_s"] for row in history]
    return statistics.median(rates[1:] or rates) if rates else None


def best_of(row: dict) -> dict:
    """An epoch's better validated weights: the raw model's, or with train.ema_decay the EMA's if they
    validate better. best.pt, evaluate, predict and a teacher use the kind the run's best names."""
    weights = "ema" if row.get("ema_val_top1", -math.inf) > row["val_top1"] else "model"
    prefix = "ema_" if weights == "ema" else ""
    return {"val_top1": row[f"{prefix}val_top1"], "val_top5": row[f"{prefix}val_top5"], "epoch": row["epoch"],
            "weights": weights}


def hparam_record(cfg: DictConfig) -> dict:
    """The run's scalar settings, for TensorBoard's HParams dashboard."""
    flat = {}
    for group in ("model", "data", "optimizer", "scheduler", "augmentation", "train", "distill"):
        for key, value in OmegaConf.to_container(cfg[group], resolve=True, enum_to_str=True).items():
            if isinstance(value, (int, float, str, bool)) and not key.startswith("_"):
                flat[f"{group}.{key}"] = value
    return flat


@torch.no_grad()
def validate(model, loader, normalize, device, memory_format, autocast, topk: int, ctx, tta: TTA = TTA.none) -> dict:
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1, top-k, samples
    for images, targets in loader:
        images = normalize(images.to(device, non_blocking=True, memory_format=memory_format))
        targets = targets.to(device, non_blocking=True)
        with autocast:
            logits = tta_logits(model, images, tta, images.shape[-1])
        hits = logits.topk(topk, 1).indices == targets[:, None]
        sums += torch.stack([F.cross_entropy(logits.float(), targets, reduction="sum").double(),
                             hits[:, 0].sum().double(), hits.any(1).sum().double(),
                             hits.new_full((), len(targets), dtype=torch.float64)])
    loss, top1, topk_hits, count = all_reduce_sum(sums, ctx).tolist()
    return {"val_loss": loss / count, "val_top1": 100 * top1 / count, "val_top5": 100 * topk_hits / count}
