"""napari reader/writer: every naming opens in a real viewer, the right way round, and saves back.

Run with ``xvfb-run -a .venv/bin/pytest tests/napari -m gui``.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from _nifti_factory import (
    FRONT_MARKER,
    LEFT_MARKER,
    SHAPE,
    base_volume,
    write_case_2021,
    write_case_2023,
    write_case_loose,
    write_msd,
    write_nifti,
    write_nnunet,
)
from napari_brats_kd._napari.reader import get_reader
from napari_brats_kd._napari.writer import write_labels

pytestmark = pytest.mark.gui

PLUGIN = "napari-brats-kd"
DISPLAY_SHAPE = (SHAPE[2], SHAPE[1], SHAPE[0])
MOD_NAMES = ["T1", "T1c", "T2", "FLAIR"]


def _collect(severity_name: str):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    severity = NotificationSeverity[severity_name]
    seen: list[str] = []

    def collect(notification):
        if notification.severity == severity:
            seen.append(str(notification.message))

    notification_manager.notification_ready.connect(collect)
    return seen, lambda: notification_manager.notification_ready.disconnect(collect)


@pytest.fixture
def errors():
    """Error notifications shown by napari (collected as they are emitted)."""
    seen, stop = _collect("ERROR")
    yield seen
    stop()


@pytest.fixture
def warnings_shown():
    """Warning notifications shown by napari."""
    seen, stop = _collect("WARNING")
    yield seen
    stop()


def _check_orientation(layer):
    """Left-hemisphere marker on the screen's right, anterior marker at the top."""
    data = np.asarray(layer.data)
    centre = (np.array(data.shape) - 1) / 2
    left = np.argwhere(data == LEFT_MARKER * (MOD_NAMES.index(layer.name.split()[-1]) + 1))
    front = np.argwhere(data == FRONT_MARKER * (MOD_NAMES.index(layer.name.split()[-1]) + 1))
    assert left[:, 2].mean() > centre[2]
    assert front[:, 1].mean() < centre[1]


@pytest.mark.parametrize(
    ("make", "opened", "case_id", "n_labels"),
    [
        (lambda p: write_case_2021(p, orientation="LPS"), "folder", "BraTS2021_00000", 1),
        (lambda p: write_case_2021(p, orientation="RAS"), "folder", "BraTS2021_00000", 1),
        (write_case_2023, "folder", "BraTS-GLI-00000-000", 1),
        (lambda p: write_nnunet(p, dataset_json=None), "folder", "BraTS2021_00000", 1),
        (
            lambda p: (
                write_nnunet(p, channels=("flair", "t2", "t1", "t1c"), dataset_json="v2")
                / "BraTS2021_00000_0001.nii.gz"
            ),
            "file",
            "BraTS2021_00000",
            1,
        ),
        (write_msd, "file", "BRATS_001", 1),
        (write_case_loose, "folder", "TCGA-XX-0001", 2),
    ],
    ids=["2021-LPS", "2021-RAS", "2023", "nnunet", "nnunet-json", "msd", "loose"],
)
def test_open_every_naming(make_napari_viewer, tmp_path, errors, make, opened, case_id, n_labels):
    path = make(tmp_path)
    assert path.is_dir() == (opened == "folder")
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert errors == []
    names = [layer.name for layer in layers]
    expected_images = [f"{case_id} {m}" for m in MOD_NAMES]
    assert names[:4] == expected_images
    assert len(layers) == 4 + n_labels
    for layer in layers[:4]:
        assert layer._type_string == "image"
        assert layer.data.shape == DISPLAY_SHAPE
        assert tuple(layer.scale) == (1.0, 1.0, 1.0)
        assert layer.colormap.name == "gray"
        meta = layer.metadata["brats_kd"]
        assert meta["case_id"] == case_id
        assert meta["display_axcodes"] == ("I", "P", "L")
        assert isinstance(meta["affine"], np.ndarray)
        _check_orientation(layer)
    labels = layers[4]
    assert labels._type_string == "labels"
    if n_labels == 1:
        assert labels.name == f"{case_id} segmentation"
        assert labels.metadata["brats_kd"]["convention_reason"]
    assert set(labels.metadata["brats_kd"]["label_names"]) <= {1, 2, 3, 4}


