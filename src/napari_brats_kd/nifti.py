"""Reading one NIfTI file, checked before its voxels are read.

Every file is vetted from its header and size *before* its voxels are read: a truncated download,
a corrupt gzip stream (its CRC is checked), a header claiming more voxels than the file holds, or
a volume larger than :data:`DEFAULT_MAX_BYTES` raises a typed
:class:`~napari_brats_kd.errors.BratsKDError` instead of a ``MemoryError``, a ``zlib.error`` or a
silent half-read. :mod:`.io` builds cases from these volumes.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from . import naming
from . import orientation as orient
from .errors import InvalidVolumeError, NiftiReadError, ResourceError
from .volume import Volume

PathLike = str | os.PathLike

#: Largest volume (decoded bytes) read without complaint; override with the environment variable
#: ``BRATS_KD_MAX_VOLUME_BYTES`` or the ``max_bytes`` argument. A BraTS case is 9 MB per modality.
DEFAULT_MAX_BYTES: int = int(os.environ.get("BRATS_KD_MAX_VOLUME_BYTES", 4 * 1024**3))

# Deflate cannot compress better than about 1032:1, so a .nii.gz whose header claims more decoded
# bytes than this many times its compressed size is inconsistent with its own header.
_MAX_DEFLATE_RATIO = 1032

# Datatypes a scan or label map may use (NIfTI codes map to these numpy kinds).
_NUMERIC_KINDS = "buif"


# --------------------------------------------------------------------------------------------------
# Header checks
# --------------------------------------------------------------------------------------------------


def _max_bytes(max_bytes: int | None) -> int:
    return DEFAULT_MAX_BYTES if max_bytes is None else int(max_bytes)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _read_head(path: Path, gz: bool, n: int = 544) -> bytes:
    """First ``n`` decoded bytes of the file (enough for a NIfTI-1 or NIfTI-2 header)."""
    try:
        if gz:
            with gzip.open(path, "rb") as fh:
                return fh.read(n)
        with open(path, "rb") as fh:
            return fh.read(n)
    except (OSError, EOFError, zlib.error) as exc:
        raise NiftiReadError(
            f"{path.name} is not a readable gzip stream ({exc}): the file is truncated or corrupt; "
            "download or export it again."
        ) from None


def _parse_header(path: Path, head: bytes) -> nib.Nifti1Header:
    """A NIfTI-1/2 header from raw bytes, or :class:`NiftiReadError` saying why not."""
    if len(head) < 348:
        raise NiftiReadError(
            f"{path.name} is too short to be a NIfTI file ({len(head)} bytes of header; a NIfTI "
            "header is 348 bytes): the file is truncated or not NIfTI."
        )
    size_le = struct.unpack("<i", head[:4])[0]
    size_be = struct.unpack(">i", head[:4])[0]
    if 540 in (size_le, size_be):
        header_class: type[nib.Nifti1Header] = nib.Nifti2Header
        magic = head[4:8]
        if len(head) < 540:
            raise NiftiReadError(f"{path.name}: truncated NIfTI-2 header ({len(head)} bytes).")
    elif 348 in (size_le, size_be):
        header_class = nib.Nifti1Header
        magic = head[344:348]
    else:
        raise NiftiReadError(
            f"{path.name} is not a NIfTI file (header size field {size_le}, expected 348 or 540). "
            "Convert it to .nii.gz first (e.g. with dcm2niix for DICOM)."
        )
    if magic[:3] not in (b"n+1", b"n+2"):
        raise NiftiReadError(
            f"{path.name}: NIfTI magic {magic!r} is not a single-file NIfTI ('n+1'/'n+2'); "
            "header/image pairs (.hdr/.img) are not supported: convert to .nii.gz."
        )
    try:
        import io as _io

        return header_class.from_fileobj(_io.BytesIO(head[: header_class.sizeof_hdr]), check=True)
    except (nib.spatialimages.HeaderDataError, ValueError, struct.error, OverflowError) as exc:
        raise NiftiReadError(f"{path.name} has an invalid NIfTI header: {exc}") from None


def _gzip_isize(path: Path) -> int | None:
    """Decoded size modulo 2**32 from the gzip trailer (of the last member)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() < 18:
            return None
        fh.seek(-4, os.SEEK_END)
        return struct.unpack("<I", fh.read(4))[0]


