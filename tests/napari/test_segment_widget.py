"""GUI tests of the "Segment tumor" dock widgets (run under xvfb-run)."""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
from _event_loop import EventLoopProbe

from napari_brats_kd.labels import MODALITIES, napari_label_colors
from napari_brats_kd.volume import Case, Volume

pytestmark = pytest.mark.gui

PLUGIN = "napari-brats-kd"
STUDENT_WIDGET = "Segment tumor (student)"
TEACHER_WIDGET = "Segment tumor (teacher)"

# BraTS-like LPS affine (x and y flipped, offset on y) on a small 48x48x32 grid.
FILE_SHAPE = (48, 48, 32)
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 47.0], [0, 0, 1.0, 0], [0, 0, 0, 1]], dtype=float)


def make_case(case_id: str = "tiny_case", shape=FILE_SHAPE, seed: int = 0) -> Case:
    """Four random modality volumes with a bright blob, on a BraTS-like (LPS) grid."""
    rng = np.random.default_rng(seed)
    zz = np.indices(shape).astype(np.float32)
    centre = np.array(shape, np.float32)[:, None, None, None] / 2
    blob = np.exp(-((zz - centre) ** 2).sum(0) / 60.0)
    images = {}
    for i, m in enumerate(MODALITIES):
        data = (100 + 50 * blob * (i + 1) + rng.normal(0, 5, shape)).astype(np.float32)
        header = nib.Nifti1Header()
        header.set_data_shape(shape)
        images[m] = Volume.from_file_order(data, AFFINE, header)
    return Case(case_id=case_id, images=images, naming="brats2021")


@pytest.fixture
def tiny_student(tmp_path):
    """An untrained student small enough for 2 CPU cores, registered for this test only."""
    import torch

    from napari_brats_kd.models import (
        build_model,
        clear_session_models,
        save_checkpoint,
        student_config,
    )

    torch.manual_seed(0)
    config = student_config(preset="student-tiny")
    config.name = "tiny-student"
    config.description = "untrained test student"
    path = save_checkpoint(tmp_path / "tiny_student.safetensors", build_model(config), config)
    yield path
    clear_session_models()


def open_case(viewer, case: Case):
    from napari_brats_kd._napari.layers import case_to_layer_data

    for data, kwargs, kind in case_to_layer_data(case):
        getattr(viewer, f"add_{kind}")(data, **kwargs)


def open_widget(viewer, name: str = STUDENT_WIDGET):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def run_and_wait(qtbot, widget, timeout: int = 15000):
    task = widget.run()
    assert task is not None, "the widget refused to start"
    qtbot.waitUntil(lambda: not task.is_running, timeout=timeout)
    return task


def notifications_since(start: int) -> list:
    from napari.utils.notifications import notification_manager

    return list(notification_manager.records[start:])


def n_notifications() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def test_widget_autofills_runs_and_adds_aligned_labels(make_napari_viewer, qtbot, tiny_student):
    viewer = make_napari_viewer()
    case = make_case()
    open_case(viewer, case)
    widget = open_widget(viewer)

    for m in MODALITIES:
        picked = widget.modality_pickers[m].value
        assert picked is not None and picked.metadata["brats_kd"]["modality"] == m

    assert widget.load_model(tiny_student) == "tiny-student"
    assert widget.model_spec == "tiny-student"
    # The tiny student was configured with all four modalities (bundle order).
    assert widget.required_modalities == ("t1c", "t1", "t2", "flair")
    assert all(widget.modality_pickers[m].enabled for m in MODALITIES)

    run_and_wait(qtbot, widget)
    name = "tiny_case tumor (tiny-student)"
    assert name in viewer.layers
    layer = viewer.layers[name]
    source = viewer.layers["tiny_case FLAIR"]
    assert layer.data.shape == source.data.shape
    assert layer.data.dtype == np.uint8
    np.testing.assert_allclose(layer.scale, source.scale)
    meta = layer.metadata["brats_kd"]
    np.testing.assert_allclose(meta["affine"], AFFINE)
    assert meta["convention"] == "brats2021"
    assert meta["model"]
    # BraTS colours: enhancing tumour (label 4 in 2021) is yellow, background transparent.
    expected = napari_label_colors("brats2021")
    np.testing.assert_allclose(layer.colormap.map(4), expected[4], atol=1e-6)
    assert layer.colormap.map(0)[3] == 0
    # Volumes shown, one line per region.
    text = widget.volumes.value
    assert all(f"{r} " in text for r in ("WT", "TC", "ET")) and "cm³" in text
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert widget.last_result is not None
    np.testing.assert_array_equal(layer.data, widget.last_result.labels)


