"""Dock widgets "Segment tumor (student)" and "Segment tumor (teacher)".

A thin shell over :func:`napari_brats_kd.inference.segment`: pick the modality layers (auto-filled
from the open case), a model and a device, click Run. The model runs in a napari thread worker with
a progress bar and a Cancel button; the result appears as a Labels layer in BraTS colours, placed
over the scans and carrying their geometry (so File > Save Selected Layers writes it aligned with
the source), and the tumour sub-region volumes are shown in the widget.

Everything the widget does can be scripted without it: see :func:`napari_brats_kd.segment_viewer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    Label,
    ProgressBar,
    PushButton,
    RadioButtons,
)
from napari.utils.notifications import show_info, show_warning

from ..labels import MODALITIES, MODALITY_NAMES
from ..postprocess import FAR_MM, MIN_CONFIDENCE
from ._qt import wrap_to_dock_width
from ._workers import Task, notify_error, start_task
from .case_from_layers import (
    add_result_layer,
    case_from_layers,
    find_modality_layers,
    format_volumes,
    is_image_layer,
)
from .model_picker import (  # noqa: F401 (re-exported: their home was this module)
    CHECKPOINT_FILTER,
    ModelPicker,
    ModelPickerDock,
    ask_model_path,
    available_devices,
    model_summary,
)

if TYPE_CHECKING:
    import napari

    from ..inference import SegmentationResult
    from ..volume import Case

REPLACE = "Replace previous result"
ADD = "Add a new layer"


class SegmentWidget(ModelPickerDock):
    """Segment the tumour of the case open in ``viewer`` with a student or teacher model.

    Parameters
    ----------
    viewer
        The napari viewer (injected by npe2).
    default_model
        Model selected when the widget opens: ``"student"`` or ``"teacher"``.
    """

    def __init__(self, viewer: napari.viewer.Viewer, default_model: str = "student") -> None:
        super().__init__()
        self.viewer = viewer
        self.default_model = default_model
        self.task: Task | None = None
        self._warm_task: Task | None = None
        self._warmed_for: tuple | None = None  # (model, device, case modalities) last warmed
        self.ready_model: str | None = None  # what prepare_model() last made ready
        self._built = False  # set when __init__ is done: warm-ups start from then on
        self.last_result: SegmentationResult | None = None
        self.last_layer = None
        self._required: tuple[str, ...] = MODALITIES
        # The layer each picker was last given by autofill: a different value was picked by hand.
        self._auto_picks: dict[str, Any] = {}

        self._closed = False  # set when the dock is closed (its Qt widgets are gone)
        self._build_controls()
        self._build_layout()

        self.model_picker.changed.connect(self._on_model_changed)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        layer_events = viewer.layers.events
        layer_events.inserted.connect(self._on_layers_changed)
        layer_events.removed.connect(self._on_layers_changed)
        layer_events.reordered.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._refresh_layer_choices)
        # Closing the dock deletes the Qt widgets: stop a running model and drop its callbacks.
        self.native.destroyed.connect(self._on_destroyed)

        self._select_default_model()
        self._on_model_changed()
        self.autofill()
        self.device_picker.changed.connect(self._warm_up)
        self._built = True
        self._warm_up()

    def _build_controls(self) -> None:
        self.models = ModelPicker(
            self.native,
            label="Model",
            placeholder=self.default_model,
            tooltip=(
                "Network that segments the tumour: models shipped with the plugin, checkpoints "
                "loaded with 'Load checkpoint...' and models trained in this session."
            ),
            load_tooltip=(
                "Add a model from a file: a napari-brats-kd checkpoint (.pt / .safetensors) or a "
                "MONAI bundle's models/model.pt."
            ),
            bundle_tooltip="Add a model from a MONAI bundle folder (e.g. brats_mri_segmentation).",
            info_tooltip="What the selected model needs and does.",
            on_loaded=lambda name, path: show_info(f"Model {name!r} loaded from {path}."),
        )
        self.model_picker = self.models.combo
        self.load_button, self.bundle_button = self.models.load_button, self.models.bundle_button
        self.model_info = self.models.info
        self.modality_pickers: dict[str, ComboBox] = {
            m: ComboBox(
                label=MODALITY_NAMES[m],
                choices=self._image_layer_choices,
                nullable=True,
                tooltip=(
                    f"Image layer holding the {MODALITY_NAMES[m]} scan. Filled in from the open "
                    "case; only modalities the selected model needs are shown."
                ),
            )
            for m in MODALITIES
        }
        self.device_picker = ComboBox(
            label="Device",
            choices=available_devices(),
            value="auto",
            tooltip="Where the model runs: auto picks a GPU when there is one, else the CPU.",
        )
        self.tta_box = CheckBox(
            text="Test-time augmentation (flips)",
            value=False,
            tooltip=(
                "Average the predictions over mirrored copies of the scans: smoother, slightly "
                "more accurate, several times slower."
            ),
        )
        self.far_box = CheckBox(
            text="Drop doubtful spots far from the tumour",
            value=True,
            tooltip=(
                f"Remove tumour components more than {FAR_MM:g} mm from the main lesion whose "
                f"mean probability is under {MIN_CONFIDENCE:g}: on real scans these are mostly "
                "vessels and dura. A satellite lesion the model is sure of is kept. A "
                "notification says what was removed."
            ),
        )
        self.output_choice = RadioButtons(
            label="Result",
            choices=[REPLACE, ADD],
            value=REPLACE,
            tooltip=(
                "Replace: overwrite the layer this model made for this case before. Add: keep "
                "earlier results and add another layer."
            ),
        )
        self.run_button = PushButton(text="Run", tooltip="Segment the tumour with the model.")
        self.cancel_button = PushButton(
            text="Cancel", enabled=False, tooltip="Stop the running segmentation."
        )
        self.progress_bar = ProgressBar(
            label="Progress", value=0, min=0, max=1, tooltip="Progress of the running model."
        )
        self.status = Label(value="", tooltip="What the widget is doing or last did.")
        self.volumes = Label(
            label="Volumes",
            value="",
            tooltip=(
                "Sub-region volumes of the last result: WT whole tumour, TC tumour core, "
                "ET enhancing tumour, in cm³ (mL)."
            ),
        )
        self.volumes.native.setStyleSheet("font-family: monospace;")
        # Long messages (model descriptions, errors) wrap instead of widening the dock.
        wrap_to_dock_width(self.model_info, self.status)

    def _build_layout(self) -> None:
        # Scrolling, as the training dock: docked together they fit a laptop screen.
        # Filled after it is built: magicgui lines the labels up only for widgets added then.
        body = Container(labels=True)
        body.extend(
            [
                *self.models.widgets,
                *self.modality_pickers.values(),
                self.device_picker,
                self.tta_box,
                self.far_box,
                self.output_choice,
                Container(
                    widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False
                ),
                self.progress_bar,
                self.status,
                self.volumes,
            ]
        )
        self.set_body(body, min_height=300)

    # ------------------------------------------------------------------------------------ models
    def _select_default_model(self) -> None:
        from ..models import available_models

        infos = available_models()
        names = [info.name for info in infos]
        role_names = [info.name for info in infos if info.role == self.default_model]
        if self.default_model in names or not role_names:
            self.model_picker.value = self.default_model
        else:
            self.model_picker.value = role_names[0]

    @property
    def required_modalities(self) -> tuple[str, ...]:
        """Input modalities of the selected model, in its channel order (all four if unknown)."""
        return self._required

    @property
    def model_spec(self) -> str:
        """The selected model (a name from ``available_models()``, or the role name)."""
        return self.model_picker.value

    def _open_case_modalities(self) -> tuple[str, ...] | None:
        """Modalities of the case open in the viewer (``None`` when none is recognised)."""
        return tuple(find_modality_layers(self.viewer.layers)) or None

    def _model_config(self, name: str):
        """The config of the model Run would use, and why it is not the named one (or None).

        For the role names, the shipped model that needs only the open case's scans, as
        :func:`~napari_brats_kd.inference.segment` picks it; a header is enough to know.
        """
        from ..models.registry import choose_model, load_choice

        choice = choose_model(name, self._open_case_modalities(), role=self.default_model)
        return choice.config or load_choice(choice).config, choice.reason

    def _on_model_changed(self, *_: Any) -> None:
        """Describe the model Run would use and show only the modality pickers it needs."""
        from ..errors import BratsKDError

        try:
            config, reason = self._model_config(self.model_spec)
        except BratsKDError as exc:
            self._required = MODALITIES
            self.model_info.value = str(exc)
            self.model_info.tooltip = str(exc)
        else:
            self._required = tuple(config.modalities)
            text = model_summary(config, "Needs")
            if reason:
                text = f"For this case: {reason[0].upper()}{reason[1:]}. {text}"
            self.model_info.value = text
            self.model_info.tooltip = text
        for modality, picker in self.modality_pickers.items():
            needed = modality in self._required
            picker.visible = needed
            picker.enabled = needed
        if self._built:
            self._warm_up()

    def _warm_up(self, *_: Any) -> Task:
        """Load the selected model (and build its session) in the background.

        So that the first Run is as fast as the next: on a CPU the lean path's session is built
        here, a checkpoint seen for the first time has its graph exported here, and a GPU model
        is loaded here, all off the GUI thread.
        """
        spec, device = self.model_spec, self.device_picker.value
        # The open case's scans: for one without T1 / T2 the role's T1c + FLAIR model warms up.
        modalities = tuple(find_modality_layers(self.viewer.layers)) or None
        key = (spec, device, modalities)
        if key == self._warmed_for and self._warm_task is not None:
            return self._warm_task  # ready already, or on its way (a layer was added, say)
        self._warmed_for = key
        self.ready_model = None

        def work(progress, should_stop):
            from ..inference import prepare_model

            return prepare_model(spec, modalities, device=device)

        def ready(what: str) -> None:
            if self._closed or (spec, device) != (self.model_spec, self.device_picker.value):
                return  # the user picked another model meanwhile: its own warm-up reports
            self.ready_model = what
            # Only into an empty or earlier "Ready" line: never over a result or an error.
            if not self.status.value or self.status.value.startswith("Ready:"):
                self.status.value = f"Ready: {what}."

        def failed(exc: BaseException) -> None:
            # A model that cannot be loaded is explained by the info line and by Run, not here;
            # the next change of model, device or case tries again.
            self._warmed_for = None

        self._warm_task = start_task(work, on_returned=ready, on_error=failed)
        return self._warm_task

    # ------------------------------------------------------------------------------------ layers
    def _image_layer_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers if is_image_layer(layer)]

    def _refresh_layer_choices(self, *_: Any) -> None:
        for picker in self.modality_pickers.values():
            picker.reset_choices()

    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and hasattr(layer, "events"):
            layer.events.name.connect(self._refresh_layer_choices)
        self._refresh_layer_choices()
        self.autofill(keep_user_picks=True)
        if self.model_spec in ("student", "teacher"):  # the role's fitting model may change
            self._on_model_changed()

    def autofill(self, keep_user_picks: bool = False) -> None:
        """Pick the modality layers of the open case (by metadata, else by layer name).

        The most recently opened case wins (:func:`find_modality_layers`), so opening a second
        case moves the pickers to it.

        Parameters
        ----------
        keep_user_picks
            Keep the layers the user picked by hand; pickers left empty or filled here before
            follow the open case.
        """
        self._refresh_layer_choices()
        found = find_modality_layers(self.viewer.layers)
        for modality, picker in self.modality_pickers.items():
            current = picker.value
            by_hand = current is not None and current is not self._auto_picks.get(modality)
            if keep_user_picks and by_hand:
                continue
            picker.value = found.get(modality)
            self._auto_picks[modality] = picker.value

    def selected_layers(self) -> dict[str, Any]:
        """``{modality: layer}`` of the pickers the selected model needs."""
        return {
            m: self.modality_pickers[m].value
            for m in self._required
            if self.modality_pickers[m].value is not None
        }

    # ------------------------------------------------------------------------------------ run
    def run(self, *_: Any) -> Task | None:
        """Start segmenting in a worker thread; returns the task, or None if it cannot start."""
        from ..errors import BratsKDError, CaseError

        if self.task is not None and self.task.is_running:
            show_info("A segmentation is already running.")
            return None
        layers = self.selected_layers()
        missing = [MODALITY_NAMES[m] for m in self._required if m not in layers]
        try:
            if missing:
                raise CaseError(
                    f"No layer picked for {', '.join(missing)}: open a case (File > Open) or "
                    "pick the layers in the widget."
                )
            case, warnings = case_from_layers(layers)
        except BratsKDError as exc:
            notify_error(exc, "Segmentation")
            return None
        for warning in warnings:
            show_warning(warning)
        source_layer = next(iter(layers.values()))
        spec = self.model_spec
        device = self.device_picker.value
        tta = bool(self.tta_box.value)
        drop_far = bool(self.far_box.value)

        def work(progress, should_stop):
            from ..inference import segment
            from ..postprocess import largest_lesion_centre

            result = segment(
                case,
                model=spec,
                device=device,
                tta=tta,
                drop_far_components=drop_far,
                progress=progress,
                should_stop=should_stop,
            )
            # Found here, off the GUI thread: where the view goes to show the result.
            self._lesion_centre = largest_lesion_centre(result.labels)
            return result

        self._set_running(True)
        self.status.value = f"Segmenting {case.case_id} with {spec}: reading the layers..."
        self.task = start_task(
            work,
            on_progress=self._on_progress,
            on_returned=lambda result: self._on_result(result, case, source_layer, spec),
            on_error=self._on_error,
            on_finished=lambda: self._set_running(False),
        )
        return self.task

    def cancel(self, *_: Any) -> None:
        """Ask the running segmentation to stop (it stops at its next step)."""
        if self.task is not None and self.task.is_running:
            self.task.cancel()
            self.status.value = "Cancelling..."

    def _on_destroyed(self, *_: Any) -> None:
        self._closed = True
        if self.task is not None and self.task.is_running:
            self.task.cancel()

    def _set_running(self, running: bool) -> None:
        if self._closed:
            return
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        for widget in (
            self.model_picker,
            self.load_button,
            self.bundle_button,
            self.device_picker,
            self.tta_box,
            self.far_box,
            *self.modality_pickers.values(),
        ):
            widget.enabled = not running
        if not running:
            for modality, picker in self.modality_pickers.items():
                picker.enabled = modality in self._required
        else:
            # Busy (an animated bar) until segment() reports its first stage (scans ready).
            self.progress_bar.value = 0
            self.progress_bar.max = 0
        if not running and self.progress_bar.max == 0:
            self.progress_bar.max = 1

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self._closed:
            return
        if int(total) > 1:
            self.progress_bar.max = int(total)
            self.progress_bar.value = min(int(done), self.progress_bar.max)
        if message:
            self.status.value = message

    def _on_error(self, exc: BaseException) -> None:
        from ..errors import Cancelled

        if not self._closed:
            self.status.value = "Cancelled." if isinstance(exc, Cancelled) else "Failed."
        notify_error(exc, "Segmentation")

    def _on_result(
        self, result: SegmentationResult, case: Case, source_layer: Any, model_label: str
    ) -> None:
        self.last_result = result
        if self._closed:
            return
        self.last_layer = add_result_layer(
            self.viewer,
            result,
            case,
            source_layer,
            model_label,
            replace=self.output_choice.value == REPLACE,
        )
        self.progress_bar.max = max(self.progress_bar.max, 1)
        self.progress_bar.value = self.progress_bar.max
        self.status.value = (
            f"{result.model} on {result.device}: {result.seconds:.1f} s -> "
            f"layer {self.last_layer.name!r}"
        )
        self.volumes.value = format_volumes(result.volumes_ml)
        self._go_to_lesion()
        for note in result.notes:
            show_info(f"{case.case_id}: {note}")

    def _go_to_lesion(self) -> None:
        """Move the sliders to the result's largest lesion (the middle slice may show none)."""
        centre = getattr(self, "_lesion_centre", None)
        if centre is None or self.last_layer is None:
            return
        world = self.last_layer.data_to_world(centre)
        axes = range(self.viewer.dims.ndim - len(world), self.viewer.dims.ndim)
        for axis, value in zip(axes, world, strict=True):
            self.viewer.dims.set_point(axis, float(value))


class StudentSegmentWidget(SegmentWidget):
    """'Segment tumor (student)': the fast compact model, selected by default."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, default_model="student")


class TeacherSegmentWidget(SegmentWidget):
    """'Segment tumor (teacher)': the big, slower, more accurate model, selected by default."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, default_model="teacher")
