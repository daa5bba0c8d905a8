"""train(cfg): build the run's objects once from the config, then epochs of train steps and validation.

    python -m cnnbench.train                                      # fmnist_cnn on Fashion-MNIST, CPU or GPU
    python -m cnnbench.train model=resnet18 data=cifar10 data.root=~/data
    torchrun --standalone --nproc_per_node=4 -m cnnbench.train hardware=ddp

A run is a Run (what the config builds, fixed for the run) and a TrainState (where it is and what it
has measured, which changes every step and is what a checkpoint holds with the weights).

Exact resume: the batches depend only on (seed, epoch), each batch's augmentation only on its own
seed, and a checkpoint holds every RNG state and the position inside the epoch, so a run resumed
from any checkpoint continues bit for bit as if never stopped.
"""

import contextlib
import logging
import math
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import timm.utils
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cnnbench.config import TTA, check_config
from cnnbench.data import Data, build_data
from cnnbench.errors import CheckpointError, ConfigError, Interrupted, short_list
from cnnbench.models.whitening import WHITENING_IMAGES, whiten_first_conv

from .build import (
    LengthOrigin,
    Network,
    Optimization,
    build_network,
    build_optimization,
    check_batch_statistics,
    run_config,
)
from .checkpoint import export_weights, rng_state, save_checkpoint, set_rng_state
from .device import Placement, device_of, peak_memory_bytes, place, reset_peak_memory, use_deterministic_algorithms
from .distill import load_teacher
from .distributed import Dist, all_reduce_sum, any_rank, init_distributed, sync_batchnorm
from .hparams import hparam_summaries, session_end_summary
from .losses import Objective
from .mpl import MetaPseudoLabels, build_meta_pseudo_labels, mpl_epoch
from .nonfinite import NonfiniteGuard
from .recorder import EMA_METRICS, METRICS, Recorder
from .resume import (
    StopSignals,
    config_changes,
    length_origin,
    load_resume_state,
    restore_training_state,
    resume_path,
)
from .tta import batch_logits

log = logging.getLogger("cnnbench")
STOP_AGREEMENT_STEPS = 10  # with DDP and the non-finite flag on the device: updates between the ranks' agreements
# validate's confusion matrix, up to this many classes: ImageNet's 1000 are 8 MB of counts on the device,
# ImageNet-21k's would be 3.8 GB
MAX_CONFUSION_CLASSES = 1000


@dataclass
class Run:
    """What train() builds from the config, once: fixed for the run."""

    cfg: DictConfig  # run_config's: resolved, with what the run derives from the user's
    ctx: Dist
    placement: Placement
    data: Data
    network: Network
    model: torch.nn.Module  # what the steps call: the network's model, under DDP and torch.compile
    ema: ModelEmaV3 | None  # the EMA of the weights, validated beside the raw model every epoch
    objective: Objective
    optimization: Optimization
    guard: NonfiniteGuard  # train.on_nonfinite, decided on the device or read every update
    run_dir: Path
    topk: int  # top-5, or top-k with fewer than 5 classes
    recorder: Recorder | None = None  # rank 0's, from the run's first step on
    mpl: MetaPseudoLabels | None = None  # Meta Pseudo Labels' teacher (mpl.enabled): the model is its student
    notes: list[str] = field(default_factory=list)  # what building it did, for train.log

    @property
    def bare_model(self) -> torch.nn.Module:
        return self.network.model


