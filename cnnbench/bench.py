"""`python -m cnnbench.bench model=NAME [data.image_size=224] [data.batch_size=64] [hardware=...]`: how fast
one model trains and infers on this machine, without training it to convergence.

    python -m cnnbench.bench model=resnet50 data=imagenet data.batch_size=64 hardware=gpu
    python -m cnnbench.bench -m model=resnet18,resnet50,efficientnet_b0 data=imagenet
    python -m cnnbench.report outputs/multirun/<date>/<time>        # the sweep's table

Measures params, forward GFLOPs per image (torch's FLOP counter), training and inference images/s (the
median of bench.windows timed windows after bench.warmup_steps), peak memory while the model is timed
(CUDA's max allocated; on CPU the process's peak resident memory, libraries included: Linux only), and
the achieved FLOP/s as a fraction of an n x n matmul's (`*_matmul_fraction`), timed in the same run and
precision (fp32: TF32 where cuDNN's convolutions use it). It is a yardstick, not a ceiling: the FLOPs
counted are a direct convolution's, and Winograd or FFT convolutions do fewer, so a fraction can pass 1
(on this project's CPU, 1.04 training and 1.43 inference). The images are random tensors of the data's
shape: no files are read. Writes bench.json to the run directory (hydra.run.dir). One process:
hardware.nproc is not used.

bench.trainer=true also times cnnbench's own loop, train(cfg) on synthetic images of the same shape,
batch, precision and memory format (two epochs; the second is timed), bench.trainer_rounds times, each
between two timings of the bare step: trainer_ratio is the median of the rounds' trainer / bare step.
bench.input=true also times the train loader alone over data.root's files (imagenet, imagefolder) and
names the bottleneck: input pipeline or training step.
scripts/benchmark.sh runs both for the models of docs/performance.md.
"""

import copy
import itertools
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from cnnbench.cli import hydra_app
from cnnbench.config import check_config, register_configs
from cnnbench.data import build_data
from cnnbench.data.datasets import dataset
from cnnbench.engine.build import build_network, build_optimization, run_config
from cnnbench.engine.device import (
    job_settings,
    matmul_precision_of_convolutions,
    peak_memory_bytes,
    place,
    reset_peak_memory,
)
from cnnbench.engine.losses import Objective
from cnnbench.engine.trainer import train
from cnnbench.errors import ConfigError
from cnnbench.files import write_json
from cnnbench.sweep import run_job

register_configs()
log = logging.getLogger("cnnbench")


def conv_backward_flop(
    grad_out_shape,
    x_shape,
    w_shape,
    _bias,
    _stride,
    _padding,
    _dilation,
    transposed,
    _output_padding,
    _groups,
    output_mask,
    **kwargs,
) -> int:
    """Each gradient of a convolution (input, weight) takes as many multiply-adds as its forward pass.
    torch 2.14's own formula counts a grouped convolution's backward as a dense one: a depthwise 3x3
    over 64 channels at 65 times its forward (mobilenet_v2's train FLOPs at 28 px 7 times too many)."""
    return sum(output_mask[:2]) * conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)


TRAIN_FLOP_FORMULAS = {torch.ops.aten.convolution_backward: conv_backward_flop}


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(step, batch_size: int, device: torch.device, bench_cfg) -> float:
    """The median over timed windows of step(), after untimed warm-up steps."""
    for _ in range(bench_cfg.warmup_steps):
        step()
    rates = []
    for _ in range(bench_cfg.windows):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(bench_cfg.steps_per_window):
            step()
        synchronize(device)
        rates.append(batch_size * bench_cfg.steps_per_window / (time.perf_counter() - started))
    return statistics.median(rates)


