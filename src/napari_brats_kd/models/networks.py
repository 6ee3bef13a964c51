"""Build networks from a :class:`~napari_brats_kd.models.config.ModelConfig`."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import CheckpointError
from .config import ModelConfig
from .geometry import first_stage_width, network_stride

__all__ = [
    "ARCHITECTURES",
    "build_model",
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
    try:
        return builder(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"Cannot build {config.arch!r} with arguments {config.arch_args}: {exc}"
        ) from exc


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
