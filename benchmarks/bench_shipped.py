"""Results table of the shipped models: teacher, distilled student, and the training comparisons.

Reads the run folder written by ``scripts/train_shipped_models.sh`` (checkpoints, run logs and the
per-case ``scores_<model>_<site>.csv`` of held-out phantoms, made there with ``brats-kd segment``
and ``brats-kd evaluate``), and times each model on one full 240x240x155 case with
:func:`napari_brats_kd.inference.segment` in a fresh subprocess per model (2 threads, peak RSS),
through :func:`bench_inference.run_in_subprocess`.

Columns: parameters, GFLOPs per forward (on the brain crop of the timed case), CPU seconds per
case (median), peak RSS, training time, and Dice / HD95 for WT, TC and ET over every held-out
case of every site. Rows (those the folder has): the teacher, the distilled student (``student``),
one distilled from cached teacher outputs (``student_cached``) and the same with three times the
steps (``student_long``), the same student without KD with both budgets (``student_nokd``,
``student_nokd_long``), a T1c + FLAIR student (cross-modal) and one with attention transfer
(``student_attention``), and the label-corrected student distilled also on unlabelled scans of the
training sites (``student_semi``); ``--shipped`` names the one that ships. A second table compares,
on held-out site B, students distilled on sites A and C with and without unlabelled site-B scans
(domain adaptation); a third puts each KD student beside the no-KD one with the same steps
(``KD_PAIRS``), for this folder and every ``--compare`` folder (other seeds or budgets with the
same teacher and held-out phantoms), and sums them up per KD variant and budget: mean Dice relative
to the teacher, and the KD - no KD differences over seeds.

Usage::

    python benchmarks/bench_shipped.py [--run runs/shipped] [--case CASE_DIR] [--runs 5] \
        [--compare runs/shipped_seed1]
    python benchmarks/bench_shipped.py --kd-only --run runs/shipped --compare runs/b1000_s0 ...

``--kd-only`` writes only the KD-vs-no-KD tables (``results/kd_budgets.md``), without timing:
for comparisons at other budgets or seeds, made in folders that share the shipped run's phantoms,
cached teacher outputs and teacher (``FROM_RUN=runs/shipped SHIP_DIR=runs/b1000_s0 SEED=0
STUDENT_EPOCHS=40 STAGES="student_corrected student_nokd" bash scripts/train_shipped_models.sh``).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_inference import cpu_name, load_case_array, run_in_subprocess  # noqa: E402

RESULTS = HERE / "results" / "shipped_models.md"
KD_RESULTS = HERE / "results" / "kd_budgets.md"
REGIONS = ("WT", "TC", "ET")
#: Rows: checkpoint stem in the run folder -> (label, what it is). Missing checkpoints are skipped.
MODELS = {
    "teacher": ("teacher", ""),  # described from its checkpoint (see `network`)
    "student": ("student, KD", "student-small, KL + soft Dice to the teacher"),
    "student_cached": (
        "student, KD, cached targets",
        "student-small, KL + soft Dice to the teacher's outputs cached once per case",
    ),
    "student_long": (
        "student, KD, cached targets, 3x steps",
        "student-small, as the cached one with 1500 steps (STUDENT_EPOCHS=60)",
    ),
    "student_nokd": ("student, no KD", "student-small, labels only, same steps"),
    "student_nokd_long": (
        "student, no KD, 3x steps",
        "student-small, labels only, 1500 steps (STUDENT_EPOCHS=60)",
    ),
    "student_t1cflair": (
        "student T1c+FLAIR, KD",
        "student-small on T1c + FLAIR only (cross-modal)",
    ),
    "student_attention": (
        "student, KD + attention transfer",
        "student-small, KL + soft Dice + the teacher's encoder attention maps",
    ),
    "student_corrected": (
        "student, label-corrected KD",
        "student-small, KL + soft Dice to the teacher's outputs corrected by the labels",
    ),
    "student_corrected_long": (
        "student, label-corrected KD, 3x steps",
        "student-small, as the label-corrected one with 1500 steps (STUDENT_EPOCHS=60)",
    ),
    "student_semi": (
        "student, label-corrected KD + unlabelled scans",
        "student-small, as the label-corrected one, also on unlabelled scans of the training "
        "sites (teacher targets only; one per two labelled cases)",
    ),
}
#: KD-vs-no-KD pairs (same labelled data, code, steps and seed): KD stem -> no-KD stem.
KD_PAIRS = {
    "student": "student_nokd",
    "student_cached": "student_nokd",
    "student_long": "student_nokd_long",
    "student_attention": "student_nokd",
    "student_corrected": "student_nokd",
    "student_corrected_long": "student_nokd_long",
    # KD can also learn from scans without labels; the no-KD student has only the labelled ones.
    "student_semi": "student_nokd",
}
#: Domain adaptation rows, scored on held-out site B only: stem -> label.
ADAPTATION = {
    "student_AC": "distilled on labelled sites A + C (not adapted)",
    "student_AC_adaptB": "the same + unlabelled site-B scans (adapted)",
}


def case_rows(run: Path, stem: str) -> dict[str, list[dict[str, str]]]:
    """Per-case rows of the model's ``scores_<stem>_<site>.csv`` files, by site."""
    out = {}
    for path in sorted(run.glob(f"scores_{stem}_*.csv")):
        if "_" in path.stem[len(f"scores_{stem}_") :]:
            continue  # another model whose name starts with this one (student_nokd)
        with path.open() as fh:
            rows = [r for r in csv.DictReader(fh) if r["case_id"] not in ("mean", "std", "median")]
        out[path.stem.rsplit("_", 1)[-1]] = rows
    return out


