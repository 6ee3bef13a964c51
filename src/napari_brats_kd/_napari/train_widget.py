"""Dock widget "Train student (distillation)": train, distil, fine-tune or adapt a model in napari.

A thin shell over :mod:`napari_brats_kd.training`: the widget turns its controls into a training
config (the shipped YAML defaults of the mode, the controls' values, then the user's extra
``key=value`` settings), runs :func:`~napari_brats_kd.training.distill` /
:func:`~napari_brats_kd.training.train_teacher` / :func:`~napari_brats_kd.training.resume_run` in a
napari thread worker, and shows what the engine reports: loss per step and epoch and validation
Dice per region in a live plot, the epoch and an ETA under a progress bar, the validation table at
the end. The trained model is registered (:func:`napari_brats_kd.models.register_model`) so the
Segment widgets list it, and "Segment current case" compares it with its teacher on the open case.

The modes (Distil student, Train teacher, Fine-tune, Adapt to unlabelled scans) and every
control are one table, in :mod:`.train_fields`; on a CPU the defaults are the smaller sizes of
``configs/cpu_sizes.yaml``, and the "Expected" line times one step before Start
(:mod:`.train_estimate`).

Stop finishes the current step and saves a checkpoint; Resume continues that run. Nothing here
trains: every number the engine uses comes from its config (the widget's defaults are read from
the shipped YAML files).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QObject, Signal

from ..labels import MODALITIES
from . import compare, model_picker, train_feedback, train_form, train_sources
from ._plot import TrainingPlot
from ._qt import wrap_to_dock_width
from ._settings import load_settings, save_settings
from ._workers import FrozenHeap, Task, notify_error, start_task
from .model_picker import ModelPicker, ModelPickerDock
from .train_estimate import DurationEstimate, count_cases
from .train_form import MODES, MODES_BY_KEY, MODES_BY_TITLE, Mode

if TYPE_CHECKING:
    import napari

    from ..training import TrainConfig, TrainResult

#: Name of the persisted settings file (see :mod:`._settings`).
SETTINGS_NAME = "train_widget"


class _EventRelay(QObject):
    """Created in the GUI thread: emitting from the worker queues the engine's events to it."""

    event = Signal(object)