@dataclass
class TrainState:
    """Where the run is and what it has measured: the checkpoint's training state (beside the weights)."""

    sums: torch.Tensor  # this rank's train loss sum, correct and samples of the epoch so far, on the device
    faults: dict
    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)  # metrics.csv's rows
    best: dict = field(default_factory=lambda: {"val_top1": -1.0})
    earlier_wall_time_s: float = 0.0  # of the runs this one resumes
    started: float = field(default_factory=time.perf_counter)
    scale: float = 1.0  # the GradScaler's, which falls when fp16 gradients overflow and it skips an update
    time_to_first_step_s: float | None = None  # this process's start-up: from its start to its first step's end

    def wall_time_s(self) -> float:
        return self.earlier_wall_time_s + time.perf_counter() - self.started

    def checkpoint_fields(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "faults": self.faults,
            "best": self.best,
            "history": self.history,
            "wall_time_s": self.wall_time_s(),
        }

    def restore(self, checkpoint: dict, rank: int, device: torch.device) -> None:
        self.epoch, self.batch_in_epoch = checkpoint["epoch"], checkpoint["batch_in_epoch"]
        self.step = checkpoint["step"]
        self.history, self.best = checkpoint["history"], checkpoint["best"]
        self.earlier_wall_time_s = checkpoint["wall_time_s"]
        self.sums = checkpoint["epoch_sums"][rank].to(device)
        if "faults" in checkpoint:  # checkpoints from before the fault counts
            self.faults["skipped_images"].update(checkpoint["faults"]["skipped_images"])
            self.faults.update(checkpoint["faults"], skipped_images=self.faults["skipped_images"])


def train(cfg: DictConfig) -> dict:
    with StopSignals() as stops:  # a signal while the data or the model is built stops at the first step
        check_config(cfg)
        cfg = run_config(cfg)
        use_deterministic_algorithms(cfg.hardware.deterministic)
        ctx = init_distributed(device_of(cfg.hardware).type)
        placement = place(cfg.hardware, ctx.local_rank if ctx.world_size > 1 else None)
        # torch, numpy (mixup, cutmix), random: each rank its own; data order is seeded apart
        timm.utils.random_seed(cfg.seed, ctx.rank)
        config_record = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        resume_from = resume_path(cfg, Path(cfg.run_dir))
        notes = []  # for train.log, which opens after the run is built
        if resume_from is not None:  # a config the checkpoint cannot continue is refused before any work
            checkpoint, resume_from, fallback_note = load_resume_state(resume_from, cfg)
            notes = config_changes(checkpoint, config_record, resume_from, ctx.world_size)
        origin = length_origin(checkpoint, config_record) if resume_from is not None else LengthOrigin()
        run = build_run(cfg, ctx, placement, origin, resuming=resume_from is not None)
        state = TrainState(
            torch.zeros(3, dtype=torch.float64, device=placement.device),
            {"skipped_images": run.data.skipped_images, "nonfinite_skipped_steps": 0, "scaler_skipped_steps": 0},
        )
        if resume_from is not None:
            notes = [
                f"resumed from {resume_from}: epoch {checkpoint['epoch']}, batch {checkpoint['batch_in_epoch']}, "
                f"step {checkpoint['step']}",
                *notes,
                *resume(run, state, checkpoint, resume_from),
            ]
        if ctx.is_main:
            run.recorder = Recorder(
                run.run_dir, state.history, state.step, METRICS + EMA_METRICS if run.ema else METRICS
            )
            if state.step == 0:  # once per run: the schedule's start (warm-up's first lr), the config, the HParams
                run.recorder.step(0, {"train/lr": peak_lr(run.optimization.optimizer)})
                run.recorder.begin(config_record, hparam_summaries(cfg, placement.precision))
        for warning in run.data.warnings + ([fallback_note] if resume_from is not None and fallback_note else []):
            log.warning(warning)
        for note in run.notes + notes:
            log.info(note)
        return train_run(run, state, Checkpointer(run, state, config_record), stops)


def resume(run: Run, state: TrainState, checkpoint: dict, path: Path) -> list[str]:
    """The run exactly where the checkpoint left it: weights, optimizer, EMA, GradScaler, TrainState and this
    rank's RNGs (the schedule is this run's, at the checkpoint's step). Returns what to log."""
    if checkpoint["classes"] != run.data.classes:
        raise CheckpointError(
            f"{path}: trained on other classes than {run.cfg.data.name}'s (there "
            f"{short_list(checkpoint['classes'])}; here {short_list(run.data.classes)})"
        )
    optimization = run.optimization
    notes = restore_training_state(
        checkpoint, run.bare_model, optimization.optimizer, optimization.scheduler, optimization.scaler, run.ema
    )
    state.restore(checkpoint, run.ctx.rank, run.placement.device)
    if run.mpl is not None:
        run.mpl.restore(checkpoint)
    set_rng_state(checkpoint["rng"][run.ctx.rank], run.placement.device)
    return notes