def _gzip_decoded_size(path: Path, cap: int) -> int:
    """Decode the stream without keeping it, stopping after ``cap`` bytes; raises if corrupt."""
    total = 0
    try:
        with gzip.open(path, "rb") as fh:
            while total <= cap:
                chunk = fh.read(1 << 20)
                if not chunk:
                    break
                total += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise NiftiReadError(
            f"{path.name}: the gzip stream is truncated or corrupt ({exc}) after {total} decoded "
            "bytes; download or export the file again."
        ) from None
    return total


def _output_itemsize(header: nib.Nifti1Header, dtype: np.dtype) -> int:
    slope, inter = header.get_slope_inter()
    scaled = slope not in (None, 1.0) or inter not in (None, 0.0)
    # Scaled integer data are returned as float64 by nibabel.
    return max(dtype.itemsize, 8) if scaled else dtype.itemsize


def check_nifti(path: PathLike, max_bytes: int | None = None) -> nib.Nifti1Header:
    """Vet a NIfTI file from its header and size, without reading its voxels.

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file.
    max_bytes
        Largest decoded volume accepted (default :data:`DEFAULT_MAX_BYTES`).

    Returns
    -------
    nibabel.Nifti1Header
        The parsed header (NIfTI-1 or NIfTI-2).

    Raises
    ------
    NiftiReadError
        Not a NIfTI file, unreadable or truncated gzip, inconsistent header (dims, datatype,
        vox_offset) or a file smaller than its header says.
    InvalidVolumeError
        Zero-sized dimensions or more than 4 dimensions.
    ResourceError
        The decoded volume would exceed ``max_bytes``.
    """
    path = Path(path)
    cap = _max_bytes(max_bytes)
    if not path.is_file():
        raise NiftiReadError(f"{path} does not exist or is not a file.")
    if not naming.is_nifti_name(path):
        raise NiftiReadError(
            f"{path.name} is not a NIfTI file: expected a name ending in .nii or .nii.gz."
        )
    try:
        gz = _is_gzip(path)
        file_size = path.stat().st_size
    except OSError as exc:
        raise NiftiReadError(f"Cannot read {path}: {exc}") from None
    if file_size == 0:
        raise NiftiReadError(
            f"{path.name} is empty (0 bytes): its download or export did not finish; get it again."
        )
    if path.name.lower().endswith(".gz") and not gz:
        raise NiftiReadError(
            f"{path.name} ends in .gz but is not gzip-compressed: rename it to .nii or re-export."
        )
    if gz and not path.name.lower().endswith(".gz"):
        # nibabel (and most tools) choose the decoder by the name, so the file must say .gz.
        raise NiftiReadError(
            f"{path.name} is gzip-compressed but its name ends in .nii: rename it to "
            f"{path.name}.gz."
        )
    header = _parse_header(path, _read_head(path, gz))
    try:
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        vox_offset = int(header["vox_offset"])
        out_itemsize = _output_itemsize(header, dtype)
    except (
        nib.spatialimages.HeaderDataError,
        ValueError,
        TypeError,
        KeyError,
        OverflowError,
    ) as exc:
        raise NiftiReadError(f"{path.name} has an invalid NIfTI header: {exc}") from None
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
        raise NiftiReadError(
            f"{path.name} stores voxels as {dtype} (NIfTI datatype code {int(header['datatype'])})"
            ": expected a numeric scalar type such as int16, uint8 or float32."
        )
    if any(s <= 0 for s in shape) or not shape:
        raise InvalidVolumeError(f"{path.name} has an empty dimension: shape {shape}.")
    if len(shape) > 4:
        raise InvalidVolumeError(
            f"{path.name} has {len(shape)} dimensions (shape {shape}): expected a 3D volume, or "
            "a 4D multi-channel volume (MSD layout)."
        )
    header_size = int(header.sizeof_hdr)
    if vox_offset < header_size:
        raise NiftiReadError(
            f"{path.name}: vox_offset {vox_offset} lies inside the {header_size}-byte header; "
            "the header is corrupt."
        )
    data_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    needed = vox_offset + data_bytes
    if not gz and file_size < needed:
        raise NiftiReadError(
            f"{path.name} is truncated or its header is wrong: shape {shape} of {dtype} at "
            f"offset {vox_offset} needs {needed} bytes, the file has {file_size}."
        )
    if gz and needed > file_size * _MAX_DEFLATE_RATIO + 1024:
        raise NiftiReadError(
            f"{path.name}: header claims shape {shape} of {dtype} ({data_bytes} bytes) but the "
            f"compressed file ({file_size} bytes) cannot hold that much; the file is truncated or "
            "its header corrupt."
        )
    out_bytes = int(np.prod(shape, dtype=object)) * out_itemsize
    if out_bytes > cap:
        raise ResourceError(
            f"{path.name} would take {out_bytes / 1024**3:.1f} GiB in memory (shape {shape}, "
            f"{dtype}), more than the limit of {cap / 1024**3:.1f} GiB. Raise the limit with the "
            "environment variable BRATS_KD_MAX_VOLUME_BYTES if this is intended."
        )
    if gz:
        isize = _gzip_isize(path)
        if isize is None or isize < needed % 2**32:
            # The trailer is unreliable for multi-member gzip, so decode (capped) to be sure.
            decoded = _gzip_decoded_size(path, needed)
            if decoded < needed:
                raise NiftiReadError(
                    f"{path.name} is truncated or its header is wrong: shape {shape} of {dtype} at "
                    f"offset {vox_offset} needs {needed} decoded bytes, the file holds {decoded}."
                )
    return header


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _check_affine(path: Path, affine: np.ndarray | None) -> np.ndarray:
    if affine is None:
        raise InvalidVolumeError(f"{path.name} has no usable affine (sform, qform or pixdim).")
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InvalidVolumeError(f"{path.name} has a non-finite affine: {affine.tolist()}.")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InvalidVolumeError(
            f"{path.name} has a degenerate affine (zero voxel size or collapsed axes): "
            f"{np.round(affine, 4).tolist()}. Fix pixdim / sform / qform in the header."
        )
    try:
        orient.axcodes(affine)
    except ValueError as exc:
        raise InvalidVolumeError(f"{path.name}: {exc}") from None
    return affine


