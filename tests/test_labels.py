"""Label conventions (labels.py) as they reach files: converted on saving, detected on reopening,
foreign values refused, 2023 naming with labels 1-2-3."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _nifti_factory import seg_volume, write_case_2021, write_nifti
from napari_brats_kd import io
from napari_brats_kd.errors import LabelConventionError
from napari_brats_kd.labels import LabelConvention, convert_labels
from napari_brats_kd.phantom import make_phantom, write_phantom_dataset


def test_save_converts_conventions(tmp_path):
    case = io.load_case(write_case_2021(tmp_path))
    out = io.save_labels(tmp_path / "s", case.seg.data, case.seg, "brats2021", "brats2023")
    assert out.name == "s.nii.gz"
    assert set(np.unique(io.load_volume(out).data)) == {0, 1, 2, 3}
    with pytest.raises(LabelConventionError, match=r"\[4\]"):
        io.save_labels(tmp_path / "t.nii.gz", case.seg.data, case.seg, "brats2023")


def test_a_saved_label_map_reopens_in_the_convention_it_was_written_in(tmp_path):
    case = io.load_case(write_case_2021(tmp_path))
    # nnU-Net labels (1 edema, 2 necrosis) without enhancing tumour, saved under a "_seg" name,
    # which on its own would read as BraTS 2021 (1 necrosis, 2 edema).
    no_et = np.where(case.seg.data == 4, 1, case.seg.data).astype(np.uint8)
    out = io.save_labels(tmp_path / "x_seg.nii.gz", no_et, case.seg, "brats2021", "nnunet")
    reread = io.load_case(out)
    assert reread.convention is LabelConvention.NNUNET
    np.testing.assert_array_equal(convert_labels(reread.seg.data, "nnunet", "brats2021"), no_et)


def test_segmentation_with_foreign_values(tmp_path):
    folder = write_case_2021(tmp_path)
    seg = seg_volume()
    seg[0, 0, 0] = 7
    write_nifti(folder / "BraTS2021_00000_seg.nii.gz", seg)
    with pytest.raises(LabelConventionError, match=r"_seg\.nii\.gz.*\[1, 2, 4, 7\]"):
        io.load_case(folder)


def test_conventions_of_make_phantom() -> None:
    v21 = np.unique(make_phantom(4, spacing=4).seg.data)
    v23 = np.unique(make_phantom(4, spacing=4, convention="brats2023").seg.data)
    assert set(v21) == {0, 1, 2, 4}
    assert set(v23) == {0, 1, 2, 3}


def test_2023_naming_uses_labels_123(tmp_path: Path) -> None:
    calls = []
    folders = write_phantom_dataset(
        tmp_path,
        n=1,
        seed=12,
        naming="2023",
        site="C",
        spacing=4,
        progress=lambda done, total, msg: calls.append((done, total, msg)),
    )
    assert [f.name for f in folders] == ["BraTS-GLI-P00012-000"]
    stem = folders[0] / "BraTS-GLI-P00012-000"
    for suffix in ("t1n", "t1c", "t2w", "t2f"):
        assert nib.load(f"{stem}-{suffix}.nii.gz").get_data_dtype() == np.int16
    seg = np.asanyarray(nib.load(f"{stem}-seg.nii.gz").dataobj)
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    assert calls == [(0, 1, "starting"), (1, 1, "BraTS-GLI-P00012-000")]
