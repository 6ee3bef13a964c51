#!/usr/bin/env bash
# Reproduce the shipped demo models (src/napari_brats_kd/weights/) from scratch with the
# project's own commands: phantoms -> `brats-kd train` (teacher) -> `brats-kd distill` (student,
# KL + soft Dice to the teacher) -> `brats-kd evaluate` on held-out phantom seeds of every site,
# and the comparisons of the results table, each with the student's budget:
#   student_nokd      the same student trained on labels alone (does KD help?);
#   student_t1cflair  a T1c + FLAIR student distilled from the 4-modality teacher (cross-modal);
#   student_attention the student distilled with attention transfer too (the teacher's encoder
#                     attention maps; it runs the teacher on every patch, about 55 min on a CPU);
#   student_corrected the student distilled from the teacher's outputs corrected by the labels
#                     (--kd-label-correction: where the teacher is wrong, its confidence on the
#                     label's side);
#   student_semi      the label-corrected student distilled also on unlabelled scans of the
#                     training sites (N_SEMI per site, teacher targets only), which only KD can
#                     use (with cache=memory, 37 + 21 cases need about 15 GB);
#   student_AC, student_AC_adaptB
#                     students distilled on labelled sites A and C only, the second also on
#                     unlabelled site-B scans (teacher targets only): domain adaptation, scored
#                     on held-out site B.
#
# Sized for a 2-core CPU by default: about 40 min for the half-resolution teacher and 15-20 min
# per student (distillation caches the teacher's outputs first: 5 min for 37 cases). On
# a GPU machine, give more workers and steps, or a time budget (the learning rate is paced to it),
# e.g. DEVICE=cuda JOBS=16 NUM_WORKERS=14 TEACHER_ARCH=segresnet TEACHER_PATCH=128
# TEACHER_MINUTES=4 STEPS_PER_EPOCH=100; the shipped models' cards say how they were made.
#
#   bash scripts/train_shipped_models.sh            # writes runs/shipped/
#   SHIP_DIR=/tmp/x TEACHER_EPOCHS=4 bash scripts/train_shipped_models.sh   # a quick smoke run
#   STAGES="student student_nokd" bash scripts/train_shipped_models.sh      # only these stages
#   FROM_RUN=runs/shipped SHIP_DIR=runs/b1000_s1 SEED=1 STUDENT_EPOCHS=40 \
#     STAGES="student_corrected student_nokd" bash scripts/train_shipped_models.sh  # another budget
#
# Settings (environment): SHIP_DIR, N_TRAIN, N_TEST, N_UNLABELED, N_SEMI (phantoms), TEACHER_ARCH,
# TEACHER_PATCH, TEACHER_EPOCHS, TEACHER_MINUTES, STUDENT_EPOCHS, STUDENT_MINUTES,
# STEPS_PER_EPOCH, DEVICE, NUM_WORKERS, ALPHA, TEMPERATURE, TEACHER_TARGETS, ATTENTION_WEIGHT,
# SEED (training: split, initialisation, patches; the phantoms keep theirs), FROM_RUN (share
# another run folder's phantoms, cached teacher outputs and teacher), STAGES (default all:
# teacher student student_nokd student_AC student_AC_adaptB student_t1cflair student_attention
# student_corrected student_semi)
# and JOBS (processes for phantoms and per-site evaluation).
#
# A stage whose model already exists is skipped, so an interrupted run continues where it stopped
# (delete a model to redo its stage).
#
# The shipped student is the student_corrected stage with STUDENT_EPOCHS=60 (1500 steps, 53 min on
# a 2-core AMD EPYC, the teacher's outputs cached); the default 20 epochs is the budget of most
# comparisons.
#
# Then `python scripts/package_weights.py runs/shipped` copies the teacher and student_corrected
# into the package with their model cards and index entries (--student-stem picks another student).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${SKIP_SETUP:-}" ] || bash scripts/setup.sh
export PATH="$PWD/${VENV:-.venv}/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