def row_mean_dice(row: dict[str, str]) -> float:
    """Mean Dice over the regions of one case's scores row."""
    return float(np.mean([float(row[f"dice_{g}"]) for g in REGIONS]))


def case_mean_dice(run: Path, stem: str) -> dict[str, float]:
    """Mean Dice over the regions, per held-out case."""
    return {r["case_id"]: row_mean_dice(r) for rows in case_rows(run, stem).values() for r in rows}


def read_scores(run: Path, stem: str) -> dict[str, float]:
    """Mean Dice and HD95 per region over all held-out cases of all sites (and per site Dice)."""
    per_case: list[dict[str, str]] = []
    sites: dict[str, list[float]] = {}
    for site, rows in case_rows(run, stem).items():
        per_case += rows
        sites[site] = [row_mean_dice(r) for r in rows]
    if not per_case:
        return {}
    out = {"n": float(len(per_case))}
    for g in REGIONS:
        out[f"dice_{g}"] = float(np.mean([float(r[f"dice_{g}"]) for r in per_case]))
        out[f"hd95_{g}"] = float(np.mean([float(r[f"hd95_{g}"]) for r in per_case]))
    out["dice_mean"] = float(np.mean([out[f"dice_{g}"] for g in REGIONS]))
    for site, values in sites.items():
        out[f"site_{site}"] = float(np.mean(values))
    return out


def describe(ckpt: Path) -> tuple[str, str, str]:
    """What a checkpoint is (its named architecture, e.g. ``segresnet-halfres``), where it was
    trained (``GPU`` or ``CPU``) and, for a distilled one, how it got the teacher's outputs
    (``online`` / ``cached``; empty otherwise), from its provenance."""
    from napari_brats_kd.models import load_checkpoint

    cfg = load_checkpoint(ckpt).config
    prov = cfg.provenance
    device = str(prov.get("device", "cpu"))
    # Distilled before the setting existed: the teacher always ran online.
    targets = prov.get("teacher_targets", "online") if prov.get("kind") == "distill" else ""
    return f"`{cfg.preset or cfg.arch}`", "GPU" if device.startswith("cuda") else "CPU", targets


