"""Writing NIfTI files: label maps aligned with their scan, and whole case folders.

Segmentations are written back in the voxel order, affine and header (sform *and* qform) of the
scan they belong to, so they line up in any other viewer. Every file is written whole to a
temporary name and renamed into place (:func:`~napari_brats_kd._files.atomic_write`): a stop, a
crash or a full disk never leaves a torn file where a good one was.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from . import labels as lab
from . import naming
from . import orientation as orient
from ._files import atomic_write
from .errors import InvalidVolumeError
from .volume import Case, Volume

PathLike = str | os.PathLike


def _nifti_path(path: Path) -> Path:
    return path if naming.is_nifti_name(path) else path.with_name(path.name + ".nii.gz")


#: Start of the NIfTI ``descrip`` field that :func:`save_labels` writes (``"labels brats2021"``).
LABELS_DESCRIP_PREFIX = "labels "


def convention_from_header(header: nib.Nifti1Header | None) -> lab.LabelConvention | None:
    """Label convention a label file records in its header, as :func:`save_labels` writes it.

    Parameters
    ----------
    header
        NIfTI header of a label map (``Volume.header``), or ``None``.

    Returns
    -------
    LabelConvention or None
        The convention named by a ``descrip`` of the form ``"labels <convention>"``; ``None``
        when the field says anything else (files written by other tools).
    """
    if header is None:
        return None
    try:
        raw = header["descrip"]
    except (KeyError, ValueError, TypeError):
        return None
    raw = np.asarray(raw).item() if isinstance(raw, np.ndarray) else raw
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    text = text.strip("\x00 ")
    if not text.startswith(LABELS_DESCRIP_PREFIX):
        return None
    try:
        return lab.LabelConvention(text[len(LABELS_DESCRIP_PREFIX) :].strip())
    except ValueError:
        return None


def _header_places_like(header: nib.Nifti1Header, affine: np.ndarray) -> bool:
    """Whether a reader of ``header`` gets ``affine`` (sform, else qform, else pixdim: the
    NIfTI-1 precedence nibabel follows, as it did when the scan was read)."""
    try:
        best = header.get_best_affine()
    except (nib.spatialimages.HeaderDataError, ValueError, np.linalg.LinAlgError):
        return False
    return bool(np.allclose(best, affine, rtol=0.0, atol=1e-4))


def save_labels(
    path: PathLike,
    labels_display: np.ndarray,
    reference: Volume,
    source_convention: lab.LabelConvention | str = lab.DEFAULT_CONVENTION,
    target_convention: lab.LabelConvention | str | None = None,
) -> Path:
    """Write a label map aligned with its scan: uint8, the scan's voxel order, affine and header.

    The header's ``descrip`` records the convention written (``"labels brats2021"``), so that
    :func:`convention_from_header` (and ``brats-kd evaluate``) can tell it from the file.

    Parameters
    ----------
    path
        Output file; ``.nii.gz`` is appended if it has no NIfTI ending. Parent folders are made.
    labels_display
        Label map in display orientation, same shape as ``reference.data``.
    reference
        The scan the labels belong to: its file voxel order and its header's sform and qform
        (matrices and codes, code 0 "unknown" included) and units are reproduced, so that any
        viewer places the labels exactly on the scan. Without a header (a volume made in
        memory), its affine is written as sform and qform with code 1 (scanner).
    source_convention
        Convention of the values in ``labels_display``.
    target_convention
        Convention to write; ``None`` keeps ``source_convention``.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    InvalidVolumeError
        If the label map's shape differs from the reference's.
    LabelConventionError
        If values do not belong to ``source_convention``.
    """
    path = _nifti_path(Path(path))
    labels_display = np.asarray(labels_display)
    if labels_display.shape != reference.data.shape:
        raise InvalidVolumeError(
            f"Labels of shape {labels_display.shape} do not match the scan "
            f"{reference.path.name if reference.path else ''} of shape {reference.data.shape} "
            "(display order): paint on a layer made from that scan."
        )
    target = source_convention if target_convention is None else target_convention
    values = lab.convert_labels(labels_display, source_convention, target)
    # The scan was reoriented to display order from its own affine, so the same affine takes the
    # labels back to the scan's voxel order, voxel for voxel.
    file_data = np.ascontiguousarray(orient.from_display(values, reference.affine), np.uint8)
    affine = np.asarray(reference.affine, float)
    header = reference.header.copy() if reference.header is not None else nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(file_data.shape)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0, float(file_data.max(initial=0))
    header["descrip"] = f"{LABELS_DESCRIP_PREFIX}{lab.LabelConvention(target).value}".encode()[:79]
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    if reference.header is not None and _header_places_like(header, affine):
        # Keep the scan's sform and qform exactly, matrices and codes, code 0 included: viewers
        # choose between them by code (NIfTI-1 standard), so any rewrite (a qform set from the
        # sform, "no orientation" promoted to scanner space) can make a viewer place the labels
        # elsewhere than the scan. No affine is passed so that nibabel leaves them untouched.
        img = image_class(file_data, None, header)
    else:
        # No header, or one that no longer describes the volume's affine: the affine is all we
        # know, so write it into both forms, with code 1 where the header has none (code 0
        # would make readers ignore it).
        img = image_class(file_data, affine, header)
        img.set_sform(affine, code=int(header["sform_code"]) or 1)
        img.set_qform(affine, code=int(header["qform_code"]) or 1)
    # Written whole, then renamed into place: a stop or a crash never leaves a truncated label
    # file where a good one (or the user's earlier result) was.
    raw = img.to_bytes()
    payload = gzip.compress(raw, compresslevel=6) if path.name.lower().endswith(".gz") else raw
    return atomic_write(path, lambda tmp: tmp.write_bytes(payload))


#: How :func:`save_case` names a case folder's files: separator, the token of each modality in
#: the file names (from :mod:`.naming`, the one table of BraTS names) and the label convention.
CASE_NAMINGS: dict[str, tuple[str, dict[str, str], lab.LabelConvention]] = {
    "brats2021": (
        "_",
        {m: t for t, m in naming.BRATS2021_TOKENS.items()},
        lab.LabelConvention.BRATS2021,
    ),
    "brats2023": (
        "-",
        {m: t for t, m in naming.BRATS2023_TOKENS.items()},
        lab.LabelConvention.BRATS2023,
    ),
}


def safe_case_name(case_id: str) -> str:
    """``case_id`` as a file name: characters other than letters, digits, ``_.-`` become ``_``."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", case_id).strip("._") or "case"


