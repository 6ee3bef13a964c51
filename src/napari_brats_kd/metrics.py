"""Segmentation metrics as BraTS reports them: Dice, HD95 and volumes of WT, TC and ET.

The numpy part (everything but :func:`dice_torch`) needs no torch. Conventions follow the BraTS
challenges:

===========================  ===========  ===================================================
prediction / ground truth    Dice         HD95
===========================  ===========  ===================================================
both empty                   1            0
one empty                    0            :data:`HD95_EMPTY_MM` (373.13 mm, the diagonal of the
                                          240x240x155 mm BraTS volume, as the BraTS 2021
                                          evaluation reports it)
both non-empty               2|A∩B|/(|A|+|B|)  95th percentile of the pooled surface distances
===========================  ===========  ===================================================

HD95 is computed in millimetres from the voxel spacing. Surfaces are the voxels of a mask that
touch the background through a face (mask minus its 6-connected erosion); the distances from each
surface to the other are pooled and their 95th percentile is taken (the medpy / panoptica
definition used by the BraTS evaluation packages).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .errors import CaseError
from .labels import (
    REGIONS,
    REPORT_REGIONS,
    LabelConvention,
    class_map,
    get_convention,
    labels_to_regions,
)
from .postprocess import TUMOUR_CONNECTIVITY

if TYPE_CHECKING:
    pass

#: HD95 reported when exactly one of prediction and ground truth is empty (mm): the diagonal of a
#: 240x240x155 mm BraTS volume, the value the BraTS 2021 evaluation uses.
HD95_EMPTY_MM: float = float(math.sqrt(240**2 + 240**2 + 155**2))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty).

    Parameters
    ----------
    pred, gt
        Masks of the same shape (non-zero is foreground).

    Returns
    -------
    float
        ``2 |pred ∩ gt| / (|pred| + |gt|)``.
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"dice: shapes differ, {pred.shape} vs {gt.shape}.")
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    # Border voxels: in the mask but with a face-neighbour outside it. Pad so that a mask touching
    # the array edge still has a border there.
    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(3, 1))
    return (padded & ~eroded)[1:-1, 1:-1, 1:-1]


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    where = [
        np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        for axis in range(mask.ndim)
    ]
    return tuple(slice(int(w[0]), int(w[-1]) + 1) for w in where)


def _surface_distances(
    a_surface: np.ndarray, b_surface: np.ndarray, spacing: Sequence[float]
) -> np.ndarray:
    # Distance of each surface voxel of `a` to the nearest surface voxel of `b`, in mm.
    dist_to_b = ndimage.distance_transform_edt(~b_surface, sampling=spacing)
    return dist_to_b[a_surface]


def hd95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    empty_value: float = HD95_EMPTY_MM,
) -> float:
    """95th-percentile Hausdorff distance between two 3D masks, in mm.

    Parameters
    ----------
    pred, gt
        3D masks of the same shape.
    spacing
        Voxel size (mm) along the three array axes.
    empty_value
        Value returned when exactly one mask is empty (default :data:`HD95_EMPTY_MM`).

    Returns
    -------
    float
        0 when both masks are empty, ``empty_value`` when one is, otherwise the 95th percentile of
        the pooled surface-to-surface distances in both directions.
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"hd95 needs two 3D masks of one shape, got {pred.shape} and {gt.shape}.")
    has_p, has_g = bool(pred.any()), bool(gt.any())
    if not has_p and not has_g:
        return 0.0
    if has_p != has_g:
        return float(empty_value)
    # Only the bounding box of both masks matters: every surface voxel lies in it, so the
    # distances are the same, at a fraction of the cost on a 240x240x155 volume.
    box = _bounding_box(pred | gt)
    sp, sg = _surface(pred[box]), _surface(gt[box])
    spacing = tuple(float(s) for s in spacing)
    distances = np.concatenate(
        [_surface_distances(sp, sg, spacing), _surface_distances(sg, sp, spacing)]
    )
    return float(np.percentile(distances, 95))


