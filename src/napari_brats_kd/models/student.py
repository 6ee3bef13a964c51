"""The compact CPU student: a small SegResNet that works at half resolution.

Why half resolution: on CPU, the cost of a 3D network is dominated by the full-resolution stages
(a 240x240x155 volume holds 9 M voxels). Pooling the input by 2 along each axis divides every
stage's cost by 8; tumour sub-regions in BraTS are rarely thinner than a few millimetres, and the
logits are upsampled trilinearly before the 0.5 threshold, so boundaries stay smooth.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import SegResNet
from torch import nn
from torch.nn import functional as F


class HalfResSegResNet(nn.Module):
    """SegResNet run on an input average-pooled by ``downsample``; logits upsampled back.

    Parameters
    ----------
    in_channels, out_channels
        Input modalities and output regions.
    init_filters
        Width of the first stage (doubles at each stage).
    blocks_down, blocks_up
        Residual blocks per encoder / decoder stage (as in MONAI's SegResNet).
    downsample
        Pooling factor of the stem (1 turns the student into a plain SegResNet).
    dropout_prob
        Dropout of the encoder (training only).
    num_groups
        Groups of every GroupNorm layer. MONAI's default, 8, equals the width of an 8-filter first
        stage, which turns the last normalisation into a per-channel (instance) norm; with it the
        student's TC and ET outputs were measured to stall just below p = 0.5 (so the thresholded
        maps stay empty) while WT trains. The presets use 2. The default stays 8 so that
        checkpoints saved before this argument existed build the network they were trained as.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 3,
        init_filters: int = 8,
        blocks_down: Sequence[int] = (1, 1, 1, 1),
        blocks_up: Sequence[int] = (1, 1, 1),
        downsample: int = 2,
        dropout_prob: float | None = None,
        num_groups: int = 8,
    ) -> None:
        super().__init__()
        if downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {downsample}")
        self.downsample = int(downsample)
        self.net = SegResNet(
            spatial_dims=3,
            init_filters=init_filters,
            in_channels=in_channels,
            out_channels=out_channels,
            dropout_prob=dropout_prob,
            blocks_down=tuple(blocks_down),
            blocks_up=tuple(blocks_up),
            norm=("GROUP", {"num_groups": int(num_groups)}),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample == 1:
            return self.net(x)
        return pooled_forward(self.net, x, self.downsample)


def pooled_forward(net: nn.Module, x: torch.Tensor, downsample: int) -> torch.Tensor:
    """Run ``net`` on ``x`` average-pooled by ``downsample``; upsample the logits back."""
    size = x.shape[2:]
    y = F.avg_pool3d(x, kernel_size=downsample, stride=downsample)
    y = net(y)
    return F.interpolate(y, size=size, mode="trilinear", align_corners=False)


class PooledSegResNet(SegResNet):
    """MONAI SegResNet that works on an input pooled by ``downsample``; logits upsampled back.

    Unlike :class:`HalfResSegResNet` it *is* a SegResNet, so its parameter names are the bundle
    network's: checkpoints of either load into the other, and encoder freezing uses the same
    prefixes. Used by the ``segresnet-halfres`` teacher, trainable on CPU in reasonable time.
    """

    def __init__(self, *args, downsample: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {downsample}")
        self.downsample = int(downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample == 1:
            return super().forward(x)
        return pooled_forward(super().forward, x, self.downsample)
