"""napari layers -> :class:`~napari_brats_kd.volume.Case`; segmentation results -> Labels layers.

Layers opened by this plugin's reader carry ``metadata["brats_kd"]`` with the source file's affine,
header, path, modality and case id; their data is already in display order. Layers from elsewhere
(another reader, a numpy array) lack it: their ``scale`` is taken as the voxel size and their axes
are assumed to be in display order, and the caller is told so.

Nothing here imports napari or Qt at import time (only inside functions that receive layers): layers
are used through their public attributes (``data``, ``name``, ``scale``, ``translate``,
``metadata``), so the console API can use this module too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations as ornt

from .. import orientation as orient
from ..errors import CaseError, InvalidVolumeError
from ..labels import MODALITIES, MODALITY_NAMES, REPORT_REGIONS, LabelConvention
from ..volume import Case, Volume
from .layers import METADATA_KEY as META_KEY


def layer_meta(layer: Any) -> dict:
    """This plugin's metadata of a layer (empty dict when it has none)."""
    meta = getattr(layer, "metadata", None) or {}
    value = meta.get(META_KEY)
    return value if isinstance(value, dict) else {}


def is_image_layer(layer: Any) -> bool:
    """Whether ``layer`` is a napari Image layer.

    napari is imported here, not at module level: a layer exists only once napari is loaded.
    """
    from napari.layers import Image

    return isinstance(layer, Image)


def layer_modality(layer: Any) -> str | None:
    """Modality of an Image layer: from our metadata, else from a token of its name.

    Names such as ``"BraTS2021_00000 FLAIR"``, ``"case_t1ce"`` or ``"T2"`` are recognised with the
    aliases of :func:`~napari_brats_kd.naming.modality_from_token`.
    """
    modality = layer_meta(layer).get("modality")
    if modality in MODALITIES:
        return modality
    from ..naming import modality_from_token

    # Last token first: "<case> FLAIR" and "<case>_t1ce" end with the modality.
    tokens = [t for t in re.split(r"[^0-9A-Za-z]+", str(getattr(layer, "name", ""))) if t]
    for token in reversed(tokens):
        key = modality_from_token(token)
        if key is not None:
            return key
    return None


def find_modality_layers(layers: Iterable[Any]) -> dict[str, Any]:
    """Pick one Image layer per modality among ``layers``.

    Where several layers claim a modality, the one opened by this plugin wins, then the topmost
    (last in the layer list), so the most recently opened case is chosen.

    Returns
    -------
    dict
        ``{modality: layer}`` in :data:`~napari_brats_kd.labels.MODALITIES` order; modalities with
        no matching layer are absent.
    """
    found: dict[str, tuple[int, Any]] = {}
    for layer in layers:
        if not is_image_layer(layer):
            continue
        modality = layer_modality(layer)
        if modality is None:
            continue
        rank = 1 if layer_meta(layer).get("modality") == modality else 0
        previous = found.get(modality)
        if previous is None or rank >= previous[0]:
            found[modality] = (rank, layer)
    return {m: found[m][1] for m in MODALITIES if m in found}


def display_affine(scale: Sequence[float], translate: Sequence[float] = (0, 0, 0)) -> np.ndarray:
    """Affine of an array that is already in display order, with voxel size ``scale`` (mm).

    Used for layers that carry no source geometry: they are taken to be in
    :data:`~napari_brats_kd.orientation.DISPLAY_AXCODES` orientation, so no reorientation happens.
    """
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i, (axis, flip) in enumerate(ornt.axcodes2ornt(orient.DISPLAY_AXCODES)):
        affine[int(axis), i] = flip * float(scale[i])
    # The layer's translate is the world position of voxel 0 along display axes.
    affine[:3, 3] = affine[:3, :3] @ (np.asarray(translate, float) / np.asarray(scale, float))
    return affine


