"""On a GPU: mixed precision learns. Skipped without CUDA (tests/conftest.py); scripts/gpu_acceptance.sh
measures the rest of the CUDA paths."""

import pytest

from cnnbench.engine.trainer import train

from .helpers import SMOKE, make_config

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_run_learns_on_the_gpu(precision, tmp_path):
    """The loss falls over three epochs, and fp16's GradScaler skips no step after its first scale search."""
    on_cpu = [o for o in SMOKE if o != "hardware=cpu"]
    cfg = make_config(
        tmp_path, *on_cpu, "hardware=gpu", f"hardware.precision={precision}", "train.epochs=3", "optimizer.lr=0.05"
    )
    summary = train(cfg)
    losses = [float(line.split(",")[3]) for line in (tmp_path / "metrics.csv").read_text().splitlines()[1:]]
    assert summary["status"] == "completed" and losses[-1] < losses[0]
    assert summary["nonfinite_skipped_steps"] == 0 and summary["scaler_skipped_steps"] <= 1