def build_run(
    cfg: DictConfig, ctx: Dist, placement: Placement, origin: LengthOrigin = LengthOrigin(), resuming: bool = False
) -> Run:
    # Data, and what it tells the model: classes, channels, image size.
    data = build_data(cfg, ctx.rank, ctx.world_size, placement.device)
    num_classes = len(data.classes)
    convert = None
    if cfg.hardware.sync_batchnorm and ctx.world_size > 1:
        if placement.device.type != "cuda":
            raise ConfigError("hardware.sync_batchnorm: torch's SyncBatchNorm runs on GPUs only")
        convert = sync_batchnorm
    network = build_network(cfg, num_classes, placement, data.classes, convert)
    check_batch_statistics(network.model, cfg, ctx.world_size)
    # A resumed run's weights come from its checkpoint: its start is not computed again.
    whiten = cfg.train.whiten_stem and not resuming
    notes = [whiten_first_conv(network.model, first_images(data, placement))] if whiten else []
    ema = ModelEmaV3(network.model, decay=cfg.train.ema_decay) if cfg.train.ema_decay is not None else None
    teacher = (
        load_teacher(cfg.distill.teacher, data.classes, cfg.data.channels, placement.device)[0]
        if cfg.distill.teacher
        else None
    )
    objective = Objective(
        cfg.augmentation,
        num_classes,
        cfg.data.batch_size // ctx.world_size,
        getattr(network.model, "aux_weight", 0.0),
        teacher,
        cfg.distill,
    )
    optimization = build_optimization(cfg, network, len(data.train_batches), placement, origin)
    model = network.model
    if ctx.world_size > 1:
        model = DistributedDataParallel(
            model,
            device_ids=[ctx.local_rank] if placement.device.type == "cuda" else None,
            find_unused_parameters=cfg.hardware.find_unused_parameters,
        )
    if placement.compile:
        model = torch.compile(model)
    guard = NonfiniteGuard(network.model, optimization.optimizer, optimization.scaler, cfg.train.on_nonfinite, ctx)
    mpl = (
        build_meta_pseudo_labels(cfg, data, placement, ctx.world_size, len(data.train_batches))
        if cfg.mpl.enabled
        else None
    )
    return Run(
        cfg,
        ctx,
        placement,
        data,
        network,
        model,
        ema,
        objective,
        optimization,
        guard,
        Path(cfg.run_dir),
        topk=min(5, num_classes),
        mpl=mpl,
        notes=notes,
    )


def first_images(data: Data, placement: Placement, count: int = WHITENING_IMAGES) -> torch.Tensor:
    """The first `count` training images of epoch 0, normalized, as the first step sees them."""
    data.train_batches.set_epoch(0)
    batches, seen = [], 0
    for images, _ in data.train_loader:
        batches.append(data.normalize(placement.put(images)))
        seen += len(images)
        if seen >= count:
            break
    return torch.cat(batches)[:count]


class Checkpointer:
    """Writes checkpoints/NAME: the weights, the optimizer, schedule, GradScaler and EMA, the TrainState,
    and each rank's own RNGs and part of the epoch's train sums."""

    def __init__(self, run: Run, state: TrainState, config_record: dict):
        self.run, self.state, self.config_record = run, state, config_record

    def save(self, name: str) -> None:
        run, state, ctx = self.run, self.state, self.run.ctx
        ranks = [None] * ctx.world_size
        if ctx.world_size > 1:
            torch.distributed.all_gather_object(
                ranks, (rng_state(run.placement.device), state.sums.cpu(), run.data.skipped_images)
            )
        else:
            ranks = [(rng_state(run.placement.device), state.sums.cpu(), {})]
        if not ctx.is_main:
            return
        for rank, (_, _, skipped) in enumerate(ranks[1:], start=1):
            for path in skipped.keys() - run.data.skipped_images.keys():
                log.warning(f"skipped image {path} (rank {rank}): {skipped[path]}")
            run.data.skipped_images.update(skipped)
        optimization = run.optimization
        save_checkpoint(
            {
                "model": run.bare_model.state_dict(),
                "optimizer": optimization.optimizer.state_dict(),
                "scheduler": optimization.scheduler.state_dict(),
                "scaler": optimization.scaler.state_dict(),
                "ema": run.ema.module.state_dict() if run.ema else None,
                **state.checkpoint_fields(),
                "length_origin": asdict(optimization.length.origin),
                "trained_images": optimization.length.images(state.step),
                "epoch_sums": [rank[1] for rank in ranks],
                "rng": [rank[0] for rank in ranks],
                "world_size": ctx.world_size,
                "classes": run.data.classes,
                "config": self.config_record,
                **(run.mpl.checkpoint_fields() if run.mpl else {}),
            },
            run.run_dir / "checkpoints" / name,
        )


