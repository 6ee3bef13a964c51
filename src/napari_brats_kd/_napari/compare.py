"""The Train dock's "Segment current case": a new model and its reference, side by side.

The case open in the viewer is segmented with the model a run made and with the model it learnt
from (its teacher, or the checkpoint it was fine-tuned from); both results become layers, and a
third layer shows where they disagree (:func:`difference_labels`), with their agreement per region
in the status line. :class:`CaseComparison` runs it for the dock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..labels import MODALITY_NAMES, REPORT_REGIONS

if TYPE_CHECKING:
    from ._workers import Task

#: Colours of the difference layer: 1 only the new model, 2 only the reference, 3 other class.
DIFFERENCE_COLORS = {
    None: (0.0, 0.0, 0.0, 0.0),
    0: (0.0, 0.0, 0.0, 0.0),
    1: (1.0, 0.2, 0.2, 1.0),
    2: (0.2, 0.5, 1.0, 1.0),
    3: (1.0, 0.9, 0.1, 1.0),
}


def difference_labels(new: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Where two label maps (in the same convention) disagree.

    Parameters
    ----------
    new, reference
        The label maps of the new model and of its reference.

    Returns
    -------
    numpy.ndarray
        ``uint8``: 1 tumour only in ``new``, 2 only in ``reference``, 3 tumour in both but another
        class, 0 agreement.
    """
    new_t, ref_t = new > 0, reference > 0
    out = np.zeros(new.shape, np.uint8)
    out[new_t & ~ref_t] = 1
    out[ref_t & ~new_t] = 2
    out[new_t & ref_t & (new != reference)] = 3
    return out


def model_label(spec: str) -> str:
    """Short name of a model for layer names: its list name, else the file or folder name."""
    from ..models import available_models

    for info in available_models():
        if spec in (info.name, str(info.path)):
            return info.name
    path = Path(spec)
    return path.name.removesuffix(".safetensors") if path.exists() else spec


def comparison_case(layers: Any, models: Sequence[str]) -> tuple[Any, Any, list[str]]:
    """The open case with the scans every one of ``models`` needs.

    Parameters
    ----------
    layers
        The viewer's layers.
    models
        The models compared.

    Returns
    -------
    case, source_layer, warnings
        The case, the layer its results are placed over, and what to tell the user about it.

    Raises
    ------
    BratsKDError
        A model cannot be read, or the viewer lacks one of the scans.
    """
    from ..errors import CaseError
    from ..models import resolve_model
    from .case_from_layers import case_from_layers, find_modality_layers

    needed: list[str] = []
    for spec in models:
        needed += [m for m in resolve_model(spec).config.modalities if m not in needed]
    found = find_modality_layers(layers)
    missing = [MODALITY_NAMES[m] for m in needed if m not in found]
    if missing:
        raise CaseError(
            f"The viewer has no layer for {', '.join(missing)}: open a case (File > Open, a case "
            "folder) to compare the models on it."
        )
    case, warnings = case_from_layers({m: found[m] for m in needed})
    return case, found[needed[0]], warnings


def segment_with_each(case: Any, models: Sequence[str], device: str) -> Callable:
    """A task (``work(progress, should_stop)``) segmenting ``case`` with each of ``models``."""

    def work(progress: Callable, should_stop: Callable) -> list:
        from ..inference import segment

        results = []
        for i, spec in enumerate(models):
            progress(i, len(models), f"Segmenting {case.case_id} with {spec}...")
            results.append(segment(case, model=spec, device=device, should_stop=should_stop))
        progress(len(models), len(models), "")
        return results

    return work


