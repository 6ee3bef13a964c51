"""What the Train dock shows of a run: the status line (epoch, step, ETA, loss), the plot, the table.

:class:`RunFeedback` turns the engine's progress calls and events into the status line and the
live plot's points; :func:`format_validation` is the validation table shown at the end;
:func:`read_log` reads a run's log back (Resume shows the epochs done before). Nothing here
imports Qt or napari: the dock puts the text into its labels.
"""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path
from typing import Any

from ..labels import REPORT_REGIONS


class RunFeedback:
    """The status line and plot points of one run.

    Parameters
    ----------
    plot
        Receives the points (``add_step``, ``add_epoch``, ``add_validation``): the dock's
        :class:`~._plot.TrainingPlot`.
    """

    def __init__(self, plot: Any) -> None:
        self.plot = plot
        self.epochs_total = 0
        self.epoch = 0
        #: The last step event's loss (the engine sends it before the step's progress call).
        self.loss: float | None = None
        self._eta_start: tuple[float, int] | None = None

    def reset(self, epochs: int) -> None:
        """Start over for a run of ``epochs`` epochs (before its first step)."""
        self.epochs_total = epochs
        self.epoch = 0
        self.loss = None
        self._eta_start = None

    def progress(self, done: int, total: int, message: str, now: float | None = None) -> str:
        """The status line after ``done`` of ``total`` steps.

        Parameters
        ----------
        done, total
            Steps done and planned.
        message
            The engine's progress message: not shown (the loss comes from the step event,
            as a number, rather than parsed back out of this text).
        now
            The time (:func:`time.perf_counter`); by default now.

        Returns
        -------
        str
            ``"Epoch 2/5 · step 7/20 · ETA 1 min 05 s · loss 0.41"``.
        """
        now = time.perf_counter() if now is None else now
        if self._eta_start is None:
            # The first step's time includes loading data and models: measure from it on.
            self._eta_start = (now, done)
        t0, d0 = self._eta_start
        eta = ""
        if done > d0:
            remaining = (now - t0) / (done - d0) * (total - done)
            eta = f" · ETA {format_seconds(remaining)}"
        epoch = f"Epoch {self.epoch}/{self.epochs_total} · " if self.epoch else ""
        loss = "" if self.loss is None else f" · loss {self.loss:.4f}"
        return f"{epoch}step {done}/{total}{eta}{loss}"

    def event(self, event: dict) -> str | None:
        """Take one of the engine's events: plot its numbers; return a new status line, if any.

        Parameters
        ----------
        event
            ``{"type": "start" | "note" | "val_progress" | "step" | "epoch" | "val", ...}``
            (``"note"``: the dock's own steps before training, such as writing open cases).

        Returns
        -------
        str or None
        """
        kind = event.get("type")
        if kind == "start":
            # Sent before the first (possibly slow) step: show the epoch right away.
            self.epoch = int(event["start_epoch"]) + 1
            self.epochs_total = int(event["epochs"])
            return f"Epoch {self.epoch}/{self.epochs_total} · preparing first step..."
        if kind == "note":
            return str(event["message"])
        if kind == "val_progress":
            return (
                f"Epoch {event['epoch']}/{self.epochs_total} · validating case "
                f"{event['done']}/{event['total']}"
            )
        if kind == "step":
            self.epoch = int(event["epoch"])
            self.loss = float(event["loss"])
            self.plot.add_step(int(event["step"]), float(event["loss"]))
        elif kind == "epoch":
            self.plot.add_epoch(int(event["epoch"]), int(event["step"]), float(event["loss"]))
        elif kind == "val":
            self.plot.add_validation(int(event["epoch"]), event["dice"])
        return None


def failed_status(run_dir: Path | None) -> str:
    """The status line after a run failed: whether its last checkpoint is kept for Resume."""
    from ..training.run_folder import LAST_CKPT

    if run_dir is not None and (Path(run_dir) / LAST_CKPT).is_file():
        return f"Failed. The last checkpoint is kept in {run_dir}; Resume continues it."
    return "Failed."


def finished_status(result: Any, model: str | None = None) -> str:
    """The status line after a run returned.

    Parameters
    ----------
    result
        The run's :class:`~napari_brats_kd.training.TrainResult`.
    model
        The name the trained model was registered under (not for a stopped run).

    Returns
    -------
    str
    """
    if result.stopped:
        tried = (
            f' "Segment current case" tries it (model {model!r} in the Segment widgets).'
            if model else ""
        )  # fmt: skip
        return (
            f"Stopped after {result.epochs_done} finished epoch(s); checkpoint "
            f"{result.last_checkpoint} kept. Resume continues the run.{tried}"
        )
    checkpoint = result.best_checkpoint or result.last_checkpoint
    best = f" (best epoch {result.best_epoch})" if result.best_epoch else ""
    return (
        f"Done: {result.epochs_done} epoch(s). Model {model!r}{best} is in the Segment widgets' "
        f"model list; checkpoint {checkpoint}."
    )


def checkpoint_to_offer(result: Any) -> Path | None:
    """The checkpoint a returned run offers as a model; ``None`` for a run stopped too early.

    A finished run offers its best (else last) checkpoint; a stopped one its last, so that the
    user can try what it has learnt so far (Resume later replaces it by the finished model).
    """
    if not result.stopped:
        return result.best_checkpoint or result.last_checkpoint
    last = Path(result.last_checkpoint)
    return last if result.epochs_done and last.is_file() else None


def finished_note(result: Any, model: str) -> str:
    """The notification after a run registered ``model``: finished, or stopped and tryable."""
    if result.stopped:
        return (
            f"Training stopped; Resume continues {result.run_dir.name}. Its last checkpoint is "
            f'model {model!r}: try it with "Segment current case".'
        )
    return f"Training finished: model {model!r} is ready to segment."


def format_validation(history: list[dict], best_epoch: int = 0, last: int = 6) -> str:
    """Table of validation Dice per region: the last ``last`` validated epochs and the best.

    Parameters
    ----------
    history
        The run's log rows (``epoch``, ``val_mean_dice``, ``val_dice_<region>``).
    best_epoch
        The epoch of the checkpoint kept (marked ``*``).
    last
        How many of the last validated epochs to show.

    Returns
    -------
    str
        A monospace table, or a line saying there is no validation yet.
    """
    rows = [r for r in history if r.get("val_mean_dice") not in (None, "")]
    if not rows:
        return "No validation yet (it runs every val_every epochs and at the end)."
    shown = rows[-last:]
    best = [r for r in rows if int(r["epoch"]) == best_epoch]
    if best and best[0] not in shown:
        shown = best + shown
    header = "epoch " + " ".join(f"{r:>5}" for r in REPORT_REGIONS) + "  mean"
    lines = ["Validation Dice (* = the checkpoint kept)", header]
    for r in shown:
        mark = "*" if int(r["epoch"]) == best_epoch else " "
        cells = " ".join(f"{float(r[f'val_dice_{g}']):5.3f}" for g in REPORT_REGIONS)
        lines.append(f"{int(r['epoch']):>4}{mark} {cells} {float(r['val_mean_dice']):5.3f}")
    return "\n".join(lines)


def read_log(run_dir: Path) -> list[dict]:
    """The rows of a run's log (the engine's ``log.csv``); none when it has no log yet.

    Parameters
    ----------
    run_dir
        The run folder.

    Returns
    -------
    list of dict
    """
    from ..training.run_folder import LOG_FILE

    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def format_seconds(seconds: float) -> str:
    """``"42 s"``, ``"3 min 07 s"`` or ``"2 h 05 min"`` (``"?"`` when not finite)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
