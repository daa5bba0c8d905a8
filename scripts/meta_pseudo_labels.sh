#!/usr/bin/env bash
# Meta Pseudo Labels (Pham, Dai, Xie, Luong and Le 2021) on Noisy Student's Fashion-MNIST split, against
# Noisy Student itself. scripts/noisy_student.sh first trains the labeled-only teacher (the network with noise
# on LABELED images) and one round of its student (on the LABELED images and POOL soft pseudo-labels); then a
# Meta Pseudo Labels run (experiment=fmnist_mpl) starts its teacher from that same labeled-only checkpoint
# and trains it, with the feedback of a student of the same network learning from scratch on its hard
# pseudo-labels for the same pool, for as many steps as the labeled-only teacher took. Three students of one
# network, one labeled part, one pool: what each method makes of the pool is the difference.
#
#   scripts/meta_pseudo_labels.sh [OUT] [LABELED] [POOL]     # defaults: outputs/meta_pseudo_labels 1000 20000
#   EPOCHS=1 PYTHON=.venv/bin/python EXTRA="hardware=cpu" scripts/meta_pseudo_labels.sh outputs/mpl_short
#
# EPOCHS (default 10) is the Noisy Student student's, (LABELED + POOL) / 128 steps each; the labeled-only
# teacher and the Meta Pseudo Labels run take EPOCHS * (LABELED + POOL) / LABELED epochs of LABELED / 128
# steps. Validation is the whole test split. OUT/results.txt collects each run's best and final val top-1.
set -euo pipefail
OUT=${1:-outputs/meta_pseudo_labels}
LABELED=${2:-1000}
POOL=${3:-20000}
PYTHON=${PYTHON:-python}
EXTRA=${EXTRA:-}
EPOCHS=${EPOCHS:-10}
export EPOCHS PYTHON EXTRA
TEACHER_EPOCHS=$(( EPOCHS * (LABELED + POOL) / LABELED ))

"$(dirname "$0")/noisy_student.sh" "$OUT/noisy_student" "$LABELED" "$POOL" 1
$PYTHON -m cnnbench.train experiment=fmnist_mpl data.train_size=$LABELED mpl.pool_size=$POOL \
  mpl.teacher=$OUT/noisy_student/teacher/checkpoints/best.pt train.epochs=$TEACHER_EPOCHS \
  hydra.run.dir=$OUT/mpl $EXTRA
for run in noisy_student/teacher noisy_student/student_1 mpl; do
  echo "$run: $(grep -oE '"(best|final)_val_top1": [0-9.]*' $OUT/$run/summary.json | tr "\n" " ")"
done | tee $OUT/results.txt
