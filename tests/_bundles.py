"""A MONAI bundle folder as the Model Zoo lays it out, written around a network for tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


def write_bundle(folder: Path, net: nn.Module, network_args: dict[str, Any]) -> Path:
    """Write ``folder`` as a ``brats_mri_segmentation``-style bundle holding ``net``'s weights.

    ``configs/inference.json`` describes a 4-channel, 3-region SegResNet with ``network_args``
    (plus a reference the loader must not need to resolve), ``configs/metadata.json`` a version,
    and ``models/model.pt`` the weights as training scripts often save them: ``{"state_dict":
    ...}`` with DDP's ``module.`` prefix.
    """
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    network_def = {
        "_target_": "SegResNet",
        "spatial_dims": 3,
        "in_channels": 4,
        "out_channels": 3,
        **network_args,
        "act": "$@unused_reference",
    }
    inference = {
        "network_def": network_def,
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 64]},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    (folder / "configs" / "metadata.json").write_text(json.dumps({"version": "0.5.3"}))
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state}, folder / "models" / "model.pt")
    return folder
