"""Model configs, network builders, student size and input normalisation."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from _model_helpers import tiny_student
from napari_brats_kd import labels
from napari_brats_kd.errors import CheckpointError
from napari_brats_kd.models import (
    STUDENT_PRESETS,
    ModelConfig,
    build_model,
    count_parameters,
    network_stride,
    normalize_input,
    student_config,
    teacher_config,
)


@pytest.mark.parametrize(
    "config",
    [
        teacher_config(),
        teacher_config(arch="unet"),
        student_config(),
        student_config(("t1c", "flair"), preset="student-tiny", init_filters=16),
    ],
    ids=["teacher", "unet", "student", "student-subset"],
)
def test_config_json_round_trip(config):
    config.provenance = {"seed": 3, "data": ["a", "b"]}
    config.metrics = {"val_dice": {"WT": 0.9}}
    again = ModelConfig.from_json(config.to_json())
    assert again == config
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_config_rejects_bad_fields():
    good = student_config().to_dict()
    with pytest.raises(CheckpointError, match="unknown fields"):
        ModelConfig.from_dict({**good, "colour": "blue"})
    with pytest.raises(CheckpointError, match="modalities"):
        ModelConfig.from_dict({**good, "modalities": ["t1", "dwi"]})
    with pytest.raises(CheckpointError, match="regions"):
        ModelConfig.from_dict({**good, "regions": ["WT", "WT", "ET"]})
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ModelConfig.from_json("{not json")


def test_modality_aliases_are_canonicalised():
    assert student_config(("t1ce", "FLAIR")).modalities == ("t1c", "flair")


def test_teacher_is_the_bundle_segresnet():
    cfg = teacher_config()
    assert cfg.modalities == labels.BUNDLE_MODALITY_ORDER
    assert cfg.regions == labels.REGIONS
    assert cfg.roi_size == (240, 240, 160)
    net = build_model(cfg)
    # BRATS_FACTS.md: about 4.7 M parameters.
    assert 4.6e6 < count_parameters(net) < 4.8e6
    assert net.convInit.conv.in_channels == 4
    assert net.conv_final[-1].conv.out_channels == 3


def test_halfres_teacher_shares_the_bundle_parameter_names():
    bundle = build_model(teacher_config())
    cfg = teacher_config(arch="segresnet-halfres")
    pooled = build_model(cfg)
    # Same names and shapes: bundle weights load into it (and freezing uses the same prefixes).
    pooled.load_state_dict(bundle.state_dict(), strict=True)
    assert network_stride(cfg) == 2 * network_stride(teacher_config())
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.inference_mode():
        y = pooled.eval()(x)
        # It runs the same network on the input pooled by 2, logits upsampled back.
        ref = bundle.eval()(torch.nn.functional.avg_pool3d(x, 2))
    assert y.shape == (1, 3, 32, 32, 32)
    up = torch.nn.functional.interpolate(ref, size=(32, 32, 32), mode="trilinear")
    assert torch.allclose(y, up, atol=1e-5)


@pytest.mark.parametrize("preset", sorted(STUDENT_PRESETS))
def test_student_is_at_least_ten_times_smaller(preset):
    teacher = count_parameters(build_model(teacher_config()))
    student = count_parameters(build_model(student_config(preset=preset)))
    assert teacher / student >= 10


@pytest.mark.parametrize("preset", sorted(STUDENT_PRESETS))
def test_student_presets_use_leaky_activations_and_grouped_norms(preset):
    # With ReLU the 8-filter student's head went dead inside the tumour core (all its features
    # zero there), so TC and ET stayed empty; one channel per norm group is an instance norm.
    model = build_model(student_config(preset=preset))
    kinds = {type(m) for m in model.modules()}
    assert torch.nn.LeakyReLU in kinds and torch.nn.ReLU not in kinds
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 2 for m in norms)
    # An untrained student calls about 1 % of voxels tumour, not half of them.
    with torch.inference_mode():
        p = torch.sigmoid(model.eval()(torch.randn(1, 4, 32, 32, 32)))
    assert 0.001 < float(p.mean()) < 0.05


def test_student_checkpoints_from_before_these_options_build_as_trained():
    cfg = student_config()
    for key in ("num_groups", "negative_slope", "head_prior"):  # not in older checkpoints
        del cfg.arch_args[key]
    model = build_model(cfg)
    assert {m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)} == {8}
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in model.modules())


def test_subset_modality_student_runs_at_full_resolution():
    loaded = tiny_student(("t1c", "flair"))
    assert loaded.config.in_channels == 2
    stride = network_stride(loaded.config)
    x = torch.randn(1, 2, 2 * stride, 3 * stride, 2 * stride)
    with torch.inference_mode():
        y = loaded.model(x)
    assert y.shape == (1, 3, *x.shape[2:])


def test_unknown_architecture_and_reserved_args_raise():
    with pytest.raises(CheckpointError, match="Unknown architecture"):
        build_model(ModelConfig(arch="transformer9000"))
    with pytest.raises(CheckpointError, match="channel counts"):
        build_model(ModelConfig(arch="segresnet", arch_args={"in_channels": 4}))
    with pytest.raises(CheckpointError, match="Cannot build"):
        build_model(ModelConfig(arch="segresnet", arch_args={"no_such_argument": 1}))
    with pytest.raises(CheckpointError, match="Unknown teacher"):
        teacher_config(arch="resnet")
    with pytest.raises(CheckpointError, match="Unknown student preset"):
        student_config(preset="student-huge")


def test_normalize_input_matches_monai():
    from monai.transforms import NormalizeIntensity

    rng = np.random.default_rng(1)
    image = np.zeros((3, 12, 10, 8), np.float32)
    image[:, 2:10, 2:8, 1:7] = rng.uniform(5, 500, (3, 8, 6, 6))
    image[2, 2:10, 2:8, 1:7] = 7.0  # constant channel: only shifted
    ours = normalize_input(image)
    theirs = np.asarray(NormalizeIntensity(nonzero=True, channel_wise=True)(image))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert np.all(ours[image == 0] == 0)
    assert ours.dtype == np.float32


def test_backend_imports_no_qt():
    code = (
        "import sys, napari_brats_kd.inference, napari_brats_kd.export, napari_brats_kd.models;"
        "bad=[m for m in ('PyQt5','PyQt6','PySide2','PySide6','qtpy','napari','magicgui')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_config_names_the_architecture_it_builds():
    from napari_brats_kd.models.config import TEACHER_ARCHS

    for arch in TEACHER_ARCHS:
        assert teacher_config(arch=arch).preset == arch
    for preset in STUDENT_PRESETS:
        assert student_config(preset=preset).preset == preset
    # Changed arguments match no named architecture.
    assert teacher_config(arch="segresnet", init_filters=8).preset is None
    assert student_config(preset="student-small", init_filters=16).preset is None
