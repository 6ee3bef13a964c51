"""Segment a BraTS case from Python (a terminal, a notebook, or napari's console).

    python examples/segment_console.py CASE_DIR [MODEL]

MODEL is ``student`` (the shipped demo weights, the default), ``teacher``, a ``.safetensors``
checkpoint written by napari-brats-kd, or a MONAI bundle folder such as ``brats_mri_segmentation``.
Without a CASE_DIR a 1 mm phantom case (the BraTS grid) is made. Should the shipped weights be
missing (a trimmed install), an *untrained* student stands in so the calls still run (its labels
are then meaningless).
"""

from __future__ import annotations

import sys
from pathlib import Path

from napari_brats_kd.errors import CheckpointError
from napari_brats_kd.inference import segment
from napari_brats_kd.models import LoadedModel, build_model, resolve_model, student_config


def main() -> None:
    if len(sys.argv) > 1:
        from napari_brats_kd.io import load_case

        case = load_case(Path(sys.argv[1]))
    else:
        from napari_brats_kd.phantom import make_phantom

        case = make_phantom(seed=0, spacing=1.0)
    try:
        model = resolve_model(sys.argv[2] if len(sys.argv) > 2 else "student")
    except CheckpointError as exc:
        print(f"{exc}\n-> using an untrained student to show the API.")
        config = student_config()
        model = LoadedModel(build_model(config).eval(), config)

    result = segment(
        case,
        model,
        device="auto",  # CUDA, then MPS, then CPU (onnxruntime back end on CPU)
        tta=False,  # True: average over 8 mirrorings (8x slower)
        min_component_voxels=0,
        progress=lambda done, total, msg: print(f"  {msg}"),
    )
    print(f"{case.case_id}: {result.model} on {result.device}/{result.backend} in "
          f"{result.seconds:.2f} s")  # fmt: skip
    for region, ml in result.volumes_ml.items():
        print(f"  {region}: {ml:.1f} ml")
    print(f"  labels {result.labels.shape} (display order), convention {result.convention}")

    out = Path("segmentation.nii.gz")
    from napari_brats_kd.io import save_labels

    save_labels(out, result.labels, case.reference, result.convention)
    print(f"wrote {out} (aligned with {case.reference.path or 'the phantom grid'})")


if __name__ == "__main__":
    main()
