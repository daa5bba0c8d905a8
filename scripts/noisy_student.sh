#!/usr/bin/env bash
# Noisy Student (seed 000) on Fashion-MNIST: a teacher trained on a small labeled part of the training
# split gives soft labels to a pool of the rest ("unlabeled": its labels are never trained on); a
# student of the same size trained with noise (random crops and flips of its inputs, dropout in its
# head) on labeled + pseudo-labeled images becomes the next round's teacher. The control trains the
# same network with the same noise for as many steps on the labeled part alone: what the pool adds.
#
#   scripts/noisy_student.sh [OUT] [LABELED] [POOL] [ROUNDS]    # defaults: outputs/noisy_student 1000 4000 2
#   PYTHON=.venv/bin/python EXTRA="hardware=cpu" scripts/noisy_student.sh
#
# OUT/results.txt collects each run's best and final val top-1 (from its summary.json).
set -euo pipefail
OUT=${1:-outputs/noisy_student}
LABELED=${2:-1000}
POOL=${3:-4000}
ROUNDS=${4:-2}
PYTHON=${PYTHON:-python}
EXTRA=${EXTRA:-}
DATA="data=fashion_mnist data.train_size=$LABELED data.val_size=2000"
MODEL="model=fmnist_cnn_bn model.width_mult=0.25"
NOISE="augmentation=basic model.drop_rate=0.3"
EPOCHS=15  # students: (LABELED + POOL) / 128 steps an epoch
CONTROL_EPOCHS=$(( EPOCHS * (LABELED + POOL) / LABELED ))  # as many steps on the labeled part alone

# The teacher: the labeled part alone, without noise.
$PYTHON -m cnnbench.train $DATA $MODEL model.drop_rate=0 train.epochs=$EPOCHS hydra.run.dir=$OUT/teacher $EXTRA
# The control: the student's noise and steps, without the pool.
$PYTHON -m cnnbench.train $DATA $MODEL $NOISE train.epochs=$CONTROL_EPOCHS hydra.run.dir=$OUT/control $EXTRA
teacher=$OUT/teacher/checkpoints/best.pt
for round in $(seq 1 "$ROUNDS"); do
  $PYTHON -m cnnbench.pseudolabel checkpoint=$teacher $DATA pool_size=$POOL \
    output=$OUT/pseudo_labels_$round.pt hydra.run.dir=$OUT/pseudolabel_$round $EXTRA
  # The student: the same network from scratch, noised, on the labeled part and the pseudo-labeled pool.
  $PYTHON -m cnnbench.train $DATA $MODEL $NOISE data.pseudo_labels=$OUT/pseudo_labels_$round.pt \
    train.epochs=$EPOCHS hydra.run.dir=$OUT/student_$round $EXTRA
  teacher=$OUT/student_$round/checkpoints/best.pt
done
for run in teacher control $(seq -f "student_%g" 1 "$ROUNDS"); do
  echo "$run: $(grep -oE '"(best|final)_val_top1": [0-9.]*' $OUT/$run/summary.json | tr "\n" " ")"
done | tee $OUT/results.txt
