"""How responsive napari stays while the train widget trains: thread worker vs subprocess.

Issue 5 asks for work off the GUI thread, "thread worker, or a subprocess if that keeps napari more
responsive: measure both". This benchmark runs the same short distillation (tiny phantoms, a tiny
teacher, a student-tiny) in a real napari window, alternately

- **thread**: the way the widget does it: the real "Train student (distillation)" dock widget, its
  Start button path (``TrainWidget.start``: a napari thread worker; engine events relayed to the
  live plot through a Qt signal);
- **subprocess**: the same config (the widget's ``build_config``) run by
  ``python -m napari_brats_kd.cli distill`` in a :class:`~qtpy.QtCore.QProcess`, the GUI polling
  the run folder's ``log.csv`` with a 250 ms QTimer and drawing its rows in the same plot widget,

and measures the Qt event loop with a 20 ms QTimer: every gap between two ticks is time the GUI
did not answer. It reports the longest and 99th-percentile gap, the gaps over 100 ms and the wall
time from Start to the result, prints a markdown table and writes
``benchmarks/results/widget_responsiveness.md`` with the machine and its load average.

Run under Xvfb (it opens a real napari window)::

    xvfb-run -a python benchmarks/bench_widget_responsiveness.py

Options size the run (``--help``); the defaults take about 20-30 s per run on two loaded cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from bench_inference import cpu_name  # noqa: E402

RESULTS = ROOT / "results" / "widget_responsiveness.md"

#: A tiny SegResNet teacher (stride 8), as in the widget's GUI tests.
TINY_TEACHER = {"init_filters": 8, "blocks_down": [1, 1, 1, 1], "blocks_up": [1, 1, 1]}

#: Interval of the probing QTimer (ms) and what counts as a stall the user notices (s).
TICK_MS = 20
STALL_S = 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spacing", type=float, default=4.0, help="phantom voxel size in mm")
    p.add_argument("--cases", type=int, default=4, help="phantom cases (one validates)")
    p.add_argument("--patch", type=int, default=32, help="edge of the cubic patches")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps", type=int, default=12, help="steps per epoch")
    p.add_argument("--val-every", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="runs of each way, alternating")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=RESULTS, help="markdown file to write")
    return p.parse_args(argv)


def make_data(root: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """Phantom cases and a tiny teacher (one short epoch: its quality does not matter here)."""
    from napari_brats_kd.phantom import write_phantom_dataset
    from napari_brats_kd.training import load_config, train_teacher

    data = root / "data"
    write_phantom_dataset(data, n=args.cases, seed=0, spacing=args.spacing)
    teacher = root / "tiny_teacher.safetensors"
    cfg = load_config(
        "teacher",
        {
            "data_dir": str(data),
            "run_dir": str(root / "teacher_run"),
            "out": str(teacher),
            "epochs": 1,
            "steps_per_epoch": 1,
            "batch_size": 1,
            "patch_size": [16, 16, 16],
            "num_workers": 0,
            "val_fraction": 0.25,
            "model.arch_args": {**TINY_TEACHER, "dropout_prob": None},
            "model.name": "tiny-teacher",
        },
    )
    train_teacher(cfg)  # also does the engine's one-off lazy imports before anything is timed
    return data, teacher


class Probe:
    """Stamps each tick of a QTimer; gaps between stamps are the event loop's stalls."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.stamps: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.stamps.append(time.perf_counter()))
        self.timer.start()

    def gaps(self, t0: float, t1: float) -> np.ndarray:
        """Gaps (s) between ticks from ``t0`` to ``t1`` (both ends count as ticks)."""
        during = [t0] + [s for s in self.stamps if t0 < s < t1] + [t1]
        return np.diff(during)


def run_event_loop(until_quit) -> None:
    """Run a nested Qt event loop until ``until_quit(loop.quit)`` makes it stop."""
    from qtpy.QtCore import QEventLoop

    loop = QEventLoop()
    until_quit(loop.quit)
    loop.exec_()


def configure(widget, data: Path, teacher: Path, runs: Path, args: argparse.Namespace) -> None:
    widget.mode_picker.value = "Distil student"
    widget.use_viewer_cases.value = False
    widget.data_dir.value = data
    assert widget.load_model(teacher) == "tiny-teacher"
    widget.student_preset.value = "student-tiny"
    widget.epochs.value = args.epochs
    widget.patch_size.value = args.patch
    widget.batch_size.value = 1
    widget.augment.value = "none"
    widget.output_dir.value = runs
    widget.extra.value = (
        f"steps_per_epoch={args.steps}; val_every={args.val_every}; samples_per_case=2; "
        "warmup_epochs=0; num_workers=0; val_fraction=0.25"
    )


def run_thread(widget, probe: Probe) -> dict:
    """The widget's own path: Start -> napari thread worker -> result."""
    t0 = time.perf_counter()
    task = widget.start()
    if task is None:
        raise RuntimeError("the widget refused to start (see the notifications)")
    run_event_loop(lambda quit_: task.worker.finished.connect(quit_))
    t1 = time.perf_counter()
    result = widget.last_result
    if result is None or result.stopped:
        raise RuntimeError("the thread run did not finish")
    return {"t0": t0, "t1": t1, "epochs": result.epochs_done, "points": widget.plot.n_points}