out=${SHIP_DIR:-runs/shipped}
n_train=${N_TRAIN:-14}            # labelled cases per site (sites A, B and C)
n_test=${N_TEST:-4}               # held-out cases per site
n_unlabeled=${N_UNLABELED:-14}    # unlabelled site-B cases for domain adaptation
n_semi=${N_SEMI:-7}               # unlabelled cases per site for student_semi
teacher_arch=${TEACHER_ARCH:-segresnet-halfres}
teacher_patch=${TEACHER_PATCH:-96}
teacher_epochs=${TEACHER_EPOCHS:-36}
student_epochs=${STUDENT_EPOCHS:-20}
steps=${STEPS_PER_EPOCH:-25}
device=${DEVICE:-cpu}
workers=${NUM_WORKERS:-1}
jobs=${JOBS:-1}
stages=" ${STAGES:-all} "
teacher_budget=() student_budget=()
[ -z "${TEACHER_MINUTES:-}" ] || teacher_budget=(--max-minutes "$TEACHER_MINUTES")
[ -z "${STUDENT_MINUTES:-}" ] || student_budget=(--max-minutes "$STUDENT_MINUTES")
mkdir -p "$out"
# FROM_RUN: another run folder whose phantoms, cached teacher outputs and teacher this one shares
# (linked), for comparisons at other SEEDs or STUDENT_EPOCHS without regenerating them.
if [ -n "${FROM_RUN:-}" ]; then
  from=$(realpath "$FROM_RUN")
  for item in data cache teacher.safetensors; do
    [ -e "$from/$item" ] || { echo "FROM_RUN=$FROM_RUN has no $item" >&2; exit 1; }
    [ -e "$out/$item" ] || ln -s "$from/$item" "$out/$item"
  done
fi
log() { echo "==> $(date -u +%H:%M:%S) $*"; }
wanted() { [[ $stages == *" all "* || $stages == *" $1 "* ]]; }
# stage MODEL_STEM MESSAGE: false (skip) when the stage is not wanted or its model exists already
stage() {
  wanted "$1" || return 1
  if [ -f "$out/$1.safetensors" ]; then log "$2: $out/$1.safetensors exists, skipped"; return 1; fi
  log "$2"
}
# wait_all PID...: wait for background jobs, failing if any failed
wait_all() {
  local pid status=0
  for pid in "$@"; do wait "$pid" || status=1; done
  return $status
}
# phantoms DIR N SEED SITE: N labelled cases, seeds SEED.., in up to $jobs parallel processes
phantoms() {
  local dir=$1 n=$2 seed=$3 site=$4 size i pids=()
  size=$(((n + jobs - 1) / jobs))
  for ((i = 0; i < n; i += size)); do
    brats-kd phantom "$dir" --n $((n - i < size ? n - i : size)) --seed $((seed + i)) \
      --site "$site" >>"$out/phantoms.log" 2>&1 &
    pids+=($!)
  done
  wait_all "${pids[@]}"
}

