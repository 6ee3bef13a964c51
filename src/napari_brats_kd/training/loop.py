"""The epochs of a run: steps, validation, checkpoints, the log, stopping.

:class:`TrainingLoop` holds what the epochs share (the networks, the optimiser, the counters in
a :class:`~.run_folder.RunState`) and runs them; :mod:`.engine` builds it. The step and the
validation functions are given to it, not imported, so that whoever builds the loop decides
which to run (the engine passes its own, which tests replace).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from ..callbacks import Progress as ProgressFn
from ..callbacks import ShouldStop as StopFn
from ..errors import BratsKDError, Cancelled, ResourceError, TrainingError
from . import distributed as dd
from .config import TrainConfig
from .data import is_out_of_memory, user_error_in
from .loaders import Cases, TrainData, cycle, seed_everything, seed_transforms
from .losses import AttentionTransfer
from .run_folder import (
    BEST_CKPT,
    LAST_CKPT,
    LOG_FILE,
    STATE_FILE,
    RunState,
    TrainResult,
    copy_out,
    save_training_state,
    write_log,
)
from .schedule import TimeBudget

EventFn = Callable[[dict], None]


class ValStatus(enum.IntEnum):
    """How rank 0's validation of an epoch ended (broadcast to every rank as a number)."""

    DONE = 0
    STOPPED = 1  # should_stop during validation
    FAILED = 2  # an error on rank 0, re-raised once every rank knows


class _EpochStart(NamedTuple):
    """The counters an epoch began with: a save inside the epoch stores these (it is replayed)."""

    epoch: int
    step: int
    scheduler: dict | None


@dataclass
class Networks:
    """The networks of a run and how they compute.

    Attributes
    ----------
    model
        The network being trained (saved, validated).
    ddp_model
        ``model``, DDP-wrapped under ``torchrun`` (trained).
    model_cfg
        Its :class:`~napari_brats_kd.models.ModelConfig`.
    teacher
        The frozen teacher for online distillation (``None``: none, or cached outputs).
    attention, attention_weight
        Attention transfer and its weight in the loss (``None`` / 0: none).
    amp_dtype, scaler
        Mixed precision (:func:`~.schedule.amp_settings`).
    val_roi
        The validation window.
    """

    model: nn.Module
    ddp_model: nn.Module
    model_cfg: Any
    teacher: nn.Module | None
    attention: AttentionTransfer | None
    attention_weight: float
    amp_dtype: torch.dtype | None
    scaler: Any
    val_roi: list[int]