def _layer_volume(layer: Any, modality: str) -> tuple[Volume, str | None]:
    """A :class:`Volume` for one layer and, if geometry had to be assumed, a warning."""
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise InvalidVolumeError(
            f"Layer {layer.name!r} ({MODALITY_NAMES[modality]}) has {data.ndim} dimensions with "
            f"shape {data.shape}: expected a 3D volume."
        )
    meta = layer_meta(layer)
    affine = meta.get("affine")
    if affine is not None:
        path = meta.get("source_path")
        volume = Volume(data, np.asarray(affine, float), meta.get("header"), path and Path(path))
        return volume, None
    scale = tuple(float(s) for s in layer.scale[-3:])
    translate = tuple(float(t) for t in layer.translate[-3:])
    warning = (
        f"Layer {layer.name!r} was not opened by napari-brats-kd: assumed voxel size {scale} mm "
        "from its scale and axes in display order (slices inferior-ward, rows posterior-ward, "
        "columns towards the patient's left)."
    )
    return Volume(data, display_affine(scale, translate)), warning


def case_from_layers(
    layers: Mapping[str, Any],
    case_id: str | None = None,
) -> tuple[Case, list[str]]:
    """Build a :class:`~napari_brats_kd.volume.Case` from modality Image layers.

    Parameters
    ----------
    layers
        ``{modality: napari Image layer}`` (e.g. from :func:`find_modality_layers` or the widget's
        pickers). Data must be 3D and in display order, as this plugin's reader makes it.
    case_id
        Case identifier; default: the ``case_id`` in the layers' metadata, else the first layer's
        name without its modality.

    Returns
    -------
    case, warnings
        The case and sentences about assumptions made (layers without source geometry).

    Raises
    ------
    CaseError
        If no layer is given, a layer is given twice, or the layers lie on different voxel grids.
    InvalidVolumeError
        If a layer is not 3D.
    """
    if not layers:
        raise CaseError("No modality layer given: open a case (File > Open) or pick the layers.")
    seen: dict[int, str] = {}
    for modality, layer in layers.items():
        if id(layer) in seen:
            raise CaseError(
                f"Layer {layer.name!r} is picked for both {MODALITY_NAMES[seen[id(layer)]]} "
                f"and {MODALITY_NAMES[modality]}: pick a different layer for each modality."
            )
        seen[id(layer)] = modality
    images: dict[str, Volume] = {}
    warnings: list[str] = []
    for modality, layer in layers.items():
        volume, warning = _layer_volume(layer, modality)
        images[modality] = volume
        if warning:
            warnings.append(warning)
    ordered = [(m, images[m]) for m in MODALITIES if m in images]
    ref_mod, ref = ordered[0]
    for modality, volume in ordered[1:]:
        if not ref.geometry_matches(volume):
            raise CaseError(
                f"Layers {layers[ref_mod].name!r} ({ref.data.shape}) and "
                f"{layers[modality].name!r} ({volume.data.shape}) lie on different voxel grids: "
                "pick the modalities of one case."
            )
    warnings += mixed_case_warnings(layers, images)
    first = layers[ref_mod]
    meta = layer_meta(first)
    if case_id is None:
        case_id = meta.get("case_id") or _strip_modality(str(first.name)) or "image"
    extra = {"source_layers": {m: layers[m].name for m in images}}
    case = Case(
        case_id=str(case_id), images=images, naming=meta.get("naming", "unknown"), extra=extra
    )
    if meta.get("convention"):
        case.convention = LabelConvention(meta["convention"])
        case.convention_reason = meta.get("convention_reason") or case.convention_reason
    return case, warnings


#: Below this overlap (Dice) of their nonzero voxels, two picked images are not one scan: the
#: modalities of one skull-stripped BraTS case overlap 0.80-1.00 (15 real cases; FLAIR lowest),
#: while different patients on BraTS's common atlas grid overlap 0.86-0.95, so overlap alone
#: cannot tell those apart: the cases the reader recorded for the layers do.
MIN_MASK_OVERLAP = 0.7


def mixed_case_warnings(layers: Mapping[str, Any], images: Mapping[str, Volume]) -> list[str]:
    """Sentences warning that picked modality layers do not look like one scan.

    Two signs, both cheap: the reader recorded different cases for the layers (the T2 of one
    case picked with the rest of another), or the images' nonzero voxels (the brain, in a
    skull-stripped scan) barely overlap.
    """
    out: list[str] = []
    recorded = {m: layer_meta(layers[m]).get("case_id") for m in images}
    cases = {c for c in recorded.values() if c}
    if len(cases) > 1:
        parts = "; ".join(
            f"{MODALITY_NAMES[m]} from {c}" for m, c in recorded.items() if c is not None
        )
        out.append(
            f"The picked images come from {len(cases)} different cases ({parts}): the "
            "segmentation mixes patients. Pick the modalities of one case."
        )
        return out
    masks = {m: np.asarray(v.data[::4, ::4, ::4]) != 0 for m, v in images.items()}
    ref_mod = next(iter(masks))
    for modality, mask in list(masks.items())[1:]:
        total = int(masks[ref_mod].sum()) + int(mask.sum())
        overlap = 2 * int((masks[ref_mod] & mask).sum()) / total if total else 1.0
        if overlap < MIN_MASK_OVERLAP:
            out.append(
                f"{MODALITY_NAMES[modality]} and {MODALITY_NAMES[ref_mod]} barely overlap "
                f"(their nonzero voxels agree {overlap:.0%}): they may not be the same scan or "
                "not registered to each other."
            )
    return out


