"""The Train dock's form model: its controls and their values, from the table of fields.

From :data:`~.train_fields.FIELDS` the dock builds its controls (:func:`build_controls`), reads
and sets their values (:func:`read_values`, :func:`apply_values`), takes a mode's defaults from its
shipped config (:func:`defaults_of`), turns values into config overrides (:func:`to_overrides`,
:func:`merge_overrides` for the Extra settings) and saves and restores the session's settings
(:func:`session_settings`, :func:`restore_session`): each setting is spelled once, in the table.

Nothing here imports Qt, napari or magicgui at module level (only :func:`build_controls` imports
magicgui), so the mappings are tested without a display.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..labels import MODALITIES, MODALITY_NAMES
from .train_fields import (  # noqa: F401 (the table's names, for the dock)
    DEFAULT_OUTPUT_DIR,
    FIELDS,
    MIN_LABELLED_CASES,
    MODE_FIELDS,
    MODEL_MODES,
    MODEL_ROWS_AFTER,
    MODES,
    MODES_BY_KEY,
    MODES_BY_TITLE,
    RENAMED_FIELDS,
    TIPS,
    Field,
    Mode,
)

if TYPE_CHECKING:
    from ..training import TrainConfig


# ---------------------------------------------------------------------------------- config
def trains_on_cpu(device: str | None) -> bool:
    """Whether the Device control's ``device`` means a CPU (``"auto"`` without a GPU)."""
    from ..device import may_have_accelerator

    return device == "cpu" or (device == "auto" and not may_have_accelerator())


def mode_defaults(mode: Mode, device: str | None = None) -> TrainConfig:
    """The shipped defaults of ``mode`` for a run on ``device``.

    Parameters
    ----------
    mode
        The mode.
    device
        The Device control's value: on a CPU the smaller epochs and patches of
        ``configs/cpu_sizes.yaml`` apply; ``None``: the shipped config as it is.

    Returns
    -------
    TrainConfig
        ``configs/<name>.yaml`` over the dataclass defaults (and the CPU sizes on a CPU).
    """
    from ..training import cpu_overrides, load_config

    return load_config(mode.config, cpu_overrides(mode.config) if trains_on_cpu(device) else {})


def config_values(cfg: TrainConfig, kd: Any) -> dict[str, Any]:
    """The per-mode control values that give ``cfg`` (the inverse of :func:`to_overrides`).

    Parameters
    ----------
    cfg
        A training config.
    kd
        A distillation config: the distillation settings when ``cfg`` has none.

    Returns
    -------
    dict
        ``{field name: value}`` of every field in :data:`MODE_FIELDS`.
    """
    return {f.name: f.from_config(cfg, kd) for f in MODE_FIELDS}


def defaults_of(mode: Mode, device: str | None = None) -> dict[str, Any]:
    """The per-mode control values of ``mode``'s shipped config, for a run on ``device``.

    Parameters
    ----------
    mode
        The mode.
    device
        The Device control's value (see :func:`mode_defaults`).

    Returns
    -------
    dict
        ``{field name: value}``; the distillation settings of the other modes come from the
        shipped distillation config (what they show when the user switches to distillation).
    """
    from ..training import DistillConfig

    cfg = mode_defaults(mode, device)
    kd = cfg if isinstance(cfg, DistillConfig) else mode_defaults(MODES_BY_KEY["distill"], device)
    return config_values(cfg, kd)


def resized_for_device(
    values: Mapping[str, Any], mode: Mode, old_device: str, new_device: str
) -> dict[str, Any]:
    """``values`` with the defaults of ``old_device`` replaced by those of ``new_device``.

    What the user changed stays; what still is the old device's default (100 epochs of GPU-sized
    patches, say) becomes the new device's.

    Parameters
    ----------
    values
        The per-mode control values (:func:`read_values`).
    mode
        The mode shown.
    old_device, new_device
        The Device control's values before and after.

    Returns
    -------
    dict
    """
    old, new = defaults_of(mode, old_device), defaults_of(mode, new_device)
    return {k: new[k] if k in new and v == old.get(k) else v for k, v in values.items()}


