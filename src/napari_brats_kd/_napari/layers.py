"""Cases -> napari layer data, and labels layers -> volumes to write back.

Layer names follow ``"<case_id> <Modality>"`` (``"BraTS2021_00000 FLAIR"``) and
``"<case_id> segmentation"``. Every layer carries under ``metadata["brats_kd"]`` what is needed to
write it back where it came from and to explain it: source path, modality, the file's affine and
header, file and display axis codes, label convention and the reason for it, case id and naming.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import labels as lab
from .. import orientation as orient
from ..volume import Case, Volume

#: Key of our entry in a layer's ``metadata``.
METADATA_KEY = "brats_kd"

#: Percentiles of non-zero voxels used as an image layer's contrast limits (robust to outliers).
CONTRAST_PERCENTILES: tuple[float, float] = (0.5, 99.5)

# A percentile over ~3 M brain voxels is quick, but a stride keeps opening fast on big volumes.
_CONTRAST_SAMPLE = 2_000_000

LayerDataTuple = tuple[Any, dict[str, Any], str]


def robust_contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """Contrast limits from the :data:`CONTRAST_PERCENTILES` of the non-zero voxels."""
    flat = np.asarray(data).ravel()
    if flat.size > _CONTRAST_SAMPLE:
        flat = flat[:: flat.size // _CONTRAST_SAMPLE + 1]
    nonzero = flat[flat != 0]
    if nonzero.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(nonzero, CONTRAST_PERCENTILES))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def volume_metadata(
    vol: Volume,
    case: Case | None,
    modality: str | None,
    role: str,
    convention: lab.LabelConvention | None = None,
    convention_reason: str | None = None,
) -> dict[str, Any]:
    """The ``metadata["brats_kd"]`` dict of one layer."""
    conv = convention if convention is not None else (case.convention if case else None)
    reason = (
        convention_reason
        if convention_reason is not None
        else (case.convention_reason if case else None)
    )
    return {
        "role": role,
        "source_path": str(vol.path) if vol.path is not None else None,
        "modality": modality,
        "affine": np.asarray(vol.affine, float).copy(),
        "header": vol.header.copy() if vol.header is not None else None,
        "file_axcodes": tuple(vol.file_axcodes),
        "display_axcodes": tuple(orient.DISPLAY_AXCODES),
        "display_shape": tuple(int(s) for s in vol.data.shape),
        "convention": lab.LabelConvention(conv).value if conv is not None else None,
        "convention_reason": reason,
        "label_names": lab.label_names(conv) if conv is not None else None,
        "case_id": case.case_id if case else None,
        "naming": case.naming if case else None,
    }


def image_layer_data(
    vol: Volume, name: str, case: Case | None, modality: str | None, visible: bool = True
) -> LayerDataTuple:
    """One grey Image layer for a scan."""
    meta = {
        "name": name,
        "scale": vol.scale,
        "contrast_limits": robust_contrast_limits(vol.data),
        "colormap": "gray",
        "blending": "translucent",
        "visible": visible,
        "metadata": {METADATA_KEY: volume_metadata(vol, case, modality, "image")},
    }
    return vol.data, meta, "image"


def labels_layer_data(
    vol: Volume,
    name: str,
    case: Case | None,
    convention: lab.LabelConvention,
    reason: str,
    visible: bool = True,
) -> LayerDataTuple:
    """One Labels layer in BraTS colours, with label names as features and in metadata."""
    names = lab.label_names(convention)
    values = [0, *sorted(names)]
    meta = {
        "name": name,
        "scale": vol.scale,
        "colormap": lab.napari_label_colors(convention),
        "opacity": 0.6,
        "blending": "translucent",
        "visible": visible,
        # An "index" column lets napari's status bar show the class under the cursor.
        "features": {
            "index": values,
            "name": ["background", *(names[v] for v in values[1:])],
        },
        "metadata": {
            METADATA_KEY: volume_metadata(vol, case, None, "segmentation", convention, reason)
        },
    }
    return vol.data, meta, "labels"


def case_to_layer_data(case: Case) -> list[LayerDataTuple]:
    """Layer data tuples for a case: one Image per modality, then its segmentation(s).

    Parameters
    ----------
    case
        A loaded case (see :func:`napari_brats_kd.io.load_case`).

    Returns
    -------
    list of (data, meta, layer_type)
        Images named ``"<case> <Modality>"`` (only the last one visible, so that the top layer is
        not hidden under the others), the segmentation as ``"<case> segmentation"``, and any
        extra segmentations (``case.extra["segmentations"]``) as ``"<case> <name>"`` labels, hidden
        but for one (a fusion, if any) when the case has no segmentation of its own.
    """
    out: list[LayerDataTuple] = []
    last = case.modalities[-1] if case.modalities else None
    for modality, vol in case.images.items():
        name = f"{case.case_id} {lab.MODALITY_NAMES[modality]}"
        out.append(image_layer_data(vol, name, case, modality, visible=modality == last))
    if case.seg is not None:
        out.append(
            labels_layer_data(
                case.seg,
                f"{case.case_id} segmentation",
                case,
                case.convention,
                case.convention_reason,
            )
        )
    extras = case.extra.get("segmentations", {})
    # With no segmentation of its own, the case shows one of its extra ones (a fusion when there
    # is one): a user opening algorithm outputs expects to see a tumour, not ten hidden layers.
    shown = None
    if case.seg is None and extras:
        shown = next((n for n in extras if "fusion" in n.lower()), next(iter(extras)))
    for seg_name, item in extras.items():
        out.append(
            labels_layer_data(
                item["volume"],
                f"{case.case_id} {seg_name}",
                case,
                item["convention"],
                item["reason"],
                visible=seg_name == shown,
            )
        )
    return out


# --------------------------------------------------------------------------------------------------
# Layers -> volumes (writer side)
# --------------------------------------------------------------------------------------------------


class LabelsToWrite(NamedTuple):
    """What the writer needs: geometry, conventions and warnings for the user."""

    reference: Volume
    source_convention: lab.LabelConvention
    target_convention: lab.LabelConvention
    warnings: list[str]


def default_reference(
    shape: tuple[int, ...], scale: tuple[float, ...] | None
) -> tuple[Volume, str]:
    """Geometry for a labels layer that carries no source scan (painted by hand).

    A display shape of 155x240x240 is a BraTS volume: the BraTS LPS affine. Anything else gets a
    RAS affine with the layer's voxel sizes.
    """
    shape = tuple(int(s) for s in shape)
    brats_display = orient.reoriented_shape(
        orient.BRATS_SHAPE, orient.axcodes(orient.BRATS_AFFINE), orient.DISPLAY_AXCODES
    )
    if shape == brats_display:
        affine = orient.BRATS_AFFINE.copy()
        why = "the BraTS affine (1 mm, LPS), as its shape is that of a BraTS volume"
    else:
        s = [float(v) for v in (scale if scale is not None and len(scale) == 3 else (1, 1, 1))]
        # Display axes are (I, P, L); a RAS file's x, y, z axes run along L, P, I reversed.
        affine = np.diag([s[2], s[1], s[0], 1.0])
        why = f"an axis-aligned RAS affine with voxel sizes {tuple(s[::-1])} mm"
    geometry = np.broadcast_to(np.zeros((), np.uint8), shape)  # geometry only: no allocation
    return Volume(geometry, affine, None, None), why


def labels_to_volume(data: Any, metadata: dict[str, Any] | None, scale=None) -> LabelsToWrite:
    """Work out how to write a labels layer: its source geometry and conventions.

    Parameters
    ----------
    data
        The layer's label array (display order).
    metadata
        The layer's ``metadata`` dict. ``metadata["brats_kd"]`` (set by our reader and by
        segmentation widgets) gives the source affine/header and the label convention; the
        optional key ``"target_convention"`` in it selects another convention to write.
    scale
        The layer's scale, used only when no source geometry is known.

    Returns
    -------
    LabelsToWrite
    """
    notes: list[str] = []
    info = dict((metadata or {}).get(METADATA_KEY) or {})
    shape = tuple(int(s) for s in np.shape(data))
    affine = info.get("affine")
    if affine is not None and tuple(info.get("display_shape") or shape) == shape:
        ref = Volume(
            np.broadcast_to(np.zeros((), np.uint8), shape),
            np.asarray(affine, float),
            info.get("header"),
            Path(info["source_path"]) if info.get("source_path") else None,
        )
        src_ax = tuple(info.get("file_axcodes") or ref.file_axcodes)
        if src_ax != tuple(ref.file_axcodes):
            notes.append(
                f"Stored axis codes {src_ax} disagree with the stored affine "
                f"({ref.file_axcodes}); the affine was used."
            )
    else:
        ref, why = default_reference(shape, scale)
        if affine is not None:
            notes.append(
                f"The layer's shape {shape} no longer matches its source scan "
                f"{info.get('display_shape')}; written with {why}."
            )
        else:
            notes.append(
                f"The labels layer has no source scan geometry (not opened by napari-brats-kd); "
                f"written with {why}. Paint on a layer made from the scan to keep its geometry."
            )
    source = info.get("convention")
    if source is None:
        values = np.unique(np.asarray(data))
        source, reason = lab.detect_convention(values, None)
        notes.append(f"Label convention {lab.LabelConvention(source).value}: {reason}.")
    target = info.get("target_convention") or source
    return LabelsToWrite(ref, lab.LabelConvention(source), lab.LabelConvention(target), notes)


def warn_all(messages: list[str]) -> None:
    """Emit messages as ``UserWarning`` (napari shows warnings as notifications)."""
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=3)