def test_anisotropic_scale(make_napari_viewer, tmp_path, errors):
    path = write_nifti(tmp_path / "c_flair.nii.gz", base_volume(), "LPS", zooms=(0.5, 0.8, 2.0))
    viewer = make_napari_viewer()
    layers = viewer.open(path, plugin=PLUGIN)
    assert errors == []
    (layer,) = layers
    assert layer.name == "c FLAIR"
    assert tuple(layer.scale) == pytest.approx((2.0, 0.8, 0.5))


@pytest.mark.parametrize("orientation", ["LPS", "RAS"])
def test_save_labels_layer_round_trip(make_napari_viewer, tmp_path, orientation):
    import napari

    folder = write_case_2021(tmp_path / "in", orientation=orientation)
    viewer = make_napari_viewer()
    viewer.open(folder, plugin=PLUGIN)
    seg_layer = viewer.layers["BraTS2021_00000 segmentation"]
    seg_layer.data[0, 0, 0] = 1  # a brush stroke
    out = tmp_path / "out" / "edited.nii.gz"
    written = napari.save_layers(str(out), [seg_layer], plugin=PLUGIN)
    assert written == [str(out)]
    src = nib.load(str(folder / "BraTS2021_00000_seg.nii.gz"))
    new = nib.load(str(out))
    np.testing.assert_allclose(new.affine, src.affine)
    assert nib.aff2axcodes(new.affine) == tuple(orientation)
    expected = np.asanyarray(src.dataobj).copy()
    diff = np.argwhere(np.asanyarray(new.dataobj) != expected)
    assert len(diff) == 1  # only the painted voxel changed, in the file's own voxel order
    (layer_back,) = [lyr for lyr in viewer.open(out, plugin=PLUGIN) if lyr._type_string == "labels"]
    np.testing.assert_array_equal(layer_back.data, seg_layer.data)


def test_save_through_viewer_layers_save_with_target_convention(make_napari_viewer, tmp_path):
    folder = write_case_2021(tmp_path / "in")
    viewer = make_napari_viewer()
    viewer.open(folder, plugin=PLUGIN)
    layer = viewer.layers["BraTS2021_00000 segmentation"]
    layer.metadata["brats_kd"]["target_convention"] = "brats2023"
    out = tmp_path / "as2023.nii.gz"
    viewer.layers.selection = {layer}
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]
    assert set(np.unique(np.asanyarray(nib.load(str(out)).dataobj)).tolist()) == {0, 1, 2, 3}


def test_hand_painted_layer_without_metadata_warns(tmp_path):
    data = np.zeros((155, 240, 240), np.uint8)
    data[80, 30, 200] = 2  # anterior, patient's left
    with pytest.warns(UserWarning, match="BraTS affine"):
        (path,) = write_labels(str(tmp_path / "p.nii.gz"), data, {"metadata": {}})
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert img.shape == (240, 240, 155)
    small = np.zeros((4, 5, 6), np.uint8)
    with pytest.warns(UserWarning, match="RAS affine"):
        (path2,) = write_labels(str(tmp_path / "q.nii"), small, {"scale": (3.0, 2.0, 1.0)})
    assert nib.load(path2).header.get_zooms() == (1.0, 2.0, 3.0)


def _not_gzip(p):
    path = p / "x_t1.nii.gz"
    path.write_bytes(b"not an image at all" * 30)
    return path


def _too_short(p):
    path = p / "scan_seg.nii"
    path.write_bytes(b"\x00" * 100)
    return path


def _duplicate_flair(p):
    folder = write_case_2021(p)
    write_nifti(folder / "a_fla.nii.gz", base_volume())
    return folder


def _flat_nnunet(p):
    return write_nnunet(p, case_ids=("A_001", "A_002"))


def _dataset(p):
    write_case_2021(p / "d1", "A")
    write_case_2021(p / "d1", "B")
    return p / "d1"


@pytest.mark.parametrize(
    ("make_bad", "message"),
    [
        (_not_gzip, "not gzip"),
        (_too_short, "too short"),
        (_duplicate_flair, "all map to FLAIR"),
        (_flat_nnunet, "2 cases"),
        (_dataset, "2 cases"),
    ],
    ids=["not-gzip", "too-short", "duplicate", "nnunet-flat", "dataset"],
)
def test_bad_input_gives_notification(make_napari_viewer, tmp_path, errors, make_bad, message):
    path = make_bad(tmp_path)
    viewer = make_napari_viewer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes as a warning either
        layers = viewer.open(path, plugin=PLUGIN)
    assert layers == []
    assert len(viewer.layers) == 0
    assert len(errors) == 1
    assert message in errors[0]
    assert path.name in errors[0]


