"""What a user of the training backend notices: patch balance, LR schedule, validation, best
checkpoint, frozen teacher, reproducibility and their own split file (tiny phantoms, CPU)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from _training_settings import FAST, TINY
from napari_brats_kd.errors import TrainingError
from napari_brats_kd.models import build_model, load_checkpoint, save_checkpoint, teacher_config
from napari_brats_kd.training import distill, engine, load_config, train_teacher


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Three labelled phantom cases at 4 mm (small volumes)."""
    from napari_brats_kd.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms") / "siteA"
    write_phantom_dataset(root, n=3, seed=10, spacing=4)
    return root


@pytest.fixture(scope="module")
def case_ids(data_dir) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if p.is_dir())


def _cfg(data_dir: Path, run_dir: Path, *extra: str):
    return load_config(
        "teacher",
        [
            f"data_dir={data_dir}",
            f"run_dir={run_dir}",
            f"model.arch_args={json.dumps(TINY)}",
            *FAST,
            *extra,
        ],
    )


def _log(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "log.csv").open() as fh:
        return list(csv.DictReader(fh))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that differ between two state dicts (all of them if keys differ)."""
    if a.keys() != b.keys():
        return sorted(set(a) ^ set(b))
    return [k for k in a if not torch.equal(a[k], b[k])]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- 1. patch sampling
@pytest.mark.parametrize("pos_fraction", [0.0, 0.25, 0.5, 1.0])
def test_patch_sampling_is_balanced_by_pos_fraction(pos_fraction: float) -> None:
    """With ``pos_fraction`` p, about a fraction p of the training patches is centred on tumour.

    A user who sets ``pos_fraction: 1`` sees tumour in every patch; with 0 on a case whose tumour
    is small, almost no patch shows any tumour; in between, the share of tumour-centred patches
    follows p. The synthetic case's image holds each voxel's flat index, so the centre voxel of a
    patch says where it was cut from.
    """
    from monai.transforms import Compose

    from napari_brats_kd.training.data import patch_transforms

    shape = (32, 32, 32)
    tumour = np.zeros(shape, bool)
    tumour[14:18, 14:18, 14:18] = True  # 64 of 32768 voxels
    case = {
        "image": np.arange(tumour.size, dtype=np.float32).reshape(1, *shape),
        "label": np.repeat(tumour[None], 3, axis=0).astype(np.uint8),
        "labelled": True,
        "case_id": "synthetic",
        "fg_indices": np.flatnonzero(tumour),
        "bg_indices": np.flatnonzero(~tumour),
    }
    n = 400
    sample = Compose(patch_transforms([8, 8, 8], n, pos_fraction, []))
    sample.set_random_state(seed=0)
    patches = sample(case)
    assert len(patches) == n
    centres = [int(np.asarray(p["image"])[0, 4, 4, 4]) for p in patches]
    centred_in_tumour = np.mean(tumour.ravel()[centres])
    with_tumour = np.mean([bool(np.asarray(p["label"]).any()) for p in patches])
    assert all(tuple(np.asarray(p["image"]).shape) == (1, 8, 8, 8) for p in patches)
    if pos_fraction == 1.0:
        assert centred_in_tumour == 1.0 and with_tumour == 1.0
    elif pos_fraction == 0.0:
        assert centred_in_tumour == 0.0
        assert with_tumour < 0.1  # a few background patches graze the 4-voxel tumour
    else:
        # Binomial: standard deviation <= 0.025 for 400 draws; 4 of them either side.
        assert abs(centred_in_tumour - pos_fraction) < 0.1


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


# --------------------------------------------------------------------------- 2. LR schedule
def _expected_lr(step: int, total: int, warmup: int, lr: float, floor: float, kind: str) -> float:
    """The documented schedule at 0-based ``step``, written out independently of the code."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / (total - warmup)
    decay = 0.5 * (1 + math.cos(math.pi * t)) if kind == "cosine" else (1 - t) ** 0.9
    return lr * (floor + (1 - floor) * decay)


