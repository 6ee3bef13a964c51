"""training/loop.py and run_folder.py: stop and resume, the time budget, TensorBoard curves."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest
import torch

from _training_runs import _teacher_cfg
from napari_brats_kd.errors import TrainingError
from napari_brats_kd.models import load_checkpoint
from napari_brats_kd.training import resume_run, train_teacher

torch.set_num_threads(2)


@pytest.mark.slow
def test_stop_leaves_loadable_checkpoint_and_resume_continues(
    data_dir, tmp_path, monkeypatch
) -> None:
    from napari_brats_kd.training import engine

    used: list[float] = []  # the rate each step really runs at
    real_step = engine.train_step

    def recording_step(model, optimizer, *args):
        used.append(optimizer.param_groups[-1]["lr"])
        return real_step(model, optimizer, *args)

    monkeypatch.setattr(engine, "train_step", recording_step)
    run = tmp_path / "run"
    cfg = _teacher_cfg(data_dir, run, "epochs=2", "steps_per_epoch=2", "val_every=5")
    steps: list[int] = []
    lrs: dict[int, float] = {}

    def on_event(e: dict) -> None:
        if e["type"] == "step":
            steps.append(e["step"])
            lrs[e["step"]] = e["lr"]

    planned: dict[int, float] = {}
    train_teacher(
        replace(cfg, run_dir=str(tmp_path / "whole")),
        on_event=lambda e: planned.update({e["step"]: e["lr"]}) if e["type"] == "step" else None,
    )
    planned_used = list(used)
    used.clear()
    # Stop during the second epoch (after global step 3).
    result = train_teacher(cfg, should_stop=lambda: len(steps) >= 3, on_event=on_event)
    assert result.stopped and result.epochs_done == 1
    assert load_checkpoint(result.last_checkpoint).model is not None
    state = torch.load(run / "last_state.pt", weights_only=True)
    # The training time so far is kept, so that a time budget set on resume counts it.
    assert state["epoch"] == 1 and state["train_seconds"] > 0
    steps.clear()
    used.clear()
    starts: list[dict] = []
    resumed = resume_run(
        run, on_event=lambda e: starts.append(e) if e["type"] == "start" else on_event(e)
    )
    assert [(e["start_epoch"], e["epochs"]) for e in starts] == [(1, 2)]
    assert not resumed.stopped and resumed.epochs_done == 2
    # The interrupted epoch is redone from its start, step count and learning rates included:
    # the run takes the 4 steps and the schedule it planned.
    assert steps == [3, 4]
    assert lrs == pytest.approx(planned)
    assert used == pytest.approx(planned_used[2:])  # the replayed steps run at the planned rates
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert len(rows) == 2


@pytest.mark.slow
def test_run_writes_tensorboard_curves_matching_its_log(data_dir, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train_teacher(_teacher_cfg(data_dir, run, "epochs=2", "val_every=1"))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = list(csv.DictReader((run / "log.csv").open()))
    for tag in ("loss", "lr", "val_mean_dice", "val_dice_WT"):
        curve = events.Scalars(tag)
        assert [e.step for e in curve] == [1, 2]
        assert [e.value for e in curve] == pytest.approx([float(r[tag]) for r in rows], rel=1e-5)


@pytest.mark.slow
def test_resume_with_more_epochs_stretches_the_lr_schedule(data_dir, tmp_path) -> None:
    from napari_brats_kd.training.engine import lr_lambda

    def record(into: dict[int, float]):
        return lambda e: into.update({e["step"]: e["lr"]}) if e["type"] == "step" else None

    run = tmp_path / "run"
    cfg = _teacher_cfg(data_dir, run, "epochs=2", "steps_per_epoch=2", "val_every=5")
    first: dict[int, float] = {}
    more: dict[int, float] = {}
    train_teacher(cfg, on_event=record(first))
    resume_run(run, ["epochs=4"], on_event=record(more))
    # What resume_run documents: the remaining steps follow the 8-step schedule from step 5 on,
    # so the learning rate climbs back up from where the finished 4-step schedule left it.
    schedule = (cfg.schedule, cfg.min_lr_factor)
    assert more == pytest.approx({g: cfg.lr * lr_lambda(g, 8, 0, *schedule) for g in range(5, 9)})
    assert more[5] > first[4]


@pytest.mark.slow
def test_time_budget_ends_the_run_validated_with_the_lr_decayed(data_dir, tmp_path) -> None:
    out = tmp_path / "timed.safetensors"
    cfg = _teacher_cfg(
        data_dir, tmp_path / "run", "epochs=50", "steps_per_epoch=3", "val_every=10",
        "max_minutes=1e-5", f"out={out}",
    )  # fmt: skip
    events: list[dict] = []
    result = train_teacher(cfg, on_event=events.append)
    steps = [e for e in events if e["type"] == "step"]
    # The first step spends the budget: the run ends there as if at its last epoch.
    assert result.time_limit_reached and not result.stopped
    assert len(steps) == 1 and result.epochs_done == 1
    assert [e["epoch"] for e in events if e["type"] == "val"] == [1]
    assert result.out == out and load_checkpoint(out).config.provenance["epochs"] == 1
    # The schedule was paced by time: it ended with the budget, not after 150 steps.
    assert steps[0]["lr"] == pytest.approx(cfg.lr * cfg.min_lr_factor)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert len(rows) == 1 and float(rows[0]["patches_per_s"]) > 0


@pytest.mark.slow
def test_validation_that_spends_the_budget_ends_the_run(data_dir, tmp_path, monkeypatch) -> None:
    import time
    from types import SimpleNamespace

    from napari_brats_kd.training import engine

    # A clock that stands still except during validation, which takes "10 minutes".
    now = [0.0]
    real_validate = engine.validate

    def slow_validate(*args, **kwargs):
        now[0] += 600.0
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: now[0],
                                                        strftime=time.strftime))  # fmt: skip
    monkeypatch.setattr(engine, "validate", slow_validate)
    cfg = _teacher_cfg(
        data_dir, tmp_path / "run", "epochs=5", "steps_per_epoch=2", "val_every=1", "max_minutes=5"
    )
    events: list[dict] = []
    result = train_teacher(cfg, on_event=events.append)
    # The first epoch's validation spent the budget: no further step, no second validation.
    assert result.time_limit_reached and result.epochs_done == 1
    assert [e["type"] for e in events].count("step") == 2
    assert [e["epoch"] for e in events if e["type"] == "val"] == [1]


@pytest.mark.slow
def test_generous_time_budget_changes_nothing(data_dir, tmp_path) -> None:
    from napari_brats_kd.training.engine import lr_lambda

    cfg = _teacher_cfg(
        data_dir, tmp_path / "run", "epochs=2", "steps_per_epoch=2", "val_every=5",
        "max_minutes=60",
    )  # fmt: skip
    lrs: dict[int, float] = {}
    result = train_teacher(
        cfg, on_event=lambda e: lrs.update({e["step"]: e["lr"]}) if e["type"] == "step" else None
    )
    assert not result.time_limit_reached and result.epochs_done == 2
    schedule = (cfg.schedule, cfg.min_lr_factor)
    assert lrs == pytest.approx({g: cfg.lr * lr_lambda(g, 4, 0, *schedule) for g in range(1, 5)})


@pytest.mark.slow
def test_stop_during_validation_skips_the_rest_and_keeps_a_checkpoint(data_dir, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = _teacher_cfg(data_dir, run, "val_fraction=0.67")  # 1 training case, 2 validation cases
    events: list[dict] = []
    # Stop once the first validation case is done: the second is never validated.
    stop = lambda: any(e["type"] == "val_progress" for e in events)  # noqa: E731
    result = train_teacher(cfg, should_stop=stop, on_event=events.append)
    types = [e["type"] for e in events]
    assert events[0]["type"] == "start" and events[0]["n_val"] == 2
    assert [(e["done"], e["total"]) for e in events if e["type"] == "val_progress"] == [(1, 2)]
    assert "val" not in types
    assert result.stopped and result.best_checkpoint is None
    assert load_checkpoint(result.last_checkpoint).model is not None
    # The epoch's steps were all done: it counts as finished (without its validation), so that
    # resuming goes on with the next epoch instead of training this one twice.
    assert result.epochs_done == 1
    assert torch.load(run / "last_state.pt", weights_only=True)["epoch"] == 1
    steps: list[int] = []
    resumed = resume_run(
        run,
        ["epochs=2"],
        on_event=lambda e: steps.append(e["step"]) if e["type"] == "step" else None,
    )
    assert steps == [2] and resumed.epochs_done == 2 and not resumed.stopped
    assert [r["epoch"] for r in resumed.history] == [1, 2]


@pytest.mark.slow
def test_a_resume_refused_for_a_bad_setting_leaves_the_run_config_as_it_was(
    data_dir, tmp_path
) -> None:
    run = tmp_path / "run"
    train_teacher(_teacher_cfg(data_dir, run, "val_every=5"))
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(TrainingError, match="patch_size"):
        resume_run(run, ["patch_size=[20,16,16]"])
    assert (run / "config.yaml").read_bytes() == before
    assert resume_run(run, ["epochs=2"]).epochs_done == 2
