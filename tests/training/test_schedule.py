"""The time budget and the learning-rate schedule it paces, without a run (no data, no network)."""

from __future__ import annotations

import pytest
import torch

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
