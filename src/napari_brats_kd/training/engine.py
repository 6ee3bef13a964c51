"""The training loop shared by teacher training, fine-tuning and knowledge distillation.

One readable loop over MONAI parts (CacheDataset, RandCropByPosNegLabeld, DiceLoss,
sliding_window_inference). What it guarantees:

- **Run folder** ``run_dir/``: ``config.yaml`` (the full settings), ``split.json``, ``log.csv`` (one
  row per epoch; TensorBoard events too when ``tensorboard`` is installed), ``last.safetensors`` and
  ``best.safetensors`` (inference checkpoints, :func:`napari_brats_kd.models.load_checkpoint`), and
  ``last_state.pt`` (optimizer, scheduler, epoch, RNG state and log history: plain tensors
  and dicts, loadable with ``torch.load(..., weights_only=True)``).
- **Atomic checkpoints** after every epoch (temporary file + ``os.replace``): a crash or a stop
  loses at most one epoch and never leaves a half-written file.
- **Stop**: ``should_stop()`` is polled after every step and between validation cases; when it
  returns True the step (or case) finishes, the rest of validation is skipped, a checkpoint is
  written and the function returns a :class:`TrainResult` with ``stopped=True``. Resuming
  (``resume=True`` or :func:`resume_run`) replays an epoch stopped during its steps from its
  start, with the step count and learning rates it began with (the weights trained so far are
  kept); an epoch stopped during its validation counts as done, and the run goes on with the
  next one.
- **Time budget**: ``max_minutes`` ends the run (normally: last validation, checkpoints) when the
  time is spent, with the learning-rate schedule paced to end there too.
- **Callbacks**: ``progress(done, total, message)`` per step, and ``on_event(event)`` with
  ``{"type": "start", "epochs", "start_epoch", "steps_per_epoch", "n_train", "n_val", "run_dir",
  "kind"}`` once before the first step (``start_epoch`` is 0-based: the epochs already done),
  ``{"type": "step", "epoch", "step", "loss", "lr"}`` (``lr``: the rate the schedule set after
  the step, which the next step uses; ``log.csv``'s ``lr`` likewise), ``{"type": "epoch", "epoch",
  "loss", ...}``,
  ``{"type": "val_progress", "epoch", "done", "total"}`` after each validation case and
  ``{"type": "val", "epoch", "dice": {region: value}, "mean_dice"}`` for live plots.
- **Determinism**: Python, numpy, torch and MONAI transforms are seeded from ``seed`` per epoch
  (and rank); ``deterministic: true`` also asks PyTorch for deterministic kernels.
- **Teacher outputs** (distillation): computed on every patch, or once per case and cached on
  disk (``teacher_targets``; see :mod:`.teacher_targets`).
- **Distributed**: under ``torchrun`` the same functions train with DDP (see
  :mod:`.distributed`); rank 0 validates, logs and writes.

The parts, by concern: :mod:`.model_setup` (the networks), :mod:`.loaders` (cases, split, caches,
loaders), :mod:`.steps` (a step, validation), :mod:`.schedule` (learning rate, time budget,
mixed precision) and :mod:`.run_folder` (files and saved state). This module builds a run
from them, runs its epochs and keeps the public API.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._files import atomic_write
from ..errors import BratsKDError, Cancelled, ResourceError, TrainingError
from . import distributed as dd
from .config import DistillConfig, TrainConfig, load_config
from .data import is_out_of_memory, user_error_in
from .loaders import (
    build_data,
    cache_teacher_outputs,
    check_memory_cache,
    cycle,
    find_cases,
    seed_everything,
    seed_transforms,
)
from .loaders import cycle as _cycle  # noqa: F401 (re-exported: tests import it from here)
from .losses import AttentionTransfer, DistillationLoss, SupervisedLoss
from .model_setup import check_networks, load_model, load_teacher, param_groups
from .model_setup import param_groups as _param_groups  # noqa: F401 (re-exported, as _cycle)
from .run_folder import (
    BEST_CKPT,
    LAST_CKPT,
    LOG_FILE,
    STATE_FILE,
    atomic_torch_save,
    load_resume_state,
    open_run_dir,
    rng_state,
    set_rng_state,
    write_config,
    write_log,
)
from .run_folder import provenance as make_provenance
from .schedule import amp_settings, lr_lambda
from .steps import train_step, validate, weights_are_finite
from .teacher_targets import resolve_target_mode

ProgressFn = Callable[[int, int, str], None]
StopFn = Callable[[], bool]
EventFn = Callable[[dict], None]


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    run_dir
        The run folder.
    best_checkpoint
        ``best.safetensors`` (highest mean validation Dice) or ``None`` if never validated.
    last_checkpoint
        ``last.safetensors`` (the weights at the end or at the stop).
    out
        Copy of the best (else last) checkpoint at the requested output path, if any.
    epochs_done
        Completed epochs.
    best_metric, best_epoch
        Best mean validation Dice and its (1-based) epoch; NaN / 0 without validation.
    stopped
        Whether ``should_stop`` ended the run early.
    time_limit_reached
        Whether the run ended because its ``max_minutes`` budget was spent (a normal end: last
        validation done, ``out`` written).
    history
        One dict per completed epoch (the rows of ``log.csv``).
    """

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    out: Path | None = None
    epochs_done: int = 0
    best_metric: float = float("nan")
    best_epoch: int = 0
    stopped: bool = False
    time_limit_reached: bool = False
    history: list[dict] = field(default_factory=list)


