"""Model configurations: everything needed to rebuild a network and feed it correctly.

A :class:`ModelConfig` travels inside every checkpoint (see :mod:`.checkpoint`), so a weights file
describes itself: which architecture with which arguments, which modalities in which channel order,
which regions come out, how inputs are normalised, and where the weights came from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .. import labels
from ..errors import CheckpointError

#: Bump when the serialised form changes incompatibly; older files are rejected with a message.
CONFIG_FORMAT_VERSION = 1

#: The MONAI ``brats_mri_segmentation`` bundle network (BRATS_FACTS.md), minus channel counts,
#: which always follow ``modalities`` and ``regions``.
BUNDLE_SEGRESNET_ARGS: dict[str, Any] = {
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "init_filters": 16,
    "dropout_prob": 0.2,
}

#: Sliding-window ROI of the bundle (model orientation), the default for teachers.
BUNDLE_ROI_SIZE: tuple[int, int, int] = (240, 240, 160)


def _network_of(arch: str) -> str:
    """The network a teacher architecture builds (``segresnet-halfres`` -> ``segresnet``)."""
    return "segresnet" if arch.startswith("segresnet") else arch


#: Default arguments of each teacher architecture.
TEACHER_ARCHS: dict[str, dict[str, Any]] = {
    "segresnet": dict(BUNDLE_SEGRESNET_ARGS),
    # A wider SegResNet (about 4x the bundle's parameters) for a stronger teacher.
    "segresnet-large": {**BUNDLE_SEGRESNET_ARGS, "init_filters": 32},
    # The bundle network on an input pooled to half resolution: 8x cheaper, so a teacher can be
    # trained on a laptop CPU (1.3 s per step of two 96^3 patches on 2 cores, against 13 s).
    "segresnet-halfres": {**BUNDLE_SEGRESNET_ARGS, "downsample": 2},
    "unet": {
        "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
        "norm": "INSTANCE",
    },
    "swinunetr": {"feature_size": 48, "depths": [2, 2, 2, 2], "num_heads": [3, 6, 12, 24]},
}

#: Student presets: small SegResNets run at half resolution (see :mod:`.student`), with LeakyReLU,
#: GroupNorm of 2 groups and outputs starting at p = 0.01: with MONAI's defaults the 8-filter
#: student's head went dead inside the tumour core and TC / ET were never segmented (see
#: ``HalfResSegResNet``'s ``negative_slope`` and ``head_prior``).
STUDENT_PRESETS: dict[str, dict[str, Any]] = {
    # 0.44 M parameters (10.6x fewer than the bundle teacher).
    "student-small": {
        "init_filters": 8,
        "blocks_down": [1, 1, 1, 1],
        "blocks_up": [1, 1, 1],
        "downsample": 2,
        "num_groups": 2,
        "negative_slope": 0.01,
        "head_prior": 0.01,
    },
    # Three stages instead of four. Narrower first stages (init_filters 4) were measured *slower*
    # on CPU: oneDNN's 3D convolutions want channel counts that are multiples of 8.
    "student-tiny": {
        "init_filters": 8,
        "blocks_down": [1, 1, 1],
        "blocks_up": [1, 1],
        "downsample": 2,
        "num_groups": 2,
        "negative_slope": 0.01,
        "head_prior": 0.01,
    },
}

#: Students see the whole brain in one pass on CPU: the ROI only matters for bigger-than-BraTS
#: volumes, where sliding windows take over.
STUDENT_ROI_SIZE: tuple[int, int, int] = (256, 256, 192)


#: Structural sizes far beyond any network of these families (the largest here: 32 filters, 4
#: stages of up to 4 blocks). A config asking for more is damaged or hostile: building it would
#: allocate until the machine gives up, and even its stride would overflow the planners.
MAX_WIDTHS: dict[str, int] = {"init_filters": 256, "feature_size": 384, "channels": 2048}
MAX_BLOCKS = 256  # blocks_down + blocks_up + depths, summed
MAX_STAGES = 8  # len(blocks_down), len(channels), len(depths)


def _numbers(value: Any) -> list[float]:
    items = value if isinstance(value, (list, tuple)) else [value]
    return [float(v) for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]


def _check_structure(config: ModelConfig) -> None:
    """Refuse arch_args asking for a network far larger than a segmentation model."""
    args = config.arch_args
    if not isinstance(args, dict):
        raise CheckpointError(f"Model config has arch_args {args!r}: expected a mapping.")
    wide = any(w > cap for k, cap in MAX_WIDTHS.items() for w in _numbers(args.get(k)))
    blocks = sum(b for k in ("blocks_down", "blocks_up", "depths") for b in _numbers(args.get(k)))
    stages = max(
        (len(v) for k in ("blocks_down", "channels", "depths", "strides")
         if isinstance(v := args.get(k), (list, tuple))),
        default=0,
    )  # fmt: skip
    if wide or blocks > MAX_BLOCKS or stages > MAX_STAGES:
        shown = repr(args) if len(repr(args)) <= 120 else repr(args)[:117] + "..."
        allowed = ", ".join(f"{k} <= {cap}" for k, cap in MAX_WIDTHS.items())
        raise CheckpointError(
            f"Model config arch_args {shown} ask for a network far larger than a segmentation "
            f"model ({allowed}, at most {MAX_BLOCKS} blocks and {MAX_STAGES} stages are "
            "accepted): the file is damaged or not one of this plugin's models."
        )


@dataclass
class ModelConfig:
    """Self-description of a segmentation model, stored in its checkpoint.

    Attributes
    ----------
    arch
        Architecture key understood by :func:`~napari_brats_kd.models.build_model`:
        ``"segresnet"``, ``"student"``, ``"unet"`` or ``"swinunetr"``.
    arch_args
        Keyword arguments of the architecture's builder (channel counts excluded: they follow
        ``modalities`` and ``regions``).
    modalities
        Input channel order, canonical keys from :data:`~napari_brats_kd.labels.MODALITIES`.
    regions
        Output channels (one sigmoid each), names from :data:`~napari_brats_kd.labels.REGIONS`.
    convention
        Label convention of label maps the model writes when nothing else asks for one.
    normalization
        Input normalisation, see :func:`~napari_brats_kd.models.normalize_input`.
    roi_size
        Sliding-window ROI in model orientation; volumes that fit are segmented in one pass.
    name, description
        Shown in the model list of the widget and in ``brats-kd`` messages.
    provenance
        Where the weights came from: data, seed, epochs, git commit, hardware, time.
    metrics
        Measured quality, e.g. ``{"val_dice": {"WT": 0.9, "TC": 0.8, "ET": 0.7}}``.
    """

    arch: str
    arch_args: dict = field(default_factory=dict)
    modalities: tuple[str, ...] = labels.BUNDLE_MODALITY_ORDER
    regions: tuple[str, ...] = labels.REGIONS
    convention: str = labels.DEFAULT_CONVENTION.value
    normalization: str = "zscore_nonzero"
    roi_size: tuple[int, int, int] = BUNDLE_ROI_SIZE
    name: str = ""
    description: str = ""
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # JSON gives lists; the rest of the code relies on tuples (hashable, comparable).
        self.modalities = tuple(self.modalities)
        self.regions = tuple(self.regions)
        self.roi_size = tuple(int(v) for v in self.roi_size)  # type: ignore[assignment]
        self.convention = str(labels.LabelConvention(self.convention).value)
        unknown = [m for m in self.modalities if m not in labels.MODALITIES]
        if unknown or not self.modalities:
            raise CheckpointError(
                f"Model config lists modalities {list(self.modalities)}: expected a non-empty "
                f"subset of {', '.join(labels.MODALITIES)}."
            )
        bad = [r for r in self.regions if r not in labels.REGIONS]
        if bad or len(set(self.regions)) != len(self.regions):
            raise CheckpointError(
                f"Model config lists output regions {list(self.regions)}: expected each of "
                f"{', '.join(labels.REGIONS)} at most once."
            )
        if len(self.roi_size) != 3 or min(self.roi_size) <= 0:
            raise CheckpointError(f"Model config has roi_size {self.roi_size}: expected 3 sizes.")
        _check_structure(self)

    @property
    def in_channels(self) -> int:
        """Number of input channels (one per modality)."""
        return len(self.modalities)

    @property
    def out_channels(self) -> int:
        """Number of output channels (one per region)."""
        return len(self.regions)

    @property
    def preset(self) -> str | None:
        """The named architecture this config builds: a key of :data:`TEACHER_ARCHS` or
        :data:`STUDENT_PRESETS` (e.g. ``"segresnet-halfres"``), or ``None`` if its arguments
        match none."""
        if self.arch == "student":
            named = STUDENT_PRESETS.items()
        else:
            named = ((n, a) for n, a in TEACHER_ARCHS.items() if _network_of(n) == self.arch)
        return next((name for name, args in named if args == self.arch_args), None)

    @property
    def display_name(self) -> str:
        """``name`` or, failing that, the architecture and modalities."""
        return self.name or f"{self.arch} ({'+'.join(self.modalities)})"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dictionary (with a format version)."""
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["regions"] = list(self.regions)
        d["roi_size"] = list(self.roi_size)
        d["format_version"] = CONFIG_FORMAT_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected so typos never pass silently."""
        if not isinstance(d, dict):
            raise CheckpointError(f"Model config must be a JSON object, got {type(d).__name__}.")
        d = dict(d)
        version = d.pop("format_version", CONFIG_FORMAT_VERSION)
        if version != CONFIG_FORMAT_VERSION:
            raise CheckpointError(
                f"Model config format version {version} is not supported "
                f"(this napari-brats-kd reads version {CONFIG_FORMAT_VERSION})."
            )
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"Model config has unknown fields {sorted(unknown)}.")
        if "arch" not in d:
            raise CheckpointError("Model config lacks the 'arch' field.")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"Model config is invalid: {exc}") from exc

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> ModelConfig:
        """Inverse of :meth:`to_json`."""
        try:
            d = json.loads(s)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"Model config is not valid JSON: {exc}") from exc
        return cls.from_dict(d)


def canonical_modalities(modalities: str | Sequence[str]) -> tuple[str, ...]:
    """Canonical modality keys of ``modalities`` (aliases such as ``t1ce`` accepted)."""
    items = tuple(modalities.split(",")) if isinstance(modalities, str) else tuple(modalities)
    if items and all(m in labels.MODALITIES for m in items) and len(set(items)) == len(items):
        return items
    from ..naming import parse_modalities

    return parse_modalities(modalities)


def teacher_config(
    modalities: Sequence[str] = labels.BUNDLE_MODALITY_ORDER,
    arch: str = "segresnet",
    **arch_overrides: Any,
) -> ModelConfig:
    """Configuration of a teacher network.

    Parameters
    ----------
    modalities
        Input channel order (default: the MONAI bundle's T1c, T1, T2, FLAIR).
    arch
        ``"segresnet"`` (the bundle network), ``"segresnet-large"`` (init_filters 32),
        ``"segresnet-halfres"`` (the bundle network at half resolution), ``"unet"`` or
        ``"swinunetr"``.
    **arch_overrides
        Builder arguments replacing the defaults, e.g. ``init_filters=32``.

    Returns
    -------
    ModelConfig
    """
    if arch not in TEACHER_ARCHS:
        raise CheckpointError(
            f"Unknown teacher architecture {arch!r}: expected one of {', '.join(TEACHER_ARCHS)}."
        )
    args = {**TEACHER_ARCHS[arch], **arch_overrides}
    base = _network_of(arch)
    mods = canonical_modalities(modalities)
    return ModelConfig(
        arch=base,
        arch_args=args,
        modalities=mods,
        roi_size=BUNDLE_ROI_SIZE,
        name=f"teacher-{arch}",
        description=f"Teacher {arch} on {'+'.join(mods)}",
    )


def student_config(
    modalities: Sequence[str] = labels.BUNDLE_MODALITY_ORDER,
    preset: str = "student-small",
    **arch_overrides: Any,
) -> ModelConfig:
    """Configuration of a compact CPU student network.

    Parameters
    ----------
    modalities
        Input channel order; a subset such as ``("t1c", "flair")`` makes a student that needs only
        those scans.
    preset
        ``"student-small"`` (default) or ``"student-tiny"``.
    **arch_overrides
        Builder arguments replacing the preset's, e.g. ``init_filters=6``.

    Returns
    -------
    ModelConfig
    """
    if preset not in STUDENT_PRESETS:
        raise CheckpointError(
            f"Unknown student preset {preset!r}: expected one of {', '.join(STUDENT_PRESETS)}."
        )
    mods = canonical_modalities(modalities)
    return ModelConfig(
        arch="student",
        arch_args={**STUDENT_PRESETS[preset], **arch_overrides},
        modalities=mods,
        roi_size=STUDENT_ROI_SIZE,
        name=preset,
        description=f"Compact half-resolution student ({preset}) on {'+'.join(mods)}",
    )
