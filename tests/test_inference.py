"""segment(): shapes, orientation, conventions, windows, TTA, cancellation, memory, CLI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from _model_helpers import make_case, pointwise_model, ship_students, tiny_student
from napari_brats_kd import inference, postprocess, predict_onnx, predict_torch
from napari_brats_kd import labels as lab
from napari_brats_kd.errors import Cancelled, CaseError, ModelInputError, ResourceError
from napari_brats_kd.inference import brain_bbox, segment
from napari_brats_kd.labels import LabelConvention
from napari_brats_kd.passes import count_windows
from napari_brats_kd.volume import Case


@pytest.fixture(scope="module")
def case():
    return make_case()


@pytest.fixture(scope="module")
def pointwise():
    return pointwise_model()


def test_labels_have_display_shape_and_nested_classes(case, pointwise):
    result = segment(case, pointwise, return_probabilities=True)
    ref = case.reference
    assert result.labels.shape == ref.data.shape
    assert result.labels.dtype == np.uint8
    assert result.convention == LabelConvention.BRATS2021
    assert set(np.unique(result.labels)) == {0, 1, 2, 4}  # all classes of the bright blob
    # display order is the model-order map reoriented
    np.testing.assert_array_equal(result.labels, Case.from_model_order(result.labels_model_order))
    # Every voxel of a region passed 0.5, and nesting holds: ET in TC in WT.
    masks = lab.labels_to_regions(result.labels, result.convention, result.regions)
    probs = result.probabilities
    assert probs.shape == (3, *ref.data.shape) and probs.dtype == np.float32
    tc, wt, et = masks
    assert np.all(wt[tc]) and np.all(tc[et])
    assert np.all(probs[result.regions.index("WT")][wt & ~tc] > 0.5)
    # Nothing outside the brain.
    brain = np.any([v.data != 0 for v in case.images.values()], axis=0)
    assert not np.any(result.labels[~brain])
    voxel_ml = ref.voxel_volume_mm3 / 1000
    assert result.volumes_ml["WT"] == pytest.approx(wt.sum() * voxel_ml)
    assert result.volumes_ml["ET"] == pytest.approx(et.sum() * voxel_ml)
    assert result.device == "cpu" and result.strategy == "full" and result.n_forward == 1


def test_convention_follows_case_or_request(pointwise):
    case23 = make_case(convention=LabelConvention.BRATS2023)
    r23 = segment(case23, pointwise)
    assert r23.convention == LabelConvention.BRATS2023
    assert set(np.unique(r23.labels)) == {0, 1, 2, 3}
    r21 = segment(case23, pointwise, convention="brats2021")
    np.testing.assert_array_equal(
        r21.labels, lab.convert_labels(r23.labels, "brats2023", "brats2021")
    )


def test_array_input_in_any_channel_order(case, pointwise):
    from_case = segment(case, pointwise)
    image = case.model_input(("flair", "t2", "t1", "t1c"))  # not the model's order
    from_array = segment(image, pointwise, modalities=("flair", "t2", "t1", "t1c"))
    np.testing.assert_array_equal(from_array.labels, from_case.labels)
    with pytest.raises(ModelInputError, match="channels"):
        segment(image[:3], pointwise)
    with pytest.raises(ModelInputError, match="FLAIR"):
        segment(image[1:], pointwise, modalities=("t2", "t1", "t1c"))
    with pytest.raises(ModelInputError, match="zero"):
        segment(np.zeros_like(image), pointwise)


def test_missing_modality_in_case_raises(pointwise):
    partial = make_case(modalities=("t1", "t1c", "t2"))
    with pytest.raises(CaseError, match="FLAIR"):
        segment(partial, pointwise)


def test_sliding_windows_agree_with_full_pass(case, pointwise):
    full = segment(case, pointwise, return_probabilities=True)
    calls = []
    windows = segment(
        case,
        pointwise,
        strategy="sliding",
        roi_size=(16, 16, 16),
        overlap=0.25,
        sw_batch_size=2,
        return_probabilities=True,
        progress=lambda done, total, msg: calls.append((done, total)),
    )
    assert windows.strategy == "sliding"
    np.testing.assert_allclose(windows.probabilities, full.probabilities, atol=1e-5)
    np.testing.assert_array_equal(windows.labels, full.labels)
    # progress: the scans ready, once per batch of windows, the labels made; it ends at total
    box = brain_bbox(case.model_input(pointwise.config.modalities))
    crop = [s.stop - s.start for s in box]
    expected = count_windows(crop, (16, 16, 16), 0.25, batch=2)
    assert windows.n_forward == expected > 1
    total = expected + 2
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_tta_averages_mirrored_passes(case, pointwise):
    plain = segment(case, pointwise, return_probabilities=True)
    tta = segment(case, pointwise, tta=True, return_probabilities=True)
    assert tta.n_forward == 8
    # a voxel-wise model is mirror-equivariant: flips must be undone exactly
    np.testing.assert_allclose(tta.probabilities, plain.probabilities, atol=1e-5)


def test_real_student_runs_with_tta_and_subset_modalities(case):
    student = tiny_student(("t1c", "flair"))
    result = segment(case, student, tta=True)
    assert result.labels.shape == case.reference.data.shape
    assert result.n_forward == 8
    assert set(np.unique(result.labels)) <= {0, 1, 2, 4}


def test_cancellation_between_passes(case, pointwise):
    with pytest.raises(Cancelled):
        segment(case, pointwise, should_stop=lambda: True)
    seen = []
    with pytest.raises(Cancelled):
        segment(
            case,
            pointwise,
            strategy="sliding",
            roi_size=(16, 16, 16),
            progress=lambda d, t, m: seen.append(d),
            should_stop=lambda: len(seen) >= 3,  # scans ready, then two passes
        )
    assert seen == [1, 2, 3]


def test_small_components_are_removed(case, pointwise):
    label_map = np.zeros((20, 20, 20), np.uint8)
    label_map[2:8, 2:8, 2:8] = 2  # 216 voxels of edema around
    label_map[4:6, 4:6, 4:6] = 4  # a core: same component
    label_map[15, 15, 15:17] = 1  # a 2-voxel speck
    cleaned = postprocess.remove_small_components(label_map, 10)
    assert cleaned[15, 15, 15] == 0 and cleaned[15, 15, 16] == 0
    np.testing.assert_array_equal(cleaned[:10], label_map[:10])
    # wired through segment(): a threshold above every component clears the map
    assert segment(case, pointwise).volumes_ml["WT"] > 0
    cleared = segment(case, pointwise, min_component_voxels=10**7)
    assert not cleared.labels.any() and cleared.volumes_ml["WT"] == 0


def test_a_case_without_t1_and_t2_gets_the_student_that_fits(tmp_path, monkeypatch):
    ship_students(
        tmp_path, monkeypatch, {"student": ("t1c", "t1", "t2", "flair"), "s-2": ("t1c", "flair")}
    )
    case = make_case(modalities=("t1c", "flair"))
    result = segment(case, "student")
    assert result.model == "s-2" and result.labels.shape == case.reference.data.shape
    assert "used s-2 (T1c, FLAIR): the case has no T1, T2, which student needs" in result.notes
    with pytest.raises(CaseError, match="No shipped student fits a case with FLAIR"):
        segment(make_case(modalities=("flair",)), "student")


def test_memory_refusal_is_a_resource_error(case, pointwise, monkeypatch):
    monkeypatch.setattr(predict_torch, "fits", lambda estimate, device, fraction=0.9: False)
    with pytest.raises(ResourceError, match="needs about"):
        segment(case, pointwise, device="cpu")


def test_memory_refusal_on_the_onnx_path_is_a_resource_error(case, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(predict_onnx, "fits", lambda estimate, device, fraction=0.9: False)
    with pytest.raises(ResourceError, match="needs about"):
        segment(case, "student", device="cpu")


def test_unavailable_device_is_a_resource_error(case, pointwise):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ResourceError, match="CUDA"):
        segment(case, pointwise, device="cuda")


def test_torch_and_onnxruntime_back_ends_agree(case):
    pytest.importorskip("onnxruntime")
    student = tiny_student(seed=3)
    by_torch = segment(case, student, backend="torch", return_probabilities=True)
    by_ort = segment(case, student, backend="onnxruntime", return_probabilities=True)
    assert (by_torch.backend, by_ort.backend) == ("torch", "onnxruntime")
    np.testing.assert_allclose(by_ort.probabilities, by_torch.probabilities, atol=1e-4)
    # labels may only differ where a probability sits within rounding of the 0.5 threshold
    assert (by_ort.labels == by_torch.labels).mean() > 0.999
    with pytest.raises(ModelInputError, match="backend"):
        segment(case, student, backend="tensorrt")


def test_crop_grows_to_the_network_stride_inside_the_volume():
    box = (slice(3, 20), slice(0, 5), slice(10, 30))
    grown = inference.grow_to_multiple(box, 8, (40, 6, 30))
    assert [s.stop - s.start for s in grown] == [24, 6, 24]  # 6: the whole axis, padded later
    for g, b, n in zip(grown, box, (40, 6, 30), strict=True):
        assert 0 <= g.start <= b.start and b.stop <= g.stop <= n


@pytest.mark.realdata
def test_real_case_segments_onto_its_own_grid(real_data_dir, tmp_path):
    from napari_brats_kd.io import load_case, save_labels

    folder = real_data_dir / "BraTS-GLI-00001-000"
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    case = load_case(folder, extra_segmentations=False)
    result = segment(case, tiny_student(), device="cpu")
    assert result.labels.shape == case.reference.data.shape
    assert result.convention == case.convention
    out = save_labels(tmp_path / "seg.nii.gz", result.labels, case.reference, result.convention)
    source = nib.load(next(folder.glob("*t1c.nii.gz")))
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.shape == source.shape


def _cgroup_tree(root: Path, group: str, files: dict[str, str]) -> None:
    node = root / group.strip("/")
    node.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (node / name).write_text(text)


def test_a_container_or_job_memory_limit_counts_as_the_free_memory(tmp_path) -> None:
    from napari_brats_kd.device import cgroup_free_memory

    gib = 2**30
    # cgroup v2: a SLURM job limited to 8 GiB using 5 GiB, 1 GiB of it reclaimable page cache;
    # the step below it has no limit of its own.
    proc = tmp_path / "cgroup_v2"
    proc.write_text("0::/job_7/step_0\n")
    _cgroup_tree(tmp_path / "v2", "/job_7", {
        "memory.max": f"{8 * gib}\n", "memory.current": f"{5 * gib}\n",
        "memory.stat": f"anon {4 * gib}\ninactive_file {gib}\n",
    })  # fmt: skip
    _cgroup_tree(tmp_path / "v2", "/job_7/step_0", {"memory.max": "max\n", "memory.current": "0"})
    assert cgroup_free_memory(tmp_path / "v2", proc) == 4 * gib
    # cgroup v1 (Docker --memory 2g, 0.5 GiB used); "no limit" is 2^63 rounded down to pages.
    proc = tmp_path / "cgroup_v1"
    proc.write_text("5:cpu:/\n4:memory:/docker/abc\n")
    _cgroup_tree(tmp_path / "v1" / "memory", "/docker/abc", {
        "memory.limit_in_bytes": f"{2 * gib}", "memory.usage_in_bytes": f"{gib // 2}",
    })  # fmt: skip
    _cgroup_tree(tmp_path / "v1" / "memory", "/", {
        "memory.limit_in_bytes": "9223372036854771712", "memory.usage_in_bytes": f"{20 * gib}",
    })  # fmt: skip
    assert cgroup_free_memory(tmp_path / "v1", proc) == gib + gib // 2
    # No limit anywhere, or no cgroup file (not Linux): None, and the system figure is used.
    proc.write_text("4:memory:/\n")
    assert cgroup_free_memory(tmp_path / "v1", proc) is None
    assert cgroup_free_memory(tmp_path / "v1", tmp_path / "missing") is None


def test_free_cpu_memory_is_the_smaller_of_the_machines_and_the_limits(monkeypatch) -> None:
    import napari_brats_kd.device as device

    monkeypatch.setattr(device, "_system_available", lambda: 16 * 2**30)
    monkeypatch.setattr(device, "cgroup_free_memory", lambda: 2 * 2**30)
    assert device.available_memory(torch.device("cpu")) == 2 * 2**30
    monkeypatch.setattr(device, "cgroup_free_memory", lambda: None)
    assert device.available_memory(torch.device("cpu")) == 16 * 2**30
