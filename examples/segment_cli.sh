#!/usr/bin/env bash
# Headless segmentation with the brats-kd command line.
#
#   bash examples/segment_cli.sh [MODEL]
#
# MODEL: student (the shipped demo weights, the default), teacher, a .safetensors checkpoint or a
# MONAI bundle folder.
set -euo pipefail
work=$(mktemp -d)
model=${1:-student}

# 1. Three synthetic cases (BraTS 2021 naming, 1 mm voxels: the BraTS grid the models expect).
brats-kd phantom "$work/cases" --n 3 --seed 9500

# 2. One case -> one file, aligned with the input scans (same affine and voxel order).
first=$(ls -d "$work"/cases/*/ | head -n 1)
brats-kd segment "$first" -o "$work/one_seg.nii.gz" --model "$model" --device auto

# 3. A folder of cases -> a folder of <case_id>_seg.nii.gz, with a progress bar.
brats-kd segment "$work/cases" -o "$work/segs" --model "$model" --min-component-voxels 20

# 4. Export the model for other runtimes, checked against PyTorch.
brats-kd export "$model" --onnx "$work/model.onnx" --torchscript "$work/model_ts.pt"

ls -l "$work/segs"
echo "outputs in $work"
