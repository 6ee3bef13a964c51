"""Training benchmark on phantoms: teacher, KD vs no-KD student, domain adaptation, cross-modal.

Trains on synthetic BraTS phantoms (exact labels) and evaluates on held-out phantom seeds with the
same ``segment()`` users run, then prints a table and writes ``benchmarks/results/training.md``.

Small on CPU (the defaults: 4 mm phantoms, 32^3 patches, a few epochs)::

    python benchmarks/bench_training.py

Bigger on a GPU::

    python benchmarks/bench_training.py --spacing 2 --patch 96 96 64 --val-roi 128 128 80 \\
        --n-train 24 --teacher-epochs 30 --student-epochs 20 --steps 20 --device cuda \\
        --num-workers 8 --save-dir /tmp/models

What is measured (all on held-out seeds):

1. teacher (bundle SegResNet) mean Dice / HD95 for WT, TC, ET on site A;
2. student without KD (labels only) vs the same student distilled, same budget, site A;
3. domain adaptation: the distilled student vs one also distilled on unlabelled site-B phantoms,
   both evaluated on site B;
4. cross-modal: a T1c + FLAIR student distilled from the 4-modality teacher, site A;
5. training throughput (patches/s) of each run on the device used.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
REGIONS = ("WT", "TC", "ET")


def _write_one(args: tuple) -> None:
    from napari_brats_kd.phantom import write_phantom_dataset

    out, seed, site, spacing = args
    write_phantom_dataset(out, n=1, seed=seed, site=site, spacing=spacing)


def make_data(root: Path, a: argparse.Namespace) -> dict[str, Path]:
    """Phantom sets: train (A), test (A), unlabelled (B), test (B); disjoint seeds."""
    sets = {
        "train": (range(0, a.n_train), "A"),
        "test_A": (range(1000, 1000 + a.n_test), "A"),
        "unlab_B": (range(2000, 2000 + a.n_unlabeled), "B"),
        "test_B": (range(3000, 3000 + a.n_test), "B"),
    }
    jobs = []
    for name, (seeds, site) in sets.items():
        for s in seeds:
            jobs.append((root / name, s, site, a.spacing))
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max(1, a.data_workers)) as pool:
        list(pool.map(_write_one, jobs))
    # The unlabelled pool must really be unlabelled.
    for seg in (root / "unlab_B").rglob("*seg.nii.gz"):
        seg.unlink()
    print(f"phantoms: {len(jobs)} cases in {time.perf_counter() - t0:.1f} s", flush=True)
    return {name: root / name for name in sets}


def evaluate(ckpt: Path, data: Path, device: str) -> dict[str, float]:
    """Mean Dice and HD95 per region of a checkpoint over the cases in ``data``."""
    from napari_brats_kd.inference import segment
    from napari_brats_kd.io import find_cases, load_case
    from napari_brats_kd.metrics import evaluate_labels
    from napari_brats_kd.models import load_checkpoint

    loaded = load_checkpoint(ckpt)
    dice = {r: [] for r in REGIONS}
    hd = {r: [] for r in REGIONS}
    for path in find_cases(data):
        case = load_case(path)
        res = segment(case, loaded, device=device)
        m = evaluate_labels(
            res.labels,
            case.seg.data,
            res.convention,
            spacing=case.reference.scale,
            gt_convention=case.convention,
            per_class=False,
        )
        for r in REGIONS:
            dice[r].append(m.dice[r])
            hd[r].append(m.hd95[r])
    out = {f"dice_{r}": float(np.mean(dice[r])) for r in REGIONS}
    out.update({f"hd95_{r}": float(np.mean(hd[r])) for r in REGIONS})
    out["dice_mean"] = float(np.mean([out[f"dice_{r}"] for r in REGIONS]))
    return out


def common_overrides(a: argparse.Namespace, run: Path, epochs: int) -> list[str]:
    return [
        f"run_dir={run}",
        f"out={run}.safetensors",
        f"epochs={epochs}",
        f"steps_per_epoch={a.steps}",
        f"batch_size={a.batch_size}",
        f"samples_per_case={a.samples}",
        f"patch_size={list(a.patch)}",
        f"val_roi_size={list(a.val_roi)}",
        f"val_every={a.val_every}",
        "val_fraction=0.15",
        f"num_workers={a.num_workers}",
        f"device={a.device}",
        f"augment={a.augment}",
        "warmup_epochs=1",
        f"seed={a.seed}",
    ]


def _arg_text(value: object) -> str:
    """A parsed argument as it is typed on the command line."""
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    text = str(value)
    return f"'{text}'" if any(c in text for c in ' {}"') else text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_training"))
    p.add_argument("--spacing", type=float, default=4.0)
    p.add_argument("--n-train", type=int, default=8)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--n-unlabeled", type=int, default=6)
    p.add_argument("--patch", type=int, nargs=3, default=[32, 32, 32])
    p.add_argument("--val-roi", type=int, nargs=3, default=[64, 64, 48])
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--student-epochs", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="steps per epoch")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--samples", type=int, default=2, help="patches per case per step")
    p.add_argument("--val-every", type=int, default=2)
    p.add_argument("--teacher-arch", default="segresnet")
    p.add_argument("--teacher-args", default="{}", help="JSON arch_args overrides")
    p.add_argument("--student", default="student-small")
    p.add_argument("--augment", default="light")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--data-workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-dir", type=Path, default=None, help="copy final checkpoints here")
    p.add_argument("--results", type=Path, default=ROOT / "results" / "training.md")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    from napari_brats_kd.training import distill, load_config, train_teacher

    if a.work.exists():
        shutil.rmtree(a.work)
    a.work.mkdir(parents=True)
    data = make_data(a.work / "data", a)
    runs = a.work / "runs"
    rows: dict[str, dict] = {}
    t_start = time.perf_counter()

    def record(name: str, result, test: Path, extra: str = "") -> None:
        ckpt = result.out
        metrics = evaluate(ckpt, test, a.device)
        pps = float(np.mean([h["patches_per_s"] for h in result.history[1:] or result.history]))
        from napari_brats_kd.models import count_parameters, load_checkpoint

        n_params = count_parameters(load_checkpoint(ckpt).model)
        rows[name] = {
            **metrics,
            "patches_per_s": pps,
            "params": n_params,
            "test": test.name,
            "note": extra,
            "train_s": sum(h["epoch_time_s"] for h in result.history),
        }
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[name].items()}
        print(f"{name:<24} {json.dumps(shown)}", flush=True)
        if a.save_dir is not None:
            a.save_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ckpt, a.save_dir / f"{name}.safetensors")
        write_results(a, rows, time.perf_counter() - t_start)

    # 1. teacher
    teacher_run = runs / "teacher"
    cfg = load_config(
        "teacher",
        [f"data_dir={data['train']}", f"model.arch={a.teacher_arch}",
         f"model.arch_args={a.teacher_args}", "lr=1e-3",
         *common_overrides(a, teacher_run, a.teacher_epochs)],
    )  # fmt: skip
    res = train_teacher(cfg)
    record("teacher", res, data["test_A"])
    teacher = res.out

    def student(name: str, kd: bool, test: Path, *extra: str) -> None:
        base = [f"data_dir={data['train']}", "model.kind=student", f"model.arch={a.student}",
                "lr=2e-3", *common_overrides(a, runs / name, a.student_epochs), *extra]  # fmt: skip
        if kd:
            r = distill(load_config("distill", [f"teacher={teacher}", *base]))
        else:
            r = train_teacher(load_config("teacher", base))
        record(name, r, test)

    # 2. KD vs no KD (same student, same steps)
    student("student_noKD", False, data["test_A"])
    student("student_KD", True, data["test_A"], "alpha=0.5", "temperature=2.0")
    # 3. domain adaptation, evaluated on site B
    on_b = evaluate(runs / "student_KD.safetensors", data["test_B"], a.device)
    rows["student_KD_on_B"] = {**on_b, "test": "test_B", "note": "not adapted"}
    # unlabeled_weight: the unlabelled cases per labelled one that the README's rows were
    # measured with (the pools were then drawn in proportion to their sizes).
    n_labelled = len(json.loads((runs / "student_KD" / "split.json").read_text())["train"])
    student("student_KD_adaptB", True, data["test_B"], "alpha=0.5", "temperature=2.0",
            f"unlabeled_dir={data['unlab_B']}",
            f"unlabeled_weight={a.n_unlabeled / n_labelled}")  # fmt: skip
    # 4. cross-modal student (T1c + FLAIR)
    student("student_t1c_flair_KD", True, data["test_A"], "alpha=0.5", "temperature=2.0",
            "model.modalities=[t1c,flair]")  # fmt: skip
    write_results(a, rows, time.perf_counter() - t_start)
    return 0


def write_results(a: argparse.Namespace, rows: dict[str, dict], total_s: float) -> None:
    dev = a.device
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = f"{dev} ({torch.cuda.get_device_name(0)})"
    lines = [
        "# Training benchmark (phantoms)",
        "",
        f"Written by `benchmarks/bench_training.py` on {time.strftime('%Y-%m-%d %H:%M')} UTC; "
        f"device {dev}, host {platform.machine()} with {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, python {sys.version.split()[0]}.",
        "",
        f"Settings: phantoms at {a.spacing} mm, {a.n_train} training cases (site A; 15% of them "
        f"held for validation), {a.n_test} held-out test cases per site, {a.n_unlabeled} "
        f"unlabelled site-B cases; patches {a.patch}, batch {a.batch_size} cases x {a.samples} "
        f"patches, {a.steps} steps/epoch, teacher {a.teacher_epochs} epochs "
        f"({a.teacher_arch} {a.teacher_args}), students {a.student_epochs} epochs ({a.student}), "
        f"augmentation {a.augment}. Total wall time {total_s:.0f} s.",
        "",
        # Every argument, defaults included, so that the run can be repeated exactly.
        "Command: `python benchmarks/bench_training.py "
        + " ".join(
            f"--{k.replace('_', '-')} {_arg_text(v)}"
            for k, v in sorted(vars(a).items())
            if v is not None
        )
        + "`",
        "",
        "| model | test set | params | Dice WT | Dice TC | Dice ET | mean Dice | HD95 WT | "
        "HD95 TC | HD95 ET | patches/s | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():

        def f(k: str, fmt: str = "{:.3f}", r: dict = r) -> str:
            return fmt.format(r[k]) if r.get(k) is not None else "-"

        lines.append(
            f"| {name} | {r.get('test', '')} | {f('params', '{:,}')} | {f('dice_WT')} | "
            f"{f('dice_TC')} | {f('dice_ET')} | {f('dice_mean')} | {f('hd95_WT', '{:.1f}')} | "
            f"{f('hd95_TC', '{:.1f}')} | {f('hd95_ET', '{:.1f}')} | "
            f"{f('patches_per_s', '{:.1f}')} | {f('train_s', '{:.0f}')} |"
        )
    lines += [
        "",
        "HD95 in mm (BraTS convention: 373.13 when exactly one of prediction and truth is empty). "
        "`student_KD_on_B` is the site-A-distilled student evaluated on site B without adaptation; "
        "compare it with `student_KD_adaptB` (also distilled on unlabelled site-B phantoms).",
    ]
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
