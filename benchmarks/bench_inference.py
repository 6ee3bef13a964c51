"""CPU inference benchmark: student vs teacher on one full 240x240x155 four-modality case.

Each model runs in a fresh subprocess (so peak RSS, read with ``resource.getrusage``, belongs to
that model alone) with ``torch.set_num_threads(2)``. The case is a real BraTS case from
``../shared/data/real`` when present, else a 1 mm phantom; it is held in memory as a model-order
array and segmented to a label map with :func:`napari_brats_kd.inference.segment` (brain crop,
normalisation, network, thresholds, paste-back: the whole call a user waits for).

Rows (each through ``segment()``, back end ``torch`` or ``onnxruntime``):

- ``student-small`` / ``student-tiny``: one full-volume pass over the brain crop (default path);
- ``teacher``: the bundle SegResNet, brain crop, one pass (our default for it);
- ``teacher bundle setting``: MONAI's own inference: no crop, one 240x240x160 window, overlap 0.5.

Weights are untrained (random): speed and memory do not depend on them. GFLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` on the exact input of the timed call (per forward).

Usage::

    python benchmarks/bench_inference.py [--runs 5] [--teacher-runs 3] [--case PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "inference_cpu.md"
REAL = HERE.parent.parent / "shared" / "data" / "real"

_BUNDLE = {"strategy": "sliding", "roi_size": [240, 240, 160], "crop_to_brain": False}

ROWS = {
    "student-small, torch": {"kind": "student", "preset": "student-small", "backend": "torch"},
    "student-small, onnxruntime": {
        "kind": "student",
        "preset": "student-small",
        "backend": "onnxruntime",
    },
    "student-tiny, onnxruntime": {
        "kind": "student",
        "preset": "student-tiny",
        "backend": "onnxruntime",
    },
    "teacher, torch": {"kind": "teacher", "backend": "torch"},
    "teacher, onnxruntime": {"kind": "teacher", "backend": "onnxruntime"},
    "teacher bundle setting, torch": {"kind": "teacher", "backend": "torch", "segment": _BUNDLE},
}

#: Rows of a GPU run (``--device cuda``): PyTorch with autocast, as segment() runs on a GPU.
GPU_ROWS = {
    "student-small, torch": ROWS["student-small, torch"],
    "student-small, torch, TTA x8": {
        "kind": "student",
        "preset": "student-small",
        "backend": "torch",
        "segment": {"tta": True},
    },
    "teacher, torch": ROWS["teacher, torch"],
    "teacher bundle setting, torch": ROWS["teacher bundle setting, torch"],
}
ALL_ROWS = {**ROWS, **GPU_ROWS}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _gflops(model, x) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def worker(
    row: str,
    input_path: str,
    runs: int,
    threads: int,
    device: str = "cpu",
    checkpoint: str | None = None,
    backend: str = "auto",
) -> dict:
    """Time one row in this (fresh) process; returns a JSON-able dict.

    ``row`` names an entry of :data:`ALL_ROWS` (untrained network), or, with ``checkpoint``, is
    a free label for that trained model run with ``backend``.
    """
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from napari_brats_kd.inference import brain_bbox, segment
    from napari_brats_kd.models import (
        LoadedModel,
        build_model,
        count_parameters,
        network_stride,
        student_config,
        teacher_config,
    )

    image = np.load(input_path)
    torch.manual_seed(0)
    if checkpoint:
        from napari_brats_kd.models import load_checkpoint

        loaded = load_checkpoint(checkpoint)
        cfg = loaded.config
        spec = {"backend": backend}
    else:
        spec = ALL_ROWS[row]
        cfg = (
            student_config(preset=spec["preset"]) if spec["kind"] == "student" else teacher_config()
        )
        loaded = LoadedModel(build_model(cfg).eval(), cfg)
    rss_before = _maxrss_mb()
    times: list[float] = []
    seg_kw = dict(spec.get("segment", {}))
    info: dict = {}
    seg_kw["backend"] = spec["backend"]
    # warm-up: oneDNN primitive creation, or the ONNX export + session for onnxruntime
    first = segment(image, loaded, device=device, **seg_kw)
    info["first_s"] = first.seconds
    info["backend"] = first.backend
    info["strategy"] = first.strategy
    info["device"] = first.device
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(runs):
        result = segment(image, loaded, device=device, **seg_kw)  # returns numpy: synced
        times.append(result.seconds)
    if device != "cpu":
        info["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        info["gpu_name"] = torch.cuda.get_device_name()
    # FLOPs of the forward the timed call made
    if seg_kw.get("crop_to_brain", True):
        box = brain_bbox(image)
        stride = network_stride(cfg)
        shape = [int(np.ceil((s.stop - s.start) / stride) * stride) for s in box]
    else:
        shape = list(seg_kw["roi_size"])
    info["input"] = "x".join(map(str, shape))
    info["peak_rss_mb"] = _maxrss_mb()  # before the FLOP count's extra forward
    info["gflops"] = _gflops(loaded.model.cpu(), torch.zeros(1, cfg.in_channels, *shape))
    return {
        "row": row,
        "times": times,
        "median_s": statistics.median(times),
        "peak_rss_mb": info.pop("peak_rss_mb", _maxrss_mb()),
        "rss_before_run_mb": rss_before,
        "parameters": count_parameters(loaded.model),
        **info,
    }


def run_in_subprocess(
    row: str,
    input_path: Path,
    runs: int,
    teacher_runs: int,
    threads: int,
    device: str = "cpu",
    checkpoint: Path | None = None,
    backend: str = "auto",
) -> dict | None:
    """:func:`worker` in a fresh process (so its peak RSS is the model's alone); None if it failed."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", row, "--input", str(input_path),
           "--runs", str(runs), "--teacher-runs", str(teacher_runs),
           "--threads", str(threads), "--device", device, "--backend", backend]  # fmt: skip
    if checkpoint is not None:
        cmd += ["--checkpoint", str(checkpoint)]
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"{row}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    res = json.loads(lines[-1][len("RESULT ") :])
    res["load_avg"] = (load_before, os.getloadavg()[0])
    print(f"{row}: median {res['median_s']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB",
          file=sys.stderr)  # fmt: skip
    return res


