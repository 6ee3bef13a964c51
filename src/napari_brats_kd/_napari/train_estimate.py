"""The Train dock's "Expected" line: how long the run set up would take, before Start.

The planned steps come from the settings at once; the seconds per step are measured by running
one step of the network in a background thread (:func:`~napari_brats_kd.training.estimate.
time_one_step`), once per network, patch, batch and device: changing the epochs re-counts without
measuring again. A change of settings waits for a second of quiet before anything is measured.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer

from .train_feedback import format_seconds

#: ``() -> (config, labelled cases)``, or a reason that no estimate can be made yet.
EstimateInputs = Callable[[], "tuple[Any, int] | str"]


def _step_key(cfg: Any) -> tuple:
    """What the time of one step depends on."""
    model = cfg.model
    return (
        cfg.init_from, getattr(cfg, "teacher", None), model.kind, model.arch,
        tuple(model.modalities or ()), tuple(cfg.patch_size), cfg.batch_size,
        cfg.samples_per_case, cfg.device,
    )  # fmt: skip


def describe(steps: int, seconds_per_step: float, device: str) -> str:
    """The line shown: ``"Expected: about 25 min (600 steps x 2.5 s on cpu) ..."``."""
    return (
        f"Expected: about {format_seconds(steps * seconds_per_step)} of training "
        f"({steps} steps x {seconds_per_step:.1f} s measured on {device}); reading patches and "
        "validation add to it."
    )


class DurationEstimate:
    """Keeps ``label`` saying how long the run set up in the dock would take.

    Parameters
    ----------
    label
        A magicgui ``Label``.
    inputs
        Gives the run's config and the number of labelled cases, or a text saying what is
        missing (shown instead).
    delay_ms
        Quiet time after the last change before estimating.
    """

    def __init__(self, label: Any, inputs: EstimateInputs, delay_ms: int = 1000) -> None:
        self.label = label
        self.inputs = inputs
        self.seconds_per_step: dict[tuple, tuple[float, str]] = {}
        self.task: Any = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self.update)

    def schedule(self, *_: Any) -> None:
        """Estimate again after a quiet second (settings are being changed)."""
        self._timer.start()

    def stop(self) -> None:
        """No more estimates (the dock closes)."""
        try:
            self._timer.stop()
        except RuntimeError:  # Qt deleted it first (the application is closing)
            pass
        if self.task is not None and self.task.is_running:
            self.task.cancel()

    def update(self) -> None:
        """Estimate now: at once if this network's step was measured, else in the background."""
        from ..errors import BratsKDError

        try:
            got = self.inputs()
        except BratsKDError as exc:  # settings Start would refuse: said there, in full
            got = f"Expected duration: not known yet ({exc})"
        if isinstance(got, str):
            self.label.value = got
            return
        cfg, n_cases = got
        from ..training.estimate import planned_steps

        steps = planned_steps(cfg, n_cases)
        key = _step_key(cfg)
        if key in self.seconds_per_step:
            self.label.value = describe(steps, *self.seconds_per_step[key])
            return
        if self.task is not None and self.task.is_running:
            self.schedule()  # one measurement at a time: try again when it is done
            return
        self.label.value = f"Expected: {steps} steps; timing one step..."
        self._measure(cfg, key, steps)

    def _measure(self, cfg: Any, key: tuple, steps: int) -> None:
        from ._workers import start_task

        def measured(result: tuple[float, str]) -> None:
            self.seconds_per_step[key] = result
            self.label.value = describe(steps, *result)

        def failed(exc: BaseException) -> None:
            # Not a notification: the same problem is reported properly when the user presses
            # Start; here it only means no estimate.
            self.label.value = f"Expected duration: not known ({type(exc).__name__}: {exc})"

        def work(progress: Any, should_stop: Any) -> tuple[float, str]:
            from ..training.estimate import time_one_step

            return time_one_step(cfg, repeats=1)

        self.task = start_task(work, on_returned=measured, on_error=failed)


def count_cases(data_dir: Any) -> int | None:
    """Labelled cases in ``data_dir``; ``None`` when it is not a folder holding any."""
    from ..errors import BratsKDError
    from ..training.splits import discover_cases

    if not data_dir or not Path(data_dir).is_dir():
        return None
    try:
        return len(discover_cases(data_dir)) or None
    except (BratsKDError, OSError):  # an unusable folder: Start says why
        return None
