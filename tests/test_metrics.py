"""Metrics: BraTS conventions for empty masks, known overlaps, HD95 in mm, folder evaluation."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from _nifti_factory import seg_volume, write_msd, write_nifti, write_nnunet
from napari_brats_kd.errors import CaseError, LabelConventionError
from napari_brats_kd.metrics import (
    HD95_EMPTY_MM,
    dice,
    dice_torch,
    evaluate_folders,
    evaluate_labels,
    false_positive_ml,
    hd95,
    missed_lesions,
    summarize,
)


def _cube(shape=(20, 20, 20), lo=(5, 5, 5), size=(6, 6, 6)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + s) for a, s in zip(lo, size, strict=True))] = True
    return m


def test_both_empty_is_perfect() -> None:
    empty = np.zeros((8, 8, 8), bool)
    assert dice(empty, empty) == 1.0
    assert hd95(empty, empty) == 0.0


def test_one_empty_gets_brats_penalty() -> None:
    empty = np.zeros((20, 20, 20), bool)
    cube = _cube()
    assert dice(cube, empty) == 0.0
    assert dice(empty, cube) == 0.0
    assert hd95(cube, empty) == pytest.approx(373.13, abs=0.01)
    assert hd95(empty, cube) == HD95_EMPTY_MM


def test_dice_known_overlap() -> None:
    a = _cube(size=(4, 4, 4))  # 64 voxels
    b = _cube(lo=(7, 5, 5), size=(4, 4, 4))  # shifted by 2 along x: 32 voxels shared
    assert dice(a, b) == pytest.approx(2 * 32 / 128)
    assert dice(a, a) == 1.0


def test_hd95_uses_spacing_in_mm() -> None:
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros((10, 10, 10), bool)
    a[2, 5, 5] = True
    b[5, 5, 5] = True  # 3 voxels apart along axis 0
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, b, spacing=(2.0, 1.0, 1.0)) == pytest.approx(6.0)
    c = np.zeros((10, 10, 10), bool)
    c[2, 5, 7] = True  # 2 voxels along axis 2 from a
    assert hd95(a, c, spacing=(1.0, 1.0, 3.0)) == pytest.approx(6.0)


def test_hd95_identical_and_shifted_cubes() -> None:
    a = _cube(size=(6, 6, 6))
    assert hd95(a, a) == 0.0
    b = _cube(lo=(7, 5, 5), size=(6, 6, 6))  # faces move by 2 voxels
    assert hd95(a, b) == pytest.approx(2.0)


def test_hd95_of_masks_at_the_volume_edge_and_far_apart() -> None:
    # HD95 works on the masks' bounding box only; masks on the array's faces and in opposite
    # corners must give what the whole-volume definition gives (here written out in full).
    from scipy import ndimage

    def whole_volume_hd95(p, g, spacing):
        cross = ndimage.generate_binary_structure(3, 1)
        surf = [m & ~ndimage.binary_erosion(np.pad(m, 1), cross)[1:-1, 1:-1, 1:-1] for m in (p, g)]
        d = [ndimage.distance_transform_edt(~s, sampling=spacing) for s in surf]
        return float(np.percentile(np.concatenate([d[1][surf[0]], d[0][surf[1]]]), 95))

    rng = np.random.default_rng(3)
    for spacing in ((1.0, 1.0, 1.0), (1.0, 2.0, 3.0)):
        a = np.zeros((30, 20, 10), bool)
        a[0:3, 0:4, 0:10] = True  # on three faces of the array
        b = np.zeros_like(a)
        b[27:30, 16:20, 4:6] = True  # the opposite corner
        b |= rng.random(a.shape) > 0.995
        assert hd95(a, b, spacing) == whole_volume_hd95(a, b, spacing)


def test_false_positive_volume_counts_outside_and_far_voxels() -> None:
    gt = _cube(shape=(40, 20, 20), lo=(5, 5, 5), size=(6, 6, 6))
    pred = gt.copy()
    pred[11:13, 5:11, 5:11] = True  # a 2-voxel rim next to the tumour: 72 voxels
    pred[28:31, 5:8, 5:8] = True  # a blob 18 voxels away: 27 voxels
    assert false_positive_ml(pred, gt) == pytest.approx(99 / 1000)
    assert false_positive_ml(pred, gt, beyond_mm=10) == pytest.approx(27 / 1000)
    # millimetres, not voxels: at 0.5 mm along axis 0 the blob lies 9 mm away
    assert false_positive_ml(pred, gt, (0.5, 1, 1), beyond_mm=10) == 0.0
    assert false_positive_ml(pred, np.zeros_like(gt)) == pytest.approx(pred.sum() / 1000)
    assert false_positive_ml(gt, gt, beyond_mm=10) == 0.0


def test_missed_lesions_counts_large_untouched_components() -> None:
    gt = _cube(shape=(40, 20, 20), lo=(2, 2, 2), size=(8, 8, 8))  # 512 voxels
    gt[30:38, 2:10, 2:10] = True  # a second lesion, 512 voxels
    gt[20, 15, 15] = True  # a speck below min_ml
    pred = np.zeros_like(gt)
    pred[5, 5, 5] = True  # touches the first lesion only
    assert missed_lesions(pred, gt, min_ml=0.5) == 1
    assert missed_lesions(pred, gt, min_ml=0.001) == 2  # the speck counts too
    assert missed_lesions(gt, gt) == 0
    assert missed_lesions(pred, np.zeros_like(gt)) == 0


def test_dice_torch_matches_numpy() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    p = rng.random((2, 3, 6, 6, 6)) > 0.5
    t = rng.random((2, 3, 6, 6, 6)) > 0.5
    t[:, 2] = False
    p[:, 2] = False
    got = dice_torch(torch.from_numpy(p), torch.from_numpy(t)).numpy()
    for c in range(3):
        assert got[c] == pytest.approx(dice(p[:, c], t[:, c]))
    assert got[2] == 1.0


def test_evaluate_labels_regions_classes_and_volumes() -> None:
    gt = np.zeros((12, 12, 12), np.uint8)
    gt[2:10, 2:10, 2:10] = 2  # edema
    gt[4:8, 4:8, 4:8] = 1  # necrosis
    gt[5:7, 5:7, 5:7] = 4  # enhancing (2021 convention)
    m = evaluate_labels(gt, gt, "brats2021", spacing=(2.0, 2.0, 2.0), case_id="c")
    assert m.dice == {"WT": 1.0, "TC": 1.0, "ET": 1.0, "NCR": 1.0, "ED": 1.0}
    assert m.volume_gt_ml["WT"] == pytest.approx(8**3 * 8 / 1000)
    assert m.volume_gt_ml["ET"] == pytest.approx(2**3 * 8 / 1000)
    # The same labels written in the 2023 convention (ET = 3) score identically.
    from napari_brats_kd.labels import convert_labels

    pred23 = convert_labels(gt, "brats2021", "brats2023")
    m23 = evaluate_labels(pred23, gt, "brats2023", gt_convention="brats2021")
    assert m23.dice["ET"] == 1.0
    # Missing the enhancing tumour: ET Dice 0 and the BraTS HD95 penalty.
    pred = gt.copy()
    pred[pred == 4] = 1
    m2 = evaluate_labels(pred, gt, "brats2021")
    assert m2.dice["ET"] == 0.0
    assert m2.hd95["ET"] == HD95_EMPTY_MM
    assert m2.dice["WT"] == 1.0


def test_summarize_mean_std_median() -> None:
    rows = [{"case_id": "a", "dice_WT": 1.0}, {"case_id": "b", "dice_WT": 0.5}]
    s = summarize(rows)["dice_WT"]
    assert s["mean"] == 0.75 and s["median"] == 0.75 and s["std"] == pytest.approx(0.25)


@pytest.fixture(scope="module")
def phantom_cases(tmp_path_factory):
    from napari_brats_kd.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("gt")
    write_phantom_dataset(root, n=2, seed=3, spacing=4)
    return root


def test_evaluate_folders_and_cli_write_csv(phantom_cases, tmp_path) -> None:
    from napari_brats_kd.cli import main
    from napari_brats_kd.io import find_cases, load_case

    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for case_path in find_cases(phantom_cases):
        case = load_case(case_path)
        shutil.copy(case.seg.path, pred_dir / f"{case.case_id}.nii.gz")
    results, summary = evaluate_folders(pred_dir, phantom_cases, tmp_path / "m.csv")
    assert len(results) == 2
    assert summary["dice_WT"]["mean"] == 1.0
    assert summary["hd95_ET"]["mean"] == 0.0

    out = tmp_path / "cli.csv"
    assert main(["evaluate", str(pred_dir), str(phantom_cases), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["case_id"] for r in rows][-3:] == ["mean", "std", "median"]
    assert float(rows[0]["dice_TC"]) == 1.0
    assert "hd95_WT" in rows[0] and "vol_gt_ml_ET" in rows[0]


def test_evaluate_folders_without_matching_ids(phantom_cases, tmp_path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "other_case.nii.gz").write_bytes(b"")
    with pytest.raises(CaseError, match="No case id"):
        evaluate_folders(tmp_path / "pred", phantom_cases)


# --- label conventions of nnU-Net / MSD ground truth --------------------------------------------

#: Voxel counts of each region and class in ``_nifti_factory.seg_volume`` (1 mm voxels).
PHANTOM_VOXELS = {"WT": 64, "TC": 8, "ET": 1, "NCR": 7, "ED": 56}
PERFECT = dict.fromkeys(PHANTOM_VOXELS, 1.0)


def _write_dataset(layout: str, root) -> None:
    """Two tiny cases in nnU-Net (labels 1 ED, 2 NCR, 3 ET) or MSD (1 edema, 2 NCR, 3 ET) layout."""
    if layout == "nnunet":
        write_nnunet(root, case_ids=("BraTS2021_00000", "BraTS2021_00001"))
    else:
        for case_id in ("BRATS_001", "BRATS_002"):
            write_msd(root, case_id=case_id)


def _write_like_segment(gt_root, out_dir, convention: str | None = None) -> None:
    """A perfect prediction of each case, written as ``brats-kd segment -o out_dir`` writes it:
    ``<case_id>_seg.nii.gz`` on the case's grid, in ``convention`` (default: the case's own)."""
    from napari_brats_kd.io import find_cases, load_case, save_labels

    for case_path in find_cases(gt_root):
        case = load_case(case_path)
        save_labels(
            out_dir / f"{case.case_id}_seg.nii.gz",
            case.seg.data,
            case.reference,
            case.convention,
            convention,
        )


@pytest.mark.parametrize("layout", ["nnunet", "msd"])
@pytest.mark.parametrize("written", [None, "brats2021"], ids=["case-convention", "brats2021"])
def test_perfect_prediction_scores_one_against_nnunet_and_msd(layout, written, tmp_path) -> None:
    gt = tmp_path / "gt"
    _write_dataset(layout, gt)
    pred = tmp_path / "pred"
    _write_like_segment(gt, pred, written)
    # The dataset root, its flat labelsTr folder and its imagesTr folder all name the same labels.
    for gt_dir in (gt, gt / "labelsTr", gt / "imagesTr"):
        results, _ = evaluate_folders(pred, gt_dir)
        assert len(results) == 2
        for r in results:
            assert r.dice == PERFECT, (gt_dir.name, r.case_id)
            assert r.hd95 == dict.fromkeys(PHANTOM_VOXELS, 0.0)
            ml = {k: pytest.approx(n / 1000) for k, n in PHANTOM_VOXELS.items()}
            assert r.volume_gt_ml == ml
            assert r.volume_pred_ml == ml


@pytest.mark.parametrize("layout", ["nnunet", "msd"])
def test_dataset_scored_against_itself_reports_true_volumes(layout, tmp_path) -> None:
    gt = tmp_path / "gt"
    _write_dataset(layout, gt)
    results, _ = evaluate_folders(gt / "labelsTr", gt)
    for r in results:
        assert r.dice == PERFECT
        # TC is NCR + ET (8 voxels), not edema + ET as a 2023 reading of labels 1..3 would say.
        assert r.volume_gt_ml["TC"] == pytest.approx(0.008)
        assert r.volume_gt_ml["ED"] == pytest.approx(0.056)


def test_prediction_without_enhancing_tumour_keeps_its_recorded_convention(tmp_path) -> None:
    # Labels 1 and 2 alone fit both BraTS 2021 (1 NCR, 2 ED) and nnU-Net (1 ED, 2 NCR): the
    # convention brats-kd segment records in the file decides.
    from napari_brats_kd.io import find_cases, load_case, save_labels

    gt = tmp_path / "gt"
    _write_dataset("nnunet", gt)
    for case_path in find_cases(gt):
        case = load_case(case_path)
        no_et = case.seg.data.copy()
        no_et[no_et == 3] = 2  # enhancing voxel called necrosis (nnU-Net values)
        save_labels(
            tmp_path / "pred" / f"{case.case_id}_seg.nii.gz",
            no_et,
            case.reference,
            "nnunet",
            "brats2021",
        )
    results, _ = evaluate_folders(tmp_path / "pred", gt)
    for r in results:
        assert r.dice["WT"] == 1.0 and r.dice["TC"] == 1.0 and r.dice["ED"] == 1.0
        assert r.dice["ET"] == 0.0
        assert r.volume_pred_ml["NCR"] == pytest.approx(0.008)


def test_predictions_one_case_per_folder_and_recorded_ground_truth(tmp_path) -> None:
    # Predictions stored one case per folder (pred/<case>/<case>_seg.nii.gz) are found, and a
    # ground truth this plugin wrote in nnU-Net labels into a bare folder is read in them (its
    # header records it), not as BraTS 2023 with necrosis and edema swapped.
    gt = tmp_path / "gt"
    _write_dataset("nnunet", gt)
    bare_gt = tmp_path / "bare_gt"
    _write_like_segment(gt, bare_gt)  # nnU-Net values, recorded in the header
    flat = tmp_path / "flat"
    _write_like_segment(gt, flat, "brats2021")
    nested = tmp_path / "nested"
    for f in flat.iterdir():
        (nested / f.name.removesuffix("_seg.nii.gz")).mkdir(parents=True)
        f.rename(nested / f.name.removesuffix("_seg.nii.gz") / f.name)
    results, _ = evaluate_folders(nested, bare_gt)
    assert len(results) == 2
    for r in results:
        assert r.dice == PERFECT and r.gt_convention == "nnunet"
        assert r.volume_gt_ml["TC"] == pytest.approx(0.008)


def test_cli_convention_options_override_detection(tmp_path, capsys) -> None:
    from napari_brats_kd.cli import main

    gt = tmp_path / "gt"
    _write_dataset("nnunet", gt)
    # nnU-Net labels copied out of their dataset: nothing but the values says what they mean.
    refs = tmp_path / "refs"
    shutil.copytree(gt / "labelsTr", refs)
    # Predictions from another tool (no recorded convention), BraTS 2021 values, no ET voxel.
    pred = tmp_path / "pred"
    no_et = np.where(seg_volume() == 4, 1, seg_volume()).astype(np.uint8)
    for case_id in ("BraTS2021_00000", "BraTS2021_00001"):
        write_nifti(pred / f"{case_id}.nii.gz", no_et, "RAS")

    def run(*options: str) -> dict[str, float]:
        out = tmp_path / "m.csv"
        assert main(["evaluate", str(pred), str(refs), "--csv", str(out), *options]) == 0
        first = next(csv.DictReader(out.open()))
        return {k: float(v) for k, v in first.items() if k != "case_id"}

    # Detection reads labels 1..3 as BraTS 2023 and the prediction in the same convention.
    detected = run()
    assert detected["dice_TC"] < 0.5
    assert "ground truth read as: brats2023 (2)" in capsys.readouterr().out

    fixed = run("--gt-convention", "nnunet", "--pred-convention", "BraTS2021")
    assert fixed["dice_WT"] == fixed["dice_TC"] == fixed["dice_ED"] == 1.0
    assert fixed["dice_ET"] == 0.0
    assert fixed["vol_gt_ml_TC"] == pytest.approx(0.008)
    out = capsys.readouterr().out
    assert "ground truth read as: nnunet (2)" in out
    assert "predictions read as: brats2021 (2)" in out


def test_unknown_or_unfitting_convention_is_a_clear_error(tmp_path, capsys) -> None:
    from napari_brats_kd.cli import main

    gt = tmp_path / "gt"
    _write_dataset("msd", gt)
    pred = tmp_path / "pred"
    _write_like_segment(gt, pred, "brats2021")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(pred), str(gt), "--gt-convention", "brats2020"])
    assert exc.value.code == 2
    assert "invalid choice: 'brats2020'" in capsys.readouterr().err
    with pytest.raises(LabelConventionError, match="Unknown label convention 'brats2020'"):
        evaluate_folders(pred, gt, pred_convention="brats2020")
    # Label 4 cannot be BraTS 2023: the user is told which case and file, not given a traceback.
    assert main(["evaluate", str(pred), str(gt), "--pred-convention", "brats2023"]) == 2
    err = capsys.readouterr().err
    assert "BRATS_001_seg.nii.gz" in err and "[4]" in err


# --- what evaluate refuses or reports instead of scoring silently -------------------------------


def _write_shifted(path, data_ras: np.ndarray, shift_mm=(0.0, 0.0, 0.0), zooms=(1.0, 1.0, 1.0)):
    """A RAS label map whose grid is moved by ``shift_mm`` (world x, y, z) and/or rescaled."""
    import nibabel as nib

    from _nifti_factory import affine_for

    affine = affine_for("RAS", data_ras.shape, zooms)
    affine[:3, 3] += shift_mm
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data_ras, affine), str(path))


def test_prediction_on_another_grid_is_refused_naming_case_and_files(tmp_path) -> None:
    gt = tmp_path / "gt"
    write_nifti(gt / "case1.nii.gz", seg_volume(), "RAS")
    # The same world grid stored in the other voxel order lines up voxel for voxel: accepted.
    write_nifti(tmp_path / "lps" / "case1.nii.gz", seg_volume(), "LPS")
    results, _ = evaluate_folders(tmp_path / "lps", gt)
    assert results[0].dice["WT"] == 1.0
    # Same array, same shape, but 30 mm to the side: it used to score a perfect Dice.
    _write_shifted(tmp_path / "shifted" / "case1.nii.gz", seg_volume(), shift_mm=(30, 0, 0))
    with pytest.raises(CaseError) as exc:
        evaluate_folders(tmp_path / "shifted", gt)
    msg = str(exc.value)
    assert "'case1'" in msg and "different voxel grids" in msg
    assert "shifted by (30, 0, 0) mm" in msg
    assert str(tmp_path / "shifted" / "case1.nii.gz") in msg
    assert str(gt / "case1.nii.gz") in msg
    # Same shape, other voxel size.
    _write_shifted(tmp_path / "coarse" / "case1.nii.gz", seg_volume(), zooms=(2.0, 1.0, 1.0))
    with pytest.raises(CaseError, match="voxel sizes differ"):
        evaluate_folders(tmp_path / "coarse", gt)


@pytest.mark.parametrize(
    ("values", "dtype", "complaint"),
    [((0.1, 0.6), np.float32, "non-integer"), ((65538,), np.int32, "65538")],
    ids=["probability-map", "int32-beyond-uint8"],
)
def test_prediction_that_is_not_a_label_map_is_refused(values, dtype, complaint, tmp_path) -> None:
    from napari_brats_kd.errors import InvalidVolumeError

    gt = tmp_path / "gt"
    write_nifti(gt / "case1.nii.gz", seg_volume(), "RAS")
    # Where the ground truth has tumour the file holds the last value, elsewhere the first: a
    # probability map (or 65538, which an int16 cast wraps to 2) that used to score Dice 1.
    wt = seg_volume() > 0
    bad = np.where(wt, values[-1], values[0] if len(values) > 1 else 0).astype(dtype)
    write_nifti(tmp_path / "pred" / "case1_pred.nii.gz", bad, "RAS")
    with pytest.raises(InvalidVolumeError) as exc:
        evaluate_folders(tmp_path / "pred", gt)
    msg = str(exc.value)
    assert "'case1'" in msg and "case1_pred.nii.gz" in msg and "prediction" in msg
    assert complaint in msg


def test_cases_without_counterpart_are_reported_and_scored_empty_on_request(
    tmp_path, capsys
) -> None:
    from napari_brats_kd.cli import main
    from napari_brats_kd.metrics import UnmatchedCasesWarning

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for case_id in ("case1", "case2", "case3"):
        write_nifti(gt / f"{case_id}.nii.gz", seg_volume(), "RAS")
    write_nifti(pred / "case1.nii.gz", seg_volume(), "RAS")
    write_nifti(pred / "case_2.nii.gz", seg_volume(), "RAS")  # misnamed

    with pytest.warns(UnmatchedCasesWarning, match="case2, case3"):
        evaluation = evaluate_folders(pred, gt)
    results, summary = evaluation  # still unpacks as the (results, summary) pair
    assert [r.case_id for r in results] == ["case1"] and summary["dice_WT"]["n"] == 1
    assert evaluation.missing_predictions == ("case2", "case3")
    assert evaluation.unmatched_predictions == ("case_2",)

    assert main(["evaluate", str(pred), str(gt)]) == 0
    out = capsys.readouterr().out
    assert "1 case(s)" in out
    assert "2 ground-truth case(s) without prediction, left out of the scores: case2, case3" in out
    assert "1 prediction(s) matching no ground-truth case, ignored: case_2" in out

    # BraTS scores a missing prediction as an empty one: Dice 0 and the HD95 penalty.
    out_csv = tmp_path / "m.csv"
    assert main(["evaluate", str(pred), str(gt), "--missing-as-empty", "--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    assert "3 case(s)" in out and "scored as empty predictions: case2, case3" in out
    rows = {r["case_id"]: r for r in csv.DictReader(out_csv.open())}
    assert float(rows["case1"]["dice_WT"]) == 1.0
    for case_id in ("case2", "case3"):
        assert float(rows[case_id]["dice_WT"]) == 0.0
        assert float(rows[case_id]["hd95_ET"]) == pytest.approx(HD95_EMPTY_MM)
    assert float(rows["mean"]["dice_WT"]) == pytest.approx(1 / 3)
