"""Ship the real-data models of a `scripts/train_real_models.sh` run, with model cards.

    python benchmarks/bench_real.py                 # the cross-validated scores first
    python scripts/package_real_weights.py runs/real

Writes into ``src/napari_brats_kd/weights/``:

- ``student.safetensors``: ``student_real`` (the phantom student fine-tuned on all 15 real cases);
- ``student_t1cflair.safetensors``: ``student_t1cflair`` (T1c + FLAIR), when the run has it;
- ``student_phantom.safetensors``: the phantom-only student that shipped before, renamed
  ``student-phantom`` (the starting point of the fine-tuning, and the benchmark's baseline), when
  the package still ships it as ``student``;
- beside each weights file its ONNX graph (``<file stem>.onnx``), which ``segment`` runs without
  torch;
- a model card for each (``<file stem>.md``) with the cross-validated real-case scores of its
  recipe, read from ``benchmarks/results/real_cases_per_case.csv``, and the index entries.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from package_weights import _cpu_name, _git_commit

from napari_brats_kd.export import write_graph
from napari_brats_kd.models import load_checkpoint, save_checkpoint
from napari_brats_kd.models.networks import count_parameters
from napari_brats_kd.models.registry import INDEX_FILE, WEIGHTS_DIR

ROOT = Path(__file__).resolve().parent.parent
SCORES = ROOT / "benchmarks" / "results" / "real_cases_per_case.csv"
FOLDS = ROOT / "benchmarks" / "real_folds.json"
REGIONS = ("WT", "TC", "ET")
NOT_CLINICAL = "Research model: not for clinical use."
BRATS_TERMS = (
    "The training scans are BraTS 2018 training cases, used under the BraTS data-use terms "
    "(research only). Cite Menze et al. 2015 (IEEE TMI 34(10)), Bakas et al. 2017 (Sci. Data 4) "
    "and Bakas et al. 2018 (arXiv:1811.02629). The scans themselves are not shipped."
)
#: name in the package -> (run checkpoint stem, bench_real row of its recipe, one line)
SHIPPED = {
    "student": (
        "student_real",
        "finetune",
        "Student-small (0.44 M parameters, about 1 s per case on a CPU), fine-tuned on 15 real "
        "BraTS 2018 cases from phantom pretraining",
    ),
    "student-t1cflair": (
        "student_t1cflair",
        None,  # the recipe's row is named in the run: t1cflair_kd or t1cflair_nokd
        "Student-small for scans with T1c and FLAIR only (no T1, no T2), trained on 15 real "
        "BraTS 2018 cases",
    ),
}


def cross_validated(row: str, scores: Path = SCORES) -> dict:
    """Mean Dice / HD95 per region of a bench_real row, raw and post-processed labels."""
    with scores.open() as fh:
        rows = [r for r in csv.DictReader(fh) if r["model"] == row]
    if not rows:
        raise SystemExit(f"{scores} has no row {row!r}: run benchmarks/bench_real.py first")
    out = {}
    for labels in ("raw", "post"):
        mine = [r for r in rows if r["labels"] == labels]
        m = {
            f"{k}_{g}": float(np.mean([float(r[f"{k}_{g}"]) for r in mine]))
            for k in ("dice", "hd95")
            for g in REGIONS
        }
        m["dice_mean"] = float(np.mean([m[f"dice_{g}"] for g in REGIONS]))
        m["fp_ml_median"] = float(np.median([float(r["fp_ml"]) for r in mine]))
        m["n_cases"] = len(mine)
        out[labels] = m
    return out


def phantom_scores(model) -> dict:
    """Mean Dice per region on 12 held-out phantoms (seeds 9000+ of sites A, B and C, 4 each):
    the same held-out seeds the phantom-only models were scored on."""
    from napari_brats_kd.inference import segment
    from napari_brats_kd.metrics import evaluate_labels
    from napari_brats_kd.phantom import make_phantom

    dice = {g: [] for g in REGIONS}
    for i, site in enumerate("ABC"):
        for seed in range(9000 + 100 * i, 9004 + 100 * i):
            case = make_phantom(seed, site)
            result = segment(case, model, device="cpu")
            scores = evaluate_labels(
                result.labels, case.seg.data, result.convention, per_class=False
            )
            for g in REGIONS:
                dice[g].append(scores.dice[g])
    out = {f"dice_{g}": float(np.mean(v)) for g, v in dice.items()}
    out["dice_mean"] = float(np.mean(list(out.values())))
    out["n_cases"] = len(dice["WT"])
    return out


def _recipe_lines(run_dir: Path, loaded) -> list[str]:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    with (run_dir / "log.csv").open() as fh:
        log = list(csv.DictReader(fh))
    minutes = sum(float(r["epoch_time_s"]) for r in log) / 60
    prov = loaded.config.provenance
    command = "distill" if cfg.get("teacher") else "train"
    lines = [
        f"- Command: `brats-kd {command}`, {cfg['epochs']} epochs x {cfg['steps_per_epoch']} "
        f"steps, batch {cfg['batch_size']} cases x {cfg['samples_per_case']} patches of "
        f"{'x'.join(map(str, cfg['patch_size']))} ({cfg['pos_fraction']:.0%} centred on tumour), "
        f"lr {cfg['lr']} ({cfg['schedule']}, {cfg['warmup_epochs']} warm-up epoch), augmentation "
        f"`{cfg['augment']['preset']}`, seed {cfg['seed']}; no validation split (the last "
        "weights are kept).",
    ]
    if cfg.get("init_from"):
        lines.append(
            f"- Transfer learning: started from `{cfg['init_from']}` (the phantom-only student), "
            f"every layer trained, pretrained layers at {cfg['pretrained_lr_factor']}x the rate."
        )
    if cfg.get("teacher"):
        lines.append(
            f"- Distillation: from the four-modality model of the same recipe (`{Path(cfg['teacher']).name}`), "
            f"alpha {cfg['alpha']}, temperature {cfg['temperature']}, soft-Dice-to-teacher weight "
            f"{cfg.get('kd_dice_weight', 0)}, label-corrected teacher outputs "
            f"({cfg.get('kd_label_correction')}), cached once per case."
        )
    lines.append(
        f"- Training time (steps, without loading): {minutes:.1f} min on {_cpu_name()} (2 threads, "
        f"no GPU), torch {prov.get('torch', '?')}; packaged at commit {_git_commit()}. On a GPU, "
        "`DEVICE=cuda NUM_WORKERS=8 EPOCHS=80 bash scripts/train_real_models.sh` reruns the "
        "recipe with five times the steps."
    )
    return lines


def model_card(name: str, loaded, run_dir: Path, cv: dict, row: str, phantoms: dict) -> str:
    c = loaded.config
    folds = json.loads(FOLDS.read_text())["folds"]
    cases = sorted(x for f in folds for x in f)
    lines = [
        f"# Model card: shipped `{name}` (napari-brats-kd)",
        "",
        f"**{NOT_CLINICAL}** {BRATS_TERMS}",
        "",
        "## What it is",
        f"- Architecture: `{c.arch}` {json.dumps(c.arch_args)}; "
        f"{count_parameters(loaded.model):,} parameters.",
        f"- Input: {', '.join(c.modalities)} (this channel order), BraTS-preprocessed scans "
        "(skull-stripped, co-registered, about 1 mm), z-score normalised over the brain; output: "
        f"sigmoid regions {', '.join(c.regions)}, written as labels in the case's convention.",
        "- Made by `bash scripts/train_real_models.sh`, packaged by "
        "`scripts/package_real_weights.py`.",
        "",
        "## Data",
        f"- All {len(cases)} real BraTS 2018 training cases with expert labels in "
        f"`../shared/data/real_labelled` (sites 2013, CBICA, TCIA01/02/03/10): {', '.join(cases)}.",
        "- Pretraining (the four-modality student): 37 synthetic phantoms, see `student_phantom.md`."
        if len(c.modalities) == 4
        else "- No pretraining (the phantom student takes four modalities).",
        "",
        "## Training",
        *_recipe_lines(run_dir, loaded),
        "",
        "## Accuracy on real cases (cross-validated)",
        "",
        f"The recipe, scored by 3-fold cross-validation (`benchmarks/real_folds.json`: each fold's "
        f"model trained on 10 cases and tested on the other 5; bench_real row `{row}`). This model "
        "was trained on all 15, so no held-out case is left for it: the table estimates it."
        + (
            f" Only {cv['post']['n_cases']} of the 15 cases had been scored when it was packaged "
            "(the other folds were still training)."
            if cv["post"]["n_cases"] < 15
            else ""
        ),
        "",
        "| labels | cases | Dice WT | Dice TC | Dice ET | mean | HD95 WT | HD95 TC | HD95 ET | FP cm3 (median) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for labels, m in cv.items():
        lines.append(
            f"| {labels} | {m['n_cases']} | {m['dice_WT']:.3f} | {m['dice_TC']:.3f} | "
            f"{m['dice_ET']:.3f} | {m['dice_mean']:.3f} | {m['hd95_WT']:.1f} | {m['hd95_TC']:.1f} | "
            f"{m['hd95_ET']:.1f} | {m['fp_ml_median']:.1f} |"
        )
    lines += [
        "",
        "`raw`: the network's labels; `post`: after dropping far, doubtful components (the "
        "default of `segment`). HD95 in mm (373.13 when exactly one of prediction and truth is "
        "empty). FP: predicted whole tumour outside the expert's.",
        "",
        "## Accuracy on phantoms",
        "",
        f"This model on {phantoms['n_cases']} held-out synthetic phantoms (seeds 9000-9003, "
        f"9100-9103, 9200-9203 of sites A, B, C): Dice WT {phantoms['dice_WT']:.3f}, TC "
        f"{phantoms['dice_TC']:.3f}, ET {phantoms['dice_ET']:.3f} (mean "
        f"{phantoms['dice_mean']:.3f}); the phantom-only student scored 0.930 on them.",
        "",
        "## Limits",
        "- Fifteen training cases of one challenge year (adult glioma, BraTS 2018 preprocessing): "
        "other tumour types (metastases, meningioma, paediatric), post-operative scans and scans "
        "not skull-stripped and co-registered are outside what it has seen.",
        "- Trained on a 2-core CPU in minutes; the bars of a production model (mean Dice 0.85 "
        "and more) need more real cases and steps.",
        "",
    ]
    return "\n".join(lines)


def ship(
    name: str, stem: str, row: str | None, line: str, run: Path, dest: Path, scores: Path
) -> dict:
    """Copy one checkpoint into the package with its card; returns its index entry."""
    loaded = load_checkpoint(run / f"{stem}.safetensors")
    run_dir = run / f"{stem}_run"
    if row is None:
        row = (
            "t1cflair_kd"
            if yaml.safe_load((run_dir / "config.yaml").read_text()).get("teacher")
            else "t1cflair_nokd"
        )
    cv = cross_validated(row, scores)
    cfg = loaded.config
    cfg.name = name
    cfg.description = f"{line}. {NOT_CLINICAL}"
    phantoms = phantom_scores(loaded)
    cfg.metrics = {"cross_validated_real_cases": cv, "held_out_phantoms": phantoms}
    file_stem = name.replace("-", "_")
    out = save_checkpoint(dest / f"{file_stem}.safetensors", loaded.model, cfg, sidecar=False)
    print(write_graph(load_checkpoint(out), out))  # the graph segment runs without torch
    card = dest / f"{file_stem}.md"
    card.write_text(model_card(name, loaded, run_dir, cv, row, phantoms))
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB), {card}")
    return {
        "name": name,
        "file": out.name,
        "role": "student",
        "card": card.name,
        "description": cfg.description,
    }


PHANTOM_CARD_NOTE = """
*This is the student that shipped as `student` until it was fine-tuned on real cases (see
`student.md`). It stays in the package as the starting point of that fine-tuning (`--init-from
student-phantom`, for your own labelled scans too) and as the baseline of
`benchmarks/bench_real.py`. On 15 real BraTS 2018 cases with expert labels it scores mean Dice
0.47 (WT 0.67, TC 0.37, ET 0.37): do not use it on patients' scans as it is.*"""


