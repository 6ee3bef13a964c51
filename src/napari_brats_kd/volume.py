"""In-memory volumes and cases: the data model every part of the package shares.

A :class:`Volume` holds one 3D array in napari's display orientation
(:data:`~napari_brats_kd.orientation.DISPLAY_AXCODES`) together with what is needed to put it back
exactly where it came from: the file's affine and header. A :class:`Case` groups the modality volumes
of one patient with its optional segmentation and the label convention it uses.

Models never see display order: :meth:`Case.model_input` returns the channels stacked in
:data:`~napari_brats_kd.orientation.MODEL_AXCODES` order, and :meth:`Case.from_model_order` brings a
model's label map back to display order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from . import orientation as orient
from .errors import CaseError
from .labels import MODALITIES, MODALITY_NAMES, LabelConvention


@dataclass
class Volume:
    """One 3D volume in display orientation, with the geometry of the file it belongs to.

    Attributes
    ----------
    data
        Array in :data:`~napari_brats_kd.orientation.DISPLAY_AXCODES` order.
    affine
        The source file's 4x4 voxel-to-world affine (file voxel order, not display order).
    header
        The source file's NIfTI header (kept so that written files carry the same geometry codes,
        units and descriptions). ``None`` for volumes made in memory.
    path
        File the volume was read from, if any.
    """

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = None
    path: Path | None = None

    @classmethod
    def from_file_order(
        cls,
        data: np.ndarray,
        affine: np.ndarray,
        header: nib.Nifti1Header | None = None,
        path: Path | None = None,
    ) -> Volume:
        """Build from an array in the file's own voxel order (as nibabel returns it)."""
        return cls(orient.to_display(data, affine), np.asarray(affine, float), header, path)

    @property
    def file_axcodes(self) -> orient.AxCodes:
        """Orientation of the source file, e.g. ``("L", "P", "S")``."""
        return orient.axcodes(self.affine)

    @property
    def file_shape(self) -> tuple[int, int, int]:
        """Shape of the array in the file's voxel order."""
        return orient.reoriented_shape(self.data.shape, orient.DISPLAY_AXCODES, self.file_axcodes)

    @property
    def scale(self) -> tuple[float, float, float]:
        """Voxel size (mm) in display order: a napari layer's ``scale``."""
        return orient.display_scale(self.affine)

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel in mm3."""
        return float(np.prod(orient.voxel_sizes(self.affine)))

    def file_data(self) -> np.ndarray:
        """The array in the file's own voxel order (what a writer stores)."""
        return orient.from_display(self.data, self.affine)

    @property
    def display_affine(self) -> np.ndarray:
        """Voxel-to-world affine of :attr:`data` (display order), so of what the user sees.

        Two files stored in different voxel orders (say LPS and RAS) but covering the same world
        grid have different file affines and the same display affine.
        """
        return orient.reoriented_affine(
            self.affine, self.file_shape, self.file_axcodes, orient.DISPLAY_AXCODES
        )

    def geometry_matches(self, other: Volume, atol: float = 1e-3) -> bool:
        """Whether ``other`` lies on the same world grid, whatever the voxel order of its file.

        Parameters
        ----------
        other
            The volume to compare with.
        atol
            Largest difference accepted between affine entries (mm for the origin).

        Returns
        -------
        bool
            True when both volumes have the same shape and affine in display order, so that
            every displayed voxel of one covers the same point in space as that of the other.
            Different voxel sizes, origins, shapes or (oblique) rotations give False.
        """
        # Compare in display order: every volume is reoriented into it on load, so files that
        # differ only by a permutation or flip of voxel axes are the same grid once opened.
        return self.data.shape == other.data.shape and np.allclose(
            self.display_affine, other.display_affine, rtol=0.0, atol=atol
        )


@dataclass
class Case:
    """The modality volumes of one patient, with an optional segmentation.

    Attributes
    ----------
    case_id
        Identifier, e.g. ``"BraTS2021_00000"``; used in layer names.
    images
        ``{modality: Volume}`` with keys from :data:`~napari_brats_kd.labels.MODALITIES`, ordered
        as that tuple.
    seg
        Segmentation volume (integer labels), if the case has one.
    convention
        Label convention of ``seg`` (and of segmentations written for this case).
    convention_reason
        How ``convention`` was decided (stored in layer metadata: it is never a silent guess).
    naming
        File-naming convention the case was found in (``"brats2021"``, ``"brats2023"``,
        ``"nnunet"``, ``"msd"``, ``"loose"``, ``"phantom"``, ``"single"``).
    extra
        Anything else a loader attaches, e.g. ``"files"``, ``"notes"`` (see :attr:`notes`) and
        ``"segmentations"``.
    """

    case_id: str
    images: dict[str, Volume]
    seg: Volume | None = None
    convention: LabelConvention = LabelConvention.BRATS2021
    convention_reason: str = "default convention"
    naming: str = "unknown"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = {m: self.images[m] for m in MODALITIES if m in self.images}

    @property
    def reference(self) -> Volume:
        """The volume whose grid defines the case (first modality present)."""
        if self.images:
            return next(iter(self.images.values()))
        if self.seg is not None:
            return self.seg
        raise CaseError(f"Case {self.case_id!r} holds no volume.")

    @property
    def notes(self) -> list[str]:
        """Sentences for the user on how the case was read: what was assumed, what was skipped.

        The napari reader shows them as notifications; :func:`~napari_brats_kd.io.load_case`
        fills them (``extra["notes"]``). The list is live: appending adds a note.
        """
        return self.extra.setdefault("notes", [])

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities present, in canonical order."""
        return tuple(self.images)

    def require(self, modalities: Sequence[str]) -> None:
        """Raise :class:`CaseError` naming what is missing if ``modalities`` are not all present."""
        missing = [m for m in modalities if m not in self.images]
        if missing:
            have = ", ".join(MODALITY_NAMES[m] for m in self.modalities) or "none"
            need = ", ".join(MODALITY_NAMES[m] for m in missing)
            raise CaseError(f"Case {self.case_id!r} lacks {need} (it has {have}).")

    def model_views(self, modalities: Sequence[str]) -> list[np.ndarray]:
        """``modalities`` in model orientation, as views of the loaded data (no copies)."""
        self.require(modalities)
        src, dst = orient.DISPLAY_AXCODES, orient.MODEL_AXCODES
        return [orient.reorient(self.images[m].data, src, dst) for m in modalities]

    def model_input(self, modalities: Sequence[str]) -> np.ndarray:
        """Stack ``modalities`` as float32 channels in model orientation, shape ``(C, X, Y, Z)``."""
        views = self.model_views(modalities)
        if not views:
            shape = self.reference.data.shape
            src, dst = orient.DISPLAY_AXCODES, orient.MODEL_AXCODES
            return np.empty((0, *orient.reoriented_shape(shape, src, dst)), np.float32)
        out = np.empty((len(views), *views[0].shape), np.float32)
        for c, view in enumerate(views):
            out[c] = view  # one copy, straight into the stack
        return out

    @staticmethod
    def to_model_order(data: np.ndarray) -> np.ndarray:
        """Display-ordered array (channels first allowed) -> model order."""
        return orient.reorient(data, orient.DISPLAY_AXCODES, orient.MODEL_AXCODES)

    @staticmethod
    def from_model_order(data: np.ndarray) -> np.ndarray:
        """Model-ordered array (channels first allowed) -> display order."""
        return orient.reorient(data, orient.MODEL_AXCODES, orient.DISPLAY_AXCODES)
