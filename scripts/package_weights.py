"""Copy the models of a `scripts/train_shipped_models.sh` run into the package, with model cards.

    python scripts/package_weights.py runs/shipped

Writes into ``src/napari_brats_kd/weights/``:

- ``teacher.safetensors`` (weights stored in fp16, half the size; loaded back as fp32) and
  ``student_phantom.safetensors`` (fp32, shipped as ``student-phantom``: the real-data
  ``student`` of ``scripts/package_real_weights.py`` is fine-tuned from it), each with its
  held-out metrics and a "demo, not clinical" description in the embedded model config;
- ``teacher.md`` and ``student_phantom.md``, the model cards (data, config, seed, training time,
  hardware, held-out metrics, limits);
- ``teacher.onnx`` and ``student_phantom.onnx``, the ONNX graphs ``segment`` runs without torch
  (checked against PyTorch here and by ``tests/test_lean_inference.py``);
- ``index.json`` entries, so ``resolve_model("teacher")`` and the Segment widgets find them.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from napari_brats_kd.export import write_graph
from napari_brats_kd.models import load_checkpoint, save_checkpoint
from napari_brats_kd.models.networks import count_parameters
from napari_brats_kd.models.registry import INDEX_FILE, WEIGHTS_DIR

REGIONS = ("WT", "TC", "ET")
DISCLAIMER = (
    "Demo model trained on synthetic phantoms (MNI anatomy with simulated tumours), not on "
    "patients: not for clinical use. For real data, train your own teacher (or load the MONAI "
    "bundle's) and distil."
)
SHIPPED = {
    # name in the package -> (checkpoint stem in the run folder, role, stored dtype, one line)
    # The phantom student ships as student-phantom: `student` is the one fine-tuned on real
    # cases (scripts/package_real_weights.py), which starts from this one.
    "student-phantom": (
        "student_corrected",  # the default of --student-stem: the label-corrected student
        "student",
        None,
        "Student-small (0.44 M parameters, ~1 s per case on CPU)",
    ),
    "teacher": ("teacher", "teacher", torch.float16, None),  # None: described from its config
}


def describe_teacher(loaded) -> str:
    """One line naming the teacher's network, e.g. "Teacher: `segresnet` (4.7 M parameters)"."""
    c = loaded.config
    return (
        f"Teacher: `{c.preset or c.arch}` ({count_parameters(loaded.model) / 1e6:.1f} M parameters)"
    )


def held_out(run: Path, stem: str) -> dict:
    """Per-site and overall mean Dice / HD95 from ``scores_<stem>_<site>.csv``."""
    out: dict = {}
    every: list[dict] = []
    for path in sorted(run.glob(f"scores_{stem}_*.csv")):
        if "_" in path.stem[len(f"scores_{stem}_") :]:
            continue  # another model whose name starts with this one (student_nokd)
        with path.open() as fh:
            rows = [r for r in csv.DictReader(fh) if r["case_id"] not in ("mean", "std", "median")]
        every += rows
        out[f"site {path.stem.rsplit('_', 1)[-1]}"] = _mean(rows)
    out["all"] = _mean(every)
    return out


