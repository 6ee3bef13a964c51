#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the main job end to end, headless, on synthetic cases:
#   phantoms with exact ground truth -> train a teacher -> distil a student from it ->
#   segment held-out phantoms with the student -> Dice / HD95 against the ground truth;
#   then the shipped student on two held-out 1 mm phantoms (the BraTS grid).
# Steps 1-5 are small and short on purpose (4 mm phantoms, a few epochs: about 5-10 minutes on 2 CPU cores), so
# it shows the whole pipeline working; the scores of such a short run are not the models' quality.
# Set DEMO_DIR to choose where it writes (default runs/demo); EPOCHS to train longer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/${VENV:-.venv}/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
out=${DEMO_DIR:-runs/demo}
epochs=${EPOCHS:-8}
rm -rf "$out" && mkdir -p "$out"
small=(--patch-size 32 32 32 --batch-size 2 --num-workers 0 --device auto
       --set steps_per_epoch=8 --set val_every=4 --set val_roi_size=[64,64,48])

echo "==> 1/6 synthetic training cases (site A) and held-out test cases"
brats-kd phantom "$out/train" --n 10 --seed 0 --spacing 4
brats-kd phantom "$out/test" --n 3 --seed 1000 --spacing 4

echo "==> 2/6 teacher training"
brats-kd train "$out/train" --out "$out/teacher.safetensors" --epochs "$epochs" "${small[@]}"

echo "==> 3/6 distilling a student from the teacher"
brats-kd distill "$out/train" --teacher "$out/teacher.safetensors" \
  --out "$out/student.safetensors" --epochs "$epochs" "${small[@]}"

echo "==> 4/6 segmenting the held-out cases with the student"
brats-kd segment "$out/test" -o "$out/pred" --model "$out/student.safetensors"

echo "==> 5/6 scoring against the ground truth"
brats-kd evaluate "$out/pred" "$out/test" --csv "$out/scores.csv"
echo "==> 6/6 the shipped student (phantoms, then 15 real cases; see its model card) on 1 mm phantoms"
brats-kd phantom "$out/test_1mm" --n 2 --seed 9500
brats-kd segment "$out/test_1mm" -o "$out/pred_shipped" --model student
brats-kd evaluate "$out/pred_shipped" "$out/test_1mm" --csv "$out/scores_shipped.csv"
echo "Done: models, run folders (logs, checkpoints) and scores in $out/"
