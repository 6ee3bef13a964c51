"""Measure how long the Qt event loop goes unanswered while work runs in a napari worker."""

from __future__ import annotations

import time

import numpy as np


class EventLoopProbe:
    """Stamps each tick of a 20 ms QTimer; the gaps between stamps are the GUI's stalls."""

    def __init__(self, qtbot, interval_ms: int = 20) -> None:
        from qtpy.QtCore import QTimer

        self.qtbot = qtbot
        self.stamps: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.stamps.append(time.perf_counter()))
        self.t0 = 0.0

    def start(self) -> None:
        """Start ticking, let the loop settle, and mark the start of the measured span."""
        self.timer.start()
        self.qtbot.wait(100)
        self.t0 = time.perf_counter()

    def stop(self) -> None:
        self.timer.stop()

    def longest_gap(self, until: float) -> tuple[float, int]:
        """Longest gap (s) between ticks from the start mark to ``until``, and the tick count."""
        during = [s for s in self.stamps if self.t0 <= s <= until] + [until]
        return float(np.diff(during).max()), len(during)
