"""BraTS label conventions, tumour regions and modalities: the one place these facts live.

Every other module asks this one what a label value means, which regions a model predicts, which
colour a sub-region gets and in which order modalities are stacked.

Tumour *classes* are the biological compartments a segmentation paints:

- ``NCR``: necrotic / non-enhancing tumour core (BraTS 2021 "NCR/NET", BraTS 2023 "NETC"),
- ``ED``: peritumoral edema (BraTS 2023 "SNFH", surrounding non-enhancing FLAIR hyperintensity),
- ``ET``: enhancing tumour,
- ``RC``: resection cavity (BraTS 2024 post-treatment only).

Tumour *regions* are the nested unions that BraTS evaluates and that the networks predict, one sigmoid
channel each: whole tumour WT = NCR + ED + ET, tumour core TC = NCR + ET, enhancing tumour ET.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .errors import LabelConventionError

# --------------------------------------------------------------------------------------------------
# Modalities
# --------------------------------------------------------------------------------------------------

#: Canonical modality keys, in the order layers are shown and cases are listed.
MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")

#: Human-readable names used for napari layer names and messages.
MODALITY_NAMES: dict[str, str] = {
    "t1": "T1",
    "t1c": "T1c",
    "t2": "T2",
    "flair": "FLAIR",
}

#: Channel order of MONAI's ``brats_mri_segmentation`` bundle, the default teacher's input order.
BUNDLE_MODALITY_ORDER: tuple[str, ...] = ("t1c", "t1", "t2", "flair")


# --------------------------------------------------------------------------------------------------
# Tumour classes and regions
# --------------------------------------------------------------------------------------------------

#: Tumour classes (compartments) in a fixed order.
CLASSES: tuple[str, ...] = ("NCR", "ED", "ET", "RC")

CLASS_DESCRIPTIONS: dict[str, str] = {
    "NCR": "necrotic / non-enhancing tumour core",
    "ED": "peritumoral edema",
    "ET": "enhancing tumour",
    "RC": "resection cavity",
}

#: Display colours (RGBA, 0-1) of each class, as BraTS viewers draw them (ITK-SNAP style).
CLASS_COLORS: dict[str, tuple[float, float, float, float]] = {
    "NCR": (1.0, 0.1, 0.1, 1.0),  # red
    "ED": (0.1, 0.85, 0.1, 1.0),  # green
    "ET": (1.0, 0.9, 0.0, 1.0),  # yellow
    "RC": (0.2, 0.45, 1.0, 1.0),  # blue
}

#: Evaluation / model output regions, in the channel order of MONAI's BraTS bundle.
REGIONS: tuple[str, ...] = ("TC", "WT", "ET")

REGION_DESCRIPTIONS: dict[str, str] = {
    "WT": "whole tumour",
    "TC": "tumour core",
    "ET": "enhancing tumour",
}

#: Which classes make up each region (resection cavity is not tumour).
REGION_CLASSES: dict[str, frozenset[str]] = {
    "WT": frozenset({"NCR", "ED", "ET"}),
    "TC": frozenset({"NCR", "ET"}),
    "ET": frozenset({"ET"}),
}

#: Order in which regions are reported to users (largest to smallest).
REPORT_REGIONS: tuple[str, ...] = ("WT", "TC", "ET")


# --------------------------------------------------------------------------------------------------
# Label conventions
# --------------------------------------------------------------------------------------------------


class LabelConvention(str, Enum):
    """How label values in a segmentation file map to tumour classes."""

    BRATS2021 = "brats2021"
    """BraTS 2018-2021: 1 NCR/NET, 2 ED, 4 ET."""
    BRATS2023 = "brats2023"
    """BraTS 2023+ (GLI, MET, MEN, PED, SSA): 1 NETC, 2 SNFH, 3 ET."""
    BRATS2024_POST = "brats2024post"
    """BraTS 2024 post-treatment glioma: as 2023 plus 4 RC (label 4 is *not* enhancing tumour)."""
    NNUNET = "nnunet"
    """nnU-Net raw Dataset137_BraTS21: BraTS 2021 remapped 2->1 (ED), 1->2 (NCR), 4->3 (ET)."""
    MSD = "msd"
    """Medical Segmentation Decathlon Task01_BrainTumour: 1 edema, 2 non-enhancing, 3 enhancing."""

    def __str__(self) -> str:  # so f-strings and argparse show "brats2021", not the enum repr
        return self.value


@dataclass(frozen=True)
class ConventionSpec:
    """Value <-> class mapping of one label convention."""

    convention: LabelConvention
    title: str
    values: Mapping[str, int]  # class -> label value
    names: Mapping[str, str]  # class -> the convention's own name for it

    @property
    def value_to_class(self) -> dict[int, str]:
        return {v: c for c, v in self.values.items()}

    @property
    def label_values(self) -> tuple[int, ...]:
        return tuple(sorted(self.values.values()))


CONVENTIONS: dict[LabelConvention, ConventionSpec] = {
    LabelConvention.BRATS2021: ConventionSpec(
        LabelConvention.BRATS2021,
        "BraTS 2018-2021 (1 NCR/NET, 2 ED, 4 ET)",
        {"NCR": 1, "ED": 2, "ET": 4},
        {"NCR": "NCR/NET", "ED": "ED", "ET": "ET"},
    ),
    LabelConvention.BRATS2023: ConventionSpec(
        LabelConvention.BRATS2023,
        "BraTS 2023+ (1 NETC, 2 SNFH, 3 ET)",
        {"NCR": 1, "ED": 2, "ET": 3},
        {"NCR": "NETC", "ED": "SNFH", "ET": "ET"},
    ),
    LabelConvention.BRATS2024_POST: ConventionSpec(
        LabelConvention.BRATS2024_POST,
        "BraTS 2024 post-treatment (1 NETC, 2 SNFH, 3 ET, 4 RC)",
        {"NCR": 1, "ED": 2, "ET": 3, "RC": 4},
        {"NCR": "NETC", "ED": "SNFH", "ET": "ET", "RC": "RC"},
    ),
    LabelConvention.NNUNET: ConventionSpec(
        LabelConvention.NNUNET,
        "nnU-Net Dataset137 (1 ED, 2 NCR, 3 ET)",
        {"ED": 1, "NCR": 2, "ET": 3},
        {"ED": "edema", "NCR": "non-enhancing and necrosis", "ET": "enhancing tumor"},
    ),
    LabelConvention.MSD: ConventionSpec(
        LabelConvention.MSD,
        "MSD Task01 (1 edema, 2 non-enhancing, 3 enhancing)",
        {"ED": 1, "NCR": 2, "ET": 3},
        {"ED": "edema", "NCR": "non-enhancing tumor", "ET": "enhancing tumour"},
    ),
}

#: Convention used when nothing else says which one applies (the most widespread one).
DEFAULT_CONVENTION = LabelConvention.BRATS2021

#: Label convention implied by a case's file naming (:data:`napari_brats_kd.naming.NAMINGS`).
#: ``"loose"`` names (and lone files) imply none: their convention comes from the label values.
NAMING_CONVENTIONS: dict[str, LabelConvention] = {
    "brats2021": LabelConvention.BRATS2021,
    "brats2023": LabelConvention.BRATS2023,
    "nnunet": LabelConvention.NNUNET,
    "msd": LabelConvention.MSD,
}


def convention_for_naming(naming: str | None) -> LabelConvention | None:
    """Label convention a file naming implies, or ``None`` if it implies none.

    Parameters
    ----------
    naming
        A case's naming (``"brats2021"``, ``"brats2023"``, ``"nnunet"``, ``"msd"``, ``"loose"``,
        ``"single"``) or ``None``.

    Returns
    -------
    LabelConvention or None
        E.g. :attr:`LabelConvention.NNUNET` for ``"nnunet"`` (labels 1 ED, 2 NCR, 3 ET).
    """
    return NAMING_CONVENTIONS.get(naming or "")


def get_convention(convention: LabelConvention | str) -> ConventionSpec:
    """Return the spec of a convention given as enum or string (``"brats2021"``, ...)."""
    try:
        return CONVENTIONS[LabelConvention(convention)]
    except ValueError:
        known = ", ".join(c.value for c in LabelConvention)
        raise LabelConventionError(
            f"Unknown label convention {convention!r}: expected one of {known}."
        ) from None


def conventions_for_values(values: Sequence[int] | np.ndarray) -> list[LabelConvention]:
    """Conventions whose label set contains every non-zero value given, in preference order."""
    present = {int(v) for v in np.asarray(values).ravel() if int(v) != 0}
    return [c for c, spec in CONVENTIONS.items() if present <= set(spec.values.values())]


def detect_convention(
    values: Sequence[int] | np.ndarray,
    naming: str | None = None,
) -> tuple[LabelConvention, str]:
    """Decide the label convention of a segmentation from its values and the case's naming.

    Parameters
    ----------
    values
        Label values present in the segmentation (e.g. ``np.unique(seg)``).
    naming
        Naming convention detected from the file names (``"brats2021"``, ``"brats2023"``,
        ``"nnunet"``, ``"msd"``, ``"loose"``) or ``None``.

    Returns
    -------
    convention, reason
        The convention and a sentence saying how it was decided, stored beside it in layer
        metadata so that the choice is never silent.

    Raises
    ------
    LabelConventionError
        If the values fit no known convention (e.g. a label 5, or 3 and 4 without 2024 naming).
    """
    present = sorted({int(v) for v in np.asarray(values).ravel()} - {0})
    candidates = conventions_for_values(present)
    if not candidates:
        raise LabelConventionError(
            f"Label values {present} fit no known BraTS convention "
            "(2021: 1,2,4; 2023: 1,2,3; 2024 post-treatment: 1,2,3,4; nnU-Net/MSD: 1,2,3)."
        )
    by_name = convention_for_naming(naming)
    if by_name is not None and by_name in candidates:
        return by_name, f"file naming is {naming} and label values {present} fit it"
    if 4 in present and 3 in present:
        return LabelConvention.BRATS2024_POST, f"label values {present} include both 3 and 4"
    if 4 in present:
        return LabelConvention.BRATS2021, f"label values {present} include 4 (2021 ET)"
    if 3 in present:
        return LabelConvention.BRATS2023, f"label values {present} include 3 (2023 ET)"
    return (
        DEFAULT_CONVENTION,
        f"label values {present} fit several conventions; assumed {DEFAULT_CONVENTION.value}",
    )


def class_map(labels: np.ndarray, convention: LabelConvention | str) -> dict[str, np.ndarray]:
    """Boolean mask of each tumour class present in ``convention``."""
    spec = get_convention(convention)
    return {cls: labels == value for cls, value in spec.values.items()}


def labels_to_regions(
    labels: np.ndarray,
    convention: LabelConvention | str,
    regions: Sequence[str] = REGIONS,
) -> np.ndarray:
    """Turn a label map into stacked boolean region masks.

    Parameters
    ----------
    labels
        Integer label map of any shape.
    convention
        Label convention of ``labels``.
    regions
        Region names to return, in channel order (default :data:`REGIONS`: TC, WT, ET).

    Returns
    -------
    numpy.ndarray
        Boolean array of shape ``(len(regions), *labels.shape)``.

    Raises
    ------
    LabelConventionError
        If ``labels`` holds values outside the convention.
    """
    spec = get_convention(convention)
    labels = np.asarray(labels)
    present = set(np.unique(labels).tolist()) - {0}
    unknown = present - set(spec.values.values())
    if unknown:
        raise LabelConventionError(f"Label values {sorted(unknown)} are not part of {spec.title}.")
    out = np.zeros((len(regions), *labels.shape), dtype=bool)
    for i, region in enumerate(regions):
        members = [spec.values[c] for c in REGION_CLASSES[region] if c in spec.values]
        out[i] = np.isin(labels, members)
    return out


def regions_to_labels(
    regions: np.ndarray,
    convention: LabelConvention | str,
    region_names: Sequence[str] = REGIONS,
) -> np.ndarray:
    """Turn region masks (or probabilities thresholded elsewhere) into a nested label map.

    Enforces BraTS nesting: ET lies within TC, TC within WT. A voxel in WT only is edema, in TC but
    not ET is necrotic / non-enhancing core, in ET is enhancing tumour.

    Parameters
    ----------
    regions
        Boolean array ``(len(region_names), *spatial)``.
    convention
        Convention of the label values to write.
    region_names
        Names of the channels of ``regions`` (must include WT, TC and ET).

    Returns
    -------
    numpy.ndarray
        ``uint8`` label map of shape ``regions.shape[1:]``.
    """
    spec = get_convention(convention)
    idx = {name: i for i, name in enumerate(region_names)}
    missing = {"WT", "TC", "ET"} - set(idx)
    if missing:
        raise ValueError(f"regions_to_labels needs channels WT, TC and ET; missing {missing}.")
    wt = regions[idx["WT"]].astype(bool)
    tc = regions[idx["TC"]].astype(bool)
    et = regions[idx["ET"]].astype(bool)
    # Nesting: whatever is enhancing is core, whatever is core is tumour.
    tc = tc | et
    wt = wt | tc
    out = np.zeros(wt.shape, dtype=np.uint8)
    out[wt] = spec.values["ED"]
    out[tc] = spec.values["NCR"]
    out[et] = spec.values["ET"]
    return out


def convert_labels(
    labels: np.ndarray,
    source: LabelConvention | str,
    target: LabelConvention | str,
) -> np.ndarray:
    """Re-express a label map from one convention in another (uint8).

    Classes the target lacks (resection cavity into a pre-2024 convention) become background.
    """
    src, dst = get_convention(source), get_convention(target)
    labels = np.asarray(labels)
    counts = value_counts(labels)
    unknown = set(counts) - {0} - set(src.values.values())
    if unknown:
        raise LabelConventionError(f"Label values {sorted(unknown)} are not part of {src.title}.")
    if labels.dtype == np.uint8:  # every label map this package makes
        mapping = {value: dst.values.get(cls, 0) for cls, value in src.values.items()}
        if all(mapping.get(v, 0) == v for v in counts if v):
            return labels.copy()  # the same values: nothing to look up
        table = np.zeros(256, np.uint8)
        for value, new in mapping.items():
            table[value] = new
        return table[labels]
    out = np.zeros(labels.shape, dtype=np.uint8)
    for cls, value in src.values.items():
        if cls in dst.values:
            out[labels == value] = dst.values[cls]
    return out


def napari_label_colors(convention: LabelConvention | str) -> dict[int | None, tuple]:
    """Colour dictionary for a napari Labels layer (``{value: rgba}``, background transparent)."""
    spec = get_convention(convention)
    colors: dict[int | None, tuple] = {0: (0.0, 0.0, 0.0, 0.0), None: (0.6, 0.6, 0.6, 1.0)}
    for cls, value in spec.values.items():
        colors[value] = CLASS_COLORS[cls]
    return colors


def label_names(convention: LabelConvention | str) -> dict[int, str]:
    """``{value: "ET (enhancing tumour)"}`` for a convention, for legends and layer metadata."""
    spec = get_convention(convention)
    return {
        value: f"{spec.names[cls]} ({CLASS_DESCRIPTIONS[cls]})"
        for cls, value in spec.values.items()
    }


def region_volumes_ml(
    labels: np.ndarray,
    convention: LabelConvention | str,
    voxel_volume_mm3: float,
) -> dict[str, float]:
    """Volumes of WT, TC and ET in millilitres (cm3), in :data:`REPORT_REGIONS` order.

    Raises
    ------
    LabelConventionError
        If ``labels`` holds values outside the convention.
    """
    spec = get_convention(convention)
    counts = value_counts(np.asarray(labels))
    unknown = set(counts) - {0} - set(spec.values.values())
    if unknown:
        raise LabelConventionError(f"Label values {sorted(unknown)} are not part of {spec.title}.")
    out = {}
    for region in REPORT_REGIONS:
        members = [spec.values[c] for c in REGION_CLASSES[region] if c in spec.values]
        out[region] = sum(counts.get(v, 0) for v in members) * voxel_volume_mm3 / 1000.0
    return out


def value_counts(labels: np.ndarray) -> dict[int, int]:
    """``{value: voxels}`` of the values present in a label map.

    A BraTS map holds a handful of small values: one comparison per value up to the maximum is
    several times faster than ``np.unique`` (a sort) or ``np.bincount`` (a cast to int64).
    """
    if labels.size == 0:
        return {}
    if labels.dtype.kind in "ub" or (labels.dtype.kind == "i" and labels.min() >= 0):
        top = int(labels.max())
        if top < 16:
            counts = {v: int(np.count_nonzero(labels == v)) for v in range(1, top + 1)}
            counts[0] = labels.size - sum(counts.values())
            return {v: n for v, n in counts.items() if n}
    values, n = np.unique(labels, return_counts=True)
    return {
        int(v) if float(v).is_integer() else float(v): int(c)
        for v, c in zip(values, n, strict=True)
    }
