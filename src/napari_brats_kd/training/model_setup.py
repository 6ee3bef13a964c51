"""The networks of a run: the teacher, the model to train, their checks, frozen parameters.

Loaded networks are private copies (a registry cache or a viewer may share the original, and
inference loading switches gradients off).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, TrainingError
from .config import ENCODER_PREFIXES, OUTPUT_PREFIXES, DistillConfig, TrainConfig


def _expand_freeze(freeze: Sequence[str], arch: str) -> tuple[str, ...]:
    """``freeze`` with ``"encoder"`` replaced by the architecture's encoder prefixes."""
    out: list[str] = []
    for item in freeze:
        if item == "encoder":
            if arch not in ENCODER_PREFIXES:
                raise TrainingError(
                    f"freeze: encoder is not defined for architecture {arch!r}; give parameter-"
                    "name prefixes instead."
                )
            out += ENCODER_PREFIXES[arch]
        else:
            out.append(item)
    return tuple(out)


def _output_prefixes(model: nn.Module, arch: str) -> tuple[str, ...]:
    """Parameter-name prefixes of the network's output block (:data:`OUTPUT_PREFIXES`; for an
    architecture without an entry, its last convolution)."""
    if arch in OUTPUT_PREFIXES:
        return OUTPUT_PREFIXES[arch]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)]
    return (convs[-1] + ".",) if convs else ()


def param_groups(
    model: nn.Module, cfg: TrainConfig, arch: str, pretrained: bool
) -> list[dict[str, Any]]:
    """Freeze ``cfg.freeze``'s parameters; the optimizer's parameter groups of the rest.

    Parameters
    ----------
    model
        The network; parameters matching ``cfg.freeze`` stop requiring gradients.
    cfg
        Settings: ``freeze``, ``lr``, ``pretrained_lr_factor``.
    arch
        The network's architecture name (for ``freeze: encoder`` and its output block).
    pretrained
        Whether ``model`` starts from trained weights: its body then learns at
        ``pretrained_lr_factor`` times the rate, its output block at the full rate.

    Returns
    -------
    list of dict
        ``[{"params", "lr"}, ...]`` for the optimizer.

    Raises
    ------
    TrainingError
        ``freeze`` names an unknown group, matches nothing, or freezes everything.
    """
    prefixes = _expand_freeze(cfg.freeze, arch)
    frozen = 0
    for name, p in model.named_parameters():
        if prefixes and name.startswith(prefixes):
            p.requires_grad_(False)
            frozen += 1
    if prefixes and frozen == 0:
        raise TrainingError(
            f"freeze: {list(cfg.freeze)} matches no parameter of {arch!r} (names start with e.g. "
            f"{next(iter(dict(model.named_parameters())), '?')!r})."
        )
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("freeze: every parameter is frozen, nothing is left to train.")
    if not pretrained or cfg.pretrained_lr_factor == 1.0:
        return [{"params": [p for _, p in trainable], "lr": cfg.lr}]
    # The output layer is task-specific: it learns at the full rate, the pretrained body slower.
    out = _output_prefixes(model, arch)
    head = [p for n, p in trainable if out and n.startswith(out)]
    body = [p for n, p in trainable if not (out and n.startswith(out))]
    groups = [{"params": body, "lr": cfg.lr * cfg.pretrained_lr_factor}]
    if head:
        groups.append({"params": head, "lr": cfg.lr})
    return groups


def model_config(cfg: TrainConfig, teacher_cfg: Any | None):
    """The :class:`~napari_brats_kd.models.ModelConfig` of a new network from ``cfg.model``.

    Modalities not given in ``cfg.model`` are the teacher's (when distilling), else the
    defaults. Invalid settings raise :class:`TrainingError`.
    """
    from ..models import ModelConfig, student_config, teacher_config

    spec = cfg.model
    mods = spec.modalities
    if mods is None:
        mods = teacher_cfg.modalities if teacher_cfg is not None else None
    try:
        kwargs: dict[str, Any] = dict(spec.arch_args)
        if spec.kind == "student":
            arch = spec.arch if spec.arch.startswith("student") else "student-small"
            mc: ModelConfig = (
                student_config(mods, preset=arch, **kwargs)
                if mods
                else student_config(preset=arch, **kwargs)
            )
        else:
            mc = (
                teacher_config(mods, arch=spec.arch, **kwargs)
                if mods
                else teacher_config(arch=spec.arch, **kwargs)
            )
    except (CheckpointError, ValueError) as exc:
        raise TrainingError(f"Invalid model setting: {exc}") from exc
    if spec.name or spec.description:
        mc = replace(mc, name=spec.name or mc.name, description=spec.description or mc.description)
    return mc


