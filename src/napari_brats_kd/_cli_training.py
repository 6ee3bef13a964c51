"""``brats-kd train`` and ``brats-kd distill``: flags and ``--set`` pairs into one typed
mapping of settings, handed to :func:`~napari_brats_kd.training.load_config`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._cli_common import RenamedFlag, Runner, tqdm_progress


def _add_training_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``distill``."""
    p.add_argument(
        "data_dir",
        type=Path,
        nargs="?",
        default=None,
        help="folder of labelled cases (with --resume: default the run's own)",
    )
    p.add_argument("--out", type=Path, default=None, help="where to write the best checkpoint")
    p.add_argument("--config", default=None, help="YAML config file (default: the shipped one)")
    p.add_argument("--run-dir", type=Path, default=None, help="run folder (default: <out>_run)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        metavar="M",
        help="wall-time budget: the learning rate decays to fit it and the run ends (validated "
        "and saved) after M minutes, or after --epochs if sooner",
    )
    p.add_argument("--batch-size", type=int, default=None, help="cases per step")
    p.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"))
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader worker processes")
    p.add_argument("--augment", default=None, help="augmentation preset: none, light, strong")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument(
        "--split",
        type=Path,
        default=None,
        metavar="JSON",
        help='your own split, {"train": [case ids], "val": [...], "test": [...]} (default: a '
        "seeded split, saved as split.json in the run folder)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN",
        help="continue the run in folder RUN (its config.yaml; other options override it; more "
        "--epochs stretch the learning-rate schedule to the new length)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config setting, e.g. --set augment.noise_prob=0.2 (repeatable)",
    )


def _training_overrides(args: argparse.Namespace, extra: dict) -> dict:
    """``--set key=value`` pairs (values read as YAML), then the explicit flags as the typed
    values argparse gave them: a path stays a path (``--out "run: 1"`` is no YAML mapping)."""
    from .training.config import parse_override

    pairs = {
        "data_dir": args.data_dir,
        "out": args.out,
        "run_dir": args.run_dir,
        "epochs": args.epochs,
        "max_minutes": args.max_minutes,
        "batch_size": args.batch_size,
        "patch_size": list(args.patch_size) if args.patch_size else None,
        "lr": args.lr,
        "device": args.device,
        "num_workers": args.num_workers,
        "augment.preset": args.augment,
        "seed": args.seed,
        "split_file": args.split,
        **extra,
    }
    settings = dict(parse_override(text) for text in args.overrides)
    settings.update((k, v) for k, v in pairs.items() if v is not None)
    return settings


def _print_notes(event: dict) -> None:
    """Print the engine's notes (steps before training, e.g. caching teacher outputs)."""
    if event.get("type") == "note":
        print(event["message"], file=sys.stderr, flush=True)


def _run_training(args: argparse.Namespace, kind: str, extra: dict) -> int:
    from .training import distill, load_config, resume_run, train_teacher

    if args.data_dir is None and args.resume is None:
        from .errors import TrainingError

        raise TrainingError(
            f"Give the folder of labelled cases (brats-kd {args.command} DATA ...), or "
            "--resume RUN to continue a run."
        )
    overrides = _training_overrides(args, extra)
    progress = tqdm_progress(kind)
    if args.resume is not None:
        result = resume_run(args.resume, overrides, progress=progress, on_event=_print_notes)
    else:
        cfg = load_config(args.config, overrides, kind=kind)
        run = distill if kind == "distill" else train_teacher
        result = run(cfg, progress=progress, on_event=_print_notes)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 validates, saves and reports
    best = f"{result.best_metric:.4f} (epoch {result.best_epoch})" if result.best_epoch else "n/a"
    if result.time_limit_reached:
        print(f"Time limit reached after {result.epochs_done} epoch(s).")
    print(f"Run folder: {result.run_dir}")
    print(f"Best mean validation Dice: {best}")
    print(f"Checkpoint: {result.out or result.best_checkpoint or result.last_checkpoint}")
    return 0


