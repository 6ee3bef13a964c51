"""The Train dock's form model without a display: its table maps configs to values and back."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from napari_brats_kd._napari import train_form as tf
from napari_brats_kd.training import apply_overrides, load_config


def test_the_form_model_imports_neither_qt_nor_napari_nor_magicgui_nor_torch():
    code = (
        "import sys; import napari_brats_kd._napari.train_form; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'magicgui', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_field_is_spelled_once():
    names = [f.name for f in tf.FIELDS]
    attrs = [f.attr for f in tf.FIELDS]
    assert len(set(names)) == len(names) and len(set(attrs)) == len(attrs)
    assert tf.MODEL_ROWS_AFTER in names
    for mode in tf.MODES:
        # Two fields may fill one setting (model.arch) only in different modes.
        keys = [f.config_key for f in tf.FIELDS if f.config_key and mode.key in f.modes]
        assert len(set(keys)) == len(keys), mode.key
        assert ("model" in mode.controls) == (mode.key in tf.MODEL_MODES)


@pytest.mark.parametrize("mode", tf.MODES, ids=lambda m: m.key)
def test_a_config_round_trips_through_the_table(mode):
    """Shipped defaults -> values -> overrides -> config -> the same values; changed values too."""
    defaults = tf.defaults_of(mode)
    assert set(defaults) == {f.name for f in tf.MODE_FIELDS}
    kd = load_config("distill")
    assert tf.config_values(load_config(mode.config, tf.to_overrides(defaults, mode)), kd) == (
        defaults
    )

    changed = {
        **defaults,
        "epochs": 7,
        "lr": 0.0025,
        "patch_size": 32,
        "batch_size": 3,
        "augment": "light",
        "temperature": 3.5,
        "alpha": 0.25,
        "kd_label_correction": not defaults["kd_label_correction"],
        "unlabeled_weight": 2.0,
        "freeze": not defaults["freeze"],
        "pretrained_lr_factor": 0.3,
        "student": "student-tiny",
        "teacher_arch": "unet",
        "modalities": ["t1c", "flair"],
    }
    overrides = tf.to_overrides(changed, mode)
    cfg = load_config(mode.config, overrides)
    back = tf.config_values(cfg, cfg if mode.key in ("distill", "adapt") else kd)
    shown = {f.name for f in tf.MODE_FIELDS if mode.key in f.modes}
    assert {k: back[k] for k in shown} == {k: changed[k] for k in shown}
    assert cfg.patch_size == [32, 32, 32]
    # What a mode does not show stays out of its config.
    assert ("temperature" in overrides) == (mode.key in ("distill", "adapt"))
    assert ("pretrained_lr_factor" in overrides) == (mode.key == "finetune")


def test_all_four_modalities_mean_the_teachers_for_a_student_only():
    four = ["t1", "t1c", "t2", "flair"]
    distill, teacher = tf.MODES_BY_KEY["distill"], tf.MODES_BY_KEY["teacher"]
    assert tf.to_overrides({"modalities": four}, distill)["model.modalities"] is None
    assert tf.to_overrides({"modalities": four}, teacher)["model.modalities"] == [
        "t1c",
        "t1",
        "t2",
        "flair",
    ]  # the bundle's channel order, whatever the order ticked
    assert tf.to_overrides({"modalities": ["flair", "t1c"]}, distill)["model.modalities"] == [
        "t1c",
        "flair",
    ]


@pytest.mark.parametrize(
    "extra",
    [
        ["epochs=3"],
        ["augment.preset=light", "augment={preset: none, noise_prob: 0.0}"],
        ["augment={preset: none}", "augment.preset=light"],
        ["epochs=3", "epochs=5", "lr=0.01"],
        ["model.arch_args={init_filters: 16}", "model.arch_args.init_filters=4"],
    ],
)
def test_extra_settings_win_as_if_applied_in_turn(extra):
    values = {"epochs": 2, "augment.preset": "strong", "model.arch": "student-tiny"}
    in_turn = apply_overrides(apply_overrides({"augment": {"preset": "x"}}, values), extra)
    merged = apply_overrides({"augment": {"preset": "x"}}, tf.merge_overrides(values, extra))
    assert merged == in_turn


def test_extra_text_splits_on_semicolons_and_lines():
    assert tf.split_extra(" a=1; b=2\nc=3;; ") == ["a=1", "b=2", "c=3"]
    assert tf.split_extra(None) == []


def _fake_controls() -> dict:
    """Stand-ins of the controls: a value each; the modality row a list of boxes."""
    controls = {f.name: SimpleNamespace(value=None, choices=["auto", "cpu"]) for f in tf.FIELDS}
    controls["modalities"] = [SimpleNamespace(value=True) for _ in range(4)]
    return controls


def test_values_and_session_settings_round_trip_through_controls():
    controls = _fake_controls()
    values = tf.defaults_of(tf.MODES_BY_KEY["distill"])
    values["modalities"] = ["t1c", "flair"]
    tf.apply_values(controls, values)
    assert tf.read_values(controls) == values

    controls["data_dir"].value = "/data/cases"
    controls["unlabeled_dir"].value = "."  # an empty FileEdit
    controls["output_dir"].value = "/runs"
    controls["extra"].value = "epochs=3"
    controls["use_viewer_cases"].value = 1
    controls["use_viewer_case"].value = None
    controls["device"].value = "cpu"
    saved = tf.session_settings(controls)
    assert saved == {
        "data_dir": "/data/cases",
        "use_viewer_cases": True,
        "unlabeled_dir": "",
        "use_viewer_case": False,
        "device": "cpu",
        "output_dir": "/runs",
        "extra": "epochs=3",
    }
    again = _fake_controls()
    again["unlabeled_dir"].value = "kept"
    tf.restore_session(again, {**saved, "device": "cuda"})  # a GPU gone: the device is kept
    assert again["data_dir"].value == "/data/cases" and again["unlabeled_dir"].value == "kept"
    assert again["use_viewer_cases"].value is True and again["use_viewer_case"].value is False
    assert again["device"].value is None and again["extra"].value == "epochs=3"


def test_a_refused_saved_value_is_skipped():
    class Refusing:
        value = 5

        def __setattr__(self, name, value):
            raise ValueError("not a choice")

    controls = _fake_controls()
    controls["epochs"] = Refusing()
    tf.apply_values(controls, {"epochs": 9, "lr": 0.5})
    assert controls["epochs"].value == 5 and controls["lr"].value == 0.5


def test_settings_saved_under_old_control_names_come_back_under_todays() -> None:
    saved = {
        "finetune": {"lr_factor": 0.3, "patch": 64, "epochs": 5},
        "distill": {"label_correction": True, "kd_label_correction": False, "batch": 2},
        "teacher": "not a mapping",
    }
    assert tf.saved_mode_values(saved) == {
        "finetune": {"pretrained_lr_factor": 0.3, "patch_size": 64, "epochs": 5},
        # Saved under both names: today's wins.
        "distill": {"kd_label_correction": False, "batch_size": 2},
    }
    assert tf.saved_mode_values(None) == {}
    # Every control is named after the training setting it fills, where it fills one directly.
    for field in tf.FIELDS:
        if field.config_key and "." not in field.config_key:
            assert field.name == field.config_key, field.name


def test_on_a_cpu_the_defaults_are_the_shipped_cpu_sizes_and_follow_the_device() -> None:
    from napari_brats_kd.training import cpu_overrides

    distill = tf.MODES_BY_KEY["distill"]
    gpu, cpu = tf.defaults_of(distill, "cuda"), tf.defaults_of(distill, "cpu")
    shipped = load_config("distill")
    assert gpu["epochs"] == shipped.epochs and gpu["patch_size"] == shipped.patch_size[0]
    sizes = cpu_overrides("distill")
    assert cpu["epochs"] == sizes["epochs"] < gpu["epochs"]
    assert cpu["patch_size"] == sizes["patch_size"][0] < gpu["patch_size"]
    assert cpu["augment"] == sizes["augment.preset"]
    assert tf.defaults_of(distill) == gpu  # no device: the shipped config as it is

    # Switching the device swaps what is still a default and keeps what the user set.
    values = dict(gpu, lr=0.123)
    resized = tf.resized_for_device(values, distill, "cuda", "cpu")
    assert resized["epochs"] == cpu["epochs"] and resized["lr"] == 0.123
    assert tf.resized_for_device(resized, distill, "cpu", "cuda")["epochs"] == gpu["epochs"]
