"""The arrays a phantom is made of (:class:`PhantomData`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..labels import LabelConvention, get_convention
from .sites import SiteParams


@dataclass
class PhantomData:
    """Everything a phantom is made of, as arrays in file voxel order (L, P, S).

    Attributes
    ----------
    images
        ``{modality: int16 array}`` for ``t1``, ``t1c``, ``t2``, ``flair``.
    classes
        uint8 class map: 0 background, 1 NCR, 2 ED, 3 ET (convention-free; see :attr:`CLASS_CODES`).
    tissue
        ``"brain"`` (bool mask: the only voxels with non-zero images) and, when asked for, the
        healthy-tissue fractions ``"csf"``, ``"gm"``, ``"wm"`` (float32 0-1, as before the tumour
        replaced them).
    affine
        4x4 voxel-to-world affine (LPS voxel order, RAS+ world, voxel size = spacing).
    lesions
        One dict per tumour: ``centre_world`` (mm, RAS+), ``centre_voxel`` (file order),
        ``side`` (patient's ``"left"``/``"right"``), ``radius_mm``.
    midline_x_world
        World x (mm) of the brain's mid-sagittal plane; patient's left is at smaller x.
    site, seed, spacing
        What the phantom was made with.
    """

    CLASS_CODES: ClassVar[dict[str, int]] = {"NCR": 1, "ED": 2, "ET": 3}

    images: dict[str, np.ndarray]
    classes: np.ndarray
    tissue: dict[str, np.ndarray]
    affine: np.ndarray
    lesions: list[dict]
    midline_x_world: float
    site: SiteParams
    seed: int
    spacing: float
    scanner: dict[str, tuple[float, float]] = field(default_factory=dict)

    def labels(self, convention: LabelConvention | str = LabelConvention.BRATS2021) -> np.ndarray:
        """The segmentation in a BraTS label convention (uint8)."""
        values = get_convention(convention).values
        lut = np.zeros(4, np.uint8)
        for cls, code in self.CLASS_CODES.items():
            lut[code] = values[cls]
        return lut[self.classes]
