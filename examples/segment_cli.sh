#!/usr/bin/env bash
# Headless segmentation with the brats-kd command line.
#
#   bash examples/segment_cli.sh [MODEL]
#
# MODEL: student (shipped weights, once installed), teacher, a .safetensors checkpoint or a MONAI
# bundle folder. Without one, an untrained student checkpoint is written first so the commands run
# anywhere (its labels are meaningless).
set -euo pipefail
work=$(mktemp -d)
model=${1:-}

# 1. Three synthetic cases (BraTS 2021 naming, 2 mm voxels to keep it quick).
brats-kd phantom "$work/cases" --n 3 --spacing 2

if [[ -z "$model" ]]; then
  model="$work/untrained_student.safetensors"
  python -c "import sys; from napari_brats_kd.models import *; c = student_config(); save_checkpoint(sys.argv[1], build_model(c), c)" "$model"
fi

# 2. One case -> one file, aligned with the input scans (same affine and voxel order).
first=$(ls -d "$work"/cases/*/ | head -n 1)
brats-kd segment "$first" -o "$work/one_seg.nii.gz" --model "$model" --device auto

# 3. A folder of cases -> a folder of <case_id>_seg.nii.gz, with a progress bar.
brats-kd segment "$work/cases" -o "$work/segs" --model "$model" --min-component-voxels 20

# 4. Export the model for other runtimes, checked against PyTorch.
brats-kd export "$model" --onnx "$work/model.onnx" --torchscript "$work/model_ts.pt"

ls -l "$work/segs"
echo "outputs in $work"
