#!/usr/bin/env bash
# The speed tables of docs/performance.md, measured on this machine:
#   trainer/   cnnbench's trainer against the bare training step, per model (bench.trainer=true): one table;
#   defaults/  (CPU) resnet10t with one default changed at a time: NCHW, compile, the DataLoader path;
#   input/     the ImageNet input pipeline alone against the training step (bench.input=true), over a
#              generated tree of 2000 JPEGs at 500x375; CPU only (on a GPU: INPUT_ROOT=/datasets/imagenet).
#
#   scripts/benchmark.sh [OUT_DIR] [override ...]      # e.g. scripts/benchmark.sh outputs/benchmark bench.windows=3
#   PYTHON=.venv/bin/python SKIP_INPUT=1 SKIP_DEFAULTS=1 scripts/benchmark.sh
set -euo pipefail
out=${1:-outputs/benchmark/$(date +%Y-%m-%d_%H-%M-%S)}
shift || true
py=${PYTHON:-python}
bench() { local dir=$1; shift; $py -m cnnbench.bench "$@" "${extra[@]}" hydra.run.dir="$out/$dir"; }
extra=("$@")

gpu=$($py -c 'import torch; print(int(torch.cuda.is_available()))')
if [ "$gpu" = 1 ]; then
  bench trainer/resnet50 model=resnet50 data=imagenet data.batch_size=256 hardware=gpu bench.trainer=true
else
  # Fashion-MNIST's shape (1x28x28), batch 128, fp32, channels_last; fewer timed steps where one takes seconds.
  cpu="data=fashion_mnist data.batch_size=128 hardware=cpu bench.trainer=true"
  short="bench.warmup_steps=3 bench.windows=3 bench.steps_per_window=4"
  bench trainer/resnet10t model=timm model.name=resnet10t $cpu
  bench trainer/mobilenet_v2 model=mobilenet_v2 $cpu
  bench trainer/resnet18 model=resnet18 $cpu $short
  bench trainer/vgg11 model=vgg11 $cpu $short
fi
$py -m cnnbench.report "$out/trainer"

if [ "$gpu" = 0 ] && [ -z "${SKIP_DEFAULTS:-}" ]; then
  # Each row sets all three keys, so that the table shows them; the first is the defaults themselves.
  for setting in "true false true" "false false true" "true true true" "true false false"; do
    read -r channels_last compile resident <<< "$setting"
    bench "defaults/$channels_last-$compile-$resident" model=timm model.name=resnet10t data=fashion_mnist \
      data.batch_size=128 hardware=cpu bench.trainer=true hardware.channels_last=$channels_last \
      hardware.compile=$compile data.device_resident=$resident
  done
  $py -m cnnbench.report "$out/defaults"
fi

if [ -z "${SKIP_INPUT:-}" ]; then
  root=${INPUT_ROOT:-$out/jpegs}
  [ -d "$root/train" ] || $py "$(dirname "$0")/jpeg_tree.py" "$root" --images 2000
  # A small batch and few steps: a 224 training step takes seconds on a CPU.
  for model in resnet18 resnet50; do
    bench "input/$model" model=$model data=imagefolder data.root="$root" data.batch_size=32 \
      bench.input=true bench.warmup_steps=2 bench.windows=3 bench.steps_per_window=3
  done
  $py -m cnnbench.report "$out/input"
fi
