"""Augmentation presets: they build, keep shapes, keep labels binary and aligned with images, and
never reach the memory cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from napari_brats_kd.errors import TrainingError
from napari_brats_kd.training.augment import PRESETS, AugmentConfig, build_augmentation
from napari_brats_kd.training.teacher_targets import BACKGROUND_LOGIT


def _sample() -> dict:
    rng = np.random.default_rng(0)
    label = np.zeros((3, 24, 24, 16), np.float32)
    label[1, 6:18, 5:15, 4:12] = 1
    label[0, 8:14, 7:12, 5:10] = 1
    label[2, 9:12, 8:11, 6:9] = 1
    image = rng.normal(size=(4, 24, 24, 16)).astype(np.float32)
    image[0] = label[1]  # channel 0 mirrors WT, to check image/label alignment
    return {"image": torch.from_numpy(image), "label": torch.from_numpy(label)}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_keep_shapes_and_binary_labels(preset: str) -> None:
    cfg = AugmentConfig.from_preset(preset)
    t = Compose(build_augmentation(cfg))
    t.set_random_state(1)
    for _ in range(3):
        out = t(_sample())
        assert tuple(out["image"].shape) == (4, 24, 24, 16)
        assert tuple(out["label"].shape) == (3, 24, 24, 16)
        assert set(np.unique(np.asarray(out["label"]))) <= {0.0, 1.0}


def test_none_preset_is_identity_and_strong_has_low_resolution() -> None:
    assert build_augmentation(AugmentConfig.from_preset("none")) == []
    names = [type(t).__name__ for t in build_augmentation(AugmentConfig.from_preset("strong"))]
    assert "RandSimulateLowResolutiond" in names
    assert "Rand3DElasticd" in names and "RandBiasFieldd" in names


def test_spatial_transforms_move_image_and_label_together() -> None:
    cfg = AugmentConfig.from_preset("none", flip_prob=1.0)
    out = Compose(build_augmentation(cfg))(_sample())
    wt = np.asarray(out["label"][1])
    assert np.array_equal(np.asarray(out["image"][0]) > 0.5, wt > 0.5)
    assert not np.array_equal(wt, np.asarray(_sample()["label"][1]))  # it did flip

    cfg = AugmentConfig.from_preset("none", affine_prob=1.0, rotate=0.3)
    t = Compose(build_augmentation(cfg))
    t.set_random_state(3)
    out = t(_sample())
    agree = (np.asarray(out["image"][0]) > 0.5) == (np.asarray(out["label"][1]) > 0.5)
    assert agree.mean() > 0.97  # bilinear image vs nearest label differ only at the border


def test_intensity_transforms_leave_labels_alone() -> None:
    cfg = AugmentConfig.from_preset(
        "none", intensity_prob=1.0, noise_prob=1.0, gamma_prob=1.0, blur_prob=1.0, bias_prob=1.0
    )
    sample = _sample()
    out = Compose(build_augmentation(cfg))(dict(sample))
    assert np.array_equal(np.asarray(out["label"]), np.asarray(sample["label"]))
    assert not np.allclose(np.asarray(out["image"]), np.asarray(sample["image"]))


def test_config_from_dict_overrides_and_errors() -> None:
    cfg = AugmentConfig.from_dict({"preset": "strong", "noise_prob": 0.5, "gamma": [0.8, 1.2]})
    assert cfg.preset == "strong" and cfg.noise_prob == 0.5 and cfg.gamma == (0.8, 1.2)
    assert cfg.lowres_prob == AugmentConfig.from_preset("strong").lowres_prob
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert AugmentConfig.from_dict("none").flip_prob == 0.0
    with pytest.raises(TrainingError, match="preset"):
        AugmentConfig.from_preset("extreme")
    with pytest.raises(TrainingError, match="noise_probability"):
        AugmentConfig.from_dict({"noise_probability": 0.1})


def test_cached_teacher_targets_move_with_the_image_and_skip_intensity_changes() -> None:
    sample = _sample()
    # Teacher logits that are a smooth function of position: a copy of a blurred image channel.
    field = torch.from_numpy(np.asarray(sample["label"][1]) * 4.0 - 2.0)
    sample["image"][0] = field
    sample["teacher"] = field[None].repeat(3, 1, 1, 1).clone()
    # The image channel is the logits shifted so that the background logit is its 0.
    sample["image"][0] = field - BACKGROUND_LOGIT
    cfg = AugmentConfig.from_preset(
        "none", flip_prob=1.0, affine_prob=1.0, rotate=0.3, elastic_prob=1.0
    )
    t = Compose(build_augmentation(cfg, target_keys=("teacher",), target_fill=BACKGROUND_LOGIT))
    t.set_random_state(5)
    out = t(dict(sample))
    img, tgt = np.asarray(out["image"][0]), np.asarray(out["teacher"])
    assert tgt.shape == (3, 24, 24, 16)
    # Both resampled bilinearly with the same transform, and where padding came in (the image's
    # 0, background) the targets say background too, not logit 0 = "unsure".
    padded = img == 0
    assert padded.sum() > 100
    assert np.allclose(tgt[1], img + BACKGROUND_LOGIT, atol=1e-3)
    assert np.allclose(tgt[:, padded], BACKGROUND_LOGIT, atol=1e-3)
    assert not np.allclose(tgt, np.asarray(sample["teacher"]))  # it did move

    cfg = AugmentConfig.from_preset("none", intensity_prob=1.0, noise_prob=1.0, gamma_prob=1.0)
    out = Compose(build_augmentation(cfg, target_keys=("teacher",)))(dict(sample))
    assert np.array_equal(np.asarray(out["teacher"]), np.asarray(sample["teacher"]))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Three labelled phantom cases at 4 mm (small volumes)."""
    from napari_brats_kd.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms") / "siteA"
    write_phantom_dataset(root, n=3, seed=10, spacing=4)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("augmented", [True, False])
