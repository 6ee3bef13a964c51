#!/usr/bin/env bash
# Reproduce the shipped demo models (src/napari_brats_kd/weights/) from scratch with the
# project's own commands: phantoms -> `brats-kd train` (teacher) -> `brats-kd distill` (student,
# KL + soft Dice to the teacher) -> `brats-kd evaluate` on held-out phantom seeds of every site,
# and the comparisons of the results table, each with the student's budget:
#   student_nokd      the same student trained on labels alone (does KD help?);
#   student_t1cflair  a T1c + FLAIR student distilled from the 4-modality teacher (cross-modal);
#   student_AC, student_AC_adaptB
#                     students distilled on labelled sites A and C only, the second also on
#                     unlabelled site-B scans (teacher targets only): domain adaptation, scored
#                     on held-out site B.
#
# Sized for a 2-core CPU (the shipped models were made that way; see their model cards): about
# 40 min for the teacher and 20-25 min per student. On a GPU, raise the epochs, e.g.
# TEACHER_EPOCHS=200 STUDENT_EPOCHS=150 DEVICE=cuda.
#
#   bash scripts/train_shipped_models.sh            # writes runs/shipped/
#   SHIP_DIR=/tmp/x TEACHER_EPOCHS=4 bash scripts/train_shipped_models.sh   # a quick smoke run
#
# A stage whose model already exists is skipped, so an interrupted run continues where it stopped
# (delete a model to redo its stage).
#
# Then `python scripts/package_weights.py runs/shipped` copies the models into the package with
# their model cards and index entries.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${SKIP_SETUP:-}" ] || bash scripts/setup.sh
export PATH="$PWD/${VENV:-.venv}/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

out=${SHIP_DIR:-runs/shipped}
n_train=${N_TRAIN:-14}            # labelled cases per site (sites A, B and C)
n_test=${N_TEST:-4}               # held-out cases per site
n_unlabeled=${N_UNLABELED:-14}    # unlabelled site-B cases for domain adaptation
teacher_epochs=${TEACHER_EPOCHS:-36}
student_epochs=${STUDENT_EPOCHS:-20}
steps=${STEPS_PER_EPOCH:-25}
device=${DEVICE:-cpu}
workers=${NUM_WORKERS:-1}
mkdir -p "$out"
log() { echo "==> $(date -u +%H:%M:%S) $*"; }
# stage MODEL_STEM MESSAGE: false (skip) when the stage's model exists already
stage() {
  if [ -f "$out/$1.safetensors" ]; then log "$2: $out/$1.safetensors exists, skipped"; return 1; fi
  log "$2"
}

# Seeds: training cases 0.., 1000.., 2000.. (site A, B, C); held-out test cases from 9000 on,
# so no anatomy placement or lesion of a test case was ever seen in training.
if [ ! -f "$out/data/.complete" ]; then
  rm -rf "$out/data"
  log "phantoms: $n_train labelled cases per site (A, B, C), $n_test held-out per site, 1 mm"
  for i in 0 1 2; do
    site=$(echo A B C | cut -d' ' -f$((i + 1)))
    brats-kd phantom "$out/data/train" --n "$n_train" --seed $((i * 1000)) --site "$site"
    brats-kd phantom "$out/data/test_$site" --n "$n_test" --seed $((9000 + i * 100)) --site "$site"
  done
  # Domain adaptation data: the labelled cases of sites A and C (links into train/), and site-B
  # scans whose segmentations are deleted, so only the teacher can teach from them.
  mkdir -p "$out/data/train_AC"
  for case in "$out"/data/train/*/; do
    case_id=$(basename "$case")
    [[ $case_id == *_P01??? ]] || ln -sfn "../train/$case_id" "$out/data/train_AC/$case_id"
  done
  brats-kd phantom "$out/data/unlabeled_B" --n "$n_unlabeled" --seed 1500 --site B
  find "$out/data/unlabeled_B" -name '*_seg.nii.gz' -delete
  touch "$out/data/.complete"
fi

common=(--patch-size 96 96 96 --batch-size 2 --num-workers "$workers" --device "$device"
        --seed 0 --set steps_per_epoch="$steps" --set val_fraction=0.12
        --set val_roi_size=[192,192,160] --set cache=memory)

stage teacher "teacher: the bundle SegResNet at half resolution, $teacher_epochs epochs x $steps steps" &&
brats-kd train "$out/data/train" --out "$out/teacher.safetensors" --arch segresnet-halfres \
  --epochs "$teacher_epochs" --lr 1e-3 --augment light --set val_every=4 "${common[@]}"

student_common=(--student student-small --alpha "${ALPHA:-0.5}" --temperature "${TEMPERATURE:-2}"
                --epochs "$student_epochs" --lr 2e-3 --augment light --set val_every=5)

# evaluate MODEL_STEM [SITE...]: segment held-out sites (default all) with the model and score it
evaluate() {
  local stem=$1 sites=(A B C)
  shift
  [ $# -eq 0 ] || sites=("$@")
  for site in "${sites[@]}"; do
    if [ -f "$out/scores_${stem}_$site.csv" ]; then continue; fi
    log "evaluate $stem on held-out site $site"
    brats-kd segment "$out/data/test_$site" -o "$out/pred/$stem/$site" \
      --model "$out/$stem.safetensors" --device "$device"
    brats-kd evaluate "$out/pred/$stem/$site" "$out/data/test_$site" \
      --csv "$out/scores_${stem}_$site.csv"
  done
}
evaluate teacher

stage student "student, distilled from the teacher (KL + soft Dice to the teacher)" &&
brats-kd distill "$out/data/train" --teacher "$out/teacher.safetensors" \
  --out "$out/student.safetensors" --set kd_dice_weight=1 "${student_common[@]}" "${common[@]}"
evaluate student

stage student_nokd "the same student without distillation (labels only, same steps)" &&
brats-kd train "$out/data/train" --out "$out/student_nokd.safetensors" \
  --set model.kind=student --arch student-small \
  --epochs "$student_epochs" --lr 2e-3 --augment light --set val_every=5 "${common[@]}"
evaluate student_nokd

stage student_AC "domain adaptation, before: the student distilled on labelled sites A and C" &&
brats-kd distill "$out/data/train_AC" --teacher "$out/teacher.safetensors" \
  --out "$out/student_AC.safetensors" --set kd_dice_weight=1 "${student_common[@]}" "${common[@]}"
evaluate student_AC B

stage student_AC_adaptB "domain adaptation, after: the same, plus unlabelled site-B scans" &&
brats-kd distill "$out/data/train_AC" --teacher "$out/teacher.safetensors" \
  --out "$out/student_AC_adaptB.safetensors" --unlabeled "$out/data/unlabeled_B" \
  --set kd_dice_weight=1 "${student_common[@]}" "${common[@]}"
evaluate student_AC_adaptB B

stage student_t1cflair "cross-modal: a T1c + FLAIR student distilled from the 4-modality teacher" &&
brats-kd distill "$out/data/train" --teacher "$out/teacher.safetensors" \
  --out "$out/student_t1cflair.safetensors" --modalities t1c,flair --set kd_dice_weight=1 \
  "${student_common[@]}" "${common[@]}"
evaluate student_t1cflair

log "done: models, run folders and per-case scores in $out/"