@dataclass
class TrainingLoop:
    """Train ``cfg.epochs`` epochs from ``state``, validating, saving and logging each.

    Attributes
    ----------
    cfg, ctx, run_dir
        Settings, process group and run folder.
    nets
        The networks.
    optimizer, scheduler, loss_fn
        The optimisation.
    cases, data
        The run's cases and its datasets and loader.
    budget
        The time budget (``max_minutes``).
    state
        Counters, best metric and log history; updated as the epochs go.
    provenance
        What the checkpoints record of how they were made.
    writer
        TensorBoard writer on rank 0, or ``None``.
    progress, should_stop, emit
        The caller's callbacks (``emit``: ``on_event`` on rank 0, else ``None``).
    step_fn, validate_fn
        :func:`~.steps.train_step` and :func:`~.steps.validate`, or stand-ins with their
        signatures.
    clock
        Seconds for the epoch times (the budget's clock).
    """

    cfg: TrainConfig
    ctx: dd.DistContext
    run_dir: Path
    nets: Networks
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    cases: Cases
    data: TrainData
    budget: TimeBudget
    state: RunState
    provenance: dict[str, Any]
    writer: Any
    progress: ProgressFn | None
    should_stop: StopFn | None
    emit: EventFn | None
    step_fn: Callable[..., dict[str, float]]
    validate_fn: Callable[..., dict[str, float]]
    clock: Callable[[], float] = time.perf_counter

    def __post_init__(self) -> None:
        self.last_metrics: dict | None = None
        self._epoch_start = _EpochStart(-1, 0, None)

    # -------------------------------------------------------------------------------- the run
    def run(self) -> TrainResult:
        """Train the remaining epochs; the run's result (also when stopped or out of time).

        Raises
        ------
        ResourceError
            Out of memory in a step or in validation.
        TrainingError
            Training diverged, or validation failed on rank 0.
        """
        cfg = self.cfg
        self._emit_start()
        for epoch in range(self.state.epoch, cfg.epochs):
            row, stopped, out_of_time = self.train_epoch(epoch)
            if stopped:
                return self.result(stopped=True)
            last_epoch = out_of_time or epoch + 1 == cfg.epochs
            improved = False
            if self.cases.val and ((epoch + 1) % cfg.val_every == 0 or last_epoch):
                status, improved = self.validate_epoch(epoch, row)
                if status is ValStatus.STOPPED:
                    return self.result(stopped=True)
                # A validation that spends the budget ends the run here, already validated,
                # rather than after one more step and a second validation.
                out_of_time = self.budget.spent() or out_of_time
            self.finish_epoch(epoch, row, improved)
            if out_of_time:
                return self.result(stopped=False, time_limit_reached=True)
        return self.result(stopped=False)

    def _emit_start(self) -> None:
        if self.emit is None:
            return
        # Before the first step (which may take long: caching, compiling) so UIs can say "Epoch x/y".
        self.emit({
            "type": "start",
            "epochs": self.cfg.epochs,
            "start_epoch": self.state.epoch,
            "steps_per_epoch": self.data.steps,
            "n_train": len(self.cases.train),
            "n_val": len(self.cases.val),
            "run_dir": str(self.run_dir),
            "kind": self.provenance["kind"],
        })  # fmt: skip

    # ----------------------------------------------------------------------------- training
    def train_epoch(self, epoch: int) -> tuple[dict[str, Any], bool, bool]:
        """Train the steps of ``epoch`` (0-based).

        Returns
        -------
        tuple
            ``(row, stopped, out_of_time)``: the epoch's log row (losses averaged over the
            steps and processes, rate, speed, time), whether ``should_stop`` ended it (a
            checkpoint is saved then, and the row is not complete) and whether the time budget
            is spent.
        """
        cfg, ctx, nets, state = self.cfg, self.ctx, self.nets, self.state
        steps = self.data.steps
        self._epoch_start = _EpochStart(epoch, state.global_step, self.scheduler.state_dict())
        epoch_seed = cfg.seed + 1000 * epoch + ctx.rank
        seed_everything(epoch_seed, cfg.deterministic)
        seed_transforms(self.data.train_ds, epoch_seed)
        if hasattr(self.data.sampler, "set_epoch"):
            self.data.sampler.set_epoch(epoch)
        nets.ddp_model.train()
        batches = cycle(self.data.loader, epoch)
        sums = {"loss": 0.0, "supervised": 0.0, "kd": 0.0}
        if nets.attention is not None:
            sums["attention"] = 0.0
        t0 = self.clock()
        self.budget.start(t0)
        steps_done = 0
        out_of_time = False
        for step in range(steps):
            parts = self._step(epoch, step, batches)
            steps_done += 1
            out_of_time = self.budget.spent()
            self.scheduler.step()
            state.global_step += 1
            for k in sums:
                sums[k] += parts.get(k, 0.0)
            self._report_step(epoch, step, parts)
            if dd.any_true(
                bool(self.should_stop()) if self.should_stop is not None else False, ctx
            ):
                # The interrupted epoch is redone on resume; the weights so far are kept.
                self.save(epoch, metrics=self.last_metrics)
                return {}, True, out_of_time
            if cfg.checkpoint_every and state.global_step % cfg.checkpoint_every == 0:
                self.save(epoch, metrics=self.last_metrics)
            if out_of_time:
                break  # the budget is spent: this epoch ends the run
        elapsed = self.clock() - t0
        patches = steps_done * cfg.batch_size * cfg.samples_per_case * ctx.world_size
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": state.global_step,
            **{k: dd.mean_over_processes(v / steps_done, ctx) for k, v in sums.items()},
            "lr": self.optimizer.param_groups[-1]["lr"],
            "patches_per_s": patches / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
        }
        if self.emit is not None:
            self.emit({"type": "epoch", **row})
        return row, False, out_of_time

    def _step(self, epoch: int, step: int, batches: Iterator[dict]) -> dict[str, float]:
        """One step on the next batch; running out of memory is a :class:`ResourceError`."""
        cfg, nets = self.cfg, self.nets
        try:
            return self.step_fn(
                nets.ddp_model, self.optimizer, self.loss_fn, next(batches), self.ctx.device,
                self.cases.channels, nets.teacher, self.cases.teacher_channels, nets.amp_dtype,
                nets.scaler, nets.attention, nets.attention_weight,
            )  # fmt: skip
        except BratsKDError:
            raise
        except (RuntimeError, MemoryError) as exc:
            user_error = user_error_in(exc)
            if user_error is not None:
                raise user_error from exc
            if not is_out_of_memory(exc):
                raise
            raise ResourceError(
                f"Out of memory at epoch {epoch + 1}, step {step + 1} with batch_size "
                f"{cfg.batch_size} x samples_per_case {cfg.samples_per_case} patches of "
                f"{list(cfg.patch_size)} on {self.ctx.device}: lower batch_size or patch_size. "
                f"The last finished epoch's checkpoint in {self.run_dir} is intact (resume from "
                "it)."
            ) from exc

    def _report_step(self, epoch: int, step: int, parts: dict[str, float]) -> None:
        """The step event, then the progress callback (rank 0).

        The event goes first so that a listener of both (the Train dock) shows this step's loss,
        taken from the event, on the status line the progress call updates.
        """
        cfg = self.cfg
        if self.emit is not None:
            lr = self.optimizer.param_groups[-1]["lr"]
            self.emit({
                "type": "step", "epoch": epoch + 1, "step": self.state.global_step, "lr": lr,
                **parts,
            })  # fmt: skip
        if self.progress is not None and self.ctx.is_main:
            self.progress(
                epoch * self.data.steps + step + 1,
                self.data.steps * cfg.epochs,
                f"epoch {epoch + 1}/{cfg.epochs} loss {parts['loss']:.4f}",
            )

    # --------------------------------------------------------------------------- validation
    def validate_epoch(self, epoch: int, row: dict[str, Any]) -> tuple[ValStatus, bool]:
        """Validate after ``epoch`` on rank 0; every rank learns how it ended.

        Adds the Dice scores to ``row`` and updates the best metric. A validation stopped or
        failed still counts the epoch as done (its row logged, a checkpoint saved), so that
        resuming goes on with the next epoch instead of training this one twice.

        Returns
        -------
        tuple
            ``(status, improved)``: :attr:`ValStatus.DONE` or :attr:`ValStatus.STOPPED`, and
            whether the mean Dice is the best so far.

        Raises
        ------
        ResourceError, Exception
            Validation failed on rank 0 (out of memory, or whatever it raised; on the other
            ranks a :class:`TrainingError`).
        """
        status, dice, error = ValStatus.DONE, None, None
        if self.ctx.is_main:
            status, dice, error = self._validate_on_main(epoch)
        # Only rank 0 validates (and polls should_stop meanwhile): all ranks stop together.
        status = ValStatus(int(dd.broadcast_float(float(status), self.ctx)))
        if status is not ValStatus.DONE:
            self.state.history.append(row)
            self.save(epoch + 1, metrics=self.last_metrics)
            if self.ctx.is_main:
                write_log(self.state.history, self.run_dir / LOG_FILE)
            if status is ValStatus.STOPPED:
                return status, False
            raise error or TrainingError(
                f"Validating epoch {epoch + 1} failed on rank 0; its log says why."
            )
        improved = False
        if dice is not None:
            improved = self._record_dice(epoch, row, dice)
        improved = bool(dd.broadcast_float(1.0 if improved else 0.0, self.ctx))
        self.nets.ddp_model.train()
        return status, improved

    def _validate_on_main(self, epoch: int):
        """Rank 0's validation: ``(status, dice or None, error or None)``."""
        cfg, nets = self.cfg, self.nets

        def val_case(done: int, total: int) -> None:
            if self.emit is not None:
                self.emit({"type": "val_progress", "epoch": epoch + 1, "done": done,
                           "total": total})  # fmt: skip

        try:
            dice = self.validate_fn(
                nets.model, self.data.val_ds, self.ctx.device, nets.val_roi, self.cases.channels,
                cfg.val_overlap, cfg.val_sw_batch_size, nets.amp_dtype, nets.model_cfg.regions,
                self.should_stop, val_case,
            )  # fmt: skip
        except Cancelled:
            return ValStatus.STOPPED, None, None
        except Exception as exc:  # re-raised by the caller, once every rank knows
            # Whatever went wrong, the other ranks wait in the broadcast: they must hear of it
            # rather than hang until the process group times out.
            error = user_error_in(exc) or exc
            if error is exc and is_out_of_memory(exc):
                error = ResourceError(
                    f"Out of memory validating epoch {epoch + 1} on {self.ctx.device} "
                    f"(sliding windows of {list(nets.val_roi)}, val_sw_batch_size "
                    f"{cfg.val_sw_batch_size}): lower val_sw_batch_size or val_roi_size, "
                    f"then resume from {self.run_dir}: it goes on with epoch {epoch + 2}."
                )
            if error is not exc:
                error.__cause__ = exc
            return ValStatus.FAILED, None, error
        return ValStatus.DONE, dice, None

    def _record_dice(self, epoch: int, row: dict[str, Any], dice: dict[str, float]) -> bool:
        """Put the Dice scores in ``row`` and the metrics; whether they are the best so far."""
        regions = self.nets.model_cfg.regions
        row.update({f"val_dice_{r}": dice[r] for r in regions})
        row["val_mean_dice"] = dice["mean"]
        self.last_metrics = {
            "val_dice": {r: dice[r] for r in regions},
            "val_mean_dice": dice["mean"],
            "val_cases": len(self.cases.val),
            "epoch": epoch + 1,
        }
        if self.emit is not None:
            self.emit({"type": "val", "epoch": epoch + 1, "dice": self.last_metrics["val_dice"],
                       "mean_dice": dice["mean"]})  # fmt: skip
        if dice["mean"] > self.state.best_metric:
            self.state.best_metric, self.state.best_epoch = dice["mean"], epoch + 1
            return True
        return False

    # ------------------------------------------------------------------------------ writing
    def finish_epoch(self, epoch: int, row: dict[str, Any], improved: bool) -> None:
        """Log the epoch, save the checkpoints (the best one too if ``improved``), wait for all."""
        ctx = self.ctx
        self.state.history.append(row)
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, float):
                    self.writer.add_scalar(k, v, epoch + 1)
        self.save(epoch + 1, metrics=self.last_metrics)
        if improved and ctx.is_main:
            from ..models import save_checkpoint

            model_cfg = self.nets.model_cfg
            best_cfg = replace(
                model_cfg,
                provenance={**model_cfg.provenance, **self.provenance, "epochs": epoch + 1},
                metrics=self.last_metrics or {},
            )
            save_checkpoint(
                self.run_dir / BEST_CKPT, self.nets.model, best_cfg, extra={"epoch": epoch + 1}
            )
        if ctx.is_main:
            write_log(self.state.history, self.run_dir / LOG_FILE)
        dd.barrier(ctx)

    def save(self, epoch_next: int, metrics: dict | None = None) -> None:
        """Checkpoint (rank 0): inference weights, then the training state.

        Parameters
        ----------
        epoch_next
            The epoch a resumed run starts with (0-based): the current one when saved inside
            it, the next one after it.
        metrics
            Validation metrics for the checkpoint (``None``: the model config's own).
        """
        if not self.ctx.is_main:
            return
        from ..models import save_checkpoint

        model_cfg = self.nets.model_cfg
        out_cfg = replace(
            model_cfg,
            provenance={**model_cfg.provenance, **self.provenance, "epochs": epoch_next},
            metrics=metrics if metrics is not None else dict(model_cfg.metrics),
        )
        # Saved inside an epoch (a stop, checkpoint_every, a stopped validation), the epoch is
        # replayed on resume: its step count and learning-rate schedule restart where it began,
        # so the run still takes the steps and the schedule it planned.
        mid_epoch = epoch_next == self._epoch_start.epoch
        step = self._epoch_start.step if mid_epoch else self.state.global_step
        sched = self._epoch_start.scheduler if mid_epoch else self.scheduler.state_dict()
        extra = {"epoch": epoch_next, "global_step": step}
        save_checkpoint(self.run_dir / LAST_CKPT, self.nets.model, out_cfg, extra=extra)
        save_training_state(
            self.run_dir / STATE_FILE, self.nets.model, self.optimizer, sched, epoch_next, step,
            self.state, self.budget.elapsed,
        )  # fmt: skip

    def result(self, stopped: bool, time_limit_reached: bool = False) -> TrainResult:
        """The run's :class:`TrainResult`; rank 0 copies the checkpoint to ``cfg.out`` unless
        stopped. Closes the TensorBoard writer."""
        run_dir = self.run_dir
        best = run_dir / BEST_CKPT
        out = None
        if self.ctx.is_main and self.cfg.out and not stopped:
            out = copy_out(best if best.is_file() else run_dir / LAST_CKPT, self.cfg.out)
        if self.writer is not None:
            self.writer.close()
        state = self.state
        return TrainResult(
            run_dir=run_dir,
            best_checkpoint=best if best.is_file() else None,
            last_checkpoint=run_dir / LAST_CKPT,
            out=out,
            epochs_done=len(state.history),
            best_metric=state.best_metric if state.best_epoch else float("nan"),
            best_epoch=state.best_epoch,
            stopped=stopped,
            time_limit_reached=time_limit_reached,
            history=state.history,
        )


__all__ = ["EventFn", "Networks", "ProgressFn", "StopFn", "TrainingLoop", "ValStatus"]