def train_run(run: Run, state: TrainState, checkpointer: Checkpointer, stops: StopSignals) -> dict:
    """Epochs from the state's position to train.epochs; summary.json says how the run ended."""
    cfg, ctx, recorder = run.cfg, run.ctx, run.recorder
    state.scale = run.optimization.scaler.get_scale()
    log.info(
        f"model {cfg.model.name}: {run.network.params:,} parameters, {run.network.flops / 1e9:.3f} GFLOPs per "
        f"image; data {cfg.data.name}: {len(run.data.classes)} classes, {len(run.data.train_batches)} batches of "
        f"{cfg.data.batch_size} an epoch ({run.data.path}); device {run.placement.device}, "
        f"{run.placement.precision}{', compiled' if run.placement.compile else ''}"
    )
    if run.topk < 5:
        log.info(f"{len(run.data.classes)} classes: val_top5 is top-{run.topk}")
    if budget := run.optimization.length.describe():
        log.info(budget)

    status = "failed"
    try:
        if recorder:
            recorder.start(summary(run, state, "running"))
        while state.epoch < run.optimization.length.epochs:
            epoch_started = time.perf_counter()
            reset_peak_memory(run.placement.device)
            images_seen = (mpl_epoch if run.mpl else train_epoch)(run, state, checkpointer, stops)
            train_time = time.perf_counter() - epoch_started
            row, confusions = end_epoch(run, state, images_seen, train_time, epoch_started)
            state.history.append(row)
            if improved := (candidate := best_of(row))["val_top1"] > state.best["val_top1"]:
                state.best = candidate
            if recorder:
                recorder.epoch(row, summary(run, state, "running"))
                if improved and (confusion := confusions[candidate["weights"]]) is not None:
                    weights = " (EMA weights)" if candidate["weights"] == "ema" else ""
                    recorder.best_epoch(
                        row,
                        confusion,
                        run.data.classes,
                        f"{cfg.model.name} on {cfg.data.name}, epoch {row['epoch']}{weights}: "
                        f"val top-1 {candidate['val_top1']:.2f}%",
                    )
            if improved:
                checkpointer.save("best.pt")
            checkpointer.save("last.pt")
        if ctx.is_main:
            export_weights(
                run.ema.module if state.best.get("weights") == "ema" else run.bare_model,
                run.run_dir / "checkpoints" / "model.safetensors",
            )
        status = "completed"
        if stops:
            log.info(f"{stops.name} after the last step: the run is complete, and stops there")
    except Interrupted as e:
        status = "interrupted"
        log.info(f"interrupted ({e}) at step {state.step}: checkpoints/last.pt holds the run, resume=auto continues it")
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        log.info(
            f"stopped at once by a second Ctrl-C at step {state.step}, without a checkpoint: resume=auto "
            f"continues from the last one"
        )
        raise
    finally:
        result = summary(run, state, status)
        if recorder:
            recorder.finish(result, session_end_summary(status))
        if ctx.world_size > 1:
            torch.distributed.destroy_process_group()
    log.info(
        f"done: best val top1 {result['best_val_top1']:.2f} (epoch {result['best_epoch']}), "
        f"{result['wall_time_s']:.0f}s; results in {run.run_dir}"
    )
    return result


