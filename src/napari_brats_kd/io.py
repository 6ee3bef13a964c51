"""Cases: loading a case's volumes (read in parallel), its label convention and extra label
maps, and finding the cases of a dataset.

One import for users: the checked NIfTI reading of :mod:`.nifti` (``load_volume``,
``check_nifti``, ...) and the writers of :mod:`.writing` (``save_labels``, ``save_case``) are
re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import labels as lab
from . import naming
from .callbacks import Progress
from .cases import CaseFiles, case_entries, case_files, expected_names, iter_dirs
from .errors import (
    CaseError,
    InvalidVolumeError,
    LabelConventionError,
    NiftiReadError,
    ResourceError,
    few,
)
from .nifti import (  # noqa: F401 - check_nifti: io stays the one import for reading files
    DEFAULT_MAX_BYTES,
    as_label_map,
    check_nifti,
    is_segmentation,
    load_segmentation,
    load_volume,
    read_nifti,
)
from .volume import Case, Volume

# The writers, so that io stays the one import for reading and writing.
from .writing import (  # noqa: F401
    LABELS_DESCRIP_PREFIX,
    convention_from_header,
    save_case,
    save_labels,
)

PathLike = str | os.PathLike


def _describe(vol: Volume) -> str:
    return (
        f"{vol.path.name if vol.path else '?'}: shape {vol.file_shape} "
        f"{''.join(vol.file_axcodes)}, affine {np.round(vol.affine[:3], 3).tolist()}"
    )


def _check_same_grid(case_id: str, volumes: list[Volume]) -> None:
    ref = volumes[0]
    bad = [v for v in volumes[1:] if not ref.geometry_matches(v)]
    if bad:
        lines = "; ".join(_describe(v) for v in [ref, *bad])  # a case has 4 or 5 volumes
        raise CaseError(
            f"Case {case_id!r}: files lie on different voxel grids ({lines}), even with their "
            "voxel axes put in one order. Resample them to one grid (as BraTS preprocessing "
            "does) before opening them together."
        )


def label_convention(
    seg: Volume, case_naming: str | None = None
) -> tuple[lab.LabelConvention, str]:
    """Label convention of a label map, and why.

    The one its header records (:func:`save_labels` writes it) when its values fit, else the one
    its case's file naming and its values imply (:func:`~napari_brats_kd.labels.detect_convention`).

    Parameters
    ----------
    seg
        The label map.
    case_naming
        Naming of its case (``"nnunet"``, ``"brats2023"``...), or ``None``.

    Returns
    -------
    LabelConvention, str
        The convention and a sentence saying why.

    Raises
    ------
    LabelConventionError
        If its values fit no convention.
    """
    values = np.unique(seg.data)
    recorded = convention_from_header(seg.header)
    # A file written by this package says what it holds; values alone cannot tell nnU-Net's
    # 1 = edema from BraTS's 1 = necrosis, nor can a "_seg" name that any tool may write.
    if recorded is not None and recorded in lab.conventions_for_values(values):
        return recorded, f"the file records {recorded.value} and its label values fit it"
    return lab.detect_convention(values, case_naming)


def _convention_without_seg(case_naming: str) -> tuple[lab.LabelConvention, str]:
    conv = lab.convention_for_naming(case_naming)
    if conv is not None:
        return conv, f"no segmentation in the case; {conv.value} follows from its file naming"
    return (
        lab.DEFAULT_CONVENTION,
        f"no segmentation and file naming {case_naming!r} implies no convention; "
        f"new labels use the default {lab.DEFAULT_CONVENTION.value}",
    )


def _case_files_or_label_map(path: Path, max_bytes: int | None) -> CaseFiles:
    """:func:`case_files`, plus lone files whose name says nothing but whose values are
    labels (e.g. a segmentation saved as ``edited.nii.gz``): those open as a segmentation."""
    try:
        return case_files(path)
    except CaseError:
        if not (path.is_file() and naming.classify_file(path).kind == "unknown"):
            raise
        data = read_nifti(path, max_bytes=max_bytes)[0]
        if not is_segmentation(data):
            raise
        values = sorted(int(v) for v in np.unique(data))
        files = CaseFiles(naming.nifti_stem(path), "single", seg=path)
        files.notes.append(
            f"{path.name} names no modality; opened as a segmentation because its values "
            f"{values} are label values."
        )
        return files


def _load_volumes(
    paths: dict[str, Path], max_bytes: int | None, step: Callable[[str], None]
) -> dict[str, Volume]:
    """Read a case's scans, decoding them in parallel (zlib runs without the GIL).

    Results (and the first error) come in the order of ``paths``, as a serial read gives them.
    """
    if len(paths) < 2 or (os.cpu_count() or 1) < 2:
        out = {}
        for modality, p in paths.items():
            out[modality] = load_volume(p, max_bytes)
            step(f"read {p.name}")
        return out
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(paths), 4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="brats-kd-decode") as pool:
        futures = {m: (p, pool.submit(load_volume, p, max_bytes)) for m, p in paths.items()}
        images = {}
        for modality, (p, future) in futures.items():
            images[modality] = future.result()
            step(f"read {p.name}")
    return images


def load_case(
    path: PathLike,
    modalities: tuple[str, ...] | None = None,
    extra_segmentations: bool = True,
    max_bytes: int | None = None,
    progress: Progress | None = None,
    segmentation: bool = True,
) -> Case:
    """Load one case: a case folder, one file of a flat nnU-Net / MSD folder, or a single file.

    Parameters
    ----------
    path
        A case folder (any naming of :data:`naming.NAMINGS`), an nnU-Net channel file
        (``<case>_0000.nii.gz``: its sibling channels and ``labelsTr`` label map come along), a 4D
        MSD file, or one modality / segmentation file on its own.
    modalities
        Modalities that must be present (e.g. ``("t1c", "flair")``); ``None`` accepts whatever
        the case holds.
    extra_segmentations
        Also load label maps from a ``segmentations/`` subfolder into ``case.extra``.
    max_bytes
        Largest decoded volume accepted per file (default :data:`DEFAULT_MAX_BYTES`).
    progress
        Called as ``progress(done, total, message)`` after each file.
    segmentation
        Read the case's segmentation. ``False`` (segmenting a case) leaves it unread, so an
        odd ground truth cannot stop the scans from being segmented; the label convention then
        follows from the file naming.

    Returns
    -------
    Case
        Images in display orientation; ``case.convention`` / ``case.convention_reason`` say which
        label convention applies and why. ``case.extra`` holds ``"files"`` (the
        :class:`~CaseFiles`), ``"notes"`` (sentences for the user) and, when present,
        ``"segmentations"``: ``{name: {"volume", "convention", "reason"}}``.

    Raises
    ------
    CaseError
        Ambiguous, duplicate or missing files; files on different grids.
    NiftiReadError, InvalidVolumeError, ResourceError, LabelConventionError
        From reading the files (see :func:`load_volume`).
    """
    files = _case_files_or_label_map(Path(path), max_bytes)
    if not segmentation and files.images and files.seg is not None:
        files = replace(files, seg=None)
    notes = list(files.notes)
    total = len(files.all_files) - (
        0 if extra_segmentations else len(files.extra_segs) + len(files.unnamed)
    )
    done = 0

    def step(msg: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total, msg)

    images = _load_volumes(files.images, max_bytes, step)
    if files.multichannel is not None:
        mpath, channels = files.multichannel
        data, affine, header = read_nifti(mpath, allow_multichannel=True, max_bytes=max_bytes)
        if data.ndim != 4 or data.shape[3] != len(channels):
            raise CaseError(
                f"{mpath.name} has {data.shape[3] if data.ndim == 4 else 1} channel(s) (shape "
                f"{data.shape}), but {files.channel_source} names {len(channels)}: "
                f"{', '.join(lab.MODALITY_NAMES[c] for c in channels)}."
            )
        for i, modality in enumerate(channels):
            images[modality] = Volume.from_file_order(
                np.ascontiguousarray(data[..., i]), affine, header, mpath
            )
        step(f"read {mpath.name}")
    if modalities:
        missing = [m for m in modalities if m not in images]
        if missing:
            found = ", ".join(p.name for p in files.images.values()) or "none"
            raise CaseError(
                f"Case {files.case_id!r} at {path} lacks "
                f"{', '.join(lab.MODALITY_NAMES[m] for m in missing)} (found: {found}). "
                f"Expected files such as {expected_names(files.case_id, files.naming)}."
            )
    seg = None
    if files.seg is not None:
        seg = load_segmentation(files.seg, max_bytes)
        step(f"read {files.seg.name}")
    grid = list(images.values()) + ([seg] if seg is not None else [])
    if grid:
        _check_same_grid(files.case_id, grid)
    if seg is not None:
        try:
            convention, reason = label_convention(seg, files.naming)
        except LabelConventionError as exc:
            raise LabelConventionError(f"{files.seg.name}: {exc}") from None
    else:
        convention, reason = _convention_without_seg(files.naming)

    extra: dict = {"files": files, "notes": notes}
    if extra_segmentations:
        label_maps = _extra_label_maps(files, max_bytes, notes, step)
        segs = _aligned_label_maps(label_maps, grid[0] if grid else None, notes)
        if segs:
            extra["segmentations"] = segs
    elif files.unnamed:
        notes.append(
            f"Not read: {few(p.name for p in files.unnamed)} (the names tell no modality)."
        )
    return Case(
        case_id=files.case_id,
        images=images,
        seg=seg,
        convention=convention,
        convention_reason=reason,
        naming=files.naming,
        extra=extra,
    )


def _extra_label_maps(
    files: CaseFiles,
    max_bytes: int | None,
    notes: list[str],
    step: Callable[[str], None],
) -> dict[Path, Volume]:
    """The case's further label maps, each read once: the named ones, then those of the files
    whose names tell no modality but whose values are labels (the other such images are listed
    in one note)."""
    out: dict[Path, Volume] = {}
    others: list[Path] = []
    for p in [*files.extra_segs, *files.unnamed]:
        try:
            if p in files.extra_segs:
                out[p] = load_segmentation(p, max_bytes)
                continue
            vol = load_volume(p, max_bytes)
            if is_segmentation(vol.data):
                vol.data = as_label_map(p, vol.data)
                out[p] = vol
            else:
                others.append(p)
        except (NiftiReadError, InvalidVolumeError, ResourceError) as exc:
            if isinstance(exc, ResourceError) and p in files.extra_segs:
                raise  # as for the scans: a named label map too large to read stops the case
            notes.append(f"Skipped {p.parent.name}/{p.name}: {exc}")
        finally:
            step(f"read {p.name}")
    if others:
        notes.append(
            f"Not opened: {few(p.name for p in others)} (images whose names tell no "
            "modality; rename them with a modality suffix such as _t1c to use them)."
        )
    return out


def _aligned_label_maps(
    label_maps: dict[Path, Volume], ref: Volume | None, notes: list[str]
) -> dict[str, dict]:
    """``{name: {"volume", "convention", "reason"}}`` of the label maps on the scans' grid."""
    segs: dict[str, dict] = {}
    for p, vol in label_maps.items():
        try:
            conv, why = label_convention(vol, None)
        except LabelConventionError as exc:
            notes.append(f"Skipped {p.parent.name}/{p.name}: {exc}")
            continue
        if ref is not None and not ref.geometry_matches(vol):
            notes.append(
                f"Skipped {p.parent.name}/{p.name}: it lies on another grid than the scans "
                f"({_describe(vol)} vs {_describe(ref)})."
            )
            continue
        segs[naming.nifti_stem(p)] = {"volume": vol, "convention": conv, "reason": why}
    return segs


def find_cases(root: PathLike) -> list[Path]:
    """Every case under a dataset folder, each a path :func:`load_case` accepts.

    Parameters
    ----------
    root
        A dataset folder (one subfolder per case, a flat nnU-Net ``imagesTr`` / MSD folder, or
        any nesting of these), a single case folder, or a single file.

    Returns
    -------
    list of Path
        Case folders, and for flat nnU-Net / MSD folders one file per case; sorted.

    Raises
    ------
    CaseError
        If ``root`` does not exist, holds no NIfTI case, or a folder holds the files of several
        BraTS-named cases side by side (each case needs its own folder).
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise CaseError(f"{root} does not exist: expected a dataset folder.")
    cases: list[Path] = []
    for folder in iter_dirs(root):
        cases.extend(case_entries(folder))
    if not cases:
        raise CaseError(
            f"No cases found under {root}: expected case folders holding .nii/.nii.gz files "
            "(BraTS 2021/2023 naming), or an nnU-Net/MSD imagesTr folder."
        )
    return sorted(cases)
