"""The Train dock's settings as one table: what each control is, where it goes, when it shows.

Each :class:`Field` says once what a control is (kind, label, range, tooltip), which modes show
it, which training setting it fills (``config_key``, with the conversion both ways) and whether it
is remembered per mode or per session; each :class:`Mode` names the shipped config it starts from.
:mod:`.train_form` builds the controls from the table and maps their values to configs and saved
settings. Nothing here imports Qt, napari, magicgui or torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..labels import BUNDLE_MODALITY_ORDER, MODALITIES

#: Labelled cases a run needs: one is held out for validation, at least one trains.
MIN_LABELLED_CASES = 2

#: Default folder of run folders.
DEFAULT_OUTPUT_DIR = Path.home() / "brats-kd-runs"

_ALL = frozenset({"distill", "teacher", "finetune", "adapt"})
#: The two distillation modes (Distil student, Adapt to unlabelled scans).
_KD = frozenset({"distill", "adapt"})
#: Modes that start from a model (the teacher, or the checkpoint fine-tuned): they show the picker.
MODEL_MODES = frozenset({"distill", "finetune", "adapt"})


@dataclass(frozen=True)
class Field:
    """One control of the Train dock.

    Attributes
    ----------
    name
        Its key in the saved settings and in :attr:`Mode.controls`.
    attr
        The dock's attribute holding the control.
    kind
        ``"int"``, ``"float"``, ``"check"``, ``"combo"``, ``"folder"``, ``"line"`` or
        ``"modalities"`` (a row of check boxes, one per modality).
    label
        The row's label (a check box's text).
    tooltip
        What it does, for the user.
    modes
        Keys of the modes that show it (and, with ``config_key``, put it in the config).
    config_key
        The (dotted) training setting it fills, or ``None`` when the dock fills it itself.
    to_config
        ``(value, mode key) -> setting``; ``None``: by kind (``int``, ``float``, ``bool``, as is).
    from_config
        ``(config, distillation config) -> value``: its default in a mode's shipped config (the
        second config gives the distillation settings to the modes without them). Set for the
        settings remembered per mode; ``None`` for those remembered per session.
    lo, hi, step
        Range and step of a spin box.
    choices
        Returns the choices of a combo box (called when the controls are built).
    value
        Initial value (``None``: the control's own).
    """

    name: str
    attr: str
    kind: str
    label: str
    tooltip: str
    modes: frozenset[str] = _ALL
    config_key: str | None = None
    to_config: Callable[[Any, str], Any] | None = None
    from_config: Callable[[Any, Any], Any] | None = None
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    choices: Callable[[], list] | None = None
    value: Any = None

    @property
    def per_mode(self) -> bool:
        """Whether its value is remembered per mode (its default depends on the mode)."""
        return self.from_config is not None


def _augment_presets() -> list[str]:
    from ..training import PRESETS

    return list(PRESETS)


def _student_presets() -> list[str]:
    from ..models import STUDENT_PRESETS

    return list(STUDENT_PRESETS)


def _teacher_archs() -> list[str]:
    from ..models import TEACHER_ARCHS

    return list(TEACHER_ARCHS)


def _devices() -> list[str]:
    from .model_picker import available_devices

    return available_devices()


def _modalities_setting(value: Sequence[str], mode: str) -> list[str] | None:
    mods = [m for m in BUNDLE_MODALITY_ORDER if m in value]
    # A student with all four ticked takes the teacher's modalities, in the teacher's order.
    return None if mode in _KD and len(mods) == len(MODALITIES) else mods


FIELDS: tuple[Field, ...] = (
    Field(
        "data_dir", "data_dir", "folder", "Dataset folder",
        "Folder of labelled cases (one folder per case with its T1/T1c/T2/FLAIR and "
        "segmentation files, any BraTS naming). Part of it is held out for validation.",
    ),
    Field(
        "use_viewer_cases", "use_viewer_cases", "check",
        "Use the labelled cases open in the viewer instead",
        "Train on the cases open in napari instead of a folder: every case whose ground truth is "
        "a Labels layer named '<case> segmentation' (as opening a case folder with its "
        "segmentation makes it). They are written to the run folder; at least "
        f"{MIN_LABELLED_CASES} are needed, as one is held out for validation.",
    ),
    Field(
        "unlabeled_dir", "unlabeled_dir", "folder", "Unlabelled folder",
        "Cases from the new site without segmentations: the student learns from the teacher's "
        "predictions on them.",
        modes=frozenset({"adapt"}),
    ),
    Field(
        "use_viewer_case", "use_viewer_case", "check", "Use the case open in the viewer instead",
        "Adapt to the scans open in napari (e.g. a new hospital's case) instead of a folder: they "
        "are written to the run folder and used as the unlabelled set.",
        modes=frozenset({"adapt"}),
    ),
    Field(
        "student", "student_preset", "combo", "Student",
        "Student size: student-small (about 0.44 M parameters) or student-tiny (three stages, "
        "faster). Both run at half resolution on CPU.",
        modes=_KD, config_key="model.arch", choices=_student_presets,
        from_config=lambda c, kd: c.model.arch if c.model.kind == "student" else kd.model.arch,
    ),
    Field(
        "teacher_arch", "teacher_arch", "combo", "Architecture",
        "Network to train: segresnet is the MONAI brats_mri_segmentation bundle network; "
        "segresnet-large is wider; unet and swinunetr are alternatives.",
        modes=frozenset({"teacher"}), config_key="model.arch", choices=_teacher_archs,
        from_config=lambda c, kd: c.model.arch if c.model.kind == "teacher" else "segresnet",
    ),
    Field(
        "modalities", "modalities_row", "modalities", "Input scans",
        "Modalities the trained model will take as input. For a student, all four ticked means "
        "the teacher's own inputs.",
        modes=_KD | {"teacher"}, config_key="model.modalities", to_config=_modalities_setting,
        from_config=lambda c, kd: list(c.model.modalities or MODALITIES),
    ),
    Field(
        "epochs", "epochs", "int", "Epochs",
        "Passes over the training patches. Validation runs every few epochs.",
        config_key="epochs", lo=1, hi=100000, from_config=lambda c, kd: c.epochs,
    ),
    Field(
        "lr", "lr", "float", "Learning rate",
        "Peak AdamW learning rate (after warm-up; then cosine decay).",
        config_key="lr", lo=1e-5, hi=1.0, step=1e-5, from_config=lambda c, kd: c.lr,
    ),
    Field(
        "pretrained_lr_factor", "pretrained_lr_factor", "float", "Pretrained LR factor",
        "Learning-rate multiplier of the pretrained layers (the output layer always learns at the "
        "full rate); 0.1 changes what the checkpoint learnt only gently.",
        modes=frozenset({"finetune"}), config_key="pretrained_lr_factor", lo=0.0, hi=1.0,
        step=0.05, from_config=lambda c, kd: c.pretrained_lr_factor,
    ),
    Field(
        "freeze", "freeze", "check", "Freeze encoder",
        "Keep the pretrained encoder (down-sampling stages) fixed and train the decoder: fewer "
        "cases suffice and nothing learnt on big data is forgotten.",
        modes=frozenset({"finetune"}), config_key="freeze",
        to_config=lambda v, mode: ["encoder"] if v else [],
        from_config=lambda c, kd: "encoder" in c.freeze,
    ),
    Field(
        "temperature", "temperature", "float", "Temperature",
        "Softening temperature T of teacher and student outputs: higher shows the student more "
        "of the teacher's uncertainty.",
        modes=_KD, config_key="temperature", lo=0.1, hi=20.0, step=0.5,
        from_config=lambda c, kd: kd.temperature,
    ),
    Field(
        "alpha", "alpha", "float", "Alpha",
        "Weight of the ground-truth loss; 1 - alpha goes to matching the teacher (0 = learn from "
        "the teacher only).",
        modes=_KD, config_key="alpha", lo=0.0, hi=1.0, step=0.05,
        from_config=lambda c, kd: kd.alpha,
    ),
    Field(
        "kd_label_correction", "kd_label_correction", "check", "Correct the teacher by the labels",
        "Where the teacher's output contradicts a case's label, learn the teacher's confidence "
        "on the label's side instead of its mistake (knowledge adjustment). Use it when the "
        "teacher is not clearly better than the labels; unlabelled scans keep the teacher's "
        "outputs.",
        modes=_KD, config_key="kd_label_correction",
        from_config=lambda c, kd: kd.kd_label_correction,
    ),
    Field(
        "unlabeled_weight", "unlabeled_weight", "float", "Unlabelled weight",
        "Unlabelled patches drawn per labelled patch (1 = as many from both folders).",
        modes=frozenset({"adapt"}), config_key="unlabeled_weight", lo=0.0, hi=10.0, step=0.25,
        from_config=lambda c, kd: kd.unlabeled_weight,
    ),
    Field(
        "augment", "augment", "combo", "Augmentation",
        "Random changes of the training patches: none, light (flips, small rotations and "
        "intensity changes) or strong (also elastic, bias field, low resolution: helps students "
        "work on other scanners).",
        config_key="augment.preset", choices=_augment_presets,
        from_config=lambda c, kd: c.augment.preset,
    ),
    Field(
        "patch_size", "patch_size", "int", "Patch size",
        "Edge of the cubic training patches in voxels. Lower it (and the batch size) when "
        "training runs out of memory.",
        config_key="patch_size", lo=16, hi=512, step=16,
        to_config=lambda v, mode: [int(v)] * 3, from_config=lambda c, kd: int(c.patch_size[0]),
    ),
    Field(
        "batch_size", "batch_size", "int", "Batch size",
        "Cases per optimisation step (each gives several patches).",
        config_key="batch_size", lo=1, hi=64, from_config=lambda c, kd: c.batch_size,
    ),
    Field(
        "device", "device_picker", "combo", "Device",
        "Where training runs: auto picks a GPU when there is one, else the CPU.",
        config_key="device", choices=_devices, value="auto",
    ),
    Field(
        "output_dir", "output_dir", "folder", "Output folder",
        "Each run gets a folder here with its config, split, log and checkpoints "
        "(last.safetensors after every epoch, best.safetensors for the best validation).",
        value=str(DEFAULT_OUTPUT_DIR),
    ),
    Field(
        "extra", "extra", "line", "Extra settings",
        "Any other training setting as key=value pairs separated by ';', e.g. "
        "'steps_per_epoch=50; val_every=5; model.arch_args={init_filters: 16}', or for "
        "distillation 'attention_weight=0.5' (attention transfer) and "
        "'teacher_targets=online' (run the teacher on every patch instead of caching its "
        "outputs, the CPU default). They win over the controls above (see brats-kd distill "
        "--help).",
        value="",
    ),
)  # fmt: skip
#: The settings whose defaults come from the mode's shipped config (remembered per mode).
MODE_FIELDS = tuple(f for f in FIELDS if f.per_mode)
#: Names the dock saved settings under before each control took its setting's name: read back
#: from an older session's saved settings under the new name.
RENAMED_FIELDS: dict[str, str] = {
    "lr_factor": "pretrained_lr_factor",
    "label_correction": "kd_label_correction",
    "patch": "patch_size",
    "batch": "batch_size",
}
#: The model picker's rows go after this field (the folders first, then what is trained).
MODEL_ROWS_AFTER = "use_viewer_case"


@dataclass(frozen=True)
class Mode:
    """One way of training, with the shipped config it starts from and the controls it shows.

    Attributes
    ----------
    key
        Its name in the saved settings (``distill``, ``teacher``, ``finetune``, ``adapt``).
    title
        Its name in the Mode list.
    config
        Name of the shipped YAML in ``napari_brats_kd/configs`` it starts from.
    run_prefix
        Start of its run folders' names.
    controls
        Names of the fields it shows (``"model"``: the model picker).
    """

    key: str
    title: str
    config: str
    run_prefix: str
    controls: frozenset[str]


def _mode(key: str, title: str, config: str, run_prefix: str) -> Mode:
    shown = {f.name for f in FIELDS if key in f.modes} | (
        {"model"} if key in MODEL_MODES else set()
    )
    return Mode(key, title, config, run_prefix, frozenset(shown))


MODES: tuple[Mode, ...] = (
    _mode("distill", "Distil student", "distill", "student"),
    _mode("teacher", "Train teacher", "teacher", "teacher"),
    _mode("finetune", "Fine-tune", "finetune", "finetuned"),
    _mode("adapt", "Adapt to unlabelled scans", "distill", "adapted"),
)
MODES_BY_TITLE = {m.title: m for m in MODES}
MODES_BY_KEY = {m.key: m for m in MODES}


#: Tooltips of the dock's other controls (the mode list, the model picker, buttons and outputs).
TIPS = {
    "mode": (
        "Distil student: a small fast student learns from a teacher and the labels. Train "
        "teacher: a network from scratch. Fine-tune: adapt a pretrained checkpoint to your "
        "labelled cases. Adapt to unlabelled scans: distillation that also learns from another "
        "site's unlabelled cases through the teacher."
    ),
    "model": (
        "The teacher (distillation) or the pretrained model (fine-tuning): models shipped with "
        "the plugin, trained in this session, or loaded with the buttons below."
    ),
    "load": "Use a checkpoint file (.safetensors written by napari-brats-kd, or a .pt).",
    "bundle": "Use a MONAI bundle folder (e.g. brats_mri_segmentation) as the model.",
    "model_info": "What the picked model takes and predicts.",
    "start": "Start a new run with these settings.",
    "stop": "Finish the current step, save a checkpoint and stop (Resume continues).",
    "resume": (
        "Continue the last stopped or failed run from its checkpoint (asks for a run folder "
        "when there is none). Raise Epochs first to train a finished run longer."
    ),
    "progress": "Optimisation steps done of all.",
    "status": "Epoch, ETA and what the widget last did.",
    "expected": (
        "How long the run set up above would take: its steps times one step of the network, "
        "timed on the chosen device. Reading patches and validation come on top."
    ),
    "plot": (
        "Top: training loss per step (grey) and per epoch (blue). Bottom: validation Dice per "
        "region (WT whole tumour, TC tumour core, ET enhancing tumour)."
    ),
    "results": "Validation Dice per region of the last run; * marks the checkpoint kept.",
    "segment": (
        "Segment the case open in the viewer with the new model and with its teacher (or "
        "starting checkpoint), side by side, plus a layer showing where they disagree."
    ),
}
