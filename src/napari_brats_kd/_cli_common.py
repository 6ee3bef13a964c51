"""What every ``brats-kd`` subcommand shares: the runner type, renamed flags, tqdm progress bars."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

#: A subcommand's runner: parsed arguments in, exit status out.
Runner = Callable[[argparse.Namespace], int]


class RenamedFlag(argparse.Action):
    """A flag's old name, still accepted: it sets the new flag's value and says the new name.

    Added with ``help=argparse.SUPPRESS``, so that ``--help`` lists only today's name, while
    scripts written for an earlier version keep working.
    """

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(
            f"note: {option_string} is now called {self.new}; the old name will be removed in a "
            "later version.",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, True)


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