def train_epoch(run: Run, state: TrainState, checkpointer: Checkpointer, stops: StopSignals) -> int:
    """One epoch of train steps from the state's position in it; returns the images this rank trained on."""
    cfg, ctx, data, placement = run.cfg, run.ctx, run.data, run.placement
    accumulate, guard = cfg.train.grad_accum_steps, run.guard
    run.model.train()
    start = state.batch_in_epoch
    data.train_batches.set_epoch(state.epoch, start)
    batches = len(data.train_batches) + start
    bar = tqdm(
        total=batches,
        initial=start,
        desc=f"epoch {state.epoch}",
        leave=False,
        disable=not (ctx.is_main and sys.stderr.isatty()),
        dynamic_ncols=True,
    )
    images_seen = 0
    nonfinite = torch.zeros((), dtype=torch.bool, device=placement.device)  # any micro-batch of this update
    for i, (images, targets) in enumerate(data.train_loader, start=start):
        if state.step >= run.optimization.length.steps:  # a budget's last epoch ends at its step
            break
        if i % accumulate == 0:
            guard.start_update()
        images = data.normalize(placement.put(images))
        images, targets, labels = run.objective.mix(images, targets.to(placement.device, non_blocking=True))
        if i == 0 and state.step == 0 and run.recorder:  # once per run: what the model sees
            run.recorder.batch(data.normalize.denormalize(images))
        last_micro_step = (i + 1) % accumulate == 0 or i + 1 == batches
        sync = contextlib.nullcontext() if last_micro_step or ctx.world_size == 1 else run.model.no_sync()
        with sync:
            with placement.autocast:
                logits, loss = run.objective(run.model(images), targets, images)
            run.optimization.scaler.scale(loss / accumulate).backward()
        # Train metrics add up on the device (a non-finite loss leaves them), read at the epoch's end.
        loss = loss.detach().double()
        finite = torch.isfinite(loss)
        nonfinite |= ~finite
        state.sums += torch.where(
            finite,
            torch.stack([loss * len(targets), (logits.argmax(1) == labels).sum(), loss.new_full((), len(targets))]),
            0,
        )
        images_seen += len(targets)
        bar.update()
        if not last_micro_step:
            continue
        # The non-finite flag is decided before the poisoned gradients touch the weights (engine/nonfinite.py):
        # on the device where the optimizer can skip there; else read here, with DDP in one all-reduce on the
        # CPU with the stop signal (free on the CPU, the one device sync of a step on a GPU; fp16 adds the
        # GradScaler's own). Everything else (loss, metrics, lr) is read at log intervals and epoch ends.
        where = (state.step + 1, state.epoch, i + 1)
        if guard.on_device():
            with guard.deciding(nonfinite, loss, where):
                update(run, state)
            # Ranks agree on a stop signal on the CPU every few updates and at the epoch's end, off the
            # device's path: all of them at the same update.
            agree = ctx.world_size == 1 or (state.step + 1) % STOP_AGREEMENT_STEPS == 0 or i + 1 == batches
            stop = agree and any_rank((bool(stops),), ctx)[0]
        else:
            nonfinite_anywhere, stop = any_rank((bool(nonfinite), bool(stops)), ctx)
            if nonfinite_anywhere:
                guard.skip_on_host(loss, where, state.faults)
            else:
                update(run, state)
        nonfinite.zero_()
        finish_step(run, state, loss, bar, i + 1, batches)
        state.batch_in_epoch = i + 1
        if stop or cfg.train.checkpoint_every_steps and state.step % cfg.train.checkpoint_every_steps == 0:
            guard.read(state.faults)  # a checkpoint holds no update the device has not reported
            checkpointer.save("last.pt")
        if stop:
            raise Interrupted(stops.name if stops else "another rank's signal")
    guard.read(state.faults)
    bar.close()
    return images_seen


def update(run: Run, state: TrainState) -> None:
    """The optimizer's step on this update's gradients (unscaled and clipped where configured)."""
    optimizer, scaler = run.optimization.optimizer, run.optimization.scaler
    if run.cfg.train.clip_grad_norm:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    if scaler.is_enabled():  # one read, after the GradScaler's own sync in step()
        scale, previous_scale = scaler.get_scale(), state.scale
        state.scale = scale
        if scale < previous_scale:
            state.faults["scaler_skipped_steps"] += 1
            log.info(
                f"step {state.step + 1}: fp16 gradients overflowed; the GradScaler skipped the update and "
                f"lowered its scale to {scale:g}"
            )