@pytest.mark.slow
def test_lr_warms_up_linearly_then_decays_by_cosine_or_poly(
    data_dir, tmp_path, monkeypatch
) -> None:
    """The learning rate the optimizer uses rises linearly over the warm-up epochs to ``lr``,
    then decays (cosine or poly 0.9) to ``lr * min_lr_factor``, as log.csv's last row shows.

    Cosine and poly differ in shape: poly drops faster just after the peak and more slowly at the
    end. The rates are read from the optimizer at every step (what really updates the weights).
    """
    seen: list[float] = []
    real_step = engine.train_step

    def recording_step(model, optimizer, *args, **kwargs):
        seen.append(optimizer.param_groups[-1]["lr"])
        return real_step(model, optimizer, *args, **kwargs)

    monkeypatch.setattr(engine, "train_step", recording_step)
    lr, floor, warmup, total = 1e-3, 0.01, 3, 12  # 4 epochs x 3 steps, 1 warm-up epoch
    used: dict[str, list[float]] = {}
    for kind in ("cosine", "poly"):
        seen.clear()
        run = tmp_path / kind
        cfg = _cfg(
            data_dir, run, "epochs=4", "steps_per_epoch=3", "warmup_epochs=1", f"lr={lr}",
            f"min_lr_factor={floor}", f"schedule={kind}", "val_fraction=0", "samples_per_case=1",
            "augment=none",
        )  # fmt: skip
        train_teacher(cfg)
        used[kind] = list(seen)
        expected = [_expected_lr(s, total, warmup, lr, floor, kind) for s in range(total)]
        assert used[kind] == pytest.approx(expected, rel=1e-9)
        # Warm-up: equal increments from lr/3 up to lr, the peak.
        assert np.diff(used[kind][:warmup]) == pytest.approx([lr / warmup] * (warmup - 1))
        assert max(used[kind]) == pytest.approx(lr)
        # Then it only goes down, and after the last step it sits at lr * min_lr_factor.
        assert np.all(np.diff(used[kind][warmup:]) <= 0)
        rows = _log(run)
        assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
        assert float(rows[-1]["lr"]) == pytest.approx(lr * floor)
        assert float(rows[0]["lr"]) == pytest.approx(lr)  # after the warm-up epoch: the peak
    cos, poly = used["cosine"], used["poly"]
    assert cos[:warmup] == pytest.approx(poly[:warmup])
    assert poly[warmup + 1] < cos[warmup + 1] - 0.05 * lr  # poly falls faster at first
    assert poly[-1] > cos[-1] + 0.05 * lr  # and more slowly at the end


# ----------------------------------------------------------------- 3. validation, best checkpoint
@pytest.mark.slow
def test_validation_every_n_epochs_and_best_checkpoint_holds_best_epoch(
    data_dir, tmp_path, monkeypatch
) -> None:
    """With ``val_every=2`` over 4 epochs, validation runs after epochs 2 and 4 only (log.csv has
    Dice there and blanks elsewhere), and ``best.safetensors`` (and ``out``) hold the weights of the
    epoch with the highest mean validation Dice, not the last weights.

    Validation scores of an untrained tiny network are ties at 0, so the scores are set here
    (0.7 at epoch 2, 0.3 at epoch 4) while the real validation still runs; the weights each
    validation saw are recorded for comparison.
    """
    scores = iter([0.7, 0.3])
    validated: list[dict[str, torch.Tensor]] = []
    real_validate = engine.validate

    def scored_validate(model, *args, **kwargs):
        validated.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        real_validate(model, *args, **kwargs)
        s = next(scores)
        return {"TC": s, "WT": s, "ET": s, "mean": s}

    monkeypatch.setattr(engine, "validate", scored_validate)
    run = tmp_path / "run"
    out = tmp_path / "model.safetensors"
    cfg = _cfg(
        data_dir, run, "epochs=4", "val_every=2", "val_fraction=0.34", "samples_per_case=1",
        f"out={out}",
    )  # fmt: skip
    events: list[dict] = []
    result = train_teacher(cfg, on_event=events.append)

    assert [e["epoch"] for e in events if e["type"] == "val"] == [2, 4]
    rows = _log(run)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["val_mean_dice"] for r in rows[::2]] == ["", ""]
    assert [float(r["val_mean_dice"]) for r in rows[1::2]] == [0.7, 0.3]
    assert (result.best_epoch, result.best_metric) == (2, 0.7)

    best = run / "best.safetensors"
    assert result.best_checkpoint == best
    assert len(validated) == 2 and _differing(validated[0], validated[1])
    assert _differing(_weights(best), validated[0]) == []
    assert _differing(_weights(run / "last.safetensors"), validated[1]) == []
    loaded = load_checkpoint(best)
    assert loaded.config.metrics["epoch"] == 2 and loaded.config.metrics["val_mean_dice"] == 0.7
    assert loaded.extra["epoch"] == 2
    assert out.read_bytes() == best.read_bytes()