def segmentation_layer_name(case_id: str) -> str:
    """Name of a case's ground-truth Labels layer: ``"<case_id> segmentation"`` (as the reader
    names it; a user can name a painted layer so)."""
    return f"{case_id} segmentation"


def layer_case_id(layer: Any) -> str:
    """Case a modality layer belongs to: ``case_id`` in its metadata, else its name without the
    modality (``"BraTS_001 FLAIR"`` -> ``"BraTS_001"``)."""
    return str(layer_meta(layer).get("case_id") or _strip_modality(str(layer.name)) or layer.name)


def labelled_cases_from_layers(
    layers: Iterable[Any],
    modalities: Sequence[str] = MODALITIES,
) -> tuple[list[Case], list[str]]:
    """Every case open in the viewer that has a ground-truth segmentation layer.

    Image layers are grouped by case (:func:`layer_case_id`); within a case one layer per
    modality is picked as :func:`find_modality_layers` does. The case's ground truth is the Labels
    layer named :func:`segmentation_layer_name` (what the reader creates); it becomes ``case.seg``
    on the scans' grid, with the label convention from the layer's metadata, else detected from
    its values (:func:`~napari_brats_kd.labels.detect_convention`).

    Parameters
    ----------
    layers
        The viewer's layers (``viewer.layers``).
    modalities
        Modalities each case must have (the ones training needs); cases lacking one are skipped.

    Returns
    -------
    cases, messages
        The labelled cases in layer order, and sentences for the user: every case skipped and why,
        and assumptions made (layers without source geometry, a detected label convention).
    """
    from ..errors import BratsKDError

    layers = list(layers)
    groups: dict[str, list[Any]] = {}
    for layer in layers:
        if is_image_layer(layer) and layer_modality(layer) is not None:
            groups.setdefault(layer_case_id(layer), []).append(layer)
    labels_by_name = {str(layer.name): layer for layer in layers if _is_labels_layer(layer)}
    cases: list[Case] = []
    messages: list[str] = []
    for case_id, members in groups.items():
        found = find_modality_layers(members)
        missing = [MODALITY_NAMES[m] for m in modalities if m not in found]
        if missing:
            messages.append(
                f"Case {case_id!r} skipped: it has no layer for {', '.join(missing)} "
                "(open the case with all the scans training needs)."
            )
            continue
        seg_name = segmentation_layer_name(case_id)
        seg_layer = labels_by_name.get(seg_name)
        if seg_layer is None:
            messages.append(
                f"Case {case_id!r} skipped: no Labels layer named {seg_name!r} holds its ground "
                "truth (open the case folder with its segmentation file, or rename a painted "
                "Labels layer so)."
            )
            continue
        try:
            case, warnings = case_from_layers(found, case_id=case_id)
            case.seg, note = _segmentation_volume(seg_layer, case)
        except BratsKDError as exc:
            messages.append(f"Case {case_id!r} skipped: {exc}")
            continue
        messages += warnings + ([note] if note else [])
        cases.append(case)
    return cases, messages


