"""The two callables by which slow work reports progress and learns that it should stop.

Backend functions (reading a dataset, segmenting, training, writing phantoms) take them as plain
callables, so that the command line can draw a tqdm bar and the widgets a napari progress bar
without the backend knowing either.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(done, total, message)``: ``done`` of ``total`` steps, and what is happening now.
Progress = Callable[[int, int, str], None]

#: ``should_stop()``: ``True`` once the user asked to stop; checked between steps.
ShouldStop = Callable[[], bool]

__all__ = ["Progress", "ShouldStop"]
