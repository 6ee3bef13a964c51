"""Atomic file writes: the one place that knows how to replace a file without a torn state."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: Mode of finished files: what ``open()`` would give (``mkstemp`` makes them 0600, which would
#: leave checkpoints and shipped weights unreadable to other users of a shared install).
_FILE_MODE = 0o666 & ~_current_umask()


#: Suffix of :func:`atomic_write`'s temporary files (``.<name>.<random>.tmp``).
_TMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write(tmp)`` on a temporary file beside it, then rename it in place.

    A crash, a stop or a reader in another process never sees a half-written file: the rename
    is atomic on one file system, and the temporary file is removed if ``write`` fails.

    Parameters
    ----------
    path
        Final file.
    write
        Callable that writes the whole content to the temporary path it is given.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` and below when a writer
    was killed mid-write; returns how many were removed.

    Only names of the form ``.<name>.<random>.tmp`` are touched. Call it when a job that owns
    ``folder`` starts, not while another writer may be using it.
    """
    removed = 0
    for tmp in Path(folder).rglob(f".*{_TMP_SUFFIX}"):
        if tmp.is_file() and not tmp.is_symlink() and tmp.name.count(".") >= 3:
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
    return removed
