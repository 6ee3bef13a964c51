"""Read a checkpoint's config from its safetensors header, without torch.

A safetensors file starts with an 8-byte little-endian header length, then that many bytes of
JSON: the tensors' names, types and offsets, plus ``__metadata__`` (strings only). napari-brats-kd
stores its :class:`~napari_brats_kd.models.config.ModelConfig` there (see :mod:`.checkpoint`), so
finding out what a model needs (its modalities, its ROI) reads a few kilobytes, not the weights.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

from ..errors import CheckpointError
from .config import ModelConfig

#: Metadata keys inside the safetensors header.
META_FORMAT = "napari_brats_kd.format"
META_CONFIG = "napari_brats_kd.config"
META_EXTRA = "napari_brats_kd.extra"
FORMAT_NAME = "napari-brats-kd-checkpoint/1"

#: safetensors' own cap on the header (100 MB); anything larger is not a safetensors file.
_MAX_HEADER_BYTES = 100_000_000


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file: ``{tensor name: {dtype, shape, ...}, "__metadata__": ...}``.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated or not a safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            (length,) = struct.unpack("<Q", head) if len(head) == 8 else (-1,)
            if not 0 < length <= min(_MAX_HEADER_BYTES, path.stat().st_size - 8):
                raise ValueError("no valid header length in the first 8 bytes")
            header = json.loads(fh.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        if not isinstance(header.get("__metadata__") or {}, dict):
            raise ValueError("__metadata__ is not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"Checkpoint {path} is not a readable safetensors file ({exc}). "
            "It may be truncated or not a napari-brats-kd checkpoint."
        ) from exc
    return header


def read_safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file (raises as :func:`read_safetensors_header`)."""
    meta = read_safetensors_header(path).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def count_stored_parameters(path: str | os.PathLike) -> int:
    """Number of values stored in a safetensors file (its parameters and buffers), from the header."""
    total = 0
    for name, entry in read_safetensors_header(path).items():
        if name != "__metadata__" and isinstance(entry, dict):
            total += math.prod(int(n) for n in entry.get("shape", ()))
    return total


def read_checkpoint_header(path: str | os.PathLike) -> tuple[ModelConfig, dict]:
    """The config and JSON extras stored in a napari-brats-kd checkpoint.

    Raises
    ------
    CheckpointError
        If the file is unreadable or was not written by napari-brats-kd.
    """
    path = Path(path)
    meta = read_safetensors_metadata(path)
    if META_CONFIG not in meta:
        raise CheckpointError(
            f"Checkpoint {path} holds no napari-brats-kd model config in its metadata: it was not "
            "written by napari-brats-kd's save_checkpoint, so the network it needs is unknown. "
            "Load MONAI bundles with load_bundle, or re-save the weights with save_checkpoint."
        )
    try:
        config = ModelConfig.from_json(meta[META_CONFIG])
    except CheckpointError as exc:
        raise CheckpointError(f"Checkpoint {path}: {exc}") from exc
    try:
        extra = json.loads(meta.get(META_EXTRA, "{}"))
    except json.JSONDecodeError:
        extra = {}
    return config, extra if isinstance(extra, dict) else {}


def read_checkpoint_config(path: str | os.PathLike) -> ModelConfig:
    """The config stored in a checkpoint, without loading its weights."""
    return read_checkpoint_header(path)[0]
