"""Training configurations: dataclasses loadable from YAML, with ``key=value`` overrides.

Three entry points share one :class:`TrainConfig`:

- teacher training (:func:`~napari_brats_kd.training.train_teacher`),
- transfer learning / fine-tuning (the same, with ``init_from`` set and optionally ``freeze``),
- distillation (:class:`DistillConfig`, which adds the teacher and the KD settings).

Defaults ship as YAML files in ``napari_brats_kd/configs/`` (``teacher.yaml``,
``distill.yaml``, ``finetune.yaml``); :func:`load_config` reads one of them or a user's file, and
:func:`apply_overrides` applies command-line ``--set key=value`` pairs (values parsed as YAML,
nested keys with dots: ``augment.noise_prob=0.3``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..device import check_device_name
from ..errors import TrainingError
from .augment import AugmentConfig
from .schema import check_dataclass

#: Encoder parameter-name prefixes per architecture, frozen by ``freeze: [encoder]``.
#: SegResNet's encoder is its stem (``convInit``) and down-sampling stages (``down_layers``);
#: the student wraps a SegResNet as ``net``; MONAI's UNet nests its encoder so that only the
#: first stage has a fixed name (``model.0``).
ENCODER_PREFIXES: dict[str, tuple[str, ...]] = {
    "segresnet": ("convInit.", "down_layers."),
    "student": ("net.convInit.", "net.down_layers."),
    "unet": ("model.0.",),
    "swinunetr": ("swinViT.",),
}

#: Output-block parameter-name prefixes per architecture: the task-specific head that keeps the
#: full learning rate while pretrained layers learn at ``pretrained_lr_factor`` (SegResNet's
#: ``conv_final``; MONAI UNet's last up-sampling block ``model.2``, which maps features to the
#: regions; SwinUNETR's ``out``).
OUTPUT_PREFIXES: dict[str, tuple[str, ...]] = {
    "segresnet": ("conv_final.",),
    "student": ("net.conv_final.",),
    "unet": ("model.2.",),
    "swinunetr": ("out.",),
}

#: Values of ``DistillConfig.teacher_targets`` (see :mod:`.teacher_targets`).
TARGET_MODES: tuple[str, ...] = ("auto", "online", "cached")

#: Settings that are a number or ``None`` (their default gives no type to check against).


@dataclass
class ModelSpec:
    """Which network to train (ignored when ``init_from`` gives a checkpoint to start from).

    Attributes
    ----------
    kind
        ``"teacher"`` or ``"student"``.
    arch
        Teacher architecture (a key of :data:`~napari_brats_kd.models.TEACHER_ARCHS`) or
        student preset (``student-small``, ``student-tiny``).
    modalities
        Input channels in order; ``None`` = the bundle order (T1c, T1, T2, FLAIR) for teachers, the
        teacher's modalities for distilled students.
    arch_args
        Builder arguments replacing the architecture's defaults (e.g. ``init_filters: 4``).
    name, description
        Stored in the checkpoint.
    """

    kind: str = "teacher"
    arch: str = "segresnet"
    modalities: list[str] | None = None
    arch_args: dict = field(default_factory=dict)
    name: str = ""
    description: str = ""


@dataclass
class TrainConfig:
    """Settings of a supervised training (teacher) or fine-tuning run.

    The defaults are those of the shipped ``teacher.yaml`` (a test keeps them equal): a run built
    here in Python trains as ``brats-kd train`` and the widget do.

    Attributes
    ----------
    data_dir
        Folder of labelled cases (any naming :func:`napari_brats_kd.io.find_cases` knows).
    run_dir
        Run folder (config, split, logs, checkpoints). Default: ``<out stem>_run`` beside ``out``,
        or ``runs/<time>``.
    out
        Where to copy the best checkpoint at the end (``.safetensors``).
    model
        The network (:class:`ModelSpec`).
    init_from
        Checkpoint (path, registered model name or MONAI bundle folder) to start from: transfer
        learning. Its architecture and modalities are used; ``model`` is then ignored.
    freeze
        Parameter-name prefixes to freeze, or ``["encoder"]`` for the architecture's encoder (see
        :data:`ENCODER_PREFIXES`).
    pretrained_lr_factor
        Learning-rate multiplier for parameters loaded from ``init_from`` (e.g. 0.1); the output
        block (:data:`OUTPUT_PREFIXES`) always learns at the full rate.
    epochs, steps_per_epoch
        Training length. ``steps_per_epoch`` ``None`` = one pass over the training patches.
    max_minutes
        Wall-time budget of the loop in minutes, counted from the first step and including
        validation (``None`` = none): for a fixed slot on a shared machine. The learning-rate
        schedule follows whichever is further along, steps or time, so it has decayed when the
        budget is spent; the run then ends as at its last epoch (final validation, checkpoints,
        ``out``). ``epochs`` stays the upper bound. A resumed run counts the time already spent.
    batch_size, patch_size, samples_per_case, pos_fraction
        Patches: ``samples_per_case`` crops per case and pass, centred on tumour with probability
        ``pos_fraction`` (else on brain background).
    lr, weight_decay, warmup_epochs, schedule, min_lr_factor
        AdamW; linear warm-up then ``cosine`` or ``poly`` (power 0.9) decay to
        ``lr * min_lr_factor``.
    dice_weight, bce_weight
        Weights of the supervised loss terms.
    amp
        Mixed precision on CUDA (ignored on CPU).
    val_every, val_overlap, val_sw_batch_size, val_roi_size
        Sliding-window validation every N epochs on the validation cases (``val_roi_size``
        ``None`` = ``patch_size``).
    val_fraction, test_fraction, split_file, max_cases
        Split of ``data_dir`` (seeded) or a user's JSON ``{"train": [...], "val": [...],
        "test": [...]}`` of case ids; ``max_cases`` caps the cases used (quick runs).
    cache
        ``"memory"`` (MONAI CacheDataset; refused before loading when it would not fit in the
        free memory), ``"disk"`` (PersistentDataset in ``cache_dir``) or ``"none"``.
    num_workers
        DataLoader worker processes (augmentation runs there).
    augment
        :class:`~napari_brats_kd.training.augment.AugmentConfig`.
    seed, deterministic
        Seeds Python, numpy, torch and MONAI transforms; ``deterministic`` also asks PyTorch for
        deterministic algorithms (slower on GPU).
    device
        ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    checkpoint_every
        Also save the checkpoint every N steps (0 = only at epoch ends).
    """

    data_dir: str = ""
    run_dir: str | None = None
    out: str | None = None
    model: ModelSpec = field(
        default_factory=lambda: ModelSpec(modalities=["t1c", "t1", "t2", "flair"])
    )
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)
    pretrained_lr_factor: float = 1.0
    epochs: int = 100
    steps_per_epoch: int | None = None
    max_minutes: float | None = None
    batch_size: int = 2
    patch_size: list[int] = field(default_factory=lambda: [128, 128, 128])
    samples_per_case: int = 2
    pos_fraction: float = 0.5
    lr: float = 3e-4
    weight_decay: float = 1e-5
    warmup_epochs: int = 2
    schedule: str = "cosine"
    min_lr_factor: float = 0.01
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    amp: bool = True
    val_every: int = 2
    val_overlap: float = 0.25
    val_sw_batch_size: int = 2
    val_roi_size: list[int] | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    split_file: str | None = None
    max_cases: int | None = None
    cache: str = "memory"
    cache_dir: str | None = None
    num_workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    checkpoint_every: int = 0

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML (nested configs as dicts)."""
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        d["kind"] = self.kind
        return d

    @property
    def kind(self) -> str:
        """``"train"`` or ``"distill"``: which entry point the config belongs to."""
        return "train"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (YAML); unknown keys raise :class:`TrainingError`."""
        data = dict(data)
        data.pop("kind", None)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise TrainingError(
                f"Unknown setting(s) {sorted(unknown)} for {cls.__name__}; known settings are "
                f"{', '.join(sorted(known))}."
            )
        if "model" in data:
            model = data["model"] or {}
            if isinstance(model, ModelSpec):
                data["model"] = model
            else:
                bad = set(model) - {f.name for f in fields(ModelSpec)}
                if bad:
                    raise TrainingError(f"Unknown model setting(s) {sorted(bad)}.")
                data["model"] = ModelSpec(**model)
        if "augment" in data and not isinstance(data["augment"], AugmentConfig):
            data["augment"] = AugmentConfig.from_dict(data["augment"])
        try:
            cfg = cls(**data)
        except TypeError as exc:
            raise TrainingError(f"Invalid {cls.__name__} settings: {exc}") from exc
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`TrainingError` naming the first setting of a wrong type or out of range.

        Types and numeric ranges come from :mod:`.schema` (which also coerces, e.g. ``3`` to
        ``3.0`` for a float setting); the choices among names are checked here.
        """
        check_dataclass(self)
        choices = [
            ("schedule", self.schedule, ("cosine", "poly", "constant")),
            ("cache", self.cache, ("memory", "disk", "none")),
            ("model.kind", self.model.kind, ("teacher", "student")),
        ]
        for name, value, allowed in choices:
            if value not in allowed:
                raise TrainingError(
                    f"Invalid setting {name}={value!r}: expected one of {', '.join(allowed)}."
                )
        if self.val_fraction + self.test_fraction >= 1.0:
            raise TrainingError(
                f"Invalid settings val_fraction={self.val_fraction} and test_fraction="
                f"{self.test_fraction}: together they leave no training cases (their sum must "
                "be < 1)."
            )
        check_device_name(self.device)


