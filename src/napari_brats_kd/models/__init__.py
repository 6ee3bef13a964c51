"""Networks, self-describing checkpoints, MONAI bundle import and the model registry.

Everything a caller needs is re-exported here::

    from napari_brats_kd.models import student_config, build_model, save_checkpoint, load_checkpoint
"""

from __future__ import annotations

from .bundle import load_bundle
from .checkpoint import LoadedModel, load_checkpoint, read_checkpoint_config, save_checkpoint
from .config import (
    STUDENT_PRESETS,
    TEACHER_ARCHS,
    ModelConfig,
    student_config,
    teacher_config,
)
from .networks import ARCHITECTURES, build_model, count_parameters, network_stride
from .preprocess import normalize_input
from .registry import (
    ModelInfo,
    available_models,
    clear_session_models,
    register_model,
    resolve_model,
    resolve_model_for,
)

__all__ = [
    "ARCHITECTURES",
    "STUDENT_PRESETS",
    "TEACHER_ARCHS",
    "LoadedModel",
    "ModelConfig",
    "ModelInfo",
    "available_models",
    "build_model",
    "clear_session_models",
    "count_parameters",
    "load_bundle",
    "load_checkpoint",
    "network_stride",
    "normalize_input",
    "read_checkpoint_config",
    "register_model",
    "resolve_model",
    "resolve_model_for",
    "save_checkpoint",
    "student_config",
    "teacher_config",
]
