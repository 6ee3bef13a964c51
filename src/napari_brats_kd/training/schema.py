"""Type and range checks of run settings, done once where a setting enters.

Settings reach a run from the shipped YAML, a user's YAML, ``--set key=value`` on the command
line, the training widget and Python. All of them end in the config dataclasses of
:mod:`.config` and :mod:`.augment`; :func:`check_dataclass` checks each field against its type
annotation (coercing where the meaning is plain: ``3`` for a float, ``"1e-4"`` read by YAML 1.1 as a
string, ``2021`` for a string) and :data:`RANGES` gives the allowed values of numbers, so a wrong
value is refused with its name, the value and what is allowed, before anything is built.
"""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import fields, is_dataclass
from typing import Any

from ..errors import TrainingError

# (low, high, low inclusive, high inclusive) of numeric settings; None = unbounded. A name found
# in several dataclasses means the same everywhere. ``*_prob`` settings are in [0, 1] as well.
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "epochs": (1, None, True, True),
    "steps_per_epoch": (1, None, True, True),
    "max_minutes": (0, None, False, True),
    "batch_size": (1, 1024, True, True),
    "samples_per_case": (1, 1024, True, True),
    "pos_fraction": (0, 1, True, True),
    "lr": (0, 10, False, True),
    "weight_decay": (0, 1, True, True),
    "warmup_epochs": (0, None, True, True),
    "min_lr_factor": (0, 1, True, True),
    "dice_weight": (0, None, True, True),
    "bce_weight": (0, None, True, True),
    "pretrained_lr_factor": (0, None, True, True),
    "val_every": (1, None, True, True),
    "val_overlap": (0, 1, True, False),
    "val_sw_batch_size": (1, 1024, True, True),
    "val_fraction": (0, 1, True, False),
    "test_fraction": (0, 1, True, False),
    "max_cases": (1, None, True, True),
    "num_workers": (0, 256, True, True),
    "seed": (0, 2**32 - 1, True, True),
    "checkpoint_every": (0, None, True, True),
    "alpha": (0, 1, True, True),
    "temperature": (0, 100, False, True),
    "kd_dice_weight": (0, None, True, True),
    "unlabeled_weight": (0, None, True, True),
    "attention_weight": (0, None, True, True),
    "rotate": (0, math.pi, True, True),
    "scale": (0, 1, True, False),
    "intensity_scale": (0, None, True, True),
    "intensity_shift": (0, None, True, True),
    "bias_coeff": (0, None, True, True),
    "noise_std": (0, None, True, True),
}

# Sizes of a patch or a validation window, per axis: a patch larger than this would need tens of
# GB per sample, a smaller one holds no context for the network.
PATCH_SIDE = (8, 512)


def _fail(name: str, value: Any, allowed: str) -> TrainingError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return TrainingError(f"Invalid setting {name}={shown}: {allowed}.")


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _fail(name, value, "expected a number")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _fail(name, value, "expected a number") from None
    if not isinstance(value, (int, float)):
        raise _fail(name, value, "expected a number")
    value = float(value)
    if not math.isfinite(value):
        raise _fail(name, value, "expected a finite number")
    return value


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _fail(name, value, "expected a whole number")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise _fail(name, value, "expected a whole number") from None
    if not isinstance(value, int):
        raise _fail(name, value, "expected a whole number")
    return value


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise _fail(name, value, "expected true or false")


def _as_str(name: str, value: Any) -> str:
    # `--set data_dir=2021` arrives as the YAML integer 2021: it still means the folder "2021".
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _fail(name, value, "expected a text")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` says, or a :class:`TrainingError` naming ``name``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner)
    if hint is float:
        return _as_float(name, value)
    if hint is int:
        return _as_int(name, value)
    if hint is bool:
        return _as_bool(name, value)
    if hint is str:
        return _as_str(name, value)
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise _fail(name, value, "expected a group of settings (key: value)")
        return value
    if origin is list:
        if isinstance(value, str):  # freeze: encoder -> [encoder]
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _fail(name, value, "expected a list")
        (inner,) = args
        return [_coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise _fail(name, value, f"expected {len(args)} values, e.g. [0.5, 1.0]")
        return tuple(
            _coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if is_dataclass(hint):
        if not isinstance(value, hint):
            raise _fail(name, value, "expected a group of settings")
        check_dataclass(value, prefix=f"{name}.")
        return value
    return value


def _check_range(name: str, key: str, value: Any) -> None:
    bounds = RANGES.get(key)
    if bounds is None and key.endswith("_prob"):
        bounds = (0, 1, True, True)
    if bounds is None or not isinstance(value, (int, float)):
        return
    low, high, low_in, high_in = bounds
    too_low = low is not None and (value < low if low_in else value <= low)
    too_high = high is not None and (value > high if high_in else value >= high)
    if too_low or too_high:
        raise _fail(name, value, _describe(bounds))


def _describe(bounds: tuple[float | None, float | None, bool, bool]) -> str:
    low, high, low_in, high_in = bounds
    if high is None:
        return f"must be {'>=' if low_in else '>'} {low:g}"
    if low is None:
        return f"must be {'<=' if high_in else '<'} {high:g}"
    return f"must lie in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def _check_side_list(name: str, value: Any) -> None:
    if value is None:
        return
    low, high = PATCH_SIDE
    if len(value) != 3 or not all(low <= v <= high for v in value):
        raise _fail(name, value, f"expected 3 sizes in voxels, each in [{low}, {high}]")


def _check_interval(name: str, value: Any) -> None:
    if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
        raise _fail(name, list(value), "expected [low, high] with low <= high")


def check_dataclass(obj: Any, prefix: str = "") -> None:
    """Check (and coerce, in place) every field of a settings dataclass.

    Parameters
    ----------
    obj
        A :class:`~.config.TrainConfig`, :class:`~.config.DistillConfig`,
        :class:`~.config.ModelSpec` or :class:`~.augment.AugmentConfig`.
    prefix
        Dotted path of ``obj`` in the whole config (``"augment."``), for the messages.

    Raises
    ------
    TrainingError
        Naming the first setting whose type or value is not allowed, the value and what is.
    """
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        name = f"{prefix}{f.name}"
        value = _coerce(name, getattr(obj, f.name), hints[f.name])
        _check_range(name, f.name, value)
        if f.name in ("patch_size", "val_roi_size"):
            _check_side_list(name, value)
        _check_interval(name, value)
        object.__setattr__(obj, f.name, value)


__all__ = ["PATCH_SIDE", "RANGES", "check_dataclass"]