def test_get_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader(str(tmp_path / "missing.nii.gz")) is None
    assert get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) is None
    folder = write_case_2021(tmp_path)
    assert callable(get_reader(str(folder)))
    assert callable(get_reader(str(tmp_path)))  # a dataset folder: the reader explains


def test_folder_of_one_label_map_opens_as_labels(tmp_path):
    # Datasets pass over folders of label maps alone (e.g. brats-kd segment outputs); opened on
    # its own, such a folder still shows its label map.
    folder = tmp_path / "preds"
    folder.mkdir()
    seg = np.zeros((8, 9, 10), np.uint8)
    seg[2:5, 3:6, 4:7] = 2
    nib.save(nib.Nifti1Image(seg, np.eye(4)), folder / "BraTS2021_00001_seg.nii.gz")
    layers = get_reader(str(folder))(str(folder))
    assert [kind for _, _, kind in layers] == ["labels"]
    assert np.count_nonzero(np.asarray(layers[0][0]) == 2) == 27


def test_scan_with_unknown_name_opens_as_plain_image(
    make_napari_viewer, tmp_path, errors, warnings_shown
):
    path = write_nifti(tmp_path / "scan.nii.gz", base_volume(), "RAS")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin=PLUGIN)
    assert errors == []
    assert len(warnings_shown) == 1
    assert "Shown as a plain image" in warnings_shown[0]
    assert layer.name == "scan"
    assert layer.metadata["brats_kd"]["modality"] is None
    assert np.argwhere(layer.data == LEFT_MARKER)[:, 2].mean() > (layer.data.shape[2] - 1) / 2


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("folder", "labels_shown"),
    [("BraTS-GLI-00001-000", None), ("TCGA-DU-7294", "TCGA-DU-7294 fusion_simple")],
)
def test_real_cases_open_in_the_viewer(
    make_napari_viewer, real_data_dir, errors, folder, labels_shown
):
    """Both real cases open with four modalities on one grid; TCGA shows its fused segmentation."""
    viewer = make_napari_viewer()
    viewer.open(real_data_dir / folder, plugin=PLUGIN)
    assert errors == []
    images = [layer for layer in viewer.layers if layer._type_string == "image"]
    labels = [layer for layer in viewer.layers if layer._type_string == "labels"]
    assert [layer.name for layer in images] == [f"{folder} {m}" for m in MOD_NAMES]
    for layer in [*images, *labels]:
        assert layer.data.shape == (155, 240, 240)  # display order (I, P, L) of a 240x240x155 file
        np.testing.assert_allclose(layer.scale, (1.0, 1.0, 1.0))
        assert layer.metadata["brats_kd"]["file_axcodes"] == ("L", "P", "S")
    visible = [layer.name for layer in labels if layer.visible]
    assert visible == ([labels_shown] if labels_shown else [])


def test_the_reader_claims_nifti_files_and_folders_only(tmp_path):
    """napari must not offer this plugin (and then blame it) for a .txt or .bin file."""
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    note = tmp_path / "notes.txt"
    note.write_text("not a scan")
    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"\0" * 16)
    case = tmp_path / "case"
    case.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), case / "x_flair.nii.gz")

    def ours(path) -> bool:
        return any(r.plugin_name == "napari-brats-kd" for r in pm.iter_compatible_readers(path))

    assert not ours(str(note)) and not ours(str(blob))
    assert ours(str(case / "x_flair.nii.gz")) and ours(str(case))
    assert get_reader(str(note)) is None


def test_a_met_folder_opens_with_its_unnamed_label_map(make_napari_viewer, tmp_path, errors):
    from _nifti_factory import seg_volume, write_case_2023, write_nifti
    from napari_brats_kd.labels import convert_labels

    folder = write_case_2023(tmp_path, "BraTS-MET-00001-000", seg=False)
    labels = convert_labels(seg_volume(), "brats2021", "brats2023")
    write_nifti(folder / "aurora_t1c_only_model_output_from_tutorials.nii.gz", labels)
    viewer = make_napari_viewer()
    layers = viewer.open(folder, plugin=PLUGIN)
    assert errors == []
    kinds = [layer._type_string for layer in layers]
    assert kinds.count("image") == 4 and kinds.count("labels") == 1
    assert any("aurora" in layer.name for layer in layers if layer._type_string == "labels")