@dataclass
class DistillConfig(TrainConfig):
    """Settings of a knowledge-distillation run (a :class:`TrainConfig` plus the teacher).

    The defaults are those of the shipped ``distill.yaml`` (a test keeps them equal).

    Attributes
    ----------
    teacher
        Teacher checkpoint: path, registered model name or MONAI bundle folder.
    alpha
        Weight of the ground-truth loss; ``1 - alpha`` goes to the teacher (binary KL).
    temperature
        Softening temperature T of teacher and student logits.
    kd_dice_weight
        Weight of a soft Dice loss between student and teacher probabilities, added to the
        teacher term; 0 leaves the binary KL alone (see :mod:`.losses` for why it helps small
        regions).
    kd_label_correction
        Correct the teacher's outputs by the labels before the student learns from them: where
        the teacher contradicts the ground truth, its probability ``p`` becomes ``1 - p``
        (knowledge adjustment; see :mod:`.losses`). Off by default; unlabelled cases keep the
        teacher's outputs.
    unlabeled_dir
        Folder of unlabelled cases (e.g. another site): learnt from the teacher only.
    unlabeled_weight
        How many unlabelled cases are drawn per labelled case, whatever the sizes of the two
        folders (1: as many of each; 0.5: one unlabelled per two labelled). Cases are drawn with
        replacement from each pool (:class:`~.data.PoolSampler`).
    teacher_targets
        ``"online"``: the teacher runs on every augmented training patch. ``"cached"``: it runs
        once per training case and its outputs are stored on disk under ``cache_dir`` and
        augmented with the image (see :mod:`.teacher_targets`): several times faster on a CPU.
        ``"auto"`` (default): cached on a CPU, online on a GPU (and whenever
        ``attention_weight`` > 0).
    attention_weight
        Weight of attention transfer between the encoder stages of student and teacher (see
        :mod:`.losses`), added to the loss; 0 (default) turns it off. Needs the teacher's
        activations, so online teacher targets, and SegResNet-family networks.
    """

    # The defaults of distill.yaml where they differ from teacher.yaml's.
    model: ModelSpec = field(default_factory=lambda: ModelSpec("student", "student-small"))
    lr: float = 1e-3
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig.from_preset("strong"))
    teacher: str = ""
    alpha: float = 0.5
    temperature: float = 2.0
    kd_dice_weight: float = 0.0
    kd_label_correction: bool = False
    unlabeled_dir: str | None = None
    unlabeled_weight: float = 1.0
    teacher_targets: str = "auto"
    attention_weight: float = 0.0

    @property
    def kind(self) -> str:
        return "distill"

    def validate(self) -> None:
        super().validate()
        if self.teacher_targets not in TARGET_MODES:
            raise TrainingError(
                f"Invalid setting: teacher_targets must be one of {', '.join(TARGET_MODES)}, got "
                f"{self.teacher_targets!r}."
            )
        if self.attention_weight > 0 and self.teacher_targets == "cached":
            raise TrainingError(
                "Invalid setting: attention_weight > 0 needs the teacher's activations at every "
                "step, which cached teacher targets do not keep: set teacher_targets to online "
                "(or auto)."
            )
        # No teacher is still a valid config (the shipped defaults have none): distill() asks
        # for one when it starts.


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: Sequence[str] | Mapping[str, Any]) -> dict:
    """Apply ``key=value`` pairs (or a mapping) onto a config mapping, in place; returns it.

    Dotted keys reach into nested settings (``augment.noise_prob=0.2``, ``model.arch_args.
    init_filters=4``). Values are parsed as YAML (``[64,64,64]``, ``true``, ``1e-4``).
    """
    items = (
        overrides.items()
        if isinstance(overrides, Mapping)
        else [parse_override(o) for o in overrides]
    )
    for key, value in items:
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if node.get(p) is None else _as_dict(node[p], key)
            node = node[p]
        node[parts[-1]] = value
    return data


