"""What every ``brats-kd`` subcommand shares: the runner type and tqdm progress bars."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

#: A subcommand's runner: parsed arguments in, exit status out.
Runner = Callable[[argparse.Namespace], int]

#: Progress bars drawn and not yet closed: an error closes them first, so that its line starts on
#: a line of its own instead of after a half-drawn bar.
_OPEN_BARS: list = []


def close_bars() -> None:
    while _OPEN_BARS:
        _OPEN_BARS.pop().close()


def tqdm_progress(desc: str, unit: str = "step"):
    """A ``progress(done, total, message)`` callable drawing a tqdm bar on stderr.

    tqdm is imported at the first call, not here (70 ms: `segment` imports it in the
    background meanwhile).
    """
    bar = None

    def progress(done: int, total: int, message: str = "") -> None:
        nonlocal bar
        if bar is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=True)
            _OPEN_BARS.append(bar)
        if bar.total != total:
            bar.total = total
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()

    return progress