def _nifti_bytes(data: np.ndarray, volume: Volume) -> bytes:
    """A gzipped NIfTI-1 of ``data`` (file voxel order) placed by ``volume``'s affine."""
    header = volume.header.copy() if volume.header is not None else nib.Nifti1Header()
    if not isinstance(header, nib.Nifti1Header) or isinstance(header, nib.Nifti2Header):
        header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_slope_inter(1.0, 0.0)
    img = nib.Nifti1Image(data, volume.affine, header)
    img.set_qform(volume.affine, code=1)
    img.set_sform(volume.affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6)


def save_case(
    case: Case, root: PathLike, *, case_naming: str = "brats2021", name: str | None = None
) -> Path:
    """Write ``case`` as a BraTS-named case folder under ``root``; returns the folder.

    Scans keep their file voxel order and affine (float64 is stored as float32, other types as
    they are); the segmentation, if the case has one, is written as ``<name>_seg.nii.gz`` in
    the label convention of ``case_naming`` (BraTS 2021: ET = 4; 2023: ET = 3), the one its
    file names stand for. :func:`~napari_brats_kd.io.load_case` and the training data loader
    read the folder like any dataset.

    Parameters
    ----------
    case
        The case to write.
    root
        The dataset folder; the case's folder is made inside it.
    case_naming
        ``"brats2021"`` (``<name>_t1ce.nii.gz``) or ``"brats2023"`` (``<name>-t1c.nii.gz``).
    name
        Folder and file-name stem; default the case id made safe for a file name.

    Returns
    -------
    Path
        The case folder.
    """
    try:
        sep, token_of, convention = CASE_NAMINGS[case_naming]
    except KeyError:
        raise ValueError(
            f"Unknown case naming {case_naming!r}: expected one of {', '.join(CASE_NAMINGS)}."
        ) from None
    stem = safe_case_name(case.case_id) if name is None else name
    folder = Path(root) / stem
    files: dict[str, tuple[np.ndarray, Volume]] = {}
    for modality, volume in case.images.items():
        data = np.asarray(volume.file_data())
        files[token_of[modality]] = (
            data.astype(np.float32) if data.dtype == np.float64 else data,
            volume,
        )
    if case.seg is not None:
        values = lab.convert_labels(case.seg.file_data(), case.convention, convention)
        files["seg"] = (np.ascontiguousarray(values, np.uint8), case.seg)
    for token, (data, volume) in files.items():
        payload = _nifti_bytes(data, volume)
        atomic_write(
            folder / f"{stem}{sep}{token}.nii.gz", lambda tmp, b=payload: tmp.write_bytes(b)
        )
    return folder