def load_pretrained(spec: str, what: str):
    """Resolve and load a checkpoint, model name or bundle; failures are a :class:`TrainingError`
    naming ``what``."""
    from ..models import resolve_model

    try:
        return resolve_model(spec, role="teacher")
    except CheckpointError as exc:
        raise TrainingError(f"{what} {spec!r} cannot be loaded: {exc}") from exc


def load_teacher(cfg: DistillConfig, device: torch.device):
    """The teacher for distillation: the loaded bundle and a frozen private copy in eval mode.

    Returns
    -------
    tuple
        ``(loaded, teacher)``: what :func:`load_pretrained` returned (its ``config`` and
        ``model``), and the copy on ``device`` with gradients off.
    """
    loaded = load_pretrained(cfg.teacher, "Teacher")
    teacher = copy.deepcopy(loaded.model).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return loaded, teacher


def load_model(cfg: TrainConfig, teacher_cfg: Any | None):
    """The network to train: a copy of ``cfg.init_from`` or a new one from ``cfg.model``.

    Parameters
    ----------
    cfg
        The settings.
    teacher_cfg
        The teacher's model config when distilling (its modalities are the default), else None.

    Returns
    -------
    tuple
        ``(model, model_cfg)``; the model is in train mode with every parameter trainable.

    Raises
    ------
    TrainingError
        The checkpoint cannot be loaded, asks for other modalities, or the settings are invalid.
    """
    from ..models import build_model

    if cfg.init_from is None:
        model_cfg = model_config(cfg, teacher_cfg)
        try:
            return build_model(model_cfg), model_cfg
        except CheckpointError as exc:
            raise TrainingError(f"Invalid model setting: {exc}") from exc
    loaded = load_pretrained(cfg.init_from, "init_from checkpoint")
    model_cfg = loaded.config
    if cfg.model.modalities and tuple(cfg.model.modalities) != tuple(model_cfg.modalities):
        raise TrainingError(
            f"init_from {cfg.init_from!r} takes modalities {list(model_cfg.modalities)}, but "
            f"model.modalities asks for {list(cfg.model.modalities)}; a pretrained network "
            "keeps its input channels."
        )
    # A private copy: the loaded network may be shared (registry cache, a viewer's model),
    # and inference loading switches gradients off.
    model = copy.deepcopy(loaded.model).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, model_cfg


def check_networks(cfg: TrainConfig, model_cfg: Any, teacher_cfg: Any | None) -> list[int]:
    """Check that teacher and model predict the same regions and that patches fit both.

    Returns
    -------
    list of int
        The validation window (``val_roi_size``, else ``patch_size``).

    Raises
    ------
    TrainingError
        Other regions, or a patch or window size not a multiple of a network's stride.
    """
    from ..models import network_stride

    if teacher_cfg is not None and tuple(teacher_cfg.regions) != tuple(model_cfg.regions):
        raise TrainingError(
            f"The teacher predicts regions {list(teacher_cfg.regions)} but the student "
            f"{list(model_cfg.regions)}: distillation needs the same output regions."
        )
    strides = {"model": network_stride(model_cfg)}
    if teacher_cfg is not None:
        strides["teacher"] = network_stride(teacher_cfg)
    val_roi = list(cfg.val_roi_size or cfg.patch_size)
    for who, s in strides.items():
        for name, size in (("patch_size", cfg.patch_size), ("val_roi_size", val_roi)):
            if any(v % s for v in size):
                raise TrainingError(
                    f"{name} {list(size)} must be a multiple of {s} in every axis for the {who} "
                    f"({model_cfg.arch if who == 'model' else teacher_cfg.arch})."
                )
    return val_roi


__all__ = [
    "check_networks",
    "load_model",
    "load_pretrained",
    "load_teacher",
    "model_config",
    "param_groups",
]