def show_comparison(
    viewer: Any, results: Sequence[Any], models: Sequence[str], case: Any, source: Any
) -> str:
    """Add the results (and, for two, their difference) as layers; returns the status line.

    Parameters
    ----------
    viewer
        The napari viewer.
    results
        The segmentation results, in the order of ``models``.
    models
        The models: the new one, then its reference if it has one.
    case, source
        The case segmented and the layer the results are placed over.

    Returns
    -------
    str
        What was compared and how well the two agree (Dice per region).
    """
    from ..labels import labels_to_regions
    from ..metrics import dice
    from .case_from_layers import add_result_layer

    labels = [model_label(spec) for spec in models]
    layers = [
        add_result_layer(viewer, res, case, source, label)
        for res, label in zip(results, labels, strict=True)
    ]
    if len(results) < 2:
        return f"{labels[0]} segmented {case.case_id} (no reference model)."
    new, ref = results
    diff = difference_labels(new.labels, ref.labels)
    name = f"{case.case_id} {labels[0]} vs {labels[1]}"
    if name in viewer.layers:
        viewer.layers.remove(name)
    viewer.add_labels(
        diff,
        name=name,
        scale=layers[0].scale,
        translate=layers[0].translate,
        colormap=DIFFERENCE_COLORS,
        metadata={"brats_kd": {"role": "difference", "models": list(models)}},
    )
    new_regions = labels_to_regions(new.labels, new.convention, REPORT_REGIONS)
    ref_regions = labels_to_regions(ref.labels, ref.convention, REPORT_REGIONS)
    agree = ", ".join(
        f"{r} {dice(new_regions[i], ref_regions[i]):.2f}" for i, r in enumerate(REPORT_REGIONS)
    )
    return (
        f"{case.case_id}: {labels[0]} vs {labels[1]} agreement (Dice) {agree}; "
        f"{int((diff > 0).sum())} voxels differ (layer {name!r}: red = only the new model, "
        "blue = only the reference, yellow = other tumour class)."
    )


class CaseComparison:
    """Runs "Segment current case" for the Train dock: one task at a time.

    Parameters
    ----------
    viewer
        The napari viewer.
    status
        The dock's status line (a magicgui ``Label``).
    button
        The dock's "Segment current case" button (disabled while the task runs).
    closed
        Whether the dock was closed (its labels are gone: nothing is shown then).
    on_finished
        Called in the GUI thread when the task ended (the dock re-enables its controls).

    Attributes
    ----------
    task
        The running (or last) task.
    """

    def __init__(
        self,
        viewer: Any,
        status: Any,
        button: Any,
        closed: Callable[[], bool],
        on_finished: Callable[[], None],
    ) -> None:
        self.viewer, self.status, self.button = viewer, status, button
        self._closed, self._on_finished = closed, on_finished
        self.task: Task | None = None

    @property
    def busy(self) -> bool:
        """Whether a comparison is running."""
        return self.task is not None and self.task.is_running

    def start(self, models: Sequence[str], device: str) -> Task | None:
        """Segment the open case with each of ``models`` (the new one first) and compare them.

        Parameters
        ----------
        models
            The new model, then its reference if it has one.
        device
            Where the models run.

        Returns
        -------
        Task or None
            The task, or ``None`` if it cannot start (a notification says why).
        """
        from napari.utils.notifications import show_warning

        from ..errors import BratsKDError
        from ._workers import notify_error, start_task

        try:
            case, source_layer, warnings = comparison_case(self.viewer.layers, models)
        except BratsKDError as exc:
            notify_error(exc, "Segment current case")
            return None
        for warning in warnings:
            show_warning(warning)
        self.button.enabled = False
        self.status.value = f"Segmenting {case.case_id} with {' and '.join(models)}..."
        self.task = start_task(
            segment_with_each(case, models, device),
            on_progress=self._on_progress,
            on_returned=lambda res: self._show(res, models, case, source_layer),
            on_error=lambda exc: notify_error(exc, "Segment current case"),
            on_finished=self._on_finished,
        )
        return self.task

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if not self._closed() and message:
            self.status.value = message

    def _show(self, results: list, models: Sequence[str], case: Any, source: Any) -> None:
        if not self._closed():
            self.status.value = show_comparison(self.viewer, results, models, case, source)