def finish_step(run: Run, state: TrainState, loss: torch.Tensor, bar: tqdm, batch: int, batches: int) -> None:
    """After an update (or a skipped one): the gradients cleared, the step counted, the EMA and the schedule
    moved on, and at log intervals what the device decided read, the loss and lr logged."""
    run.optimization.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if state.time_to_first_step_s is None:
        state.time_to_first_step_s = process_age_s()
    if run.ema is not None:
        run.ema.update(run.bare_model, state.step)
    run.optimization.scheduler.step_update(state.step)
    if state.step % run.cfg.train.log_every_steps:
        return
    run.guard.read(state.faults)  # on every rank: in error mode all of them stop at this step
    if run.ctx.is_main:
        loss_value, lr = loss.item(), peak_lr(run.optimization.optimizer)
        run.recorder.step(state.step, {"train/step_loss": loss_value, "train/lr": lr})
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}")
        if bar.disable:
            log.info(
                f"epoch {state.epoch} batch {batch}/{batches} step {state.step}: loss {loss_value:.4f}, lr {lr:.4g}"
            )


def end_epoch(
    run: Run, state: TrainState, images_seen: int, train_time: float, epoch_started: float
) -> tuple[dict, dict]:
    """Validation and the epoch's row of metrics.csv, and the confusion matrix of each kind of weights
    validated (best_of's: model, ema); the state moves to the next epoch's start."""
    train_loss, train_correct, train_count = all_reduce_sum(state.sums.clone(), run.ctx).tolist()
    val_started = time.perf_counter()  # the device is idle: the train sums were just read

    def validated(model):
        return validate(
            model,
            run.data.val_loader,
            run.data.normalize,
            run.placement,
            run.topk,
            run.ctx,
            run.cfg.eval.tta,
            len(run.data.classes),
        )

    val = validated(run.model)
    val_time = time.perf_counter() - val_started
    metrics, confusions = dict(val.metrics), {"model": val.confusion}
    if run.ema is not None:
        ema_val = validated(run.ema.module)
        metrics.update({f"ema_{key}": value for key, value in ema_val.metrics.items()})
        confusions["ema"] = ema_val.confusion
    row = {
        "epoch": state.epoch,
        "step": state.step,
        "lr": peak_lr(run.optimization.optimizer),
        "train_loss": train_loss / train_count,
        "train_top1": 100 * train_correct / train_count,
        **metrics,
        "epoch_time_s": round(time.perf_counter() - epoch_started, 3),
        "train_img_per_s": round(images_seen * run.ctx.world_size / train_time, 1),
        "val_img_per_s": round(val.images / val_time, 1),
        "peak_memory_mb": round(peak_memory_bytes(run.placement.device) / 2**20, 1),
    }  # rank 0's: MiB
    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    state.sums.zero_()
    log.info(
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} top1 {row['train_top1']:.2f} | "
        f"val loss {row['val_loss']:.4f} top1 {row['val_top1']:.2f} top{run.topk} {row['val_top5']:.2f} | "
        + (f"ema val top1 {row['ema_val_top1']:.2f} | " if run.ema else "")
        + f"{row['train_img_per_s']:.0f} img/s, val {row['val_img_per_s']:.0f} img/s, "
        f"peak memory {row['peak_memory_mb']:.0f} MiB, {row['epoch_time_s']:.1f}s"
    )
    return row, confusions


class Validation(NamedTuple):
    metrics: dict  # val_loss, val_top1, val_top5
    images: int  # over every rank
    confusion: torch.Tensor | None  # true class x predicted top-1 counts (CPU); None above MAX_CONFUSION_CLASSES