def _add_train(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser(
        "train",
        help="train a segmentation network (teacher) on labelled cases",
        description=(
            "Train a network with Dice + BCE on tumour regions (TC, WT, ET). Settings come from "
            "the shipped teacher.yaml (or --config), overridden by the flags and --set pairs. "
            "--init-from fine-tunes a checkpoint with the shipped finetune.yaml defaults instead "
            "(encoder frozen, pretrained layers at 0.1x the learning rate, lr 1e-4)."
        ),
    )
    _add_training_options(p)
    p.add_argument(
        "--arch",
        default=None,
        help="teacher architecture: segresnet (the bundle network), segresnet-large, segresnet-halfres "
        "(half resolution, trainable on CPU), unet, swinunetr",
    )
    p.add_argument("--modalities", default=None, help="input modalities, e.g. t1c,t1,t2,flair")
    p.add_argument(
        "--init-from",
        default=None,
        help="checkpoint or MONAI bundle to start from (fine-tuning; its network and modalities "
        "are kept)",
    )
    p.add_argument(
        "--freeze",
        default=None,
        help="'encoder', comma-separated parameter-name prefixes, or 'none' (with --init-from "
        "the default is encoder)",
    )
    p.add_argument(
        "--pretrained-lr-factor",
        type=float,
        default=None,
        metavar="F",
        help="learning-rate multiplier of the layers loaded by --init-from (default 0.1; the "
        "output layer always learns at the full rate)",
    )
    return _run_train


def _modalities_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from .naming import parse_modalities

    try:
        return list(parse_modalities(text))
    except ValueError as exc:
        from .errors import TrainingError

        raise TrainingError(str(exc)) from exc


def _run_train(args: argparse.Namespace) -> int:
    freeze = args.freeze
    if freeze is not None:
        words = [w.strip() for w in freeze.split(",")]
        freeze = [] if [w.lower() for w in words] in (["none"], [""]) else [w for w in words if w]
    if args.init_from is not None and args.config is None and args.resume is None:
        # Fine-tuning, as fine_tune() does it: teacher.yaml's rate and fixed modalities are
        # those of training from scratch.
        args.config = "finetune"
    extra = {
        "model.arch": args.arch,
        "model.modalities": _modalities_list(args.modalities),
        "init_from": args.init_from,
        "freeze": freeze,
        "pretrained_lr_factor": args.pretrained_lr_factor,
    }
    return _run_training(args, "train", extra)


def _add_distill(sub: argparse._SubParsersAction) -> Runner:
    p = sub.add_parser(
        "distill",
        help="distil a small fast student from a teacher",
        description=(
            "Train a student with alpha * (Dice + BCE) on labels + (1 - alpha) * T^2 * binary KL "
            "to the teacher's softened outputs. --modalities trains a student on fewer scans than "
            "the teacher (cross-modal); --unlabeled adds unlabelled cases (e.g. another site) "
            "learnt from the teacher only."
        ),
    )
    _add_training_options(p)
    p.add_argument("--teacher", default=None, help="teacher checkpoint, model name or bundle")
    p.add_argument("--modalities", default=None, help="student input modalities, e.g. t1c,flair")
    p.add_argument("--student", default=None, help="student preset: student-small, student-tiny")
    p.add_argument("--unlabeled", type=Path, default=None, help="folder of unlabelled cases")
    p.add_argument("--alpha", type=float, default=None, help="weight of the label loss (0-1)")
    p.add_argument("--temperature", type=float, default=None, help="softening temperature T")
    p.add_argument(
        "--teacher-targets",
        choices=("auto", "online", "cached"),
        default=None,
        help="run the teacher on every patch (online) or once per case, stored on disk "
        "(cached: several times faster on a CPU); auto (default): cached on CPU, online on GPU",
    )
    p.add_argument(
        "--attention-weight",
        type=float,
        default=None,
        metavar="W",
        help="also match the teacher's encoder attention maps, with weight W (default 0: off)",
    )
    p.add_argument(
        "--kd-label-correction",
        action="store_true",
        default=None,
        help="correct the teacher's outputs by the labels: where the teacher contradicts the "
        "ground truth, learn its confidence on the label's side (knowledge adjustment)",
    )
    p.add_argument(
        "--label-correction",
        action=RenamedFlag,
        new="--kd-label-correction",
        dest="kd_label_correction",
        help=argparse.SUPPRESS,
    )
    return _run_distill


def _distill_settings(args: argparse.Namespace) -> dict:
    """The distillation options as config keys (``None``: not given)."""
    return {
        "teacher": args.teacher,
        "model.modalities": _modalities_list(args.modalities),
        "model.arch": args.student,
        "unlabeled_dir": args.unlabeled,
        "alpha": args.alpha,
        "temperature": args.temperature,
        "teacher_targets": args.teacher_targets,
        "attention_weight": args.attention_weight,
        "kd_label_correction": args.kd_label_correction,
    }


def _run_distill(args: argparse.Namespace) -> int:
    return _run_training(args, "distill", _distill_settings(args))