def false_positive_ml(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    beyond_mm: float = 0.0,
) -> float:
    """Volume (ml) of ``pred`` outside ``gt``, counting only voxels beyond ``beyond_mm`` of it.

    Parameters
    ----------
    pred, gt
        3D masks of one shape (say, predicted and expert whole tumour).
    spacing
        Voxel size (mm) along the array axes.
    beyond_mm
        0 counts every false-positive voxel; 10 counts those more than 10 mm from ``gt``: the
        far ones (vessels, dura), not a margin drawn a little wide.

    Returns
    -------
    float
        The volume in ml (cm3). With an empty ``gt`` every predicted voxel counts.
    """
    pred = np.asarray(pred, bool)
    gt = np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"false_positive_ml: shapes differ, {pred.shape} vs {gt.shape}.")
    outside = pred & ~gt
    voxel_ml = float(np.prod(spacing)) / 1000.0
    if beyond_mm > 0 and gt.any() and outside.any():
        distance = ndimage.distance_transform_edt(~gt, sampling=tuple(map(float, spacing)))
        outside &= distance > beyond_mm
    return float(outside.sum()) * voxel_ml


def missed_lesions(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    min_ml: float = 0.5,
) -> int:
    """Number of lesions of ``gt`` (26-connected components of at least ``min_ml``) that no
    voxel of ``pred`` overlaps: what a multi-focal tumour loses to a too-eager clean-up.
    """
    pred = np.asarray(pred, bool)
    if pred.shape != np.shape(gt):
        raise ValueError(f"missed_lesions: shapes differ, {pred.shape} vs {np.shape(gt)}.")
    components, n = ndimage.label(np.asarray(gt, bool), structure=TUMOUR_CONNECTIVITY)
    if n == 0:
        return 0
    voxel_ml = float(np.prod(spacing)) / 1000.0
    large = np.flatnonzero(np.bincount(components.ravel())[1:] * voxel_ml >= min_ml) + 1
    hit = np.unique(components[pred])
    return int(np.count_nonzero(~np.isin(large, hit)))


@dataclass
class CaseMetrics:
    """Metrics of one case: per region (WT, TC, ET) and per tumour class.

    Attributes
    ----------
    case_id
        Name of the case.
    dice, hd95
        ``{region or class: value}`` (HD95 in mm).
    volume_pred_ml, volume_gt_ml
        ``{region or class: volume}`` in millilitres.
    pred_convention, gt_convention
        Label conventions the prediction and the ground truth were read in (``""`` if unknown,
        as for a missing prediction).
    prediction_missing
        True when the case had no prediction and was scored as an empty one
        (``evaluate_folders(..., missing_as_empty=True)``).
    """

    case_id: str
    dice: dict[str, float] = field(default_factory=dict)
    hd95: dict[str, float] = field(default_factory=dict)
    volume_pred_ml: dict[str, float] = field(default_factory=dict)
    volume_gt_ml: dict[str, float] = field(default_factory=dict)
    pred_convention: str = ""
    gt_convention: str = ""
    prediction_missing: bool = False

    def as_row(self) -> dict[str, float | str]:
        """Flat ``{column: value}`` row for a CSV file (regions first, then classes)."""
        row: dict[str, float | str] = {"case_id": self.case_id}
        for name in self.dice:
            row[f"dice_{name}"] = self.dice[name]
        for name in self.hd95:
            row[f"hd95_{name}"] = self.hd95[name]
        for name in self.volume_pred_ml:
            row[f"vol_pred_ml_{name}"] = self.volume_pred_ml[name]
            row[f"vol_gt_ml_{name}"] = self.volume_gt_ml[name]
        return row


def region_metrics(
    pred_regions: np.ndarray,
    gt_regions: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    region_names: Sequence[str] = REGIONS,
    with_hd95: bool = True,
) -> dict[str, dict[str, float]]:
    """Dice (and HD95) per region channel.

    Parameters
    ----------
    pred_regions, gt_regions
        Boolean arrays ``(R, X, Y, Z)``, channel ``i`` being region ``region_names[i]``.
    spacing
        Voxel size (mm) of the spatial axes.
    region_names
        Names of the channels.
    with_hd95
        Whether to compute HD95 (the slow part).

    Returns
    -------
    dict
        ``{"dice": {region: value}, "hd95": {region: value}}`` (``hd95`` empty if not asked).
    """
    out: dict[str, dict[str, float]] = {"dice": {}, "hd95": {}}
    for i, name in enumerate(region_names):
        out["dice"][name] = dice(pred_regions[i], gt_regions[i])
        if with_hd95:
            out["hd95"][name] = hd95(pred_regions[i], gt_regions[i], spacing)
    return out


