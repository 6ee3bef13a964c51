"""Post-processing of a predicted label map: tumour components a model is unsure of, far away.

:func:`remove_small_components` drops specks below a size. On real scans a model's false positives are rarely next to the tumour: they are vessels, the dura
or a bright fold of cortex centimetres away, and the model is less sure of them than of the
lesion. :func:`drop_far_unlikely_components` removes exactly those: a connected component of the
whole tumour (all classes together, 26-connected) is dropped when

- it is not the **main lesion** (the component with the largest probability mass, i.e. the sum of
  its whole-tumour probabilities: size and confidence together, so a large faint artefact does not
  outrank a smaller confident tumour),
- it lies more than ``far_mm`` from the main lesion (nearest voxels; a doubtful spot beside a
  confident far satellite counts as far: it is measured from the main lesion only), and
- its mean whole-tumour probability is below ``min_confidence``.

A satellite lesion of a multi-focal tumour that the model is sure of stays, however far; a
doubtful blob touching the tumour stays too (it is the tumour's edge, which Dice judges). The
defaults are fixed here, not tuned on the real cases that score them: see
``benchmarks/bench_real.py`` for what they do on held-out real cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# scipy.ndimage is imported inside the functions: 0.15 s that `brats-kd segment` spends in a
# background thread instead of at start-up.

#: Components farther than this from the main lesion (mm, surface to surface) may be dropped.
FAR_MM: float = 10.0
#: ... when their mean whole-tumour probability is below this.
MIN_CONFIDENCE: float = 0.8

#: Tumour components are 26-connected (faces, edges and corners touch), everywhere in the package.
TUMOUR_CONNECTIVITY = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class DroppedComponent:
    """A component removed by :func:`drop_far_unlikely_components`.

    Attributes
    ----------
    voxels
        Its size in voxels.
    confidence
        Its mean whole-tumour probability.
    """

    voxels: int
    confidence: float


def _tumour_components(
    labels: np.ndarray,
) -> tuple[tuple[slice, ...], np.ndarray, int]:
    """The tumour's bounding box, its components labelled within it, and how many there are.

    Working on the box keeps labelling to the tumour's neighbourhood, a small part of the brain.
    """
    from scipy import ndimage

    tumour = labels > 0
    found = ndimage.find_objects(tumour.view(np.uint8))
    if not found:
        return tuple(slice(0, 0) for _ in labels.shape), np.zeros((0,) * labels.ndim, int), 0
    components, n = ndimage.label(tumour[found[0]], structure=TUMOUR_CONNECTIVITY)
    return found[0], components, int(n)


def remove_small_components(label_map: np.ndarray, min_voxels: int) -> np.ndarray:
    """Zero tumour components (all classes together) smaller than ``min_voxels``."""
    from scipy import ndimage

    if min_voxels <= 0:
        return label_map
    components, n = ndimage.label(label_map > 0, structure=TUMOUR_CONNECTIVITY)
    if n == 0:
        return label_map
    sizes = np.bincount(components.ravel())
    small = np.flatnonzero(sizes < min_voxels)
    small = small[small != 0]
    if small.size:
        label_map = label_map.copy()
        label_map[np.isin(components, small)] = 0
    return label_map


def _far_from(
    main: np.ndarray,
    components: np.ndarray,
    candidates: Sequence[int],
    spacing: Sequence[float],
    far_mm: float,
) -> list[int]:
    """The candidate components with no voxel within ``far_mm`` of the ``main`` mask."""
    from scipy import ndimage

    spacing = tuple(float(s) for s in spacing)
    # The distance transform runs over the main lesion's bounding box grown by far_mm only: a
    # voxel outside that box is farther than far_mm along one axis, so farther in all. That box is
    # a fraction of the brain, which keeps this step to tens of milliseconds.
    where = np.nonzero(main)
    box = tuple(
        slice(
            max(int(ax.min()) - int(np.ceil(far_mm / sp)) - 1, 0),
            min(int(ax.max()) + int(np.ceil(far_mm / sp)) + 2, size),
        )
        for ax, sp, size in zip(where, spacing, main.shape, strict=True)
    )
    distance = ndimage.distance_transform_edt(~main[box], sampling=spacing)
    near = np.unique(components[box][distance <= far_mm])
    return [int(i) for i in candidates if i not in near]


def drop_far_unlikely_components(
    labels: np.ndarray,
    wt_probability: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    far_mm: float = FAR_MM,
    min_confidence: float = MIN_CONFIDENCE,
) -> tuple[np.ndarray, list[DroppedComponent]]:
    """Remove tumour components far from the main lesion that the model is unsure of.

    Parameters
    ----------
    labels
        Integer label map (0 background), 3D.
    wt_probability
        The model's whole-tumour probability on the same grid.
    spacing
        Voxel size (mm) along the array axes.
    far_mm
        Distance from the main lesion beyond which a component may be dropped.
    min_confidence
        Mean whole-tumour probability a far component needs to be kept.

    Returns
    -------
    labels, dropped
        The label map (the input itself when nothing was dropped, else a copy) and what was
        removed, largest first.
    """
    if labels.shape != wt_probability.shape:
        raise ValueError(
            f"labels {labels.shape} and probabilities {wt_probability.shape} differ in shape."
        )
    # Everything below runs on the tumour's bounding box, a small part of the brain.
    box, components, n = _tumour_components(labels)
    if n < 2:
        return labels, []
    index = np.arange(1, n + 1)
    # Sums per component over the tumour voxels only (a few percent of the box), in one pass
    # each: ndimage.sum_labels over the whole box took 5x longer on a real case.
    inside = components > 0
    which = components[inside]
    mass = np.bincount(which, weights=wt_probability[box][inside], minlength=n + 1)[1:]
    voxels = np.bincount(which, minlength=n + 1)[1:]
    confidence = mass / np.maximum(voxels, 1)
    main = int(np.argmax(mass)) + 1
    doubtful = [i for i in index if i != main and confidence[i - 1] < min_confidence]
    if not doubtful:
        return labels, []
    far = _far_from(components == main, components, doubtful, spacing, far_mm)
    if not far:
        return labels, []
    out = labels.copy()
    out[box][np.isin(components, far)] = 0
    dropped = [DroppedComponent(int(voxels[i - 1]), float(confidence[i - 1])) for i in far]
    dropped.sort(key=lambda c: -c.voxels)
    return out, dropped


def largest_lesion_centre(labels: np.ndarray) -> tuple[int, int, int] | None:
    """Voxel (rounded centre of mass) of the largest tumour component, ``None`` without tumour.

    Where a viewer should land after a segmentation: the middle slice of a scan often holds no
    tumour at all.
    """
    from scipy import ndimage

    box, components, n = _tumour_components(labels)
    if n == 0:
        return None
    sizes = np.bincount(components[components > 0], minlength=n + 1)
    largest = int(np.argmax(sizes[1:])) + 1
    centre = ndimage.center_of_mass(components == largest)
    return tuple(int(np.rint(c)) + sl.start for c, sl in zip(centre, box, strict=True))
