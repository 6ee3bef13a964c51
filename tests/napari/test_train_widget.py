"""GUI tests of the "Train student (distillation)" dock widget (run under xvfb-run).

Runs are real (the training engine on tiny phantoms with a tiny untrained teacher), made fast by
tiny patches and a few steps per epoch given through the widget's "Extra settings" field.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from _event_loop import EventLoopProbe

pytestmark = pytest.mark.gui

PLUGIN = "napari-brats-kd"
TRAIN_WIDGET = "Train student (distillation)"
STUDENT_WIDGET = "Segment tumor (student)"

#: A tiny SegResNet teacher (stride 8) and engine settings that keep a run to a few seconds.
TINY_TEACHER = {"init_filters": 8, "blocks_down": [1, 1, 1, 1], "blocks_up": [1, 1, 1]}
FAST = "samples_per_case=2; warmup_epochs=0; num_workers=0; val_fraction=0.25"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Four phantom cases (40x40x26 voxels) and a tiny teacher trained for one short epoch.

    Training the teacher here also performs the engine's one-off lazy imports (MONAI transforms,
    torch's compiler stack on the first optimizer step). In the pytest process their first import
    triggers a full garbage collection that holds the interpreter for 0.35-0.5 s whichever thread
    runs it (a fresh napari session showed no such pause); the responsiveness test measures
    training, not that once-per-process pause.
    """
    import torch

    from napari_brats_kd.phantom import write_phantom_dataset
    from napari_brats_kd.training import load_config, train_teacher

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("train_widget")
    cases = write_phantom_dataset(root / "data", n=4, seed=0, spacing=6.0)
    teacher = root / "tiny_teacher.safetensors"
    cfg = load_config(
        "teacher",
        {
            "data_dir": str(root / "data"),
            "run_dir": str(root / "teacher_run"),
            "out": str(teacher),
            "epochs": 1,
            "steps_per_epoch": 1,
            "batch_size": 1,
            "patch_size": [16, 16, 16],
            "num_workers": 0,
            "val_fraction": 0.25,
            "model.arch_args": {**TINY_TEACHER, "dropout_prob": None},
            "model.name": "tiny-teacher",
        },
    )
    train_teacher(cfg)
    return {"dir": root / "data", "case": cases[0], "teacher": teacher}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Settings in a temporary folder; no registered model leaks into other tests."""
    from napari_brats_kd._napari._settings import CONFIG_DIR_ENV
    from napari_brats_kd.models import clear_session_models

    monkeypatch.setenv(CONFIG_DIR_ENV, str(tmp_path / "config"))
    clear_session_models()
    yield
    clear_session_models()


def open_widget(viewer, name: str = TRAIN_WIDGET):
    _dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def configure(
    widget, data, tmp_path, epochs: int = 2, extra: str = "", mode: str = "Distil student"
) -> None:
    """A run of a tiny student (or fine-tuning of the tiny teacher), a few seconds long."""
    widget.mode_picker.value = mode
    widget.data_dir.value = data["dir"]
    assert widget.load_model(data["teacher"]) == "tiny-teacher"
    widget.student_preset.value = "student-tiny"
    widget.epochs.value = epochs
    widget.patch_size.value = 16
    widget.batch_size.value = 1
    widget.augment.value = "none"
    widget.output_dir.value = tmp_path / "runs"
    widget.extra.value = f"{FAST}; {extra}"


def wait_done(qtbot, task, timeout: int = 30000) -> None:
    assert task is not None, "the widget refused to start"
    qtbot.waitUntil(lambda: not task.is_running, timeout=timeout)


def n_notifications() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def messages_since(start: int) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records[start:]]


def test_distillation_plots_registers_and_keeps_napari_responsive(
    make_napari_viewer, qtbot, data, tmp_path, monkeypatch
):

    from napari_brats_kd._napari import train_widget as tw
    from napari_brats_kd._napari.compare import difference_labels
    from napari_brats_kd.models import load_checkpoint

    record: dict = {}
    real_train = tw._train

    def timed_train(*args, **kwargs):
        result = real_train(*args, **kwargs)
        record["backend_done"] = time.perf_counter()
        return result

    monkeypatch.setattr(tw, "_train", timed_train)
    viewer = make_napari_viewer()
    segment = open_widget(viewer, STUDENT_WIDGET)  # opened before training: its list must refresh
    widget = open_widget(viewer)
    configure(widget, data, tmp_path, extra="steps_per_epoch=2; val_every=1")

    probe = EventLoopProbe(qtbot)
    probe.start()
    task = widget.start()
    assert widget.stop_button.enabled and not widget.start_button.enabled
    wait_done(qtbot, task)
    probe.stop()

    # The Qt event loop kept answering while the engine trained in its thread.
    longest, ticks = probe.longest_gap(until=record["backend_done"])
    assert ticks > 20
    assert longest < 0.1, f"event loop stalled for {longest * 1000:.0f} ms"

    # The live plot got every step, both epoch means and both validations.
    plot = widget.plot
    assert plot.steps == [1, 2, 3, 4]
    assert plot.epochs == [1, 2] and plot.val_epochs == [1, 2]
    assert all(0.0 <= d <= 1.0 for r in ("WT", "TC", "ET") for d in plot.val_dice[r])
    assert plot.n_draws > 1

    result = widget.last_result
    assert result is not None and not result.stopped and result.epochs_done == 2
    student = load_checkpoint(result.best_checkpoint)
    assert student.config.arch == "student" and student.config.provenance["kind"] == "distill"
    assert student.config.provenance["teacher"] == "tiny-teacher"

    # Registered under the run's name and listed in the Segment widget opened earlier.
    name = widget.trained_model
    assert name == result.run_dir.name and name.startswith("student-")
    assert name in [value for value in segment.model_picker.choices]
    table = widget.results.value
    assert all(region in table for region in ("WT", "TC", "ET")) and "*" in table
    assert widget.segment_button.enabled and widget.start_button.enabled
    # The settings of the run were saved (in the test's own config folder).
    saved = json.loads((Path(tmp_path / "config") / "train_widget.json").read_text())
    assert saved["data_dir"] == str(data["dir"]) and saved["mode"] == "distill"

    # Segment current case: the new student and its teacher side by side, and their difference.
    viewer.open(str(data["case"]), plugin=PLUGIN)
    case_id = data["case"].name
    seg_task = widget.segment_current_case()
    wait_done(qtbot, seg_task)
    new_layer = viewer.layers[f"{case_id} tumor ({name})"]
    ref_layer = viewer.layers[f"{case_id} tumor (tiny-teacher)"]
    diff_layer = viewer.layers[f"{case_id} {name} vs tiny-teacher"]
    flair = viewer.layers[f"{case_id} FLAIR"]
    assert new_layer.data.shape == ref_layer.data.shape == diff_layer.data.shape
    assert diff_layer.data.shape == flair.data.shape
    np.testing.assert_array_equal(
        diff_layer.data, difference_labels(new_layer.data, ref_layer.data)
    )
    assert "agreement" in widget.status.value


def test_stop_keeps_a_checkpoint_and_resume_continues(make_napari_viewer, qtbot, data, tmp_path):
    from napari_brats_kd.models import load_checkpoint

    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    configure(widget, data, tmp_path, epochs=3, extra="steps_per_epoch=3; val_every=5")
    task = widget.start()
    qtbot.waitUntil(lambda: len(widget.plot.steps) >= 4, timeout=30000)  # in epoch 2
    widget.stop_button.changed.emit(True)  # as a click does
    wait_done(qtbot, task)
    stopped = widget.last_result
    assert stopped.stopped and 1 <= stopped.epochs_done < 3
    assert load_checkpoint(stopped.last_checkpoint).config.arch == "student"
    # The stopped run's last checkpoint can be tried at once, and Resume continues the run.
    assert widget.trained_model == stopped.run_dir.name
    assert widget.segment_button.enabled and "Segment current case" in widget.status.value
    assert widget.resume_button.enabled and "Resume" in widget.status.value
    steps_before = list(widget.plot.steps)

    task = widget.resume()
    wait_done(qtbot, task)
    resumed = widget.last_result
    assert resumed.run_dir == stopped.run_dir
    assert not resumed.stopped and resumed.epochs_done == 3
    assert [int(r["epoch"]) for r in resumed.history] == [1, 2, 3]
    # The interrupted epoch is redone from its first step (3 steps per epoch); the plot shows the
    # epochs finished before the stop (from the run's log) and the new ones.
    assert steps_before == list(range(1, len(steps_before) + 1))
    assert widget.plot.steps[0] == 3 * stopped.epochs_done + 1
    assert widget.plot.steps[-1] == 9  # the 9 steps planned, not more
    assert widget.plot.epochs == [1, 2, 3]
    assert widget.trained_model == resumed.run_dir.name


def test_bad_input_becomes_notifications(make_napari_viewer, qtbot, data, tmp_path):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    configure(widget, data, tmp_path, epochs=1, extra="steps_per_epoch=1")

    widget.data_dir.value = tmp_path / "no_such_folder"
    start = n_notifications()
    assert widget.start() is None
    assert any("no_such_folder" in m for m in messages_since(start))
    assert widget.start_button.enabled
    widget.data_dir.line_edit.value = ""  # an empty field: "No dataset folder", not "'.'"
    start = n_notifications()
    assert widget.start() is None
    assert any("No dataset folder: pick" in m for m in messages_since(start))

    # The teacher needs T2, one case lacks it: the run fails with a message naming both.
    broken = tmp_path / "broken"
    shutil.copytree(data["dir"], broken)
    case = sorted(p for p in broken.iterdir() if p.is_dir())[0]
    next(case.glob("*_t2.nii.gz")).unlink()
    widget.data_dir.value = broken
    start = n_notifications()
    task = widget.start()
    wait_done(qtbot, task)
    messages = messages_since(start)
    assert any("T2" in m and case.name in m for m in messages), messages
    assert widget.last_result is None and widget.start_button.enabled
    assert widget.status.value.startswith("Failed")

    widget.extra.value = "epochz=3"
    widget.data_dir.value = data["dir"]
    start = n_notifications()
    assert widget.start() is None
    assert any("epochz" in m for m in messages_since(start))


def test_modes_show_their_controls_and_settings_persist(make_napari_viewer, data, tmp_path):
    from napari_brats_kd.training import cpu_overrides, load_config

    viewer = make_napari_viewer()
    widget = open_widget(viewer)

    def shown(w) -> bool:
        return not w.native.isHidden()

    # Defaults come from the shipped configs, with the CPU sizes (no GPU here).
    distill_defaults = load_config("distill", cpu_overrides("distill"))
    assert widget.mode.key == "distill"
    assert widget.epochs.value == distill_defaults.epochs
    assert widget.temperature.value == distill_defaults.temperature
    assert widget.augment.value == distill_defaults.augment.preset
    assert widget.kd_label_correction.value == distill_defaults.kd_label_correction
    assert shown(widget.temperature) and shown(widget.modalities_row)
    assert shown(widget.kd_label_correction)
    assert not shown(widget.unlabeled_dir) and not shown(widget.freeze)

    configure(widget, data, tmp_path)
    widget.modality_boxes["t1"].value = False
    widget.modality_boxes["t2"].value = False
    assert widget.build_config(tmp_path / "run").kd_label_correction is False
    widget.kd_label_correction.value = True
    cfg = widget.build_config(tmp_path / "run")
    assert cfg.kd_label_correction is True
    assert cfg.teacher == str(data["teacher"]) and cfg.model.modalities == ["t1c", "flair"]
    assert cfg.patch_size == [16, 16, 16] and cfg.num_workers == 0

    widget.mode_picker.value = "Fine-tune"
    finetune_defaults = load_config("finetune", cpu_overrides("finetune"))
    assert widget.epochs.value == finetune_defaults.epochs
    assert widget.freeze.value and widget.model_picker.label == "Pretrained model"
    assert shown(widget.freeze) and shown(widget.pretrained_lr_factor)
    assert not shown(widget.temperature) and not shown(widget.modalities_row)
    assert not shown(widget.kd_label_correction)
    cfg = widget.build_config(tmp_path / "run")
    assert cfg.init_from == str(data["teacher"]) and cfg.freeze == ["encoder"]
    assert cfg.pretrained_lr_factor == finetune_defaults.pretrained_lr_factor

    widget.mode_picker.value = "Train teacher"
    assert shown(widget.teacher_arch) and not shown(widget.model_picker)
    cfg = widget.build_config(tmp_path / "run")
    assert cfg.model.kind == "teacher" and cfg.model.arch == "segresnet"

    widget.mode_picker.value = "Adapt to unlabelled scans"
    assert shown(widget.unlabeled_dir) and shown(widget.unlabeled_weight)
    from napari_brats_kd.errors import TrainingError

    with pytest.raises(TrainingError, match="Unlabelled folder"):
        widget.build_config(tmp_path / "run")
    widget.unlabeled_dir.value = data["dir"]
    assert widget.build_config(tmp_path / "run").unlabeled_dir == str(data["dir"])

    # Back to distillation: the values set for it earlier come back.
    widget.mode_picker.value = "Distil student"
    assert widget.epochs.value == 2 and not widget.modality_boxes["t1"].value
    widget.epochs.value = 7
    widget._save_settings()

    # A new widget (a new napari session) starts where this one left off.
    viewer2 = make_napari_viewer()
    again = open_widget(viewer2)
    assert again.mode.key == "distill" and again.epochs.value == 7
    assert str(again.data_dir.value) == str(data["dir"])
    assert again.model_picker.value == "tiny-teacher"
    assert not again.modality_boxes["t2"].value and again.modality_boxes["flair"].value


def test_fine_tune_mode_trains_from_a_checkpoint(make_napari_viewer, qtbot, data, tmp_path):
    from napari_brats_kd.models import load_checkpoint

    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    configure(widget, data, tmp_path, epochs=1, extra="steps_per_epoch=1", mode="Fine-tune")
    task = widget.start()
    wait_done(qtbot, task)
    result = widget.last_result
    assert result is not None and result.epochs_done == 1
    tuned = load_checkpoint(result.best_checkpoint or result.last_checkpoint)
    assert tuned.config.provenance["kind"] == "finetune"
    assert widget.trained_model.startswith("finetuned-")
    assert widget.reference_model == str(data["teacher"])


def test_out_of_memory_is_explained_and_the_checkpoint_kept(
    make_napari_viewer, qtbot, data, tmp_path, monkeypatch
):
    from napari_brats_kd.models import load_checkpoint
    from napari_brats_kd.training import engine

    real_step = engine.train_step
    calls = {"n": 0}

    def step_then_oom(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:  # the second epoch's step: as when memory runs out mid-run
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", step_then_oom)
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    configure(widget, data, tmp_path, epochs=2, extra="steps_per_epoch=1; val_every=5")
    start = n_notifications()
    wait_done(qtbot, widget.start())
    messages = messages_since(start)
    assert any("Out of memory" in m and "batch_size" in m for m in messages), messages
    assert "last checkpoint is kept" in widget.status.value.replace("\n", " ")
    assert load_checkpoint(widget.last_run_dir / "last.safetensors").config.arch == "student"
    assert widget.resume_button.enabled and widget.start_button.enabled


def test_adapt_to_the_case_open_in_the_viewer(make_napari_viewer, qtbot, data, tmp_path):
    from napari_brats_kd.io import load_case
    from napari_brats_kd.models import load_checkpoint

    viewer = make_napari_viewer()
    viewer.open(str(data["case"]), plugin=PLUGIN)
    widget = open_widget(viewer)
    mode = "Adapt to unlabelled scans"
    configure(widget, data, tmp_path, epochs=1, extra="steps_per_epoch=1", mode=mode)
    widget.use_viewer_case.value = True
    assert not widget.use_viewer_case.native.isHidden()
    wait_done(qtbot, widget.start())
    result = widget.last_result
    assert result is not None and result.epochs_done == 1
    assert load_checkpoint(result.last_checkpoint).config.provenance["n_unlabeled"] == 1
    # The open case was written as a case folder that reads back as the same scans.
    written = load_case(result.run_dir / "viewer_cases" / data["case"].name)
    original = load_case(data["case"])
    for modality in ("t1", "t1c", "t2", "flair"):
        np.testing.assert_allclose(
            written.images[modality].data, original.images[modality].data, rtol=1e-5
        )
        np.testing.assert_allclose(
            written.images[modality].affine, original.images[modality].affine
        )


def open_cases(viewer, data, n: int) -> list[str]:
    """Open the first ``n`` phantom case folders with their segmentations; returns their ids."""
    folders = sorted(p for p in data["dir"].iterdir() if p.is_dir())[:n]
    for folder in folders:
        viewer.open(str(folder), plugin=PLUGIN)
    return [folder.name for folder in folders]


def test_train_on_the_labelled_cases_open_in_the_viewer(make_napari_viewer, qtbot, data, tmp_path):
    import nibabel as nib

    from napari_brats_kd.models import load_checkpoint

    viewer = make_napari_viewer()
    ids = open_cases(viewer, data, 3)
    widget = open_widget(viewer)
    configure(widget, data, tmp_path, epochs=1, extra="steps_per_epoch=1; val_every=1")
    widget.data_dir.value = tmp_path / "not_used"  # the open cases replace the folder
    widget.use_viewer_cases.value = True
    assert not widget.use_viewer_cases.native.isHidden() and not widget.data_dir.enabled
    wait_done(qtbot, widget.start())
    result = widget.last_result
    assert result is not None and result.epochs_done == 1 and not result.stopped

    # The run trained and validated on exactly the open cases, written into the run folder.
    split = json.loads((result.run_dir / "split.json").read_text())
    assert sorted(split["train"] + split["val"]) == ids and len(split["val"]) == 1
    log = tw_read_log(result.run_dir)
    assert [int(r["epoch"]) for r in log] == [1] and log[0]["val_mean_dice"] not in ("", None)
    student = load_checkpoint(result.best_checkpoint or result.last_checkpoint)
    assert student.config.arch == "student"
    # Each written ground truth is the case's segmentation file, voxel for voxel.
    for case_id in ids:
        written = result.run_dir / "viewer_labelled_cases" / case_id / f"{case_id}_seg.nii.gz"
        original = data["dir"] / case_id / f"{case_id}_seg.nii.gz"
        np.testing.assert_array_equal(
            np.asanyarray(nib.load(written).dataobj), np.asanyarray(nib.load(original).dataobj)
        )
    saved = json.loads((Path(tmp_path / "config") / "train_widget.json").read_text())
    assert saved["use_viewer_cases"] is True
    assert open_widget(make_napari_viewer()).use_viewer_cases.value  # a new session keeps it


def tw_read_log(run_dir: Path) -> list[dict]:
    from napari_brats_kd._napari.train_feedback import read_log as _read_log

    return _read_log(run_dir)


def test_open_cases_without_enough_labels_are_refused(make_napari_viewer, data, tmp_path):
    from napari_brats_kd._napari.case_from_layers import labelled_cases_from_layers
    from napari_brats_kd.labels import LabelConvention

    viewer = make_napari_viewer()
    first, second = open_cases(viewer, data, 2)
    # The second case's ground truth is a painted layer without the reader's metadata (labels
    # 1/2/3: the 2023 convention is detected), the first case lacks its T2 layer.
    painted = np.array(viewer.layers[f"{second} segmentation"].data)
    painted[painted == 4] = 3
    viewer.layers.remove(f"{second} segmentation")
    viewer.add_labels(painted, name=f"{second} segmentation")
    viewer.layers.remove(f"{first} T2")

    cases, messages = labelled_cases_from_layers(viewer.layers)
    assert [c.case_id for c in cases] == [second]
    assert cases[0].convention == LabelConvention.BRATS2023
    assert cases[0].seg.data.shape == cases[0].reference.data.shape
    assert any(first in m and "T2" in m and "skipped" in m for m in messages), messages
    # Without its T2 the first case still counts for a run that does not need T2.
    cases, _ = labelled_cases_from_layers(viewer.layers, modalities=("t1c", "flair"))
    assert [c.case_id for c in cases] == [first, second]

    widget = open_widget(viewer)
    configure(widget, data, tmp_path, epochs=1, extra="steps_per_epoch=1")
    widget.use_viewer_cases.value = True
    start = n_notifications()
    assert widget.start() is None
    messages = messages_since(start)
    assert any("1 labelled case" in m and "at least 2" in m and first in m for m in messages), (
        messages
    )
    assert widget.start_button.enabled and widget.task is None


def test_both_docks_fit_a_laptop_window(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 800)
    train = open_widget(viewer)
    student = open_widget(viewer, STUDENT_WIDGET)
    # A long message wraps instead of widening the dock.
    train.model_info.value = "a long model description " * 20
    student.status.value = "a long status line " * 20
    window.resize(1280, 800)
    qtbot.wait(300)
    # The train form scrolls: the window keeps its size, and the canvas keeps most of the width.
    assert window.height() <= 800
    for widget in (train, student):
        assert widget.native.minimumSizeHint().width() < 560
    assert viewer.window._qt_viewer.canvas.native.width() > 400


@pytest.mark.parametrize(
    ("mode", "shipped"), [("Train teacher", "teacher"), ("Distil student", "distill")]
)
def test_a_run_has_the_same_defaults_from_the_widget_the_cli_and_python(
    make_napari_viewer, data, tmp_path, mode, shipped
):
    """The shipped YAML is the one source of defaults: the widget (controls untouched), the
    command line (no flags) and the Python dataclass all give the same run. On a CPU (this
    machine) the widget starts from the shipped CPU sizes, which the other two take as settings."""
    import argparse

    from napari_brats_kd.cli import _training_overrides
    from napari_brats_kd.training import (
        AugmentConfig,
        DistillConfig,
        TrainConfig,
        cpu_overrides,
        load_config,
    )

    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.mode_picker.value = mode
    widget.data_dir.value = data["dir"]
    where = {"data_dir": str(data["dir"]), "run_dir": str(tmp_path / "run")}
    if shipped == "distill":
        widget.load_model(data["teacher"])
        where["teacher"] = str(data["teacher"])
    from_widget = widget.build_config(tmp_path / "run").to_dict()

    args = argparse.Namespace(
        data_dir=data["dir"], out=None, run_dir=tmp_path / "run", epochs=None, max_minutes=None,
        batch_size=None, patch_size=None, lr=None, device=None, num_workers=None, augment=None,
        seed=None, split=None, overrides=[],
    )  # fmt: skip
    extra = {"teacher": str(data["teacher"])} if shipped == "distill" else {}
    cpu = cpu_overrides(shipped)
    assert widget.device_picker.value in ("auto", "cpu") and cpu["epochs"] < 20
    from_cli = load_config(shipped, {**_training_overrides(args, {}), **extra, **cpu}).to_dict()
    cls = DistillConfig if shipped == "distill" else TrainConfig
    # The dataclass takes the CPU sizes as arguments (an augmentation preset as its config).
    sizes = {k: v for k, v in cpu.items() if "." not in k}
    if "augment.preset" in cpu:
        sizes["augment"] = AugmentConfig(preset=cpu["augment.preset"])
    from_python = cls(**where, **sizes).to_dict()

    # The widget names its output and model after the run folder; the rest are defaults.
    ignore = {"out"}
    from_widget["model"].pop("name")
    for config in (from_cli, from_python):
        config["model"].pop("name")
    for key in sorted(set(from_python) - ignore):
        assert from_widget[key] == from_cli[key] == from_python[key], key


def _mean_brightness(plot) -> float:
    image = plot.image.pixmap().toImage()
    assert not image.isNull(), "the plot shows no image"
    width, height = image.width(), image.height()
    pixels = [image.pixelColor(x, y) for x in range(0, width, 7) for y in range(0, height, 7)]
    return float(np.mean([c.lightness() for c in pixels]))


def test_plot_follows_napari_theme(make_napari_viewer, qtbot):
    """On napari's dark theme the plot is dark, not a white block; it turns light with the theme."""
    viewer = make_napari_viewer()
    viewer.theme = "dark"
    widget = open_widget(viewer)
    plot = widget.plot
    qtbot.waitUntil(lambda: plot.idle and plot.n_draws > 0, timeout=10000)
    dark = _mean_brightness(plot)
    assert dark < 100, f"plot brightness {dark:.0f} of 255 on the dark theme"

    draws = plot.n_draws
    viewer.theme = "light"
    qtbot.waitUntil(lambda: plot.idle and plot.n_draws > draws, timeout=10000)
    light = _mean_brightness(plot)
    assert light > 160, f"plot brightness {light:.0f} of 255 on the light theme"

    # Closing the dock stops following the theme: switching back raises nothing.
    viewer.window.remove_dock_widget("all")
    viewer.theme = "dark"


def test_on_a_cpu_the_dock_is_cpu_sized_and_says_how_long_a_run_takes(
    make_napari_viewer, qtbot, data, tmp_path
):
    from napari_brats_kd.training import cpu_overrides

    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    widget.mode_picker.value = "Distil student"
    # This machine has no GPU: the defaults are the CPU sizes, not 100 epochs of 128^3 patches.
    assert widget.epochs.value == cpu_overrides("distill")["epochs"]
    assert widget.patch_size.value == 96
    assert "dataset folder" in widget.expected.value or widget.expected.value == ""

    configure(widget, data, tmp_path, epochs=3, extra="steps_per_epoch=4")
    qtbot.waitUntil(lambda: "Expected: about" in widget.expected.value, timeout=60000)
    assert "(12 steps x" in widget.expected.value  # 3 epochs of 4 steps, one step timed
    assert "measured on cpu" in widget.expected.value

    # More epochs re-count at once, without timing the network again.
    task = widget.estimate.task
    widget.epochs.value = 6
    qtbot.waitUntil(lambda: "(24 steps x" in widget.expected.value, timeout=10000)
    assert widget.estimate.task is task
