"""Distil a small CPU student from a teacher, end to end, on synthetic phantoms.

Runs in a few minutes on a laptop CPU (tiny settings); raise the epochs, the patch size and the
number of cases (and use ``device="cuda"``) for a useful model. On your own data, point
``data_dir`` at a folder of BraTS cases and ``teacher`` at a checkpoint or MONAI bundle::

    python examples/distill.py /tmp/kd_example

The same from the command line::

    brats-kd phantom /tmp/kd_example/data --n 8 --spacing 4
    brats-kd train /tmp/kd_example/data --out teacher.safetensors --epochs 5 \\
        --patch-size 32 32 32 --set steps_per_epoch=8
    brats-kd distill /tmp/kd_example/data --teacher teacher.safetensors \\
        --out student.safetensors --modalities t1c,flair --epochs 5 --patch-size 32 32 32
    brats-kd evaluate predictions/ /tmp/kd_example/data --csv metrics.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

from napari_brats_kd.phantom import write_phantom_dataset
from napari_brats_kd.training import distill, load_config, train_teacher


def main(work: Path) -> None:
    data = work / "data"
    if not data.exists():
        write_phantom_dataset(data, n=8, seed=0, spacing=4)  # 60x60x39 voxels per case
        write_phantom_dataset(work / "siteB", n=4, seed=100, spacing=4, site="B")
    quick = ["epochs=5", "steps_per_epoch=8", "patch_size=[32,32,32]", "val_roi_size=[64,64,48]",
             "val_every=1", "num_workers=0", "warmup_epochs=1"]  # fmt: skip

    def show(done: int, total: int, message: str) -> None:
        print(f"\r{done}/{total} {message}", end="", flush=True)

    # 1. A teacher: the MONAI bundle's SegResNet on four modalities, Dice + BCE on TC/WT/ET.
    teacher_cfg = load_config(
        "teacher", [f"data_dir={data}", f"out={work / 'teacher.safetensors'}", *quick]
    )
    teacher = train_teacher(teacher_cfg, progress=show)
    print(f"\nteacher: best mean val Dice {teacher.best_metric:.3f} -> {teacher.out}")

    # 2. A half-resolution student that needs only T1c and FLAIR, learning from the teacher on
    #    the labelled cases and on unlabelled scans of another site (teacher targets only).
    student_cfg = load_config(
        "distill",
        [
            f"data_dir={data}",
            f"teacher={teacher.out}",
            f"unlabeled_dir={work / 'siteB'}",
            f"out={work / 'student.safetensors'}",
            "model.modalities=[t1c,flair]",
            "alpha=0.5",
            "temperature=2.0",
            *quick,
        ],
    )
    student = distill(student_cfg, progress=show, on_event=lambda e: None)
    print(f"\nstudent: best mean val Dice {student.best_metric:.3f} -> {student.out}")
    print(
        f"run folders (config, split, log.csv, checkpoints): {teacher.run_dir}, {student.run_dir}"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("kd_example"))