def _segmentation_volume(layer: Any, case: Case) -> tuple[Volume, str | None]:
    """``layer``'s labels as a Volume on ``case``'s grid, setting ``case.convention``.

    Returns the volume and a sentence when the convention had to be detected from the values.
    """
    from ..labels import detect_convention

    ref = case.reference
    # A copy: the user may go on painting while the run writes the case in its thread.
    data = np.array(layer.data)
    if data.shape != ref.data.shape:
        raise CaseError(
            f"its segmentation layer {layer.name!r} has shape {data.shape}, the scans "
            f"{ref.data.shape}: the ground truth must lie on the scans' voxel grid."
        )
    if not np.issubdtype(data.dtype, np.integer):
        data = np.rint(data).astype(np.int16)
    meta = layer_meta(layer)
    note = None
    if meta.get("convention"):
        convention = LabelConvention(meta["convention"])
        reason = meta.get("convention_reason") or "from the layer's metadata"
    else:
        convention, reason = detect_convention(np.unique(data), case.naming)
        note = f"Segmentation layer {layer.name!r}: label convention {convention.value}, {reason}."
    case.convention, case.convention_reason = convention, reason
    return Volume(data, ref.affine, ref.header, None), note


def _strip_modality(name: str) -> str:
    """``"BraTS_001 FLAIR"`` -> ``"BraTS_001"``: the layer name without a trailing modality."""
    from ..naming import modality_from_token

    tokens = re.split(r"([^0-9A-Za-z]+)", name)
    while tokens and (
        not tokens[-1] or modality_from_token(tokens[-1]) or not tokens[-1].strip("_- .")
    ):
        tokens.pop()
    return "".join(tokens).strip("_- .")


def _is_labels_layer(layer: Any) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels)


def result_layer_name(case_id: str, model_name: str) -> str:
    """Name of the Labels layer a segmentation makes: ``"<case> tumor (<model>)"``."""
    return f"{case_id} tumor ({model_name})"


def result_layer_kwargs(result: Any, case: Case, source_layer: Any, model_label: str) -> dict:
    """Keyword arguments of ``viewer.add_labels`` for a segmentation result.

    The layer is made like the reader's segmentation layers
    (:func:`~napari_brats_kd._napari.layers.labels_layer_data`: BraTS colours of the result's label
    convention, label names, the source scan's geometry in ``metadata["brats_kd"]`` so that the
    writer saves it aligned with the source file) and placed exactly over ``source_layer``.

    Parameters
    ----------
    result
        A :class:`~napari_brats_kd.inference.SegmentationResult` (labels in display order).
    case
        The case that was segmented.
    source_layer
        One of the modality layers of the case (its scale and translate are copied).
    model_label
        Short model name for the layer name, e.g. ``"student"``.
    """
    from .layers import labels_layer_data

    ref = case.reference
    volume = Volume(np.asarray(result.labels), ref.affine, ref.header, ref.path)
    reason = f"written by model {result.model!r} in its output convention"
    _data, kwargs, _kind = labels_layer_data(
        volume, result_layer_name(case.case_id, model_label), case, result.convention, reason
    )
    meta = kwargs["metadata"][META_KEY]
    meta.update(
        {
            "role": "prediction",
            "model": str(result.model),
            "device": str(result.device),
            "seconds": float(result.seconds),
            "volumes_ml": {r: float(result.volumes_ml[r]) for r in REPORT_REGIONS},
            "source_layers": dict(case.extra.get("source_layers", {})),
        }
    )
    kwargs["scale"] = tuple(float(s) for s in source_layer.scale)
    kwargs["translate"] = tuple(float(t) for t in source_layer.translate)
    return kwargs


def add_result_layer(
    viewer: Any,
    result: Any,
    case: Case,
    source_layer: Any,
    model_label: str,
    replace: bool = True,
):
    """Add (or replace) the Labels layer of a segmentation result; returns the layer."""
    kwargs = result_layer_kwargs(result, case, source_layer, model_label)
    if replace and kwargs["name"] in viewer.layers:
        layer = viewer.layers[kwargs["name"]]
        if _is_labels_layer(layer) and layer.data.shape == result.labels.shape:
            layer.data = result.labels
            layer.metadata = kwargs["metadata"]
            layer.colormap = kwargs["colormap"]
            layer.scale = kwargs["scale"]
            layer.translate = kwargs["translate"]
            return layer
        viewer.layers.remove(layer)
    return viewer.add_labels(result.labels, **kwargs)


def format_volumes(volumes_ml: Mapping[str, float]) -> str:
    """One line per region: ``"WT  12.3 cm³ (whole tumour)"``."""
    from ..labels import REGION_DESCRIPTIONS

    return "\n".join(
        f"{r}  {volumes_ml[r]:7.1f} cm³  ({REGION_DESCRIPTIONS[r]})" for r in REPORT_REGIONS
    )
