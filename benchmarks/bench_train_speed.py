"""What one training step costs: the student on labels alone against distillation.

Times the steps of the shipped student recipe (``student-small``, 96^3 patches, 2 cases x 2
patches per step, ``cache: memory``, augmentation ``light``) trained two ways on the same cases:

- ``no KD``: labels only (``brats-kd train``);
- ``KD, cached``: label-corrected distillation from the teacher's outputs cached once per case,
  with the soft Dice term (``brats-kd distill --teacher-targets cached --kd-label-correction
  --set kd_dice_weight=1``), as the shipped student was made.

The teacher's outputs are computed first if the cache does not hold them yet (not timed). Each
run trains ``--steps`` steps without validation; the table gives the median duration of the
steps after the first ``--skip`` (DataLoader start-up, allocator warm-up) and the patches per
second that makes. ``--compare SRC`` runs the same measurement, in a subprocess, with another
copy of the package (a ``src`` folder, e.g. of a ``git worktree`` at an older commit) for a
before / after table on one machine::

    git worktree add /tmp/before <commit>
    python benchmarks/bench_train_speed.py --compare /tmp/before/src

Writes ``benchmarks/results/train_speed.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from bench_inference import cpu_name  # noqa: E402

VARIANTS = ("nokd", "kd")
TITLES = {"nokd": "no KD (labels only)", "kd": "KD, cached teacher outputs, label-corrected"}


def _git(*args: str, cwd: Path) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def code_version(src: Path) -> str:
    """Commit of the package copy at ``src`` (``+ changes`` when its tree is not clean)."""
    commit = _git("rev-parse", "--short", "HEAD", cwd=src)
    dirty = _git("status", "--porcelain", "--untracked-files=no", cwd=src)
    return commit + (" + changes" if dirty and dirty != "unknown" else "")


def make_data(folder: Path, n: int) -> Path:
    """``n`` labelled 1 mm phantoms of site A (seeds 0..n-1), made once (again for more)."""
    from napari_brats_kd.phantom import write_phantom_dataset

    done = folder / ".complete"  # holds how many cases were made
    if not done.is_file() or int(done.read_text() or 0) < n:
        write_phantom_dataset(folder, n=n, seed=0, spacing=1.0)
        done.write_text(str(n))
    return folder


def measure(a: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Step times of each variant, with the package that ``import napari_brats_kd`` finds."""
    import torch

    from napari_brats_kd.training import distill, load_config, train_teacher

    torch.set_num_threads(a.threads)
    out: dict[str, dict[str, float]] = {}
    for variant in a.variants:
        run = a.work / "runs" / f"{variant}-{len(out)}-{os.getpid()}"
        settings = [
            f"data_dir={a.data}",
            f"run_dir={run}",
            f"out={run}.safetensors",
            "epochs=1",
            f"steps_per_epoch={a.steps}",
            f"batch_size={a.batch_size}",
            f"samples_per_case={a.samples}",
            f"patch_size={list(a.patch)}",
            "val_fraction=0",
            f"max_cases={a.cases}",
            "cache=memory",
            f"cache_dir={a.work / 'cache'}",
            f"num_workers={a.num_workers}",
            "device=cpu",
            "augment=light",
            "lr=0.002",
            f"seed={a.seed}",
        ]
        # The start event comes just before the first step, progress after every step: the
        # differences are the steps' durations, first step included.
        stamps: list[float] = []

        def progress(done: int, total: int, message: str, stamps: list[float] = stamps) -> None:
            stamps.append(time.perf_counter())

        def on_event(event: dict, stamps: list[float] = stamps) -> None:
            if event.get("type") == "start":
                stamps.append(time.perf_counter())

        if variant == "kd":
            cfg = load_config(
                "distill",
                [*settings, f"teacher={a.teacher}", "model.arch=student-small",
                 "teacher_targets=cached", "kd_label_correction=true", "kd_dice_weight=1",
                 "alpha=0.5", "temperature=2"],
            )  # fmt: skip
            distill(cfg, progress=progress, on_event=on_event)
        else:
            cfg = load_config(
                "teacher", [*settings, "model.kind=student", "model.arch=student-small"]
            )
            train_teacher(cfg, progress=progress, on_event=on_event)
        steps = [b - t for t, b in itertools.pairwise(stamps)][a.skip :]
        if not steps:
            raise SystemExit(f"--steps {a.steps} leaves no step after --skip {a.skip}")
        s = statistics.median(steps)
        out[variant] = {
            "s_per_step": s,
            "patches_per_s": a.batch_size * a.samples / s,
            "timed_steps": len(steps),
        }
        print(f"{variant}: {json.dumps(out[variant])}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter, allow_abbrev=False
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="labelled cases (default: --cases 1 mm phantoms made in --work)",
    )
    p.add_argument("--teacher", type=Path, default=None, help="default: the shipped teacher")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_train_speed"))
    p.add_argument("--cases", type=int, default=6, help="training cases (max_cases)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip", type=int, default=5, help="first steps left out of the median")
    p.add_argument("--patch", type=int, nargs=3, default=[96, 96, 96])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--samples", type=int, default=2, help="patches per case per step")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="a src folder of another copy of the package, measured the same way",
    )
    p.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "train_speed.md")
    a = p.parse_args(argv)  # fmt: skip

    import napari_brats_kd

    if a.teacher is None and "kd" in a.variants:
        from napari_brats_kd.models.registry import shipped_models

        a.teacher = next(m.path for m in shipped_models() if m.role == "teacher")
    if a.data is None:
        a.data = make_data(a.work / "data", a.cases)
    if a.json is not None:  # the --compare subprocess: measure, hand back, done
        package = str(Path(napari_brats_kd.__file__).resolve())
        a.json.write_text(json.dumps({"package": package, "result": measure(a)}))
        return 0

    here = Path(napari_brats_kd.__file__).resolve().parents[1]
    rows = [(code_version(here), measure(a))]
    if a.compare is not None:
        result = a.work / f"compare-{os.getpid()}.json"
        # The child sees --compare too, but --json makes it measure and return before using it.
        forwarded = list(argv if argv is not None else sys.argv[1:])
        env = {**os.environ, "PYTHONPATH": str(a.compare.resolve())}
        subprocess.run(
            [sys.executable, __file__, *forwarded, "--data", str(a.data), "--json", str(result),
             *(["--teacher", str(a.teacher)] if a.teacher is not None else [])],
            env=env, check=True,
        )  # fmt: skip
        compared = json.loads(result.read_text())
        if not Path(compared["package"]).is_relative_to(a.compare.resolve()):
            raise SystemExit(
                f"--compare {a.compare}: the subprocess imported {compared['package']} instead "
                "(is that folder the one holding napari_brats_kd/?)"
            )
        rows.append((code_version(a.compare), compared["result"]))
    write(a, rows, argv if argv is not None else sys.argv[1:])
    return 0


