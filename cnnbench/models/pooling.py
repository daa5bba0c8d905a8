"""Adaptive average pooling that hardware.deterministic=true can train on a GPU.

torch's CUDA backward of `adaptive_avg_pool2d` has no deterministic kernel (global pooling is a mean,
which does); AlexNet's 6x6, VGG's 7x7 and the Inception auxiliary heads' pools use it. Where the input
already has the output size (AlexNet and VGG at 224 px) the pool is skipped; elsewhere, under
`torch.use_deterministic_algorithms` on CUDA, it runs as the linear map it is: a matrix that averages
rows, one that averages columns, two matmuls.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.utils import _pair


def averaging_matrix(size: int, output_size: int, like: torch.Tensor) -> torch.Tensor:
    """(output_size, size): row i averages the cells torch's adaptive pool gives output i."""
    i = torch.arange(output_size, device=like.device)
    starts, ends = (i * size) // output_size, ((i + 1) * size + output_size - 1) // output_size
    cells = torch.arange(size, device=like.device)
    inside = (cells >= starts[:, None]) & (cells < ends[:, None])
    return (inside / (ends - starts)[:, None]).to(like.dtype)


def pool_by_matmul(x: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    rows, cols = (averaging_matrix(n, s, x) for n, s in zip(x.shape[-2:], output_size))
    return torch.einsum("oh,...hw,pw->...op", rows, x, cols)


def adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    output_size = _pair(output_size)
    if tuple(x.shape[-2:]) == output_size:
        return x
    if x.is_cuda and torch.are_deterministic_algorithms_enabled() and output_size != (1, 1):
        return pool_by_matmul(x, output_size)
    return F.adaptive_avg_pool2d(x, output_size)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return adaptive_avg_pool2d(x, self.output_size)
