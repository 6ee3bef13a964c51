#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job, headless, in about two minutes on 2 CPU cores:
#   1. the shipped student segments three synthetic 1 mm cases with exact ground truth and is
#      scored against it (Dice, HD95);
#   2. it segments the real scans in ../shared/data/real (when present) and, where other
#      algorithms' segmentations lie beside a scan, is compared with their fusion.
# `bash scripts/demo.sh --train` then also runs the training pipeline (phantoms -> teacher ->
# student -> scores) for a few minutes, to show it working: its scores are not the models' quality.
# Set DEMO_DIR to choose where it writes (default runs/demo); EPOCHS to train longer.
set -euo pipefail
cd "$(dirname "$0")/.."
train=0
[ "${1:-}" = "--train" ] && train=1
bash scripts/setup.sh
export PATH="$PWD/${VENV:-.venv}/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
out=${DEMO_DIR:-runs/demo}
rm -rf "$out" && mkdir -p "$out"
real=${REAL_DIR:-../shared/data/real}

echo "==> 1/3 the shipped student on 3 synthetic 1 mm cases (exact ground truth)"
echo "    expect Dice about 0.9 for the whole tumour (WT) and 0.6-0.7 for the core (TC) and the"
echo "    enhancing tumour (ET): its model card reports WT 0.88, TC 0.61, ET 0.68 on 12 such cases"
echo "    (it was fine-tuned on real scans, whose look these synthetic cases only approach)"
brats-kd phantom "$out/phantoms" --n 3 --seed 9500
brats-kd segment "$out/phantoms" -o "$out/pred_phantoms"
brats-kd evaluate "$out/pred_phantoms" "$out/phantoms" --csv "$out/scores_phantoms.csv"

echo "==> 2/3 the shipped student on real scans"
if [ -d "$real" ]; then
  brats-kd segment "$real" -o "$out/pred_real"
  ref="$real/TCGA-DU-7294/segmentations/fusion_simple.nii.gz"
  if [ -f "$ref" ]; then
    echo "    TCGA-DU-7294 against the fusion of five BraTS 2020 algorithms (a rough reference, not"
    echo "    expert labels; it marks only necrosis and edema, so only WT is comparable): expect WT"
    echo "    Dice about 0.9"
    mkdir -p "$out/reference/TCGA-DU-7294" "$out/pred_tcga"
    cp "$ref" "$out/reference/TCGA-DU-7294/TCGA-DU-7294_seg.nii.gz"
    cp "$out/pred_real/TCGA-DU-7294_seg.nii.gz" "$out/pred_tcga/"
    brats-kd evaluate "$out/pred_tcga" "$out/reference" --gt-convention brats2021 \
      --csv "$out/scores_tcga.csv" | grep -E "^(region|WT)"
  fi
else
  echo "    ($real not found: put BraTS case folders there, or run brats-kd segment on your own)"
fi

if [ "$train" = 1 ]; then
  epochs=${EPOCHS:-8}
  echo "==> 3/3 the training pipeline, small and short on purpose (4 mm phantoms, $epochs epochs,"
  echo "    5-10 minutes on 2 cores): it shows teacher training, distillation and scoring working;"
  echo "    expect Dice between 0 and 0.5 (a real student trains for hours: docs/training.md)"
  small=(--patch-size 32 32 32 --batch-size 2 --num-workers 0 --device auto
         --set steps_per_epoch=8 --set val_every=4 --set val_roi_size=[64,64,48])
  brats-kd phantom "$out/train" --n 10 --seed 0 --spacing 4
  brats-kd phantom "$out/test" --n 3 --seed 1000 --spacing 4
  brats-kd train "$out/train" --out "$out/teacher.safetensors" --epochs "$epochs" "${small[@]}"
  brats-kd distill "$out/train" --teacher "$out/teacher.safetensors" \
    --out "$out/student.safetensors" --epochs "$epochs" "${small[@]}"
  brats-kd segment "$out/test" -o "$out/pred" --model "$out/student.safetensors"
  brats-kd evaluate "$out/pred" "$out/test" --csv "$out/scores.csv"
else
  echo "==> 3/3 (skipped) the training pipeline: bash scripts/demo.sh --train"
fi
echo "Done: segmentations and scores in $out/ (open a case and its *_seg.nii.gz in napari)."