def kd_pairs(runs: list[Path], teacher: float | None) -> tuple[list[str], list[str]]:
    """KD against no KD: a row per pair in each run folder (same labelled data, code, steps and
    seed within a pair; ``student_semi`` also learns from unlabelled scans), and a summary per KD variant and step budget over the folders (seeds).

    The summary is what the bar "KD student >= 97 % of the teacher and better than the same
    student without KD for the same budget" needs: the KD students' mean Dice relative to
    ``teacher`` (the teacher's mean Dice on the same held-out cases), the paired differences'
    mean and smallest value, and on how many seeds KD won.
    """
    from napari_brats_kd.models import load_checkpoint

    rows = []
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for run, (stem, nokd_stem) in ((r, p) for r in runs for p in KD_PAIRS.items()):
        kd, nokd = read_scores(run, stem), read_scores(run, nokd_stem)
        if not kd or not nokd:
            continue
        prov = load_checkpoint(run / f"{stem}.safetensors").config.provenance
        steps = train_steps(run, stem)
        hd = " / ".join(f"{kd[f'hd95_{g}']:.1f} vs {nokd[f'hd95_{g}']:.1f}" for g in REGIONS)
        rel = f"{kd['dice_mean'] / teacher:.0%}" if teacher else "-"
        # Paired per case: whether KD's lead is broad or one case's.
        kd_cases, nokd_cases = case_mean_dice(run, stem), case_mean_dice(run, nokd_stem)
        ahead = sum(kd_cases[c] > nokd_cases[c] for c in kd_cases if c in nokd_cases)
        rows.append(
            f"| `{run.name}/{stem}` | {prov.get('seed', '-')} | {steps} "
            f"| {prov.get('teacher_targets', 'online')} "
            f"| {kd['dice_mean']:.3f} | {rel} | {nokd['dice_mean']:.3f} "
            f"| {kd['dice_mean'] - nokd['dice_mean']:+.3f} | {ahead} of {len(kd_cases)} | {hd} |"
        )
        # A variant is its stem without the budget suffix: student_corrected_long is the
        # label-corrected student with more steps.
        variant = MODELS[stem.removesuffix("_long")][0]
        groups.setdefault((variant, steps), []).append((kd["dice_mean"], nokd["dice_mean"]))
    summary = []

    # By variant, then by budget as a number (a folder without a run log has steps "-").
    def order(group: tuple[tuple[str, str], object]) -> tuple[str, int]:
        variant, steps = group[0]
        return variant, int(steps) if steps.isdigit() else -1

    for (variant, steps), pairs in sorted(groups.items(), key=order):
        kd_mean = float(np.mean([k for k, _ in pairs]))
        diffs = [k - n for k, n in pairs]
        rel = f"{kd_mean / teacher:.0%}" if teacher else "-"
        summary.append(
            f"| {variant} | {steps} | {len(pairs)} | {kd_mean:.3f} | {rel} "
            f"| {np.mean([n for _, n in pairs]):.3f} | {np.mean(diffs):+.3f} "
            f"| {min(diffs):+.3f} | {sum(d > 0 for d in diffs)} of {len(diffs)} |"
        )
    return rows, summary


def kd_tables(runs: list[Path], teacher: float | None) -> list[str]:
    """Markdown lines of the KD-vs-no-KD tables of :func:`kd_pairs` (none without pairs)."""
    pairs, summary = kd_pairs(runs, teacher)
    if not pairs:
        return []
    return [
        "",
        "KD against no KD (each pair: same labelled data, code, steps and seed, the "
        "`student_semi` students also learning from unlabelled scans of the training sites; all "
        "held-out cases; KD / teacher: relative to the teacher's mean Dice on the same cases):",
        "",
        "| run / KD student | seed | steps | teacher targets | KD mean Dice | KD / teacher "
        "| no-KD mean Dice | KD - no KD | cases KD ahead | HD95 WT / TC / ET, KD vs no KD (mm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *pairs,
        "",
        "Per KD variant and budget, over the seeds above:",
        "",
        "| KD student | steps | seeds | KD mean Dice | KD / teacher | no-KD mean Dice "
        "| KD - no KD, mean | KD - no KD, smallest | seeds KD ahead |",
        "|---|---|---|---|---|---|---|---|---|",
        *summary,
    ]


def run_log(run: Path, stem: str) -> list[dict[str, str]]:
    """The rows of ``<stem>_run/log.csv`` (the CLI's default run folder); empty when missing."""
    log = run / f"{stem}_run" / "log.csv"
    if not log.is_file():
        return []
    with log.open() as fh:
        return list(csv.DictReader(fh))


