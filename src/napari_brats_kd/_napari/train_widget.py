"""Dock widget "Train student (distillation)": train, distil, fine-tune or adapt a model in napari.

A thin shell over :mod:`napari_brats_kd.training`: the widget turns its controls into a training
config (the shipped YAML defaults of the mode, the controls' values, then the user's extra
``key=value`` settings), runs :func:`~napari_brats_kd.training.distill` /
:func:`~napari_brats_kd.training.train_teacher` / :func:`~napari_brats_kd.training.resume_run` in a
napari thread worker, and shows what the engine reports: loss per step and epoch and validation
Dice per region in a live plot, the epoch and an ETA under a progress bar, the validation table at
the end. The trained model is registered (:func:`napari_brats_kd.models.register_model`) so the
Segment widgets list it, and "Segment current case" compares it with its teacher on the open case.

Modes:

- **Distil student**: a compact student learns from a teacher and the labels (cross-modal when it
  gets fewer modalities than the teacher).
- **Train teacher**: a supervised network from scratch.
- **Fine-tune**: transfer learning from a pretrained checkpoint (encoder frozen, pretrained layers
  at a lower learning rate).
- **Adapt to unlabelled scans**: distillation that adds another site's unlabelled cases, which
  learn from the teacher only.

Stop finishes the current step and saves a checkpoint; Resume continues that run. Nothing here
trains: every number the engine uses comes from its config (the widget's defaults are read from
the shipped YAML files).
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QObject, Signal

from ..labels import BUNDLE_MODALITY_ORDER, MODALITIES, MODALITY_NAMES, REPORT_REGIONS
from ._plot import TrainingPlot
from ._qt import ScrollingDock, wrap_to_dock_width
from ._settings import load_settings, save_settings
from ._workers import FrozenHeap, Task, notify_error, start_task
from .model_picker import ModelPicker, available_devices, model_summary

if TYPE_CHECKING:
    import napari

    from ..training import TrainConfig, TrainResult
    from ..volume import Case

#: Name of the persisted settings file (see :mod:`._settings`).
SETTINGS_NAME = "train_widget"

#: Subfolder of a run where the case open in the viewer is written (Adapt mode).
VIEWER_CASES = "viewer_cases"

#: Subfolder of a run where the labelled cases open in the viewer are written (its dataset).
VIEWER_LABELLED = "viewer_labelled_cases"

#: Labelled cases a run needs: one is held out for validation, at least one trains.
MIN_LABELLED_CASES = 2

#: Default folder of run folders.
DEFAULT_OUTPUT_DIR = Path.home() / "brats-kd-runs"


@dataclass(frozen=True)
class Mode:
    """One way of training, with the shipped config it starts from and the controls it shows."""

    key: str
    title: str
    config: str  # name of the shipped YAML in napari_brats_kd/configs
    run_prefix: str
    controls: frozenset[str]


_COMMON = frozenset({"data_dir", "epochs", "lr", "augment", "patch", "batch"})
#: The controls of both distillation modes (Distil student, Adapt to unlabelled scans).
_DISTILL = _COMMON | {"model", "student", "modalities", "temperature", "alpha", "correction"}
MODES: tuple[Mode, ...] = (
    Mode("distill", "Distil student", "distill", "student", _DISTILL),
    Mode(
        "teacher", "Train teacher", "teacher", "teacher", _COMMON | {"teacher_arch", "modalities"}
    ),
    Mode(
        "finetune", "Fine-tune", "finetune", "finetuned", _COMMON | {"model", "freeze", "lr_factor"}
    ),
    Mode(
        "adapt",
        "Adapt to unlabelled scans",
        "distill",
        "adapted",
        _DISTILL | {"unlabeled", "unlabeled_w"},
    ),
)
MODES_BY_TITLE = {m.title: m for m in MODES}
MODES_BY_KEY = {m.key: m for m in MODES}


def mode_defaults(mode: Mode) -> TrainConfig:
    """The shipped defaults of ``mode`` (``configs/<name>.yaml`` over the dataclass defaults)."""
    from ..training import load_config

    return load_config(mode.config)


class _EventRelay(QObject):
    """Created in the GUI thread: emitting from the worker queues the engine's events to it."""

    event = Signal(object)


