"""`python -m cnnbench.bench model=NAME [data.image_size=224] [data.batch_size=64] [hardware=...]`: how fast
one model trains and infers on this machine, without training it to convergence.

    python -m cnnbench.bench model=resnet50 data=imagenet data.batch_size=64 hardware=gpu
    python -m cnnbench.bench -m model=resnet18,resnet50,efficientnet_b0 data=imagenet
    python -m cnnbench.report outputs/multirun/<date>/<time>        # the sweep's table

Measures params, forward GFLOPs per image (torch's FLOP counter), training and inference images/s (the
median of bench.windows timed windows after bench.warmup_steps), peak memory while the model is timed
(CUDA's max allocated; on CPU the process's peak resident memory, libraries included: Linux only), and
the achieved FLOP/s as a fraction of an n x n matmul's, timed in the same run and precision: this
machine's practical peak. The images are random tensors of the data's shape: no files are read. Writes
bench.json to the run directory (hydra.run.dir). One process: hardware.nproc is not used.
"""
import logging
import statistics
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from cnnbench.config import check_config, register_configs
from cnnbench.engine.recorder import write_json
from cnnbench.engine.losses import Objective
from cnnbench.engine.trainer import count_flops, mixed_precision, resolve_device
from cnnbench.errors import ConfigError
from cnnbench.models import create_model
from cnnbench.models.registry import compound_image_size
from cnnbench.sweep import run_job

register_configs()
log = logging.getLogger("cnnbench")
CLASS_COUNTS = {"mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "imagenet": 1000}


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


def reset_peak_memory(device: torch.device):
    """Start counting the peak afresh, so that each bench of a sweep (one process) gets its own."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the process's peak RSS (VmHWM)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) * 1024  # kB


def matmul_flops_per_s(n: int, dtype: torch.dtype, device: torch.device, bench_cfg) -> float:
    """This machine's practical peak: an n x n matmul in the run's precision, timed like the model."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 * images_per_s(lambda: a @ b, 1, device, bench_cfg)  # one "image": one matmul


def bench(cfg: DictConfig) -> dict:
    check_config(cfg)
    bench_cfg = cfg.bench
    if cfg.model.get("phi"):
        cfg.data.image_size = compound_image_size(cfg.data.image_size, cfg.model.phi, cfg.model.gamma)
    num_classes = cfg.data.num_classes or CLASS_COUNTS.get(cfg.data.name)
    if num_classes is None:
        raise ConfigError(f"data.num_classes: bench reads no files, so give {cfg.data.name}'s class count")
    device, amp_dtype = resolve_device(cfg.hardware)
    torch.manual_seed(cfg.seed)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = create_model(**model_cfg, num_classes=num_classes, in_chans=cfg.data.channels,
                         image_size=cfg.data.image_size).to(device)
    image_shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, image_shape, device)
    memory_format = torch.channels_last if cfg.hardware.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    bare_model = model
    if cfg.hardware.compile:
        model = torch.compile(model)

    batch = cfg.data.batch_size
    images = torch.randn(batch, *image_shape, device=device).to(memory_format=memory_format)
    targets = torch.randint(0, num_classes, (batch,), device=device)
    optimizer_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    optimizer_cfg.pop("lr_reference_batch")  # the learning rate does not change the speed
    optimizer = instantiate(optimizer_cfg)(bare_model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = mixed_precision(device, amp_dtype)
    # The trainer's loss: label smoothing, mixup and auxiliary heads as configured (no teacher).
    objective = Objective(cfg.augmentation, num_classes, batch, getattr(bare_model, "aux_weight", 0.0))

    def train_step():
        with autocast:
            _, loss = objective(model(images), targets, images)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def infer_step():
        with autocast:
            model(images)

    # A training step's FLOPs (forward and backward) counted once on the eager model, then timed.
    model.train()
    with FlopCounterMode(display=False) as counter:
        with autocast:
            _, loss = objective(bare_model(images), targets, images)
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    train_flops = counter.get_total_flops() / batch
    reset_peak_memory(device)
    train_rate = images_per_s(train_step, batch, device, bench_cfg)
    model.eval()
    infer_rate = images_per_s(infer_step, batch, device, bench_cfg)
    peak_memory = peak_memory_bytes(device)  # before the matmul's buffers
    n = bench_cfg.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak = matmul_flops_per_s(n, amp_dtype, device, bench_cfg)

    result = {
        "model": model_cfg["name"], "params": params, "gflops": flops / 1e9, "train_gflops": train_flops / 1e9,
        "data": cfg.data.name, "image_size": cfg.data.image_size, "batch_size": batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": str(amp_dtype).removeprefix("torch."),
        "train_img_per_s": round(train_rate, 1), "infer_img_per_s": round(infer_rate, 1),
        "peak_memory_mb": round(peak_memory / 2 ** 20, 1),
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss",
        "matmul_tflops": float(f"{peak / 1e12:.4g}"),
        "train_peak_fraction": round(train_flops * train_rate / peak, 4),
        "infer_peak_fraction": round(flops * infer_rate / peak, 4),
        "status": "completed",
    }
    write_json(Path(cfg.run_dir) / "bench.json", result)
    log.info(f"{result['model']} at {cfg.data.image_size}px, batch {batch}, {result['device']} "
             f"{result['precision']}: {params:,} parameters, {result['gflops']:.3f} GFLOPs; train "
             f"{train_rate:.0f} img/s ({result['train_peak_fraction']:.1%} of the {result['matmul_tflops']:.3g} "
             f"TFLOP/s matmul peak), inference {infer_rate:.0f} img/s ({result['infer_peak_fraction']:.1%}), "
             f"peak memory {result['peak_memory_mb']:.0f} MiB; {cfg.run_dir}/bench.json")
    return result


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> float | None:
    result = run_job(cfg, bench, cfg, record="bench.json")
    return result and result["train_img_per_s"]


if __name__ == "__main__":
    main()
