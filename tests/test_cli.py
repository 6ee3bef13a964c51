"""The brats-kd command line (cli.py) for segment, phantom and export; the training commands are
in tests/training/test_cli_training.py, evaluate's in tests/test_metrics.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _model_helpers import make_case, pointwise_model, ship_students, tiny_student
from napari_brats_kd import cli
from napari_brats_kd import orientation as orient
from napari_brats_kd.errors import CaseError, ModelInputError
from napari_brats_kd.inference import segment
from napari_brats_kd.labels import LabelConvention
from napari_brats_kd.phantom import make_phantom
from napari_brats_kd.volume import Volume

_SUFFIX = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}


def _write_case_folder(folder, case, affine, seg=None, zero=False):
    """``case``'s scans as a BraTS 2021 case folder (``zero``: every scan empty)."""
    folder.mkdir(parents=True)
    for m, vol in case.images.items():
        data = np.zeros_like(vol.file_data()) if zero else vol.file_data()
        nib.save(nib.Nifti1Image(data, affine), folder / f"{folder.name}_{_SUFFIX[m]}.nii.gz")
    if seg is not None:
        nib.save(nib.Nifti1Image(seg, affine), folder / f"{folder.name}_seg.nii.gz")
    return folder


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory):
    from napari_brats_kd.models import save_checkpoint

    student = tiny_student()
    return save_checkpoint(
        tmp_path_factory.mktemp("student") / "student", student.model, student.config
    )


def test_cli_segment_writes_labels_aligned_with_the_input(tmp_path, capsys, student_ckpt):
    from napari_brats_kd.cli import main

    # An RAS case with anisotropic voxels: the output must keep the input's grid exactly.
    affine = np.diag([1.2, 1.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, 5.0, 3.0]
    case = make_case(affine=affine)
    folder = _write_case_folder(tmp_path / "BraTS2021_00042", case, affine)
    out = tmp_path / "out" / "pred.nii.gz"
    assert main(["segment", str(folder), "-o", str(out), "--model", str(student_ckpt)]) == 0
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, affine)
    assert img.shape == case.images["t1"].file_shape
    assert img.get_data_dtype() == np.uint8
    # the file holds the same labels segment() returns, in the file's voxel order (this RAS file's
    # order is not the model's LPS order), and they are not empty, so the comparison means something
    result = segment(case, tiny_student())
    expected = Volume(result.labels, affine).file_data()
    assert np.count_nonzero(expected) > 20
    np.testing.assert_array_equal(np.asarray(img.dataobj), expected)
    assert "BraTS2021_00042" in capsys.readouterr().out
    # a folder of cases -> a folder of <case_id>_seg.nii.gz; the folder of the earlier output is
    # no case and is passed over
    many = tmp_path / "many"
    assert main(["segment", str(tmp_path), "-o", str(many), "--model", str(student_ckpt)]) == 0
    assert (many / "BraTS2021_00042_seg.nii.gz").is_file()
    capsys.readouterr()
    # an -o that is no NIfTI name and no folder is refused, not turned into a folder
    for name in ("seg.txt", "segnoext"):
        assert main(["segment", str(folder), "-o", str(tmp_path / name)]) == 2
        assert "neither a NIfTI file name" in capsys.readouterr().err
        assert not (tmp_path / name).exists()
    # one case into an existing folder: <case_id>_seg.nii.gz in it
    assert main(["segment", str(folder), "-o", str(many), "--overwrite"]) == 0
    # several cases into a file name: refused
    two = tmp_path / "two"
    for case_id in ("BraTS2021_00044", "BraTS2021_00045"):
        _write_case_folder(two / case_id, case, affine)
    assert main(["segment", str(two), "-o", str(tmp_path / "all.nii.gz")]) == 2
    assert "a folder of cases" in capsys.readouterr().err


