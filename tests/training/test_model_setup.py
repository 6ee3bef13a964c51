"""training/model_setup.py: parameter groups for fine-tuning (pretrained layers learn slower)."""

from __future__ import annotations

import pytest
import torch

from napari_brats_kd.models import teacher_config
from napari_brats_kd.training import load_config

torch.set_num_threads(2)


@pytest.mark.parametrize("arch", ["segresnet", "unet", "swinunetr"])
def test_pretrained_layers_learn_slower_than_the_output_layer(arch) -> None:
    from napari_brats_kd.models import build_model
    from napari_brats_kd.training.engine import _param_groups

    model = build_model(teacher_config(arch=arch))
    cfg = load_config("finetune", ["freeze=[]", "lr=1e-3"])
    body, head = _param_groups(model, cfg, arch, pretrained=True)
    assert body["lr"] == pytest.approx(1e-4) and head["lr"] == pytest.approx(1e-3)
    # The head is the output block: every convolution in it writes the 3 region channels, and
    # the one that maps features to them is among them.
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)
    ]
    head_ids = {id(p) for p in head["params"]}
    in_head = [m for m in convs if id(m.weight) in head_ids]
    assert in_head and all(m.out_channels == 3 for m in in_head)
    assert any(m.in_channels > 3 for m in in_head)
    assert len(body["params"]) + len(head["params"]) == len(list(model.parameters()))
