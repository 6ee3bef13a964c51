"""The two real cases in ../shared/data/real: modality mapping, orientation, overlay, round trip.

Read in place (never copied into the repository); skipped when the folder is absent.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from napari_brats_kd import io
from napari_brats_kd.labels import MODALITIES, LabelConvention

pytestmark = pytest.mark.realdata

DISPLAY_SHAPE = (155, 240, 240)


@pytest.fixture(scope="module")
def gli(real_data_dir):
    return io.load_case(real_data_dir / "BraTS-GLI-00001-000")


@pytest.fixture(scope="module")
def tcga(real_data_dir):
    return io.load_case(real_data_dir / "TCGA-DU-7294")


def _lps_to_display(raw: np.ndarray) -> np.ndarray:
    """Independent of orientation.py: (L, P, S) voxel order -> (I, P, L)."""
    return raw.transpose(2, 1, 0)[::-1]


def test_brats2023_case(gli, real_data_dir):
    assert gli.naming == "brats2023"
    assert gli.case_id == "BraTS-GLI-00001-000"
    assert gli.modalities == MODALITIES
    tokens = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}
    for modality, token in tokens.items():
        vol = gli.images[modality]
        assert vol.path.name == f"BraTS-GLI-00001-000-{token}.nii.gz"
        assert vol.data.shape == DISPLAY_SHAPE
        assert vol.file_axcodes == ("L", "P", "S")
        assert vol.scale == (1.0, 1.0, 1.0)
    raw = np.asanyarray(nib.load(str(gli.images["flair"].path)).dataobj)
    np.testing.assert_array_equal(gli.images["flair"].data, _lps_to_display(raw))
    assert gli.seg is None
    assert gli.convention is LabelConvention.BRATS2023


def test_tcga_loose_names(tcga):
    assert tcga.naming == "loose"
    assert tcga.case_id == "TCGA-DU-7294"
    names = {m: v.path.name for m, v in tcga.images.items()}
    assert names == {
        "t1": "TCGA-DU-7294_t1_bet.nii.gz",
        "t1c": "TCGA-DU-7294_t1c_bet.nii.gz",
        "t2": "TCGA-DU-7294_t2_bet.nii.gz",
        "flair": "TCGA-DU-7294_fla_bet.nii.gz",
    }
    for vol in tcga.images.values():
        assert vol.data.shape == DISPLAY_SHAPE
        assert vol.data.dtype == np.int16
    assert tcga.images["t2"].data.min() < 0  # real int16 negatives load fine


def test_tcga_algorithm_segmentations_overlay_the_scans(tcga):
    segs = tcga.extra["segmentations"]
    assert sorted(segs) == [
        "fusion_simple",
        "hnfnetv1-20",
        "isen-20",
        "sanet0-20",
        "scan-20",
        "yixinmpl-20",
    ]
    flair = tcga.images["flair"].data.astype(np.float32)
    brain = flair != 0
    with_et = 0
    for name, item in segs.items():
        vol = item["volume"]
        assert vol.geometry_matches(tcga.images["flair"]), name
        values = set(np.unique(vol.data).tolist())
        assert values <= {0, 1, 2, 4}, name
        assert item["convention"] is LabelConvention.BRATS2021, name
        with_et += 4 in values
        tumour = vol.data > 0
        assert tumour.sum() > 1000, name
        assert (tumour & brain).sum() / tumour.sum() > 0.99, name
        edema = vol.data == 2
        rest = brain & ~tumour
        assert flair[edema].mean() > 1.2 * flair[rest].mean(), name
    assert with_et >= 1
    assert set(np.unique(segs["fusion_simple"]["volume"].data).tolist()) == {0, 1, 2}


def test_write_and_reread_next_to_a_real_scan(tcga, tmp_path):
    src = tcga.extra["segmentations"]["sanet0-20"]["volume"]
    out = io.save_labels(
        tmp_path / "TCGA-DU-7294_seg.nii.gz", src.data, tcga.images["flair"], "brats2021"
    )
    original = nib.load(str(src.path))
    written = nib.load(str(out))
    np.testing.assert_array_equal(np.asanyarray(written.dataobj), np.asanyarray(original.dataobj))
    np.testing.assert_allclose(written.affine, original.affine)
    np.testing.assert_allclose(written.affine, nib.load(str(tcga.images["flair"].path)).affine)
    assert io.load_volume(out).geometry_matches(tcga.images["flair"])


def test_find_cases_in_real_folder(real_data_dir):
    assert [p.name for p in io.find_cases(real_data_dir)] == [
        "BraTS-GLI-00001-000",
        "TCGA-DU-7294",
    ]


def test_shipped_student_outlines_a_real_tumour_it_never_saw(tcga):
    """TCGA-DU-7294 is not one of the 15 real training cases: against the fusion of five BraTS
    2020 algorithms (whole tumour and core; a rough reference, not an expert's) the shipped
    student must find the tumour where they do, and mark little beyond it."""
    from napari_brats_kd.inference import segment
    from napari_brats_kd.metrics import dice, false_positive_ml

    result = segment(tcga, "student", device="cpu")
    reference = tcga.extra["segmentations"]["fusion_simple"]["volume"].data > 0
    wt = result.labels > 0
    # Measured when it shipped: WT Dice 0.88, 2.7 ml marked more than 10 mm from the reference.
    assert dice(wt, reference) > 0.8
    assert false_positive_ml(wt, reference, tcga.reference.scale, beyond_mm=10) < 5.0
