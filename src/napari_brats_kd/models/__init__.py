"""Networks, self-describing checkpoints, MONAI bundle import and the model registry.

Everything a caller needs is re-exported here::

    from napari_brats_kd.models import student_config, build_model, save_checkpoint, load_checkpoint

Names are resolved on first use, so that reading a config or finding a model file (what the lean
ONNX inference path needs) imports neither torch nor MONAI.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: name -> submodule that defines it.
_EXPORTS = {
    "load_bundle": "bundle",
    "LoadedModel": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "read_checkpoint_config": "header",
    "STUDENT_PRESETS": "config",
    "TEACHER_ARCHS": "config",
    "ModelConfig": "config",
    "student_config": "config",
    "teacher_config": "config",
    "ARCHITECTURES": "networks",
    "build_model": "networks",
    "count_parameters": "networks",
    "network_stride": "geometry",
    "normalize_input": "preprocess",
    "ModelChoice": "registry",
    "ModelInfo": "registry",
    "choose_model": "registry",
    "load_choice": "registry",
    "available_models": "registry",
    "clear_session_models": "registry",
    "register_model": "registry",
    "resolve_model": "registry",
    "resolve_model_for": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_brats_kd.models' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