def _gunzip(path: Path) -> bytes:
    """The decoded bytes of a gzip file (every member), or :class:`NiftiReadError` if corrupt.

    zlib checks each member's CRC-32 and length: a flipped byte is an error, not changed voxels.
    """
    data = path.read_bytes()
    parts: list[bytes] = []
    while data:
        stream = zlib.decompressobj(wbits=31)  # 16 + 15: a gzip header and trailer
        try:
            parts.append(stream.decompress(data))
        except zlib.error as exc:
            raise NiftiReadError(
                f"{path.name}: the gzip stream is corrupt ({exc}); download or export the file "
                "again."
            ) from None
        if not stream.eof:
            raise NiftiReadError(
                f"{path.name}: the gzip stream is truncated (it ends before its trailer); "
                "download or export the file again."
            )
        data = stream.unused_data
        if not data.strip(b"\0"):  # zero padding after the last member, as gzip allows
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _load_gzipped(path: Path, header: nib.Nifti1Header):
    """A NIfTI image whose data live in memory, decoded from a ``.nii.gz`` in one go."""
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    return image_class.from_bytes(_gunzip(path))


def read_nifti(
    path: PathLike,
    allow_multichannel: bool = False,
    max_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """Read a NIfTI file in its own voxel order, after :func:`check_nifti`.

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file.
    allow_multichannel
        Accept a 4D file with several channels (last axis), as in the MSD layout. A 4D file
        with a single channel is always accepted and squeezed to 3D.
    max_bytes
        Largest decoded volume accepted (default :data:`DEFAULT_MAX_BYTES`).

    Returns
    -------
    data, affine, header
        Array in file voxel order (3D, or 4D channels-last), the 4x4 affine and the header.

    Raises
    ------
    NiftiReadError, InvalidVolumeError, ResourceError
        See :func:`check_nifti`; also NaN/Inf voxels and 2D / multi-channel volumes where not
        allowed.
    """
    path = Path(path)
    header = check_nifti(path, max_bytes)
    shape = tuple(int(s) for s in header.get_data_shape())
    if len(shape) < 3:
        raise InvalidVolumeError(
            f"{path.name} is {len(shape)}D (shape {shape}): expected a 3D volume such as "
            "240x240x155."
        )
    if len(shape) == 4 and shape[3] > 1 and not allow_multichannel:
        raise InvalidVolumeError(
            f"{path.name} is 4D with {shape[3]} channels (shape {shape}): open it as an MSD case "
            "(one 4D file per case) or split it into one 3D file per modality."
        )
    try:
        # A .nii.gz is decoded in one zlib call: no Python between chunks, the GIL released
        # throughout (load_case decodes a case's files in parallel), the CRC checked.
        img = _load_gzipped(path, header) if _is_gzip(path) else nib.load(str(path))
        raw_affine = img.affine
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise NiftiReadError(f"{path.name} has an unusable NIfTI header ({exc}).") from None
    affine = _check_affine(path, raw_affine)
    try:
        data = np.asanyarray(img.dataobj)
    except MemoryError:
        raise ResourceError(f"Not enough memory to read {path.name} (shape {shape}).") from None
    except (OSError, EOFError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise NiftiReadError(
            f"{path.name} could not be read ({type(exc).__name__}: {exc}); the file is probably "
            "truncated or corrupt."
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.dtype.kind == "f":
        if data.dtype == np.float64:
            # Halves memory (scans carry no float64 precision); values beyond float32 become
            # Inf and are reported below like any other non-finite voxel.
            with np.errstate(over="ignore"):
                data = data.astype(np.float32)
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InvalidVolumeError(
                f"{path.name} holds {bad} NaN/Inf voxel(s) out of {data.size} (after applying the "
                "header's scl_slope/scl_inter): fix the file (e.g. replace them by 0) before "
                "using it."
            )
    return data, affine, img.header.copy()


def load_volume(path: PathLike, max_bytes: int | None = None) -> Volume:
    """Read one 3D NIfTI volume into display orientation.

    Parameters
    ----------
    path
        A ``.nii`` or ``.nii.gz`` file holding a 3D volume (or 4D with one channel).
    max_bytes
        Largest decoded volume accepted (default :data:`DEFAULT_MAX_BYTES`).

    Returns
    -------
    Volume
        Data in :data:`~napari_brats_kd.orientation.DISPLAY_AXCODES` order with the file's affine
        and header.

    Raises
    ------
    NiftiReadError, InvalidVolumeError, ResourceError
        For files that are not NIfTI, truncated, inconsistent, too large, not 3D or hold NaN/Inf.
    """
    path = Path(path)
    data, affine, header = read_nifti(path, allow_multichannel=False, max_bytes=max_bytes)
    return Volume.from_file_order(data, affine, header, path)


def is_segmentation(path_or_array: PathLike | np.ndarray, max_labels: int = 4) -> bool:
    """Whether a file or array looks like a BraTS label map.

    A file counts if its name marks a segmentation (``seg``, ``label``, ``mask``...). Otherwise
    (and for arrays) the voxel values must all be integers in ``0..max_labels``.

    Parameters
    ----------
    path_or_array
        A NIfTI path or an array.
    max_labels
        Largest label value accepted (4 covers every BraTS convention).
    """
    if isinstance(path_or_array, np.ndarray):
        arr = path_or_array
    else:
        path = Path(path_or_array)
        if naming.classify_file(path).kind == "seg":
            return True
        arr = read_nifti(path)[0]
    if arr.dtype.kind == "b":
        return True
    if arr.dtype.kind not in "iuf":
        return False
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > max_labels:
        return False
    if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
        return False
    return True


def as_label_map(path: Path, data: np.ndarray) -> np.ndarray:
    """Integer label map (uint8) from a segmentation file's voxels."""
    if data.dtype.kind == "f" and not np.all(np.mod(data, 1) == 0):
        raise InvalidVolumeError(
            f"{path.name} is used as a segmentation but holds non-integer values: expected "
            "label values such as 0, 1, 2, 4."
        )
    lo, hi = data.min(), data.max()
    if lo < 0 or hi > 255:
        raise InvalidVolumeError(
            f"{path.name} is used as a segmentation but holds values {lo}..{hi}: expected label "
            "values between 0 and 4. Is it a scan named like a segmentation?"
        )
    return data.astype(np.uint8, copy=False)


def load_segmentation(path: PathLike, max_bytes: int | None = None) -> Volume:
    """Read a segmentation (uint8 labels, display orientation); see :func:`load_volume`."""
    vol = load_volume(path, max_bytes)
    vol.data = as_label_map(Path(path), vol.data)
    return vol


__all__ = [
    "DEFAULT_MAX_BYTES",
    "as_label_map",
    "check_nifti",
    "is_segmentation",
    "load_segmentation",
    "load_volume",
    "read_nifti",
]