class TrainWidget(ScrollingDock):
    """Train, distil, fine-tune or adapt a segmentation model from napari.

    Parameters
    ----------
    viewer
        The napari viewer (injected by npe2).

    Attributes
    ----------
    task
        The running (or last) training or segmentation task.
    last_result
        The last :class:`~napari_brats_kd.training.TrainResult`.
    last_run_dir
        Run folder Resume continues.
    trained_model, reference_model
        Name of the model registered after the last finished run, and the model it is compared
        with by "Segment current case" (its teacher, or the checkpoint it was fine-tuned from).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.task: Task | None = None
        self.segment_task: Task | None = None
        self.last_result: TrainResult | None = None
        self.last_run_dir: Path | None = None
        self.trained_model: str | None = None
        self.reference_model: str | None = None
        self._run_reference: str | None = None
        self._closed = False
        self._mode = MODES[0]
        self._per_mode: dict[str, dict[str, Any]] = {}
        self._epochs_total = 0
        self._epoch = 0
        self._eta_start: tuple[float, int] | None = None
        self._relay = _EventRelay()
        self._relay.event.connect(self._on_event)

        self._build_controls()
        self._build_layout()
        self._connect_signals()
        self._restore_settings()
        self._on_mode_changed()
        self._set_running(False)
        self.native.destroyed.connect(self._on_destroyed)

    # ------------------------------------------------------------------------------ building
    def _build_controls(self) -> None:
        from ..models import STUDENT_PRESETS, TEACHER_ARCHS
        from ..training import PRESETS

        self.mode_picker = ComboBox(
            label="Mode",
            choices=[m.title for m in MODES],
            value=MODES[0].title,
            tooltip=(
                "Distil student: a small fast student learns from a teacher and the labels. "
                "Train teacher: a network from scratch. Fine-tune: adapt a pretrained checkpoint "
                "to your labelled cases. Adapt to unlabelled scans: distillation that also learns "
                "from another site's unlabelled cases through the teacher."
            ),
        )
        self.data_dir = FileEdit(
            label="Dataset folder",
            mode="d",
            tooltip=(
                "Folder of labelled cases (one folder per case with its T1/T1c/T2/FLAIR and "
                "segmentation files, any BraTS naming). Part of it is held out for validation."
            ),
        )
        self.use_viewer_cases = CheckBox(
            text="Use the labelled cases open in the viewer instead",
            tooltip=(
                "Train on the cases open in napari instead of a folder: every case whose ground "
                "truth is a Labels layer named '<case> segmentation' (as opening a case folder "
                "with its segmentation makes it). They are written to the run folder; at least "
                f"{MIN_LABELLED_CASES} are needed, as one is held out for validation."
            ),
        )
        self.unlabeled_dir = FileEdit(
            label="Unlabelled folder",
            mode="d",
            tooltip=(
                "Cases from the new site without segmentations: the student learns from the "
                "teacher's predictions on them."
            ),
        )
        self.use_viewer_case = CheckBox(
            text="Use the case open in the viewer instead",
            tooltip=(
                "Adapt to the scans open in napari (e.g. a new hospital's case) instead of a "
                "folder: they are written to the run folder and used as the unlabelled set."
            ),
        )
        self.models = ModelPicker(
            self.native,
            label="Teacher",
            nullable=True,
            tooltip=(
                "The teacher (distillation) or the pretrained model (fine-tuning): models shipped "
                "with the plugin, trained in this session, or loaded with the buttons below."
            ),
            load_tooltip=(
                "Use a checkpoint file (.safetensors written by napari-brats-kd, or a .pt)."
            ),
            bundle_tooltip="Use a MONAI bundle folder (e.g. brats_mri_segmentation) as the model.",
            info_tooltip="What the picked model takes and predicts.",
            # A model loaded here is offered by the Segment docks too.
            on_loaded=lambda name, path: self._refresh_model_lists(),
        )
        self.model_picker = self.models.combo
        self.load_button, self.bundle_button = self.models.load_button, self.models.bundle_button
        self.model_buttons, self.model_info = self.models.buttons, self.models.info
        self.student_preset = ComboBox(
            label="Student",
            choices=list(STUDENT_PRESETS),
            tooltip=(
                "Student size: student-small (about 0.44 M parameters) or student-tiny (three "
                "stages, faster). Both run at half resolution on CPU."
            ),
        )
        self.teacher_arch = ComboBox(
            label="Architecture",
            choices=list(TEACHER_ARCHS),
            tooltip=(
                "Network to train: segresnet is the MONAI brats_mri_segmentation bundle network; "
                "segresnet-large is wider; unet and swinunetr are alternatives."
            ),
        )
        self.modality_boxes: dict[str, CheckBox] = {
            m: CheckBox(
                text=MODALITY_NAMES[m],
                value=True,
                tooltip=(
                    f"Give the model the {MODALITY_NAMES[m]} scan. Fewer modalities than the "
                    "teacher makes a cross-modal student that needs only those scans."
                ),
            )
            for m in MODALITIES
        }
        self.modalities_row = Container(
            widgets=list(self.modality_boxes.values()),
            layout="horizontal",
            labels=False,
            label="Input scans",
            tooltip=(
                "Modalities the trained model will take as input. For a student, all four ticked "
                "means the teacher's own inputs."
            ),
        )
        self.epochs = SpinBox(
            label="Epochs",
            min=1,
            max=100000,
            tooltip="Passes over the training patches. Validation runs every few epochs.",
        )
        self.lr = FloatSpinBox(
            label="Learning rate",
            min=1e-5,
            max=1.0,
            step=1e-5,
            tooltip="Peak AdamW learning rate (after warm-up; then cosine decay).",
        )
        self.lr_factor = FloatSpinBox(
            label="Pretrained LR factor",
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip=(
                "Learning-rate multiplier of the pretrained layers (the output layer always learns "
                "at the full rate); 0.1 changes what the checkpoint learnt only gently."
            ),
        )
        self.freeze = CheckBox(
            text="Freeze encoder",
            tooltip=(
                "Keep the pretrained encoder (down-sampling stages) fixed and train the decoder: "
                "fewer cases suffice and nothing learnt on big data is forgotten."
            ),
        )
        self.temperature = FloatSpinBox(
            label="Temperature",
            min=0.1,
            max=20.0,
            step=0.5,
            tooltip=(
                "Softening temperature T of teacher and student outputs: higher shows the "
                "student more of the teacher's uncertainty."
            ),
        )
        self.alpha = FloatSpinBox(
            label="Alpha",
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip=(
                "Weight of the ground-truth loss; 1 - alpha goes to matching the teacher "
                "(0 = learn from the teacher only)."
            ),
        )
        self.label_correction = CheckBox(
            text="Correct the teacher by the labels",
            tooltip=(
                "Where the teacher's output contradicts a case's label, learn the teacher's "
                "confidence on the label's side instead of its mistake (knowledge adjustment). "
                "Use it when the teacher is not clearly better than the labels; unlabelled scans "
                "keep the teacher's outputs."
            ),
        )
        self.unlabeled_weight = FloatSpinBox(
            label="Unlabelled weight",
            min=0.0,
            max=10.0,
            step=0.25,
            tooltip="Unlabelled patches drawn per labelled patch (1 = as many from both folders).",
        )
        self.augment = ComboBox(
            label="Augmentation",
            choices=list(PRESETS),
            tooltip=(
                "Random changes of the training patches: none, light (flips, small rotations and "
                "intensity changes) or strong (also elastic, bias field, low resolution: helps "
                "students work on other scanners)."
            ),
        )
        self.patch = SpinBox(
            label="Patch size",
            min=16,
            max=512,
            step=16,
            tooltip=(
                "Edge of the cubic training patches in voxels. Lower it (and the batch size) when "
                "training runs out of memory."
            ),
        )
        self.batch = SpinBox(
            label="Batch size",
            min=1,
            max=64,
            tooltip="Cases per optimisation step (each gives several patches).",
        )
        self.device_picker = ComboBox(
            label="Device",
            choices=available_devices(),
            value="auto",
            tooltip="Where training runs: auto picks a GPU when there is one, else the CPU.",
        )
        self.output_dir = FileEdit(
            label="Output folder",
            mode="d",
            value=str(DEFAULT_OUTPUT_DIR),
            tooltip=(
                "Each run gets a folder here with its config, split, log and checkpoints "
                "(last.safetensors after every epoch, best.safetensors for the best validation)."
            ),
        )
        self.extra = LineEdit(
            label="Extra settings",
            value="",
            tooltip=(
                "Any other training setting as key=value pairs separated by ';', e.g. "
                "'steps_per_epoch=50; val_every=5; model.arch_args={init_filters: 16}', or for "
                "distillation 'attention_weight=0.5' (attention transfer) and "
                "'teacher_targets=online' (run the teacher on every patch instead of caching its "
                "outputs, the CPU default). They win over the controls above (see brats-kd "
                "distill --help)."
            ),
        )
        self.start_button = PushButton(text="Start", tooltip="Start a new run with these settings.")
        self.stop_button = PushButton(
            text="Stop",
            tooltip="Finish the current step, save a checkpoint and stop (Resume continues).",
        )
        self.resume_button = PushButton(
            text="Resume",
            tooltip=(
                "Continue the last stopped or failed run from its checkpoint (asks for a run "
                "folder when there is none). Raise Epochs first to train a finished run longer."
            ),
        )
        self.progress_bar = ProgressBar(
            label="Progress", value=0, min=0, max=1, tooltip="Optimisation steps done of all."
        )
        self.status = Label(value="", tooltip="Epoch, ETA and what the widget last did.")
        self.plot = TrainingPlot()
        self.plot.setToolTip(
            "Top: training loss per step (grey) and per epoch (blue). Bottom: validation Dice per "
            "region (WT whole tumour, TC tumour core, ET enhancing tumour)."
        )
        self.results = Label(
            value="",
            tooltip="Validation Dice per region of the last run; * marks the checkpoint kept.",
        )
        self.results.native.setStyleSheet("font-family: monospace;")
        # Long messages (model descriptions, paths, errors) wrap instead of widening the dock.
        wrap_to_dock_width(self.model_info, self.status)
        self.segment_button = PushButton(
            text="Segment current case",
            tooltip=(
                "Segment the case open in the viewer with the new model and with its teacher (or "
                "starting checkpoint), side by side, plus a layer showing where they disagree."
            ),
        )

    def _build_layout(self) -> None:
        # The plot is a plain QWidget: a label-less Container places it in magicgui's column.
        self.plot_box = Container(labels=False)
        self.plot_box.native.layout().addWidget(self.plot)
        # Settings in a labelled form; progress, plot and results below it at full width.
        self.form = Container(labels=True)
        self.form.extend(
            [
                self.mode_picker,
                self.data_dir,
                self.use_viewer_cases,
                self.unlabeled_dir,
                self.use_viewer_case,
                *self.models.widgets,
                self.student_preset,
                self.teacher_arch,
                self.modalities_row,
                self.epochs,
                self.lr,
                self.lr_factor,
                self.freeze,
                self.temperature,
                self.alpha,
                self.label_correction,
                self.unlabeled_weight,
                self.augment,
                self.patch,
                self.batch,
                self.device_picker,
                self.output_dir,
                self.extra,
                Container(
                    widgets=[self.start_button, self.stop_button, self.resume_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.progress_bar,
            ]
        )
        # The form, plots and results are taller than a laptop screen: they scroll.
        self.set_body(
            Container(
                widgets=[self.form, self.status, self.plot_box, self.results, self.segment_button],
                labels=False,
            )
        )
        self._control_widgets = {
            "data_dir": [self.data_dir, self.use_viewer_cases],
            "unlabeled": [self.unlabeled_dir, self.use_viewer_case],
            "unlabeled_w": [self.unlabeled_weight],
            "model": [self.model_picker, self.model_buttons, self.model_info],
            "student": [self.student_preset],
            "teacher_arch": [self.teacher_arch],
            "modalities": [self.modalities_row],
            "epochs": [self.epochs],
            "lr": [self.lr],
            "lr_factor": [self.lr_factor],
            "freeze": [self.freeze],
            "temperature": [self.temperature],
            "alpha": [self.alpha],
            "correction": [self.label_correction],
            "augment": [self.augment],
            "patch": [self.patch],
            "batch": [self.batch],
        }

    def _connect_signals(self) -> None:
        self.mode_picker.changed.connect(self._on_mode_changed)
        self.use_viewer_cases.changed.connect(self._on_source_changed)
        self.use_viewer_case.changed.connect(self._on_source_changed)
        self.model_picker.changed.connect(self._on_model_changed)
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.resume_button.changed.connect(self.resume)
        self.segment_button.changed.connect(self.segment_current_case)

    # ------------------------------------------------------------------------------ modes
    @property
    def mode(self) -> Mode:
        """The selected mode."""
        return MODES_BY_TITLE[self.mode_picker.value]

    def _mode_values(self) -> dict[str, Any]:
        """Values of the controls whose defaults depend on the mode."""
        return {
            "epochs": self.epochs.value,
            "lr": self.lr.value,
            "augment": self.augment.value,
            "patch": self.patch.value,
            "batch": self.batch.value,
            "temperature": self.temperature.value,
            "alpha": self.alpha.value,
            "label_correction": self.label_correction.value,
            "unlabeled_weight": self.unlabeled_weight.value,
            "freeze": self.freeze.value,
            "lr_factor": self.lr_factor.value,
            "student": self.student_preset.value,
            "teacher_arch": self.teacher_arch.value,
            "modalities": [m for m, box in self.modality_boxes.items() if box.value],
        }

    def _defaults_of(self, mode: Mode) -> dict[str, Any]:
        from ..training import DistillConfig

        cfg = mode_defaults(mode)
        distill = isinstance(cfg, DistillConfig)
        base = mode_defaults(MODES_BY_KEY["distill"])  # KD settings for the non-KD modes
        return {
            "epochs": cfg.epochs,
            "lr": cfg.lr,
            "augment": cfg.augment.preset,
            "patch": int(cfg.patch_size[0]),
            "batch": cfg.batch_size,
            "temperature": (cfg if distill else base).temperature,
            "alpha": (cfg if distill else base).alpha,
            "label_correction": (cfg if distill else base).kd_label_correction,
            "unlabeled_weight": (cfg if distill else base).unlabeled_weight,
            "freeze": "encoder" in cfg.freeze,
            "lr_factor": cfg.pretrained_lr_factor,
            "student": cfg.model.arch if cfg.model.kind == "student" else base.model.arch,
            "teacher_arch": cfg.model.arch if cfg.model.kind == "teacher" else "segresnet",
            "modalities": list(cfg.model.modalities or MODALITIES),
        }

    def _apply_values(self, values: dict[str, Any]) -> None:
        simple = {
            "epochs": self.epochs,
            "lr": self.lr,
            "augment": self.augment,
            "patch": self.patch,
            "batch": self.batch,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "label_correction": self.label_correction,
            "unlabeled_weight": self.unlabeled_weight,
            "freeze": self.freeze,
            "lr_factor": self.lr_factor,
            "student": self.student_preset,
            "teacher_arch": self.teacher_arch,
        }
        for key, widget in simple.items():
            if key not in values:
                continue
            try:
                widget.value = values[key]
            except (ValueError, TypeError, KeyError):
                pass  # a value saved by another version that this control no longer accepts
        if "modalities" in values:
            for m, box in self.modality_boxes.items():
                box.value = m in values["modalities"]

    def _on_mode_changed(self, *_: Any) -> None:
        new = self.mode
        if new is not self._mode:
            self._per_mode[self._mode.key] = self._mode_values()
        values = self._defaults_of(new)
        values.update(self._per_mode.get(new.key, {}))
        self._mode = new
        self._apply_values(values)
        for control, widgets in self._control_widgets.items():
            for widget in widgets:
                widget.visible = control in new.controls
        self.model_picker.label = "Pretrained model" if new.key == "finetune" else "Teacher"
        if new.key != "teacher":
            self._select_default_model()
        self._on_model_changed()

    def _on_source_changed(self, *_: Any) -> None:
        # A folder the run will not read is greyed out, so that it is clear what is trained on.
        running = self._busy()
        self.data_dir.enabled = not running and not self.use_viewer_cases.value
        self.unlabeled_dir.enabled = not running and not self.use_viewer_case.value

    # ------------------------------------------------------------------------------ models
    def _select_default_model(self) -> None:
        from ..models import available_models

        self.model_picker.reset_choices()
        if self.model_picker.value is not None:
            return
        infos = available_models()
        teachers = [i.name for i in infos if i.role == "teacher"]
        if teachers:
            self.model_picker.value = teachers[-1]
        elif infos:
            self.model_picker.value = infos[-1].name

    def _model_config(self, spec: str):
        from ..models import available_models, read_checkpoint_config, resolve_model

        for info in available_models():
            if info.name == spec and info.path.suffix == ".safetensors" and info.path.is_file():
                return read_checkpoint_config(info.path)
        return resolve_model(spec, role="teacher").config

    def _on_model_changed(self, *_: Any) -> None:
        from ..errors import BratsKDError

        spec = self.model_picker.value
        if not spec:
            self.model_info.value = (
                "No model picked: load a checkpoint or a MONAI bundle folder (a teacher can be "
                "trained in the 'Train teacher' mode)."
            )
            return
        try:
            config = self._model_config(spec)
        except BratsKDError as exc:
            self.model_info.value = str(exc)
            return
        self.model_info.value = model_summary(config, "Takes")

    def load_model(self, path: str | Path, quiet: bool = False) -> str | None:
        """Register a checkpoint or bundle folder and pick it as teacher / pretrained model.

        Parameters
        ----------
        path
            The checkpoint file or bundle folder.
        quiet
            Say nothing when it cannot be loaded (restoring a saved pick).

        Returns
        -------
        str or None
            Its name, or ``None`` if it cannot be loaded (a notification says why).
        """
        return self.models.load_model(path, quiet=quiet)

    def _refresh_model_lists(self) -> None:
        """Refresh this widget's and every docked widget's model lists (the Segment widgets)."""
        self.model_picker.reset_choices()
        for widget in self.viewer.window.dock_widgets.values():
            reset = getattr(widget, "reset_choices", None)
            if widget is not self and callable(reset):
                reset()

    # ------------------------------------------------------------------------------ config
    def _extra_overrides(self) -> list[str]:
        text = self.extra.value or ""
        return [part.strip() for part in text.replace("\n", ";").split(";") if part.strip()]

    def _new_run_dir(self) -> Path:
        root = Path(self.output_dir.value).expanduser()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run = root / f"{self.mode.run_prefix}-{stamp}"
        n = 2
        while run.exists():
            run = root / f"{self.mode.run_prefix}-{stamp}-{n}"
            n += 1
        return run

    def build_config(self, run_dir: Path | None = None) -> TrainConfig:
        """The training config of the current controls (shipped defaults < controls < extras).

        Raises
        ------
        TrainingError
            A folder or model is missing, or a setting is out of range.
        """
        import yaml

        from ..errors import TrainingError
        from ..training import apply_overrides, load_config
        from ..training.config import default_config_path

        mode = self.mode
        run_dir = run_dir or self._new_run_dir()
        if self.use_viewer_cases.value:
            if mode.key == "adapt" and self.use_viewer_case.value:
                raise TrainingError(
                    "Both 'Use the labelled cases open in the viewer' and 'Use the case open in "
                    "the viewer' are ticked: untick one, and give the other set as a folder."
                )
            # The open cases are written there by the run (see start()).
            data_dir = run_dir / VIEWER_LABELLED
        else:
            data_dir = _folder(self.data_dir.value)
            if data_dir is None or not data_dir.is_dir():
                picked = _path_text(self.data_dir.value)
                what = (
                    f"Dataset folder {picked!r} does not exist" if picked else "No dataset folder"
                )
                raise TrainingError(
                    f"{what}: pick a folder of labelled cases (one folder per case) in 'Dataset "
                    "folder', or tick 'Use the labelled cases open in the viewer'."
                )
        values: dict[str, Any] = {
            "data_dir": str(data_dir),
            "run_dir": str(run_dir),
            "epochs": int(self.epochs.value),
            "lr": float(self.lr.value),
            "augment.preset": self.augment.value,
            "patch_size": [int(self.patch.value)] * 3,
            "batch_size": int(self.batch.value),
            "device": self.device_picker.value,
        }
        mods = [m for m in BUNDLE_MODALITY_ORDER if self.modality_boxes[m].value]
        if "modalities" in mode.controls and not mods:
            raise TrainingError("Tick at least one input scan (T1, T1c, T2 or FLAIR).")
        if mode.key in ("distill", "adapt", "finetune"):
            spec = self.model_picker.value
            if not spec:
                what = "pretrained model" if mode.key == "finetune" else "teacher"
                raise TrainingError(
                    f"No {what} picked: load a checkpoint or a MONAI bundle folder with the "
                    "buttons under it."
                )
            spec = self._model_path(spec)
        if mode.key in ("distill", "adapt"):
            values.update(
                {
                    "teacher": spec,
                    "temperature": float(self.temperature.value),
                    "alpha": float(self.alpha.value),
                    "kd_label_correction": bool(self.label_correction.value),
                    "model.arch": self.student_preset.value,
                    # All four ticked: the teacher's modalities, in the teacher's order.
                    "model.modalities": None if len(mods) == len(MODALITIES) else mods,
                    "model.name": run_dir.name,
                }
            )
        if mode.key == "adapt":
            # The open case is written there by the run (see start()).
            unlabeled = (
                run_dir / VIEWER_CASES
                if self.use_viewer_case.value
                else _folder(self.unlabeled_dir.value)
            )
            if not self.use_viewer_case.value and (unlabeled is None or not unlabeled.is_dir()):
                picked = _path_text(self.unlabeled_dir.value)
                what = (
                    f"Unlabelled folder {picked!r} does not exist"
                    if picked
                    else "No unlabelled folder"
                )
                raise TrainingError(
                    f"{what}: pick the folder of the new site's cases in 'Unlabelled folder', or "
                    "tick 'Use the case open in the viewer'."
                )
            values.update(
                {"unlabeled_dir": str(unlabeled), "unlabeled_weight": self.unlabeled_weight.value}
            )
        if mode.key == "teacher":
            values.update(
                {
                    "model.arch": self.teacher_arch.value,
                    "model.modalities": mods,
                    "model.name": run_dir.name,
                }
            )
        if mode.key == "finetune":
            values.update(
                {
                    "init_from": spec,
                    "freeze": ["encoder"] if self.freeze.value else [],
                    "pretrained_lr_factor": float(self.lr_factor.value),
                }
            )
        data = yaml.safe_load(default_config_path(mode.config).read_text()) or {}
        apply_overrides(data, values)
        apply_overrides(data, self._extra_overrides())
        return load_config(data)

    def _viewer_labelled_cases(self, cfg: TrainConfig) -> list[Case]:
        """The labelled cases open in the viewer that have the scans ``cfg`` trains on.

        Raises
        ------
        TrainingError
            Fewer than :data:`MIN_LABELLED_CASES` labelled cases are open (the message says which
            cases were skipped and how to fix it).
        """
        from ..errors import TrainingError
        from .case_from_layers import labelled_cases_from_layers

        cases, messages = labelled_cases_from_layers(self.viewer.layers, self._needed(cfg))
        if len(cases) < MIN_LABELLED_CASES:
            skipped = " ".join(messages)
            raise TrainingError(
                f"{len(cases)} labelled case(s) open in the viewer; training needs at least "
                f"{MIN_LABELLED_CASES}, as one is held out for validation. Open more case folders "
                "with their segmentations (File > Open), name a painted Labels layer "
                "'<case> segmentation', or untick 'Use the labelled cases open in the viewer' "
                "and pick a dataset folder." + (f" {skipped}" if skipped else "")
            )
        for message in messages:
            show_warning(message)
        return cases

    def _needed(self, cfg: TrainConfig) -> list[str]:
        """Modalities a run of ``cfg`` reads from every case (the model's and its teacher's)."""
        from ..errors import BratsKDError

        needed = set(cfg.model.modalities or ())
        for spec in (getattr(cfg, "teacher", None), cfg.init_from):
            if not spec:
                continue
            try:
                needed |= set(self._model_config(spec).modalities)
            except BratsKDError:
                return list(MODALITIES)  # the engine explains a model it cannot read
        return [m for m in MODALITIES if m in needed] or list(MODALITIES)

    def _viewer_case(self) -> Case:
        """The case open in the viewer (every modality layer found), for the unlabelled set."""
        from ..errors import CaseError
        from .case_from_layers import case_from_layers, find_modality_layers

        found = find_modality_layers(self.viewer.layers)
        if not found:
            raise CaseError(
                "The viewer holds no scan (T1, T1c, T2, FLAIR) to adapt to: open a case "
                "(File > Open) or untick 'Use the case open in the viewer'."
            )
        case, warnings = case_from_layers(found)
        for warning in warnings:
            show_warning(warning)
        return case

    def _model_label(self, spec: str) -> str:
        """Short name of a model for layer names: its list name, else the file or folder name."""
        from ..models import available_models

        for info in available_models():
            if spec in (info.name, str(info.path)):
                return info.name
        path = Path(spec)
        return path.name.removesuffix(".safetensors") if path.exists() else spec

    def _model_path(self, name: str) -> str:
        """A model's file when it has one (the run's config then works outside this session)."""
        from ..models import available_models

        for info in available_models():
            if info.name == name and info.path.exists():
                return str(info.path)
        return name

    # ------------------------------------------------------------------------------ running
    def start(self, *_: Any) -> Task | None:
        """Start a new run with the current settings; returns the task (None if refused)."""
        from ..errors import BratsKDError

        if self._busy():
            show_info("A training run is already running: stop it first.")
            return None
        try:
            cfg = self.build_config()
        except BratsKDError as exc:
            notify_error(exc, "Training")
            return None
        mode = self.mode
        case = None
        labelled: list[Case] = []
        try:
            if self.use_viewer_cases.value:
                labelled = self._viewer_labelled_cases(cfg)
            if mode.key == "adapt" and self.use_viewer_case.value:
                case = self._viewer_case()
        except BratsKDError as exc:
            notify_error(exc, "Training")
            return None
        self._save_settings()
        reference = getattr(cfg, "teacher", None) or cfg.init_from
        self.plot.clear()
        self.results.value = ""

        def work(progress, stop, emit):
            from ..writing import save_case

            # Writing cases takes seconds: it happens here, in the worker thread.
            # (Not through progress(): the ETA is measured from the first training step.)
            for i, item in enumerate(labelled):
                emit({"type": "note", "message": f"Writing open case {i + 1}/{len(labelled)}..."})
                save_case(item, Path(cfg.data_dir))
            if case is not None:
                save_case(case, Path(cfg.unlabeled_dir))
            return _train(cfg, progress, stop, emit)

        return self._launch(
            work,
            Path(cfg.run_dir),
            cfg.epochs,
            f"{mode.title}: run {Path(cfg.run_dir).name}",
            reference,
        )

    def resume(self, *_: Any, run_dir: str | Path | None = None) -> Task | None:
        """Continue a stopped run (the last one, or ``run_dir``); returns the task or None."""
        from ..errors import BratsKDError, TrainingError
        from ..training import load_config

        if self._busy():
            show_info("A training run is already running.")
            return None
        if run_dir is None:
            run_dir = self.last_run_dir
        if run_dir is None:
            from qtpy.QtWidgets import QFileDialog

            chosen = QFileDialog.getExistingDirectory(
                self.native, "Resume which run folder?", str(self.output_dir.value)
            )
            if not chosen:
                return None
            run_dir = chosen
        run_dir = Path(run_dir)
        try:
            if not (run_dir / "config.yaml").is_file():
                raise TrainingError(
                    f"{run_dir} is not a run folder (no config.yaml): pick a folder made by Start."
                )
            cfg = load_config(run_dir / "config.yaml")
        except BratsKDError as exc:
            notify_error(exc, "Resume")
            return None
        # Raising Epochs above the run's setting trains a finished run longer.
        epochs = max(int(cfg.epochs), int(self.epochs.value))
        self.plot.load_history(_read_log(run_dir))
        self.last_run_dir = run_dir
        self._save_settings()
        reference = getattr(cfg, "teacher", None) or cfg.init_from

        def work(progress, stop, emit):
            from ..training import resume_run

            return resume_run(
                run_dir, {"epochs": epochs}, progress=progress, should_stop=stop, on_event=emit
            )

        return self._launch(work, run_dir, epochs, f"Resuming {run_dir.name}", reference)

    def _launch(
        self, fn: Any, run_dir: Path, epochs: int, message: str, reference: str | None
    ) -> Task:
        relay = self._relay

        def work(progress, should_stop):
            return fn(progress, should_stop, relay.event.emit)

        self.last_run_dir = run_dir
        self._run_reference = reference
        self._epochs_total = epochs
        self._epoch = 0
        self._eta_start = None
        self.status.value = message

        def finished() -> None:
            FrozenHeap.exit()
            self._set_running(False)

        # Training runs for minutes: keep full GC passes over napari's heap from stalling the GUI.
        FrozenHeap.enter()
        try:
            self.task = start_task(
                work,
                on_progress=self._on_progress,
                on_returned=self._on_result,
                on_error=self._on_error,
                on_finished=finished,
            )
        except BaseException:
            FrozenHeap.exit()
            raise
        self._set_running(True)
        return self.task

    def stop(self, *_: Any) -> None:
        """Ask the run to stop after its current step (a checkpoint is saved)."""
        if self.task is not None and self.task.is_running:
            self.task.cancel()
            self.status.value = "Stopping after the current step or validation case..."

    def _busy(self) -> bool:
        return self.task is not None and self.task.is_running

    def _on_destroyed(self, *_: Any) -> None:
        # Closing the dock must not orphan a run: it stops cleanly and keeps its checkpoint.
        self._closed = True
        for task in (self.task, self.segment_task):
            if task is not None and task.is_running:
                task.cancel()

    def _set_running(self, running: bool) -> None:
        if self._closed:
            return
        self.start_button.enabled = not running
        self.stop_button.enabled = running
        can_resume = self.last_run_dir is None or (self.last_run_dir / "last_state.pt").is_file()
        self.resume_button.enabled = not running and can_resume
        for widget in (
            self.mode_picker,
            self.use_viewer_cases,
            self.use_viewer_case,
            self.model_picker,
            self.load_button,
            self.bundle_button,
            self.output_dir,
            self.extra,
        ):
            widget.enabled = not running
        self.data_dir.enabled = not running and not self.use_viewer_cases.value
        self.unlabeled_dir.enabled = not running and not self.use_viewer_case.value
        seg_busy = self.segment_task is not None and self.segment_task.is_running
        self.segment_button.enabled = (
            not running and not seg_busy and self.trained_model is not None
        )
        if running:
            self.progress_bar.max = 1
            self.progress_bar.value = 0

    # ------------------------------------------------------------------------------ feedback
    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self._closed:
            return
        now = time.perf_counter()
        if self._eta_start is None:
            # The first step's time includes loading data and models: measure from it on.
            self._eta_start = (now, done)
        self.progress_bar.max = max(int(total), 1)
        self.progress_bar.value = min(int(done), self.progress_bar.max)
        t0, d0 = self._eta_start
        eta = ""
        if done > d0:
            remaining = (now - t0) / (done - d0) * (total - done)
            eta = f" · ETA {_format_seconds(remaining)}"
        epoch = f"Epoch {self._epoch}/{self._epochs_total} · " if self._epoch else ""
        loss = message.rsplit("loss", 1)[-1].strip() if "loss" in message else ""
        self.status.value = f"{epoch}step {done}/{total}{eta}" + (f" · loss {loss}" if loss else "")

    def _on_event(self, event: dict) -> None:
        if self._closed:
            return
        kind = event.get("type")
        if kind == "start":
            # Sent before the first (possibly slow) step: show the epoch right away.
            self._epoch = int(event["start_epoch"]) + 1
            self._epochs_total = int(event["epochs"])
            self.status.value = (
                f"Epoch {self._epoch}/{self._epochs_total} · preparing first step..."
            )
        elif kind == "note":  # the widget's own steps before training (writing open cases)
            self.status.value = str(event["message"])
        elif kind == "val_progress":
            self.status.value = (
                f"Epoch {event['epoch']}/{self._epochs_total} · validating case "
                f"{event['done']}/{event['total']}"
            )
        elif kind == "step":
            self._epoch = int(event["epoch"])
            self.plot.add_step(int(event["step"]), float(event["loss"]))
        elif kind == "epoch":
            self.plot.add_epoch(int(event["epoch"]), int(event["step"]), float(event["loss"]))
        elif kind == "val":
            self.plot.add_validation(int(event["epoch"]), event["dice"])

    def _on_error(self, exc: BaseException) -> None:
        from ..errors import Cancelled

        if isinstance(exc, Cancelled):  # stopped before the first step (e.g. while caching)
            if not self._closed:
                self.status.value = f"Stopped. {exc}"
            notify_error(exc, "Training")
            return
        if not self._closed:
            kept = ""
            if self.last_run_dir is not None and (self.last_run_dir / "last.safetensors").is_file():
                kept = f" The last checkpoint is kept in {self.last_run_dir}; Resume continues it."
            self.status.value = f"Failed.{kept}"
            self.plot.redraw()
        notify_error(exc, "Training")

    def _on_result(self, result: TrainResult) -> None:
        from ..errors import BratsKDError
        from ..models import register_model

        self.last_result = result
        self.last_run_dir = Path(result.run_dir)
        if self._closed:
            return
        self.plot.redraw()
        self.results.value = format_validation(result.history, result.best_epoch)
        if result.stopped:
            self.status.value = (
                f"Stopped after {result.epochs_done} finished epoch(s); checkpoint "
                f"{result.last_checkpoint} kept. Resume continues the run."
            )
            show_info(f"Training stopped; Resume continues {result.run_dir.name}.")
            return
        checkpoint = result.best_checkpoint or result.last_checkpoint
        try:
            entry = register_model(checkpoint, name=result.run_dir.name)
        except BratsKDError as exc:
            notify_error(exc, "Registering the trained model")
            return
        self.trained_model = entry.name
        self.reference_model = self._run_reference
        self._refresh_model_lists()
        best = f" (best epoch {result.best_epoch})" if result.best_epoch else ""
        self.status.value = (
            f"Done: {result.epochs_done} epoch(s). Model {entry.name!r}{best} is in the Segment "
            f"widgets' model list; checkpoint {checkpoint}."
        )
        show_info(f"Training finished: model {entry.name!r} is ready to segment.")

    # ------------------------------------------------------------------------------ comparison
    def segment_current_case(self, *_: Any) -> Task | None:
        """Segment the open case with the trained model and its reference, plus a difference.

        Adds ``"<case> tumor (<model>)"`` for both models and ``"<case> <model> vs <reference>"``
        (1 = tumour only in the new model, 2 = only in the reference, 3 = both, other class).
        Returns the task, or None if it cannot start (a notification says why).
        """
        from ..errors import BratsKDError, CaseError
        from ..models import resolve_model
        from .case_from_layers import case_from_layers, find_modality_layers

        if self.trained_model is None:
            show_info("Train a model first: 'Segment current case' uses the model of the last run.")
            return None
        if self.segment_task is not None and self.segment_task.is_running:
            return None
        models = [self.trained_model] + ([self.reference_model] if self.reference_model else [])
        try:
            needed: list[str] = []
            for spec in models:
                needed += [m for m in resolve_model(spec).config.modalities if m not in needed]
            found = find_modality_layers(self.viewer.layers)
            missing = [MODALITY_NAMES[m] for m in needed if m not in found]
            if missing:
                raise CaseError(
                    f"The viewer has no layer for {', '.join(missing)}: open a case (File > Open, "
                    "a case folder) to compare the models on it."
                )
            case, warnings = case_from_layers({m: found[m] for m in needed})
        except BratsKDError as exc:
            notify_error(exc, "Segment current case")
            return None
        for warning in warnings:
            show_warning(warning)
        source_layer = found[needed[0]]
        device = self.device_picker.value

        def work(progress, should_stop):
            from ..inference import segment

            results = []
            for i, spec in enumerate(models):
                progress(i, len(models), f"Segmenting {case.case_id} with {spec}...")
                results.append(segment(case, model=spec, device=device, should_stop=should_stop))
            progress(len(models), len(models), "")
            return results

        self.segment_button.enabled = False
        self.status.value = f"Segmenting {case.case_id} with {' and '.join(models)}..."
        self.segment_task = start_task(
            work,
            on_progress=self._on_segment_progress,
            on_returned=lambda res: self._show_comparison(res, models, case, source_layer),
            on_error=lambda exc: notify_error(exc, "Segment current case"),
            on_finished=lambda: self._set_running(self._busy()),
        )
        return self.segment_task

    def _on_segment_progress(self, done: int, total: int, message: str) -> None:
        if not self._closed and message:
            self.status.value = message

    def _show_comparison(self, results: list, models: list[str], case: Any, source: Any) -> None:
        from ..labels import labels_to_regions
        from ..metrics import dice
        from .case_from_layers import add_result_layer

        if self._closed:
            return
        labels = [self._model_label(spec) for spec in models]
        layers = [
            add_result_layer(self.viewer, res, case, source, label)
            for res, label in zip(results, labels, strict=True)
        ]
        if len(results) < 2:
            self.status.value = f"{labels[0]} segmented {case.case_id} (no reference model)."
            return
        new, ref = results
        diff = difference_labels(new.labels, ref.labels)
        name = f"{case.case_id} {labels[0]} vs {labels[1]}"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_labels(
            diff,
            name=name,
            scale=layers[0].scale,
            translate=layers[0].translate,
            colormap=DIFFERENCE_COLORS,
            metadata={"brats_kd": {"role": "difference", "models": list(models)}},
        )
        new_regions = labels_to_regions(new.labels, new.convention, REPORT_REGIONS)
        ref_regions = labels_to_regions(ref.labels, ref.convention, REPORT_REGIONS)
        agree = ", ".join(
            f"{r} {dice(new_regions[i], ref_regions[i]):.2f}" for i, r in enumerate(REPORT_REGIONS)
        )
        self.status.value = (
            f"{case.case_id}: {labels[0]} vs {labels[1]} agreement (Dice) {agree}; "
            f"{int((diff > 0).sum())} voxels differ (layer {name!r}: red = only the new model, "
            "blue = only the reference, yellow = other tumour class)."
        )

    # ------------------------------------------------------------------------------ settings
    def settings(self) -> dict[str, Any]:
        """The values that persist between sessions."""
        per_mode = dict(self._per_mode)
        per_mode[self.mode.key] = self._mode_values()
        model = self.model_picker.value
        return {
            "mode": self.mode.key,
            "data_dir": _path_text(self.data_dir.value),
            "unlabeled_dir": _path_text(self.unlabeled_dir.value),
            "use_viewer_cases": bool(self.use_viewer_cases.value),
            "use_viewer_case": bool(self.use_viewer_case.value),
            "model": self._model_path(model) if model else None,
            "device": self.device_picker.value,
            "output_dir": _path_text(self.output_dir.value),
            "extra": self.extra.value,
            "last_run_dir": str(self.last_run_dir) if self.last_run_dir else None,
            "modes": per_mode,
        }

    def _save_settings(self) -> None:
        save_settings(SETTINGS_NAME, self.settings())

    def _restore_settings(self) -> None:
        saved = load_settings(SETTINGS_NAME)
        if not saved:
            return
        modes = saved.get("modes")
        if isinstance(modes, dict):
            self._per_mode = {k: v for k, v in modes.items() if isinstance(v, dict)}
        for key, widget in (
            ("data_dir", self.data_dir),
            ("unlabeled_dir", self.unlabeled_dir),
            ("output_dir", self.output_dir),
        ):
            if saved.get(key):
                widget.value = saved[key]
        if saved.get("extra"):
            self.extra.value = str(saved["extra"])
        self.use_viewer_cases.value = bool(saved.get("use_viewer_cases", False))
        self.use_viewer_case.value = bool(saved.get("use_viewer_case", False))
        if saved.get("device") in self.device_picker.choices:
            self.device_picker.value = saved["device"]
        if saved.get("last_run_dir") and Path(saved["last_run_dir"]).is_dir():
            self.last_run_dir = Path(saved["last_run_dir"])
        model = saved.get("model")
        if model:
            names = [c[1] for c in self.models.choices()]
            if model in names:
                self.model_picker.value = model
            elif Path(model).exists():
                self.load_model(model, quiet=True)
        mode = MODES_BY_KEY.get(saved.get("mode", ""))
        if mode is not None:
            self._mode = mode  # values of the saved mode are applied by _on_mode_changed
            self.mode_picker.value = mode.title


# ---------------------------------------------------------------------------------- helpers
#: Colours of the difference layer: 1 only the new model, 2 only the reference, 3 other class.
DIFFERENCE_COLORS = {
    None: (0.0, 0.0, 0.0, 0.0),
    0: (0.0, 0.0, 0.0, 0.0),
    1: (1.0, 0.2, 0.2, 1.0),
    2: (0.2, 0.5, 1.0, 1.0),
    3: (1.0, 0.9, 0.1, 1.0),
}


def difference_labels(new: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Where two label maps disagree: 1 tumour only in ``new``, 2 only in ``reference``, 3 both
    tumour but another class, 0 agreement (both maps in the same convention)."""
    new_t, ref_t = new > 0, reference > 0
    out = np.zeros(new.shape, np.uint8)
    out[new_t & ~ref_t] = 1
    out[ref_t & ~new_t] = 2
    out[new_t & ref_t & (new != reference)] = 3
    return out


