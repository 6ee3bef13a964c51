"""Remake ``docs/segment_widget.png``: a real case, the Segment tumor (student) widget, its result.

Opens a real case from ``../shared/data/real`` (default TCGA-DU-7294) with the plugin's reader in a
real napari window, docks "Segment tumor (student)", runs the picked model (default: the shipped
student), and grabs the window with the axial slice of the largest segmented area.

    xvfb-run -a -s "-screen 0 1500x950x24" python scripts/screenshot_segment_widget.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _screenshot import close_toasts

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT.parent / "shared" / "data" / "real"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=REAL / "TCGA-DU-7294")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped student)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "segment_widget.png")
    args = parser.parse_args(argv)

    from qtpy.QtWidgets import QApplication

    import napari

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.open(str(args.case), plugin="napari-brats-kd")
    # The algorithm outputs shipped with the TCGA case stay hidden: the model's result is the view.
    for layer in viewer.layers:
        if layer.__class__.__name__ == "Labels":
            layer.visible = False
    _, widget = viewer.window.add_plugin_dock_widget("napari-brats-kd", "Segment tumor (student)")
    if args.model:
        widget.load_model(args.model)
    task = widget.run()
    if task is None:
        print("the widget refused to run (see the notification)", file=sys.stderr)
        return 1
    deadline = time.monotonic() + 300
    while widget.last_layer is None and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    result = widget.last_layer
    if result is None:
        print("no result within 5 minutes", file=sys.stderr)
        return 1
    z = int(np.argmax((np.asarray(result.data) > 0).sum(axis=(1, 2))))
    viewer.dims.set_current_step(0, z)
    for layer in viewer.layers:
        if layer.__class__.__name__ == "Image":
            layer.visible = "FLAIR" in layer.name
    viewer.layers.selection.active = result
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    close_toasts(viewer)
    viewer.screenshot(str(args.out), canvas_only=False)
    print(f"Wrote {args.out}; {widget.status.value}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