def _by_kind(field: Field, value: Any) -> Any:
    convert = {"int": int, "float": float, "check": bool}.get(field.kind)
    return convert(value) if convert else value


def to_overrides(values: Mapping[str, Any], mode: Mode) -> dict[str, Any]:
    """The training settings of the controls ``mode`` shows.

    Parameters
    ----------
    values
        ``{field name: value}`` (e.g. :func:`read_values`); fields missing are left out.
    mode
        The mode: only its fields with a ``config_key`` give a setting.

    Returns
    -------
    dict
        ``{dotted setting: value}`` for :func:`napari_brats_kd.training.load_config`.
    """
    out: dict[str, Any] = {}
    for f in FIELDS:
        if f.config_key is None or mode.key not in f.modes or f.name not in values:
            continue
        value = values[f.name]
        out[f.config_key] = f.to_config(value, mode.key) if f.to_config else _by_kind(f, value)
    return out


def merge_overrides(values: Mapping[str, Any], extra: Iterable[str]) -> dict[str, Any]:
    """``values`` then the ``key=value`` texts of ``extra``, as one ordered mapping.

    The mapping applies as applying ``values`` and then each text in turn would: a key given
    again moves to the end, so that what is given last wins, over a parent key too.

    Parameters
    ----------
    values
        ``{dotted setting: value}`` (the controls).
    extra
        ``"key=value"`` texts (the Extra settings field), values parsed as YAML.

    Returns
    -------
    dict

    Raises
    ------
    TrainingError
        A text is not ``key=value``.
    """
    from ..training.config import parse_override

    merged = dict(values)
    for text in extra:
        key, value = parse_override(text)
        merged.pop(key, None)
        merged[key] = value
    return merged


def split_extra(text: str | None) -> list[str]:
    """The ``key=value`` texts of the Extra settings field (separated by ``;`` or new lines)."""
    text = text or ""
    return [part.strip() for part in text.replace("\n", ";").split(";") if part.strip()]


# ---------------------------------------------------------------------------------- controls
def build_controls(fields: Sequence[Field] = FIELDS) -> dict[str, Any]:
    """Make the magicgui control of each field.

    Parameters
    ----------
    fields
        The fields.

    Returns
    -------
    dict
        ``{field name: control}``; a ``"modalities"`` field gives a horizontal container of one
        check box per modality (in :data:`~napari_brats_kd.labels.MODALITIES` order).
    """
    from magicgui import widgets as mw

    kinds = {"int": mw.SpinBox, "float": mw.FloatSpinBox, "combo": mw.ComboBox}
    controls: dict[str, Any] = {}
    for f in fields:
        options: dict[str, Any] = {"tooltip": f.tooltip}
        if f.value is not None:
            options["value"] = f.value
        if f.kind in kinds:
            for key, setting in (("min", f.lo), ("max", f.hi), ("step", f.step)):
                if setting is not None:
                    options[key] = setting
            if f.choices is not None:
                options["choices"] = f.choices()
            control = kinds[f.kind](label=f.label, **options)
        elif f.kind == "check":
            control = mw.CheckBox(text=f.label, **options)
        elif f.kind == "folder":
            control = mw.FileEdit(label=f.label, mode="d", **options)
        elif f.kind == "line":
            control = mw.LineEdit(label=f.label, **options)
        elif f.kind == "modalities":
            control = mw.Container(
                widgets=[_modality_box(m) for m in MODALITIES],
                layout="horizontal",
                labels=False,
                label=f.label,
                **options,
            )
        else:
            raise ValueError(f"Unknown control kind {f.kind!r} of field {f.name!r}.")
        controls[f.name] = control
    return controls


def _modality_box(modality: str) -> Any:
    from magicgui.widgets import CheckBox

    name = MODALITY_NAMES[modality]
    return CheckBox(
        text=name,
        value=True,
        tooltip=(
            f"Give the model the {name} scan. Fewer modalities than the teacher makes a "
            "cross-modal student that needs only those scans."
        ),
    )


