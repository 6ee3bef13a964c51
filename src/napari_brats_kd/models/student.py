"""The compact CPU student: a small SegResNet that works at half resolution.

Why half resolution: on CPU, the cost of a 3D network is dominated by the full-resolution stages
(a 240x240x155 volume holds 9 M voxels). Pooling the input by 2 along each axis divides every
stage's cost by 8; tumour sub-regions in BraTS are rarely thinner than a few millimetres, and the
logits are upsampled trilinearly before the 0.5 threshold, so boundaries stay smooth.
"""

from __future__ import annotations

import math
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
        Groups of every GroupNorm layer (MONAI's default 8 makes an 8-filter stage a per-channel
        norm; the presets use 2).
    negative_slope
        Slope of the activations below zero: 0 is MONAI's ReLU, the presets use LeakyReLU(0.01) as
        nnU-Net does. Why: in an 8-filter student the output head sees 8 normalised, rectified
        features, and training was measured to drive all 8 to zero inside the tumour core (90 % of
        TC and ET voxels, half the channels dead everywhere): no gradient reaches those voxels
        again, the TC and ET outputs sit at sigmoid(bias) ~ 0.4 and their label maps stay empty
        while WT trains. A leaky slope keeps a gradient there.
    head_prior
        Initial probability of every output region (the output bias starts at its logit, as in
        RetinaNet); ``None`` keeps MONAI's initialisation, whose p = 0.5 everywhere makes the first
        steps push the whole head down, which is how half of its channels were measured to die.
        The presets use 0.01. Only the starting point of training: loaded weights replace it.

    Notes
    -----
    ``num_groups`` and ``negative_slope`` default to MONAI's values so that checkpoints saved
    before these arguments existed build the network they were trained as.
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
        negative_slope: float = 0.0,
        head_prior: float | None = None,
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
            act=(
                ("LEAKYRELU", {"negative_slope": float(negative_slope), "inplace": True})
                if negative_slope
                else ("RELU", {"inplace": True})
            ),
        )
        if head_prior is not None:
            if not 0.0 < head_prior < 1.0:
                raise ValueError(f"head_prior must be a probability in (0, 1), got {head_prior}")
            head = self.net.conv_final[-1].conv
            nn.init.constant_(head.bias, math.log(head_prior / (1.0 - head_prior)))

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
