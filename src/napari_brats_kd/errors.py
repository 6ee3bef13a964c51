"""Typed exceptions of napari-brats-kd.

Every error a user can cause derives from :class:`BratsKDError` and carries a message that says
what was wrong and what to do. The napari face shows these as notifications; the CLI prints them
without a traceback and exits with status 2.
"""

from __future__ import annotations


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
]
