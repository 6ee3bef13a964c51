#!/usr/bin/env bash
# Adapt the phantom-trained student to real scans, cross-validated on the 15 expert-labelled real
# BraTS 2018 cases (../shared/data/real_labelled), with the project's own `brats-kd train`:
#   finetune_fold{K}  the shipped phantom student fine-tuned on fold K's 10 training cases
#                     (every layer trained; pretrained layers at PRETRAINED_LR_FACTOR x the rate)
#   scratch_fold{K}   the same network from random weights, same cases, steps budget and recipe
#   student_real      the fine-tuning recipe on all 15 cases
#   finetune_long_fold{K}, student_real_long
#                     the same fine-tuning with LONG_EPOCHS (default 32: 800 steps, twice the
#                     budget): the folds, and all 15 cases (the model that ships as `student`)
# Folds: benchmarks/real_folds.json (3 x 10 train / 5 test; each case tested once). No validation
# split (10 cases are too few to spare one): each run keeps its last weights, so no test case ever
# picks a checkpoint. Score them with `python benchmarks/bench_real.py`.
#
#   t1cflair_nokd_fold{K}, t1cflair_kd_fold{K}
#                     a T1c + FLAIR student (for scans lacking T1 or T2) from random weights, on
#                     labels alone, and distilled from finetune_fold{K} (cross-modal KD: the
#                     four-modality model teaches the two-modality one, label-corrected)
#   student_t1cflair  a T1c + FLAIR recipe on all 15 cases: T1CFLAIR_RECIPE, default nokd (it
#                     beat kd on the folds scored, see docs/real_data.md)
#
# Budgets are steps, not minutes, so that the runs compared had the same training whatever else
# the machine was doing: EPOCHS x 25 steps of 2 cases x 2 patches of 96^3 (default 16 epochs, 400
# steps, about 9 min per run on a 2-core CPU; the T1c + FLAIR runs T1CFLAIR_EPOCHS, default 8).
# On a GPU, e.g.:  DEVICE=cuda NUM_WORKERS=8 EPOCHS=80 bash scripts/train_real_models.sh
# Settings (environment): REAL_DIR, OUT_DIR (default runs/real), EPOCHS, T1CFLAIR_EPOCHS, LR,
# PRETRAINED_LR_FACTOR, AUGMENT, DEVICE, NUM_WORKERS, SEED, T1CFLAIR_RECIPE (kd or nokd), STAGES
# (default all: finetune scratch final finetune_long final_long t1cflair t1cflair_final), LONG_EPOCHS.
# A run whose checkpoint exists is skipped, so an interrupted call continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${SKIP_SETUP:-}" ] || bash scripts/setup.sh
export PATH="$PWD/${VENV:-.venv}/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

real=${REAL_DIR:-../shared/data/real_labelled}
out=${OUT_DIR:-runs/real}
stages=" ${STAGES:-all} "
[ -d "$real" ] || { echo "no real cases at $real (set REAL_DIR)" >&2; exit 1; }
mkdir -p "$out"
log() { echo "==> $(date -u +%H:%M:%S) $*"; }
wanted() { [[ $stages == *" all "* || $stages == *" $1 "* ]]; }

# One split file per fold (train = every other case, no validation) and one with all 15 cases.
python - "$out" "$real" <<'PY'
import json, sys
from pathlib import Path
out, real = Path(sys.argv[1]), Path(sys.argv[2])
folds = json.loads(Path("benchmarks/real_folds.json").read_text())["folds"]
cases = sorted(c for fold in folds for c in fold)
missing = [c for c in cases if not (real / c).is_dir()]
if missing:
    sys.exit(f"{real} lacks the cases {missing}")
for k, test in enumerate(folds):
    split = {"train": [c for c in cases if c not in test], "val": [], "test": test}
    (out / f"split_fold{k}.json").write_text(json.dumps(split, indent=1))
(out / "split_all.json").write_text(json.dumps({"train": cases, "val": [], "test": []}, indent=1))
PY

common=(--patch-size 96 96 96 --batch-size 2
        --set samples_per_case=2 --set pos_fraction=0.67 --set steps_per_epoch=25
        --lr "${LR:-2e-3}" --set warmup_epochs=1
        --augment "${AUGMENT:-light}" --device "${DEVICE:-cpu}" --num-workers "${NUM_WORKERS:-1}"
        --seed "${SEED:-0}" --set val_fraction=0)
# From scratch: the same network (student-small) from random weights.
scratch=(--arch student-small --set model.kind=student --epochs "${EPOCHS:-16}")
finetune=(--init-from student-phantom --freeze none
          --pretrained-lr-factor "${PRETRAINED_LR_FACTOR:-0.5}" --epochs "${EPOCHS:-16}")
t1cflair=(--modalities t1c,flair --epochs "${T1CFLAIR_EPOCHS:-8}")

# run COMMAND NAME SPLIT [OPTIONS...]: one `brats-kd COMMAND` run into $out/NAME.safetensors
run() {
  local command=$1 name=$2 split=$3
  shift 3
  if [ -f "$out/$name.safetensors" ]; then log "$name exists, skipped"; return; fi
  log "$name"
  brats-kd "$command" "$real" --split "$split" --out "$out/$name.safetensors" \
    --run-dir "$out/${name}_run" "${common[@]}" "$@" >"$out/$name.log" 2>&1
}
# the cross-modal student: labels only, or distilled from the four-modality model $1
t1cflair_nokd() { echo --arch student-small --set model.kind=student; }
t1cflair_kd() {
  echo --teacher "$1" --student student-small --alpha 0.5 --temperature 2 --kd-label-correction \
    --set kd_dice_weight=1 --teacher-targets cached --set cache_dir="$out/cache"
}

for k in 0 1 2; do
  wanted finetune && run train "finetune_fold$k" "$out/split_fold$k.json" "${finetune[@]}"
  wanted scratch && run train "scratch_fold$k" "$out/split_fold$k.json" "${scratch[@]}"
done
wanted final && run train student_real "$out/split_all.json" "${finetune[@]}"
# Twice the budget (the later --epochs wins over the one in "${finetune[@]}").
long=("${finetune[@]}" --epochs "${LONG_EPOCHS:-32}")
for k in 0 1 2; do
  wanted finetune_long && run train "finetune_long_fold$k" "$out/split_fold$k.json" "${long[@]}"
done
wanted final_long && run train student_real_long "$out/split_all.json" "${long[@]}"
for k in 0 1 2; do
  wanted t1cflair || continue
  # shellcheck disable=SC2046  # the recipes are lists of words
  run train "t1cflair_nokd_fold$k" "$out/split_fold$k.json" "${t1cflair[@]}" $(t1cflair_nokd)
  # shellcheck disable=SC2046
  run distill "t1cflair_kd_fold$k" "$out/split_fold$k.json" "${t1cflair[@]}" \
    $(t1cflair_kd "$out/finetune_fold$k.safetensors")
done
recipe=${T1CFLAIR_RECIPE:-nokd}
# shellcheck disable=SC2046
wanted t1cflair_final && run "$([ "$recipe" = kd ] && echo distill || echo train)" \
  student_t1cflair "$out/split_all.json" "${t1cflair[@]}" \
  $("t1cflair_$recipe" "$out/student_real.safetensors")
log "done: checkpoints and run folders in $out/"
