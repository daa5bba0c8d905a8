"""What a job sets on its device, for train() and bench alike: the precision the GPU runs natively,
hardware.deterministic's flags, and fresh compile caches. A job of a `-m` sweep or a bench round runs in
the same process as the ones before it; `job_settings` gives it its own flags and restores the previous
ones after it, so no later job inherits them.
"""
import contextlib
import os
import sys

import torch

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
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark)
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