# --------------------------------------------------------------------------- 4. frozen teacher
@pytest.mark.slow
def test_teacher_stays_frozen_and_in_eval_mode_during_distillation(data_dir, tmp_path) -> None:
    """Distilling leaves the teacher's file byte-identical, and the teacher runs in eval mode:
    a teacher with dropout (p=0.5) yields exactly the same student as the same weights without
    dropout, so its targets are not noisy.

    The teacher runs online (on every patch), where dropout would show if it were in train mode.
    """
    torch.manual_seed(0)
    cfg_drop = teacher_config(**{**TINY, "dropout_prob": 0.5})
    net = build_model(cfg_drop)
    with_dropout = save_checkpoint(tmp_path / "teacher_dropout.safetensors", net, cfg_drop)
    cfg_plain = teacher_config(**TINY)
    without_dropout = save_checkpoint(tmp_path / "teacher_plain.safetensors", net, cfg_plain)
    digest, weights = _sha256(with_dropout), _weights(with_dropout)
    assert _differing(weights, _weights(without_dropout)) == []
    assert load_checkpoint(with_dropout).config.arch_args["dropout_prob"] == 0.5

    students = []
    for name, teacher in (("drop", with_dropout), ("plain", without_dropout)):
        cfg = load_config(
            "distill",
            [
                f"data_dir={data_dir}",
                f"run_dir={tmp_path / name}",
                f"teacher={teacher}",
                "model.arch=student-tiny",
                "teacher_targets=online",
                "alpha=0.0",  # the teacher's targets are the whole loss
                "val_fraction=0",
                *FAST,
                "steps_per_epoch=2",
                "augment=none",
            ],
        )
        result = distill(cfg)
        assert result.history[0]["kd"] > 0
        students.append(_weights(result.last_checkpoint))

    assert _sha256(with_dropout) == digest
    assert _differing(_weights(with_dropout), weights) == []
    assert _differing(students[0], students[1]) == []


# --------------------------------------------------------------------------- 5. determinism
@pytest.mark.slow
def test_same_seed_gives_identical_weights_other_seed_differs(data_dir, tmp_path) -> None:
    """Two CPU runs with the same seed (augmentation on) end with bit-identical weights and the
    same loss; another seed gives other weights.
    """

    def run(name: str, seed: int):
        cfg = _cfg(data_dir, tmp_path / name, f"seed={seed}", "steps_per_epoch=2", "val_fraction=0")
        result = train_teacher(cfg)
        return _weights(result.last_checkpoint), result.history[0]["loss"]

    (a, loss_a), (b, loss_b), (c, _) = run("a", 0), run("b", 0), run("c", 1)
    assert _differing(a, b) == [] and loss_a == loss_b
    assert _differing(a, c)


# --------------------------------------------------------------------------- 6. user's split file
@pytest.mark.slow
def test_users_split_file_decides_the_training_cases(
    data_dir, case_ids, tmp_path, monkeypatch
) -> None:
    """With ``split_file``, the run trains on exactly the listed training cases, validates on the
    listed validation cases, leaves the test cases alone, and records that split in split.json.
    """
    seen: set[str] = set()
    real_step = engine.train_step

    def recording_step(model, optimizer, loss_fn, batch, *args, **kwargs):
        seen.update(batch["case_id"])
        return real_step(model, optimizer, loss_fn, batch, *args, **kwargs)

    monkeypatch.setattr(engine, "train_step", recording_step)
    train, val, test = [case_ids[2]], [case_ids[0]], [case_ids[1]]
    split_file = tmp_path / "my_split.json"
    split_file.write_text(json.dumps({"train": train, "val": val, "test": test}))
    run = tmp_path / "run"
    cfg = _cfg(data_dir, run, f"split_file={split_file}", "steps_per_epoch=3", "val_fraction=0.5")
    events: list[dict] = []
    result = train_teacher(cfg, on_event=events.append)

    start = events[0]
    assert (start["n_train"], start["n_val"]) == (1, 1)
    assert seen == set(train)
    recorded = json.loads((run / "split.json").read_text())
    assert (recorded["train"], recorded["val"], recorded["test"]) == (train, val, test)
    assert [e["total"] for e in events if e["type"] == "val_progress"] == [1]
    assert load_checkpoint(result.last_checkpoint).config.provenance["n_train"] == 1


def test_split_file_naming_a_missing_case_is_refused(data_dir, case_ids, tmp_path) -> None:
    """A split file that names a case the data folder lacks stops the run with a TrainingError
    naming that case.
    """
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": [case_ids[0], "BraTS2021_P99999"], "val": []}))
    cfg = _cfg(data_dir, tmp_path / "run", f"split_file={split_file}")
    with pytest.raises(TrainingError, match="BraTS2021_P99999"):
        train_teacher(cfg)


def test_split_file_with_a_case_in_train_and_val_is_refused(data_dir, case_ids, tmp_path) -> None:
    """A split file that lists a case for both training and validation is refused with a
    TrainingError naming the case, rather than leaking training data into validation.
    """
    shared = case_ids[1]
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"train": [case_ids[0], shared], "val": [shared]}))
    cfg = _cfg(data_dir, tmp_path / "run", f"split_file={split_file}")
    with pytest.raises(TrainingError, match=rf"{shared}.*both 'train' and 'val'"):
        train_teacher(cfg, should_stop=lambda: True)  # if accepted: stop after one step
    split_file.write_text(json.dumps({"train": [case_ids[0], case_ids[0]]}))
    with pytest.raises(TrainingError, match=rf"{case_ids[0]}.*twice in 'train'"):
        train_teacher(cfg, should_stop=lambda: True)