def load_case_array(case: Path | None) -> tuple:
    """Model-order input of ``case`` (default: the first real case, else a 1 mm phantom)."""
    from napari_brats_kd.labels import BUNDLE_MODALITY_ORDER

    if case is None and REAL.is_dir():
        for candidate in sorted(REAL.iterdir()):
            if candidate.is_dir():
                case = candidate
                break
    if case is not None:
        from napari_brats_kd.io import load_case

        loaded = load_case(case, extra_segmentations=False)
        return loaded.model_input(BUNDLE_MODALITY_ORDER), f"real case {loaded.case_id}"
    from napari_brats_kd.phantom import make_phantom

    return make_phantom(0, spacing=1.0).model_input(BUNDLE_MODALITY_ORDER), "1 mm phantom seed 0"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed student runs (median)")
    parser.add_argument("--teacher-runs", type=int, default=3, help="timed teacher runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", type=Path, default=None, help="case folder (default: real)")
    parser.add_argument("--rows", nargs="*", default=None, help="subset of rows")
    parser.add_argument("--out", type=Path, default=None, help="results markdown file")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--input", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        teacher = args.checkpoint is None and ALL_ROWS[args.worker]["kind"] == "teacher"
        runs = args.teacher_runs if teacher else args.runs
        res = worker(
            args.worker, args.input, runs, args.threads, args.device, args.checkpoint, args.backend
        )
        print("RESULT " + json.dumps(res))
        return 0
    gpu = args.device == "cuda"
    rows = args.rows or list(GPU_ROWS if gpu else ROWS)
    out = args.out or (RESULTS.with_name("inference_gpu.md") if gpu else RESULTS)

    import numpy as np
    import torch

    image, source = load_case_array(args.case)
    if image.shape[1:] != (240, 240, 155):
        print(f"note: case shape {image.shape[1:]} is not 240x240x155", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp()) / "case.npy"
    np.save(tmp, image)
    results = {}
    for row in rows:
        res = run_in_subprocess(row, tmp, args.runs, args.teacher_runs, args.threads, args.device)
        if res is not None:
            results[row] = res
    tmp.unlink()

    def ref(name: str) -> float | None:
        return results[name]["median_s"] if name in results else None

    teacher_crop, teacher_bundle = ref("teacher, torch"), ref("teacher bundle setting, torch")
    if gpu:
        name = next((r["gpu_name"] for r in results.values() if "gpu_name" in r), "GPU")
        where = (
            f"device cuda ({name}), autocast bf16/fp16 as segment() runs on a GPU, torch "
            f"{torch.__version__}"
        )
    else:
        where = (
            f"{args.threads} threads (`torch.set_num_threads({args.threads})`), torch "
            f"{torch.__version__}, {cpu_name()}, {os.cpu_count()} logical CPUs"
        )
    lines = [
        f"# {'GPU' if gpu else 'CPU'} inference benchmark",
        "",
        f"Input: {source}, {'x'.join(map(str, image.shape[1:]))}, 4 modalities, in memory -> "
        f"label map{' (numpy, so GPU timings include the copies back)' if gpu else ''}. "
        f"{where}. "
        "Each row in a fresh subprocess; one warm-up call, then the median of the timed calls. "
        "Untrained (random) weights: speed and memory do not depend on them.",
        "",
        "| model, back end | setting | input to network | params | GFLOPs/forward | median s "
        "| runs | first call s | speed-up vs teacher (crop, torch) / (bundle setting) "
        f"| peak RSS MB |{' peak GPU MB |' if gpu else ''}",
        f"|---|---|---|---|---|---|---|---|---|---|{'---|' if gpu else ''}",
    ]
    for row, r in results.items():
        spec = ALL_ROWS[row]
        kw = spec.get("segment", {})
        setting = (
            "bundle inference: no crop, 1 window 240x240x160, overlap 0.5"
            if "roi_size" in kw
            else "brain crop, one full-volume pass"
            + (", 8 mirrored passes" if kw.get("tta") else "")
        )
        speed = " / ".join(
            f"{t / r['median_s']:.1f}x" if t else "-" for t in (teacher_crop, teacher_bundle)
        )
        gflops = f"{r['gflops']:.0f}" if "gflops" in r else "-"
        gpu_col = f" {r.get('gpu_peak_mb', 0):.0f} |" if gpu else ""
        lines.append(
            f"| {row} | {setting} | {r.get('input', '-')} | {r['parameters'] / 1e6:.2f} M "
            f"| {gflops} | {r['median_s']:.3f} | {len(r['times'])} | {r['first_s']:.2f} "
            f"| {speed} | {r['peak_rss_mb']:.0f} |{gpu_col}"
        )
    loads = ", ".join(
        f"{k}: {v['load_avg'][0]:.1f}->{v['load_avg'][1]:.1f}" for k, v in results.items()
    )
    lines += [
        "",
        "Peak RSS is the whole process (Python, torch, monai, the 4x240x240x155 float32 input of "
        "142 MB and the model; for onnxruntime also the export). Speed-up divides the teacher's "
        "median by the row's median. The first call of an onnxruntime row includes exporting "
        "the graph (done once per model and session).",
        "",
        f"1-minute load average before->after each row (other jobs share this machine): {loads}.",
        "",
        "All timed calls (s): "
        + "; ".join(
            f"{k}: {', '.join(f'{t:.2f}' for t in v['times'])}" for k, v in results.items()
        ),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
