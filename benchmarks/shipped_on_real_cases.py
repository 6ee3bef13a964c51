"""Run the shipped models on the two real cases of ``../shared/data/real`` and show what they do.

For each case: the shipped student and teacher segment it through
:func:`napari_brats_kd.inference.segment` (what the widgets and ``brats-kd segment`` run), with
their times and tumour volumes. TCGA-DU-7294 comes with BraTS 2020 algorithm outputs: Dice and
HD95 are computed against the simple fusion of five of them (labels 1/2: whole tumour and core, no
enhancing label) and against hnfnetv1-20 (the one with enhancing tumour). These are algorithm
outputs, not expert ground truth: a rough reference. BraTS-GLI-00001-000 has no segmentation:
volumes only. ``--also`` adds other models (say, the comparison students of a training run) to
the table.

Writes ``benchmarks/results/shipped_on_real_cases.md`` and the figure
``docs/shipped_on_real_cases.png`` (FLAIR and T1c at the axial slice of the largest tumour area,
with each model's labels and the reference). Real scans are read from ``../shared``, never copied.

Usage::

    python benchmarks/shipped_on_real_cases.py [--student student] [--teacher teacher] \
        [--also "NAME=CHECKPOINT"]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from napari_brats_kd.inference import segment
from napari_brats_kd.io import load_case
from napari_brats_kd.labels import CLASS_COLORS, REPORT_REGIONS, class_map, convert_labels
from napari_brats_kd.metrics import evaluate_labels

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REAL = ROOT.parent / "shared" / "data" / "real"
REFERENCES = ("fusion_simple", "hnfnetv1-20")


def _class_image(labels: np.ndarray, convention) -> np.ndarray:
    """0 background, 1 NCR, 2 ED, 3 ET: one colour index per tumour class."""
    classes = class_map(labels, convention)
    out = np.zeros(labels.shape, np.uint8)
    for i, name in enumerate(("NCR", "ED", "ET"), start=1):
        if name in classes:
            out[classes[name]] = i
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=REAL)
    parser.add_argument("--student", default="student", help="model name or checkpoint")
    parser.add_argument("--teacher", default="teacher", help="model name or checkpoint")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="NAME=CHECKPOINT",
        help="another model for the table (not the figure), e.g. a comparison student of a "
        "training run: 'no KD, 1500 steps=runs/shipped/student_nokd.safetensors' (repeatable)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "shipped_on_real_cases.md")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "shipped_on_real_cases.png")
    args = parser.parse_args(argv)
    if not args.real.is_dir():
        print(f"{args.real} not found: the real cases live in ../shared/data/real", file=sys.stderr)
        return 1

    import torch

    torch.set_num_threads(2)
    models = {"student": args.student, "teacher": args.teacher}
    models.update(item.split("=", 1) for item in args.also)
    cases = [load_case(p) for p in sorted(args.real.iterdir()) if p.is_dir()]
    lines = [
        "# Shipped models on the two real cases",
        "",
        "Written by `benchmarks/shipped_on_real_cases.py`; 2 torch threads on this machine's CPU. "
        "References for TCGA-DU-7294 are BraTS 2020 *algorithm* outputs shipped with the case "
        "(not expert ground truth). `fusion_simple` holds labels 1 and 2 only, read in the 2021 "
        "convention: its ET is empty, so ET Dice against it is 0 whenever a model finds ET.",
        "",
        "| case | model | s | WT ml | TC ml | ET ml | reference | Dice WT | Dice TC | Dice ET "
        "| HD95 WT | HD95 TC | HD95 ET |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    panels = []
    for case in cases:
        refs = case.extra.get("segmentations", {})
        preds = {}
        for role, spec in models.items():
            res = segment(case, spec)
            preds[role] = res
            vols = res.volumes_ml
            head = (
                f"| {case.case_id} | {role} | {res.seconds:.1f} | {vols['WT']:.1f} "
                f"| {vols['TC']:.1f} | {vols['ET']:.1f} "
            )
            shown = [r for r in REFERENCES if r in refs] or [None]
            for ref_name in shown:
                if ref_name is None:
                    lines.append(head + "| (none) | - | - | - | - | - | - |")
                    continue
                ref = refs[ref_name]
                gt = convert_labels(
                    np.asarray(ref["volume"].data), ref["convention"], res.convention
                )
                m = evaluate_labels(
                    res.labels,
                    gt,
                    res.convention,
                    spacing=case.reference.scale,
                    case_id=case.case_id,
                )
                lines.append(
                    head
                    + f"| {ref_name} | "
                    + " | ".join(f"{m.dice[g]:.3f}" for g in REPORT_REGIONS)
                    + " | "
                    + " | ".join(f"{m.hd95[g]:.1f}" for g in REPORT_REGIONS)
                    + " |"
                )
        panels.append((case, preds, refs))

    # Figure: one row per case; FLAIR, T1c, student, teacher, reference.
    cmap = ListedColormap(
        [(0, 0, 0, 0), CLASS_COLORS["NCR"], CLASS_COLORS["ED"], CLASS_COLORS["ET"]]
    )
    fig, axes = plt.subplots(len(panels), 5, figsize=(14, 3.3 * len(panels)), facecolor="black")
    axes = np.atleast_2d(axes)
    for r, (case, preds, refs) in enumerate(panels):
        student = preds["student"]
        ref_item = refs.get(REFERENCES[0])
        area_src = np.asarray(ref_item["volume"].data) if ref_item is not None else student.labels
        z = int(np.argmax((area_src > 0).sum(axis=(1, 2))))  # display axis 0 = axial slices
        flair, t1c = case.images["flair"].data[z], case.images["t1c"].data[z]
        overlays = [
            ("FLAIR", flair, None),
            ("T1c", t1c, None),
            ("student", flair, _class_image(student.labels[z], student.convention)),
            (
                "teacher",
                flair,
                _class_image(preds["teacher"].labels[z], preds["teacher"].convention),
            ),
        ]
        if ref_item is not None:
            ref_lab = np.asarray(ref_item["volume"].data)[z]
            overlays.append(
                (
                    f"reference: {REFERENCES[0]}",
                    flair,
                    _class_image(ref_lab, ref_item["convention"]),
                )
            )
        else:
            overlays.append(("(no reference segmentation)", flair, None))
        for c, (title, img, seg) in enumerate(overlays):
            ax = axes[r, c]
            inside = img[img > 0]
            hi = float(np.percentile(inside, 99.5)) if inside.size else 1.0
            ax.imshow(img, cmap="gray", clim=(0, hi), interpolation="nearest")
            if seg is not None:
                ax.imshow(seg, cmap=cmap, vmin=0, vmax=3, alpha=0.5, interpolation="nearest")
            ax.set_title(f"{case.case_id}: {title}" if c == 0 else title, color="white", fontsize=9)
            ax.set_axis_off()
    fig.suptitle(
        "Shipped demo models (trained on phantoms only) on real BraTS scans; axial slice of the "
        "largest tumour area, radiological view. NCR red, ED green, ET yellow.",
        color="white",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=90, facecolor="black")
    figure = args.figure.resolve()
    # Relative to the repository when the figure is in it (the README's links), else as given.
    shown = figure.relative_to(ROOT) if figure.is_relative_to(ROOT) else figure
    lines += ["", f"Figure: `{shown}`.", ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
