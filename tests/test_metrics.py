"""Metrics: BraTS conventions for empty masks, known overlaps, HD95 in mm, folder evaluation."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from napari_brats_kd.errors import CaseError
from napari_brats_kd.metrics import (
    HD95_EMPTY_MM,
    dice,
    dice_torch,
    evaluate_folders,
    evaluate_labels,
    hd95,
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
