"""End-to-end segmentation times, as a user meets them: the whole command, the first click.

Every row is a fresh process from a cold user cache (an empty ``NAPARI_BRATS_KD_CACHE``: a first
use), on a real BraTS case from ``../shared/data/real`` (``--case`` to change it):

- **read the four files**: a fresh Python importing nibabel and decoding the four scans; the
  floor any tool that reads NIfTI pays, against which the command is measured;
- ``brats-kd segment CASE -o seg.nii.gz``, the whole command (start-up, reading, model, writing),
  with the student and with ``--model teacher``, and its peak RSS;
- a folder of 8 cases (copies of the first 8 of ``../shared/data/real_labelled``, scans only):
  the whole command divided by 8;
- the labels of the default path (ONNX Runtime, no torch) against PyTorch's on the same case and
  model: voxels that differ;
- with ``--napari`` (under Xvfb): napari's start-up with the plugin enabled and disabled, the
  first Run of "Segment tumor (student)" clicked as soon as the widget opened, later Runs, and
  how long Cancel takes to stop a student and a teacher run.

Prints one table and writes ``benchmarks/results/end_to_end.md``. Usage::

    xvfb-run -a python benchmarks/bench_end_to_end.py --napari     # about 3 minutes on 2 cores
    python benchmarks/bench_end_to_end.py                          # without the napari rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_inference import cpu_name  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
DEFAULT_CASE = SHARED / "real" / "BraTS-GLI-00001-000"
FOLDER_SOURCE = SHARED / "real_labelled"
RESULTS = HERE / "results" / "end_to_end.md"

_READ = (
    "import sys, numpy as np, nibabel as nib\n"
    "[np.asanyarray(nib.load(f).dataobj) for f in sys.argv[1:]]\n"
)


def timed_process(cmd: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process (``os.wait4`` gives its own rusage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    rss_kb = usage.ru_maxrss  # kilobytes on Linux
    return seconds, rss_kb / 1024


def cold_env(root: Path) -> dict:
    """The environment of a first use: an empty user cache of its own."""
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=root))
    return {**os.environ, "NAPARI_BRATS_KD_CACHE": str(cache), "OMP_NUM_THREADS": "2"}


def brats_kd() -> str:
    exe = Path(sys.executable).with_name("brats-kd")
    return str(exe) if exe.exists() else "brats-kd"


def median_run(cmd: list[str], root: Path, runs: int) -> dict:
    times, rss = [], []
    for _ in range(runs):
        seconds, peak = timed_process(cmd, cold_env(root))
        times.append(seconds)
        rss.append(peak)
    return {"seconds": statistics.median(times), "all": times, "rss_mb": max(rss)}


def scan_files(case: Path) -> list[Path]:
    from napari_brats_kd.naming import case_files

    return [Path(p) for p in case_files(case).images.values()]


def make_folder(root: Path, n: int) -> Path:
    """The first ``n`` labelled real cases, scans only (the expert labels stay out)."""
    folder = root / "folder"
    for case in sorted(p for p in FOLDER_SOURCE.iterdir() if p.is_dir())[:n]:
        (folder / case.name).mkdir(parents=True)
        for scan in scan_files(case):
            shutil.copy(scan, folder / case.name / scan.name)
    return folder


def label_differences(case: Path) -> dict[str, int]:
    """Voxels whose label differs between the default (ONNX) path and PyTorch, per model."""
    from napari_brats_kd.inference import segment
    from napari_brats_kd.io import load_case

    scans = load_case(case, extra_segmentations=False, segmentation=False)
    out = {}
    for model in ("student", "teacher"):
        lean = segment(scans, model, device="cpu")
        ref = segment(scans, model, device="cpu", backend="torch")
        assert lean.backend == "onnxruntime" and ref.backend == "torch"
        out[model] = int((lean.labels != ref.labels).sum())
    return out


def cli_rows(case: Path, runs: int, teacher_runs: int, folder_cases: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        files = [str(p) for p in scan_files(case)]
        rows = {"read": median_run([sys.executable, "-c", _READ, *files], root, runs)}
        out = root / "seg.nii.gz"
        base = [brats_kd(), "segment", str(case), "-o", str(out), "--overwrite"]
        rows["student"] = median_run(base, root, runs)
        rows["teacher"] = median_run([*base, "--model", "teacher"], root, teacher_runs)
        if FOLDER_SOURCE.is_dir():
            folder = make_folder(root, folder_cases)
            cmd = [brats_kd(), "segment", str(folder), "-o", str(root / "segs"), "--overwrite"]
            rows["folder"] = median_run(cmd, root, max(1, runs // 2))
            rows["folder"]["cases"] = folder_cases
        rows["differences"] = label_differences(case)
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def napari_rows(case: Path) -> dict | None:
    """The napari measurements, in a fresh process under the current display."""
    if not os.environ.get("DISPLAY") and shutil.which("xvfb-run") is None:
        print("no display and no xvfb-run: napari rows skipped", file=sys.stderr)
        return None
    cmd = [sys.executable, str(Path(__file__).with_name("_napari_segment_timings.py")), str(case)]
    if not os.environ.get("DISPLAY"):
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", *cmd]
    root = Path(tempfile.mkdtemp(prefix="bench-e2e-napari-"))
    try:
        proc = subprocess.run(cmd, env=cold_env(root), capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        print(f"napari timings failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(line)


def table(cli: dict, gui: dict | None) -> str:
    read = cli["read"]["seconds"]
    student, teacher = cli["student"], cli["teacher"]
    lines = [
        "| what the user does | time | bar | peak RSS |",
        "|---|---|---|---|",
        f"| a fresh Python reads the four files (floor) | {read:.2f} s | | "
        f"{cli['read']['rss_mb']:.0f} MB |",
        f"| `brats-kd segment CASE -o seg.nii.gz` (student), whole command | "
        f"{student['seconds']:.2f} s ({student['seconds'] / read:.2f}x the floor) | "
        f"<= 4x the floor, about 2 s | {student['rss_mb']:.0f} MB (bar <= 1 GB) |",
        f"| the same with `--model teacher` | {teacher['seconds']:.2f} s "
        f"({teacher['seconds'] / student['seconds']:.2f}x the student) | >= 5x the student | "
        f"{teacher['rss_mb']:.0f} MB |",
    ]
    if "folder" in cli:
        folder = cli["folder"]
        per_case = folder["seconds"] / folder["cases"]
        lines.append(
            f"| a folder of {folder['cases']} cases, student, per case | {per_case:.2f} s "
            f"({folder['seconds']:.1f} s in all) | <= 1.5 s | {folder['rss_mb']:.0f} MB |"
        )
    diffs = cli["differences"]
    lines.append(
        f"| labels: ONNX path vs PyTorch, voxels that differ | student {diffs['student']}, "
        f"teacher {diffs['teacher']} (of 8.9 M) | a handful | |"
    )
    if gui:
        lines += [
            f"| napari start-up, plugin enabled / disabled | {gui['startup_enabled']:.2f} s / "
            f"{gui['startup_disabled']:.2f} s | not slower | |",
            f"| napari: opening 'Segment tumor (student)' | {gui['open_widget']:.2f} s | | |",
            f"| napari: first Run, clicked as the widget opened | {gui['first_run']:.2f} s | "
            "<= 3 s | |",
            f"| napari: later Runs (median of {len(gui['later_runs'])}) | "
            f"{statistics.median(gui['later_runs']):.2f} s | <= 1.5 s | |",
            f"| napari: Cancel, student / teacher run | {gui['cancel_student']:.2f} s / "
            f"{gui['cancel_teacher']:.2f} s | <= 1 s | |",
            f"| napari: teacher Run | {gui['teacher_run']:.2f} s | | |",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE, help="a real case folder")
    parser.add_argument("--runs", type=int, default=5, help="runs per student row (median)")
    parser.add_argument("--teacher-runs", type=int, default=3, help="runs of the teacher row")
    parser.add_argument("--folder-cases", type=int, default=8, help="cases in the folder row")
    parser.add_argument("--napari", action="store_true", help="also the napari rows (Xvfb)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if not args.case.is_dir():
        print(f"{args.case} not found: pass --case", file=sys.stderr)
        return 2
    cli = cli_rows(args.case, args.runs, args.teacher_runs, args.folder_cases)
    gui = napari_rows(args.case) if args.napari else None
    text = table(cli, gui)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(text)
    print(f"\n{machine}; load average {load:.2f} at the end")
    if not args.no_write:
        RESULTS.write_text(
            "# End-to-end segmentation times\n\n"
            f"Made by `python benchmarks/bench_end_to_end.py{' --napari' if gui else ''}` on "
            f"{args.case.name}; {machine}; each row a fresh process from a cold user cache, "
            f"median of {args.runs} (teacher {args.teacher_runs}); load average {load:.2f} at "
            "the end.\n\n"
            f"{text}\n\nAll runs (s): "
            + json.dumps(
                {k: v["all"] for k, v in cli.items() if isinstance(v, dict) and "all" in v}
            )
            + "\n"
        )
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
