"""Voxel-axis orientations: the file's own, napari's display one, and the models' one.

Three orientations matter, each named by nibabel axis codes (the direction each voxel axis points):

- the **file** orientation, read from the affine (BraTS files are ``("L", "P", "S")``; some
  redistributed copies are ``("R", "A", "S")``);
- :data:`DISPLAY_AXCODES` ``("I", "P", "L")``: the order napari shows. napari's axis 0 is the slider,
  axis 1 the rows (top to bottom) and axis 2 the columns (left to right). With axis 0 running towards
  inferior, axis 1 towards posterior and axis 2 towards the patient's left, the axial view shows
  anterior at the top and the patient's right on the screen's left (radiological convention), and
  the coronal and sagittal views (rolling the dims) stand upright. The frame is right-handed, so 3D
  renderings are not mirrored.
- :data:`MODEL_AXCODES` ``("L", "P", "S")``: the voxel order of BraTS files as MONAI loads them,
  which the BraTS bundle teacher was trained on. Models always see this order, whatever the file's.

Reorienting is a pure permutation/flip of voxel axes (no resampling), so it is exact and reversible.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

AxCodes = tuple[str, str, str]

#: napari display order: slider inferior-ward, rows posterior-ward, columns towards patient's left.
DISPLAY_AXCODES: AxCodes = ("I", "P", "L")

#: Model input order: BraTS native voxel order (LPS), as the MONAI bundle expects.
MODEL_AXCODES: AxCodes = ("L", "P", "S")

#: Affine of real BraTS files (240x240x155, 1 mm, LPS with the y offset of 239).
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
BRATS_AFFINE: np.ndarray = np.array(
    [
        [-1.0, 0.0, 0.0, 0.0],
        [0.0, -1.0, 0.0, 239.0],
        [0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def axcodes(affine: np.ndarray) -> AxCodes:
    """Axis codes (e.g. ``("L", "P", "S")``) of a 4x4 affine."""
    codes = ornt.aff2axcodes(np.asarray(affine, dtype=float))
    if any(c is None for c in codes):
        raise ValueError(f"Affine has a degenerate axis and no orientation: {affine.tolist()}")
    return tuple(codes)  # type: ignore[return-value]


def _transform(src: Sequence[str], dst: Sequence[str]) -> np.ndarray:
    return ornt.ornt_transform(ornt.axcodes2ornt(tuple(src)), ornt.axcodes2ornt(tuple(dst)))


def reorient(
    data: np.ndarray,
    src: Sequence[str],
    dst: Sequence[str],
    spatial_axes_last: bool = True,
) -> np.ndarray:
    """Permute and flip the three spatial axes of ``data`` from orientation ``src`` to ``dst``.

    Parameters
    ----------
    data
        Array whose last three axes (or first three, if ``spatial_axes_last`` is False) are
        spatial. Leading channel axes are carried along untouched.
    src, dst
        Axis codes, e.g. ``("L", "P", "S")`` and :data:`DISPLAY_AXCODES`.
    spatial_axes_last
        Whether the spatial axes are the last three (channel-first data) or the first three.

    Returns
    -------
    numpy.ndarray
        A view of ``data`` where possible (no copy for pure flips/permutations).
    """
    if tuple(src) == tuple(dst):
        return data
    transform = _transform(src, dst)
    if spatial_axes_last and data.ndim > 3:
        lead = data.ndim - 3
        flat = data.reshape(-1, *data.shape[lead:])
        moved = np.moveaxis(flat, 0, -1)  # channels last so nibabel's apply works
        out = ornt.apply_orientation(moved, transform)
        return np.moveaxis(out, -1, 0).reshape(*data.shape[:lead], *out.shape[:3])
    return ornt.apply_orientation(data, transform)


def reoriented_shape(shape: Sequence[int], src: Sequence[str], dst: Sequence[str]) -> tuple:
    """Spatial shape after :func:`reorient` (only the permutation matters)."""
    transform = _transform(src, dst)
    out = [0, 0, 0]
    for i, (axis, _flip) in enumerate(transform):
        out[int(axis)] = int(shape[i])
    return tuple(out)


def reoriented_affine(
    affine: np.ndarray, shape: Sequence[int], src: Sequence[str], dst: Sequence[str]
) -> np.ndarray:
    """Affine of the reoriented array, so that world coordinates of every voxel are unchanged."""
    if tuple(src) == tuple(dst):
        return np.asarray(affine, dtype=float).copy()
    transform = _transform(src, dst)
    return np.asarray(affine, dtype=float) @ ornt.inv_ornt_aff(transform, tuple(shape[:3]))


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths (mm) along the array axes of ``affine``."""
    return tuple(float(v) for v in nib.affines.voxel_sizes(np.asarray(affine, dtype=float)))


def voxel_sizes_in(affine: np.ndarray, dst: Sequence[str]) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the axes of the array reoriented to ``dst`` axis codes."""
    sizes = voxel_sizes(affine)
    out = [1.0, 1.0, 1.0]
    for i, (axis, _flip) in enumerate(_transform(axcodes(affine), dst)):
        out[int(axis)] = sizes[i]
    return tuple(out)  # type: ignore[return-value]


def display_scale(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes in :data:`DISPLAY_AXCODES` order, for a napari layer's ``scale``."""
    return voxel_sizes_in(affine, DISPLAY_AXCODES)


def to_display(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """File-ordered array (channels first allowed) -> napari display order."""
    return reorient(data, axcodes(affine), DISPLAY_AXCODES)


def from_display(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """napari display-ordered array -> the voxel order of the file whose affine is given."""
    return reorient(data, DISPLAY_AXCODES, axcodes(affine))
