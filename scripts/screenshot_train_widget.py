"""Remake ``docs/train_widget.png``: the Train student (distillation) widget in the middle of a run.

Writes a few phantom cases, opens one in a real napari window, docks "Train student
(distillation)", starts distilling a student from the picked teacher (default: the shipped
teacher) and grabs the window once the live plot has ``--snap-epoch`` epochs and a validation
point, while the run is still going; then presses Stop (which keeps a usable checkpoint).

    xvfb-run -a -s "-screen 0 1500x950x24" python scripts/screenshot_train_widget.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from _screenshot import close_toasts

ROOT = Path(__file__).resolve().parent.parent


def process_events_for(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=None, help="default: the shipped teacher")
    parser.add_argument("--student", default="student-small")
    parser.add_argument("--cases", type=int, default=6, help="phantom cases (one validates)")
    parser.add_argument("--spacing", type=float, default=2.0, help="phantom voxel size in mm")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--snap-epoch", type=int, default=16, help="grab after this many epochs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "train_widget.png")
    args = parser.parse_args(argv)

    from napari_brats_kd._napari._settings import CONFIG_DIR_ENV
    from napari_brats_kd.models.registry import shipped_models
    from napari_brats_kd.phantom import write_phantom_dataset

    teacher = args.teacher
    if teacher is None:
        shipped = [m for m in shipped_models() if m.role == "teacher"]
        if not shipped:
            print("no shipped teacher: pass --teacher CHECKPOINT", file=sys.stderr)
            return 1
        teacher = shipped[0].path
    work = Path(tempfile.mkdtemp(prefix="train_widget_shot_"))
    # The screenshot's settings and session models stay out of the user's.
    os.environ[CONFIG_DIR_ENV] = str(work / "config")
    data = work / "data"
    write_phantom_dataset(data, n=args.cases, seed=500, spacing=args.spacing)

    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1150)
    first = sorted(p for p in data.iterdir() if p.is_dir())[0]
    viewer.open(str(first), plugin="napari-brats-kd")
    for layer in viewer.layers:
        layer.visible = "FLAIR" in layer.name or layer.__class__.__name__ == "Labels"
    _, widget = viewer.window.add_plugin_dock_widget(
        "napari-brats-kd", "Train student (distillation)"
    )
    widget.mode_picker.value = "Distil student"
    widget.use_viewer_cases.value = False
    widget.data_dir.value = data
    if widget.load_model(teacher) is None:
        print(f"could not load the teacher {teacher}", file=sys.stderr)
        return 1
    widget.student_preset.value = args.student
    widget.epochs.value = args.epochs
    widget.patch_size.value = 64
    widget.batch_size.value = 2
    widget.augment.value = "light"
    widget.output_dir.value = work / "runs"
    widget.extra.value = "steps_per_epoch=6; val_every=2; num_workers=0"
    task = widget.start()
    if task is None:
        print("the widget refused to start (see the notification)", file=sys.stderr)
        return 1
    deadline = time.monotonic() + 1800
    plot = widget.plot
    while time.monotonic() < deadline and task.is_running:
        process_events_for(0.5)
        if len(plot.epochs) >= args.snap_epoch and plot.val_epochs:
            break
    if not task.is_running:
        print("the run ended before the snapshot epoch", file=sys.stderr)
        return 1
    process_events_for(1.0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    close_toasts(viewer)
    viewer.screenshot(str(args.out), canvas_only=False)
    print(f"Wrote {args.out} at epoch {len(plot.epochs)}; {widget.status.value}")
    widget.stop()
    while task.is_running:
        process_events_for(0.5)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
