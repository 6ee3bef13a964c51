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

Runner = Callable[[argparse.Namespace], int]


def _tqdm_progress(desc: str, unit: str = "step"):
    """A ``progress(done, total, message)`` callable drawing a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    bar = None

    def progress(done: int, total: int, message: str = "") -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=True)
        if bar.total != total:
            bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()

    return progress


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
            progress=_tqdm_progress("phantoms", "case"),
        )
    except ValueError as exc:  # bad --n / --site / --spacing: a usage error, not a crash
        print(f"brats-kd phantom: error: {exc}", file=sys.stderr)
        return 2
    print(f"Wrote {len(paths)} case(s) to {args.out_dir}")
    return 0


# ------------------------------------------------------------------------------------------- registry
#: Subcommands in the order ``--help`` lists them; later issues append theirs.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], Runner]] = [
    _add_phantom,
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
        return runners[args.command](args)
    except BratsKDError as exc:
        print(f"brats-kd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"brats-kd {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
