"""Grids and smooth random fields in BraTS millimetres, the output grid and its memory check."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .. import orientation as orient
from ..errors import ResourceError

#: Extent of the BraTS grid in mm between the first and last voxel centres (i, j, k).
_FOV_MM = np.array([s - 1 for s in orient.BRATS_SHAPE], dtype=float)


def _interp_axis(a: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at fractional indices ``pos`` (clamped)."""
    n = a.shape[axis]
    if n == 1:
        return np.repeat(a, len(pos), axis=axis)
    pos = np.clip(pos, 0, n - 1)
    i0 = np.minimum(pos.astype(np.intp), n - 2)
    w = (pos - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = len(pos)
    w = w.reshape(shape)
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, i0 + 1, axis=axis)
    # lo and hi are fresh arrays from take: work in place to spare full-size temporaries.
    np.subtract(hi, lo, out=hi)
    hi *= w
    lo += hi
    return lo


def _resample(a: np.ndarray, positions: Sequence[np.ndarray]) -> np.ndarray:
    """Separable linear resampling of a 3D array at per-axis fractional index vectors."""
    out = a.astype(np.float32, copy=False)
    # Shrinking axes first keeps the intermediate arrays small; among equal ratios the last axis
    # goes first because taking along axis 0 on the largest array copies contiguous rows.
    order = sorted(range(3), key=lambda ax: (len(positions[ax]) / a.shape[ax], -ax))
    for ax in order:
        out = _interp_axis(out, positions[ax], ax)
    return out


def _smooth_noise(rng: np.random.Generator, spacing_mm: float) -> np.ndarray:
    """Unit-variance smooth random field on a control grid covering the BraTS field of view."""
    shape = tuple(math.ceil(L / spacing_mm) + 3 for L in _FOV_MM)
    raw = rng.standard_normal(shape).astype(np.float32)
    smooth = ndimage.gaussian_filter(raw, 1.0, mode="wrap")
    return smooth / max(float(smooth.std()), 1e-6)


def _field_at(ctrl: np.ndarray, spacing_mm: float, axes_mm: Sequence[np.ndarray]) -> np.ndarray:
    """Sample a control-grid field (origin one control step before voxel 0) at grid axes in mm."""
    return _resample(ctrl, [np.asarray(x) / spacing_mm + 1.0 for x in axes_mm])


@dataclass(frozen=True)
class _Grid:
    """An axis-aligned grid in BraTS voxel millimetres (voxel (0,0,0) of the BraTS grid at 0)."""

    shape: tuple[int, int, int]
    step: float

    @property
    def axes(self) -> list[np.ndarray]:
        return [np.arange(n, dtype=np.float64) * self.step for n in self.shape]

    @classmethod
    def covering(cls, step: float) -> _Grid:
        return cls(tuple(math.ceil(L / step) + 1 for L in _FOV_MM), step)  # type: ignore[arg-type]

    def points(self) -> np.ndarray:
        """All grid points, shape (3, *shape), float32."""
        ax = [a.astype(np.float32) for a in self.axes]
        return np.stack(np.meshgrid(*ax, indexing="ij"))


def _output_shape(spacing: float) -> tuple[int, int, int]:
    return tuple(math.ceil(n / spacing) for n in orient.BRATS_SHAPE)  # type: ignore[return-value]


#: Peak bytes per output voxel of :func:`render_phantom` (measured: 565 MB for the 8.9 M voxels of
#: a 1 mm phantom), with a margin.
_PEAK_BYTES_PER_VOXEL = 80


def _check_memory(spacing: float) -> None:
    """Refuse, before allocating, a phantom whose arrays would not fit in the free memory."""
    from ..device import available_memory

    shape = _output_shape(spacing)
    need = math.prod(shape) * _PEAK_BYTES_PER_VOXEL
    free = available_memory("cpu")
    if free is None or need <= free:
        return
    fits = spacing * (need / free) ** (1 / 3)
    raise ResourceError(
        f"A phantom at {spacing:g} mm spacing has {shape[0]}x{shape[1]}x{shape[2]} voxels and "
        f"needs about {need / 1024**3:.1f} GiB of memory; {free / 1024**3:.1f} GiB are free. "
        f"Use a spacing of {math.ceil(fits * 100) / 100:g} mm or coarser (BraTS is 1 mm)."
    )


def _output_affine(spacing: float) -> np.ndarray:
    affine = orient.BRATS_AFFINE.copy()
    affine[:3, :3] *= spacing
    return affine
