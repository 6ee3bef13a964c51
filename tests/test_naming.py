"""File naming: modality tokens, file roles and case-folder assignment in every layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from _nifti_factory import (
    base_volume,
    seg_volume,
    write_case_2021,
    write_case_2023,
    write_case_loose,
    write_msd,
    write_nifti,
    write_nnunet,
)
from napari_brats_kd import naming
from napari_brats_kd.errors import CaseError
from napari_brats_kd.naming import parse_modalities


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("t1", "t1"),
        ("T1", "t1"),
        ("t1n", "t1"),
        ("T1w", "t1"),
        ("t1_bet", "t1"),
        ("t1ce", "t1c"),
        ("t1c", "t1c"),
        ("T1C", "t1c"),
        ("t1gd", "t1c"),
        ("T1-Gd", "t1c"),
        ("t1post", "t1c"),
        ("t1c_bet", "t1c"),
        ("t2", "t2"),
        ("T2w", "t2"),
        ("t2_bet", "t2"),
        ("flair", "flair"),
        ("FLAIR", "flair"),
        ("fla", "flair"),
        ("fla_bet", "flair"),
        ("t2f", "flair"),
        ("t2flair", "flair"),
        ("T2-FLAIR", "flair"),
        ("seg", None),
        ("t3", None),
        ("", None),
        ("bet", None),
        ("dwi", None),
    ],
)
def test_modality_from_token(token, expected):
    assert naming.modality_from_token(token) == expected


def test_parse_modalities_uses_the_same_aliases():
    assert parse_modalities("T1Gd, fla") == ("t1c", "flair")


@pytest.mark.parametrize(
    ("name", "kind", "modality", "case_id", "naming_"),
    [
        ("BraTS2021_00000_t1ce.nii.gz", "image", "t1c", "BraTS2021_00000", "brats2021"),
        ("BraTS2021_00000_seg.nii.gz", "seg", None, "BraTS2021_00000", "brats2021"),
        ("BraTS-GLI-00001-000-t2f.nii.gz", "image", "flair", "BraTS-GLI-00001-000", "brats2023"),
        ("BraTS-GLI-00001-000-seg.nii", "seg", None, "BraTS-GLI-00001-000", "brats2023"),
        ("TCGA-DU-7294_fla_bet.nii.gz", "image", "flair", "TCGA-DU-7294", "loose"),
        ("TCGA-DU-7294_t1c_bet.nii.gz", "image", "t1c", "TCGA-DU-7294", "loose"),
        ("TCGA-DU-7294_t1_bet.nii.gz", "image", "t1", "TCGA-DU-7294", "loose"),
        ("Patient7_T2_FLAIR.NII.GZ", "image", "flair", "Patient7", "loose"),
        ("sub-01_T1C.nii.gz", "image", "t1c", "sub-01", "loose"),
        ("flair.nii.gz", "image", "flair", "", "loose"),
        ("case3_label.nii.gz", "seg", None, "case3", "loose"),
        ("case3_tumor_mask.nii", "seg", None, "case3", "loose"),
        ("BraTS2021_00000_0002.nii.gz", "channel", None, "BraTS2021_00000", "nnunet"),
        ("BRATS_001.nii.gz", "unknown", None, "BRATS_001", None),
    ],
)
def test_classify_file(name, kind, modality, case_id, naming_):
    role = naming.classify_file(Path(name))
    assert (role.kind, role.modality, role.case_id, role.naming) == (
        kind,
        modality,
        case_id,
        naming_,
    )


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_brats2021_folder(tmp_path, orientation):
    folder = write_case_2021(tmp_path, orientation=orientation)
    files = naming.case_files(folder)
    assert files.naming == "brats2021"
    assert files.case_id == "BraTS2021_00000"
    assert {m: p.name for m, p in files.images.items()} == {
        "t1": "BraTS2021_00000_t1.nii.gz",
        "t1c": "BraTS2021_00000_t1ce.nii.gz",
        "t2": "BraTS2021_00000_t2.nii.gz",
        "flair": "BraTS2021_00000_flair.nii.gz",
    }
    assert files.seg.name == "BraTS2021_00000_seg.nii.gz"
    assert files.notes == []


def test_brats2023_folder(tmp_path):
    files = naming.case_files(write_case_2023(tmp_path))
    assert files.naming == "brats2023"
    assert files.images["flair"].name.endswith("-t2f.nii.gz")
    assert files.images["t1"].name.endswith("-t1n.nii.gz")
    assert files.seg.name.endswith("-seg.nii.gz")


def test_loose_folder_with_segmentations_subfolder(tmp_path):
    files = naming.case_files(write_case_loose(tmp_path))
    assert files.naming == "loose"
    assert files.case_id == "TCGA-XX-0001"
    assert files.images["flair"].name == "TCGA-XX-0001_fla_bet.nii.gz"
    assert files.images["t1c"].name == "TCGA-XX-0001_t1gd.nii.gz"
    assert files.seg is None
    assert [p.name for p in files.extra_segs] == ["algo-a.nii.gz", "fusion_simple.nii.gz"]


def test_nnunet_default_order_without_dataset_json(tmp_path):
    images = write_nnunet(tmp_path, dataset_json=None)
    files = naming.case_files(images / "BraTS2021_00000_0003.nii.gz")
    assert files.naming == "nnunet"
    assert files.images["flair"].name == "BraTS2021_00000_0003.nii.gz"
    assert files.images["t1c"].name == "BraTS2021_00000_0001.nii.gz"
    assert files.seg == tmp_path / "labelsTr" / "BraTS2021_00000.nii.gz"
    assert "default" in files.channel_source


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nnunet_channel_names_from_dataset_json(tmp_path, version):
    order = ("flair", "t1", "t1c", "t2")
    images = write_nnunet(tmp_path, channels=order, dataset_json=version)
    files = naming.case_files(images)  # a flat folder holding exactly one case
    assert {m: p.name[-11:-7] for m, p in files.images.items()} == {
        "flair": "0000",
        "t1": "0001",
        "t1c": "0002",
        "t2": "0003",
    }
    assert files.channel_source == str(tmp_path / "dataset.json")


def test_nnunet_dataset_json_with_unknown_channel_name(tmp_path):
    images = write_nnunet(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "DWI"}}))
    with pytest.raises(CaseError, match="DWI"):
        naming.case_files(images)


def test_nnunet_missing_channel_names_it(tmp_path):
    images = write_nnunet(tmp_path)
    (images / "BraTS2021_00000_0002.nii.gz").unlink()
    with pytest.raises(CaseError, match=r"missing BraTS2021_00000_0002.*T2"):
        naming.case_files(images / "BraTS2021_00000_0000.nii.gz")


def test_flat_nnunet_folder_with_several_cases_says_open_one_file(tmp_path):
    images = write_nnunet(tmp_path, case_ids=("A_001", "A_002"))
    with pytest.raises(CaseError, match=r"2 cases.*A_001_0000"):
        naming.case_files(images)


def test_msd_file_and_folder(tmp_path):
    path = write_msd(tmp_path)
    files = naming.case_files(path)
    assert files.naming == "msd"
    assert files.multichannel == (path, ("flair", "t1", "t1c", "t2"))
    assert files.seg == tmp_path / "labelsTr" / "BRATS_001.nii.gz"
    assert naming.case_files(path.parent).multichannel[0] == path


def test_duplicate_modality_names_both_files(tmp_path):
    folder = write_case_2021(tmp_path)
    write_nifti(folder / "BraTS2021_00000_fla.nii.gz", base_volume())
    with pytest.raises(CaseError, match=r"_fla\.nii\.gz.*_flair\.nii\.gz.*FLAIR"):
        naming.case_files(folder)


def test_a_file_naming_no_modality_beside_the_scans_does_not_stop_the_case(tmp_path):
    """The scans tell their modalities apart: the odd file is set aside (issue 21, item 1)."""
    folder = write_case_2021(tmp_path)
    write_nifti(folder / "notes_scan.nii.gz", base_volume())
    files = naming.case_files(folder)
    assert len(files.images) == 4 and files.unnamed == [folder / "notes_scan.nii.gz"]
    assert files.naming == "brats2021"


def test_unassignable_files_alone_are_refused(tmp_path):
    write_nifti(tmp_path / "case" / "notes_scan.nii.gz", base_volume())
    write_nifti(tmp_path / "case" / "other.nii.gz", base_volume())
    with pytest.raises(CaseError, match=r"notes_scan\.nii\.gz.*_t1ce"):
        naming.case_files(tmp_path / "case")


def test_a_label_map_beside_the_challenge_seg_is_an_extra_segmentation(tmp_path):
    folder = write_case_2021(tmp_path)
    write_nifti(folder / "BraTS2021_00000_pred.nii.gz", base_volume())
    files = naming.case_files(folder)
    # The BraTS-named _seg stays the ground truth and the case keeps its BraTS 2021 naming.
    assert files.seg == folder / "BraTS2021_00000_seg.nii.gz"
    assert files.extra_segs == [folder / "BraTS2021_00000_pred.nii.gz"]
    assert files.naming == "brats2021" and len(files.images) == 4


@pytest.mark.parametrize("mask_name", ["brainmask", "brain_mask", "bet_mask"])
def test_a_brain_mask_is_passed_over_never_taken_for_the_tumour(tmp_path, mask_name):
    # Loose names, no segmentation: a "..._brain_mask" used to be read as the case's labels.
    folder = write_case_loose(tmp_path, extra=False)
    mask = folder / f"TCGA-XX-0001_{mask_name}.nii.gz"
    write_nifti(mask, seg_volume())
    files = naming.case_files(folder)
    assert files.seg is None and len(files.images) == 4 and mask not in files.all_files
    assert any(mask.name in note and "brain mask" in note for note in files.notes)
    # Beside a BraTS-named _seg, the _seg stays the labels and the mask is no extra map.
    case = write_case_2021(tmp_path / "b")
    write_nifti(case / f"BraTS2021_00000_{mask_name}.nii.gz", seg_volume())
    files = naming.case_files(case)
    assert files.seg == case / "BraTS2021_00000_seg.nii.gz" and files.extra_segs == []
    with pytest.raises(CaseError, match="is a brain mask"):
        naming.case_files(mask)


def test_two_segmentations_are_ambiguous(tmp_path):
    folder = write_case_2021(tmp_path)
    (folder / "BraTS2021_00000_seg.nii.gz").rename(folder / "BraTS2021_00000_mask.nii.gz")
    write_nifti(folder / "BraTS2021_00000_label.nii.gz", base_volume())
    with pytest.raises(CaseError, match="2 segmentations"):
        naming.case_files(folder)


def test_missing_modality_is_noted(tmp_path):
    folder = write_case_2021(tmp_path)
    (folder / "BraTS2021_00000_t2.nii.gz").unlink()
    files = naming.case_files(folder)
    assert set(files.images) == {"t1", "t1c", "flair"}
    assert any("no T2" in n for n in files.notes)


def test_several_brats_cases_in_one_folder(tmp_path):
    write_case_2021(tmp_path, "A")
    for p in (tmp_path / "A").iterdir():
        p.rename(tmp_path / p.name)
    write_case_2021(tmp_path, "B")
    for p in (tmp_path / "B").iterdir():
        p.rename(tmp_path / p.name)
    with pytest.raises(CaseError, match="2 cases"):
        naming.case_files(tmp_path)


def test_empty_folder(tmp_path):
    with pytest.raises(CaseError, match="no NIfTI"):
        naming.case_files(tmp_path)


def test_lone_file_without_modality_name(tmp_path):
    path = write_nifti(tmp_path / "scan.nii.gz", base_volume())
    with pytest.raises(CaseError, match=r"scan\.nii\.gz"):
        naming.case_files(path)


def test_backend_imports_no_qt():
    code = (
        "import sys; import napari_brats_kd.io, napari_brats_kd.naming; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('PyQt5', 'PySide2', 'PyQt6', 'PySide6', 'qtpy', 'napari', 'magicgui')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
