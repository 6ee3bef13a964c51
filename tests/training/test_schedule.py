"""The time budget and the learning-rate schedule it paces, without a run (no data, no network),
and the schedule a run's log.csv shows (tiny phantoms)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from _training_runs import _cfg, _log
from napari_brats_kd.training import engine, train_teacher
from napari_brats_kd.training.config import TrainConfig
from napari_brats_kd.training.distributed import DistContext
from napari_brats_kd.training.loop import ValStatus
from napari_brats_kd.training.schedule import TimeBudget, build_scheduler, lr_lambda


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_without_a_budget_the_seconds_are_counted_but_never_spent() -> None:
    clock = FakeClock()
    budget = TimeBudget(None, DistContext(), clock)
    budget.start(clock())
    clock.now += 1e6
    assert not budget.spent()
    assert budget.elapsed == pytest.approx(1e6)
    assert budget.schedule_step(3, 100) == 3  # the schedule runs on steps only


def test_the_budget_is_spent_at_max_minutes_and_paces_the_schedule() -> None:
    clock = FakeClock()
    budget = TimeBudget(2, DistContext(), clock)  # 120 s
    budget.start(clock())
    clock.now += 30.0
    assert not budget.spent()
    # A quarter of the time, so at least a quarter of the steps; further along steps win.
    assert budget.schedule_step(1, 100) == 25
    assert budget.schedule_step(60, 100) == 60
    clock.now += 90.0
    assert budget.spent()
    assert budget.schedule_step(1, 100) == 100


def test_the_clock_starts_once_and_counts_the_resumed_runs_seconds() -> None:
    clock = FakeClock()
    budget = TimeBudget(1, DistContext(), clock)  # 60 s
    budget.resume(50.0)
    assert budget.elapsed == 50.0
    budget.start(clock())
    clock.now += 5.0
    budget.start(clock())  # a later epoch: the clock keeps its first start
    assert not budget.spent() and budget.elapsed == pytest.approx(55.0)
    clock.now += 5.0
    assert budget.spent()


def test_the_scheduler_follows_lr_lambda_at_the_budgets_step() -> None:
    clock = FakeClock()
    cfg = TrainConfig(epochs=2, warmup_epochs=0, schedule="cosine", min_lr_factor=0.1, lr=1.0)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.lr)
    budget = TimeBudget(1, DistContext(), clock)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=5, budget=budget)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_lambda(0, 10, 0, "cosine", 0.1))
    budget.start(clock())
    clock.now += 30.0  # half the budget: the schedule jumps to step 5 of 10
    budget.spent()
    optimizer.step()  # as a training step does, before the scheduler's
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lr_lambda(5, 10, 0, "cosine", 0.1))


def test_validation_status_survives_the_broadcast_as_a_number() -> None:
    from napari_brats_kd.training import distributed as dd

    for status in ValStatus:
        sent = dd.broadcast_float(float(status), DistContext())
        assert ValStatus(int(sent)) is status


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Three labelled phantom cases at 4 mm (small volumes)."""
    from napari_brats_kd.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms") / "siteA"
    write_phantom_dataset(root, n=3, seed=10, spacing=4)
    return root


# --------------------------------------------------------------------------- LR schedule
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
