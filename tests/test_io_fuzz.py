"""Fuzz the NIfTI reader: malformed files load cleanly or raise a BratsKDError, nothing else.

Hundreds of broken files are made with a seeded RNG from one small valid volume: random byte
flips in the header, truncation at random offsets, huge / zero / negative dims, bad vox_offset,
arbitrary datatype codes, 5D and other dim[0] values, bad voxel sizes and affines, and flipped
bytes inside the gzip stream. Each must either open as a valid 3D volume or raise a subclass of
:class:`~napari_brats_kd.errors.BratsKDError`, and no attempt may allocate more than a few MB
(measured with tracemalloc, which sees numpy's buffers).
"""

from __future__ import annotations

import gzip
import struct
import tracemalloc
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np

from _nifti_factory import affine_for
from napari_brats_kd import io
from napari_brats_kd.errors import BratsKDError

SEED = 20240611
N_PER_KIND = 30
SHAPE = (6, 5, 4)
# The valid file is ~0.6 kB decoded; anything above this is an allocation driven by a bad header.
MAX_TRACED_BYTES = 8 * 1024**2

# Byte offsets of NIfTI-1 header fields.
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET = 40, 70, 72, 76, 108
SCL_SLOPE, QFORM_CODE, QUATERN_B, SROW_X = 112, 252, 256, 280


def _valid_bytes() -> bytes:
    data = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) - 7
    img = nib.Nifti1Image(data, affine_for("LPS", SHAPE))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img.to_bytes()


def _put(raw: bytes, offset: int, fmt: str, *values) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, *values)
    return bytes(b)


def _mutations(rng: np.random.Generator, raw: bytes):
    """Yield ``(kind, decoded_bytes_or_None, file_bytes_or_None, gz)`` broken variants."""
    n = len(raw)
    for _ in range(N_PER_KIND):
        b = bytearray(raw)
        for pos in rng.integers(0, 352, size=int(rng.integers(1, 6))):
            b[pos] ^= int(rng.integers(1, 256))
        yield "header byte flips", bytes(b), None, bool(rng.integers(0, 2))
    for _ in range(N_PER_KIND):
        yield "truncated .nii", raw[: int(rng.integers(0, n))], None, False
    gz_raw = gzip.compress(raw)
    for _ in range(N_PER_KIND):
        yield "truncated .nii.gz", None, gz_raw[: int(rng.integers(0, len(gz_raw)))], True
    for _ in range(N_PER_KIND):
        b = bytearray(gz_raw)
        for pos in rng.integers(10, len(b), size=int(rng.integers(1, 4))):
            b[pos] ^= int(rng.integers(1, 256))
        yield "gzip body flips", None, bytes(b), True
    for _ in range(N_PER_KIND):
        axis = int(rng.integers(1, 4))
        value = int(rng.choice([32767, 30000, int(rng.integers(100, 32767))]))
        yield "huge dim", _put(raw, DIM + 2 * axis, "<h", value), None, bool(rng.integers(0, 2))
    for _ in range(N_PER_KIND):
        axis = int(rng.integers(0, 8))
        value = int(rng.choice([0, -1, -32768, 8, 9]))
        yield "zero/negative dim", _put(raw, DIM + 2 * axis, "<h", value), None, False
    for _ in range(N_PER_KIND):
        value = float(rng.choice([0.0, -352.0, 100.0, 351.0, 1e9, 353.5, np.nan, np.inf]))
        yield "vox_offset", _put(raw, VOX_OFFSET, "<f", value), None, bool(rng.integers(0, 2))
    codes = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304]
    for _ in range(N_PER_KIND):
        code = int(rng.choice([*codes, int(rng.integers(-32768, 32767))]))
        bitpix = int(rng.choice([8, 16, 32, 64, 0, 7]))
        b = _put(_put(raw, DATATYPE, "<h", code), BITPIX, "<h", bitpix)
        yield "datatype", b, None, bool(rng.integers(0, 2))
    for _ in range(N_PER_KIND):
        ndim = int(rng.integers(0, 8))
        dims = [ndim, *(int(x) for x in rng.integers(1, 4, size=7))]
        yield "dim[0] / 5D", _put(raw, DIM, "<8h", *dims), None, bool(rng.integers(0, 2))
    for _ in range(N_PER_KIND):
        pix = [float(x) for x in rng.choice([0.0, -1.0, 1.0, np.nan, np.inf, 1e30], size=8)]
        b = _put(raw, PIXDIM, "<8f", *pix)
        b = _put(b, QUATERN_B, "<3f", *(float(x) for x in rng.normal(0, 2, size=3)))
        srow = [float(x) for x in rng.choice([0.0, 1.0, np.nan, 1e38], size=4)]
        b = _put(b, SROW_X + 16 * int(rng.integers(0, 3)), "<4f", *srow)
        b = _put(b, QFORM_CODE, "<2h", *(int(x) for x in rng.integers(0, 5, size=2)))
        yield "geometry", b, None, bool(rng.integers(0, 2))
    for _ in range(N_PER_KIND):
        slope, inter = (float(x) for x in rng.choice([0.0, np.nan, np.inf, 1e38, -2.5], size=2))
        yield "scaling", _put(raw, SCL_SLOPE, "<2f", slope, inter), None, False


