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
mixed precision), :mod:`.run_folder` (files and saved state) and :mod:`.loop` (the epochs). This
module builds a run from them and keeps the public API.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import TrainingError
from . import distributed as dd
from .config import DistillConfig, TrainConfig, load_config
from .loaders import (
    build_data,
    cache_teacher_outputs,
    check_memory_cache,
    find_cases,
    seed_everything,
)
from .loaders import cycle as _cycle  # noqa: F401 (re-exported: tests import it from here)
from .loop import EventFn, Networks, ProgressFn, StopFn, TrainingLoop
from .losses import AttentionTransfer, DistillationLoss, SupervisedLoss
from .model_setup import check_networks, load_model, load_teacher, param_groups
from .model_setup import param_groups as _param_groups  # noqa: F401 (re-exported, as _cycle)
from .run_folder import (
    STATE_FILE,
    RunState,
    TrainResult,
    load_resume_state,
    open_run_dir,
    provenance,
    set_rng_state,
    write_config,
)
from .schedule import TimeBudget, amp_settings, build_scheduler, lr_lambda
from .steps import train_step, validate, weights_are_finite
from .teacher_targets import resolve_target_mode


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

    model = model.to(device)
    attention = AttentionTransfer(model, teacher) if attention_weight > 0 else None
    groups = param_groups(model, cfg, model_cfg.arch, cfg.init_from is not None)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # This module's clock, step and validation, looked up now: tests replace them here.
    budget = TimeBudget(cfg.max_minutes, ctx, time.perf_counter)
    scheduler = build_scheduler(optimizer, cfg, data.steps, budget)
    amp_dtype, scaler = amp_settings(cfg, device)
    state = RunState()
    if resume:
        saved = load_resume_state(run_dir / STATE_FILE, model, optimizer, scheduler)
        state = RunState.from_saved(saved)
        budget.resume(float(saved.get("train_seconds", 0.0)))
        set_rng_state(saved["rng"])
    nets = Networks(
        model, dd.wrap_model(model, ctx), model_cfg, teacher, attention, attention_weight,
        amp_dtype, scaler, val_roi,
    )  # fmt: skip
    counts = (len(cases.train), len(cases.val), len(cases.unlabeled))
    loop = TrainingLoop(
        cfg, ctx, run_dir, nets, optimizer, scheduler, _loss(cfg, distill), cases, data, budget,
        state, provenance(cfg, ctx, counts, teacher_cfg, targets_mode, attention_weight),
        write_config(cfg, run_dir) if ctx.is_main else None,
        progress, should_stop, emit, train_step, validate, time.perf_counter,
    )  # fmt: skip
    return loop.run()


def _loss(cfg: TrainConfig, distill: bool) -> nn.Module:
    """Dice + BCE on the labels, with the teacher's term when distilling."""
    supervised = SupervisedLoss(cfg.dice_weight, cfg.bce_weight)
    if not distill:
        return supervised
    return DistillationLoss(
        cfg.alpha, cfg.temperature, supervised, cfg.kd_dice_weight, cfg.kd_label_correction
    )


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