def read_values(controls: Mapping[str, Any], fields: Sequence[Field] = MODE_FIELDS) -> dict:
    """``{field name: value}`` of ``controls`` (a modality row gives the modalities ticked).

    Parameters
    ----------
    controls
        ``{field name: control}`` (anything with a ``value``; a modality row: an iterable of
        check boxes in :data:`~napari_brats_kd.labels.MODALITIES` order).
    fields
        The fields to read (by default the per-mode ones).

    Returns
    -------
    dict
    """
    out: dict[str, Any] = {}
    for f in fields:
        control = controls[f.name]
        if f.kind == "modalities":
            out[f.name] = [m for m, box in zip(MODALITIES, control, strict=True) if box.value]
        else:
            out[f.name] = control.value
    return out


def apply_values(
    controls: Mapping[str, Any], values: Mapping[str, Any], fields: Sequence[Field] = MODE_FIELDS
) -> None:
    """Set ``controls`` to ``values`` (fields missing from ``values`` keep their value).

    A value a control refuses (saved by another version, say) is skipped.

    Parameters
    ----------
    controls
        ``{field name: control}`` as for :func:`read_values`.
    values
        ``{field name: value}``.
    fields
        The fields to set (by default the per-mode ones).
    """
    for f in fields:
        if f.name not in values:
            continue
        control, value = controls[f.name], values[f.name]
        if f.kind == "modalities":
            for m, box in zip(MODALITIES, control, strict=True):
                box.value = m in value
            continue
        try:
            control.value = value
        except (ValueError, TypeError, KeyError):
            pass  # a value saved by another version that this control no longer accepts


# ---------------------------------------------------------------------------------- settings
#: The settings remembered per session (not per mode).
SESSION_FIELDS = tuple(f for f in FIELDS if not f.per_mode)


def path_text(value: Any) -> str:
    """A folder control's value as text; ``""`` when nothing is picked.

    A FileEdit shows an empty field as ``"."`` (``Path("")``): that is nothing picked.
    """
    text = str(value) if value is not None else ""
    return "" if text in ("", ".") else text


def folder(value: Any) -> Path | None:
    """A folder control's value as a path (``~`` expanded), ``None`` when nothing is picked."""
    text = path_text(value)
    return Path(text).expanduser() if text else None


def session_settings(controls: Mapping[str, Any]) -> dict[str, Any]:
    """The session-wide settings of ``controls``, as saved (folders as text, boxes as bools).

    Parameters
    ----------
    controls
        ``{field name: control}``.

    Returns
    -------
    dict
    """
    out: dict[str, Any] = {}
    for f in SESSION_FIELDS:
        value = controls[f.name].value
        out[f.name] = (
            path_text(value) if f.kind == "folder" else bool(value) if f.kind == "check" else value
        )
    return out


def saved_mode_values(saved: Any) -> dict[str, dict[str, Any]]:
    """The per-mode values saved by a session, under today's control names.

    Names of an older version (:data:`RENAMED_FIELDS`) are read as today's; a value saved under
    both keeps the one under today's name. Anything that is not a mapping is ignored (a settings
    file edited by hand, or from a version that saved none).

    Parameters
    ----------
    saved
        ``{mode key: {field name: value}}``, as :meth:`TrainWidget.settings` saved them.

    Returns
    -------
    dict
    """
    if not isinstance(saved, Mapping):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for mode, values in saved.items():
        if isinstance(values, Mapping):
            current = {RENAMED_FIELDS.get(name, name): value for name, value in values.items()}
            current.update({n: values[n] for n in RENAMED_FIELDS.values() if n in values})
            out[mode] = current
    return out


def restore_session(controls: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
    """Set the session-wide controls to the ``saved`` settings.

    Empty folders and text keep the control's value, a combo box keeps its value when the saved
    one is no longer a choice (a GPU gone), a missing check box is unticked.

    Parameters
    ----------
    controls
        ``{field name: control}``.
    saved
        What :func:`session_settings` gave, read back.
    """
    for f in SESSION_FIELDS:
        control, value = controls[f.name], saved.get(f.name)
        if f.kind == "check":
            control.value = bool(saved.get(f.name, False))
        elif f.kind == "combo":
            if value in control.choices:
                control.value = value
        elif value:
            control.value = str(value) if f.kind == "line" else value
