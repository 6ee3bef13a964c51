"""Build networks from a :class:`~napari_brats_kd.models.config.ModelConfig`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import CheckpointError, ResourceError
from .config import ModelConfig
from .geometry import first_stage_width, network_stride

__all__ = [
    "ARCHITECTURES",
    "MAX_PARAMETERS",
    "build_model",
    "check_model_size",
    "count_parameters",
    "first_stage_width",
    "network_stride",
]

#: Channel counts come from the config; builder arguments must not repeat them.
_RESERVED_ARGS = ("in_channels", "out_channels", "spatial_dims")


def _segresnet(cfg: ModelConfig) -> nn.Module:
    from monai.networks.nets import SegResNet

    from .student import PooledSegResNet

    args = dict(cfg.arch_args)
    for key in ("blocks_down", "blocks_up"):
        if key in args:
            args[key] = tuple(args[key])
    # ``downsample`` > 1: same network and parameter names, run on a pooled input.
    cls = PooledSegResNet if int(args.get("downsample", 1)) != 1 else SegResNet
    if cls is SegResNet:
        args.pop("downsample", None)
    return cls(spatial_dims=3, in_channels=cfg.in_channels, out_channels=cfg.out_channels, **args)


def _student(cfg: ModelConfig) -> nn.Module:
    from .student import HalfResSegResNet

    return HalfResSegResNet(
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, **cfg.arch_args
    )


def _unet(cfg: ModelConfig) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=3, in_channels=cfg.in_channels, out_channels=cfg.out_channels, **cfg.arch_args
    )


def _swinunetr(cfg: ModelConfig) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(
        spatial_dims=3, in_channels=cfg.in_channels, out_channels=cfg.out_channels, **cfg.arch_args
    )


#: Architecture key -> builder. One place: checkpoints, the CLI and the widget all go through it.
ARCHITECTURES: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "segresnet": _segresnet,
    "student": _student,
    "unet": _unet,
    "swinunetr": _swinunetr,
}


def build_model(config: ModelConfig) -> nn.Module:
    """Instantiate the (untrained) network a config describes.

    Parameters
    ----------
    config
        Model configuration.

    Returns
    -------
    torch.nn.Module
        The network, in training mode, on CPU.

    Raises
    ------
    CheckpointError
        If the architecture is unknown or its arguments do not fit the builder.
    """
    builder = ARCHITECTURES.get(config.arch)
    if builder is None:
        raise CheckpointError(
            f"Unknown architecture {config.arch!r}: expected one of {', '.join(ARCHITECTURES)}."
        )
    clash = [k for k in _RESERVED_ARGS if k in config.arch_args]
    if clash:
        raise CheckpointError(
            f"arch_args of {config.display_name} set {clash}: channel counts follow the "
            "config's modalities and regions and must not be given."
        )
    check_model_size(config)
    try:
        return builder(config)
    except MemoryError:
        raise
    except Exception as exc:  # a builder fails on bad arguments in many ways (0 groups: 1 / 0)
        raise CheckpointError(
            f"Cannot build {config.arch!r} with arguments {config.arch_args}: {exc}"
        ) from exc


#: Most parameters a model may have: 2 GB of float32 weights, 80x the largest teacher here
#: (segresnet-large, 18.8 M). A config asking for more is damaged or hostile.
MAX_PARAMETERS = 500_000_000

#: Weights under this size are not held against the free memory (see check_model_size).
_SMALL_WEIGHTS = 256 * 1024**2


def check_model_size(config: ModelConfig) -> None:
    """Refuse, before any weight is allocated, a model too large to build.

    Widths and block counts were checked when the config was read (:class:`.ModelConfig`);
    here the network is built on PyTorch's meta device (no memory) to count its parameters
    against :data:`MAX_PARAMETERS` and the free memory.

    Raises
    ------
    ResourceError
        Naming the size asked for and the limit.
    """
    import torch

    try:
        with torch.device("meta"):
            n = count_parameters(ARCHITECTURES[config.arch](config))
    except Exception:
        return  # the real build below reports what is wrong with the arguments
    need = 4 * n
    from ..device import available_memory

    # Weights under _SMALL_WEIGHTS never exhaust a machine (activations do, and the inference and
    # training planners check those): only larger models are held against the free memory, so
    # that the ranks of a distributed run, whose free memory differs, agree on small models.
    free = available_memory("cpu") if need > _SMALL_WEIGHTS else None
    if n > MAX_PARAMETERS or (free is not None and need > free):
        raise ResourceError(
            f"{config.display_name} has {n / 1e6:,.0f} M parameters ({need / 1024**3:.1f} GiB "
            f"of weights); at most {MAX_PARAMETERS / 1e6:,.0f} M are accepted"
            + (f" and {free / 1024**3:.1f} GiB of memory are free" if free is not None else "")
            + ": the checkpoint's config is damaged, or the model needs a larger machine."
        )


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
