"""What a model is given: the case's channels in model order, the brain box and the crop.

:func:`~napari_brats_kd.inference.segment` gathers the channels a model needs (views, no
copies), finds the brain (skull-stripped scans are exactly 0 outside it), grows its bounding box
to the network's stride and copies only that crop, normalised, for the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import labels as lab
from .errors import ModelInputError
from .models.config import ModelConfig
from .models.geometry import network_stride
from .models.preprocess import normalize_input
from .orientation import MODEL_AXCODES, voxel_sizes_in
from .volume import Case

#: Voxels of margin kept around the brain's bounding box (context for the first convolutions).
BBOX_MARGIN = 4


def mask_bbox(mask: np.ndarray, margin: int = BBOX_MARGIN) -> tuple[slice, slice, slice] | None:
    """Bounding box of the true voxels of a 3D mask, widened by ``margin`` (``None``: empty)."""
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return None
        lo = max(int(hits[0]) - margin, 0)
        hi = min(int(hits[-1]) + 1 + margin, mask.shape[axis])
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def brain_bbox(image: np.ndarray, margin: int = BBOX_MARGIN) -> tuple[slice, slice, slice] | None:
    """Bounding box of voxels non-zero in any channel of ``(C, X, Y, Z)``, widened by ``margin``.

    Returns ``None`` when every voxel is zero.
    """
    return mask_bbox(np.any(image != 0, axis=0), margin)


def brain_mask(channels: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels non-zero in any channel (skull-stripped scans are exactly 0 outside the brain)."""
    mask = channels[0] != 0
    for channel in channels[1:]:
        mask |= channel != 0
    return mask


def grow_to_multiple(
    box: Sequence[slice], multiple: int, shape: Sequence[int]
) -> tuple[slice, slice, slice]:
    """Widen ``box`` (centred, within ``shape``) so each side is a multiple of ``multiple``.

    A crop the network can take as is needs no zero padding (one copy of the volume less), and
    the extra voxels are real image context.
    """
    out = []
    for sl, n in zip(box, shape, strict=True):
        size = sl.stop - sl.start
        target = min(int(np.ceil(size / multiple) * multiple), int(n))
        start = max(0, sl.start - (target - size) // 2)
        stop = start + target
        if stop > n:
            stop, start = int(n), int(n) - target
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


def gather_input(
    case_or_image: Case | np.ndarray,
    model_modalities: tuple[str, ...],
    modalities: Sequence[str] | None,
) -> list[np.ndarray]:
    """The channels the model needs, in its order and in model orientation (views, no copies)."""
    if isinstance(case_or_image, Case):
        return case_or_image.model_views(model_modalities)
    image = np.asarray(case_or_image)
    if image.ndim != 4:
        raise ModelInputError(
            f"segment expects a Case or a (C, X, Y, Z) array in model order, got shape "
            f"{image.shape}."
        )
    given = tuple(modalities) if modalities is not None else model_modalities
    if len(given) != image.shape[0]:
        raise ModelInputError(
            f"The array has {image.shape[0]} channels but modalities {list(given)} were named: "
            "pass modalities= listing one modality per channel."
        )
    missing = [m for m in model_modalities if m not in given]
    if missing:
        raise ModelInputError(
            f"The model needs {', '.join(lab.MODALITY_NAMES[m] for m in missing)}, which the "
            f"array (channels {', '.join(given)}) lacks."
        )
    return [image[given.index(m)] for m in model_modalities]


def network_input(
    channels: Sequence[np.ndarray],
    brain: np.ndarray,
    box: tuple[slice, slice, slice],
    config: ModelConfig,
    plan: tuple[str, tuple[int, int, int]],
    tta: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The normalised crop the network runs on, and the brain mask of the crop.

    Only the crop is copied (a BraTS brain fills about 40 % of the grid), straight into float32
    and normalised in place: one copy of the input in all. For one pass over the crop without
    TTA, the array is made zero-padded to the network stride at once (a box at the grid's edge
    cannot grow to it), so the back end needs no padded copy of its own; zeros are background to
    the normalisation, which ignores them. With TTA the back ends pad each mirrored copy at its
    far end, so that every mirroring sees the brain at the same place on the stride grid.
    """
    size = tuple(sl.stop - sl.start for sl in box)
    strategy, padded = plan
    shape = padded if strategy == "full" and not tta else size
    crop = np.zeros((len(channels), *shape), np.float32)
    for c, channel in enumerate(channels):
        crop[c, : size[0], : size[1], : size[2]] = channel[box]
    return normalize_input(crop, config.normalization, copy=False), brain[box]


@dataclass(frozen=True)
class InputFacts:
    """What the label map needs to know of the input: its convention, voxel size and spacing."""

    target: lab.LabelConvention
    voxel_mm3: float
    spacing: tuple[float, float, float]

    @classmethod
    def of(
        cls,
        case_or_image: Case | np.ndarray,
        cfg: ModelConfig,
        convention: lab.LabelConvention | str | None,
        voxel_volume_mm3: float | None,
    ) -> InputFacts:
        if isinstance(case_or_image, Case):
            default = case_or_image.convention
            voxel_mm3 = case_or_image.reference.voxel_volume_mm3
            spacing = voxel_sizes_in(case_or_image.reference.affine, MODEL_AXCODES)
        else:
            default = lab.LabelConvention(cfg.convention)
            voxel_mm3 = 1.0 if voxel_volume_mm3 is None else float(voxel_volume_mm3)
            spacing = (voxel_mm3 ** (1 / 3),) * 3
        target = lab.get_convention(convention if convention is not None else default).convention
        return cls(target, voxel_mm3, tuple(spacing))


def brain_box(
    channels: Sequence[np.ndarray], cfg: ModelConfig, crop_to_brain: bool
) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """The brain mask and the box the network runs on (the brain's, grown to the stride)."""
    grid = tuple(int(n) for n in channels[0].shape)
    brain = brain_mask(channels)
    box = mask_bbox(brain) if crop_to_brain else tuple(slice(0, n) for n in grid)
    if box is None or not brain.any():
        raise ModelInputError(
            "Every voxel of the input is zero: there is no brain to segment "
            "(check that the right scans are loaded)."
        )
    if crop_to_brain:
        box = grow_to_multiple(box, network_stride(cfg), grid)
    return brain, box


__all__ = [
    "BBOX_MARGIN",
    "InputFacts",
    "brain_bbox",
    "brain_box",
    "brain_mask",
    "gather_input",
    "grow_to_multiple",
    "mask_bbox",
    "network_input",
]
