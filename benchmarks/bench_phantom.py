"""Speed and memory of phantom generation: seconds per case and peak RSS per grid size.

Each size runs in a fresh subprocess (one BLAS / OpenMP thread) so that its peak RSS is its own.
Times are the median over several seeds after one warm-up case (which pays for loading the anatomy
asset): wall-clock and CPU seconds (the CPU column is what a busy, shared machine cannot inflate);
"write" is one whole case made and saved as five gzipped NIfTI files::

    python benchmarks/bench_phantom.py [--seeds 5] [--spacings 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

_CHILD = r"""
import json, resource, statistics, sys, tempfile, time
from napari_brats_kd.phantom import make_phantom, write_phantom_dataset

spacing, n_seeds, site = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
make_phantom(999, site, spacing=spacing)  # warm-up: asset loading, imports
times, cpu = [], []
for seed in range(n_seeds):
    t, c = time.perf_counter(), time.process_time()
    case = make_phantom(seed, site, spacing=spacing)
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    write_phantom_dataset(tmp, n=1, seed=0, site=site, spacing=spacing)
    write = time.perf_counter() - t
print(json.dumps({
    "shape": list(case.reference.file_shape),
    "median_s": statistics.median(times),
    "median_cpu_s": statistics.median(cpu),
    "min_s": min(times),
    "max_s": max(times),
    "write_s": write,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def run(spacing: float, seeds: int, site: str) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(spacing), str(seeds), site],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="cases timed per size (default 5)")
    parser.add_argument("--spacings", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--sites", nargs="+", default=["A", "B"])
    args = parser.parse_args(argv)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
        f"Python {platform.python_version()}; one thread per process"
    )
    header = (
        f"{'site':<5}{'spacing':>8}  {'shape':<14}{'median s':>9}{'cpu s':>7}"
        f"{'min s':>8}{'max s':>8}{'+write s':>9}{'peak RSS MB':>12}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for site in args.sites:
        for spacing in args.spacings:
            r = run(spacing, args.seeds, site)
            rows.append({"site": site, "spacing": spacing, **r})
            shape = "x".join(str(v) for v in r["shape"])
            print(
                f"{site:<5}{spacing:>8g}  {shape:<14}{r['median_s']:>9.3f}{r['median_cpu_s']:>7.3f}"
                f"{r['min_s']:>8.3f}{r['max_s']:>8.3f}{r['write_s']:>9.3f}{r['peak_rss_mb']:>12.0f}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