def run_subprocess(widget, probe: Probe, work: Path, n: int) -> dict:
    """The same config in ``python -m napari_brats_kd.cli distill``; the GUI polls log.csv."""
    from qtpy.QtCore import QProcess, QTimer

    from napari_brats_kd._napari.train_feedback import read_log as _read_log
    from napari_brats_kd.labels import REPORT_REGIONS
    from napari_brats_kd.training import save_config

    run_dir = work / f"subprocess-run-{n}"
    cfg = widget.build_config(run_dir)
    config = save_config(cfg, work / f"subprocess-{n}.yaml")
    plot = widget.plot
    plot.clear()
    seen = {"rows": 0}

    def poll() -> None:
        # What a subprocess-based widget would do: show the run's log rows as they appear.
        rows = _read_log(run_dir)
        for row in rows[seen["rows"] :]:
            epoch, step = int(float(row["epoch"])), int(float(row["step"]))
            plot.add_epoch(epoch, step, float(row["loss"]))
            if row.get("val_mean_dice") not in ("", None):
                dice = {r: float(row[f"val_dice_{r}"]) for r in REPORT_REGIONS}
                plot.add_validation(epoch, dice)
            widget.progress_bar.max = int(cfg.epochs)
            widget.progress_bar.value = epoch
            widget.status.value = f"Epoch {epoch}/{cfg.epochs} (subprocess)"
        seen["rows"] = len(rows)

    timer = QTimer()
    timer.setInterval(250)
    timer.timeout.connect(poll)
    proc = QProcess()
    proc.setStandardOutputFile(str(work / f"subprocess-{n}.log"))
    proc.setStandardErrorFile(str(work / f"subprocess-{n}.err"))
    argv = ["-m", "napari_brats_kd.cli", "distill", str(cfg.data_dir), "--config", str(config)]
    t0 = time.perf_counter()
    timer.start()
    proc.start(sys.executable, argv)

    def wire(quit_) -> None:
        proc.finished.connect(lambda *_: quit_())

    run_event_loop(wire)
    poll()
    timer.stop()
    t1 = time.perf_counter()
    if proc.exitCode() != 0:
        err = (work / f"subprocess-{n}.err").read_text()[-2000:]
        raise RuntimeError(f"the subprocess failed (exit {proc.exitCode()}):\n{err}")
    return {"t0": t0, "t1": t1, "epochs": seen["rows"], "points": plot.n_points}


def summarise(way: str, n: int, probe: Probe, run: dict) -> dict:
    gaps = probe.gaps(run["t0"], run["t1"])
    # When each stall ended, in seconds after Start: tells start-up and wrap-up from training.
    ends = np.cumsum(gaps)
    return {
        "stall_at": [float(e) for e, g in zip(ends, gaps, strict=True) if g > STALL_S],
        "way": way,
        "run": n,
        "wall_s": run["t1"] - run["t0"],
        "max_ms": float(gaps.max()) * 1000,
        "p99_ms": float(np.percentile(gaps, 99)) * 1000,
        "stalls": int((gaps > STALL_S).sum()),
        "ticks": len(gaps),
        "epochs": run["epochs"],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| way | run | wall time (s) | max gap (ms) | p99 gap (ms) | gaps > 100 ms "
        "(ending at s after Start) | ticks |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        at = f" ({', '.join(f'{t:.1f}' for t in r['stall_at'])})" if r["stall_at"] else ""
        lines.append(
            f"| {r['way']} | {r['run']} | {r['wall_s']:.1f} | {r['max_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['stalls']}{at} | {r['ticks']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_widget_"))
    # Settings and session models of this benchmark stay out of the user's.
    from napari_brats_kd._napari._settings import CONFIG_DIR_ENV

    os.environ[CONFIG_DIR_ENV] = str(work / "config")
    print(f"Preparing phantoms and a tiny teacher in {work} ...", flush=True)
    data, teacher = make_data(work, args)

    from qtpy.QtCore import QTimer

    import napari

    viewer = napari.Viewer(show=True)
    _dock, widget = viewer.window.add_plugin_dock_widget(
        "napari-brats-kd", "Train student (distillation)"
    )
    configure(widget, data, teacher, work / "runs", args)
    probe = Probe()
    # Let the window settle (first paint, dock layout) before anything is measured.
    run_event_loop(lambda quit_: QTimer.singleShot(1000, quit_))

    rows = []
    for n in range(1, args.repeats + 1):
        for way in ("thread", "subprocess"):
            print(f"Run {n}: {way} ...", flush=True)
            if way == "thread":
                run = run_thread(widget, probe)
            else:
                run = run_subprocess(widget, probe, work, n)
            rows.append(summarise(way, n, probe, run))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    load_after = os.getloadavg()
    probe.timer.stop()
    viewer.close()

    steps = args.epochs * args.steps
    text = "\n".join(
        [
            "# Train widget: napari's responsiveness, thread worker vs subprocess",
            "",
            "Made by `xvfb-run -a python benchmarks/bench_widget_responsiveness.py "
            + " ".join(argv if argv is not None else sys.argv[1:])
            + "`.",
            "",
            f"Machine: {cpu_name()}, {os.cpu_count()} logical cores, {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads).",
            f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load_before)}; "
            f"after: {', '.join(f'{v:.2f}' for v in load_after)}.",
            "",
            f"Run: distillation of student-tiny from a tiny SegResNet teacher on {args.cases} "
            f"phantom cases at {args.spacing:g} mm, {args.patch}^3 patches, {args.epochs} epochs "
            f"x {args.steps} steps ({steps} steps), validation every {args.val_every} epochs. "
            "The event loop is probed with a 20 ms QTimer; a gap is the time between two ticks "
            "(20 ms when the GUI is idle). Wall time: Start to result (for the subprocess "
            "including its start-up: importing torch, MONAI and the teacher).",
            "",
            table(rows),
            "",
        ]
    )
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"Written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
