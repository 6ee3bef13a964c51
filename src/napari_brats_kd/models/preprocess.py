"""Input normalisation shared by training and inference (one definition, so they never drift)."""

from __future__ import annotations

import numpy as np

from ..errors import ModelInputError

#: Voxels per float64 slab when summing squares (a few hundred kB: stays in cache).
_SLAB = 1 << 16

#: Normalisations a :class:`~napari_brats_kd.models.config.ModelConfig` may name.
NORMALIZATIONS: tuple[str, ...] = ("zscore_nonzero", "none")


def normalize_input(
    image: np.ndarray, method: str = "zscore_nonzero", *, copy: bool = True
) -> np.ndarray:
    """Normalise each channel of a multi-modal image.

    ``"zscore_nonzero"`` is MONAI's ``NormalizeIntensity(nonzero=True, channel_wise=True)``, the
    BraTS bundle's only preprocessing: per channel, the non-zero (brain) voxels get zero mean and
    unit variance; background stays exactly 0. A channel with constant brain intensity is only
    shifted.

    Parameters
    ----------
    image
        Array ``(C, X, Y, Z)`` (any float or integer dtype).
    method
        ``"zscore_nonzero"`` or ``"none"``.
    copy
        ``False`` normalises a float32 ``image`` in place (other types are still converted).

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape (a new array unless ``copy=False``).

    Raises
    ------
    ModelInputError
        If the image is not 4D or the method is unknown.
    """
    image = np.asarray(image)
    if image.ndim != 4:
        raise ModelInputError(
            f"normalize_input expects a (C, X, Y, Z) array, got shape {image.shape}."
        )
    out = image.astype(np.float32, copy=copy)
    if method == "none":
        return out
    if method != "zscore_nonzero":
        raise ModelInputError(
            f"Unknown normalisation {method!r}: expected one of {', '.join(NORMALIZATIONS)}."
        )
    for c in range(out.shape[0]):
        channel = out[c]
        mask = channel != 0
        n = int(np.count_nonzero(mask))
        if n == 0:
            continue
        # Moments from sums over the whole channel (zeros add nothing): much faster than
        # gathering the brain voxels with a boolean index. float64 keeps them exact enough; the
        # squares are summed in slabs so that no float64 copy of the channel is ever made.
        flat = channel.reshape(-1)
        mean = float(flat.sum(dtype=np.float64)) / n
        squares = 0.0
        for slab in np.array_split(flat, max(1, flat.size // _SLAB)):
            slab64 = slab.astype(np.float64)
            squares += float(np.dot(slab64, slab64))
        std = float(np.sqrt(max(squares / n - mean * mean, 0.0)))
        # MONAI divides by 1 when the standard deviation is 0; do the same. Background voxels
        # are left alone: they stay exactly 0.
        np.subtract(channel, np.float32(mean), out=channel, where=mask)
        np.multiply(channel, np.float32(1.0 / (std if std > 0 else 1.0)), out=channel, where=mask)
    return out
