"""scripts/gpu_acceptance.sh on the CPU (DEVICE=cpu): its logic runs with tiny shapes, the rows that need
CUDA are recorded as skipped, and the table and its JSON hold every row."""

import json
import os
import subprocess
import sys

import pytest

from .helpers import ROOT

pytestmark = pytest.mark.slow  # the whole acceptance script on CPU

CPU_ROWS = ["amp_bf16", "amp_fp16", "layout_and_compile", "resnet50_trainer", "decode_on_device"]
CUDA_ROWS = ["host_syncs", "cuda_prefetcher", "deterministic_resume", "predict_dense", "torchrun_nccl", "speedrun_gpu"]


def test_gpu_acceptance_runs_on_cpu_and_records_every_row(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [str(ROOT / "scripts" / "gpu_acceptance.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    table = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert table["device"] == "cpu"
    rows = {r["row"]: r for r in table["rows"]}
    assert set(rows) == set(CPU_ROWS + CUDA_ROWS)
    for name in CPU_ROWS:
        assert rows[name]["status"] == "passed" and rows[name]["values"] and rows[name]["items"], rows[name]
    for name in CUDA_ROWS:
        assert rows[name]["status"] == "skipped: no CUDA" and not rows[name]["values"], rows[name]
    amp = rows["amp_fp16"]["values"]
    assert amp["train_loss_last"] < amp["train_loss_first"] and amp["nonfinite_skipped_steps"] == 0
    assert rows["resnet50_trainer"]["values"]["trainer_matmul_fraction"] > 0
    assert rows["decode_on_device"]["values"]["labels_equal"]
    assert len(rows["layout_and_compile"]["values"]) == 2  # channels_last on and off; compile only on a GPU
    markdown = (tmp_path / "gpu_acceptance.md").read_text().splitlines()
    for name, r in rows.items():
        assert any(line.startswith(f"| {name} | {r['items']} | {r['status']} |") for line in markdown), name