class TrainWidget(ModelPickerDock):
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
        self.last_result: TrainResult | None = None
        self.last_run_dir: Path | None = None
        self.trained_model: str | None = None
        self.reference_model: str | None = None
        self._run_reference: str | None = None
        self._closed = False
        self._mode = MODES[0]
        self._per_mode: dict[str, dict[str, Any]] = {}
        self._relay = _EventRelay()
        self._relay.event.connect(self._on_event)

        self._build_controls()
        self._device = self.device_picker.value
        self._build_layout()
        self._connect_signals()
        self._restore_settings()
        self._on_mode_changed()
        self._set_running(False)
        self.native.destroyed.connect(self._on_destroyed)

    # ------------------------------------------------------------------------------ building
    def _build_controls(self) -> None:
        tips = train_form.TIPS
        titles = [m.title for m in MODES]
        self.mode_picker = ComboBox(
            label="Mode", choices=titles, value=titles[0], tooltip=tips["mode"]
        )
        self.models = ModelPicker(
            self.native,
            label="Teacher",
            nullable=True,
            tooltip=tips["model"],
            load_tooltip=tips["load"],
            bundle_tooltip=tips["bundle"],
            info_tooltip=tips["model_info"],
            # A model loaded here is offered by the Segment docks too.
            on_loaded=lambda name, path: self._refresh_model_lists(),
        )
        self.model_picker = self.models.combo
        self.load_button, self.bundle_button = self.models.load_button, self.models.bundle_button
        self.model_buttons, self.model_info = self.models.buttons, self.models.info
        # The settings' controls, from the one table of them (train_fields.FIELDS).
        self.controls = train_form.build_controls()
        for field in train_form.FIELDS:
            setattr(self, field.attr, self.controls[field.name])
        self.modality_boxes: dict[str, Any] = dict(
            zip(MODALITIES, self.modalities_row, strict=True)
        )
        self.start_button = PushButton(text="Start", tooltip=tips["start"])
        self.stop_button = PushButton(text="Stop", tooltip=tips["stop"])
        self.resume_button = PushButton(text="Resume", tooltip=tips["resume"])
        self.progress_bar = ProgressBar(
            label="Progress", value=0, min=0, max=1, tooltip=tips["progress"]
        )
        self.status = Label(value="", tooltip=tips["status"])
        self.expected = Label(value="", tooltip=tips["expected"])
        self.estimate = DurationEstimate(self.expected, self._estimate_inputs)
        self.plot = TrainingPlot()
        self.plot.setToolTip(tips["plot"])
        self.plot.follow_theme(self.viewer)
        self.feedback = train_feedback.RunFeedback(self.plot)
        self.results = Label(value="", tooltip=tips["results"])
        self.results.native.setStyleSheet("font-family: monospace;")
        # Long messages (model descriptions, paths, errors) wrap instead of widening the dock.
        wrap_to_dock_width(self.model_info, self.status, self.expected)
        self.segment_button = PushButton(text="Segment current case", tooltip=tips["segment"])
        self.comparison = compare.CaseComparison(
            self.viewer,
            self.status,
            self.segment_button,
            closed=lambda: self._closed,
            on_finished=lambda: self._set_running(self._busy()),
        )

    def _build_layout(self) -> None:
        # The plot is a plain QWidget: a label-less Container places it in magicgui's column.
        self.plot_box = Container(labels=False)
        self.plot_box.native.layout().addWidget(self.plot)
        # Settings in a labelled form; progress, plot and results below it at full width.
        self.form = Container(labels=True)
        rows: list[Any] = [self.mode_picker]
        for field in train_form.FIELDS:
            rows.append(self.controls[field.name])
            if field.name == train_form.MODEL_ROWS_AFTER:
                rows += self.models.widgets
        buttons = [self.start_button, self.stop_button, self.resume_button]
        rows += [self.expected, Container(widgets=buttons, layout="horizontal", labels=False)]
        rows.append(self.progress_bar)
        self.form.extend(rows)
        # The form, plots and results are taller than a laptop screen: they scroll.
        self.set_body(
            Container(
                widgets=[self.form, self.status, self.plot_box, self.results, self.segment_button],
                labels=False,
            )
        )

    def _connect_signals(self) -> None:
        self.mode_picker.changed.connect(self._on_mode_changed)
        self.use_viewer_cases.changed.connect(self._on_source_changed)
        self.use_viewer_case.changed.connect(self._on_source_changed)
        self.model_picker.changed.connect(self._on_model_changed)
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.resume_button.changed.connect(self.resume)
        self.segment_button.changed.connect(self.segment_current_case)
        self.device_picker.changed.connect(self._on_device_changed)
        for control in [self.mode_picker, self.model_picker, *self.controls.values()]:
            control.changed.connect(self.estimate.schedule)

    # ------------------------------------------------------------------------------ modes
    @property
    def mode(self) -> Mode:
        """The selected mode."""
        return MODES_BY_TITLE[self.mode_picker.value]

    def _mode_values(self) -> dict[str, Any]:
        """Values of the controls whose defaults depend on the mode."""
        return train_form.read_values(self.controls)

    def _on_mode_changed(self, *_: Any) -> None:
        new = self.mode
        if new is not self._mode:
            self._per_mode[self._mode.key] = self._mode_values()
        values = train_form.defaults_of(new, self.device_picker.value)
        values.update(self._per_mode.get(new.key, {}))
        self._mode = new
        train_form.apply_values(self.controls, values)
        for field in train_form.FIELDS:
            self.controls[field.name].visible = field.name in new.controls
        self.models.visible = "model" in new.controls
        self.model_picker.label = "Pretrained model" if new.key == "finetune" else "Teacher"
        if new.key != "teacher":
            self.models.pick_if_empty("teacher")
        self._on_model_changed()

    def _on_device_changed(self, *_: Any) -> None:
        # What is still the old device's default (GPU-sized epochs, say) becomes the new one's.
        new, mode = self.device_picker.value, self.mode
        values = train_form.resized_for_device(self._mode_values(), mode, self._device, new)
        train_form.apply_values(self.controls, values)
        self._device = new

    def _estimate_inputs(self) -> tuple[TrainConfig, int] | str:
        if self._busy():
            return self.expected.value
        n_cases = None if self.use_viewer_cases.value else count_cases(self.data_dir.value)
        if n_cases is None:
            return "Expected duration: shown once the dataset folder holds labelled cases."
        return self.build_config(), n_cases

    def _on_source_changed(self, *_: Any) -> None:
        # A folder the run will not read is greyed out, so that it is clear what is trained on.
        running = self._busy()
        self.data_dir.enabled = not running and not self.use_viewer_cases.value
        self.unlabeled_dir.enabled = not running and not self.use_viewer_case.value

    # ------------------------------------------------------------------------------ models
    def _on_model_changed(self, *_: Any) -> None:
        self.models.describe(
            "Takes",
            empty=(
                "No model picked: load a checkpoint or a MONAI bundle folder (a teacher can be "
                "trained in the 'Train teacher' mode)."
            ),
        )

    def _refresh_model_lists(self) -> None:
        """Refresh this widget's and every docked widget's model lists (the Segment widgets)."""
        self.model_picker.reset_choices()
        model_picker.refresh_model_lists(self.viewer, skip=self)

    # ------------------------------------------------------------------------------ config
    def build_config(self, run_dir: Path | None = None) -> TrainConfig:
        """The training config of the current controls (shipped defaults < controls < extras).

        Parameters
        ----------
        run_dir
            The run's folder (by default a new one in the output folder).

        Returns
        -------
        TrainConfig

        Raises
        ------
        TrainingError
            A folder or model is missing, or a setting is out of range.
        """
        from ..errors import TrainingError
        from ..training import load_config

        mode = self.mode
        run_dir = run_dir or train_sources.new_run_dir(self.output_dir.value, mode.run_prefix)
        use_cases, use_case = self.use_viewer_cases.value, self.use_viewer_case.value
        if mode.key == "adapt" and use_cases and use_case:
            raise TrainingError(
                "Both 'Use the labelled cases open in the viewer' and 'Use the case open in "
                "the viewer' are ticked: untick one, and give the other set as a folder."
            )
        values: dict[str, Any] = {
            # The open cases are written there by the run (see start()).
            "data_dir": str(train_sources.labelled_dir(self.data_dir.value, use_cases, run_dir)),
            "run_dir": str(run_dir),
            **train_form.to_overrides(
                self._mode_values() | {"device": self.device_picker.value}, mode
            ),
        }
        if "modalities" in mode.controls and not any(b.value for b in self.modality_boxes.values()):
            raise TrainingError("Tick at least one input scan (T1, T1c, T2 or FLAIR).")
        if mode.key in ("distill", "adapt", "teacher"):
            values["model.name"] = run_dir.name
        if "model" in mode.controls:
            spec = self.models.picked_file(
                "pretrained model" if mode.key == "finetune" else "teacher"
            )
            values["init_from" if mode.key == "finetune" else "teacher"] = spec
        if mode.key == "adapt":
            picked = self.unlabeled_dir.value
            values["unlabeled_dir"] = str(train_sources.unlabeled_dir(picked, use_case, run_dir))
        return load_config(
            mode.config,
            train_form.merge_overrides(values, train_form.split_extra(self.extra.value)),
        )

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
        try:
            labelled, case, warnings = train_sources.open_cases(
                cfg,
                self.viewer.layers,
                labelled=self.use_viewer_cases.value,
                unlabelled=mode.key == "adapt" and self.use_viewer_case.value,
            )
        except BratsKDError as exc:
            notify_error(exc, "Training")
            return None
        for warning in warnings:
            show_warning(warning)
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
        from ..errors import BratsKDError

        if self._busy():
            show_info("A training run is already running.")
            return None
        run_dir = run_dir or self.last_run_dir
        run_dir = run_dir or train_sources.ask_run_dir(self.native, self.output_dir.value)
        if run_dir is None:
            return None
        run_dir = Path(run_dir)
        try:
            cfg = train_sources.run_config(run_dir)
        except BratsKDError as exc:
            notify_error(exc, "Resume")
            return None
        # Raising Epochs above the run's setting trains a finished run longer.
        epochs = max(int(cfg.epochs), int(self.epochs.value))
        self.plot.load_history(train_feedback.read_log(run_dir))
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
        self.feedback.reset(epochs)
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
        self.estimate.stop()
        for task in (self.task, self.segment_task):
            if task is not None and task.is_running:
                task.cancel()

    def _set_running(self, running: bool) -> None:
        if self._closed:
            return
        self.start_button.enabled = not running
        self.stop_button.enabled = running
        can_resume = train_sources.can_resume(self.last_run_dir)
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
        seg_busy = self.comparison.busy
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
        self.progress_bar.max = max(int(total), 1)
        self.progress_bar.value = min(int(done), self.progress_bar.max)
        self.status.value = self.feedback.progress(done, total, message)

    def _on_event(self, event: dict) -> None:
        if self._closed:
            return
        status = self.feedback.event(event)
        if status is not None:
            self.status.value = status

    def _on_error(self, exc: BaseException) -> None:
        from ..errors import Cancelled

        if isinstance(exc, Cancelled):  # stopped before the first step (e.g. while caching)
            if not self._closed:
                self.status.value = f"Stopped. {exc}"
            notify_error(exc, "Training")
            return
        if not self._closed:
            self.status.value = train_feedback.failed_status(self.last_run_dir)
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
        self.results.value = train_feedback.format_validation(result.history, result.best_epoch)
        checkpoint = train_feedback.checkpoint_to_offer(result)
        if checkpoint is None:
            self.status.value = train_feedback.finished_status(result)
            show_info(f"Training stopped; Resume continues {result.run_dir.name}.")
            return
        try:
            entry = register_model(checkpoint, name=result.run_dir.name)
        except BratsKDError as exc:
            notify_error(exc, "Registering the trained model")
            return
        self.trained_model = entry.name
        self.reference_model = self._run_reference
        self._refresh_model_lists()
        self.status.value = train_feedback.finished_status(result, entry.name)
        show_info(train_feedback.finished_note(result, entry.name))

    # ------------------------------------------------------------------------------ comparison
    def segment_current_case(self, *_: Any) -> Task | None:
        """Segment the open case with the trained model and its reference, plus a difference.

        Adds ``"<case> tumor (<model>)"`` for both models and ``"<case> <model> vs <reference>"``
        (1 = tumour only in the new model, 2 = only in the reference, 3 = both, other class).
        Returns the task, or None if it cannot start (a notification says why).
        """
        if self.trained_model is None:
            show_info("Train a model first: 'Segment current case' uses the model of the last run.")
            return None
        if self.comparison.busy:
            return None
        models = [self.trained_model] + ([self.reference_model] if self.reference_model else [])
        return self.comparison.start(models, self.device_picker.value)

    @property
    def segment_task(self) -> Task | None:
        """The running (or last) "Segment current case" task."""
        return self.comparison.task

    # ------------------------------------------------------------------------------ settings
    def settings(self) -> dict[str, Any]:
        """The values that persist between sessions."""
        per_mode = dict(self._per_mode)
        per_mode[self.mode.key] = self._mode_values()
        model = self.model_picker.value
        return {
            "mode": self.mode.key,
            **train_form.session_settings(self.controls),
            "model": model_picker.model_file(model) if model else None,
            "last_run_dir": str(self.last_run_dir) if self.last_run_dir else None,
            "modes": per_mode,
        }

    def _save_settings(self) -> None:
        save_settings(SETTINGS_NAME, self.settings())

    def _restore_settings(self) -> None:
        saved = load_settings(SETTINGS_NAME)
        if not saved:
            return
        self._per_mode = train_form.saved_mode_values(saved.get("modes"))
        train_form.restore_session(self.controls, saved)
        if saved.get("last_run_dir") and Path(saved["last_run_dir"]).is_dir():
            self.last_run_dir = Path(saved["last_run_dir"])
        self.models.restore(saved.get("model"))
        mode = MODES_BY_KEY.get(saved.get("mode", ""))
        if mode is not None:
            self._mode = mode  # values of the saved mode are applied by _on_mode_changed
            self.mode_picker.value = mode.title


# ---------------------------------------------------------------------------------- helpers
def _train(cfg: TrainConfig, progress: Any, should_stop: Any, on_event: Any) -> TrainResult:
    from ..training import DistillConfig, distill, train_teacher

    run = distill if isinstance(cfg, DistillConfig) else train_teacher
    return run(cfg, progress=progress, should_stop=should_stop, on_event=on_event)