def _phantom_card(dest: Path) -> None:
    card = dest / "student_phantom.md"
    if card.is_file():
        return
    title, rest = (dest / "student.md").read_text().split("\n", 1)
    card.write_text(
        title.replace("`student`", "`student-phantom`") + "\n" + PHANTOM_CARD_NOTE + "\n" + rest
    )


def keep_phantom_student(dest: Path, entries: list[dict]) -> dict | None:
    """The phantom-only student as ``student-phantom`` (from ``student`` if that still is it)."""
    target = dest / "student_phantom.safetensors"
    source = target if target.is_file() else dest / "student.safetensors"
    loaded = load_checkpoint(source)
    if "cross_validated_real_cases" in loaded.config.metrics:  # a real-data student
        return next((e for e in entries if e["name"] == "student-phantom"), None)
    _phantom_card(dest)
    cfg = loaded.config
    cfg.name = "student-phantom"
    cfg.description = (
        "Student-small pretrained on synthetic phantoms only (MNI anatomy with simulated "
        "tumours): the starting point for fine-tuning on your own labelled scans (`brats-kd "
        "train DATA --init-from student-phantom`). Poor on real scans as it is (mean Dice 0.47 "
        "on 15 real BraTS cases). Not for clinical use."
    )
    save_checkpoint(target, loaded.model, cfg, sidecar=False)
    print(write_graph(load_checkpoint(target), target))
    return {
        "name": cfg.name,
        "file": target.name,
        "role": "student",
        "card": "student_phantom.md",
        "description": cfg.description,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="OUT_DIR of scripts/train_real_models.sh")
    parser.add_argument("--dest", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--scores", type=Path, default=SCORES, help="bench_real's per-case CSV")
    args = parser.parse_args(argv)
    index_path = args.dest / INDEX_FILE.name
    index = json.loads(index_path.read_text())
    old = index.get("models", [])
    phantom = keep_phantom_student(args.dest, old)
    new = [
        ship(name, stem, row, line, args.run, args.dest, args.scores)
        for name, (stem, row, line) in SHIPPED.items()
        if (args.run / f"{stem}.safetensors").is_file()
    ]
    names = {e["name"] for e in new} | {"student-phantom"}
    teachers = [e for e in old if e["role"] == "teacher"]
    others = [e for e in old if e["role"] != "teacher" and e["name"] not in names]
    index["models"] = new + ([phantom] if phantom else []) + others + teachers
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    print(f"{index_path}: {[e['name'] for e in index['models']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