def matmul_flops_per_s(n: int, dtype: torch.dtype, device: torch.device, bench_cfg) -> float:
    """This machine's practical peak: an n x n matmul in the run's precision, timed like the model."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 * images_per_s(lambda: a @ b, 1, device, bench_cfg)  # one "image": one matmul


def bench(cfg: DictConfig) -> dict:
    """One bench job, under its own hardware.deterministic flags (cudnn.benchmark set before the first
    timing, as train() sets it) and fresh compile caches; the flags before it are restored after it."""
    with job_settings(cfg.hardware.deterministic):
        check_config(cfg)
        user_cfg, cfg = cfg, run_config(cfg)
        placement = place(cfg.hardware)
        data = input_data(cfg, placement.device) if cfg.bench.input else None
        num_classes = len(data.classes) if data else cfg.data.num_classes or dataset(cfg.data.name).num_classes
        if num_classes is None:
            raise ConfigError(f"data.num_classes: bench reads no files, so give {cfg.data.name}'s class count")
        torch.manual_seed(cfg.seed)
        steps = BenchSteps(cfg, num_classes, placement)
        result = measure(cfg, user_cfg, steps, num_classes, data)
    write_json(Path(cfg.run_dir) / "bench.json", result)
    log_result(cfg, result)
    return result


class BenchSteps:
    """The model of the config on random images of the data's shape: a training step as the trainer's
    (its loss: label smoothing, mixup and auxiliary heads as configured, no teacher), an inference step,
    and the FLOPs of a training step."""

    def __init__(self, cfg: DictConfig, num_classes: int, placement):
        self.network = build_network(cfg, num_classes, placement)
        self.model = torch.compile(self.network.model) if placement.compile else self.network.model
        batch = cfg.data.batch_size
        self.images = torch.randn(batch, *self.network.image_shape, device=placement.device).to(
            memory_format=placement.memory_format
        )
        self.targets = torch.randint(0, num_classes, (batch,), device=placement.device)
        self.optimization = build_optimization(cfg, self.network, 1, placement)
        self.objective = Objective(cfg.augmentation, num_classes, batch, getattr(self.network.model, "aux_weight", 0.0))
        self.placement = placement

    def train_step(self):
        optimizer, scaler = self.optimization.optimizer, self.optimization.scaler
        with self.placement.autocast:
            _, loss = self.objective(self.model(self.images), self.targets, self.images)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def infer_step(self):
        with self.placement.autocast:
            self.model(self.images)

    def train_flops(self) -> float:
        """A training step's FLOPs per image (forward and backward), counted once on the eager model."""
        self.model.train()
        with FlopCounterMode(display=False, custom_mapping=TRAIN_FLOP_FORMULAS) as counter:
            with self.placement.autocast:
                _, loss = self.objective(self.network.model(self.images), self.targets, self.images)
            loss.backward()
        self.optimization.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops() / len(self.images)


def measure(cfg: DictConfig, user_cfg: DictConfig, steps: BenchSteps, num_classes: int, data) -> dict:
    """`user_cfg`: the config as given, for train(), which derives the run's own from it as `cfg` was."""
    bench_cfg, placement, network = cfg.bench, steps.placement, steps.network
    device, batch = placement.device, cfg.data.batch_size
    train_flops = steps.train_flops()
    reset_peak_memory(device)
    train_rate = images_per_s(steps.train_step, batch, device, bench_cfg)
    steps.model.eval()
    infer_rate = images_per_s(steps.infer_step, batch, device, bench_cfg)
    peak_memory = peak_memory_bytes(device)  # before the matmul's buffers
    n = bench_cfg.matmul_size or (8192 if device.type == "cuda" else 2048)
    with matmul_precision_of_convolutions():  # fp32: TF32 where cuDNN's convolutions use it
        peak = matmul_flops_per_s(n, placement.amp_dtype, device, bench_cfg)
    result = {
        "model": cfg.model.name,
        "params": network.params,
        "gflops": network.flops / 1e9,
        "train_gflops": train_flops / 1e9,
        "data": cfg.data.name,
        "image_size": cfg.data.image_size,
        "batch_size": batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": placement.precision,
        "train_img_per_s": round(train_rate, 1),
        "infer_img_per_s": round(infer_rate, 1),
        "peak_memory_mb": round(peak_memory / 2**20, 1),
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
        "matmul_tflops": float(f"{peak / 1e12:.4g}"),
        "train_matmul_fraction": round(train_flops * train_rate / peak, 4),
        "infer_matmul_fraction": round(network.flops * infer_rate / peak, 4),
    }
    if bench_cfg.trainer:
        result.update(trainer_rounds(user_cfg, steps, num_classes, train_rate, train_flops, peak))
    if bench_cfg.input:
        result.update(input_images_per_s(data, batch, train_rate, device, bench_cfg))
    return {**result, "status": "completed"}