def _as_dict(value: Any, key: str) -> dict:
    if isinstance(value, str):  # augment: strong -> {"preset": "strong"}
        return {"preset": value}
    raise TrainingError(
        f"Cannot set {key!r}: {key.rsplit('.', 1)[0]!r} is not a group of settings."
    )


def parse_override(text: str) -> tuple[str, Any]:
    """``"key=value"`` as ``(key, value)``, the value parsed as YAML (``--set`` on the CLI)."""
    if "=" not in text:
        raise TrainingError(f"Override {text!r} must look like key=value (e.g. epochs=10).")
    key, value = text.split("=", 1)
    return key.strip(), _parse_value(value.strip())


def default_config_path(name: str) -> Path:
    """Path of a default config shipped with the package (``teacher``, ``distill``, ...)."""
    ref = resources.files("napari_brats_kd") / "configs" / f"{name}.yaml"
    return Path(str(ref))


def cpu_overrides(name: str) -> dict[str, Any]:
    """The settings the shipped config ``name`` takes for a run on a CPU, as dotted keys.

    The shipped configs are sized for a GPU; ``configs/cpu_sizes.yaml`` holds the smaller
    epochs and patches of a CPU run (the Train dock starts from them on a CPU).

    Parameters
    ----------
    name
        ``teacher``, ``distill`` or ``finetune``.

    Returns
    -------
    dict
        ``{"epochs": 16, "patch_size": [96, 96, 96], "augment.preset": "light"}``; empty for a
        config without CPU sizes.
    """

    def dotted(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in mapping.items():
            if isinstance(value, Mapping):
                out.update(dotted(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    sizes = yaml.safe_load(default_config_path("cpu_sizes").read_text()) or {}
    return dotted(sizes.get(name) or {})


def load_config(
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    kind: str = "train",
) -> TrainConfig:
    """Load a :class:`TrainConfig` or :class:`DistillConfig` from YAML, with overrides.

    Parameters
    ----------
    source
        A YAML file, the name of a shipped default (``teacher``, ``distill``, ``finetune``), a
        mapping, or ``None`` for the default of ``kind``.
    overrides
        ``["epochs=10", "augment.preset=strong"]`` or a mapping of dotted keys.
    kind
        ``"train"`` or ``"distill"``: which config class to build (a YAML ``kind:`` key wins).

    Returns
    -------
    TrainConfig or DistillConfig
    """
    if source is None:
        source = "distill" if kind == "distill" else "teacher"
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        path = Path(source)
        if not path.suffix and not path.exists():
            path = default_config_path(str(source))
        if not path.is_file():
            raise TrainingError(f"Config file {path} does not exist.")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise TrainingError(
                f"Config file {path} is not a text file in UTF-8: give a YAML file of settings "
                "(e.g. a copy of the shipped teacher.yaml)."
            ) from None
        except yaml.YAMLError as exc:
            raise TrainingError(
                f"Config file {path} is not valid YAML: {' '.join(str(exc).split())}"
            ) from None
        if not isinstance(data, dict):
            raise TrainingError(f"Config file {path} must hold a mapping of settings.")
    data = apply_overrides(data, overrides)
    kind = data.get("kind", kind)
    cls = DistillConfig if kind == "distill" else TrainConfig
    return cls.from_dict(data)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML (readable by :func:`load_config`), atomically: a run folder's
    config is never left half-written."""
    from .._files import atomic_write

    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


__all__ = [
    "ENCODER_PREFIXES",
    "OUTPUT_PREFIXES",
    "DistillConfig",
    "ModelSpec",
    "TrainConfig",
    "apply_overrides",
    "cpu_overrides",
    "default_config_path",
    "load_config",
    "parse_override",
    "save_config",
]
