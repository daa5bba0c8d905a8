#!/usr/bin/env bash
# Noisy Student (Xie, Luong, Hovy and Le 2020) on Fashion-MNIST. The teacher is the best the labeled part
# alone gives: the network trained with noise (translations of up to 2 px and flips of its inputs, dropout in
# its head) on a small labeled part of the training split. Without noise it gives soft labels to a pool of the
# rest ("unlabeled": its labels are never trained on); a student of the same network and noise, trained for
# as many steps on labeled + pseudo-labeled images, becomes the next round's teacher. Teacher and
# student differ only in the pool: what it adds is the difference between their accuracies.
#
#   scripts/noisy_student.sh [OUT] [LABELED] [POOL] [ROUNDS]    # defaults: outputs/noisy_student 1000 20000 1
#   PYTHON=.venv/bin/python EXTRA="hardware=cpu" scripts/noisy_student.sh
#   EPOCHS=1 scripts/noisy_student.sh outputs/short    # a student's epochs (the teacher's follow)
#
# Validation is the whole test split. OUT/results.txt collects each run's best and final val top-1.
set -euo pipefail
OUT=${1:-outputs/noisy_student}
LABELED=${2:-1000}
POOL=${3:-20000}
ROUNDS=${4:-1}
PYTHON=${PYTHON:-python}
EXTRA=${EXTRA:-}
DATA="data=fashion_mnist data.train_size=$LABELED"
NOISY_MODEL="model=fmnist_cnn_bn model.width_mult=0.5 model.drop_rate=0.3 augmentation=basic augmentation.crop_padding=2"
EPOCHS=${EPOCHS:-10}  # students: (LABELED + POOL) / 128 steps an epoch
TEACHER_EPOCHS=$(( EPOCHS * (LABELED + POOL) / LABELED ))  # as many steps on the labeled part alone

$PYTHON -m cnnbench.train $DATA $NOISY_MODEL train.epochs=$TEACHER_EPOCHS hydra.run.dir=$OUT/teacher $EXTRA
teacher=$OUT/teacher/checkpoints/best.pt
for round in $(seq 1 "$ROUNDS"); do
  $PYTHON -m cnnbench.pseudolabel checkpoint=$teacher $DATA pool_size=$POOL \
    output=$OUT/pseudo_labels_$round.pt hydra.run.dir=$OUT/pseudolabel_$round $EXTRA
  # The student: from scratch, on the labeled part and the pseudo-labeled pool.
  $PYTHON -m cnnbench.train $DATA $NOISY_MODEL data.pseudo_labels=$OUT/pseudo_labels_$round.pt \
    train.epochs=$EPOCHS hydra.run.dir=$OUT/student_$round $EXTRA
  teacher=$OUT/student_$round/checkpoints/best.pt
done
for run in teacher $(seq -f "student_%g" 1 "$ROUNDS"); do
  echo "$run: $(grep -oE '"(best|final)_val_top1": [0-9.]*' $OUT/$run/summary.json | tr "\n" " ")"
done | tee $OUT/results.txt
