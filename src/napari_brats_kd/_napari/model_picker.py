"""The model picker of the Segment and Train docks: a list of models, two load buttons, an info line.

Both docks list the same models (:func:`napari_brats_kd.models.available_models`: shipped, trained
in this session, loaded from a file), load a checkpoint file or a MONAI bundle folder the same way
and describe the picked model in one wrapped line; what differs (the label, an entry for a role
that is not installed, what happens after a load) is a parameter. The helpers the docks share
(:func:`ask_model_path`, :func:`model_summary`, :func:`available_devices`) live here too,
and the docks' common base, :class:`ModelPickerDock`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, Label, PushButton

from ..labels import MODALITY_NAMES
from ._qt import ScrollingDock
from ._workers import notify_error

#: File-dialog filter of checkpoints the models package can load.
CHECKPOINT_FILTER = (
    "Model checkpoints (*.pt *.pth *.ckpt *.safetensors *.ts);;MONAI bundle model (model.pt);;"
    "All files (*)"
)


def ask_model_path(parent: Any, bundle: bool) -> str | None:
    """Ask for a checkpoint file (or, with ``bundle``, a MONAI bundle folder).

    Parameters
    ----------
    parent
        The Qt widget the dialog belongs to.
    bundle
        Ask for a folder (a MONAI bundle) instead of a file.

    Returns
    -------
    str or None
        The path picked, or ``None`` if the dialog was cancelled.
    """
    from qtpy.QtWidgets import QFileDialog

    if bundle:
        path = QFileDialog.getExistingDirectory(parent, "Load a MONAI bundle folder")
    else:
        path, _filter = QFileDialog.getOpenFileName(
            parent, "Load a model checkpoint", "", CHECKPOINT_FILTER
        )
    return path or None


def model_summary(config: Any, verb: str) -> str:
    """A model's one-line description for a widget: ``"<description>. <verb> T1c, FLAIR."``.

    Parameters
    ----------
    config
        The model's config (``description``, ``display_name`` and ``modalities``).
    verb
        The word before the modalities (``"Needs"``, ``"Takes"``).

    Returns
    -------
    str
    """
    needs = ", ".join(MODALITY_NAMES[m] for m in config.modalities)
    return f"{(config.description or config.display_name).rstrip('.')}. {verb} {needs}."


def available_devices() -> list[str]:
    """``"auto"``, ``"cpu"`` and the accelerators torch can use on this machine.

    Without a GPU (a CPU-only torch build, no GPU device) torch is not imported: opening the
    widget stays instant and segmenting runs on the lean ONNX path.

    Returns
    -------
    list of str
    """
    from ..device import may_have_accelerator

    devices = ["auto", "cpu"]
    if not may_have_accelerator():
        return devices
    import torch

    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def model_choices(placeholder: str | None = None) -> list[tuple[str, str]]:
    """``(label, name)`` of every model the models package knows (shipped + this session).

    Parameters
    ----------
    placeholder
        A role name (``"student"``, ``"teacher"``) listed first when no model has that name: it
        resolves to the shipped model of that role, and with none installed it stays selectable
        so that Run (and the info line) can say what to do.

    Returns
    -------
    list of (str, str)
    """
    from ..models import available_models

    choices = [(f"{i.name} ({i.role}, {i.source})", i.name) for i in available_models()]
    if placeholder is not None and not any(name == placeholder for _, name in choices):
        choices.insert(0, (f"{placeholder} (shipped; not installed)", placeholder))
    return choices


def model_config(spec: str) -> Any:
    """The config of a listed model, read from its checkpoint's header when it has one.

    Parameters
    ----------
    spec
        A name from :func:`~napari_brats_kd.models.available_models`, a path or a role name.

    Returns
    -------
    The model's config (what it takes and predicts).

    Raises
    ------
    BratsKDError
        The model cannot be found or read.
    """
    from ..models import available_models, read_checkpoint_config, resolve_model

    for info in available_models():
        # A header is enough to describe the model: no weights are loaded.
        if info.name == spec and info.path.suffix == ".safetensors" and info.path.is_file():
            return read_checkpoint_config(info.path)
    return resolve_model(spec, role="teacher").config


def model_file(name: str) -> str:
    """A listed model's file when it has one (a run's config then works outside this session).

    Parameters
    ----------
    name
        A name from :func:`~napari_brats_kd.models.available_models`.

    Returns
    -------
    str
        The file's path, else ``name``.
    """
    from ..models import available_models

    for info in available_models():
        if info.name == name and info.path.exists():
            return str(info.path)
    return name


def refresh_model_lists(viewer: Any, skip: Any = None) -> None:
    """Refresh the model lists of every dock in ``viewer`` but ``skip`` (a model was added)."""
    for widget in viewer.window.dock_widgets.values():
        reset = getattr(widget, "reset_choices", None)
        if widget is not skip and callable(reset):
            reset()


class ModelPicker:
    """A model list, "Load checkpoint..." and "Load MONAI bundle folder..." buttons, an info line.

    Parameters
    ----------
    parent
        The Qt widget the file dialogs belong to (the dock).
    label, tooltip
        Label and tooltip of the model list.
    load_tooltip, bundle_tooltip, info_tooltip
        Tooltips of the two buttons and of the info line.
    nullable
        Whether the list may show no model (the Train dock before any teacher exists).
    placeholder
        See :func:`model_choices`.
    on_loaded
        Called with the name and path of a model loaded with a button (or :meth:`load_model`),
        after the list was refreshed and the model picked.

    Attributes
    ----------
    combo : magicgui.widgets.ComboBox
        The model list; its value is the picked model's name.
    load_button, bundle_button : magicgui.widgets.PushButton
    buttons : magicgui.widgets.Container
        The two buttons in a row.
    info : magicgui.widgets.Label
        What the picked model takes and does (the dock fills it in).
    """

    def __init__(
        self,
        parent: Any,
        *,
        label: str,
        tooltip: str,
        load_tooltip: str,
        bundle_tooltip: str,
        info_tooltip: str,
        nullable: bool = False,
        placeholder: str | None = None,
        on_loaded: Callable[[str, str | Path], None] | None = None,
    ) -> None:
        self._parent = parent
        self._placeholder = placeholder
        self._on_loaded = on_loaded
        self.combo = ComboBox(label=label, choices=self.choices, nullable=nullable, tooltip=tooltip)
        self.load_button = PushButton(text="Load checkpoint...", tooltip=load_tooltip)
        self.bundle_button = PushButton(text="Load MONAI bundle folder...", tooltip=bundle_tooltip)
        self.buttons = Container(
            widgets=[self.load_button, self.bundle_button], layout="horizontal", labels=False
        )
        self.info = Label(value="", tooltip=info_tooltip)
        self.load_button.changed.connect(lambda *_: self._ask_and_load(bundle=False))
        self.bundle_button.changed.connect(lambda *_: self._ask_and_load(bundle=True))

    def choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        """The list's entries (magicgui calls this on ``reset_choices``)."""
        return model_choices(self._placeholder)

    @property
    def widgets(self) -> list[Any]:
        """The picker's rows in a form: the list, the buttons, the info line."""
        return [self.combo, self.buttons, self.info]

    @property
    def visible(self) -> bool:
        """Whether the picker's rows are shown."""
        return self.combo.visible

    @visible.setter
    def visible(self, shown: bool) -> None:
        for widget in self.widgets:
            widget.visible = shown

    def pick_if_empty(self, role: str) -> None:
        """Refresh the list and, when nothing is picked, pick the last model of ``role``.

        Parameters
        ----------
        role
            ``"teacher"`` or ``"student"``; with no model of that role, the last model listed.
        """
        from ..models import available_models

        self.combo.reset_choices()
        if self.combo.value is not None:
            return
        infos = available_models()
        of_role = [i.name for i in infos if i.role == role]
        if of_role:
            self.combo.value = of_role[-1]
        elif infos:
            self.combo.value = infos[-1].name

    def describe(self, verb: str, empty: str) -> None:
        """Fill the info line in from the picked model's config (:func:`model_config`).

        Parameters
        ----------
        verb
            The word before its modalities (see :func:`model_summary`).
        empty
            The line when no model is picked.
        """
        from ..errors import BratsKDError

        spec = self.combo.value
        if not spec:
            self.info.value = empty
            return
        try:
            config = model_config(spec)
        except BratsKDError as exc:
            self.info.value = str(exc)
            return
        self.info.value = model_summary(config, verb)

    def picked_file(self, what: str) -> str:
        """The picked model, as its file when it has one (:func:`model_file`).

        Parameters
        ----------
        what
            What the model is for, in the message when none is picked (``"teacher"``).

        Returns
        -------
        str

        Raises
        ------
        TrainingError
            No model is picked.
        """
        from ..errors import TrainingError

        spec = self.combo.value
        if not spec:
            raise TrainingError(
                f"No {what} picked: load a checkpoint or a MONAI bundle folder with the buttons "
                "under it."
            )
        return model_file(spec)

    def restore(self, model: str | None) -> None:
        """Pick a saved model again: by its name when listed, else by loading its file quietly."""
        if not model:
            return
        if model in [name for _, name in self.choices()]:
            self.combo.value = model
        elif Path(model).exists():
            self.load_model(model, quiet=True)

    def _ask_and_load(self, bundle: bool) -> None:
        path = ask_model_path(self._parent, bundle=bundle)
        if path:
            self.load_model(path)

    def load_model(self, path: str | Path, quiet: bool = False) -> str | None:
        """Register a checkpoint file or MONAI bundle folder and pick it.

        Parameters
        ----------
        path
            The checkpoint file or bundle folder.
        quiet
            Say nothing when it cannot be loaded (restoring a saved pick).

        Returns
        -------
        str or None
            The model's name, or ``None`` if it could not be loaded (a notification says why).
        """
        from ..errors import BratsKDError
        from ..models import register_model

        try:
            entry = register_model(Path(path))
        except BratsKDError as exc:
            if not quiet:
                notify_error(exc, f"Loading {Path(path).name}")
            return None
        self.combo.reset_choices()
        self.combo.value = entry.name
        if self._on_loaded is not None:
            self._on_loaded(entry.name, path)
        return entry.name


class ModelPickerDock(ScrollingDock):
    """A scrolling dock that holds a :class:`ModelPicker` as ``self.models`` (Segment, Train).

    It gives the dock the picker's :meth:`load_model`, so that scripts and tests load a model into
    the dock as its buttons do.
    """

    models: ModelPicker

    def load_model(self, path: str | Path, quiet: bool = False) -> str | None:
        """Register a checkpoint file or MONAI bundle folder and pick it in the dock's list.

        The dock's face of :meth:`ModelPicker.load_model`: the same parameters and return value
        (the model's name, or ``None`` if it could not be loaded).
        """
        return self.models.load_model(path, quiet=quiet)
