"""Training backend: teacher training, knowledge distillation, transfer learning.

Python API::

    from napari_brats_kd.training import load_config, train_teacher, distill, fine_tune

    cfg = load_config("teacher", ["data_dir=data/", "epochs=50", "out=teacher.safetensors"])
    result = train_teacher(cfg, progress=print)

The same functions run under ``torchrun`` (DDP); the ``brats-kd train / distill`` commands are thin
shells over them. Nothing here imports Qt or napari.
"""

from __future__ import annotations

from .augment import PRESETS, AugmentConfig, build_augmentation
from .config import (
    ENCODER_PREFIXES,
    DistillConfig,
    ModelSpec,
    TrainConfig,
    apply_overrides,
    cpu_overrides,
    load_config,
    save_config,
)
from .engine import TrainResult, distill, fine_tune, resume_run, train_teacher
from .losses import DistillationLoss, SupervisedLoss, binary_kl_divergence

__all__ = [
    "ENCODER_PREFIXES",
    "PRESETS",
    "AugmentConfig",
    "DistillConfig",
    "DistillationLoss",
    "ModelSpec",
    "SupervisedLoss",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "binary_kl_divergence",
    "build_augmentation",
    "cpu_overrides",
    "distill",
    "fine_tune",
    "load_config",
    "resume_run",
    "save_config",
    "train_teacher",
]
