"""Small models and cases shared by the model, checkpoint, inference and export tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from napari_brats_kd import orientation as orient
from napari_brats_kd.labels import LabelConvention
from napari_brats_kd.models import LoadedModel, build_model, student_config
from napari_brats_kd.volume import Case, Volume

torch.set_num_threads(1)


def tiny_student(modalities=("t1c", "t1", "t2", "flair"), seed: int = 0) -> LoadedModel:
    """An untrained ``student-tiny`` (stride 8), in eval mode."""
    torch.manual_seed(seed)
    cfg = student_config(modalities, preset="student-tiny")
    return LoadedModel(build_model(cfg).eval(), cfg)


class Pointwise(nn.Module):
    """Logits depend on each voxel's first channel only: TC = x - 0.3, WT = x + 0.3, ET = x - 1.

    With no spatial context, full-volume, windowed and mirrored passes must agree exactly, and
    brighter voxels get nested classes (edema < core < enhancing).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 3, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0] = 4.0
            self.conv.bias.copy_(torch.tensor([-1.2, 1.2, -4.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def ship_students(tmp_path, monkeypatch, students: dict[str, tuple[str, ...]]) -> None:
    """Pretend the package ships these untrained students (name -> modalities), in this order."""
    from napari_brats_kd.models import registry, save_checkpoint

    infos = []
    for name, modalities in students.items():
        loaded = tiny_student(modalities)
        loaded.config.name = name
        path = save_checkpoint(tmp_path / name, loaded.model, loaded.config)
        infos.append(registry.ModelInfo(name, path, "", "student", "shipped"))
    monkeypatch.setattr(registry, "shipped_models", lambda: list(infos))


def pointwise_model(modalities=("t1c", "t1", "t2", "flair"), **overrides) -> LoadedModel:
    cfg = student_config(modalities, preset="student-tiny")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return LoadedModel(Pointwise(len(modalities)).eval(), cfg)


def make_case(
    shape=(36, 40, 28),
    modalities=("t1", "t1c", "t2", "flair"),
    convention=LabelConvention.BRATS2021,
    affine=None,
    seed: int = 0,
) -> Case:
    """A case with a noisy ellipsoidal 'brain' (background exactly 0) and a bright blob."""
    rng = np.random.default_rng(seed)
    affine = orient.BRATS_AFFINE if affine is None else affine
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.7
    blob = ((grid - np.array([0.2, 0.1, 0.0])[:, None, None, None]) ** 2).sum(0) < 0.08
    images = {}
    for i, m in enumerate(modalities):
        data = (rng.normal(100 + 10 * i, 5, shape) + 60 * blob) * brain
        images[m] = Volume.from_file_order(data.astype(np.float32), affine)
    return Case("TestCase_001", images, convention=convention, naming="brats2021")
