"""Cross-validated accuracy on the 15 expert-labelled real BraTS 2018 cases: one table.

Each model is scored only on the cases its training never saw: the fold models of
``scripts/train_real_models.sh`` on their fold's five test cases (``benchmarks/real_folds.json``,
three folds, so every case is tested once), the phantom-only models on all fifteen. Per model:

- Dice and HD95 (mm) per region (WT, TC, ET), BraTS conventions, mean over the 15 cases;
- the **false-positive volume**: predicted whole tumour outside the expert's whole tumour (cm3),
  median and worst case;
- **far** false positives: the part of it more than 10 mm from the expert's tumour (vessels, dura),
  median and worst;
- expert lesions missed: connected components of the expert whole tumour (>= 0.5 cm3) that the
  prediction does not touch, summed over cases (what dropping components could cost a
  multi-focal tumour);
- seconds per case of the model call on this machine (``segment()`` in a warm process: the
  model, not the whole command).

Every model is scored twice: its raw labels, and after
:func:`napari_brats_kd.postprocess.drop_far_unlikely_components` (the default of ``segment``),
from the same forward pass.

Writes ``benchmarks/results/real_cases.md`` (the table, the command and the machine) and
``benchmarks/results/real_cases_per_case.csv``. The scans are read from ``../shared``, never
copied.

Usage::

    python benchmarks/bench_real.py [--runs runs/real] [--only finetune,scratch]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_inference import cpu_name  # this folder is on sys.path when run as a script

from napari_brats_kd.inference import segment
from napari_brats_kd.io import load_case
from napari_brats_kd.labels import REPORT_REGIONS, labels_to_regions
from napari_brats_kd.metrics import evaluate_labels, false_positive_ml, missed_lesions
from napari_brats_kd.postprocess import drop_far_unlikely_components

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REAL = ROOT.parent / "shared" / "data" / "real_labelled"
FOLDS = HERE / "real_folds.json"
FAR_FP_MM = 10.0
MIN_LESION_ML = 0.5


@dataclass(frozen=True)
class Row:
    """One model of the table: a checkpoint per fold, or one model for every case."""

    key: str
    label: str
    per_fold: str | None = None  # "{run}/finetune_fold{k}.safetensors"
    model: str | None = None  # a model scored on all cases (trained on none of them)
    modalities: str = "4"

    def model_for(self, fold: int, runs: Path) -> str | None:
        if self.model is not None:
            return self.model
        path = runs / self.per_fold.format(k=fold)
        return str(path) if path.is_file() else None


ROWS = (
    Row("phantom_student", "student, phantoms only (shipped before)", model="student-phantom"),
    Row("phantom_teacher", "teacher, phantoms only (shipped)", model="teacher"),
    Row("scratch", "student from scratch on real cases", per_fold="scratch_fold{k}.safetensors"),
    Row("finetune", "student fine-tuned from phantoms", per_fold="finetune_fold{k}.safetensors"),
    Row(
        "finetune_long",
        "student fine-tuned from phantoms, twice the steps",
        per_fold="finetune_long_fold{k}.safetensors",
    ),
    Row(
        "t1cflair_nokd",
        "T1c + FLAIR student, labels only",
        per_fold="t1cflair_nokd_fold{k}.safetensors",
        modalities="T1c+FLAIR",
    ),
    Row(
        "t1cflair_kd",
        "T1c + FLAIR student, distilled from the fine-tuned 4-modality model",
        per_fold="t1cflair_kd_fold{k}.safetensors",
        modalities="T1c+FLAIR",
    ),
)


def score(labels: np.ndarray, case, spacing) -> dict[str, float]:
    """Dice, HD95, false-positive volumes and missed lesions of one label map."""
    m = evaluate_labels(
        labels, case.seg.data, case.convention, spacing, case.case_id, per_class=False
    )
    pred_wt = labels_to_regions(labels, case.convention, ("WT",))[0]
    gt_wt = labels_to_regions(case.seg.data, case.convention, ("WT",))[0]
    row = {f"dice_{r}": m.dice[r] for r in REPORT_REGIONS}
    row.update({f"hd95_{r}": m.hd95[r] for r in REPORT_REGIONS})
    row.update(
        fp_ml=false_positive_ml(pred_wt, gt_wt, spacing),
        far_fp_ml=false_positive_ml(pred_wt, gt_wt, spacing, beyond_mm=FAR_FP_MM),
        missed=missed_lesions(pred_wt, gt_wt, spacing, min_ml=MIN_LESION_ML),
    )
    return row


def run_case(case, model: str, spacing) -> list[dict]:
    """Segment one case once and score its raw and post-processed labels."""
    start = time.perf_counter()
    result = segment(
        case, model, device="cpu", drop_far_components=False, return_probabilities=True
    )
    seconds = time.perf_counter() - start
    regions = list(result.regions)
    wt = result.probabilities[regions.index("WT")]
    post, _ = drop_far_unlikely_components(result.labels, wt, spacing)
    rows = []
    for name, labels in (("raw", result.labels), ("post", post)):
        rows.append({"labels": name, "seconds": seconds, **score(labels, case, spacing)})
    return rows


def summarise(rows: list[dict]) -> dict[str, float]:
    out = {
        k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.startswith(("dice", "hd95"))
    }
    out["dice_mean"] = float(np.mean([out[f"dice_{r}"] for r in REPORT_REGIONS]))
    out["fp_med"] = float(np.median([r["fp_ml"] for r in rows]))
    out["fp_max"] = float(np.max([r["fp_ml"] for r in rows]))
    out["far_med"] = float(np.median([r["far_fp_ml"] for r in rows]))
    out["far_max"] = float(np.max([r["far_fp_ml"] for r in rows]))
    out["missed"] = int(sum(r["missed"] for r in rows))
    out["seconds"] = float(np.median([r["seconds"] for r in rows]))
    out["n"] = len(rows)
    return out


def table(summaries: dict[tuple[str, str], dict], rows: tuple[Row, ...]) -> list[str]:
    head = (
        "| model | inputs | labels | cases | Dice WT | Dice TC | Dice ET | mean | HD95 WT | HD95 TC "
        "| HD95 ET | FP cm3 med / max | far FP cm3 med / max | lesions missed | s / case |"
    )
    lines = [head, "|" + "---|" * 15]
    for row in rows:
        for labels in ("raw", "post"):
            s = summaries.get((row.key, labels))
            if s is None:
                continue
            lines.append(
                f"| {row.label} | {row.modalities} | {labels} | {s['n']} | {s['dice_WT']:.3f} | "
                f"{s['dice_TC']:.3f} | {s['dice_ET']:.3f} | **{s['dice_mean']:.3f}** | "
                f"{s['hd95_WT']:.1f} | {s['hd95_TC']:.1f} | {s['hd95_ET']:.1f} | "
                f"{s['fp_med']:.1f} / {s['fp_max']:.1f} | {s['far_med']:.1f} / {s['far_max']:.1f} "
                f"| {s['missed']} | {s['seconds']:.2f} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=REAL, help="the labelled real cases")
    parser.add_argument(
        "--runs",
        type=Path,
        default=ROOT / "runs" / "real",
        help="OUT_DIR of scripts/train_real_models.sh",
    )
    parser.add_argument(
        "--only", default=None, help=f"comma-separated rows ({', '.join(r.key for r in ROWS)})"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "real_cases.md")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the scores of the per-case CSV already written for a model file unchanged "
        "since (same path, size and time), and compute only the rest",
    )
    args = parser.parse_args(argv)
    if not args.real.is_dir():
        print(
            f"{args.real} not found: the real cases live in ../shared/data/real_labelled",
            file=sys.stderr,
        )
        return 1

    import torch

    torch.set_num_threads(2)
    rows = tuple(r for r in ROWS if args.only is None or r.key in args.only.split(","))
    folds = json.loads(FOLDS.read_text())["folds"]
    csv_path = args.out.with_name(args.out.stem + "_per_case.csv")
    earlier = _earlier_scores(csv_path)
    reusable = earlier if args.reuse else {}
    per_case: list[dict] = []
    for k, cases in enumerate(folds):
        models = {r.key: r.model_for(k, args.runs) for r in rows}
        for case_id in cases:
            todo = [r for r in rows if models[r.key] is not None]
            for row in todo:
                per_case += reusable.get((row.key, case_id, _stamp(models[row.key])), [])
            todo = [r for r in todo if (r.key, case_id, _stamp(models[r.key])) not in reusable]
            if not todo:
                continue
            case = load_case(args.real / case_id)
            spacing = case.reference.scale
            for row in todo:
                stamp = _stamp(models[row.key])
                for scored in run_case(case, models[row.key], spacing):
                    per_case.append(
                        {"model": row.key, "fold": k, "case_id": case_id, "file": stamp, **scored}
                    )
                    print(
                        f"fold {k} {case_id} {row.key} {scored['labels']}: WT "
                        f"{scored['dice_WT']:.3f} TC {scored['dice_TC']:.3f} ET "
                        f"{scored['dice_ET']:.3f} FP {scored['fp_ml']:.1f} cm3",
                        flush=True,
                    )
    # Rows not asked for this time keep their earlier scores (the CSV) and their table rows.
    selected = {r.key for r in rows}
    kept = [r for key, scored in earlier.items() if key[0] not in selected for r in scored]
    from_csv = sorted({r["model"] for r in kept} - selected)
    rows = tuple(r for r in ROWS if r.key in selected or r.key in from_csv)
    summaries = {}
    for row in rows:
        for labels in ("raw", "post"):
            mine = [r for r in per_case + kept if r["model"] == row.key and r["labels"] == labels]
            if mine:
                summaries[(row.key, labels)] = summarise(mine)
    missing = [
        r.key
        for r in rows
        if (r.key, "raw") not in summaries
        or summaries[(r.key, "raw")]["n"] < sum(len(f) for f in folds)
    ]
    if not per_case:
        print(
            f"Nothing to score: no checkpoints in {args.runs} (run scripts/train_real_models.sh)",
            file=sys.stderr,
        )
        return 1
    lines = table(summaries, rows)
    print("\n".join(lines))
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    header = [
        "# Real cases, cross-validated (`python benchmarks/bench_real.py`)",
        "",
        f"Command: `python benchmarks/bench_real.py {' '.join(argv or sys.argv[1:])}`; machine: "
        f"{cpu_name()} ({machine}), torch {torch.__version__}.",
        "Fold models are scored on their fold's held-out cases only (3 folds of 10 / 5, "
        "`benchmarks/real_folds.json`); phantom-only models on all 15. `raw`: the network's "
        "labels; `post`: after dropping far, doubtful components (the default of `segment`). "
        f"FP: predicted whole tumour outside the expert's; far FP: more than {FAR_FP_MM:g} mm from "
        f"it; lesions missed: expert components of at least {MIN_LESION_ML} cm3 not touched. "
        "s / case: median model call in a warm process (not the whole command).",
        "",
    ]
    if from_csv:
        header += [
            f"Rows from the earlier scores in {csv_path.name} (not scored again by this "
            f"command): {', '.join(from_csv)}.",
            "",
        ]
    if missing:
        header += [
            f"Incomplete rows (checkpoints missing for some folds): {', '.join(missing)}",
            "",
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header + lines) + "\n")
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(per_case[0]))
        writer.writeheader()
        writer.writerows(per_case + kept)
    print(f"Wrote {args.out}")
    return 0


def _stamp(model: str) -> str:
    """Which weights a score belongs to: a shipped name, or a file's path, size and time."""
    path = Path(model)
    if not path.is_file():
        return model
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _earlier_scores(csv_path: Path) -> dict[tuple[str, str, str], list[dict]]:
    """Rows of an earlier run, by (model row, case, weights stamp)."""
    if not csv_path.is_file():
        return {}
    out: dict[tuple[str, str, str], list[dict]] = {}
    with csv_path.open() as fh:
        for row in csv.DictReader(fh):
            parsed = {
                k: v if k in ("model", "case_id", "file", "labels") else float(v)
                for k, v in row.items()
            }
            parsed["fold"] = int(parsed["fold"])
            out.setdefault((row["model"], row["case_id"], row["file"]), []).append(parsed)
    return out


if __name__ == "__main__":
    sys.exit(main())