def test_opening_a_second_case_moves_the_pickers_but_keeps_hand_picks(make_napari_viewer):
    viewer = make_napari_viewer()
    open_case(viewer, make_case("first_case"))
    widget = open_widget(viewer)
    hand_picked = viewer.layers["first_case T2"]
    open_case(viewer, make_case("second_case", seed=1))
    # Run now segments the case just opened, not the first one again.
    for m in MODALITIES:
        assert widget.modality_pickers[m].value.metadata["brats_kd"]["case_id"] == "second_case"
    widget.modality_pickers["t2"].value = hand_picked
    open_case(viewer, make_case("third_case", seed=2))
    assert widget.modality_pickers["t2"].value is hand_picked
    assert widget.modality_pickers["t1"].value.metadata["brats_kd"]["case_id"] == "third_case"


def test_replace_keeps_one_layer_add_makes_another(make_napari_viewer, qtbot, tiny_student):
    from napari_brats_kd._napari.segment_widget import ADD, REPLACE

    viewer = make_napari_viewer()
    open_case(viewer, make_case())
    widget = open_widget(viewer)
    widget.load_model(tiny_student)

    def n_results():
        return sum(1 for layer in viewer.layers if "tumor (tiny-student)" in layer.name)

    widget.output_choice.value = REPLACE
    run_and_wait(qtbot, widget)
    run_and_wait(qtbot, widget)
    assert n_results() == 1
    widget.output_choice.value = ADD
    run_and_wait(qtbot, widget)
    assert n_results() == 2


def test_pickers_follow_model_modalities_and_layer_names(make_napari_viewer, tmp_path):
    """A T1c+FLAIR model shows two pickers; layers from another reader are matched by name."""
    from napari_brats_kd.models import (
        build_model,
        clear_session_models,
        save_checkpoint,
        student_config,
    )

    viewer = make_napari_viewer()
    case = make_case()
    for m, vol in case.images.items():
        # Plain layers without our metadata, named as another tool might name them.
        viewer.add_image(vol.data, name=f"scan_{m.upper()}", scale=vol.scale)
    config = student_config(("t1c", "flair"), preset="student-tiny")
    config.name = "t1c-flair-student"
    path = save_checkpoint(tmp_path / "two.safetensors", build_model(config), config)
    try:
        widget = open_widget(viewer)
        assert widget.load_model(path) == "t1c-flair-student"
        assert widget.required_modalities == ("t1c", "flair")
        shown = {m for m, p in widget.modality_pickers.items() if not p.native.isHidden()}
        assert shown == {"t1c", "flair"}
        assert widget.modality_pickers["flair"].value.name == "scan_FLAIR"
        assert widget.modality_pickers["t1c"].value.name == "scan_T1C"
        assert set(widget.selected_layers()) == {"t1c", "flair"}
    finally:
        clear_session_models()


def test_missing_shipped_model_and_bad_checkpoint_notify(
    make_napari_viewer, qtbot, tmp_path, monkeypatch
):
    from napari_brats_kd.models import registry

    # An install whose weights are gone (e.g. a trimmed package): an empty shipped index.
    (tmp_path / "index.json").write_text('{"models": []}')
    monkeypatch.setattr(registry, "INDEX_FILE", tmp_path / "index.json")
    viewer = make_napari_viewer()
    open_case(viewer, make_case())
    widget = open_widget(viewer, TEACHER_WIDGET)
    assert widget.default_model == "teacher"

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a checkpoint")
    start = n_notifications()
    assert widget.load_model(bad) is None
    messages = [str(n.message) for n in notifications_since(start)]
    assert any("broken.safetensors" in m for m in messages), messages

    widget.model_picker.value = "teacher"
    start = n_notifications()
    task = widget.run()
    qtbot.waitUntil(lambda: task is None or not task.is_running, timeout=10000)
    messages = [str(n.message) for n in notifications_since(start)]
    assert any("teacher" in m and "brats-kd" in m for m in messages), messages
    assert widget.run_button.enabled
    assert not any("tumor" in layer.name for layer in viewer.layers)