def evaluate_labels(
    pred: np.ndarray,
    gt: np.ndarray,
    convention: LabelConvention | str,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    case_id: str = "",
    gt_convention: LabelConvention | str | None = None,
    per_class: bool = True,
) -> CaseMetrics:
    """Dice, HD95 and volumes of WT, TC, ET (and each tumour class) for two label maps.

    Parameters
    ----------
    pred, gt
        Integer label maps on the same grid.
    convention
        Label convention of ``pred``.
    spacing
        Voxel size in mm along the array axes.
    case_id
        Name stored with the result.
    gt_convention
        Label convention of ``gt`` if it differs from ``convention``.
    per_class
        Also report each tumour class (NCR, ED, ET, and RC where the conventions have it).

    Returns
    -------
    CaseMetrics
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise CaseError(
            f"Case {case_id!r}: prediction shape {pred.shape} differs from ground truth "
            f"{gt.shape}; they must lie on one voxel grid."
        )
    gt_convention = convention if gt_convention is None else gt_convention
    voxel_ml = float(np.prod(spacing)) / 1000.0
    result = CaseMetrics(
        case_id,
        pred_convention=get_convention(convention).convention.value,
        gt_convention=get_convention(gt_convention).convention.value,
    )
    p_reg = labels_to_regions(pred, convention, REPORT_REGIONS)
    g_reg = labels_to_regions(gt, gt_convention, REPORT_REGIONS)
    masks: list[tuple[str, np.ndarray, np.ndarray]] = [
        (r, p_reg[i], g_reg[i]) for i, r in enumerate(REPORT_REGIONS)
    ]
    if per_class:
        p_cls = class_map(pred, convention)
        g_cls = class_map(gt, gt_convention)
        # Only classes both conventions know: a 2021 map has no resection cavity to compare.
        masks += [(c, p_cls[c], g_cls[c]) for c in p_cls if c in g_cls]
    for name, p, g in masks:
        result.dice[name] = dice(p, g)
        result.hd95[name] = hd95(p, g, spacing)
        result.volume_pred_ml[name] = float(p.sum()) * voxel_ml
        result.volume_gt_ml[name] = float(g.sum()) * voxel_ml
    return result


def summarize(rows: Iterable[Mapping[str, float | str]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation, median, and count of each numeric column over cases.

    NaN values are left out of a column's statistics.
    """
    rows = list(rows)
    columns = [k for k in (rows[0] if rows else {}) if k != "case_id"]
    out: dict[str, dict[str, float]] = {}
    for col in columns:
        values = np.array([float(r[col]) for r in rows if col in r], dtype=float)
        values = values[~np.isnan(values)]
        if values.size == 0:
            out[col] = {"mean": float("nan"), "std": float("nan"), "median": float("nan"), "n": 0}
            continue
        out[col] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "median": float(np.median(values)),
            "n": int(values.size),
        }
    return out


def dice_torch(pred: object, target: object, eps: float = 1e-6) -> object:
    """Per-channel Dice of binary tensors ``(B, C, ...)`` -> ``(C,)``, both-empty counted as 1.

    A torch helper for validation inside the training loop (same conventions as :func:`dice`).
    """
    import torch

    pred = torch.as_tensor(pred).bool()
    target = torch.as_tensor(target).bool()
    dims = [0, *range(2, pred.ndim)]
    inter = (pred & target).sum(dims).double()
    total = pred.sum(dims).double() + target.sum(dims).double()
    return torch.where(total > 0, 2 * inter / total.clamp_min(eps), torch.ones_like(total))


__all__ = [
    "HD95_EMPTY_MM",
    "CaseMetrics",
    "dice",
    "dice_torch",
    "evaluate_labels",
    "hd95",
    "region_metrics",
    "summarize",
]


# Folder evaluation moved to :mod:`.evaluation`; its names stay reachable here, imported on first
# use (evaluation imports this module for the metrics themselves).
_MOVED_TO_EVALUATION = frozenset(
    {"FolderEvaluation", "UnmatchedCasesWarning", "evaluate_folders", "write_csv"}
)


def __getattr__(name: str):
    if name in _MOVED_TO_EVALUATION:
        from . import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
