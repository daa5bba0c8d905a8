"""The paths only a GPU runs (issue 20), checked on the CPU where their mechanism shows there; the rest is
scripts/gpu_acceptance.sh's, on a GPU."""

import copy
import os
import random

import pytest
import timm.layers
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.config import check_config
from cnnbench.data.datasets import seeded, synthetic
from cnnbench.engine.build import Network, build_optimization, fused_optimizer
from cnnbench.engine.checkpoint import rng_state, set_rng_state
from cnnbench.engine.device import Placement, bf16_native, job_settings, matmul_precision_of_convolutions
from cnnbench.engine.distributed import check_gpu_count, sync_batchnorm
from cnnbench.errors import ConfigError
from cnnbench.models import create_model
from cnnbench.models.pooling import AdaptiveAvgPool2d, pool_by_matmul

from .helpers import make_config, run_cli


@pytest.mark.parametrize(
    "size, output_size",
    [((6, 6), (6, 6)), ((1, 1), (7, 7)), ((3, 3), (6, 6)), ((13, 13), (6, 6)), ((10, 10), (4, 4)), ((7, 9), (5, 3))],
)
def test_adaptive_pool_is_skipped_or_a_deterministic_matmul_with_the_same_values(size, output_size):
    # item 3: torch's CUDA backward of adaptive_avg_pool2d has no deterministic kernel
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    expected = F.adaptive_avg_pool2d(x, output_size)
    assert torch.allclose(pool_by_matmul(x, output_size), expected, atol=1e-12)
    pooled = AdaptiveAvgPool2d(output_size)(x)
    assert torch.equal(pooled, expected) and (pooled is x) == (size == output_size)


@pytest.mark.parametrize("name, size", [("alexnet", 224), ("vgg11", 32)])
def test_models_with_the_skipping_pool_give_torchs_outputs(name, size):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, image_size=size, width_mult=0.125).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ours = model(x)
        model.avgpool = nn.AdaptiveAvgPool2d(model.avgpool.output_size)
        assert torch.equal(ours, model(x))


def test_rng_state_holds_the_runs_own_cuda_device_only_and_reads_old_lists():
    # item 4: a CPU run never touches torch.cuda; old checkpoints held a list, one state per visible GPU
    state = rng_state(torch.device("cpu"))
    assert state["cuda"] is None and not torch.cuda.is_initialized()
    expected = torch.rand(3)
    for old in ([], [torch.zeros(16, dtype=torch.uint8)] * 8):
        torch.rand(5)
        set_rng_state({**state, "cuda": old}, torch.device("cpu"))
        assert torch.equal(torch.rand(3), expected)
    set_rng_state({k: v for k, v in state.items() if k != "cuda"})  # the default device: this process's CUDA, none here
    assert torch.equal(torch.rand(3), expected) and not torch.cuda.is_initialized()


def test_sync_batchnorm_keeps_timms_activations():
    # item 6: torch's convert_sync_batchnorm turns BatchNormAct2d into a plain SyncBatchNorm. Without a
    # process group SyncBatchNorm normalizes as BatchNorm does, so the outputs can be compared on the CPU.
    torch.manual_seed(0)
    model = create_model("compact_cnn", num_classes=10, in_chans=1, image_size=28).eval()
    acts = [type(m.act) for m in model.modules() if isinstance(m, timm.layers.BatchNormAct2d)]
    assert acts and nn.Identity not in acts
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        synced = sync_batchnorm(copy.deepcopy(model))
        assert [type(m.act) for m in synced.modules() if isinstance(m, timm.layers.SyncBatchNormAct)] == acts
        assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
        assert torch.equal(synced(x), expected)
        assert not torch.allclose(nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))(x), expected)


def test_seeded_draws_reseed_neither_the_global_cpu_rng_nor_cuda():
    # item 7: torch.manual_seed reseeds every CUDA generator too; on a machine without CUDA torch queues
    # that seeding for when CUDA starts, which is what is read here
    torch.cuda.manual_seed_all(1234)
    queued = torch.cuda._lazy_seed_tracker.get_calls()
    before, python_before = torch.get_rng_state(), random.getstate()
    with seeded(7):
        draws = torch.rand(4), torch.randint(0, 100, (4,)), random.random()
    assert torch.cuda._lazy_seed_tracker.get_calls() == queued
    assert torch.equal(torch.get_rng_state(), before) and random.getstate() == python_before
    torch.manual_seed(7)  # the draws of before, bit for bit: the resume tests' batches depend on them
    random.seed(7)
    assert all(torch.equal(a, b) for a, b in zip(draws[:2], (torch.rand(4), torch.randint(0, 100, (4,)))))
    assert draws[2] == random.random()


