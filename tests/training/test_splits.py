"""training/splits.py: a user's split file decides the training cases, and bad ones are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _training_runs import _cfg
from napari_brats_kd.errors import TrainingError
from napari_brats_kd.models import load_checkpoint
from napari_brats_kd.training import engine, train_teacher


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


# --------------------------------------------------------------------------- user's split file
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
