"""Self-describing checkpoints: safetensors weights with the model config embedded.

A checkpoint is one ``<name>.safetensors`` file whose metadata holds the
:class:`~napari_brats_kd.models.config.ModelConfig` as JSON (plus optional JSON ``extra``), so that
the file alone rebuilds the network. A ``<name>.json`` sidecar with the same text is written beside
it for people (and ``cat``); loading never needs it. safetensors stores only tensors, so loading a
checkpoint can never execute code, unlike a pickled ``.pt``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._files import atomic_write
from ..errors import CheckpointError
from .config import ModelConfig
from .header import (
    FORMAT_NAME,
    META_CONFIG,
    META_EXTRA,
    META_FORMAT,
    read_checkpoint_header,
)
from .networks import build_model

#: Wrappers whose parameter names gain a prefix (DistributedDataParallel, torch.compile).
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass
class LoadedModel:
    """A network ready for inference, with the config that describes it.

    Attributes
    ----------
    model
        The network, in eval mode.
    config
        Its configuration (architecture, modalities, regions, provenance, metrics).
    path
        File or folder the weights came from (``None`` for models made in memory).
    extra
        The JSON ``extra`` saved with the checkpoint (e.g. epoch, losses), if any.
    runtime_cache
        Per-model state of inference back ends (e.g. an onnxruntime session), rebuilt when the
        weights change.
    """

    model: nn.Module
    config: ModelConfig
    path: Path | None = None
    extra: dict = field(default_factory=dict)
    runtime_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        """Display name of the model."""
        return self.config.display_name


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain network inside DDP / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    config: ModelConfig,
    extra: dict | None = None,
    sidecar: bool = True,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write weights and config to ``path`` (a ``.safetensors`` file) atomically.

    Parameters
    ----------
    path
        Target file; ``.safetensors`` is appended when missing.
    model
        The network (DDP / compiled wrappers are unwrapped).
    config
        Its configuration; stored in the file's metadata.
    extra
        JSON-serialisable extras (epoch, losses, ...), returned as ``LoadedModel.extra``.
    sidecar
        Also write ``<name>.json`` with the config and extras, for people to read.
    dtype
        Store floating-point weights in this type (e.g. ``torch.float16`` halves a shipped file);
        :func:`load_checkpoint` casts them back to the network's own type.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    CheckpointError
        If ``extra`` is not JSON-serialisable or the file cannot be written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    try:
        extra_json = json.dumps(extra or {}, sort_keys=True)
    except TypeError as exc:
        raise CheckpointError(f"extra for {path} is not JSON-serialisable: {exc}") from exc
    state = _clean_state_dict(unwrap_model(model).state_dict())
    bad = [k for k, v in state.items() if v.is_floating_point() and not _finite(v)]
    if bad:
        # A diverged network must never replace a good file: it would segment nothing.
        raise CheckpointError(
            f"Not writing {path}: {len(bad)} of the network's tensors are not finite (NaN or "
            f"Inf), e.g. {', '.join(bad[:3])}; the training diverged (lower the learning rate)."
        )
    # safetensors refuses shared or strided storage; copies are cheap next to a training run.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    metadata = {META_FORMAT: FORMAT_NAME, META_CONFIG: config.to_json(), META_EXTRA: extra_json}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    except Exception as exc:  # OSError, or safetensors' own error wrapping one (a full disk)
        raise CheckpointError(f"Cannot write checkpoint {path}: {exc}") from exc
    if sidecar:
        text = json.dumps(
            {"config": config.to_dict(), "extra": json.loads(extra_json)}, indent=2, sort_keys=True
        )
        atomic_write(path.with_suffix(".json"), lambda tmp: tmp.write_text(text + "\n"))
    return path


def check_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike
) -> None:
    """Raise :class:`CheckpointError` naming keys that are missing, unexpected or mis-shaped."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k} (file {tuple(state[k].shape)}, network {tuple(expected[k].shape)})"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]

    def few(items: list[str]) -> str:
        more = f" and {len(items) - 5} more" if len(items) > 5 else ""
        return ", ".join(items[:5]) + more

    not_float = [
        f"{k} ({str(state[k].dtype).removeprefix('torch.')})"
        for k in expected
        if k in state and expected[k].is_floating_point() and not state[k].is_floating_point()
    ]
    non_finite = [k for k, v in state.items() if v.is_floating_point() and not _finite(v)]
    problems = []
    if not_float:
        problems.append(f"integer weights where the network has real numbers {few(not_float)}")
    if non_finite:
        problems.append(
            f"weights that are not finite (NaN or Inf) {few(non_finite)}: the training that "
            "wrote them diverged; use an earlier checkpoint"
        )
    if missing:
        problems.append(f"missing weights {few(missing)}")
    if unexpected:
        problems.append(f"unexpected weights {few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {few(wrong)}")
    if problems:
        raise CheckpointError(f"Weights in {source} cannot be used: {'; '.join(problems)}.")


def _finite(tensor: torch.Tensor) -> bool:
    return bool(torch.isfinite(tensor).all())


def load_state_dict_checked(
    model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike
) -> nn.Module:
    """Load ``state`` into ``model`` after :func:`check_state_dict`; returns the model."""
    state = _clean_state_dict(state)
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True)
    return model


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> LoadedModel:
    """Rebuild a network from a napari-brats-kd ``.safetensors`` checkpoint.

    Parameters
    ----------
    path
        The ``.safetensors`` file written by :func:`save_checkpoint`.
    map_location
        Device to put the weights on.

    Returns
    -------
    LoadedModel
        Network in eval mode with its config.

    Raises
    ------
    CheckpointError
        If the file is missing, corrupt, lacks a config, names an unknown architecture, or its
        weights do not fit that architecture (missing, unexpected or mis-shaped keys).
    """
    from safetensors.torch import load_file

    path = Path(path)
    config, extra = read_checkpoint_header(path)
    try:
        model = build_model(config)
    except CheckpointError as exc:
        raise CheckpointError(f"Checkpoint {path}: {exc}") from exc
    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as exc:  # corrupt payload behind a valid header
        raise CheckpointError(f"Checkpoint {path}: cannot read its weights ({exc}).") from exc
    load_state_dict_checked(model, state, path)
    model.to(map_location).eval()
    return LoadedModel(model=model, config=config, path=path, extra=extra)
