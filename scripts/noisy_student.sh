#!/usr/bin/env bash
# Noisy Student (seed 000) on Fashion-MNIST: a teacher trained on a small labeled part of the training
# split gives soft labels to a pool of the rest ("unlabeled": its labels are never trained on); a
# student trained with noise (RandAugment on its inputs, dropout in its head) on labeled +
# pseudo-labeled images becomes the next round's teacher.
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

# The teacher: the labeled part alone, without noise.
$PYTHON -m cnnbench.train $DATA $MODEL model.drop_rate=0 train.epochs=15 hydra.run.dir=$OUT/teacher $EXTRA
teacher=$OUT/teacher/checkpoints/best.pt
for round in $(seq 1 "$ROUNDS"); do
  $PYTHON -m cnnbench.pseudolabel checkpoint=$teacher $DATA pool_size=$POOL \
    output=$OUT/pseudo_labels_$round.pt hydra.run.dir=$OUT/pseudolabel_$round $EXTRA
  # The student: the same network, from scratch, noised: RandAugment (one op of magnitude 5, milder
  # than the default two of 9 for a network this small) and dropout.
  $PYTHON -m cnnbench.train $DATA $MODEL model.drop_rate=0.3 augmentation=randaugment \
    augmentation.randaugment_ops=1 augmentation.randaugment_magnitude=5 \
    data.pseudo_labels=$OUT/pseudo_labels_$round.pt train.epochs=15 hydra.run.dir=$OUT/student_$round $EXTRA
  teacher=$OUT/student_$round/checkpoints/best.pt
done
for run in teacher $(seq -f "student_%g" 1 "$ROUNDS"); do
  echo "$run: $(grep -oE '"(best|final)_val_top1": [0-9.]*' $OUT/$run/summary.json | tr "\n" " ")"
done | tee $OUT/results.txt