def test_job_settings_set_the_jobs_flags_and_restore_the_previous():
    # items 8 and 12: bench's own timings autotune as train() does, and no later job inherits the flags
    torch.backends.cudnn.benchmark = False
    fn = torch.compile(lambda x: x + 1, backend="eager")
    fn(torch.zeros(2))
    assert torch._dynamo.eval_frame._debug_get_cache_entry_list(fn._torchdynamo_orig_callable.__code__)
    with job_settings(deterministic=False):
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
        assert not torch._dynamo.eval_frame._debug_get_cache_entry_list(fn._torchdynamo_orig_callable.__code__)
        with job_settings(deterministic=True):
            assert not torch.backends.cudnn.benchmark and torch.are_deterministic_algorithms_enabled()
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"]  # else no matmul runs deterministically on CUDA
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark


def test_the_matmul_peak_runs_in_the_convolutions_precision():
    # item 9: cuDNN's fp32 convolutions run in TF32 by default, cuBLAS's matmuls in full fp32
    previous = torch.backends.cuda.matmul.allow_tf32
    for convolutions in (True, False):
        torch.backends.cudnn.allow_tf32 = convolutions
        with matmul_precision_of_convolutions():
            assert torch.backends.cuda.matmul.allow_tf32 == convolutions
        assert torch.backends.cuda.matmul.allow_tf32 == previous
    torch.backends.cudnn.allow_tf32 = True


def test_bf16_is_native_only_on_a_gpu_that_has_it():
    # item 10: torch.cuda.is_bf16_supported() counts emulation
    assert bf16_native() == (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8)


def test_the_synthetic_set_is_uint8_throughout():
    # item 15: a 224 px GPU benchmark's set is gigabytes in uint8, eight times that as int64
    split = synthetic("synthetic", None, True, False, size=64, image_size=16, channels=3, num_classes=10)
    assert split.dataset.images.dtype == torch.uint8 and split.dataset.images.shape == (64, 3, 16, 16)


def test_decoding_on_a_gpu_for_a_cpu_run_is_refused(tmp_path):
    # item 16
    cfg = make_config(tmp_path, "data=imagefolder", "data.decode_device=cuda", "hardware=cpu")
    with pytest.raises(
        ConfigError, match="^data.decode_device: cuda decodes where a GPU trains, and hardware.device is cpu$"
    ):
        check_config(cfg)


def test_more_ranks_than_gpus_is_one_line_naming_both_counts():
    # item 17
    check_gpu_count(2, 2)
    with pytest.raises(ConfigError, match="^hardware.nproc: 4 ranks on this node, but it has 2 CUDA devices"):
        check_gpu_count(4, 2)
    with pytest.raises(ConfigError, match="but it has 0 CUDA devices"):
        check_gpu_count(1, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for a machine without CUDA")
@pytest.mark.slow  # a real command in a subprocess
def test_a_gpu_ddp_run_without_gpus_stops_with_one_line(tmp_path):
    # item 14: the sbatch scripts pass hardware.device=cuda when SLURM granted GPUs; none seen is one line
    result = run_cli(
        "hardware=ddp", "hardware.device=cuda", "data=synthetic", "model=lenet5", f"hydra.run.dir={tmp_path}"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith("hardware.nproc: 2 ranks on this node, but it has 0 CUDA devices: one rank per GPU")
    )


def test_fused_update_kernels_on_a_gpu_where_the_optimizer_has_them(tmp_path):
    # item 13: torch's fused SGD, Adam and AdamW skip a non-finite update on the device (engine/nonfinite.py)
    def placement(device, dtype=torch.bfloat16):
        return Placement(torch.device(device), dtype, torch.channels_last, False)

    assert fused_optimizer(None, "momentum", placement("cuda")) and fused_optimizer(None, "adamw", placement("cuda"))
    assert not fused_optimizer(None, "momentum", placement("cpu"))
    assert fused_optimizer(True, "momentum", placement("cpu"))
    assert not fused_optimizer(None, "lamb", placement("cuda"))
    assert not fused_optimizer(None, "lookahead_adamw", placement("cuda"))
    assert not fused_optimizer(None, "adamw", placement("cuda", torch.float16))  # the GradScaler's
    with pytest.raises(ConfigError, match=r"^optimizer.fused: Lamb.__init__\(\) got an unexpected keyword argument"):
        check_config(make_config(tmp_path, "optimizer.opt=lamb", "optimizer.fused=true"))
    check_config(make_config(tmp_path, "optimizer.opt=lamb", "optimizer.fused=false"))
    # Fused SGD skipping the update that makes its momentum buffers leaves them as empty_like made them: under
    # fp16's GradScaler, whose first update often overflows, refused.
    cfg = make_config(tmp_path, "optimizer.fused=true", "hardware.precision=fp16")
    linear = Network(nn.Linear(2, 2), 6, 12, (1, 1, 2))
    with pytest.raises(ConfigError, match="^optimizer.fused: fused SGD with momentum under fp16's GradScaler"):
        build_optimization(cfg, linear, 1, placement("cpu", torch.float16))
    assert build_optimization(cfg, linear, 1, placement("cpu")).optimizer.defaults["fused"]
