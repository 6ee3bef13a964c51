"""When and how fast the loop learns: the learning-rate factor, the time budget, mixed precision."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from . import distributed as dd
from .config import TrainConfig


def lr_lambda(
    step: int, total_steps: int, warmup_steps: int, schedule: str, min_factor: float
) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then cosine / poly decay / constant.

    Parameters
    ----------
    step
        Optimisation steps taken so far (0-based).
    total_steps
        Steps the schedule is planned for; later steps keep ``min_factor``.
    warmup_steps
        Steps of the linear warm-up (0: none).
    schedule
        ``"cosine"``, ``"poly"`` or ``"constant"``.
    min_factor
        The factor the decay ends at.

    Returns
    -------
    float
        The factor the base learning rate is multiplied by.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * t))
    else:  # poly, power 0.9 as in nnU-Net
        decay = (1.0 - t) ** 0.9
    return min_factor + (1.0 - min_factor) * decay


class TimeBudget:
    """The training seconds a run has spent, against its ``max_minutes``.

    The clock runs from the first step of this process (setting up, loading and caching do not
    count) and adds the seconds of the runs it resumes. Under DDP every rank takes rank 0's
    seconds: the ranks must agree on the learning rate and on when the budget ends the run.

    Parameters
    ----------
    max_minutes
        The budget (``None`` or 0: none; the seconds are still counted, so that a budget set
        on resume counts the time already spent).
    ctx
        The process group.
    clock
        Seconds from an arbitrary start (``time.perf_counter``).

    Attributes
    ----------
    seconds
        The budget in seconds, or ``None``.
    elapsed
        The training seconds as of the last :meth:`spent`.
    """

    def __init__(
        self,
        max_minutes: float | None,
        ctx: dd.DistContext,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.seconds = max_minutes * 60.0 if max_minutes else None
        self.elapsed = 0.0
        self._ctx = ctx
        self._clock = clock
        self._before = 0.0  # the seconds of the runs this one resumes
        self._start: float | None = None

    def resume(self, seconds: float) -> None:
        """Count ``seconds`` already spent by the run this one resumes."""
        self._before = self.elapsed = float(seconds)

    def start(self, now: float) -> None:
        """Start the clock at ``now`` (a reading of ``clock``), unless it runs already."""
        if self._start is None:
            self._start = now

    def spent(self) -> bool:
        """Update :attr:`elapsed`; whether the budget is spent (never without a budget)."""
        elapsed = self._before + self._clock() - self._start
        if self.seconds is None:
            self.elapsed = elapsed
            return False
        self.elapsed = dd.broadcast_float(elapsed, self._ctx)
        return self.elapsed >= self.seconds

    def schedule_step(self, step: int, total_steps: int) -> int:
        """The step the learning-rate schedule is at: whichever is further along, ``step`` or the
        share of the budget spent, so that the rate has decayed when the budget ends the run."""
        if self.seconds is None:
            return step
        return max(step, int(total_steps * min(1.0, self.elapsed / self.seconds)))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    steps_per_epoch: int,
    budget: TimeBudget,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step learning-rate scheduler: :func:`lr_lambda` over ``cfg.epochs`` epochs,
    paced by ``budget`` too."""
    total_steps = steps_per_epoch * cfg.epochs
    warmup = cfg.warmup_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda(
            budget.schedule_step(s, total_steps),
            total_steps,
            warmup,
            cfg.schedule,
            cfg.min_lr_factor,
        ),
    )


def amp_settings(cfg: TrainConfig, device: torch.device):
    """Autocast dtype and gradient scaler for ``cfg.amp`` on ``device``.

    Returns
    -------
    tuple
        ``(dtype, scaler)``: ``(None, None)`` for full precision (no ``amp`` or not CUDA),
        bfloat16 without a scaler where the GPU has it, else float16 with a scaler.
    """
    if not cfg.amp or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None  # bf16 needs no loss scaling
    # torch.amp.GradScaler("cuda") exists from torch 2.3 on; pyproject allows 2.1.
    if hasattr(torch.amp, "GradScaler"):
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.float16, torch.cuda.amp.GradScaler()


__all__ = ["TimeBudget", "amp_settings", "build_scheduler", "lr_lambda"]