def train_seconds(run: Path, stem: str) -> float | None:
    """Sum of the epoch times of the run log (training steps, without validation)."""
    log = run_log(run, stem)
    return sum(float(r["epoch_time_s"]) for r in log) if log else None


def train_steps(run: Path, stem: str) -> str:
    """Optimiser steps the run took (its log's last step), or ``-``."""
    log = run_log(run, stem)
    return log[-1]["step"] if log else "-"


def write_results(lines: list[str], out: Path) -> None:
    """Print the results and write them to ``out``."""
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def write_kd_only(run: Path, compare: list[Path], note: str, out: Path | None) -> int:
    """Print and write the KD-vs-no-KD tables of ``run`` and the ``compare`` folders, relative
    to the teacher scored in ``run`` (``--kd-only``)."""
    teacher = read_scores(run, "teacher").get("dice_mean")
    tables = kd_tables([run, *compare], teacher)
    if not tables:
        print(f"No KD / no-KD pair with scores in {run} or the --compare folders.", file=sys.stderr)
        return 1
    lines = [
        "# KD against no KD, per step budget and seed",
        "",
        f"Written by `benchmarks/bench_shipped.py --kd-only` on {time.strftime('%Y-%m-%d %H:%M')} "
        f"UTC from `{run}`" + "".join(f", `{c}`" for c in compare) + ". Held-out phantom cases "
        "(sites A, B, C), 1 mm, scored with `brats-kd evaluate`; HD95 in mm. Teacher: mean Dice "
        + (f"{teacher:.3f}" if teacher else "not scored")
        + f" on the same cases (`{run}`).",
        *(["", note] if note else []),
        *tables,
        "",
    ]
    write_results(lines, out or KD_RESULTS)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/shipped"), help="run folder")
    parser.add_argument("--case", type=Path, default=None, help="timed case (default: real)")
    parser.add_argument("--runs", type=int, default=5, help="timed calls per model (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"results file (default: {RESULTS.relative_to(HERE.parent)})",
    )
    parser.add_argument(
        "--shipped", default="student_corrected", help="stem of the student that ships"
    )
    parser.add_argument("--note", default="", help="a remark on the run, printed under the title")
    parser.add_argument(
        "--compare",
        type=Path,
        action="append",
        default=[],
        metavar="RUN",
        help="another run folder (another SEED or STUDENT_EPOCHS, the same teacher and "
        "held-out phantoms) whose KD and no-KD students join the KD-vs-no-KD tables (repeatable)",
    )
    parser.add_argument(
        "--kd-only",
        action="store_true",
        help="only the KD-vs-no-KD tables, without timing the models (written to "
        f"{KD_RESULTS.relative_to(HERE.parent)} unless --out says otherwise)",
    )
    args = parser.parse_args(argv)
    if args.kd_only:
        return write_kd_only(args.run, args.compare, args.note, args.out)

    image, source = load_case_array(args.case)
    tmp = Path(tempfile.mkdtemp()) / "case.npy"
    np.save(tmp, image)
    rows = {}
    for stem, (label, what) in MODELS.items():
        if stem in (args.shipped, "teacher"):
            label += " (shipped)"
        ckpt = args.run / f"{stem}.safetensors"
        if not ckpt.is_file():
            print(f"{label}: {ckpt} missing, skipped", file=sys.stderr)
            continue
        # The timed case holds four modalities in the teacher's order; a student on fewer inputs
        # is the same network with a narrower first layer, so it is scored but not timed.
        speed = (
            run_in_subprocess(
                label, tmp, args.runs, args.runs, args.threads, checkpoint=ckpt, backend="auto"
            )
            if "t1cflair" not in stem
            else None
        )
        network, trained_on, targets = describe(ckpt)
        if targets and what:
            what += f"; teacher targets {targets}"
        rows[label] = {
            "what": what or network,
            "on": trained_on,
            "speed": speed or {},
            "scores": read_scores(args.run, stem),
            "train_s": train_seconds(args.run, stem),
            "size_mb": ckpt.stat().st_size / 1e6,
        }
    tmp.unlink()

    import torch

    n_cases = next((int(r["scores"]["n"]) for r in rows.values() if r["scores"]), 0)
    lines = [
        "# Shipped models: teacher, distilled student, and the training comparisons",
        "",
        f"Written by `benchmarks/bench_shipped.py` on {time.strftime('%Y-%m-%d %H:%M')} UTC from "
        f"`{args.run}`. Speed: {source}, {'x'.join(map(str, image.shape[1:]))}, through "
        f"`segment()` (default back end), {args.threads} threads, {cpu_name()}, "
        f"{os.cpu_count()} logical CPUs, torch {torch.__version__}; median of {args.runs} calls "
        "after a warm-up, each model in its own process. Training minutes (steps, without "
        "validation) from the run logs, on the device the checkpoint records. Quality: "
        f"{n_cases} held-out phantom cases (sites A, B, C), 1 mm, scored with `brats-kd "
        "evaluate`; HD95 in mm.",
        *(["", args.note] if args.note else []),
        "",
        "| model | what | params | file MB | GFLOPs | CPU s/case | peak RSS MB | train min "
        "| Dice WT | Dice TC | Dice ET | mean Dice | HD95 WT | HD95 TC | HD95 ET |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        sp, sc = r["speed"], r["scores"]

        def f(key: str, fmt: str = ".3f", d: dict = sc) -> str:
            return format(d[key], fmt) if key in d else "-"

        train = f"{r['train_s'] / 60:.1f} ({r['on']})" if r["train_s"] else "-"
        params = f"{sp['parameters'] / 1e6:.2f} M" if "parameters" in sp else "-"
        lines.append(
            f"| {label} | {r['what']} | {params} | {r['size_mb']:.1f} | {f('gflops', '.0f', sp)} "
            f"| {f('median_s', '.2f', sp)} ({sp.get('backend', '-')}) "
            f"| {f('peak_rss_mb', '.0f', sp)} | {train} | {f('dice_WT')} | {f('dice_TC')} "
            f"| {f('dice_ET')} | {f('dice_mean')} | {f('hd95_WT', '.1f')} | {f('hd95_TC', '.1f')} "
            f"| {f('hd95_ET', '.1f')} |"
        )
    teacher = rows.get("teacher (shipped)", {}).get("scores", {}).get("dice_mean")
    lines += ["", "Mean Dice per held-out site, and relative to the teacher:", ""]
    for label, r in rows.items():
        sc = r["scores"]
        per_site = ", ".join(f"{k[5:]} {v:.3f}" for k, v in sc.items() if k.startswith("site_"))
        rel = f" ({sc['dice_mean'] / teacher:.0%} of the teacher)" if teacher and sc else ""
        lines.append(f"- {label}: {per_site}{rel}")
    adaptation = []
    for stem, label in ADAPTATION.items():
        sc = read_scores(args.run, stem)
        if not sc:
            print(f"{label}: no scores_{stem}_B.csv, skipped", file=sys.stderr)
            continue
        adaptation.append(
            f"| {label} | {sc['dice_WT']:.3f} | {sc['dice_TC']:.3f} | {sc['dice_ET']:.3f} "
            f"| {sc['dice_mean']:.3f} | {sc['hd95_WT']:.1f} | {sc['hd95_TC']:.1f} "
            f"| {sc['hd95_ET']:.1f} |"
        )
    lines += [
        "",
        "Domain adaptation, on the 4 held-out site-B phantoms: students distilled from the same "
        "teacher, with the same steps, on the labelled cases of sites A and C only, without and "
        "with unlabelled site-B scans (teacher targets only).",
        "",
    ]
    if adaptation:
        lines += [
            "| student | Dice WT | Dice TC | Dice ET | mean Dice | HD95 WT | HD95 TC | HD95 ET |",
            "|---|---|---|---|---|---|---|---|",
            *adaptation,
        ]
    else:
        lines.append("Not part of this run (no `student_AC` / `student_AC_adaptB` scores).")
    lines += kd_tables([args.run, *args.compare], teacher)
    lines.append("")
    write_results(lines, args.out or RESULTS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
