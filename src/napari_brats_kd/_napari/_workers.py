"""Run backend work in napari thread workers, with progress, cancellation and user-facing errors.

Backend functions (segmentation, training) take two plain callables, ``progress(done, total,
message)`` and ``should_stop() -> bool``, and know nothing about Qt. :func:`start_task` runs such
a function in a napari :func:`~napari.qt.threading.create_worker` thread, carries its progress calls
back to the GUI thread through a Qt signal and turns a Cancel click into ``should_stop() == True``.
:func:`notify_error` turns exceptions into napari notifications: a
:class:`~napari_brats_kd.errors.BratsKDError` shows its message (written for the user), never a
traceback.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from typing import Any

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from ..callbacks import Progress as ProgressFn
from ..callbacks import ShouldStop as StopFn
from ..errors import BratsKDError, Cancelled, one_line

logger = logging.getLogger(__name__)

TaskFn = Callable[[ProgressFn, StopFn], Any]


class _ProgressRelay(QObject):
    """Lives in the GUI thread: emitting from the worker thread queues the call to the GUI."""

    progressed = Signal(int, int, str)


class Task:
    """A backend call running in a napari thread worker.

    Attributes
    ----------
    worker
        The napari ``FunctionWorker`` (its ``returned``, ``errored`` and ``finished`` signals fire
        in the GUI thread).
    """

    def __init__(self, fn: TaskFn) -> None:
        self._stop = threading.Event()
        self._relay = _ProgressRelay()
        self._done = False
        relay = self._relay

        def progress(done: int, total: int, message: str = "") -> None:
            relay.progressed.emit(int(done), int(total), str(message))

        def run() -> Any:
            return fn(progress, self._stop.is_set)

        # Errors are always handled by start_task's `errored` connection (a notification); without
        # _ignore_errors the worker would also re-raise them in the event loop as tracebacks.
        self.worker: FunctionWorker = create_worker(run, _start_thread=False, _ignore_errors=True)
        self.worker.finished.connect(self._mark_done)

    @property
    def progressed(self):
        """Qt signal ``(done, total, message)`` emitted in the GUI thread."""
        return self._relay.progressed

    def _mark_done(self) -> None:
        self._done = True

    def start(self) -> Task:
        """Start the worker thread; returns ``self``."""
        self.worker.start()
        return self

    def cancel(self) -> None:
        """Ask the backend to stop at its next check (it raises ``Cancelled``)."""
        self._stop.set()

    @property
    def cancel_requested(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._stop.is_set()

    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until the worker's ``finished`` signal was handled."""
        return not self._done


def start_task(
    fn: TaskFn,
    *,
    on_progress: ProgressFn | None = None,
    on_returned: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finished: Callable[[], None] | None = None,
    start: bool = True,
) -> Task:
    """Run ``fn(progress, should_stop)`` in a napari thread worker.

    Parameters
    ----------
    fn
        Backend call. It receives a ``progress(done, total, message)`` callable (safe to call from
        the worker thread) and a ``should_stop()`` callable that turns True after
        :meth:`Task.cancel`.
    on_progress, on_returned, on_error, on_finished
        Callbacks, all run in the GUI thread. ``on_error`` defaults to :func:`notify_error`;
        ``on_finished`` runs after success, error and cancellation alike (re-enable controls there).
    start
        Start the thread at once (default) or leave it to the caller (``task.start()``).

    Returns
    -------
    Task
        Handle with :meth:`Task.cancel` and the underlying ``worker``.
    """
    task = Task(fn)
    if on_progress is not None:
        task.progressed.connect(on_progress)
    if on_returned is not None:
        task.worker.returned.connect(on_returned)
    task.worker.errored.connect(on_error if on_error is not None else notify_error)
    if on_finished is not None:
        task.worker.finished.connect(on_finished)
    if start:
        task.start()
    return task


def notify_error(exc: BaseException, what: str = "The task") -> None:
    """Show an exception as a napari notification, never as a traceback dialog.

    Parameters
    ----------
    exc
        The exception. :class:`~napari_brats_kd.errors.Cancelled` becomes an info message, other
        :class:`~napari_brats_kd.errors.BratsKDError` an error with its message (written for the
        user); anything else is a bug: its traceback goes to the log and the notification names
        the exception type.
    what
        Subject of the message, e.g. ``"Segmentation"``.
    """
    if isinstance(exc, Cancelled):
        show_info(f"{what} was cancelled.")
    elif isinstance(exc, BratsKDError):
        show_error(f"{what} failed: {one_line(exc)}")
    else:
        logger.error("%s failed unexpectedly", what, exc_info=exc)
        show_error(f"{what} failed unexpectedly ({type(exc).__name__}: {exc}). See the log.")


class FrozenHeap:
    """Keep Python's full garbage collections off napari's heap while long work runs.

    A full collection walks every live object; with napari's large heap that blocks the GUI
    thread for 0.4-0.5 s (measured during training, in the middle of a run, with no import
    involved). ``gc.freeze()`` moves the objects alive at the start of a run into a permanent
    generation that collections skip; objects made during the run are still collected. Nested
    runs (segmenting while training) share one freeze, undone when the last one ends.

    No ``gc.collect()`` before the freeze: on napari's heap that collection is itself a 0.3-0.5 s
    stall at Start (measured by ``benchmarks/bench_widget_responsiveness.py``). Garbage frozen
    with the live objects is only kept until the run ends, when ``gc.unfreeze()`` hands it back.
    """

    _depth = 0

    @classmethod
    def enter(cls) -> None:
        if cls._depth == 0:
            gc.freeze()
        cls._depth += 1

    @classmethod
    def exit(cls) -> None:
        if cls._depth == 0:
            return
        cls._depth -= 1
        if cls._depth == 0:
            gc.unfreeze()