def _check_valid(vol) -> None:
    assert vol.data.ndim == 3 and all(s > 0 for s in vol.data.shape)
    assert np.all(np.isfinite(vol.affine))
    if vol.data.dtype.kind == "f":
        assert np.all(np.isfinite(vol.data))


def test_malformed_files_fail_cleanly(tmp_path: Path):
    rng = np.random.default_rng(SEED)
    raw = _valid_bytes()
    outcomes: Counter = Counter()
    escaped: list[str] = []
    big: list[str] = []
    total = 0
    io.load_volume  # noqa: B018 - imports done before tracing starts
    tracemalloc.start()
    try:
        for i, (kind, decoded, filebytes, gz) in enumerate(_mutations(rng, raw)):
            total += 1
            path = tmp_path / f"f{i:04d}{'.nii.gz' if gz else '.nii'}"
            if filebytes is None:
                filebytes = gzip.compress(decoded) if gz else decoded
            path.write_bytes(filebytes)
            tracemalloc.reset_peak()
            try:
                vol = io.load_volume(path)
                _check_valid(vol)
                outcomes["loaded"] += 1
            except BratsKDError as exc:
                outcomes[type(exc).__name__] += 1
            except Exception as exc:  # the point of the test: report anything that is not ours
                escaped.append(f"{kind} #{i}: {type(exc).__name__}: {exc}")
            peak = tracemalloc.get_traced_memory()[1]
            if peak > MAX_TRACED_BYTES:
                big.append(f"{kind} #{i}: peak {peak} bytes")
            path.unlink()
    finally:
        tracemalloc.stop()
    assert escaped == []
    assert big == []
    assert total == 11 * N_PER_KIND
    assert sum(outcomes.values()) == total
    # Both outcomes occur: the fuzzer is not just producing unreadable junk or harmless noise.
    assert outcomes["loaded"] >= 10
    assert outcomes["NiftiReadError"] >= 100
    assert outcomes["InvalidVolumeError"] >= 10


def test_corrupt_files_in_case_discovery_fail_cleanly(tmp_path: Path):
    """The naming code probes headers of files it cannot name (MSD detection): same guarantee."""
    rng = np.random.default_rng(SEED + 1)
    raw = gzip.compress(_valid_bytes())
    path = tmp_path / "weird.nii.gz"
    n_errors = 0
    for _ in range(N_PER_KIND * 3):
        b = bytearray(raw)
        for pos in rng.integers(0, len(b), size=3):
            b[pos] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(b[: int(rng.integers(1, len(b) + 1))]))
        try:
            io.load_case(path)
        except BratsKDError:
            n_errors += 1
    # A lone file whose name names no modality is never a case, corrupt or not.
    assert n_errors == N_PER_KIND * 3