def trainer_rounds(
    cfg: DictConfig, steps: BenchSteps, num_classes: int, train_rate: float, train_flops: float, peak: float
) -> dict:
    """The real loop on synthetic images of this shape (epoch 1 warms up, epoch 2 is timed), each time
    between two timings of the bare step: this CPU's speed drifts by 10-30% within minutes, more than the
    loop's own cost, so a round's ratio is against the bare steps on either side of it, and the reported
    one is the rounds' median."""
    bench_cfg = cfg.bench
    trainer_rates, bare_rates, ratios = [], [train_rate], []
    batches = bench_cfg.warmup_steps + bench_cfg.windows * bench_cfg.steps_per_window
    for _ in range(bench_cfg.trainer_rounds):
        trainer_rates.append(trainer_images_per_s(cfg, num_classes, batches))
        steps.model.train()
        bare_rates.append(images_per_s(steps.train_step, cfg.data.batch_size, steps.placement.device, bench_cfg))
        ratios.append(round(2 * trainer_rates[-1] / (bare_rates[-2] + bare_rates[-1]), 4))
    trainer_rate = statistics.median(trainer_rates)
    return {
        "trainer_img_per_s": round(trainer_rate, 1),
        "trainer_ratio": statistics.median(ratios),
        "trainer_round_ratios": ratios,
        "trainer_tflops": float(f"{train_flops * trainer_rate / 1e12:.4g}"),
        "trainer_matmul_fraction": round(train_flops * trainer_rate / peak, 4),
    }


def log_result(cfg: DictConfig, result: dict) -> None:
    log.info(
        f"{result['model']} at {cfg.data.image_size}px, batch {result['batch_size']}, {result['device']} "
        f"{result['precision']}: {result['params']:,} parameters, {result['gflops']:.3f} GFLOPs; train "
        f"{result['train_img_per_s']:.0f} img/s ({result['train_matmul_fraction']:.1%} of the "
        f"{result['matmul_tflops']:.3g} TFLOP/s matmul peak), inference {result['infer_img_per_s']:.0f} img/s "
        f"({result['infer_matmul_fraction']:.1%}), peak memory {result['peak_memory_mb']:.0f} MiB; "
        f"{cfg.run_dir}/bench.json"
    )
    if cfg.bench.trainer:
        log.info(
            f"trainer {result['trainer_img_per_s']:.0f} img/s: {result['trainer_ratio']:.3f} of the bare "
            f"step (the median of {result['trainer_round_ratios']}), {result['trainer_matmul_fraction']:.1%} of "
            f"the matmul peak"
        )
    if cfg.bench.input:
        log.info(
            f"input pipeline {result['input_img_per_s']:.0f} img/s ({result['input_workers']} workers), training "
            f"step {result['train_img_per_s']:.0f} img/s: the {result['bottleneck']} is the bottleneck, "
            f"{result['bottleneck_factor']:.1f}x slower than the other"
        )


def trainer_images_per_s(cfg: DictConfig, num_classes: int, batches: int) -> float:
    """train_img_per_s of the second of two epochs of `batches` batches: train(cfg) itself, on synthetic
    images of the bench's shape, batch, precision, memory format and compile setting."""
    run = copy.deepcopy(cfg)
    data = run.data
    data.name, data.root, data.num_classes, data.decode_device = "synthetic", None, num_classes, None
    data.train_size, data.val_size = data.batch_size * batches, data.batch_size
    run.train.epochs, run.train.limit_train_batches, run.train.limit_val_batches = 2, None, 1
    with tempfile.TemporaryDirectory() as run_dir:  # a means, not a run: bench.json holds what it measured
        run.resume, run.run_dir = None, run_dir
        return train(run)["train_img_per_s"]


def input_data(cfg: DictConfig, device: torch.device):
    if not dataset(cfg.data.name).files:
        raise ConfigError(
            f"bench.input: times the loader of a file data set (imagenet, imagefolder), not {cfg.data.name}"
        )
    return build_data(cfg, device=device)


def input_images_per_s(data, batch_size: int, step_rate: float, device: torch.device, bench_cfg) -> dict:
    """The train loader alone, timed like the step (batches: warm-up, then windows), and which of the two
    is the bottleneck."""

    def epochs():
        for epoch in itertools.count():
            data.train_batches.set_epoch(epoch)
            yield from data.train_loader

    batches = epochs()
    input_rate = images_per_s(lambda: next(batches), batch_size, device, bench_cfg)
    slower, faster = sorted([("input pipeline", input_rate), ("training step", step_rate)], key=lambda r: r[1])
    return {
        "input_img_per_s": round(input_rate, 1),
        "input_workers": data.workers,
        "bottleneck": slower[0],
        "bottleneck_factor": round(faster[1] / slower[1], 2),
    }


@hydra_app("bench")
def main(cfg: DictConfig) -> float | None:
    result = run_job(cfg, bench, cfg, record="bench.json", check=check_config)
    return result and result["train_img_per_s"]


if __name__ == "__main__":
    main()