def _run(
    cfg: TrainConfig,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    on_event: EventFn | None,
    resume: bool,
) -> TrainResult:
    cfg.validate()
    ctx = dd.init_distributed(cfg.device)
    try:
        result = _run_in_context(cfg, ctx, progress, should_stop, on_event, resume)
        # Every rank leaves together (rank 0 still writes `out` after the last epoch): a rank
        # that destroys the group while a peer still works in it can abort.
        dd.barrier(ctx)
        return result
    finally:
        dd.cleanup(ctx)


def _run_in_context(
    cfg: TrainConfig,
    ctx: dd.DistContext,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
    on_event: EventFn | None,
    resume: bool,
) -> TrainResult:
    """Build the run in the process group ``ctx`` (checks first, then data, then the optimiser)
    and train it."""
    device = ctx.device
    distill = isinstance(cfg, DistillConfig)
    seed_everything(cfg.seed + ctx.rank, cfg.deterministic)
    run_dir = open_run_dir(cfg, ctx, resume)
    emit = on_event if (on_event is not None and ctx.is_main) else None

    loaded_teacher, teacher = load_teacher(cfg, device) if distill else (None, None)
    teacher_cfg = loaded_teacher.config if loaded_teacher is not None else None
    model, model_cfg = load_model(cfg, teacher_cfg)
    val_roi = check_networks(cfg, model_cfg, teacher_cfg)

    cases = find_cases(cfg, ctx, run_dir, resume, model_cfg, teacher_cfg)
    loader_kw = {
        "regions": model_cfg.regions,
        "normalization": model_cfg.normalization,
        "expected_convention": cases.convention,
    }
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "cache"
    attention_weight = cfg.attention_weight if distill else 0.0
    targets_mode = (
        resolve_target_mode(cfg.teacher_targets, device, attention_weight > 0)
        if distill
        else "none"
    )
    check_memory_cache(cfg, ctx, cases, len(model_cfg.regions), targets_mode == "cached")
    targets = None
    if targets_mode == "cached":
        # The teacher runs once per training case here instead of on every patch.
        targets = cache_teacher_outputs(
            cfg, ctx, cases, loaded_teacher, teacher, loader_kw, cache_dir, emit, should_stop
        )
        teacher = None  # not needed any more: free its memory
    data = build_data(cfg, ctx, cases, loader_kw, cache_dir, targets)
    total_steps = data.steps * cfg.epochs
    patches_per_step = cfg.batch_size * cfg.samples_per_case

    # ---------------------------------------------------------------- optimisation
    pretrained = cfg.init_from is not None
    state_path = run_dir / STATE_FILE
    model = model.to(device)
    attention = AttentionTransfer(model, teacher) if attention_weight > 0 else None
    groups = param_groups(model, cfg, model_cfg.arch, pretrained)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_epochs * data.steps
    # Under max_minutes the schedule runs on whichever is further along, steps or time, so that
    # the learning rate has decayed when the budget ends the run. `clock` holds rank 0's training
    # seconds (broadcast each step: DDP ranks must agree on the learning rate).
    budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes else None
    clock = {"before": 0.0, "start": None, "elapsed": 0.0}

    def schedule_step(s: int) -> int:
        if budget_s is None:
            return s
        return max(s, int(total_steps * min(1.0, clock["elapsed"] / budget_s)))

    def budget_spent() -> bool:
        """Update the clock (kept in the state even without a budget, so that one set on resume
        counts the time already spent); whether the time budget is spent."""
        elapsed = clock["before"] + time.perf_counter() - clock["start"]
        if budget_s is None:
            clock["elapsed"] = elapsed
            return False
        clock["elapsed"] = dd.broadcast_float(elapsed, ctx)
        return clock["elapsed"] >= budget_s

    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda(schedule_step(s), total_steps, warmup, cfg.schedule, cfg.min_lr_factor),
    )
    supervised = SupervisedLoss(cfg.dice_weight, cfg.bce_weight)
    loss_fn: nn.Module = (
        DistillationLoss(
            cfg.alpha, cfg.temperature, supervised, cfg.kd_dice_weight, cfg.kd_label_correction
        )
        if distill
        else supervised
    )
    amp_dtype, scaler = amp_settings(cfg, device)

    start_epoch, global_step = 0, 0
    best_metric, best_epoch = float("-inf"), 0
    history: list[dict] = []
    if resume:
        state = load_resume_state(state_path, model, optimizer, scheduler)
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        best_metric, best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        history = list(state["history"])
        clock["before"] = clock["elapsed"] = float(state.get("train_seconds", 0.0))
        set_rng_state(state["rng"])
    ddp_model = dd.wrap_model(model, ctx)

    counts = (len(cases.train), len(cases.val), len(cases.unlabeled))
    provenance = make_provenance(cfg, ctx, counts, teacher_cfg, targets_mode, attention_weight)
    writer = write_config(cfg, run_dir) if ctx.is_main else None

    epoch_start: dict[str, Any] = {"epoch": -1, "step": 0, "scheduler": None}

    def save(epoch_next: int, metrics: dict | None = None) -> None:
        """Checkpoint (rank 0): inference weights, then the training state."""
        if not ctx.is_main:
            return
        from ..models import save_checkpoint

        out_cfg = replace(
            model_cfg,
            provenance={**model_cfg.provenance, **provenance, "epochs": epoch_next},
            metrics=metrics if metrics is not None else dict(model_cfg.metrics),
        )
        # Saved inside an epoch (a stop, checkpoint_every, a stopped validation), the epoch is
        # replayed on resume: its step count and learning-rate schedule restart where it began,
        # so the run still takes the steps and the schedule it planned.
        mid_epoch = epoch_next == epoch_start["epoch"]
        step = epoch_start["step"] if mid_epoch else global_step
        sched = epoch_start["scheduler"] if mid_epoch else scheduler.state_dict()
        extra = {"epoch": epoch_next, "global_step": step}
        save_checkpoint(run_dir / LAST_CKPT, model, out_cfg, extra=extra)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": sched,
            "epoch": epoch_next,
            "global_step": step,
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            "history": history,
            "train_seconds": clock["elapsed"],
            "rng": rng_state(),
        }
        atomic_torch_save(state, state_path)

    def result(stopped: bool, time_limit_reached: bool = False) -> TrainResult:
        best = run_dir / BEST_CKPT
        out = None
        if ctx.is_main and cfg.out and not stopped:
            src = best if best.is_file() else run_dir / LAST_CKPT
            out = atomic_write(cfg.out, lambda tmp: shutil.copyfile(src, tmp))
            side = src.with_suffix(".json")
            if side.is_file():
                shutil.copyfile(side, out.with_suffix(".json"))
        if writer is not None:
            writer.close()
        return TrainResult(
            run_dir=run_dir,
            best_checkpoint=best if best.is_file() else None,
            last_checkpoint=run_dir / LAST_CKPT,
            out=out,
            epochs_done=len(history),
            best_metric=best_metric if best_epoch else float("nan"),
            best_epoch=best_epoch,
            stopped=stopped,
            time_limit_reached=time_limit_reached,
            history=history,
        )

    # ---------------------------------------------------------------- the loop
    last_metrics: dict | None = None
    if emit is not None:
        # Before the first step (which may take long: caching, compiling) so UIs can say "Epoch x/y".
        emit({
            "type": "start",
            "epochs": cfg.epochs,
            "start_epoch": start_epoch,
            "steps_per_epoch": data.steps,
            "n_train": len(cases.train),
            "n_val": len(cases.val),
            "run_dir": str(run_dir),
            "kind": provenance["kind"],
        })  # fmt: skip
    out_of_time = False
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start.update(epoch=epoch, step=global_step, scheduler=scheduler.state_dict())
        epoch_seed = cfg.seed + 1000 * epoch + ctx.rank
        seed_everything(epoch_seed, cfg.deterministic)
        seed_transforms(data.train_ds, epoch_seed)
        if hasattr(data.sampler, "set_epoch"):
            data.sampler.set_epoch(epoch)
        ddp_model.train()
        batches = cycle(data.loader, epoch)
        sums = {"loss": 0.0, "supervised": 0.0, "kd": 0.0}
        if attention is not None:
            sums["attention"] = 0.0
        t0 = time.perf_counter()
        if clock["start"] is None:
            clock["start"] = t0
        steps_done = 0
        for step in range(data.steps):
            try:
                batch = next(batches)
                parts = train_step(
                    ddp_model, optimizer, loss_fn, batch, device, cases.channels,
                    teacher, cases.teacher_channels, amp_dtype, scaler, attention, attention_weight,
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
                    f"{list(cfg.patch_size)} on {device}: lower batch_size or patch_size. The last "
                    f"finished epoch's checkpoint in {run_dir} is intact (resume from it)."
                ) from exc
            steps_done += 1
            out_of_time = budget_spent()
            scheduler.step()
            global_step += 1
            for k in sums:
                sums[k] += parts.get(k, 0.0)
            lr = optimizer.param_groups[-1]["lr"]
            if progress is not None and ctx.is_main:
                progress(
                    epoch * data.steps + step + 1,
                    total_steps,
                    f"epoch {epoch + 1}/{cfg.epochs} loss {parts['loss']:.4f}",
                )
            if emit is not None:
                emit({"type": "step", "epoch": epoch + 1, "step": global_step, "lr": lr, **parts})
            stop = dd.any_true(bool(should_stop()) if should_stop is not None else False, ctx)
            if stop:
                # The interrupted epoch is redone on resume; the weights so far are kept.
                save(epoch, metrics=last_metrics)
                return result(stopped=True)
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                save(epoch, metrics=last_metrics)
            if out_of_time:
                break  # the budget is spent: this epoch ends the run
        elapsed = time.perf_counter() - t0
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": global_step,
            **{k: dd.mean_over_processes(v / steps_done, ctx) for k, v in sums.items()},
            "lr": optimizer.param_groups[-1]["lr"],
            "patches_per_s": steps_done * patches_per_step * ctx.world_size / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
        }
        if emit is not None:
            emit({"type": "epoch", **row})
        last_epoch = out_of_time or epoch + 1 == cfg.epochs
        do_val = cases.val and ((epoch + 1) % cfg.val_every == 0 or last_epoch)
        improved = 0.0
        if do_val:
            # 0: validated; 1: stopped by the user; 2: failed (val_error) on rank 0.
            val_status = 0.0
            val_error: BaseException | None = None
            dice: dict[str, float] | None = None
            if ctx.is_main:

                def val_case(done: int, total: int, epoch: int = epoch + 1) -> None:
                    if emit is not None:
                        emit({"type": "val_progress", "epoch": epoch, "done": done, "total": total})

                try:
                    dice = validate(
                        model, data.val_ds, device, val_roi, cases.channels, cfg.val_overlap,
                        cfg.val_sw_batch_size, amp_dtype, model_cfg.regions,
                        should_stop, val_case,
                    )  # fmt: skip
                except Cancelled:
                    val_status = 1.0
                except Exception as exc:  # re-raised below, once every rank knows
                    # Whatever went wrong, the other ranks wait in the broadcast below: they
                    # must hear of it rather than hang until the process group times out.
                    val_status = 2.0
                    val_error = user_error_in(exc) or exc
                    if val_error is exc and is_out_of_memory(exc):
                        val_error = ResourceError(
                            f"Out of memory validating epoch {epoch + 1} on {device} "
                            f"(sliding windows of {list(val_roi)}, val_sw_batch_size "
                            f"{cfg.val_sw_batch_size}): lower val_sw_batch_size or val_roi_size, "
                            f"then resume from {run_dir}: it goes on with epoch {epoch + 2}."
                        )
                    if val_error is not exc:
                        val_error.__cause__ = exc
            # Only rank 0 validates (and polls should_stop meanwhile): all ranks stop together.
            val_status = dd.broadcast_float(val_status, ctx)
            if val_status:
                # The epoch's steps are all done: it counts as finished without its validation,
                # so that resuming goes on with the next epoch instead of training this one twice.
                history.append(row)
                save(epoch + 1, metrics=last_metrics)
                if ctx.is_main:
                    write_log(history, run_dir / LOG_FILE)
                if val_status == 1.0:
                    return result(stopped=True)
                raise val_error or TrainingError(
                    f"Validating epoch {epoch + 1} failed on rank 0; its log says why."
                )
            if dice is not None:
                row.update({f"val_dice_{r}": dice[r] for r in model_cfg.regions})
                row["val_mean_dice"] = dice["mean"]
                last_metrics = {
                    "val_dice": {r: dice[r] for r in model_cfg.regions},
                    "val_mean_dice": dice["mean"],
                    "val_cases": len(cases.val),
                    "epoch": epoch + 1,
                }
                if emit is not None:
                    emit({"type": "val", "epoch": epoch + 1, "dice": last_metrics["val_dice"],
                          "mean_dice": dice["mean"]})  # fmt: skip
                if dice["mean"] > best_metric:
                    best_metric, best_epoch = dice["mean"], epoch + 1
                    improved = 1.0
            improved = dd.broadcast_float(improved, ctx)
            ddp_model.train()
            # A validation that spends the budget ends the run here, already validated, rather
            # than after one more step and a second validation.
            out_of_time = budget_spent() or out_of_time
        history.append(row)
        if writer is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, float):
                    writer.add_scalar(k, v, epoch + 1)
        save(epoch + 1, metrics=last_metrics)
        if improved and ctx.is_main:
            from ..models import save_checkpoint

            best_cfg = replace(
                model_cfg,
                provenance={**model_cfg.provenance, **provenance, "epochs": epoch + 1},
                metrics=last_metrics or {},
            )
            save_checkpoint(run_dir / BEST_CKPT, model, best_cfg, extra={"epoch": epoch + 1})
        if ctx.is_main:
            write_log(history, run_dir / LOG_FILE)
        dd.barrier(ctx)
        if out_of_time:
            return result(stopped=False, time_limit_reached=True)
    return result(stopped=False)


