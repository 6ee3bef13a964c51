"""Typed exceptions of napari-brats-kd.

Every error a user can cause derives from :class:`BratsKDError` and carries a message that says
what was wrong and what to do. The napari face shows these as notifications; the CLI prints them
without a traceback and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Iterable


class BratsKDError(Exception):
    """Base class of all user-facing errors of napari-brats-kd."""


class NiftiReadError(BratsKDError, OSError):
    """A file is not a readable NIfTI volume (wrong format, truncated, corrupt, absurd header)."""


class InvalidVolumeError(BratsKDError, ValueError):
    """A volume was read but cannot be used (2D/5D, NaN/Inf voxels, wrong shape)."""


class CaseError(BratsKDError, ValueError):
    """A case folder cannot be assembled (empty, ambiguous or duplicate modalities, mismatched grids)."""


class LabelConventionError(BratsKDError, ValueError):
    """Label values that do not fit the requested or any known BraTS convention."""


class CheckpointError(BratsKDError, ValueError):
    """A model checkpoint is missing, malformed or incompatible."""


class ModelInputError(BratsKDError, ValueError):
    """The data given to a model does not match what it expects (modalities, shapes)."""


class ResourceError(BratsKDError, RuntimeError):
    """Not enough memory (or another resource) for the requested work."""


class TrainingError(BratsKDError, RuntimeError):
    """A training or distillation run cannot start or continue."""


class Cancelled(BratsKDError):
    """The user asked to stop; raised between steps so that no partial result is returned."""


def few(items: Iterable[object], limit: int = 5) -> str:
    """``"a, b, c and 9,997 more"``: a message names a few of many items, so that a folder of
    10,000 files gives a one-line error, not a 150 KB one."""
    items = [str(i) for i in items]
    if len(items) <= limit:
        return ", ".join(items)
    return f"{', '.join(items[:limit])} and {len(items) - limit:,} more"


#: Longest message shown (CLI line, napari notification): a message is read, not scrolled; the
#: full text stays in the exception for the Python API.
MAX_MESSAGE = 2000


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line of at most :data:`MAX_MESSAGE` characters: what the
    command line prints and the widgets notify."""
    text = " ".join(str(exc).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


__all__ = [
    "BratsKDError",
    "Cancelled",
    "CaseError",
    "CheckpointError",
    "InvalidVolumeError",
    "LabelConventionError",
    "ModelInputError",
    "NiftiReadError",
    "ResourceError",
    "TrainingError",
    "few",
    "one_line",
]
