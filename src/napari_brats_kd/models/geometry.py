"""What a model config says about shapes, without building the network (no torch, no MONAI)."""

from __future__ import annotations

import math
from typing import Any

from ..errors import CheckpointError
from .config import ModelConfig


def _readable(what: str):
    """Turn a config whose arch_args have the wrong types (``blocks_down: 5``) into a
    :class:`CheckpointError` naming them, instead of a TypeError deep in a planner."""

    def wrap(fn):
        def checked(config: ModelConfig):
            try:
                return fn(config)
            except (TypeError, ValueError, OverflowError) as exc:
                raise CheckpointError(
                    f"Model config {config.display_name}: arch_args {config.arch_args!r:.200} "
                    f"do not give a {what} ({exc})."
                ) from None

        checked.__doc__, checked.__name__ = fn.__doc__, fn.__name__
        return checked

    return wrap


@_readable("network stride")
def network_stride(config: ModelConfig) -> int:
    """Factor every spatial input size must be a multiple of for the network to run."""
    args: dict[str, Any] = config.arch_args
    if config.arch == "segresnet":
        return int(args.get("downsample", 1)) * 2 ** (
            len(args.get("blocks_down", (1, 2, 2, 4))) - 1
        )
    if config.arch == "student":
        return int(args.get("downsample", 2)) * 2 ** (
            len(args.get("blocks_down", (1, 1, 1, 1))) - 1
        )
    if config.arch == "unet":
        return int(math.prod(args.get("strides", (2, 2, 2, 2))))
    if config.arch == "swinunetr":
        return 32
    raise CheckpointError(f"Unknown architecture {config.arch!r}.")


@_readable("first-stage width")
def first_stage_width(config: ModelConfig) -> tuple[int, float]:
    """Channels of the widest full-resolution stage and the stage's resolution scale.

    Used by the memory estimate: activations at the first stage dominate a 3D network's memory.
    """
    args = config.arch_args
    if config.arch == "segresnet":
        return int(args.get("init_filters", 8)), 1.0 / int(args.get("downsample", 1)) ** 3
    if config.arch == "student":
        return int(args.get("init_filters", 8)), 1.0 / int(args.get("downsample", 2)) ** 3
    if config.arch == "unet":
        return int(args.get("channels", (16,))[0]), 1.0
    if config.arch == "swinunetr":
        return int(args.get("feature_size", 24)), 1.0
    return 16, 1.0