def _slow_segment(seconds: float, record: dict | None = None):
    """A segment() stand-in that does real torch work for ``seconds``, honouring should_stop,
    then runs the real segment()."""
    from napari_brats_kd.inference import segment as real_segment

    def segment(case, model="student", *, progress=None, should_stop=None, **kwargs):
        import torch

        from napari_brats_kd.errors import Cancelled

        steps = 50
        conv = torch.nn.Conv3d(4, 4, 3, padding=1)
        x = torch.randn(1, 4, 32, 32, 32)
        start = time.perf_counter()
        for i in range(steps):
            if should_stop is not None and should_stop():
                raise Cancelled("stopped by the user")
            deadline = start + seconds * (i + 1) / steps
            with torch.no_grad():
                while time.perf_counter() < deadline:
                    conv(x)
            if progress is not None:
                progress(i + 1, steps, f"step {i + 1}/{steps}")
        result = real_segment(case, model=model, **kwargs)
        if record is not None:
            record["backend_done"] = time.perf_counter()
        return result

    return segment


def test_far_spot_option_reaches_segment_and_its_note_is_shown(
    make_napari_viewer, qtbot, tiny_student, monkeypatch
):
    from napari_brats_kd import inference

    real_segment = inference.segment
    asked = []

    def recording_segment(*args, **kwargs):
        asked.append(kwargs["drop_far_components"])
        result = real_segment(*args, **kwargs)
        result.notes.append("dropped 1 doubtful component(s), 0.3 ml in all")
        return result

    monkeypatch.setattr(inference, "segment", recording_segment)
    viewer = make_napari_viewer()
    open_case(viewer, make_case())
    widget = open_widget(viewer)
    widget.load_model(tiny_student)
    assert widget.far_box.value is True  # on by default, as in segment()
    start = n_notifications()
    run_and_wait(qtbot, widget)
    widget.far_box.value = False
    run_and_wait(qtbot, widget)
    assert asked == [True, False]
    shown = [str(n.message) for n in notifications_since(start)]
    assert sum("tiny_case: dropped 1 doubtful component" in m for m in shown) == 2


def test_cancel_stops_a_run(make_napari_viewer, qtbot, tiny_student, monkeypatch):
    from napari_brats_kd import inference

    monkeypatch.setattr(inference, "segment", _slow_segment(20.0))
    viewer = make_napari_viewer()
    open_case(viewer, make_case())
    widget = open_widget(viewer)
    widget.load_model(tiny_student)
    n_layers = len(viewer.layers)
    start = n_notifications()
    task = widget.run()
    assert widget.cancel_button.enabled and not widget.run_button.enabled
    # Busy (animated) until the first count arrives: a one-pass run has nothing else to show.
    assert widget.progress_bar.max == 0
    qtbot.waitUntil(lambda: widget.progress_bar.value >= 1, timeout=10000)
    assert widget.progress_bar.max == 50
    widget.cancel_button.changed.emit(True)  # as a click does
    t0 = time.perf_counter()
    qtbot.waitUntil(lambda: not task.is_running, timeout=10000)
    assert time.perf_counter() - t0 < 5
    assert len(viewer.layers) == n_layers
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert any("cancelled" in str(n.message) for n in notifications_since(start))


def test_event_loop_stays_responsive_while_a_model_runs(
    make_napari_viewer, qtbot, tiny_student, monkeypatch
):

    from napari_brats_kd import inference

    record: dict = {}
    monkeypatch.setattr(inference, "segment", _slow_segment(1.2, record))
    viewer = make_napari_viewer()
    open_case(viewer, make_case())
    widget = open_widget(viewer)
    widget.load_model(tiny_student)

    probe = EventLoopProbe(qtbot)
    probe.start()
    task = widget.run()
    qtbot.waitUntil(lambda: not task.is_running, timeout=20000)
    probe.stop()
    # While the backend runs in its thread (adding the layer afterwards is GUI-thread work).
    longest, ticks = probe.longest_gap(until=record["backend_done"])
    assert record["backend_done"] - probe.t0 >= 1.0
    assert ticks > 20
    assert longest < 0.1, f"event loop stalled for {longest * 1000:.0f} ms"
    assert "tiny_case tumor (tiny-student)" in viewer.layers


def test_result_saves_aligned_with_source(make_napari_viewer, qtbot, tiny_student, tmp_path):
    viewer = make_napari_viewer()
    case = make_case()
    open_case(viewer, case)
    widget = open_widget(viewer)
    widget.load_model(tiny_student)
    run_and_wait(qtbot, widget)
    layer = viewer.layers["tiny_case tumor (tiny-student)"]
    out = tmp_path / "pred.nii.gz"
    written = layer.save(str(out), plugin=PLUGIN)
    assert written
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, AFFINE)
    assert img.shape == FILE_SHAPE
    np.testing.assert_array_equal(np.asarray(img.dataobj), Volume(layer.data, AFFINE).file_data())