def test_cli_segments_a_t1c_flair_case_with_the_student_that_fits(tmp_path, monkeypatch, capsys):
    from napari_brats_kd.cli import main

    ship_students(
        tmp_path, monkeypatch, {"student": ("t1c", "t1", "t2", "flair"), "s-2": ("t1c", "flair")}
    )
    case = make_case(modalities=("t1c", "flair"))
    folder = _write_case_folder(tmp_path / "BraTS2021_00043", case, orient.BRATS_AFFINE)
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(folder), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "BraTS2021_00043: used s-2 (T1c, FLAIR): the case has no T1, T2" in err
    written = nib.load(out)
    assert written.shape == case.reference.file_shape
    np.testing.assert_allclose(written.affine, orient.BRATS_AFFINE)


def test_cli_segment_batch_keeps_going_and_never_overwrites_unasked(tmp_path, capsys, student_ckpt):
    import hashlib

    from napari_brats_kd.cli import main

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    case = make_case(affine=affine)
    data = tmp_path / "data"
    seg = np.zeros(case.images["t1"].file_shape, np.uint8)
    seg[10:14, 10:14, 8:12] = 5  # a label no convention has: not needed to segment the scans
    _write_case_folder(data / "BraTS2021_00001", case, affine, seg=seg)
    _write_case_folder(data / "BraTS2021_00002", case, affine, zero=True)  # fails in inference
    _write_case_folder(data / "BraTS2021_00003", case, affine)
    ckpt = ["--model", str(student_ckpt)]

    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    truth = data / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    before = digest(truth)
    # The ground truth is never the output, not even with --overwrite, nor is the case folder.
    assert main(["segment", str(truth.parent), "-o", str(truth), "--overwrite", *ckpt]) == 2
    assert "ground truth is kept" in capsys.readouterr().err and digest(truth) == before
    assert main(["segment", str(truth.parent), "-o", str(truth.parent / "p.nii.gz"), *ckpt]) == 2
    assert "outside the case folder" in capsys.readouterr().err
    assert not (truth.parent / "p.nii.gz").exists()
    # A case failing inside inference is reported; the cases after it are still segmented.
    out = data / "predictions"  # inside the dataset: a later run must not take it for a case
    assert main(["segment", str(data), "-o", str(out), *ckpt]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "BraTS2021_00002" in err and "Every voxel" in err
    written = sorted(p.name for p in out.iterdir())
    assert written == ["BraTS2021_00001_seg.nii.gz", "BraTS2021_00003_seg.nii.gz"]
    # Running again refuses to replace the results before doing any work, unless asked to.
    stamp = (out / written[0]).stat().st_mtime_ns
    assert main(["segment", str(data), "-o", str(out), *ckpt]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / written[0]).stat().st_mtime_ns == stamp
    assert main(["segment", str(data), "-o", str(out), "--overwrite", *ckpt]) == 1
    assert digest(truth) == before
    # Two folders holding cases with one id would write one file: refused up front.
    _write_case_folder(tmp_path / "dup" / "siteB" / "BraTS2021_00003", case, affine)
    shutil.copytree(data / "BraTS2021_00003", tmp_path / "dup" / "siteA" / "BraTS2021_00003")
    assert main(["segment", str(tmp_path / "dup"), "-o", str(tmp_path / "dup_out"), *ckpt]) == 2
    assert "one case id" in capsys.readouterr().err and not (tmp_path / "dup_out").exists()
    with pytest.raises(SystemExit):
        main(["segment", str(data), "-o", str(out), "--threads", "0"])


def test_cli_writes_a_bare_2023_named_case_in_the_2023_convention(tmp_path, student_ckpt):
    """t1n / t1c / t2w / t2f without a case prefix are BraTS 2023 names: ET is written as 3."""
    from napari_brats_kd.cli import main
    from napari_brats_kd.io import load_case

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    case = make_case(affine=affine)
    folder = tmp_path / "patient_17"
    folder.mkdir()
    bare = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}
    for m, vol in case.images.items():
        nib.save(nib.Nifti1Image(vol.file_data(), affine), folder / f"{bare[m]}.nii.gz")
    loaded = load_case(folder)
    assert loaded.case_id == "patient_17" and loaded.naming == "brats2023"
    assert loaded.convention == LabelConvention.BRATS2023
    # A model that marks all three classes: the enhancing tumour comes out as 3, never 4.
    labels = segment(loaded, pointwise_model()).labels
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", str(folder), "-o", str(out), "--model", str(student_ckpt)]) == 0
    written = nib.load(out)
    assert b"brats2023" in bytes(written.header["descrip"])
    assert set(np.unique(np.asarray(written.dataobj)).tolist()) <= {0, 1, 2, 3}