def format_validation(history: list[dict], best_epoch: int = 0, last: int = 6) -> str:
    """Table of validation Dice per region (the last ``last`` validated epochs and the best)."""
    rows = [r for r in history if r.get("val_mean_dice") not in (None, "")]
    if not rows:
        return "No validation yet (it runs every val_every epochs and at the end)."
    shown = rows[-last:]
    best = [r for r in rows if int(r["epoch"]) == best_epoch]
    if best and best[0] not in shown:
        shown = best + shown
    header = "epoch " + " ".join(f"{r:>5}" for r in REPORT_REGIONS) + "  mean"
    lines = ["Validation Dice (* = the checkpoint kept)", header]
    for r in shown:
        mark = "*" if int(r["epoch"]) == best_epoch else " "
        cells = " ".join(f"{float(r[f'val_dice_{g}']):5.3f}" for g in REPORT_REGIONS)
        lines.append(f"{int(r['epoch']):>4}{mark} {cells} {float(r['val_mean_dice']):5.3f}")
    return "\n".join(lines)


def _train(cfg: TrainConfig, progress: Any, should_stop: Any, on_event: Any) -> TrainResult:
    from ..training import DistillConfig, distill, train_teacher

    run = distill if isinstance(cfg, DistillConfig) else train_teacher
    return run(cfg, progress=progress, should_stop=should_stop, on_event=on_event)


def _read_log(run_dir: Path) -> list[dict]:
    path = run_dir / "log.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _folder(value: Any) -> Path | None:
    text = _path_text(value)
    return Path(text).expanduser() if text else None


def _path_text(value: Any) -> str:
    # FileEdit shows an empty field as "." (Path("")): treat it as nothing picked.
    text = str(value) if value is not None else ""
    return "" if text in ("", ".") else text


def _format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
