"""Where a job computes and what it sets there, for train, bench, evaluate, predict and pseudolabel alike:
`place(cfg.hardware)` resolves hardware.* once into a Placement (device, precision, memory format, compile),
and `job_settings` gives a job hardware.deterministic's flags and fresh compile caches. A job of a `-m`
sweep or a bench round runs in the same process as the ones before it; `job_settings` restores the previous
flags after it, so no later job inherits them.
"""

import contextlib
import functools
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnbench.config import Device, Precision
from cnnbench.errors import ConfigError

DTYPES = {Precision.fp32: torch.float32, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}

# cuBLAS is deterministic with a fixed workspace only; torch refuses every matmul under
# use_deterministic_algorithms on CUDA without this set (torch's docs: "Reproducibility").
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def bf16_native() -> bool:
    """bf16 in hardware (Ampere and later). torch.cuda.is_bf16_supported() also counts emulation (slower
    than fp32 on older GPUs), and its probe allocates on the current device: call after set_device."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def use_deterministic_algorithms(deterministic: bool) -> None:
    """hardware.deterministic: deterministic kernels (cuBLAS's fixed workspace included), else cuDNN's
    autotuning."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic


@contextlib.contextmanager
def job_settings(deterministic: bool):
    """One job under hardware.deterministic's flags, the previous ones back after it. Dynamo's caches are
    emptied first, so that a sweep's earlier models do not count against the recompile limit of later
    ones (which then fall back to eager, silently)."""
    if "torch._dynamo" in sys.modules:  # imported by a compile: a process that never compiled has nothing to reset
        torch._dynamo.reset()
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    use_deterministic_algorithms(deterministic)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = previous[2]


@contextlib.contextmanager
def matmul_precision_of_convolutions():
    """fp32 matmuls in the precision cuDNN's fp32 convolutions run in (TF32 by default on Ampere and
    later, where cuBLAS's default is full fp32): a peak that the convolutions can be measured against."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@dataclass
class Placement:
    """hardware.* resolved for one process: its device, autocast dtype, memory format and whether it compiles."""

    device: torch.device
    amp_dtype: torch.dtype
    memory_format: torch.memory_format
    compile: bool

    @functools.cached_property
    def autocast(self) -> torch.autocast:
        """Autocast to the run's precision; a no-op in fp32. Reusable as a context manager."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype != torch.float32)

    @property
    def precision(self) -> str:
        return str(self.amp_dtype).removeprefix("torch.")

    def put(self, images: torch.Tensor) -> torch.Tensor:
        """A batch of images on the device, in the memory format the model runs in."""
        return images.to(self.device, non_blocking=True, memory_format=self.memory_format)


def place(hw, local_rank: int | None = None) -> Placement:
    """`local_rank`: a DDP rank's, whose GPU is its own (after init_distributed's set_device)."""
    device = device_of(hw)
    if device.type == "cuda" and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return Placement(
        device,
        resolve_precision(hw, device),
        torch.channels_last if hw.channels_last else torch.contiguous_format,
        compiles(hw, device),
    )


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


def compiles(hw, device: torch.device) -> bool:
    """hardware.compile=auto: on a GPU; on CPU compiling costs a minute and gains nothing (docs/performance.md).
    Not with hardware.sync_batchnorm: SyncBatchNorm breaks the graph at every layer and syncs every forward."""
    return device.type == "cuda" and not hw.sync_batchnorm if hw.compile == "auto" else hw.compile


CLEAR_REFS = Path("/proc/self/clear_refs")  # Linux: writing 5 resets the process's peak RSS


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the peak afresh: each epoch of a run, each bench of a sweep (one process) its own.
    Where the process's peak RSS cannot be reset (macOS), it counts from the process's start."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif CLEAR_REFS.exists():
        CLEAR_REFS.write_text("5")


def peak_memory_bytes(device: torch.device) -> int:
    """On CUDA the peak of the tensors torch allocated; elsewhere the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