def test_segment_viewer_non_blocking_returns_a_running_task(
    make_napari_viewer, qtbot, tiny_student
):
    from napari_brats_kd import segment_viewer
    from napari_brats_kd.models import register_model

    viewer = make_napari_viewer()
    open_case(viewer, make_case())
    register_model(tiny_student)
    results = []
    task = segment_viewer(viewer, model="tiny-student", blocking=False)
    task.worker.returned.connect(results.append)
    qtbot.waitUntil(lambda: not task.is_running, timeout=15000)
    assert len(results) == 1
    layer = viewer.layers["tiny_case tumor (tiny-student)"]
    np.testing.assert_array_equal(layer.data, results[0].labels)


def test_a_t1c_flair_case_is_run_by_the_student_that_fits(make_napari_viewer, qtbot):
    """A case with FLAIR and T1c only: the student widget says which model will run, and why."""
    full = make_case()
    case = Case(
        case_id="two_scans",
        images={m: full.images[m] for m in ("t1c", "flair")},
        naming="brats2021",
    )
    viewer = make_napari_viewer()
    open_case(viewer, case)
    widget = open_widget(viewer)
    assert set(widget.required_modalities) == {"t1c", "flair"}
    assert "student-t1cflair" in widget.model_info.value and "no T1, T2" in widget.model_info.value
    assert not widget.modality_pickers["t1"].visible
    run_and_wait(qtbot, widget, timeout=60000)
    assert widget.last_result is not None
    assert "t1cflair" in widget.last_result.model.lower() or any(
        "student-t1cflair" in note for note in widget.last_result.notes
    )


def test_after_a_run_the_view_goes_to_the_largest_lesion(make_napari_viewer, qtbot, monkeypatch):
    from napari_brats_kd import inference
    from napari_brats_kd.labels import LabelConvention

    case = make_case()
    lesion = (slice(4, 8), slice(30, 36), slice(5, 9))  # display order, far from the middle

    def fake_segment(case, model="student", **kwargs):
        labels = np.zeros(case.reference.data.shape, np.uint8)
        labels[lesion] = 2
        labels[20, 20, 20] = 2  # a one-voxel speck elsewhere: not the largest
        return inference.SegmentationResult(
            labels=labels,
            convention=LabelConvention.BRATS2021,
            volumes_ml={"WT": 0.1, "TC": 0.0, "ET": 0.0},
            model="fake",
            device="cpu",
            seconds=0.0,
        )

    monkeypatch.setattr(inference, "segment", fake_segment)
    viewer = make_napari_viewer()
    open_case(viewer, case)
    widget = open_widget(viewer)
    run_and_wait(qtbot, widget)
    layer = widget.last_layer
    voxel = [int(np.rint(v)) for v in layer.world_to_data(viewer.dims.point)]
    for axis, sl in enumerate(lesion):
        assert sl.start <= voxel[axis] < sl.stop, (voxel, lesion)


def test_images_of_two_patients_picked_together_are_warned_about(
    make_napari_viewer, qtbot, tiny_student
):
    """The T2 of one case picked with the rest of another runs, but not without a word."""
    viewer = make_napari_viewer()
    open_case(viewer, make_case("patient_a"))
    open_case(viewer, make_case("patient_b", seed=1))
    widget = open_widget(viewer)
    widget.load_model(tiny_student)
    widget.modality_pickers["t2"].value = viewer.layers["patient_a T2"]
    start = n_notifications()
    run_and_wait(qtbot, widget, timeout=60000)
    messages = [str(n.message) for n in notifications_since(start)]
    assert any("2 different cases" in m and "T2 from patient_a" in m for m in messages), messages
    # One case's own modalities: no such warning.
    widget.modality_pickers["t2"].value = viewer.layers["patient_b T2"]
    start = n_notifications()
    run_and_wait(qtbot, widget, timeout=60000)
    assert not any("different cases" in str(n.message) for n in notifications_since(start))


def test_a_blank_modality_is_named_in_a_notification(make_napari_viewer, qtbot, tiny_student):
    case = make_case("blank_t1c")
    t1c = case.images["t1c"]
    case.images["t1c"] = Volume(np.zeros_like(t1c.data), t1c.affine, t1c.header)
    viewer = make_napari_viewer()
    open_case(viewer, case)
    widget = open_widget(viewer)
    widget.load_model(tiny_student)
    start = n_notifications()
    run_and_wait(qtbot, widget, timeout=60000)
    messages = [str(n.message) for n in notifications_since(start)]
    assert any("T1c scan is blank" in m for m in messages), messages
    assert not any("tumor" in layer.name.lower() for layer in viewer.layers)
    assert widget.run_button.enabled
