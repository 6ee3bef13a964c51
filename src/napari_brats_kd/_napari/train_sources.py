"""Where a Train dock run reads its cases from: folders, or the cases open in the viewer.

A run trains on a folder of labelled cases or on the labelled cases open in napari, and (Adapt
mode) adapts to a folder of unlabelled cases or to the case open in napari; the open cases are
written into the run's folder (:data:`VIEWER_LABELLED`, :data:`VIEWER_CASES`) by the run. The
functions here check what was picked and say in words what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..labels import MODALITIES
from .train_form import MIN_LABELLED_CASES, folder, path_text

if TYPE_CHECKING:
    from ..training import TrainConfig
    from ..volume import Case

#: Subfolder of a run where the case open in the viewer is written (Adapt mode).
VIEWER_CASES = "viewer_cases"

#: Subfolder of a run where the labelled cases open in the viewer are written (its dataset).
VIEWER_LABELLED = "viewer_labelled_cases"


def new_run_dir(output_dir: Any, prefix: str) -> Path:
    """A new run folder's path in ``output_dir``: ``<prefix>-<date>-<time>`` (``-2``... if taken).

    Parameters
    ----------
    output_dir
        The Output folder control's value.
    prefix
        The mode's :attr:`~.train_fields.Mode.run_prefix`.

    Returns
    -------
    pathlib.Path
    """
    root = Path(output_dir).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = root / f"{prefix}-{stamp}"
    n = 2
    while run.exists():
        run = root / f"{prefix}-{stamp}-{n}"
        n += 1
    return run


def can_resume(run_dir: Path | None) -> bool:
    """Whether Resume can continue ``run_dir`` (it has the engine's state file; no run: it asks)."""
    from ..training.run_folder import STATE_FILE

    return run_dir is None or (Path(run_dir) / STATE_FILE).is_file()


def ask_run_dir(parent: Any, start: Any) -> Path | None:
    """Ask for the run folder to resume (starting in ``start``); ``None`` if cancelled."""
    from qtpy.QtWidgets import QFileDialog

    chosen = QFileDialog.getExistingDirectory(parent, "Resume which run folder?", str(start))
    return Path(chosen) if chosen else None


def run_config(run_dir: Path) -> TrainConfig:
    """The config of the run in ``run_dir`` (to resume it).

    Parameters
    ----------
    run_dir
        A run folder made by Start (or ``brats-kd train / distill``).

    Returns
    -------
    TrainConfig

    Raises
    ------
    TrainingError
        The folder is no run folder, or its config cannot be read.
    """
    from ..errors import TrainingError
    from ..training import load_config

    # The engine writes the run's settings there; it names the file in its messages the same.
    from ..training.run_folder import CONFIG_FILE

    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise TrainingError(
            f"{run_dir} is not a run folder (no config.yaml): pick a folder made by Start."
        )
    return load_config(path)


def _picked_dir(picked: Any, use_viewer: bool, run_dir: Path, which: str) -> Path:
    """The folder a run reads: the one picked, or the cases open in the viewer (written into
    ``run_dir`` by the run); ``which`` is ``"labelled"`` or ``"unlabelled"``.

    Raises
    ------
    TrainingError
        No folder is picked, or it does not exist.
    """
    from ..errors import TrainingError

    subdir, control, remedy = {
        "labelled": (VIEWER_LABELLED, "Dataset folder", "a folder of labelled cases (one "
                     "folder per case) in 'Dataset folder', or tick 'Use the labelled cases "
                     "open in the viewer'"),
        "unlabelled": (VIEWER_CASES, "Unlabelled folder", "the folder of the new site's cases "
                       "in 'Unlabelled folder', or tick 'Use the case open in the viewer'"),
    }[which]  # fmt: skip
    if use_viewer:
        return run_dir / subdir
    chosen = folder(picked)
    if chosen is None or not chosen.is_dir():
        text = path_text(picked)
        what = f"{control} {text!r} does not exist" if text else f"No {control.lower()}"
        raise TrainingError(f"{what}: pick {remedy}.")
    return chosen


def labelled_dir(picked: Any, use_viewer: bool, run_dir: Path) -> Path:
    """The run's folder of labelled cases (see :func:`_picked_dir`)."""
    return _picked_dir(picked, use_viewer, run_dir, "labelled")


def unlabeled_dir(picked: Any, use_viewer: bool, run_dir: Path) -> Path:
    """The run's folder of unlabelled cases, Adapt mode (see :func:`_picked_dir`)."""
    return _picked_dir(picked, use_viewer, run_dir, "unlabelled")


def needed_modalities(cfg: TrainConfig, model_config: Callable[[str], Any]) -> list[str]:
    """Modalities a run of ``cfg`` reads from every case (the model's and its teacher's).

    Parameters
    ----------
    cfg
        The run's config.
    model_config
        Reads the config of a model (its teacher, or the checkpoint it starts from).

    Returns
    -------
    list of str
        In :data:`~napari_brats_kd.labels.MODALITIES` order; all four when a model cannot be read
        (the engine then explains it).
    """
    from ..errors import BratsKDError

    needed = set(cfg.model.modalities or ())
    for spec in (getattr(cfg, "teacher", None), cfg.init_from):
        if not spec:
            continue
        try:
            needed |= set(model_config(spec).modalities)
        except BratsKDError:
            return list(MODALITIES)
    return [m for m in MODALITIES if m in needed] or list(MODALITIES)


def viewer_labelled_cases(layers: Any, modalities: list[str]) -> tuple[list[Case], list[str]]:
    """The labelled cases open in the viewer that have ``modalities``.

    Parameters
    ----------
    layers
        The viewer's layers.
    modalities
        The scans the run reads (:func:`needed_modalities`).

    Returns
    -------
    cases, messages
        The cases, and which were skipped and why (to tell the user).

    Raises
    ------
    TrainingError
        Fewer than :data:`~.train_fields.MIN_LABELLED_CASES` labelled cases are open (the message
        says which cases were skipped and how to fix it).
    """
    from ..errors import TrainingError
    from .case_from_layers import labelled_cases_from_layers

    cases, messages = labelled_cases_from_layers(layers, modalities)
    if len(cases) < MIN_LABELLED_CASES:
        skipped = " ".join(messages)
        raise TrainingError(
            f"{len(cases)} labelled case(s) open in the viewer; training needs at least "
            f"{MIN_LABELLED_CASES}, as one is held out for validation. Open more case folders "
            "with their segmentations (File > Open), name a painted Labels layer "
            "'<case> segmentation', or untick 'Use the labelled cases open in the viewer' "
            "and pick a dataset folder." + (f" {skipped}" if skipped else "")
        )
    return cases, messages


def viewer_case(layers: Any) -> tuple[Case, list[str]]:
    """The case open in the viewer (every modality layer found), for the unlabelled set.

    Parameters
    ----------
    layers
        The viewer's layers.

    Returns
    -------
    case, warnings

    Raises
    ------
    BratsKDError
        The viewer holds no scan, or its layers do not make a case.
    """
    from ..errors import CaseError
    from .case_from_layers import case_from_layers, find_modality_layers

    found = find_modality_layers(layers)
    if not found:
        raise CaseError(
            "The viewer holds no scan (T1, T1c, T2, FLAIR) to adapt to: open a case "
            "(File > Open) or untick 'Use the case open in the viewer'."
        )
    return case_from_layers(found)


def open_cases(
    cfg: TrainConfig, layers: Any, labelled: bool, unlabelled: bool
) -> tuple[list[Case], Case | None, list[str]]:
    """The cases open in the viewer that a run of ``cfg`` writes into its folder.

    Parameters
    ----------
    cfg
        The run's config (which scans its models read).
    layers
        The viewer's layers.
    labelled
        Collect the labelled cases (Use the labelled cases open in the viewer).
    unlabelled
        Collect the open case as the unlabelled set (Adapt: Use the case open in the viewer).

    Returns
    -------
    labelled_cases, unlabelled_case, warnings
        The cases (none, ``None`` when not asked for) and what to tell the user about them.

    Raises
    ------
    BratsKDError
        Too few labelled cases, or no case to adapt to.
    """
    from .model_picker import model_config

    cases: list[Case] = []
    case = None
    warnings: list[str] = []
    if labelled:
        cases, warnings = viewer_labelled_cases(layers, needed_modalities(cfg, model_config))
    if unlabelled:
        case, more = viewer_case(layers)
        warnings += more
    return cases, case, warnings
