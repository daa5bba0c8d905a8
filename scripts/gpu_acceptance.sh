#!/usr/bin/env bash
# The GPU acceptance in one command (issue 18): AMP (bf16, fp16), channels_last and compile, ResNet-50's
# trainer throughput against the matmul peak and the bare step, host syncs per step, nvJPEG decoding and
# the CUDA prefetcher, deterministic resume, predict dense=true, torchrun with NCCL and the GPU speedrun.
# Writes OUTDIR/gpu_acceptance.md and .json: a row each, with the items of issue 20 it covers; exits 1
# if a row failed. The logic is scripts/gpu_acceptance.py; on CPU (DEVICE=cpu) tiny shapes, CUDA rows skipped.
#
#   scripts/gpu_acceptance.sh OUTDIR                          # on one H100/H200: at most 8 minutes
#   DEVICE=cpu PYTHON=.venv/bin/python scripts/gpu_acceptance.sh OUTDIR
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: scripts/gpu_acceptance.sh OUTDIR" >&2
    exit 2
fi
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_acceptance.py" "$1"
