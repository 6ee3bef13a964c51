"""NIfTI loading and saving: orientation, every case layout, round trips and bad input."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from _nifti_factory import (
    FRONT_MARKER,
    LEFT_MARKER,
    SHAPE,
    TOP_MARKER,
    base_volume,
    modality_volume,
    seg_volume,
    write_case_2021,
    write_case_2023,
    write_case_loose,
    write_msd,
    write_nifti,
    write_nnunet,
)
from napari_brats_kd import io
from napari_brats_kd.errors import (
    CaseError,
    InvalidVolumeError,
    NiftiReadError,
    ResourceError,
)
from napari_brats_kd.labels import MODALITIES, LabelConvention, convert_labels

# ------------------------------------------------------------------------------------ orientation


def _marker_position(data: np.ndarray, value: int) -> np.ndarray:
    return np.argwhere(data == value).mean(axis=0)


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_display_orientation_is_radiological(tmp_path, orientation):
    vol = io.load_volume(write_nifti(tmp_path / "x_t1.nii.gz", base_volume(), orientation))
    nx, ny, nz = SHAPE
    assert vol.data.shape == (nz, ny, nx)  # slider I, rows P, columns L
    centre = (np.array(vol.data.shape) - 1) / 2
    left = _marker_position(vol.data, LEFT_MARKER)
    front = _marker_position(vol.data, FRONT_MARKER)
    top = _marker_position(vol.data, TOP_MARKER)
    assert left[2] > centre[2]  # patient's left on the screen's right
    assert front[1] < centre[1]  # anterior at the top of the axial view
    assert top[0] < centre[0]  # superior slices come first (axis 0 runs inferior-ward)
    assert vol.scale == (1.0, 1.0, 1.0)


def test_lps_and_ras_files_open_identically(tmp_path):
    lps = io.load_volume(write_nifti(tmp_path / "a.nii.gz", base_volume(), "LPS"))
    ras = io.load_volume(write_nifti(tmp_path / "b.nii.gz", base_volume(), "RAS"))
    np.testing.assert_array_equal(lps.data, ras.data)
    assert lps.file_axcodes == ("L", "P", "S")
    assert ras.file_axcodes == ("R", "A", "S")


def test_scale_follows_voxel_sizes_in_display_order(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", base_volume(), "LPS", zooms=(0.5, 0.8, 2.0))
    assert io.load_volume(path).scale == pytest.approx((2.0, 0.8, 0.5))


def test_negative_int16_values_are_kept(tmp_path):
    vol = io.load_volume(write_nifti(tmp_path / "a.nii.gz", base_volume()))
    assert vol.data.dtype == np.int16
    assert vol.data.min() == -5


# ------------------------------------------------------------------------------------ cases


def _check_modalities(case):
    assert case.modalities == MODALITIES
    for i, m in enumerate(MODALITIES):
        assert case.images[m].data.max() == LEFT_MARKER * (i + 1), m


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_load_case_2021(tmp_path, orientation):
    case = io.load_case(write_case_2021(tmp_path, orientation=orientation))
    _check_modalities(case)
    assert case.case_id == "BraTS2021_00000"
    assert case.naming == "brats2021"
    assert case.convention is LabelConvention.BRATS2021
    assert "brats2021" in case.convention_reason
    assert set(np.unique(case.seg.data)) == {0, 1, 2, 4}
    assert case.seg.data.dtype == np.uint8


def test_load_case_2023(tmp_path):
    case = io.load_case(write_case_2023(tmp_path))
    _check_modalities(case)
    assert case.naming == "brats2023"
    assert case.convention is LabelConvention.BRATS2023
    assert set(np.unique(case.seg.data)) == {0, 1, 2, 3}


@pytest.mark.parametrize("dataset_json", [None, "v1", "v2"])
def test_load_case_nnunet(tmp_path, dataset_json):
    order = ("t1", "t1c", "t2", "flair") if dataset_json is None else ("t2", "flair", "t1c", "t1")
    images = write_nnunet(tmp_path, channels=order, dataset_json=dataset_json)
    case = io.load_case(images / "BraTS2021_00000_0002.nii.gz")
    _check_modalities(case)
    assert case.naming == "nnunet"
    assert case.convention is LabelConvention.NNUNET
    expected = convert_labels(seg_volume(), "brats2021", "nnunet")
    assert np.array_equal(np.sort(case.seg.data.ravel()), np.sort(expected.ravel()))


def test_load_case_msd(tmp_path):
    case = io.load_case(write_msd(tmp_path))
    _check_modalities(case)
    assert case.naming == "msd"
    assert case.convention is LabelConvention.MSD
    assert case.images["t1"].data.shape == (SHAPE[2], SHAPE[1], SHAPE[0])


def test_load_case_loose_with_extra_segmentations(tmp_path):
    case = io.load_case(write_case_loose(tmp_path))
    _check_modalities(case)
    assert case.naming == "loose"
    assert case.seg is None
    assert case.convention is LabelConvention.BRATS2021
    assert "no segmentation" in case.convention_reason
    segs = case.extra["segmentations"]
    assert sorted(segs) == ["algo-a", "fusion_simple"]
    assert segs["algo-a"]["convention"] is LabelConvention.BRATS2021


def test_single_modality_file_and_single_segmentation(tmp_path):
    folder = write_case_2021(tmp_path)
    case = io.load_case(folder / "BraTS2021_00000_flair.nii.gz")
    assert case.modalities == ("flair",)
    assert case.seg is None
    seg_only = io.load_case(folder / "BraTS2021_00000_seg.nii.gz")
    assert seg_only.images == {}
    assert seg_only.seg is not None
    assert seg_only.convention is LabelConvention.BRATS2021


def test_required_modalities_missing(tmp_path):
    folder = write_case_2021(tmp_path)
    (folder / "BraTS2021_00000_t1ce.nii.gz").unlink()
    assert io.load_case(folder).modalities == ("t1", "t2", "flair")
    with pytest.raises(CaseError, match=r"lacks T1c.*BraTS2021_00000_t1ce\.nii\.gz"):
        io.load_case(folder, modalities=("t1c", "flair"))


def test_progress_is_reported(tmp_path):
    calls = []
    io.load_case(write_case_2021(tmp_path), progress=lambda d, t, m: calls.append((d, t)))
    assert calls[-1] == (5, 5)


def test_find_cases_in_nested_dataset(tmp_path):
    write_case_2021(tmp_path / "train", "BraTS2021_00002")
    write_case_2021(tmp_path / "train", "BraTS2021_00001")
    write_nnunet(tmp_path / "nn", case_ids=("X_001", "X_002"))
    write_msd(tmp_path / "msd")
    cases = io.find_cases(tmp_path)
    assert cases == sorted(cases)
    names = [c.name for c in cases]
    assert names == [
        "BRATS_001.nii.gz",
        "X_001_0000.nii.gz",
        "X_002_0000.nii.gz",
        "BraTS2021_00001",
        "BraTS2021_00002",
    ]
    for c in cases:  # every entry opens as a full case
        assert io.load_case(c).modalities == MODALITIES


def test_find_cases_empty(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(CaseError, match="No cases found"):
        io.find_cases(tmp_path)


def test_is_segmentation(tmp_path):
    assert io.is_segmentation(seg_volume())
    assert not io.is_segmentation(base_volume())
    assert io.is_segmentation(seg_volume().astype(np.float32))
    assert not io.is_segmentation(seg_volume() + 0.5)
    assert io.is_segmentation(write_nifti(tmp_path / "x_seg.nii.gz", seg_volume()))
    assert io.is_segmentation(write_nifti(tmp_path / "x_out.nii.gz", seg_volume()))
    assert not io.is_segmentation(write_nifti(tmp_path / "x_t1.nii.gz", base_volume()))


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_segmentation_round_trip_keeps_voxels_and_geometry(tmp_path, orientation):
    folder = write_case_2021(tmp_path, orientation=orientation)
    src = folder / "BraTS2021_00000_seg.nii.gz"
    nib.load(str(src)).header  # noqa: B018 - make sure the source parses
    case = io.load_case(folder)
    out = io.save_labels(tmp_path / "out" / "seg.nii.gz", case.seg.data, case.seg, "brats2021")
    a, b = nib.load(str(src)), nib.load(str(out))
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    np.testing.assert_allclose(a.affine, b.affine)
    assert b.get_data_dtype() == np.uint8
    assert int(b.header["sform_code"]) == int(a.header["sform_code"])
    assert int(b.header["qform_code"]) == int(a.header["qform_code"])
    np.testing.assert_allclose(b.get_qform(), a.get_qform(), atol=1e-5)
    assert nib.aff2axcodes(b.affine) == tuple(orientation)


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_hand_painted_labels_land_in_file_order(tmp_path, orientation):
    scan = io.load_volume(write_nifti(tmp_path / "c_t1.nii.gz", base_volume(), orientation))
    painted = np.zeros(scan.data.shape, np.uint8)
    painted[scan.data == LEFT_MARKER] = 2  # paint the left-hemisphere marker as edema
    out = io.save_labels(tmp_path / "painted.nii.gz", painted, scan, "brats2021")
    written = nib.load(str(out))
    on_file = np.asanyarray(written.dataobj)
    raw_scan = np.asanyarray(nib.load(str(tmp_path / "c_t1.nii.gz")).dataobj)
    np.testing.assert_array_equal(on_file == 2, raw_scan == LEFT_MARKER)
    np.testing.assert_allclose(written.affine, scan.affine)
    np.testing.assert_array_equal(io.load_volume(out).data, painted)


def test_save_rejects_wrong_shape(tmp_path):
    case = io.load_case(write_case_2021(tmp_path))
    with pytest.raises(InvalidVolumeError, match="do not match"):
        io.save_labels(tmp_path / "t.nii.gz", np.zeros((3, 3, 3), np.uint8), case.seg)


# ------------------------------------------------------------------------------------ bad input


def _nii(tmp_path, data, name="v.nii", affine=None):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_not_a_nifti(tmp_path):
    text = tmp_path / "notes.nii.gz"
    text.write_bytes(gzip.compress(b"hello, this is not an image" * 40))
    with pytest.raises(NiftiReadError, match="not a NIfTI"):
        io.load_volume(text)
    other = tmp_path / "image.png"
    other.write_bytes(b"\x89PNG....")
    with pytest.raises(NiftiReadError, match=r"\.nii or \.nii\.gz"):
        io.load_volume(other)
    plain = tmp_path / "plain.nii.gz"
    plain.write_bytes(b"x" * 400)
    with pytest.raises(NiftiReadError, match="not gzip"):
        io.load_volume(plain)


def test_misnamed_and_empty_files_say_what_to_do(tmp_path):
    gz = write_nifti(tmp_path / "a.nii.gz", base_volume())
    misnamed = tmp_path / "b.nii"
    misnamed.write_bytes(gz.read_bytes())
    with pytest.raises(NiftiReadError, match=r"gzip-compressed .*rename it to b\.nii\.gz"):
        io.load_volume(misnamed)
    for name in ("empty.nii.gz", "empty.nii"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(NiftiReadError, match=r"is empty \(0 bytes\)"):
            io.load_volume(tmp_path / name)


def test_truncated_gzip(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", base_volume())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(NiftiReadError, match="truncated"):
        io.load_volume(path)


def test_corrupt_gzip_body(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", base_volume())
    raw = bytearray(path.read_bytes())
    for i in range(40, len(raw) - 8, 7):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiReadError):
        io.load_volume(path)


def test_one_flipped_byte_in_the_voxels_is_an_error_not_changed_voxels(tmp_path):
    """The gzip CRC is checked: a stored (uncompressed) block makes the flip land in the data."""
    data = base_volume()
    raw = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    stored = bytearray(gzip.compress(raw, compresslevel=0))  # level 0: the bytes as they are
    stored[len(stored) // 2] ^= 0x01
    path = tmp_path / "flipped.nii.gz"
    path.write_bytes(bytes(stored))
    with pytest.raises(NiftiReadError, match="corrupt"):
        io.load_volume(path)


def test_a_multi_member_gzip_reads_whole(tmp_path):
    data = base_volume()
    raw = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    half = len(raw) // 2
    path = tmp_path / "two_members.nii.gz"
    path.write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    np.testing.assert_array_equal(io.read_nifti(path)[0], data)


def test_header_claims_more_data_than_file_holds(tmp_path):
    path = _nii(tmp_path, base_volume())
    raw = bytearray(path.read_bytes())
    hdr = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(bytes(raw[:348])))
    hdr.set_data_shape((120, 100, 80))
    raw[:348] = hdr.binaryblock
    path.write_bytes(bytes(raw))
    with pytest.raises(NiftiReadError, match=r"needs \d+ bytes, the file has \d+"):
        io.load_volume(path)


def test_huge_dims_in_gzip_fail_before_allocating(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", base_volume())
    raw = gzip.decompress(path.read_bytes())
    hdr = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(raw[:348]))
    hdr.set_data_shape((30000, 30000, 30000))
    path.write_bytes(gzip.compress(hdr.binaryblock + raw[348:]))
    with pytest.raises(NiftiReadError, match="cannot hold"):
        io.load_volume(path)


def test_memory_cap(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", base_volume())
    with pytest.raises(ResourceError, match="BRATS_KD_MAX_VOLUME_BYTES"):
        io.load_volume(path, max_bytes=100)


def test_nan_voxels_are_counted(tmp_path):
    data = base_volume().astype(np.float32)
    data[0, 0, :3] = np.nan
    data[1, 1, 1] = np.inf
    with pytest.raises(InvalidVolumeError, match="4 NaN/Inf"):
        io.load_volume(_nii(tmp_path, data))


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [((12, 10), r"2D \(shape \(12, 10\)\)"), ((4, 4, 3, 2, 2), r"5 dimensions.*\(4, 4, 3, 2, 2\)")],
)
def test_wrong_dimensionality(tmp_path, shape, pattern):
    with pytest.raises(InvalidVolumeError, match=pattern):
        io.load_volume(_nii(tmp_path, np.ones(shape, np.int16)))


def test_4d_only_as_msd(tmp_path):
    path = _nii(tmp_path, np.ones((4, 4, 3, 2), np.int16))
    with pytest.raises(InvalidVolumeError, match="4D with 2 channels"):
        io.load_volume(path)
    single = _nii(tmp_path, np.ones((4, 4, 3, 1), np.int16), "single.nii")
    assert io.load_volume(single).data.shape == (3, 4, 4)


def test_modalities_on_different_grids(tmp_path):
    folder = write_case_2021(tmp_path, seg=False)
    write_nifti(folder / "BraTS2021_00000_t2.nii.gz", np.zeros((12, 10, 9), np.int16))
    with pytest.raises(CaseError, match=r"_t1\.nii\.gz: shape \(12, 10, 8\).*_t2\.nii\.gz: shape"):
        io.load_case(folder)
    write_nifti(folder / "BraTS2021_00000_t2.nii.gz", base_volume(), zooms=(1, 1, 2))
    with pytest.raises(CaseError, match="different voxel grids"):
        io.load_case(folder)


def test_degenerate_affine(tmp_path):
    aff = np.eye(4)
    aff[2, 2] = 0
    img = nib.Nifti1Image(base_volume(), None)
    img.header.set_sform(aff, code=1)  # qform cannot even store this affine
    path = tmp_path / "flat.nii"
    nib.save(img, str(path))
    with pytest.raises(InvalidVolumeError, match="degenerate affine"):
        io.load_volume(path)


def test_modality_volume_factory_is_distinct():
    assert modality_volume("flair").max() == 4 * LEFT_MARKER


def test_lone_file_named_like_nothing(tmp_path):
    labels = write_nifti(tmp_path / "edited.nii.gz", seg_volume())
    case = io.load_case(labels)
    assert case.images == {}
    assert set(np.unique(case.seg.data)) == {0, 1, 2, 4}
    assert "opened as a segmentation" in case.extra["notes"][0]
    scan = write_nifti(tmp_path / "scan.nii.gz", base_volume())
    with pytest.raises(CaseError, match=r"Cannot tell which modality scan\.nii\.gz"):
        io.load_case(scan)


def test_msd_labels_round_trip_against_a_4d_reference(tmp_path):
    path = write_msd(tmp_path)
    case = io.load_case(path)
    out = io.save_labels(tmp_path / "msd_out.nii.gz", case.seg.data, case.images["t1c"], "msd")
    written, original = nib.load(str(out)), nib.load(str(tmp_path / "labelsTr" / path.name))
    assert written.shape == original.shape == SHAPE
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(original.dataobj))
    np.testing.assert_allclose(written.affine, original.affine)


# ------------------------------------------------------------------- geometry other viewers read


def _coded(form: tuple[np.ndarray | None, int]) -> tuple[list | None, int]:
    """``get_sform(coded=True)`` / ``get_qform(coded=True)`` in a form ``==`` can compare."""
    matrix, code = form
    return (None if matrix is None else np.round(matrix, 4).tolist()), int(code)


def _scan_with_forms(path, sform, sform_code, qform, qform_code):
    """An LPS scan whose sform and qform are set independently (as scanners and tools do)."""
    img = nib.Nifti1Image(np.ascontiguousarray(base_volume()[::-1, ::-1]), None)
    img.set_sform(sform, code=sform_code)
    img.set_qform(qform, code=qform_code)
    nib.save(img, str(path))
    return path


_LPS = np.array([[-1.0, 0, 0, 11], [0, -1.0, 0, 9], [0, 0, 1.0, 0], [0, 0, 0, 1]])
_SHIFTED = _LPS + np.array([[0, 0, 0, 5], [0, 0, 0, -3], [0, 0, 0, 2], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    "codes",
    [
        (2, 1),  # sform "aligned" and qform "scanner", 5 mm apart: each must stay as it was
        (0, 1),  # only the qform places the scan
        (0, 0),  # no orientation at all: the labels must not claim one
    ],
    ids=["sform2-qform1-disagree", "qform-only", "no-orientation"],
)
def test_saved_labels_carry_the_scans_sform_and_qform_exactly(tmp_path, codes):
    scan_path = _scan_with_forms(tmp_path / "x_t1.nii.gz", _LPS, codes[0], _SHIFTED, codes[1])
    scan = io.load_volume(scan_path)
    painted = np.zeros(scan.data.shape, np.uint8)
    painted[scan.data == LEFT_MARKER] = 2
    out = io.save_labels(tmp_path / "x_seg.nii.gz", painted, scan, "brats2021")
    ref, written = nib.load(str(scan_path)), nib.load(str(out))
    # What another viewer reads: the same forms with the same codes, so it picks the same one.
    assert _coded(written.header.get_sform(coded=True)) == _coded(ref.header.get_sform(coded=True))
    assert _coded(written.header.get_qform(coded=True)) == _coded(ref.header.get_qform(coded=True))
    np.testing.assert_allclose(written.header.get_sform(), ref.header.get_sform())
    np.testing.assert_allclose(written.header.get_qform(), ref.header.get_qform())
    np.testing.assert_allclose(written.affine, ref.affine)
    # And the labels sit on the painted voxels in the scan's own voxel order.
    on_file = np.asanyarray(written.dataobj)
    np.testing.assert_array_equal(on_file == 2, np.asanyarray(ref.dataobj) == LEFT_MARKER)
    np.testing.assert_array_equal(io.load_volume(out).data, painted)


def test_labels_of_a_volume_without_header_are_placed_by_its_affine(tmp_path):
    scan = io.load_volume(write_nifti(tmp_path / "x_t1.nii.gz", base_volume(), "LPS"))
    scan.header = None  # e.g. a layer not opened from a file
    painted = (scan.data == LEFT_MARKER).astype(np.uint8)
    written = nib.load(str(io.save_labels(tmp_path / "seg.nii.gz", painted, scan, "brats2021")))
    assert written.header.get_sform(coded=True)[1] == 1
    assert written.header.get_qform(coded=True)[1] == 1
    np.testing.assert_allclose(written.affine, scan.affine)
    np.testing.assert_array_equal(io.load_volume(tmp_path / "seg.nii.gz").data, painted)


@pytest.mark.realdata
@pytest.mark.parametrize(
    "scan", ["TCGA-DU-7294/TCGA-DU-7294_t1_bet", "BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1c"]
)
def test_labels_saved_for_a_real_scan_carry_its_sform_and_qform(real_data_dir, tmp_path, scan):
    scan_path = real_data_dir / f"{scan}.nii.gz"
    vol = io.load_volume(scan_path)
    threshold = np.percentile(vol.data, 99)
    painted = (vol.data > threshold).astype(np.uint8)  # "paint" the brightest voxels
    out = io.save_labels(tmp_path / "seg.nii.gz", painted, vol, "brats2021")
    ref, written = nib.load(str(scan_path)), nib.load(str(out))
    assert _coded(written.header.get_sform(coded=True)) == _coded(ref.header.get_sform(coded=True))
    assert _coded(written.header.get_qform(coded=True)) == _coded(ref.header.get_qform(coded=True))
    # Voxel for voxel on the scan's own file order.
    np.testing.assert_array_equal(
        np.asanyarray(written.dataobj) == 1, np.asanyarray(ref.dataobj) > threshold
    )


def _resave_as(path, affine_change):
    """Store ``path`` again with its voxel axes reordered (``as_closest_canonical``: RAS) or its
    affine changed, in place."""
    img = nib.load(str(path))
    out = affine_change(img)
    nib.save(out, str(path))


def test_modalities_stored_in_different_voxel_orders_on_one_grid_open_together(tmp_path):
    folder = write_case_2021(tmp_path / "mixed")
    reference = io.load_case(write_case_2021(tmp_path / "plain"))
    # Only T1 and the segmentation are stored as RAS, the rest stays LPS: same voxels in space.
    for name in ("BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_seg.nii.gz"):
        _resave_as(folder / name, nib.as_closest_canonical)
    assert nib.aff2axcodes(nib.load(str(folder / "BraTS2021_00000_t1.nii.gz")).affine) == tuple(
        "RAS"
    )
    case = io.load_case(folder)
    for m in MODALITIES:
        np.testing.assert_array_equal(case.images[m].data, reference.images[m].data)
    np.testing.assert_array_equal(case.seg.data, reference.seg.data)
    assert case.images["t1"].scale == case.images["t2"].scale


def test_a_modality_shifted_by_one_voxel_is_still_refused(tmp_path):
    folder = write_case_2021(tmp_path, seg=False)

    def shift(img):
        affine = img.affine.copy()
        affine[:3, 3] += affine[:3, 0]  # one voxel along the first axis
        return nib.Nifti1Image(np.asanyarray(img.dataobj), affine)

    _resave_as(folder / "BraTS2021_00000_t2.nii.gz", shift)
    with pytest.raises(CaseError, match=r"different voxel grids.*Resample"):
        io.load_case(folder)
    # Reordering the voxel axes as well does not hide the shift.
    _resave_as(folder / "BraTS2021_00000_t2.nii.gz", nib.as_closest_canonical)
    with pytest.raises(CaseError, match="different voxel grids"):
        io.load_case(folder)


def test_extra_segmentations_in_another_voxel_order_are_kept_and_shifted_ones_skipped(tmp_path):
    folder = write_case_loose(tmp_path)
    extra = folder / "segmentations"
    _resave_as(extra / "algo-a.nii.gz", nib.as_closest_canonical)

    def shift(img):
        affine = img.affine.copy()
        affine[:3, 3] += affine[:3, 2]
        return nib.Nifti1Image(np.asanyarray(img.dataobj), affine)

    _resave_as(extra / "fusion_simple.nii.gz", shift)
    case = io.load_case(folder)
    segs = case.extra["segmentations"]
    assert list(segs) == ["algo-a"]
    reference = io.load_volume(write_nifti(tmp_path / "ref.nii.gz", seg_volume(), "LPS"))
    np.testing.assert_array_equal(segs["algo-a"]["volume"].data, reference.data)
    assert any("fusion_simple.nii.gz" in n and "another grid" in n for n in case.notes)


@pytest.mark.realdata
def test_real_case_with_one_modality_stored_as_ras_opens_voxel_identical(real_data_dir, tmp_path):
    src = real_data_dir / "TCGA-DU-7294"
    folder = tmp_path / "TCGA-DU-7294"
    folder.mkdir()
    for p in src.glob("*.nii.gz"):
        if p.name.endswith("_t1_bet.nii.gz"):
            nib.save(nib.as_closest_canonical(nib.load(str(p))), str(folder / p.name))
        else:
            (folder / p.name).symlink_to(p)  # unchanged LPS files, not copied
    case = io.load_case(folder, extra_segmentations=False)
    original = io.load_case(src, extra_segmentations=False)
    assert case.images["t1"].file_axcodes == ("R", "A", "S")
    for m in MODALITIES:
        np.testing.assert_array_equal(case.images[m].data, original.images[m].data)


# ------------------------------------------------------------------------- assumed channel orders


@pytest.mark.parametrize("with_json", [False, True])
def test_msd_channel_order_assumed_without_dataset_json_is_told(tmp_path, with_json):
    case = io.load_case(write_msd(tmp_path, dataset_json=with_json))
    assumed = [n for n in case.notes if "No dataset.json" in n]
    if with_json:
        assert assumed == []
    else:
        assert assumed == [
            "No dataset.json found: channels assumed to be FLAIR, T1, T1c, T2 (MSD order); add "
            "a dataset.json naming the channels if they are not."
        ]


@pytest.mark.parametrize("dataset_json", [None, "v2"])
def test_nnunet_channel_order_assumed_without_dataset_json_is_told(tmp_path, dataset_json):
    images = write_nnunet(tmp_path, dataset_json=dataset_json)
    case = io.load_case(images / "BraTS2021_00000_0000.nii.gz")
    assumed = [n for n in case.notes if "No dataset.json" in n]
    if dataset_json is not None:
        assert assumed == []
    else:
        assert len(assumed) == 1
        assert "T1, T1c, T2, FLAIR (nnU-Net BraTS order)" in assumed[0]
        assert case.extra["notes"] is case.notes  # what the napari reader shows


def test_a_met_folder_with_an_unnamed_label_map_opens(tmp_path):
    """A BraTS-MET-style folder: four named scans, an algorithm's label map and an image whose
    names tell no modality. The case opens; the label map is a further segmentation; the image
    is listed in a note."""
    folder = write_case_2023(tmp_path, "BraTS-MET-00001-000", seg=False)
    labels = convert_labels(seg_volume(), "brats2021", "brats2023")
    write_nifti(folder / "aurora_t1c_only_model_output_from_tutorials.nii.gz", labels)
    write_nifti(folder / "registered_atlas.nii.gz", base_volume())
    case = io.load_case(folder)
    assert set(case.modalities) == set(MODALITIES) and case.case_id == "BraTS-MET-00001-000"
    extra = case.extra["segmentations"]
    assert list(extra) == ["aurora_t1c_only_model_output_from_tutorials"]
    assert extra["aurora_t1c_only_model_output_from_tutorials"]["convention"].value == "brats2023"
    assert any("registered_atlas.nii.gz" in note and "Not opened" in note for note in case.notes)
    # segmenting reads only the scans, and says what it left alone
    scans = io.load_case(folder, extra_segmentations=False, segmentation=False)
    assert any("Not read" in note and "aurora" in note for note in scans.notes)


def test_a_folder_of_unnamed_files_only_is_still_refused(tmp_path):
    write_nifti(tmp_path / "case" / "scan_a.nii.gz", base_volume())
    write_nifti(tmp_path / "case" / "scan_b.nii.gz", base_volume())
    with pytest.raises(CaseError, match="Cannot tell which modality"):
        io.load_case(tmp_path / "case")