@torch.no_grad()
def validate(
    model, loader, normalize, placement: Placement, topk: int, ctx: Dist, tta: TTA, num_classes: int
) -> Validation:
    model.eval()
    cells = num_classes**2 if num_classes <= MAX_CONFUSION_CLASSES else 0
    # loss sum, top-1, top-k, samples, then the confusion matrix: counted on the device, one all-reduce
    sums = torch.zeros(4 + cells, dtype=torch.float64, device=placement.device)
    confusion = sums[4:].view(-1, num_classes) if cells else None
    for logits, targets in batch_logits(model, loader, normalize, placement, tta):
        top = logits.topk(topk, 1).indices
        hits = top == targets[:, None]
        sums[:4] += torch.stack(
            [
                F.cross_entropy(logits.float(), targets, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(1).sum().double(),
                hits.new_full((), len(targets), dtype=torch.float64),
            ]
        )
        if confusion is not None:  # index_put_'s accumulation is deterministic under hardware.deterministic
            confusion.index_put_(
                (targets, top[:, 0]), targets.new_ones(len(targets), dtype=torch.float64), accumulate=True
            )
    sums = all_reduce_sum(sums, ctx).cpu()
    loss, top1, topk_hits, count = sums[:4].tolist()
    return Validation(
        {"val_loss": loss / count, "val_top1": 100 * top1 / count, "val_top5": 100 * topk_hits / count},
        round(count),
        sums[4:].long().view(-1, num_classes) if cells else None,
    )


def summary(run: Run, state: TrainState, status: str) -> dict:
    """summary.json: what the run is and how far it got."""
    history, best = state.history, state.best
    final = history[-1] if history else {}
    return {
        "model": run.cfg.model.name,
        "params": run.network.params,
        "gflops": run.network.flops / 1e9,
        "data": run.cfg.data.name,
        "best_val_top1": best.get("val_top1") if history else None,
        "best_val_top5": best.get("val_top5"),
        "best_epoch": best.get("epoch"),
        "final_val_top1": final.get("val_top1"),
        "final_val_top5": final.get("val_top5"),
        "top5_k": run.topk,
        "epochs": len(history),
        "step": state.step,
        "precision": run.placement.precision,
        "train_img_per_s": steady_median(history, "train_img_per_s"),
        "val_img_per_s": steady_median(history, "val_img_per_s"),
        "epoch_time_s": steady_median(history, "epoch_time_s"),
        "peak_memory_mb": max(
            (row["peak_memory_mb"] for row in history if row.get("peak_memory_mb") is not None), default=None
        ),
        **(
            {
                "best_weights": best.get("weights"),
                "best_ema_val_top1": max((r["ema_val_top1"] for r in history), default=None),
                "final_ema_val_top1": final.get("ema_val_top1"),
            }
            if run.ema
            else {}
        ),
        "wall_time_s": round(state.wall_time_s(), 3),
        "time_to_first_step_s": state.time_to_first_step_s,
        "status": status,
        "skipped_image_count": len(state.faults["skipped_images"]),
        **state.faults,
        **run.optimization.length.record(state.step),
    }


def process_age_s() -> float | None:
    """Seconds since this process started, from Linux's /proc (interpreter start-up and imports included);
    None elsewhere."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
            return round(float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, ValueError, IndexError):
        return None


def peak_lr(optimizer) -> float:
    """The learning rate logged: the largest group's (under layer decay the first group is the most decayed)."""
    return max(group["lr"] for group in optimizer.param_groups)


def steady_median(history: list[dict], key: str) -> float | None:
    """A run's images/s (or epoch time): the median over its epochs after the first (whose warm-up,
    allocator and autotuning would count otherwise); the first alone in a one-epoch run."""
    rates = [row[key] for row in history if row.get(key) is not None]  # rows of older runs may lack a key
    return statistics.median(rates[1:] or rates) if rates else None


def best_of(row: dict) -> dict:
    """An epoch's better validated weights: the raw model's, or with train.ema_decay the EMA's if they
    validate better. best.pt, evaluate, predict and a teacher use the kind the run's best names."""
    weights = "ema" if row.get("ema_val_top1", -math.inf) > row["val_top1"] else "model"
    prefix = "ema_" if weights == "ema" else ""
    return {
        "val_top1": row[f"{prefix}val_top1"],
        "val_top5": row[f"{prefix}val_top5"],
        "epoch": row["epoch"],
        "weights": weights,
    }