# Seeds: training cases 0.., 1000.., 2000.. (site A, B, C); held-out test cases from 9000 on,
# so no anatomy placement or lesion of a test case was ever seen in training.
if [ ! -f "$out/data/.complete" ]; then
  rm -rf "$out/data"
  log "phantoms: $n_train labelled cases per site (A, B, C), $n_test held-out per site, 1 mm"
  for i in 0 1 2; do
    site=$(echo A B C | cut -d' ' -f$((i + 1)))
    phantoms "$out/data/train" "$n_train" $((i * 1000)) "$site"
    phantoms "$out/data/test_$site" "$n_test" $((9000 + i * 100)) "$site"
  done
  # Domain adaptation data: the labelled cases of sites A and C (links into train/), and site-B
  # scans whose segmentations are deleted, so only the teacher can teach from them.
  mkdir -p "$out/data/train_AC"
  for case in "$out"/data/train/*/; do
    case_id=$(basename "$case")
    [[ $case_id == *_P01??? ]] || ln -sfn "../train/$case_id" "$out/data/train_AC/$case_id"
  done
  phantoms "$out/data/unlabeled_B" "$n_unlabeled" 1500 B
  find "$out/data/unlabeled_B" -name '*_seg.nii.gz' -delete
  touch "$out/data/.complete"
fi

# Unlabelled scans of the training sites for student_semi, segmentations deleted: $n_semi per site
# (seeds 500.., 1500.., 2500..; site B's seeds give the same scans as unlabeled_B's first ones).
# Made only when wanted, in a folder of this process moved into place when complete: with
# FROM_RUN the data folder is shared, and a run started beside this one may be making them too.
if wanted student_semi && [ ! -d "$out/data/unlabeled_ABC" ]; then
  part="$out/data/unlabeled_ABC.part$$"
  rm -rf "$part"
  log "phantoms: $n_semi unlabelled cases per site (A, B, C)"
  for i in 0 1 2; do
    site=$(echo A B C | cut -d' ' -f$((i + 1)))
    phantoms "$part" "$n_semi" $((500 + i * 1000)) "$site"
  done
  find "$part" -name '*_seg.nii.gz' -delete
  mv -T "$part" "$out/data/unlabeled_ABC" 2>/dev/null || rm -rf "$part"  # the other run's won
fi

common=(--batch-size 2 --num-workers "$workers" --device "$device"
        --seed "${SEED:-0}" --set steps_per_epoch="$steps" --set val_fraction=0.12
        --set val_roi_size=[192,192,160] --set cache=memory)

stage teacher "teacher: $teacher_arch, patches of $teacher_patch^3, $teacher_epochs epochs x $steps steps ${teacher_budget[*]}" &&
brats-kd train "$out/data/train" --out "$out/teacher.safetensors" --arch "$teacher_arch" \
  --patch-size "$teacher_patch" "$teacher_patch" "$teacher_patch" \
  --epochs "$teacher_epochs" "${teacher_budget[@]}" --lr 1e-3 --augment light --set val_every=4 \
  "${common[@]}"

common+=(--patch-size 96 96 96 "${student_budget[@]}")
# Teacher outputs: TEACHER_TARGETS=auto caches them on a CPU (once per case, shared by the
# students through one cache folder) and runs the teacher on every patch on a GPU.
student_common=(--student student-small --alpha "${ALPHA:-0.5}" --temperature "${TEMPERATURE:-2}"
                --epochs "$student_epochs" --lr 2e-3 --augment light --set val_every=5
                --teacher-targets "${TEACHER_TARGETS:-auto}" --set cache_dir="$out/cache")

# evaluate MODEL_STEM [SITE...]: segment held-out sites (default all) with the model and score it
# (the sites $jobs at a time)
evaluate() {
  local stem=$1 sites=(A B C) pids=()
  shift
  [ $# -eq 0 ] || sites=("$@")
  wanted "$stem" && [ -f "$out/$stem.safetensors" ] || return 0
  for site in "${sites[@]}"; do
    if [ -f "$out/scores_${stem}_$site.csv" ]; then continue; fi
    log "evaluate $stem on held-out site $site"
    (brats-kd segment "$out/data/test_$site" -o "$out/pred/$stem/$site" --overwrite \
       --model "$out/$stem.safetensors" --device "$device" &&
     brats-kd evaluate "$out/pred/$stem/$site" "$out/data/test_$site" \
       --csv "$out/scores_${stem}_$site.csv") &
    pids+=($!)
    [ "${#pids[@]}" -lt "$jobs" ] || { wait_all "${pids[@]}"; pids=(); }
  done
  wait_all "${pids[@]}"
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

# unlabeled_weight 0.5: one unlabelled site-B scan per two labelled cases, the mix the shipped
# adapted student was trained with (its 14 unlabelled and 28 labelled cases were then drawn in
# proportion to their numbers, before unlabeled_weight took effect).
stage student_AC_adaptB "domain adaptation, after: the same, plus unlabelled site-B scans" &&
brats-kd distill "$out/data/train_AC" --teacher "$out/teacher.safetensors" \
  --out "$out/student_AC_adaptB.safetensors" --unlabeled "$out/data/unlabeled_B" \
  --set kd_dice_weight=1 --set unlabeled_weight=0.5 "${student_common[@]}" "${common[@]}"
evaluate student_AC_adaptB B

stage student_t1cflair "cross-modal: a T1c + FLAIR student distilled from the 4-modality teacher" &&
brats-kd distill "$out/data/train" --teacher "$out/teacher.safetensors" \
  --out "$out/student_t1cflair.safetensors" --modalities t1c,flair --set kd_dice_weight=1 \
  "${student_common[@]}" "${common[@]}"
evaluate student_t1cflair

# Attention maps need the teacher's activations on every patch, so its targets are online here.
stage student_attention "attention transfer: the student, plus the teacher's encoder attention maps" &&
brats-kd distill "$out/data/train" --teacher "$out/teacher.safetensors" \
  --out "$out/student_attention.safetensors" --set kd_dice_weight=1 \
  --attention-weight "${ATTENTION_WEIGHT:-1}" "${student_common[@]}" --teacher-targets online \
  "${common[@]}"
evaluate student_attention

stage student_corrected "label-corrected KD: the student, from the teacher's outputs corrected by the labels" &&
brats-kd distill "$out/data/train" --teacher "$out/teacher.safetensors" \
  --out "$out/student_corrected.safetensors" --set kd_dice_weight=1 --kd-label-correction \
  "${student_common[@]}" "${common[@]}"
evaluate student_corrected

# Semi-supervised KD: the same labelled cases and steps, one unlabelled scan per two labelled
# cases drawn from the three sites' unlabelled scans (teacher targets only).
stage student_semi "label-corrected KD, plus unlabelled scans of the training sites" &&
brats-kd distill "$out/data/train" --teacher "$out/teacher.safetensors" \
  --out "$out/student_semi.safetensors" --set kd_dice_weight=1 --kd-label-correction \
  --unlabeled "$out/data/unlabeled_ABC" --set unlabeled_weight=0.5 \
  "${student_common[@]}" "${common[@]}"
evaluate student_semi

log "done: models, run folders and per-case scores in $out/"
