"""ONNX and TorchScript exports give the same probabilities and labels as PyTorch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _model_helpers import tiny_student
from napari_brats_kd.errors import CheckpointError
from napari_brats_kd.export import check_input, export_onnx, export_torchscript


@pytest.fixture(scope="module")
def student():
    return tiny_student(("t1c", "flair"))


def test_onnx_export_matches_pytorch(student, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    report = export_onnx(student, tmp_path / "student.onnx")
    assert report.max_abs_diff < 1e-4
    assert report.label_agreement > 0.999
    # dynamic spatial axes: another size runs and matches
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 2, 24, 16, 32)
    with torch.inference_mode():
        expected = student.model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected, atol=1e-4)
    props = {p.key: p.value for p in onnx.load(str(report.path)).metadata_props}
    assert json.loads(props["napari_brats_kd.config"])["modalities"] == ["t1c", "flair"]


def test_torchscript_export_matches_pytorch(student, tmp_path):
    report = export_torchscript(student, tmp_path / "student.pt")
    assert report.max_abs_diff < 1e-5
    assert report.label_agreement == 1.0
    files = {"config.json": ""}
    loaded = torch.jit.load(str(report.path), _extra_files=files)
    assert json.loads(files["config.json"])["arch"] == "student"
    x = torch.randn(1, 2, 16, 24, 16)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(x).numpy(), student.model(x).numpy(), atol=1e-5)


def test_check_input_is_stride_aligned_and_normalised(student):
    x = check_input(student)
    assert x.shape[:2] == (1, 2)
    assert all(s % 8 == 0 for s in x.shape[2:])
    brain = x[0, 0] != 0
    assert abs(float(x[0, 0][brain].mean())) < 1e-3


def test_export_of_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        export_torchscript(str(tmp_path / "missing.safetensors"), tmp_path / "x.pt")