def test_segment_folder_is_the_api_of_the_batch_command(tmp_path, student_ckpt):
    """The Python API does what `brats-kd segment DATASET -o OUT` does, without a terminal: one
    outcome per case, a failing case reported and skipped, the files aligned and named."""
    from napari_brats_kd import segment_folder

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    case = make_case(affine=affine)
    data = tmp_path / "data"
    _write_case_folder(data / "BraTS2021_00001", case, affine)
    _write_case_folder(data / "BraTS2021_00002", case, affine, zero=True)  # fails in inference
    done = segment_folder(data, tmp_path / "out", model=str(student_ckpt))
    assert [o.case_id for o in done.outcomes] == ["BraTS2021_00001", "BraTS2021_00002"]
    assert [o.case_id for o in done.failed] == ["BraTS2021_00002"]
    assert isinstance(done.failed[0].error, ModelInputError)
    first = done.outcomes[0]
    assert (
        first.output == tmp_path / "out" / "BraTS2021_00001_seg.nii.gz" and first.output.is_file()
    )
    written = nib.load(str(first.output))
    assert np.allclose(written.affine, affine) and written.shape == case.images["t1"].file_shape
    assert done.models == {first.result.model: 1}
    with pytest.raises(CaseError, match="overwrite"):
        segment_folder(data, tmp_path / "out", model=str(student_ckpt))


# ------------------------------------------------------------------------------ brats-kd phantom
def test_cli_writes_brats2021_cases(tmp_path: Path) -> None:
    status = cli.main(["phantom", str(tmp_path), "--n", "2", "--seed", "7", "--spacing", "4"])
    assert status == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BraTS2021_P00007", "BraTS2021_P00008"]
    folder = tmp_path / "BraTS2021_P00007"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"BraTS2021_P00007_{s}.nii.gz" for s in ("flair", "seg", "t1", "t1ce", "t2")]
    case = make_phantom(7, spacing=4)
    for suffix, key in (("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2"), ("flair", "flair")):
        img = nib.load(folder / f"BraTS2021_P00007_{suffix}.nii.gz")
        assert img.get_data_dtype() == np.int16
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.affine, case.images[key].affine)
        np.testing.assert_array_equal(np.asanyarray(img.dataobj), case.images[key].file_data())
    seg = nib.load(folder / "BraTS2021_P00007_seg.nii.gz")
    assert seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asanyarray(seg.dataobj))) == {0, 1, 2, 4}


def test_cli_rejects_bad_site(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["phantom", str(tmp_path), "--site", "Z", "--spacing", "4"]) == 2
    assert "Unknown phantom site" in capsys.readouterr().err


def test_cli_output_that_is_a_file_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert cli.main(["phantom", str(afile), "--n", "1", "--spacing", "4"]) == 2
    err = capsys.readouterr().err
    assert "brats-kd phantom: error:" in err and "afile" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def student():
    return tiny_student(("t1c", "flair"))


@pytest.mark.slow
def test_cli_export_writes_both_files(student, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from napari_brats_kd.cli import main
    from napari_brats_kd.models import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "s", student.model, student.config)
    onnx_path, ts_path = tmp_path / "s.onnx", tmp_path / "s_ts.pt"
    argv = ["export", str(ckpt), "--onnx", str(onnx_path), "--torchscript", str(ts_path)]
    assert main(argv) == 0
    assert onnx_path.is_file() and ts_path.is_file()
    out = capsys.readouterr().out
    assert "label agreement" in out and "onnx" in out and "torchscript" in out
    assert main(["export", str(ckpt)]) == 2  # nothing asked for: a user error, not a traceback
    assert "Nothing to do" in capsys.readouterr().err