# ------------------------------------------------------------------------------------ the API
def train_teacher(
    config: TrainConfig,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_event: EventFn | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a segmentation network (a teacher, or any model) with Dice + BCE on regions.

    Parameters
    ----------
    config
        Settings (:class:`~napari_brats_kd.training.config.TrainConfig`); with ``init_from`` this
        is transfer learning (see :func:`fine_tune`).
    progress
        ``progress(done_steps, total_steps, message)``.
    should_stop
        Polled after every step and between validation cases; True finishes the step (or case),
        skips the rest of validation, saves a checkpoint and returns.
    on_event
        Receives start / step / epoch / val_progress / val event dicts (see the module docstring).
    resume
        Continue the run in ``config.run_dir`` from its ``last_state.pt``.

    Returns
    -------
    TrainResult

    Raises
    ------
    TrainingError
        Bad data (empty folder, unlabelled cases, mixed label conventions, missing modalities) or
        settings (patch size not fitting the network, unknown architecture, ...).
    ResourceError
        Out of memory; the last epoch's checkpoint survives.
    """
    if isinstance(config, DistillConfig):
        raise TrainingError("train_teacher got a DistillConfig: call distill() instead.")
    return _run(config, progress, should_stop, on_event, resume)


def distill(
    config: DistillConfig,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_event: EventFn | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a student from a frozen teacher (knowledge distillation).

    The loss is ``alpha * (Dice + BCE)(student, labels) + (1 - alpha) * T^2 * binary KL(teacher ||
    student)`` at temperature ``T`` (see :mod:`.losses`). The teacher sees its own modalities and
    the student its own (possibly fewer: cross-modal distillation) from the same augmented patch.
    Cases from ``unlabeled_dir`` (e.g. another hospital) add the teacher term only.

    Parameters are as for :func:`train_teacher`; ``config`` is a
    :class:`~napari_brats_kd.training.config.DistillConfig`.

    Raises
    ------
    TrainingError
        Also when the teacher cannot be loaded, needs modalities the data lacks, or predicts
        other regions than the student.
    """
    if not isinstance(config, DistillConfig):
        raise TrainingError("distill needs a DistillConfig (with a teacher).")
    if not config.teacher:
        raise TrainingError(
            "Distillation needs a teacher: set 'teacher' (a checkpoint, model name or MONAI "
            "bundle folder; --teacher on the command line)."
        )
    return _run(config, progress, should_stop, on_event, resume)


def fine_tune(
    checkpoint: str | Path,
    data_dir: str | Path,
    overrides: Sequence[str] | dict[str, Any] = (),
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_event: EventFn | None = None,
) -> TrainResult:
    """Transfer learning: adapt a trained network to a few labelled cases.

    Starts from ``checkpoint`` (a ``.safetensors`` file, a registered model name or a MONAI bundle
    folder) with the shipped ``finetune`` defaults: encoder frozen (prefixes in
    :data:`~napari_brats_kd.training.config.ENCODER_PREFIXES`), pretrained layers at 0.1x the
    learning rate, 20 epochs.

    Parameters
    ----------
    checkpoint
        The starting weights.
    data_dir
        Labelled cases of the new domain.
    overrides
        Settings replacing the defaults (``["epochs=5", "freeze=[]"]`` or a mapping).
    progress, should_stop, on_event
        As for :func:`train_teacher`.

    Returns
    -------
    TrainResult
    """
    base = {"init_from": str(checkpoint), "data_dir": str(data_dir)}
    if isinstance(overrides, dict):
        cfg = load_config("finetune", {**base, **overrides})
    else:
        cfg = load_config("finetune", [*(f"{k}={v}" for k, v in base.items()), *overrides])
    return train_teacher(cfg, progress, should_stop, on_event)


def resume_run(
    run_dir: str | Path,
    overrides: Sequence[str] | dict[str, Any] = (),
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_event: EventFn | None = None,
) -> TrainResult:
    """Continue a stopped or crashed run from its folder (``config.yaml`` + ``last_state.pt``).

    ``overrides`` may change settings such as ``epochs`` (to train longer). The learning-rate
    schedule is a function of the step and the *current* ``epochs``, so raising ``epochs`` stretches
    it: the run goes on as if it had been planned that long, and a finished cosine schedule climbs
    back to the longer schedule's value at this step (a warm restart). To go on at a low learning
    rate instead, start a new run from the checkpoint (``init_from``) with a smaller ``lr``.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise TrainingError(f"{run_dir} is not a run folder: it has no config.yaml.")
    cfg = load_config(cfg_path, overrides)
    cfg.run_dir = str(run_dir)
    if isinstance(cfg, DistillConfig):
        return distill(cfg, progress, should_stop, on_event, resume=True)
    return train_teacher(cfg, progress, should_stop, on_event, resume=True)


__all__ = [
    "EventFn",
    "ProgressFn",
    "StopFn",
    "TrainResult",
    "distill",
    "fine_tune",
    "lr_lambda",
    "resume_run",
    "train_step",
    "train_teacher",
    "validate",
    "weights_are_finite",
]
