"""Scoring a folder of predicted label maps against a folder of ground truth, BraTS style.

:func:`evaluate_folders` (``brats-kd evaluate``) matches the two folders' cases by case id in any
naming, reads each pair (refusing probability maps and grids that differ), settles each file's
label convention, and scores the pair with :func:`~napari_brats_kd.metrics.evaluate_labels`; a
CSV of per-case rows and their summary can be written.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .callbacks import Progress
from .errors import CaseError, InvalidVolumeError, LabelConventionError, NiftiReadError
from .labels import LabelConvention, get_convention
from .metrics import CaseMetrics, evaluate_labels, summarize

if TYPE_CHECKING:
    from .volume import Volume


def write_csv(
    rows: Sequence[Mapping[str, float | str]],
    path: str | Path,
    summary: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Write per-case rows (and, if given, summary rows ``mean``/``std``/``median``) to CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
            if summary:
                for stat in ("mean", "std", "median"):
                    writer.writerow(
                        {"case_id": stat, **{c: summary[c][stat] for c in columns if c in summary}}
                    )

    from ._files import atomic_write

    return atomic_write(path, write)


def _load_labels(path: Path, case_id: str, what: str) -> Volume:
    """Read the label map ``path`` of ``case_id`` (``what``: "prediction" or "ground truth").

    Probability maps, scans and label values beyond 0..255 are refused rather than rounded or
    cast: a float 0.6 read as label 1, or an int32 65538 wrapped to 2, would score as a real
    segmentation.
    """
    from .io import load_segmentation

    try:
        return load_segmentation(path)
    except (InvalidVolumeError, NiftiReadError) as exc:
        hint = (
            " Scores need integer label maps such as 0, 1, 2, 4: turn probability maps into "
            "labels (argmax or a threshold) first."
            if what == "prediction" and isinstance(exc, InvalidVolumeError)
            else ""
        )
        # The loader's message starts with the file name; the folder tells which side it is.
        raise type(exc)(f"Case {case_id!r}, {what} in {path.parent}: {exc}{hint}") from None


def _fmt_mm(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _describe_grid(vol: Volume) -> str:
    """What a header viewer shows of a file: shape, voxel order, voxel size and origin."""
    from . import orientation as orient

    return (
        f"{vol.path or '(in memory)'}: {'x'.join(map(str, vol.file_shape))} voxels "
        f"stored {''.join(vol.file_axcodes)}, voxel size "
        f"{_fmt_mm(orient.voxel_sizes(vol.affine))} mm, origin {_fmt_mm(vol.affine[:3, 3])} mm"
    )


def _check_same_grid(case_id: str, pred: Volume, gt: Volume, atol: float = 1e-3) -> None:
    """Raise :class:`CaseError` unless ``pred`` and ``gt`` cover the same world grid.

    Both are compared as loaded, in display order: files that differ only in the voxel order
    they are stored in (LPS and RAS, say) line up voxel for voxel and pass. ``atol`` is in mm.
    """
    if pred.geometry_matches(gt, atol):
        return
    a, b = pred.display_affine, gt.display_affine
    reasons: list[str] = []
    if pred.data.shape != gt.data.shape:
        reasons.append("they hold different numbers of voxels per axis")
    sizes_a, sizes_b = np.linalg.norm(a[:3, :3], axis=0), np.linalg.norm(b[:3, :3], axis=0)
    if not np.allclose(sizes_a, sizes_b, rtol=0.0, atol=atol):
        reasons.append("their voxel sizes differ")
    # Direction cosines are unitless: scale the tolerance so that it still means `atol` mm at
    # one voxel's distance.
    dirs_a, dirs_b = a[:3, :3] / sizes_a, b[:3, :3] / sizes_b
    if not np.allclose(dirs_a, dirs_b, rtol=0.0, atol=atol / max(sizes_b.max(), 1.0)):
        reasons.append("their axes point in different directions (a rotated or oblique grid)")
    shift = np.round(a[:3, 3] - b[:3, 3], 3) + 0.0  # + 0.0: no "-0" in the message
    if not np.allclose(a[:3, 3], b[:3, 3], rtol=0.0, atol=atol):
        reasons.append(
            f"the prediction's grid is shifted by {_fmt_mm(shift)} mm (world x, y, z) against "
            "the ground truth's"
        )
    if not reasons:  # the rotation-and-scale part differs below the thresholds tested above
        reasons.append("their voxel-to-world affines differ")
    raise CaseError(
        f"Case {case_id!r}: the prediction and its ground truth lie on different voxel grids: "
        f"{'; '.join(reasons)} (prediction {_describe_grid(pred)}; ground truth "
        f"{_describe_grid(gt)}). Write the prediction on the grid of the case's own scans (as "
        "brats-kd segment does), or resample it onto the ground truth's grid, before scoring."
    )


@dataclass(frozen=True)
class _LabelFile:
    """A label map found by :func:`_index_label_files` and the naming of its case, if known."""

    path: Path
    naming: str | None = None


def _sibling_image_namings(labels_dir: Path) -> dict[str, str]:
    """``{case_id: naming}`` for a ``labelsTr`` folder beside its ``imagesTr`` folder.

    The label maps of an nnU-Net or MSD dataset are named after the case only; which layout (and
    so which label convention) they belong to is told by the image folder next to them:
    ``<case>_0000.nii.gz`` channel files (nnU-Net) or 4D volumes ``<case>.nii.gz`` (MSD).
    """
    from .cases import case_entries
    from .naming import classify_file, nifti_stem

    name = labels_dir.name
    if not name.lower().startswith("labels"):
        return {}
    images_dir = labels_dir.parent / ("images" + name[len("labels") :])
    if not images_dir.is_dir():
        return {}
    try:
        entries = [e for e in case_entries(images_dir) if e.is_file()]
    except CaseError:
        return {}
    out: dict[str, str] = {}
    for entry in entries:
        role = classify_file(entry)
        if role.kind == "channel":
            out[role.case_id] = "nnunet"
        else:  # case_entries lists other files only when all are 4D multi-channel volumes
            out[nifti_stem(entry)] = "msd"
    return out


def _index_label_files(folder: Path) -> dict[str, _LabelFile]:
    """``{case_id: label file}`` for the label maps in ``folder``.

    A folder holding NIfTI files directly is a folder of bare label maps, one per case, named
    after the case (``<case_id>.nii.gz``, optionally ``_seg``/``_pred``); their naming is known
    only for an nnU-Net / MSD ``labelsTr`` folder beside its ``imagesTr``. A flat nnU-Net / MSD
    image folder (``imagesTr``), and any other folder, is a dataset of cases whose segmentations
    are used, each with the naming of its case.
    """
    from .cases import case_entries, case_files, iter_dirs, nifti_files
    from .io import find_cases
    from .naming import classify_file, is_nifti_name, nifti_stem

    flat = sorted(f for f in folder.iterdir() if f.is_file() and is_nifti_name(f))
    found: dict[str, _LabelFile] = {}
    if flat and folder.name.lower().startswith("images"):
        try:  # nnU-Net channel files or MSD 4D volumes: their labels lie in labelsTr
            flat = [] if any(e.is_file() for e in case_entries(folder)) else flat
        except CaseError:
            pass
    if flat:
        namings = _sibling_image_namings(folder)
        for f in flat:
            stem = nifti_stem(f)
            naming = namings.get(stem)
            for suffix in ("_seg", "-seg", "_pred", "-pred"):
                stem = stem.removesuffix(suffix)
            found[stem] = _LabelFile(f, naming)
        return found
    # Case folders holding a segmentation beside their scans...
    try:
        entries = find_cases(folder)
    except CaseError:
        entries = []
    for case_path in entries:
        files = case_files(case_path)
        if files.seg is not None:
            found[files.case_id] = _LabelFile(files.seg, files.naming)
    # ... and folders holding one case's label map alone (predictions stored one case per
    # folder), which a dataset listing passes over as no case.
    for sub in iter_dirs(folder):
        labels = nifti_files(sub) if sub != folder else []
        roles = [classify_file(f) for f in labels]
        if len(roles) == 1 and roles[0].kind == "seg" and roles[0].case_id:
            found.setdefault(roles[0].case_id, _LabelFile(roles[0].path, None))
    return found


def _checked_convention(
    convention: LabelConvention | str | None,
) -> LabelConvention | None:
    """``convention`` as an enum (``None`` stays ``None``: detect)."""
    return None if convention is None else get_convention(convention).convention


class UnmatchedCasesWarning(UserWarning):
    """Cases of one folder of :func:`evaluate_folders` that have no counterpart in the other."""


class FolderEvaluation(tuple):
    """What :func:`evaluate_folders` returns: ``(results, summary)``, plus the unmatched cases.

    It unpacks like the pair it extends (``results, summary = evaluate_folders(...)``), so code
    written for that keeps working; the case ids that could not be paired are attributes.

    Attributes
    ----------
    results
        Per-case :class:`CaseMetrics`, in case-id order.
    summary
        :func:`summarize` of the per-case rows.
    missing_predictions
        Ground-truth case ids without a prediction, sorted. They are scored as empty predictions
        (and are among ``results``) only with ``missing_as_empty=True``.
    unmatched_predictions
        Prediction case ids without a ground truth (misnamed or extra files), sorted; never
        scored.
    """

    missing_predictions: tuple[str, ...]
    unmatched_predictions: tuple[str, ...]

    def __new__(
        cls,
        results: list[CaseMetrics],
        summary: dict[str, dict[str, float]],
        missing_predictions: Iterable[str] = (),
        unmatched_predictions: Iterable[str] = (),
    ) -> FolderEvaluation:
        self = super().__new__(cls, (results, summary))
        self.missing_predictions = tuple(missing_predictions)
        self.unmatched_predictions = tuple(unmatched_predictions)
        return self

    @property
    def results(self) -> list[CaseMetrics]:
        """Per-case metrics (``self[0]``)."""
        return self[0]

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        """Summary statistics (``self[1]``)."""
        return self[1]


def _some_ids(ids: Sequence[str], first: int = 5) -> str:
    """``"a, b, c"`` or ``"a, b, c, ... (12 in all)"``: enough to find the files, not a flood."""
    shown = ", ".join(ids[:first])
    return shown if len(ids) <= first else f"{shown}, ... ({len(ids)} in all)"


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    csv_path: str | Path | None = None,
    pred_convention: LabelConvention | str | None = None,
    gt_convention: LabelConvention | str | None = None,
    progress: Progress | None = None,
    missing_as_empty: bool = False,
) -> FolderEvaluation:
    """Score every prediction in ``pred_dir`` against the ground truth of the same case id.

    Parameters
    ----------
    pred_dir
        Folder of predicted label maps: one NIfTI per case named ``<case_id>.nii.gz`` (optionally
        with ``_seg``/``_pred`` suffix, as ``brats-kd segment`` writes them), or case folders
        holding a segmentation.
    gt_dir
        Ground truth: a dataset folder of cases in any naming the reader knows (BraTS 2021/2023
        case folders, an nnU-Net or MSD dataset with ``imagesTr``/``labelsTr``), or a folder of
        bare label maps (an nnU-Net / MSD ``labelsTr`` folder included).
    csv_path
        Where to write the per-case CSV with the summary rows appended.
    pred_convention
        Label convention of every prediction (a :class:`~napari_brats_kd.labels.LabelConvention`
        or its name, e.g. ``"brats2021"``). ``None`` (default) decides per file: the convention
        the file's header records (:func:`~napari_brats_kd.io.save_labels`, used by ``brats-kd
        segment``, writes it), else the ground truth's convention if the values fit it, else the
        one the values imply (:func:`~napari_brats_kd.labels.detect_convention`).
    gt_convention
        Label convention of every ground-truth file. ``None`` (default) decides per case as the
        reader does: the convention the case's file naming implies (nnU-Net: 1 ED, 2 NCR, 3 ET;
        MSD: 1 edema, 2 non-enhancing, 3 enhancing; BraTS 2021/2023) when its values fit it,
        else the one its label values imply.
    progress
        ``progress(done, total, message)`` callback.
    missing_as_empty
        Score a ground-truth case without prediction as an empty prediction, as the BraTS
        challenges do (Dice 0 and HD95 :data:`HD95_EMPTY_MM` for each region the ground truth
        has; Dice 1 and HD95 0 for one it lacks). ``False`` (default) scores matched cases only
        and warns (:class:`UnmatchedCasesWarning`) about the others.

    Returns
    -------
    FolderEvaluation
        Unpacks as ``(results, summary)``: per-case metrics (in case-id order; each records the
        conventions used) and :func:`summarize` of them. Its ``missing_predictions`` and
        ``unmatched_predictions`` list the case ids found in only one of the folders.

    Raises
    ------
    CaseError
        If no case id occurs in both folders, or a matched pair lies on different voxel grids
        (shape, voxel size, origin or axis directions, compared in the world: files stored in
        different voxel orders on one grid match).
    InvalidVolumeError
        If a label map holds non-integer values (a probability map) or values outside 0..255;
        the message names the case and the file.
    LabelConventionError
        If a convention name is unknown, or a file's values fit no convention (or not the one
        given).

    Warns
    -----
    UnmatchedCasesWarning
        When a prediction has no ground truth, or (without ``missing_as_empty``) a ground-truth
        case has no prediction: the summary then covers fewer cases than the folders hold.
    """
    fixed_pred = _checked_convention(pred_convention)
    fixed_gt = _checked_convention(gt_convention)
    preds, gts, missing, unmatched = _match_cases(Path(pred_dir), Path(gt_dir), missing_as_empty)
    scored = sorted(gts) if missing_as_empty else sorted(set(preds) & set(gts))
    results: list[CaseMetrics] = []
    for i, case_id in enumerate(scored):
        pf, gf = preds.get(case_id), gts[case_id]
        try:
            results.append(_score_case(case_id, pf, gf, fixed_pred, fixed_gt))
        except LabelConventionError as exc:
            pred_name = pf.path.name if pf is not None else "no prediction"
            raise LabelConventionError(
                f"Case {case_id!r} ({pred_name} vs ground truth {gf.path.name}): {exc}"
            ) from None
        if progress is not None:
            progress(i + 1, len(scored), case_id)
    rows = [r.as_row() for r in results]
    summary = summarize(rows)
    if csv_path is not None:
        write_csv(rows, csv_path, summary)
    return FolderEvaluation(results, summary, missing, unmatched)


def _match_cases(
    pred_dir: Path, gt_dir: Path, missing_as_empty: bool
) -> tuple[dict[str, _LabelFile], dict[str, _LabelFile], list[str], list[str]]:
    """Label files of both folders by case id, the ground-truth cases without prediction and
    the predictions without ground truth (warned about)."""
    for folder, what in ((pred_dir, "prediction"), (gt_dir, "ground-truth")):
        if not folder.is_dir():
            raise CaseError(f"The {what} folder {folder} does not exist.")
    preds = _index_label_files(pred_dir)
    gts = _index_label_files(gt_dir)
    if not set(preds) & set(gts):
        # Even with missing_as_empty: no match at all is a wrong folder or naming, not a model
        # that predicted nothing, and scoring it as all-empty would hide that.
        raise CaseError(
            f"No case id is found in both {pred_dir} ({len(preds)} label files) and {gt_dir} "
            f"({len(gts)}); predictions must be named after their case, e.g. "
            f"{next(iter(gts), 'BraTS2021_00000')}.nii.gz."
        )
    missing = sorted(set(gts) - set(preds))
    unmatched = sorted(set(preds) - set(gts))
    problems = []
    if missing and not missing_as_empty:
        problems.append(
            f"{len(missing)} of {len(gts)} ground-truth case(s) in {gt_dir} have no prediction "
            f"and are left out of the scores: {_some_ids(missing)} (missing_as_empty=True scores "
            "them as empty predictions, as BraTS does)"
        )
    if unmatched:
        problems.append(
            f"{len(unmatched)} prediction(s) in {pred_dir} match no ground-truth case and are "
            f"ignored: {_some_ids(unmatched)} (name predictions after their case id)"
        )
    if problems:
        warnings.warn("; ".join(problems) + ".", UnmatchedCasesWarning, stacklevel=3)
    return preds, gts, missing, unmatched


def _score_case(
    case_id: str,
    pf: _LabelFile | None,
    gf: _LabelFile,
    fixed_pred: LabelConvention | None,
    fixed_gt: LabelConvention | None,
) -> CaseMetrics:
    """One case's metrics; a missing prediction scores as an empty one."""
    from .io import convention_from_header, label_convention

    gv = _load_labels(gf.path, case_id, "ground truth")
    g = gv.data
    gconv = fixed_gt or label_convention(gv, gf.naming)[0]
    spacing = gv.scale  # display-order voxel sizes match the display-order arrays
    if pf is None:
        # Empty labels fit every convention; reading them in the ground truth's compares the
        # same regions.
        result = evaluate_labels(np.zeros_like(g), g, gconv, spacing, case_id, gt_convention=gconv)
        result.pred_convention = ""
        result.prediction_missing = True
        return result
    pv = _load_labels(pf.path, case_id, "prediction")
    _check_same_grid(case_id, pv, gv)
    p = pv.data
    pconv = fixed_pred or _pred_convention(np.unique(p), gconv, convention_from_header(pv.header))
    return evaluate_labels(p, g, pconv, spacing, case_id, gt_convention=gconv)


def _pred_convention(
    values: np.ndarray,
    gt_convention: LabelConvention | str,
    recorded: LabelConvention | None = None,
) -> LabelConvention:
    """Convention of a prediction: the one its header records, else the ground truth's, else the
    one its values imply; the first two only when the values fit them."""
    # A prediction written in the ground truth's own convention is the usual case (brats-kd
    # segment writes the case's convention by default); only switch when its values cannot
    # belong to it. Values alone cannot tell 1 = NCR (BraTS) from 1 = edema (nnU-Net, MSD), so a
    # recorded convention wins over the ground truth's.
    from .labels import detect_convention

    present = {int(v) for v in values} - {0}
    for candidate in (recorded, gt_convention):
        if candidate is not None:
            spec = get_convention(candidate)
            if present <= set(spec.values.values()):
                return spec.convention
    return detect_convention(values)[0]


__all__ = ["FolderEvaluation", "UnmatchedCasesWarning", "evaluate_folders", "write_csv"]
