"""What a user of a whole training run notices: validation and the best checkpoint, a frozen
teacher, reproducibility (tiny phantoms, CPU). Patch balance is in test_data.py, the LR schedule
in test_schedule.py, the split file in test_splits.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from _training_runs import _cfg, _log
from _training_settings import FAST, TINY
from napari_brats_kd.models import build_model, load_checkpoint, save_checkpoint, teacher_config
from napari_brats_kd.training import distill, engine, load_config, train_teacher


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Three labelled phantom cases at 4 mm (small volumes)."""
    from napari_brats_kd.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms") / "siteA"
    write_phantom_dataset(root, n=3, seed=10, spacing=4)
    return root


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


# ----------------------------------------------------------------- validation, best checkpoint
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


# --------------------------------------------------------------------------- frozen teacher
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


# --------------------------------------------------------------------------- determinism
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
