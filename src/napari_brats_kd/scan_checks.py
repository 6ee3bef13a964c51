"""Checks that the scans given to a model are scans: finite, and not blank, constant or masks.

A model fed a blank T1c (all 0), a constant one (all 100) or a binary mask (0/255) still returns
a label map, a wrong one, without a word. These checks run on the channels :func:`~napari_brats_kd.
inference.segment` gathers, before the network, and name the modality at fault.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import labels as lab
from .errors import ModelInputError

#: Stride of the sample looked at first: a real scan shows three or more values in 1/64 of its
#: voxels, so the full volume is only read when the sample looks blank or binary.
_SAMPLE_STEP = 4


def check_scans(channels: Sequence[np.ndarray], modalities: Sequence[str]) -> None:
    """Refuse channels that hold NaN/Inf, or are blank, constant or two-valued.

    Parameters
    ----------
    channels
        One 3D array per modality.
    modalities
        Their canonical keys (``"t1c"``, ...), for the messages.

    Raises
    ------
    ModelInputError
        Naming the modality and what is wrong with it.
    """
    ranges = []
    for channel, modality in zip(channels, modalities, strict=True):
        name = lab.MODALITY_NAMES.get(modality, modality)
        # min/max propagate NaN and show inf without allocating a mask as large as the case
        # (integer scans, most BraTS files, cannot hold either).
        lo, hi = channel.min(), channel.max()
        if channel.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
            raise ModelInputError(
                f"The {name} scan holds NaN or infinite voxels; fix the scan first."
            )
        ranges.append((channel, name, lo, hi))
    if all(lo == hi == 0 for _, _, lo, hi in ranges):
        return  # nothing at all: segment() says so for the whole input
    for channel, name, lo, hi in ranges:
        _check_has_contrast(channel, name, lo, hi)


def _check_has_contrast(channel: np.ndarray, name: str, lo: float, hi: float) -> None:
    if lo == hi:
        what = "blank" if lo == 0 else "constant"
        raise ModelInputError(
            f"The {name} scan is {what} (every voxel is {float(lo):g}): it holds no image. "
            f"Load the real {name} scan."
        )
    step = _SAMPLE_STEP
    sample = channel[::step, ::step, ::step]
    if np.any((sample != lo) & (sample != hi)):
        return  # three or more values: an image
    if np.any((channel != lo) & (channel != hi)):
        return
    raise ModelInputError(
        f"The {name} scan holds only two values ({float(lo):g} and {float(hi):g}): it is a mask "
        f"or a label map, not an MRI scan. Load the real {name} scan."
    )


__all__ = ["check_scans"]