def test_training_draws_never_change_the_memory_cache(data_dir, augmented: bool) -> None:
    """The memory cache hands its cases to patch sampling without a copy (a deep copy of a
    whole case at every draw cost a tenth of a CPU step), so nothing that happens to a patch may
    reach the cached case: not any augmentation, nor a consumer writing into the patch."""
    import copy

    from monai.transforms import Transform

    from napari_brats_kd.labels import BUNDLE_MODALITY_ORDER
    from napari_brats_kd.training.augment import AugmentConfig, build_augmentation
    from napari_brats_kd.training.data import (
        IMAGE,
        LABEL,
        TEACHER,
        LoadCased,
        build_dataset,
        discover_cases,
        patch_transforms,
    )
    from napari_brats_kd.training.teacher_targets import BACKGROUND_LOGIT

    class FakeTeacherTargets(Transform):  # stands in for LoadTeacherTargetsd (float16 logits)
        def __call__(self, item):
            image = np.asarray(item[IMAGE])
            return {**item, TEACHER: np.repeat(image[:1] * 4 - 2, 3, axis=0).astype(np.float16)}

    every = {
        k: 1.0
        for k in ("flip_prob", "affine_prob", "elastic_prob", "intensity_prob", "gamma_prob",
                  "bias_prob", "noise_prob", "blur_prob", "lowres_prob")
    }  # fmt: skip
    settings = (
        AugmentConfig.from_preset("strong", **every)
        if augmented
        else AugmentConfig.from_preset("none")
    )
    augment = build_augmentation(settings, target_keys=(TEACHER,), target_fill=BACKGROUND_LOGIT)
    rand = patch_transforms([16, 16, 16], 2, 0.5, augment, teacher_targets=True)
    loader = LoadCased(BUNDLE_MODALITY_ORDER, min_size=[16, 16, 16])
    dataset = build_dataset(discover_cases(data_dir), [loader, FakeTeacherTargets()], rand)
    cache_ds = dataset.dataset
    assert cache_ds.copy_cache is False  # the path under test: no copy per draw
    before = copy.deepcopy(cache_ds._cache)
    first = dataset[0]
    for _ in range(3):
        for i in range(len(dataset)):
            for patch in dataset[i]:
                for key in (IMAGE, LABEL, TEACHER):
                    patch[key] += 1  # a consumer working in place
    # Random draws (different crops, augmentations), not one patch again and again.
    assert not np.array_equal(np.asarray(first[0][IMAGE]), np.asarray(dataset[0][0][IMAGE]))
    for cached, kept in zip(cache_ds._cache, before, strict=True):
        assert cached.keys() == kept.keys()
        for key, value in kept.items():
            if isinstance(value, np.ndarray | torch.Tensor):
                assert np.array_equal(np.asarray(cached[key]), np.asarray(value)), key
            else:
                assert cached[key] == value, key
