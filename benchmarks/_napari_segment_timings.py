"""napari timings for ``bench_end_to_end.py`` (run under a display; prints one JSON line).

    xvfb-run -a python benchmarks/_napari_segment_timings.py CASE_FOLDER

- napari start-up (``import napari; napari.Viewer()``) in fresh processes, with this plugin
  enabled and disabled (a napari settings file naming it in ``plugins.disabled_plugins``);
- the case opened with the plugin's reader, then "Segment tumor (student)" docked and its Run
  clicked at once: seconds from the click to the result layer (the first Run);
- three later Runs; a teacher Run;
- Cancel clicked 0.3 s into a student run and 1.5 s into a teacher run: seconds from the click
  until the run has stopped and the controls are back.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_STARTUP = (
    "import time; t = time.perf_counter()\n"
    "import napari\n"
    "viewer = napari.Viewer(show=False)\n"
    "print(time.perf_counter() - t)\n"
    "viewer.close()\n"
)


def startup_seconds(disabled: bool, runs: int = 3) -> float:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Path(tmp) / "settings.yaml"
        names = "[napari-brats-kd]" if disabled else "[]"
        settings.write_text(f"plugins:\n  disabled_plugins: {names}\n")
        env = {**os.environ, "NAPARI_CONFIG": str(settings)}
        for _ in range(runs):
            out = subprocess.run(
                [sys.executable, "-c", _STARTUP], env=env, capture_output=True, text=True
            )
            times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def wait_until(app, condition, timeout: float = 300.0) -> float:
    """Run Qt's own event loop until ``condition()``; returns the seconds waited.

    As in napari, the loop waits in C++ (without the GIL) between events; a condition checked
    every 10 ms by a timer adds at most that to a measurement. (A Python loop calling
    ``processEvents`` would hold the GIL most of the time and slow the worker thread down.)
    """
    from qtpy.QtCore import QEventLoop, QTimer

    t0 = time.perf_counter()
    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(10)

    def check() -> None:
        if condition() or time.perf_counter() - t0 > timeout:
            loop.quit()

    timer.timeout.connect(check)
    timer.start()
    if not condition():
        loop.exec()
    timer.stop()
    if not condition():
        raise TimeoutError("the widget did not finish in time")
    return time.perf_counter() - t0


def timed_run(app, widget) -> float:
    t0 = time.perf_counter()
    task = widget.run()
    assert task is not None, widget.status.value
    wait_until(app, lambda: not task.is_running)
    assert widget.last_result is not None, widget.status.value
    return time.perf_counter() - t0


def cancel_after(app, widget, delay: float) -> float:
    task = widget.run()
    t_start = time.perf_counter()
    wait_until(app, lambda: time.perf_counter() - t_start >= delay)
    assert task.is_running, "the run ended before Cancel: use a longer run"
    t0 = time.perf_counter()
    widget.cancel_button.changed.emit(True)  # as a click does
    wait_until(app, lambda: not task.is_running and widget.run_button.enabled)
    return time.perf_counter() - t0


def main() -> int:
    case = Path(sys.argv[1])
    result = {
        "startup_enabled": startup_seconds(disabled=False),
        "startup_disabled": startup_seconds(disabled=True),
    }
    from qtpy.QtWidgets import QApplication

    import napari
    from napari_brats_kd._napari.segment_widget import StudentSegmentWidget, TeacherSegmentWidget

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.open(str(case), plugin="napari-brats-kd")
    app.processEvents()

    t0 = time.perf_counter()
    student = StudentSegmentWidget(viewer)
    viewer.window.add_dock_widget(student, name="Segment tumor (student)")
    app.processEvents()
    result["open_widget"] = time.perf_counter() - t0
    result["first_run"] = timed_run(app, student)  # clicked as soon as the widget is there
    result["later_runs"] = [timed_run(app, student) for _ in range(3)]
    result["cancel_student"] = cancel_after(app, student, 0.3)

    teacher = TeacherSegmentWidget(viewer)
    viewer.window.add_dock_widget(teacher, name="Segment tumor (teacher)")
    result["teacher_run"] = timed_run(app, teacher)
    result["cancel_teacher"] = cancel_after(app, teacher, 1.5)
    print(json.dumps(result))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