def write(a: argparse.Namespace, rows: list[tuple[str, dict]], argv: list[str]) -> None:
    import torch

    lines = [
        "# Training step cost: no KD against distillation",
        "",
        f"Written by `benchmarks/bench_train_speed.py` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC "
        f"(`{' '.join(['python benchmarks/bench_train_speed.py', *argv])}`). Machine: "
        f"{cpu_name()}, {os.cpu_count()} cores, {a.threads} torch threads, torch "
        f"{torch.__version__}. Data: {a.cases} cases of `{a.data}`; `student-small`, "
        f"{'x'.join(map(str, a.patch))} patches, {a.batch_size} cases x {a.samples} patches per "
        f"step, `cache: memory`, {a.num_workers} DataLoader worker(s), augmentation `light`. "
        f"Median of steps {a.skip + 1}-{a.steps} of each run.",
        "",
        "| code | run | s / step | patches / s | KD / no KD |",
        "|---|---|---|---|---|",
    ]
    for version, result in rows:
        base = result.get("nokd", {}).get("s_per_step")
        for variant in a.variants:
            r = result[variant]
            ratio = f"{r['s_per_step'] / base:.2f}x" if base and variant == "kd" else ""
            lines.append(
                f"| `{version}` | {TITLES[variant]} | {r['s_per_step']:.2f} | "
                f"{r['patches_per_s']:.2f} | {ratio} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