def _mean(rows: list[dict]) -> dict:
    d = {f"dice_{g}": float(np.mean([float(r[f"dice_{g}"]) for r in rows])) for g in REGIONS}
    d.update({f"hd95_{g}": float(np.mean([float(r[f"hd95_{g}"]) for r in rows])) for g in REGIONS})
    d["dice_mean"] = float(np.mean([d[f"dice_{g}"] for g in REGIONS]))
    d["n_cases"] = len(rows)
    return d


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def model_card(
    name: str,
    role: str,
    loaded,
    run: Path,
    stem: str,
    metrics: dict,
    hardware: str | None,
    note: str | None = None,
) -> str:
    run_dir = run / f"{stem}_run"
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    with (run_dir / "log.csv").open() as fh:
        log = list(csv.DictReader(fh))
    train_min = sum(float(r["epoch_time_s"]) for r in log) / 60
    split = json.loads((run_dir / "split.json").read_text())
    prov = loaded.config.provenance
    c = loaded.config
    on_gpu = str(prov.get("device", "cpu")).startswith("cuda")
    if hardware is None:
        hardware = (
            "a CUDA GPU (not named: pass --hardware)"
            if on_gpu
            else f"{_cpu_name()} ({torch.get_num_threads()} threads, no GPU)"
        )
    length = f"{cfg['epochs']} epochs x {cfg['steps_per_epoch']} steps"
    if cfg.get("max_minutes"):
        length = (
            f"{log[-1]['step']} steps in {len(log)} epochs of up to {cfg['steps_per_epoch']} (a "
            f"{cfg['max_minutes']:g}-minute budget, `max_minutes`, ended it; the learning rate was "
            "paced to it)"
        )
    lines = [
        f"# Model card: shipped `{name}` (napari-brats-kd)",
        "",
        f"**{DISCLAIMER}**",
        "",
        "## What it is",
        f"- Role: {role}. Architecture: `{c.arch}` {json.dumps(c.arch_args)}; "
        f"{count_parameters(loaded.model):,} parameters"
        + ("; weights stored in fp16 (loaded as fp32)." if role == "teacher" else "."),
        f"- Input: {', '.join(c.modalities)} (this channel order), z-score normalised over the "
        f"brain; output: sigmoid channels {', '.join(c.regions)} (BraTS regions), written as "
        f"labels in the `{c.convention}` convention.",
        "- Made with `bash scripts/train_shipped_models.sh` (the project's own `brats-kd phantom`, "
        "`brats-kd train` and `brats-kd distill`), packaged by `scripts/package_weights.py`.",
        "",
        "## Data",
        f"- Training: {len(split['train'])} phantom cases, validation: {len(split['val'])} "
        "(seeded split of the same folder), from `brats-kd phantom` at 1 mm (240x240x155): "
        "sites A, B and C (different contrast, bias field, noise, resolution), seeds 0-13, "
        "1000-1013 and 2000-2013. Labels are exact (the generator draws them).",
        "- Held-out test: 4 cases per site, seeds 9000+, 9100+, 9200+ (never seen in training).",
        "",
        "## Training",
        f"- Command: `{prov.get('kind', 'train')}` run, {length}, batch {cfg['batch_size']} cases x "
        f"{cfg['samples_per_case']} patches of {'x'.join(map(str, cfg['patch_size']))}, lr "
        f"{cfg['lr']} ({cfg['schedule']}, {cfg['warmup_epochs']} warm-up epochs), augmentation "
        f"`{cfg['augment']['preset']}`, seed {cfg['seed']}.",
    ]
    if cfg.get("teacher"):
        lines.append(
            f"- Distillation: alpha {cfg['alpha']} (label loss weight), temperature "
            f"{cfg['temperature']}, soft-Dice-to-teacher weight {cfg.get('kd_dice_weight', 0)}; "
            "teacher: the shipped teacher."
        )
        if cfg.get("kd_label_correction"):
            lines.append(
                "- Label correction (`kd_label_correction: true`): wherever the teacher's output "
                "contradicted the label, the student learnt the teacher's confidence on the "
                "label's side (p -> 1 - p), never the teacher's mistake."
            )
        # The mode the run used, as the engine recorded it (distillations from before the
        # setting existed ran the teacher online).
        mode = prov.get("teacher_targets", "online")
        lines.append(
            "- Teacher outputs: "
            + (
                "computed once per training case and cached (`teacher_targets: cached`), then "
                "cropped and augmented with the image."
                if mode == "cached"
                else "computed on every augmented patch (`teacher_targets: online`)."
            )
        )
    if note:
        lines.append(f"- {note}")
    lines += [
        f"- Training time (steps, without validation): {train_min:.1f} min on {hardware}, torch "
        f"{prov.get('torch', torch.__version__)}; packaged at napari-brats-kd commit {_git_commit()}.",
        "",
        "## Held-out metrics (phantoms)",
        "",
        "| test set | cases | Dice WT | Dice TC | Dice ET | mean | HD95 WT | HD95 TC | HD95 ET |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, m in metrics.items():
        lines.append(
            f"| {key} | {m['n_cases']} | {m['dice_WT']:.3f} | {m['dice_TC']:.3f} "
            f"| {m['dice_ET']:.3f} | {m['dice_mean']:.3f} | {m['hd95_WT']:.1f} "
            f"| {m['hd95_TC']:.1f} | {m['hd95_ET']:.1f} |"
        )
    lines += [
        "",
        "HD95 in mm, BraTS conventions (373.13 when exactly one of prediction and truth is empty).",
        "",
        "## Limits",
        "- Trained only on synthetic phantoms built on one anatomy (MNI ICBM152): real scans "
        "differ in anatomy, contrast and tumour appearance. See the README section *Shipped "
        "models on the real cases* for what it does on two real BraTS cases.",
        f"- Trained for {train_min:.0f} min, a short budget: longer runs (more epochs, or a larger "
        "`TEACHER_MINUTES` / `STUDENT_MINUTES` in `scripts/train_shipped_models.sh`) should do "
        "better.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder written by train_shipped_models.sh")
    parser.add_argument("--dest", type=Path, default=WEIGHTS_DIR)
    parser.add_argument(
        "--hardware",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="what a model was trained on, for its card (e.g. 'teacher=one NVIDIA H200'); "
        "default: this machine's CPU",
    )
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="NAME=TEXT",
        help="one more line for a model's card, under Training (e.g. what changed since)",
    )
    parser.add_argument(
        "--student-stem",
        default=SHIPPED["student-phantom"][0],
        help="which student of the run folder ships (its checkpoint stem)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SHIPPED),
        default=None,
        help="package only this model (repeatable); the others keep their files, cards and "
        "index entries (e.g. a new student from a run folder that holds no teacher run)",
    )
    args = parser.parse_args(argv)
    names = args.only or list(SHIPPED)
    hardware = dict(item.split("=", 1) for item in args.hardware)
    notes = dict(item.split("=", 1) for item in args.note)
    index_path = args.dest / INDEX_FILE.name
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    entries = [e for e in index.get("models", []) if e.get("name") not in names]
    for name in names:
        stem, role, dtype, line = SHIPPED[name]
        stem = args.student_stem if role == "student" else stem
        loaded = load_checkpoint(args.run / f"{stem}.safetensors")
        metrics = held_out(args.run, stem)
        cfg = loaded.config
        cfg.name = name
        cfg.description = f"{line or describe_teacher(loaded)}. {DISCLAIMER}"
        cfg.metrics = {"held_out_phantoms": metrics}
        out = save_checkpoint(
            args.dest / f"{name.replace('-', '_')}.safetensors",
            loaded.model,
            cfg,
            sidecar=False,
            dtype=dtype,
        )
        # The lean inference path's graph, made from the weights as stored (fp16 for the teacher).
        print(write_graph(load_checkpoint(out), out))
        card = args.dest / f"{name.replace('-', '_')}.md"
        card.write_text(
            model_card(
                name, role, loaded, args.run, stem, metrics, hardware.get(name), notes.get(name)
            )
        )
        entries.append(
            {
                "name": name,
                "file": out.name,
                "role": role,
                "card": card.name,
                "description": cfg.description,
            }
        )
        print(f"{out} ({out.stat().st_size / 1e6:.1f} MB), {card}")
    index["models"] = sorted(entries, key=lambda e: e["role"] != "student")
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    print(f"{index_path}: {[e['name'] for e in index['models']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
