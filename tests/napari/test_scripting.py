"""Console API ``segment_viewer`` and the layers -> Case conversion, on a headless ViewerModel."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from napari_brats_kd.errors import CaseError, CheckpointError
from napari_brats_kd.labels import MODALITIES
from napari_brats_kd.volume import Case, Volume

FILE_SHAPE = (40, 40, 24)
# BraTS-like LPS affine (x and y flipped, offset on y).
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 39.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])


@pytest.fixture
def case() -> Case:
    rng = np.random.default_rng(1)
    images = {}
    for m in MODALITIES:
        data = rng.normal(100, 10, FILE_SHAPE).astype(np.float32)
        header = nib.Nifti1Header()
        header.set_data_shape(FILE_SHAPE)
        images[m] = Volume.from_file_order(data, AFFINE, header)
    return Case(case_id="script_case", images=images, naming="brats2021")


@pytest.fixture
def viewer(case):
    from napari.components import ViewerModel

    from napari_brats_kd._napari.layers import case_to_layer_data

    model = ViewerModel()
    for data, kwargs, kind in case_to_layer_data(case):
        getattr(model, f"add_{kind}")(data, **kwargs)
    return model


@pytest.fixture
def tiny_model(tmp_path):
    import torch

    from napari_brats_kd.models import (
        build_model,
        clear_session_models,
        register_model,
        save_checkpoint,
        student_config,
    )

    torch.manual_seed(0)
    config = student_config(("t1c", "flair"), preset="student-tiny")
    config.name = "script-student"
    path = save_checkpoint(tmp_path / "s.safetensors", build_model(config), config)
    register_model(path)
    yield path
    clear_session_models()


def test_segment_viewer_adds_an_aligned_labels_layer(viewer, tiny_model):
    from napari_brats_kd import segment_viewer

    result = segment_viewer(viewer, model="script-student", device="cpu")
    layer = viewer.layers["script_case tumor (script-student)"]
    assert layer.data.shape == viewer.layers["script_case FLAIR"].data.shape
    np.testing.assert_array_equal(layer.data, result.labels)
    np.testing.assert_allclose(layer.scale, viewer.layers["script_case FLAIR"].scale)
    meta = layer.metadata["brats_kd"]
    np.testing.assert_allclose(meta["affine"], AFFINE)
    assert meta["source_layers"] == {"t1c": "script_case T1c", "flair": "script_case FLAIR"}
    assert set(result.volumes_ml) == {"WT", "TC", "ET"}
    assert meta["volumes_ml"] == pytest.approx(result.volumes_ml)

    # Again: replaced by default, added with replace=False.
    segment_viewer(viewer, model="script-student", device="cpu")
    assert sum("tumor" in layer.name for layer in viewer.layers) == 1
    segment_viewer(viewer, model="script-student", device="cpu", replace=False)
    assert sum("tumor" in layer.name for layer in viewer.layers) == 2


def test_segment_viewer_explicit_layers_and_missing_modality(viewer, tiny_model):
    from napari_brats_kd import segment_viewer

    flair = viewer.layers["script_case FLAIR"]
    viewer.layers.remove(flair)
    with pytest.raises(CaseError, match="FLAIR"):
        segment_viewer(viewer, model="script-student")
    # A layer named by the user can stand in, by name, with an alias as key.
    viewer.add_image(flair.data, name="my flair", scale=flair.scale, metadata=flair.metadata)
    result = segment_viewer(
        viewer, model="script-student", layers={"t1ce": "script_case T1c", "FLAIR": "my flair"}
    )
    assert result.labels.shape == flair.data.shape


def test_segment_viewer_unknown_model_says_what_to_do(viewer):
    from napari_brats_kd import segment_viewer

    with pytest.raises(CheckpointError, match="brats-kd"):
        segment_viewer(viewer, model="no-such-model")


def test_find_modality_layers_prefers_metadata_then_names(viewer):
    from napari_brats_kd._napari.case_from_layers import find_modality_layers

    found = find_modality_layers(viewer.layers)
    assert list(found) == list(MODALITIES)
    assert found["t1c"].name == "script_case T1c"
    # A foreign layer named like a modality does not displace one of ours...
    viewer.add_image(np.zeros((4, 4, 4)), name="other_flair")
    assert find_modality_layers(viewer.layers)["flair"].name == "script_case FLAIR"
    # ...but is found when ours is gone; Labels layers are never picked.
    viewer.layers.remove("script_case FLAIR")
    viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="t2 labels")
    found = find_modality_layers(viewer.layers)
    assert found["flair"].name == "other_flair"
    assert found["t2"].name == "script_case T2"


def test_case_from_plain_layers_assumes_display_order(case):
    from napari.components import ViewerModel

    from napari_brats_kd._napari.case_from_layers import case_from_layers

    model = ViewerModel()
    flair = case.images["flair"]
    layer = model.add_image(flair.data, name="FLAIR", scale=(2.0, 1.0, 1.5))
    built, warnings = case_from_layers({"flair": layer})
    assert built.case_id == "image"
    assert len(warnings) == 1 and "FLAIR" in warnings[0]
    vol = built.images["flair"]
    # Display order kept as is; voxel sizes from the layer's scale.
    np.testing.assert_array_equal(vol.data, flair.data)
    assert vol.scale == pytest.approx((2.0, 1.0, 1.5))
    assert vol.voxel_volume_mm3 == pytest.approx(3.0)
    assert vol.file_axcodes == ("I", "P", "L")


def test_case_from_layers_rejects_mixed_grids_and_duplicates(viewer):
    from napari_brats_kd._napari.case_from_layers import case_from_layers

    t1 = viewer.layers["script_case T1"]
    other = viewer.add_image(np.zeros((10, 10, 10), np.float32), name="small T2")
    with pytest.raises(CaseError, match="different voxel grids"):
        case_from_layers({"t1": t1, "t2": other})
    with pytest.raises(CaseError, match="both"):
        case_from_layers({"t1": t1, "t2": t1})
    flat = viewer.add_image(np.zeros((10, 10), np.float32), name="flat")
    from napari_brats_kd.errors import InvalidVolumeError

    with pytest.raises(InvalidVolumeError, match="3D"):
        case_from_layers({"t1": flat})


def test_scripting_imports_no_qt():
    code = (
        "import sys, napari_brats_kd._napari.scripting, napari_brats_kd._napari.case_from_layers\n"
        "from napari_brats_kd import segment_viewer\n"
        "bad = [m for m in ('qtpy', 'PyQt5', 'napari', 'magicgui', 'torch') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
