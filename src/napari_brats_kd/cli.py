"""The ``brats-kd`` command line: a thin shell over the package's Python API.

Each subcommand lives in its own ``_add_<name>`` / ``_run_<name>`` pair. Heavy imports (torch, monai)
happen inside the ``_run_`` functions so that ``brats-kd --help`` answers at once. User errors
(:class:`~napari_brats_kd.errors.BratsKDError`) are printed as one line on stderr with exit status 2,
never as a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from ._cli_common import Runner, close_bars, tqdm_progress
from ._cli_training import (  # noqa: F401 - the flag helpers stay importable here (tests)
    _add_distill,
    _add_train,
    _distill_settings,
    _training_overrides,
)
from .errors import few, one_line


# ---------------------------------------------------------------------------------------------- phantom
def _add_phantom(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser(
        "phantom",
        help="write synthetic BraTS cases with exact ground truth",
        description="Write N synthetic BraTS cases (four modalities + segmentation) to OUT_DIR.",
    )
    p.add_argument("out_dir", type=Path, help="folder to write the cases into")
    p.add_argument("--n", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case (default 0)")
    p.add_argument(
        "--naming",
        choices=["2021", "2023"],
        default="2021",
        help="BraTS file naming and label convention (default 2021)",
    )
    p.add_argument(
        "--site",
        default="A",
        help="scanner 'site' preset (A = reference site, B, C = other hospitals; default A)",
    )
    p.add_argument(
        "--spacing",
        type=float,
        default=1.0,
        help="voxel size in mm: 1 = the BraTS grid 240x240x155, 4 = 60x60x39 (default 1)",
    )
    return _run_phantom


def _run_phantom(args: argparse.Namespace) -> int:
    from .phantom import write_phantom_dataset

    try:
        paths = write_phantom_dataset(
            args.out_dir,
            n=args.n,
            seed=args.seed,
            naming=args.naming,
            site=args.site,
            spacing=args.spacing,
            progress=tqdm_progress("phantoms", "case"),
        )
    except ValueError as exc:  # bad --n / --site / --spacing: a usage error, not a crash
        print(f"brats-kd phantom: error: {exc}", file=sys.stderr)
        return 2
    print(f"Wrote {len(paths)} case(s) to {args.out_dir}")
    return 0


# ------------------------------------------------------------------------------------------ segment
def _add_segment(sub: argparse._SubParsersAction) -> Runner:
    from .device import DEVICE_CHOICES  # torch-free at import time: --help stays fast

    p = sub.add_parser(
        "segment",
        help="segment the tumour of a case (or of every case in a folder)",
        description=(
            "Segment INPUT (a case folder or file, or a dataset folder of cases) and write label "
            "maps aligned with the input scans. One case: -o is the output file (or a folder). "
            "Several cases: -o is a folder receiving <case_id>_seg.nii.gz per case."
        ),
    )
    p.add_argument("input", type=Path, help="case folder/file, or a folder of cases")
    p.add_argument("-o", "--output", type=Path, required=True, help="output file or folder")
    p.add_argument(
        "--model",
        default="student",
        help="student, teacher, a registered name, a .safetensors checkpoint or a MONAI bundle",
    )
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--tta", action="store_true", help="average over mirrored copies (8x slower)")
    p.add_argument(
        "--convention",
        default=None,
        help="label convention to write (brats2021, brats2023, ...; default: the case's)",
    )
    p.add_argument(
        "--min-component-voxels",
        type=int,
        default=0,
        help="remove tumour components smaller than this many voxels (default 0: keep all)",
    )
    p.add_argument(
        "--keep-far-components",
        action="store_true",
        help="keep tumour components far from the main lesion that the model is unsure of "
        "(by default they are dropped, with a note)",
    )
    p.add_argument(
        "--threads", type=_positive_int, default=None, help="CPU threads (default: torch's)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that exist already (never a file of the input case)",
    )
    return _run_segment


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run_segment(args: argparse.Namespace) -> int:
    """A thin shell over :mod:`.batch`: it prints what each case gave."""
    from .batch import FolderResult, iter_segment_folder, plan_folder

    plan = plan_folder(args.input, args.output, args.overwrite)
    case_bar = tqdm_progress("cases", "case") if plan.several else None
    outcomes = iter_segment_folder(
        plan,
        args.model,
        # One bar for the one case; a folder shows the case bar instead.
        case_progress=None if plan.several else (lambda case_id: tqdm_progress(case_id, "step")),
        device=args.device,
        tta=args.tta,
        convention=args.convention,
        min_component_voxels=args.min_component_voxels,
        drop_far_components=not args.keep_far_components,
        num_threads=args.threads,
    )
    done = FolderResult(plan, [])  # counts the models used and the cases that failed
    for i, outcome in enumerate(outcomes):
        done.outcomes.append(outcome)
        for note in outcome.notes:
            print(f"{outcome.case_id}: {note}", file=sys.stderr)
        if outcome.error is not None:
            if not plan.several:
                raise outcome.error
            print(f"skipped {outcome.path}: {outcome.error}", file=sys.stderr)
        else:
            result = outcome.result
            volumes = ", ".join(f"{r} {v:.1f} ml" for r, v in result.volumes_ml.items())
            print(
                f"{outcome.case_id}: {volumes} ({result.seconds:.1f} s on {result.device}/"
                f"{result.backend}) -> {outcome.output}",
                file=sys.stderr if plan.several else sys.stdout,
            )
        if case_bar is not None:
            case_bar(i + 1, len(plan.cases), outcome.case_id if outcome.ok else "skipped")
    if not plan.several:
        return 0
    models = ", ".join(f"{name} ({n})" for name, n in done.models.items()) or "no model"
    failed = [str(o.path) for o in done.failed]
    segmented = len(plan.cases) - len(failed)
    print(f"Segmented {segmented} of {len(plan.cases)} cases with {models} into {args.output}")
    if failed:
        print(f"Failed ({len(failed)}): {few(failed, limit=20)}", file=sys.stderr)
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------- export
def _add_export(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX and/or TorchScript, checked against PyTorch",
        description=(
            "Export CKPT (a checkpoint, bundle or model name) and check that the export gives "
            "the same labels as PyTorch on a phantom case."
        ),
    )
    p.add_argument("checkpoint", help="student, teacher, a .safetensors checkpoint or a bundle")
    p.add_argument("--onnx", type=Path, default=None, help="ONNX file to write")
    p.add_argument("--torchscript", type=Path, default=None, help="TorchScript .pt file to write")
    return _run_export


def _run_export(args: argparse.Namespace) -> int:
    from .errors import CheckpointError
    from .export import export_onnx, export_torchscript
    from .models import resolve_model

    if args.onnx is None and args.torchscript is None:
        raise CheckpointError("Nothing to do: give --onnx OUT.onnx and/or --torchscript OUT.pt.")
    model = resolve_model(args.checkpoint)
    if args.onnx is not None:
        print(export_onnx(model, args.onnx))
    if args.torchscript is not None:
        print(export_torchscript(model, args.torchscript))
    return 0


# ------------------------------------------------------------------------------------- evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> Runner:
    from .labels import LabelConvention  # numpy only: --help stays fast

    conventions = [c.value for c in LabelConvention]
    p = sub.add_parser(
        "evaluate",
        help="score predicted segmentations against ground truth (Dice, HD95, volumes)",
        description=(
            "Match predictions in PRED_DIR to ground-truth cases in GT_DIR by case id and report "
            "Dice, HD95 (mm) and volumes for WT, TC, ET and each tumour class, BraTS style. "
            "Label conventions are detected per file unless given: a file's header records "
            "one when this plugin wrote it (brats-kd segment, napari's writer); otherwise the "
            "ground truth's follows from its case's file naming (nnU-Net, MSD, BraTS "
            "2021/2023) and label values, and a prediction's is the ground truth's when its "
            "values fit, else what its values imply."
        ),
    )
    p.add_argument("pred_dir", type=Path, help="folder of predicted label maps")
    p.add_argument("gt_dir", type=Path, help="folder of ground-truth cases")
    p.add_argument("--csv", type=Path, default=None, help="write per-case metrics and summary")
    for side, what in (("gt", "the ground truth"), ("pred", "the predictions")):
        p.add_argument(
            f"--{side}-convention",
            type=str.lower,
            choices=conventions,
            default=None,
            metavar="NAME",
            help=f"label convention of {what}: {', '.join(conventions)} (default: detect)",
        )
    p.add_argument(
        "--missing-as-empty",
        action="store_true",
        help=(
            "score a ground-truth case without prediction as an empty prediction (Dice 0, "
            "HD95 373.13 mm where the ground truth has the region), as the BraTS challenges do "
            "(default: score matched cases only and list the others)"
        ),
    )
    return _run_evaluate


def _run_evaluate(args: argparse.Namespace) -> int:
    import warnings
    from collections import Counter

    from .evaluation import UnmatchedCasesWarning, evaluate_folders

    def some(ids: Sequence[str], first: int = 5) -> str:
        # Enough ids to find the files, not a flood for a dataset of a thousand cases.
        shown = ", ".join(ids[:first])
        return shown if len(ids) <= first else f"{shown}, ... ({len(ids)} in all)"

    with warnings.catch_warnings():
        # Reported below in the summary, where the user reads the case count.
        warnings.simplefilter("ignore", UnmatchedCasesWarning)
        evaluation = evaluate_folders(
            args.pred_dir,
            args.gt_dir,
            args.csv,
            pred_convention=args.pred_convention,
            gt_convention=args.gt_convention,
            progress=tqdm_progress("evaluate", "case"),
            missing_as_empty=args.missing_as_empty,
        )
    results, summary = evaluation
    missing, unmatched = evaluation.missing_predictions, evaluation.unmatched_predictions
    print(f"{len(results)} case(s)")
    if missing:
        if args.missing_as_empty:
            print(
                f"{len(missing)} ground-truth case(s) without prediction, scored as empty "
                f"predictions: {some(missing)}"
            )
        else:
            print(
                f"warning: {len(missing)} ground-truth case(s) without prediction, left out of "
                f"the scores: {some(missing)} (--missing-as-empty scores them as empty "
                "predictions, as BraTS does)"
            )
    if unmatched:
        print(
            f"warning: {len(unmatched)} prediction(s) matching no ground-truth case, ignored: "
            f"{some(unmatched)} (name predictions after their case id)"
        )
    read = {
        "ground truth": Counter(r.gt_convention for r in results),
        "predictions": Counter(r.pred_convention for r in results if not r.prediction_missing),
    }
    if args.missing_as_empty and missing:
        read["predictions"]["none, scored as empty"] = len(missing)
    for what, counts in read.items():
        read_as = ", ".join(f"{name} ({n})" for name, n in sorted(counts.items()))
        print(f"{what} read as: {read_as}")
    print(f"{'region':<8}{'Dice mean':>11}{'Dice std':>10}{'HD95 mean':>11}{'HD95 med':>10}")
    for region in ("WT", "TC", "ET"):
        d, h = summary[f"dice_{region}"], summary[f"hd95_{region}"]
        row = f"{region:<8}{d['mean']:>11.4f}{d['std']:>10.4f}{h['mean']:>11.2f}"
        print(f"{row}{h['median']:>10.2f}")
    if args.csv is not None:
        print(f"Wrote {args.csv}")
    return 0


# ------------------------------------------------------------------------------------------- registry
#: Subcommands in the order ``--help`` lists them; later issues append theirs.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], Runner]] = [
    _add_phantom,
    _add_segment,
    _add_export,
    _add_train,
    _add_distill,
    _add_evaluate,
]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Runner]]:
    """The argument parser and a map from subcommand name to its runner."""
    parser = argparse.ArgumentParser(
        prog="brats-kd",
        description="Brain-tumour segmentation of BraTS MRI with knowledge distillation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    runners: dict[str, Runner] = {}
    for add in SUBCOMMANDS:
        before = set(sub.choices)
        runner = add(sub)
        for name in set(sub.choices) - before:
            runners[name] = runner
    return parser, runners


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``brats-kd``; returns the process exit status."""
    from .errors import BratsKDError

    parser, runners = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 1
    try:
        return _run_closing_bars(runners[args.command], args)
    except BratsKDError as exc:
        print(f"brats-kd {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:
        # The file system said no (a folder where a file goes, no permission, a full disk):
        # its own words and the path are what the user needs, not a traceback.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"brats-kd {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"brats-kd {args.command}: interrupted", file=sys.stderr)
        return 130


def _run_closing_bars(runner: Runner, args: argparse.Namespace) -> int:
    try:
        return runner(args)
    finally:
        close_bars()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
