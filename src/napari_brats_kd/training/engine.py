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
"""

from __future__ import annotations

import copy
import csv
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import atomic_write, remove_stale_temporaries
from ..errors import BratsKDError, Cancelled, CheckpointError, ResourceError, TrainingError
from ..labels import MODALITIES, MODALITY_NAMES
from . import distributed as dd
from .config import (
    ENCODER_PREFIXES,
    OUTPUT_PREFIXES,
    DistillConfig,
    TrainConfig,
    load_config,
    save_config,
)
from .data import (
    CACHE_REMEDY,
    TEACHER,
    CaseEntry,
    LoadCased,
    PoolSampler,
    build_dataset,
    discover_cases,
    first_case_info,
    is_out_of_memory,
    make_split,
    memory_cache_bytes,
    memory_cache_verdict,
    patch_transforms,
    read_split,
    user_error_in,
    write_split,
)
from .losses import AttentionTransfer, DistillationLoss, SupervisedLoss
from .teacher_targets import (
    BACKGROUND_LOGIT,
    LoadTeacherTargetsd,
    cache_teacher_targets,
    resolve_target_mode,
    targets_key,
)

ProgressFn = Callable[[int, int, str], None]
StopFn = Callable[[], bool]
EventFn = Callable[[dict], None]

STATE_FILE = "last_state.pt"
LAST_CKPT = "last.safetensors"
BEST_CKPT = "best.safetensors"
LOG_FILE = "log.csv"
LOG_COLUMNS = (
    "epoch",
    "step",
    "loss",
    "supervised",
    "kd",
    "attention",
    "lr",
    "patches_per_s",
    "epoch_time_s",
    "val_dice_TC",
    "val_dice_WT",
    "val_dice_ET",
    "val_mean_dice",
)


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


# ------------------------------------------------------------------------------------------ steps
def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batch: dict[str, Any],
    device: torch.device,
    channels: Sequence[int] | None = None,
    teacher: nn.Module | None = None,
    teacher_channels: Sequence[int] | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: Any = None,
    attention: AttentionTransfer | None = None,
    attention_weight: float = 0.0,
) -> dict[str, float]:
    """One optimisation step on a collated batch of patches.

    Parameters
    ----------
    model
        The network being trained (possibly DDP-wrapped).
    optimizer
        Its optimizer.
    loss_fn
        :class:`SupervisedLoss` (no teacher) or :class:`DistillationLoss`.
    batch
        ``{"image": (B, C, ...), "label": (B, R, ...), "labelled": (B,)}``, and ``"teacher"``
        (B, R, ...) when distilling from cached teacher logits.
    device
        Where to compute.
    channels, teacher_channels
        Image channels the model / teacher take (``None``: all, in order).
    teacher
        Frozen teacher (eval mode) for online distillation; ignored when the batch carries
        cached teacher logits.
    amp_dtype
        Autocast dtype on CUDA (``None``: full precision).
    scaler
        Gradient scaler for float16 autocast.
    attention, attention_weight
        Attention transfer between ``model``'s and ``teacher``'s encoder stages (hooks on both)
        and its weight in the loss.

    Returns
    -------
    dict
        ``{"loss", "supervised", "kd"}`` as floats, and ``"attention"`` with attention transfer.
    """
    image = torch.as_tensor(batch["image"]).to(device, non_blocking=True).float()
    target = torch.as_tensor(batch["label"]).to(device, non_blocking=True)
    labelled = torch.as_tensor(batch["labelled"]).to(device).bool().reshape(-1)
    x = image if channels is None else image[:, list(channels)]
    t_logits = None
    if TEACHER in batch:
        t_logits = torch.as_tensor(batch[TEACHER]).to(device, non_blocking=True)
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else nullcontext()
    )
    recording = attention.recording() if attention is not None else nullcontext()
    with autocast, recording:
        logits = model(x)
        if teacher is not None and t_logits is None:
            xt = image if teacher_channels is None else image[:, list(teacher_channels)]
            with torch.no_grad():
                t_logits = teacher(xt)
    if t_logits is not None:
        parts = loss_fn(logits.float(), t_logits.float(), target, labelled)
    else:
        loss = loss_fn(logits.float(), target, labelled)
        parts = {"loss": loss, "supervised": loss.detach(), "kd": torch.zeros(())}
    if attention is not None:
        at = attention()
        parts["loss"] = parts["loss"] + attention_weight * at
        parts["attention"] = at.detach()
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(parts["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        parts["loss"].backward()
        optimizer.step()
    if not weights_are_finite(model):
        # Checked on the weights, not the loss: DDP ranks hold the same weights, so every rank
        # stops at the same step (a loss is per rank). AMP's scaler skips inf steps itself.
        raise TrainingError(
            f"Training diverged: after a step with loss {float(parts['loss'].detach()):.4g} the "
            "weights are no longer finite (NaN or Inf). Lower the learning rate (lr) or the "
            "loss weights; the run folder keeps the last good checkpoint (resume from it)."
        )
    return {k: float(v.detach()) for k, v in parts.items()}


def _load_resume_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict:
    """Load ``last_state.pt`` into the model, optimizer and scheduler; returns the state.

    Raises
    ------
    CheckpointError
        Naming the file when it is truncated, holds other than plain tensors, or does not fit
        this run's network and optimizer: what is wrong and what to do.
    """
    advice = (
        "Start a new run (or resume from a copy of the run folder taken before the damage); the "
        "run's best checkpoint beside it is a separate file and may be intact."
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, a blocked pickle payload, not a torch file
        raise CheckpointError(
            f"Cannot resume: {path} is damaged or not a training state ({_first_line(exc)}). "
            + advice
        ) from None
    try:
        weights = state["model"]
        bad = [
            k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            raise CheckpointError(
                f"Cannot resume: {path} holds weights that are not finite ({', '.join(bad[:3])}): "
                "the run diverged before it was saved. " + advice
            )
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # The optimizer's own rates are those of the moment it was saved; a stop inside an epoch
        # saves the schedule of the epoch's start (the epoch is replayed), and the first replayed
        # step must use that schedule's rate.
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
        missing = [
            k
            for k in ("epoch", "global_step", "best_metric", "best_epoch", "history", "rng")
            if k not in state
        ]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            f"Cannot resume: {path} does not fit this run's network and optimizer "
            f"({_first_line(exc)}). " + advice
        ) from None
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def weights_are_finite(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (one device sync, not one per tensor)."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


@torch.no_grad()
def validate(
    model: nn.Module,
    cases: Any,
    device: torch.device,
    roi_size: Sequence[int],
    channels: Sequence[int] | None = None,
    overlap: float = 0.25,
    sw_batch_size: int = 2,
    amp_dtype: torch.dtype | None = None,
    region_names: Sequence[str] = ("TC", "WT", "ET"),
    should_stop: StopFn | None = None,
    on_case: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Mean Dice per region over whole cases with sliding-window inference (threshold 0.5).

    Parameters
    ----------
    model
        The network (eval mode is set here and restored by the caller).
    cases
        Iterable of loaded case dicts (``image`` ``(C, ...)``, ``label`` ``(R, ...)``).
    device, roi_size, channels, overlap, sw_batch_size, amp_dtype
        Inference settings.
    region_names
        Names of the output channels.
    should_stop
        Polled before every case; True raises :class:`~napari_brats_kd.errors.Cancelled`.
    on_case
        ``on_case(done, total)`` after every case (``total`` is 0 when ``cases`` has no length).

    Returns
    -------
    dict
        ``{region: mean Dice}`` plus ``"mean"``.

    Raises
    ------
    Cancelled
        ``should_stop`` returned True; no partial result is returned.
    """
    from monai.inferers import sliding_window_inference

    from ..metrics import dice_torch

    model.eval()
    totals = torch.zeros(len(region_names), dtype=torch.float64)
    n = 0
    total = len(cases) if hasattr(cases, "__len__") else 0
    for item in cases:
        if should_stop is not None and should_stop():
            raise Cancelled(f"Validation stopped after {n} of {total or '?'} case(s).")
        image = torch.as_tensor(item["image"]).float()[None]
        if channels is not None:
            image = image[:, list(channels)]
        autocast = (
            torch.autocast(device_type=device.type, dtype=amp_dtype)
            if amp_dtype is not None
            else nullcontext()
        )
        with autocast:
            logits = sliding_window_inference(
                image.to(device), tuple(roi_size), sw_batch_size, model, overlap=overlap
            )
        pred = (torch.as_tensor(logits).float() > 0).cpu()  # sigmoid > 0.5 <=> logit > 0
        target = torch.as_tensor(item["label"])[None].bool()
        totals += dice_torch(pred, target).cpu()
        n += 1
        if on_case is not None:
            on_case(n, total)
    out = {r: float(totals[i] / max(n, 1)) for i, r in enumerate(region_names)}
    out["mean"] = float(np.mean([out[r] for r in region_names]))
    return out


# ------------------------------------------------------------------------------------ schedules
def lr_lambda(
    step: int, total_steps: int, warmup_steps: int, schedule: str, min_factor: float
) -> float:
    """Learning-rate factor at ``step``: linear warm-up, then cosine / poly decay / constant."""
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


# ------------------------------------------------------------------------------------ helpers
def _seed_everything(seed: int, deterministic: bool = False) -> None:
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (MONAI transforms draw from the global RNG)
    torch.manual_seed(seed)
    set_determinism(seed=seed % 2**32, use_deterministic_algorithms=deterministic or None)
    if not deterministic:
        # set_determinism makes cuDNN deterministic; keep the fast autotuned kernels instead.
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = torch.cuda.is_available()


def _seed_transforms(dataset: Any, seed: int) -> None:
    from monai.transforms import Compose

    sets = getattr(dataset, "datasets", [dataset])
    for i, ds in enumerate(sets):
        transform = getattr(ds, "transform", None)
        if isinstance(transform, Compose):
            transform.set_random_state(seed=(seed + 7919 * i) % 2**32)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002 (the global RNG MONAI uses)
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(  # noqa: NPY002
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0)
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _write_log(history: list[dict], path: Path) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(LOG_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            for row in history:
                writer.writerow({k: row.get(k, "") for k in LOG_COLUMNS})

    atomic_write(path, write)


def _default_run_dir(cfg: TrainConfig) -> Path:
    if cfg.out:
        out = Path(cfg.out)
        return out.with_name(out.name.removesuffix(".safetensors") + "_run")
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _amp_settings(cfg: TrainConfig, device: torch.device):
    if not cfg.amp or device.type != "cuda":
        return None, None
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, None  # bf16 needs no loss scaling
    # torch.amp.GradScaler("cuda") exists from torch 2.3 on; pyproject allows 2.1.
    if hasattr(torch.amp, "GradScaler"):
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.float16, torch.cuda.amp.GradScaler()


#: Added to the epoch per extra pass of one epoch, for samplers that shuffle by epoch: far from
#: any real epoch number, so no pass repeats another pass's order.
_PASS_STRIDE = 1_000_003


def _cycle(loader: Any, epoch: int) -> Iterator[dict]:
    """The batches of ``loader`` without end, each pass in a new order.

    A plain ``RandomSampler`` reshuffles on its own; a ``DistributedSampler`` shuffles by its
    epoch only, so an epoch of more steps than one pass (``steps_per_epoch``) would repeat the
    same order pass after pass. Each further pass therefore gets its own sampler epoch (the same
    on every rank, and the same when the epoch is replayed on resume).
    """
    passes = 0
    while True:
        yield from loader
        passes += 1
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch + passes * _PASS_STRIDE)


# --------------------------------------------------------------------------------- model setup
def _expand_freeze(freeze: Sequence[str], arch: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in freeze:
        if item == "encoder":
            if arch not in ENCODER_PREFIXES:
                raise TrainingError(
                    f"freeze: encoder is not defined for architecture {arch!r}; give parameter-"
                    "name prefixes instead."
                )
            out += ENCODER_PREFIXES[arch]
        else:
            out.append(item)
    return tuple(out)


def _output_prefixes(model: nn.Module, arch: str) -> tuple[str, ...]:
    """Parameter-name prefixes of the network's output block (:data:`OUTPUT_PREFIXES`; for an
    architecture without an entry, its last convolution)."""
    if arch in OUTPUT_PREFIXES:
        return OUTPUT_PREFIXES[arch]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)]
    return (convs[-1] + ".",) if convs else ()


def _param_groups(
    model: nn.Module, cfg: TrainConfig, arch: str, pretrained: bool
) -> list[dict[str, Any]]:
    prefixes = _expand_freeze(cfg.freeze, arch)
    frozen = 0
    for name, p in model.named_parameters():
        if prefixes and name.startswith(prefixes):
            p.requires_grad_(False)
            frozen += 1
    if prefixes and frozen == 0:
        raise TrainingError(
            f"freeze: {list(cfg.freeze)} matches no parameter of {arch!r} (names start with e.g. "
            f"{next(iter(dict(model.named_parameters())), '?')!r})."
        )
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise TrainingError("freeze: every parameter is frozen, nothing is left to train.")
    if not pretrained or cfg.pretrained_lr_factor == 1.0:
        return [{"params": [p for _, p in trainable], "lr": cfg.lr}]
    # The output layer is task-specific: it learns at the full rate, the pretrained body slower.
    out = _output_prefixes(model, arch)
    head = [p for n, p in trainable if out and n.startswith(out)]
    body = [p for n, p in trainable if not (out and n.startswith(out))]
    groups = [{"params": body, "lr": cfg.lr * cfg.pretrained_lr_factor}]
    if head:
        groups.append({"params": head, "lr": cfg.lr})
    return groups


def _model_config(cfg: TrainConfig, teacher_cfg: Any | None):
    from ..models import ModelConfig, student_config, teacher_config

    spec = cfg.model
    mods = spec.modalities
    if mods is None:
        mods = teacher_cfg.modalities if teacher_cfg is not None else None
    try:
        kwargs: dict[str, Any] = dict(spec.arch_args)
        if spec.kind == "student":
            arch = spec.arch if spec.arch.startswith("student") else "student-small"
            mc: ModelConfig = (
                student_config(mods, preset=arch, **kwargs)
                if mods
                else student_config(preset=arch, **kwargs)
            )
        else:
            mc = (
                teacher_config(mods, arch=spec.arch, **kwargs)
                if mods
                else teacher_config(arch=spec.arch, **kwargs)
            )
    except (CheckpointError, ValueError) as exc:
        raise TrainingError(f"Invalid model setting: {exc}") from exc
    if spec.name or spec.description:
        mc = replace(mc, name=spec.name or mc.name, description=spec.description or mc.description)
    return mc


def _load_pretrained(spec: str, what: str):
    from ..models import resolve_model

    try:
        return resolve_model(spec, role="teacher")
    except CheckpointError as exc:
        raise TrainingError(f"{what} {spec!r} cannot be loaded: {exc}") from exc


# ------------------------------------------------------------------------------------- the run
def _check_modalities(entries: Sequence[CaseEntry], needed: Sequence[str], who: str) -> None:
    for e in entries:
        missing = [m for m in needed if m not in e.modalities]
        if missing:
            have = ", ".join(MODALITY_NAMES[m] for m in e.modalities) or "none"
            raise TrainingError(
                f"{who} needs {', '.join(MODALITY_NAMES[m] for m in missing)}, but case "
                f"{e.case_id!r} has only {have}."
            )


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
    from monai.data import DataLoader
    from torch.utils.data import ConcatDataset, DistributedSampler, RandomSampler

    from ..models import build_model, network_stride

    device = ctx.device
    distill = isinstance(cfg, DistillConfig)
    _seed_everything(cfg.seed + ctx.rank, cfg.deterministic)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else _default_run_dir(cfg)
    state_path = run_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise TrainingError(f"Cannot resume: {state_path} does not exist (no finished step).")
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A run killed while writing (kill -9, a full disk) leaves its temporary files behind.
        remove_stale_temporaries(run_dir)
    emit = on_event if (on_event is not None and ctx.is_main) else None

    # ---------------------------------------------------------------- teacher and model
    teacher = None
    teacher_cfg = None
    if distill:
        loaded_t = _load_pretrained(cfg.teacher, "Teacher")
        teacher_cfg = loaded_t.config
        teacher = copy.deepcopy(loaded_t.model).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    pretrained = cfg.init_from is not None
    if pretrained:
        loaded = _load_pretrained(cfg.init_from, "init_from checkpoint")
        model_cfg = loaded.config
        if cfg.model.modalities and tuple(cfg.model.modalities) != tuple(model_cfg.modalities):
            raise TrainingError(
                f"init_from {cfg.init_from!r} takes modalities {list(model_cfg.modalities)}, but "
                f"model.modalities asks for {list(cfg.model.modalities)}; a pretrained network "
                "keeps its input channels."
            )
        # A private copy: the loaded network may be shared (registry cache, a viewer's model),
        # and inference loading switches gradients off.
        model = copy.deepcopy(loaded.model).train()
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        model_cfg = _model_config(cfg, teacher_cfg)
        try:
            model = build_model(model_cfg)
        except CheckpointError as exc:
            raise TrainingError(f"Invalid model setting: {exc}") from exc
    if teacher_cfg is not None and tuple(teacher_cfg.regions) != tuple(model_cfg.regions):
        raise TrainingError(
            f"The teacher predicts regions {list(teacher_cfg.regions)} but the student "
            f"{list(model_cfg.regions)}: distillation needs the same output regions."
        )
    strides = {"model": network_stride(model_cfg)}
    if teacher_cfg is not None:
        strides["teacher"] = network_stride(teacher_cfg)
    val_roi = list(cfg.val_roi_size or cfg.patch_size)
    for who, s in strides.items():
        for name, size in (("patch_size", cfg.patch_size), ("val_roi_size", val_roi)):
            if any(v % s for v in size):
                raise TrainingError(
                    f"{name} {list(size)} must be a multiple of {s} in every axis for the {who} "
                    f"({model_cfg.arch if who == 'model' else teacher_cfg.arch})."
                )

    # ---------------------------------------------------------------- data
    entries = discover_cases(cfg.data_dir, cfg.max_cases)
    unlabelled_in_data = [e.case_id for e in entries if not e.has_seg]
    if unlabelled_in_data:
        raise TrainingError(
            f"{len(unlabelled_in_data)} case(s) in {cfg.data_dir} have no segmentation "
            f"({', '.join(unlabelled_in_data[:5])}): supervised training needs labels for every "
            "case; give unlabelled cases to distillation as the unlabelled set instead."
        )
    needed = [m for m in MODALITIES if m in set(model_cfg.modalities) | set(
        teacher_cfg.modalities if teacher_cfg is not None else ())]  # fmt: skip
    model_who = f"The model (modalities {', '.join(model_cfg.modalities)})"
    _check_modalities(entries, model_cfg.modalities, model_who)
    if teacher_cfg is not None:
        _check_modalities(
            entries, teacher_cfg.modalities,
            f"The teacher {teacher_cfg.display_name} (modalities "
            f"{', '.join(teacher_cfg.modalities)})",
        )  # fmt: skip
    unlab_entries: list[CaseEntry] = []
    if distill and cfg.unlabeled_dir:
        unlab_entries = discover_cases(cfg.unlabeled_dir)
        _check_modalities(unlab_entries, needed, "Distillation on the unlabelled cases")
    ids = [e.case_id for e in entries]
    split_path = run_dir / "split.json"
    if resume and split_path.is_file():
        split = read_split(split_path, ids)
    elif cfg.split_file:
        split = read_split(cfg.split_file, ids)
    else:
        split = make_split(ids, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if ctx.is_main:
        write_split({**split, "unlabeled": [e.case_id for e in unlab_entries]}, split_path)
    by_id = {e.case_id: e for e in entries}
    train_entries = [by_id[i] for i in split["train"]]
    val_entries = [by_id[i] for i in split["val"]]
    convention = first_case_info(train_entries[0])["convention"]
    channels = [needed.index(m) for m in model_cfg.modalities]
    t_channels = [needed.index(m) for m in teacher_cfg.modalities] if teacher_cfg else None

    from .augment import build_augmentation

    loader_kw = {
        "regions": model_cfg.regions,
        "normalization": model_cfg.normalization,
        "expected_convention": convention,
    }
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "cache"
    attention_weight = cfg.attention_weight if distill else 0.0
    targets_mode = (
        resolve_target_mode(cfg.teacher_targets, device, attention_weight > 0)
        if distill
        else "none"
    )
    if cfg.cache == "memory":
        # Checked before the teacher's outputs are cached (minutes on a CPU) and before loading.
        # Every process on this machine keeps its own cache of the training cases; rank 0 also
        # keeps the validation cases. Every rank computes the same sum, so all decide alike.
        keep = [*train_entries, *unlab_entries]
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
        try:
            per_process = memory_cache_bytes(
                len(keep), keep[0], len(needed), len(model_cfg.regions),
                teacher_targets=targets_mode == "cached", min_size=cfg.patch_size,
            )  # fmt: skip
            once = (
                memory_cache_bytes(len(val_entries), val_entries[0], len(needed),
                                   len(model_cfg.regions))
                if val_entries else 0
            )  # fmt: skip
            verdict = memory_cache_verdict(
                per_process, once, len(keep) + len(val_entries), processes
            )
        except Exception:  # an unreadable case is reported, with its name, when it is loaded
            verdict = None
        # All processes stop together: one that went on would wait for the others forever.
        if dd.any_true(verdict is not None and not verdict.fits, ctx):
            raise ResourceError(
                verdict.message if verdict is not None
                else f"cache: memory does not fit in another process's memory: {CACHE_REMEDY}."
            )  # fmt: skip
    extra_loads: list = []
    if targets_mode == "cached":
        # The teacher runs once per training case here instead of on every patch.
        image_loader = LoadCased(
            needed, use_label=False, require_label=False, min_size=cfg.patch_size, **loader_kw
        )
        settings = {
            "modalities": needed,
            "channels": t_channels,
            "teacher_roi": list(loaded_t.config.roi_size),
            "overlap": cfg.val_overlap,
            "normalization": model_cfg.normalization,
            "min_size": list(cfg.patch_size),
        }
        targets_dir = cache_dir / "teacher_targets" / targets_key(loaded_t.model, settings)
        to_cache = [*train_entries, *unlab_entries]

        def cached_case(done: int, total: int) -> None:
            if emit is not None:
                note = f"Caching teacher outputs: case {done}/{total}"
                emit({"type": "note", "message": note})

        def cache(entries: list[CaseEntry]) -> None:
            # The private copy, already on the device: the loaded network may be shared.
            cache_teacher_targets(
                replace(loaded_t, model=teacher), entries, image_loader, targets_dir,
                t_channels, device, overlap=cfg.val_overlap,
                sw_batch_size=cfg.val_sw_batch_size, should_stop=should_stop,
                on_case=cached_case,
            )  # fmt: skip

        # Under DDP every rank caches its share; then each fills in what it cannot see (a cache
        # folder that is not shared between nodes), the ranks starting at evenly spaced cases so
        # that the processes of a node mostly take different ones and none waits at a barrier.
        cache(to_cache[ctx.rank :: ctx.world_size])
        if ctx.distributed:
            dd.barrier(ctx)
            start = ctx.rank * len(to_cache) // ctx.world_size
            cache(to_cache[start:] + to_cache[:start])
        extra_loads = [LoadTeacherTargetsd(targets_dir)]
        teacher = None  # not needed any more: free its memory
    with_targets = bool(extra_loads)
    augment = build_augmentation(
        cfg.augment, target_keys=(TEACHER,) if with_targets else (), target_fill=BACKGROUND_LOGIT
    )
    rand = patch_transforms(
        cfg.patch_size, cfg.samples_per_case, cfg.pos_fraction, augment, with_targets
    )
    train_ds = build_dataset(
        train_entries,
        [LoadCased(needed, min_size=cfg.patch_size, **loader_kw), *extra_loads],
        rand,
        cfg.cache,
        cache_dir / "train",
        cfg.num_workers,
    )
    if unlab_entries:
        unlab_ds = build_dataset(
            unlab_entries,
            [LoadCased(needed, use_label=False, require_label=False, min_size=cfg.patch_size,
                       **loader_kw), *extra_loads],
            rand, cfg.cache, cache_dir / "unlabeled", cfg.num_workers,
        )  # fmt: skip
        train_ds = ConcatDataset([train_ds, unlab_ds])
    val_ds = None
    if val_entries and ctx.is_main:
        val_ds = build_dataset(
            val_entries, LoadCased(needed, **loader_kw), None, cfg.cache, cache_dir / "val",
            cfg.num_workers,
        )  # fmt: skip
    if unlab_entries:
        # Two pools mixed in the ratio the user asked for, not in proportion to their sizes.
        per_rank = math.ceil(len(train_ds) / ctx.world_size)
        # As the samplers below count it: DDP drops a last partial batch, one process does not.
        batches = (
            per_rank // cfg.batch_size if ctx.distributed else math.ceil(per_rank / cfg.batch_size)
        )
        steps = cfg.steps_per_epoch or max(1, batches)
        sampler: Any = PoolSampler(
            len(train_entries), len(unlab_entries), cfg.unlabeled_weight,
            steps * cfg.batch_size, ctx.rank, ctx.world_size, cfg.seed,
        )  # fmt: skip
    elif ctx.distributed:
        sampler = DistributedSampler(
            train_ds, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed
        )
        steps = cfg.steps_per_epoch or max(1, len(sampler) // cfg.batch_size)
    else:
        # An epoch is one pass of the DataLoader: `steps` batches drawn from reshuffled passes over
        # the cases. Worker processes then start once per epoch, not after every pass over a small
        # dataset (with many workers, those restarts cost as much as the steps).
        steps = cfg.steps_per_epoch or max(1, math.ceil(len(train_ds) / cfg.batch_size))
        sampler = RandomSampler(train_ds, num_samples=steps * cfg.batch_size)
    loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        drop_last=ctx.distributed,
        persistent_workers=False,
    )
    total_steps = steps * cfg.epochs
    patches_per_step = cfg.batch_size * cfg.samples_per_case

    # ---------------------------------------------------------------- optimisation
    model = model.to(device)
    attention = AttentionTransfer(model, teacher) if attention_weight > 0 else None
    groups = _param_groups(model, cfg, model_cfg.arch, pretrained)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_epochs * steps
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
    amp_dtype, scaler = _amp_settings(cfg, device)

    start_epoch, global_step = 0, 0
    best_metric, best_epoch = float("-inf"), 0
    history: list[dict] = []
    if resume:
        state = _load_resume_state(state_path, model, optimizer, scheduler)
        start_epoch, global_step = int(state["epoch"]), int(state["global_step"])
        best_metric, best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        history = list(state["history"])
        clock["before"] = clock["elapsed"] = float(state.get("train_seconds", 0.0))
        _set_rng_state(state["rng"])
    ddp_model = dd.wrap_model(model, ctx)

    provenance = {
        "kind": "distill" if distill else ("finetune" if pretrained else "train"),
        "data_dir": str(cfg.data_dir),
        "n_train": len(train_entries),
        "n_val": len(val_entries),
        "n_unlabeled": len(unlab_entries),
        "seed": cfg.seed,
        "patch_size": list(cfg.patch_size),
        "augment": cfg.augment.preset,
        "device": str(device),
        "world_size": ctx.world_size,
        "torch": torch.__version__,
    }
    if distill:
        provenance.update(
            teacher=teacher_cfg.display_name,
            teacher_path=str(cfg.teacher),
            alpha=cfg.alpha,
            temperature=cfg.temperature,
            kd_dice_weight=cfg.kd_dice_weight,
            kd_label_correction=cfg.kd_label_correction,
            teacher_targets=targets_mode,
            attention_weight=attention_weight,
        )
    if pretrained:
        provenance["init_from"] = str(cfg.init_from)

    writer = None
    if ctx.is_main:
        # Only now that data, model and teacher are checked: a resume with a bad override leaves
        # the run's config as it was.
        save_config(replace(cfg, run_dir=str(run_dir)), run_dir / "config.yaml")
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # TensorBoard is optional
            writer = None

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
            "rng": _rng_state(),
        }
        _atomic_torch_save(state, state_path)

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
            "steps_per_epoch": steps,
            "n_train": len(train_entries),
            "n_val": len(val_entries),
            "run_dir": str(run_dir),
            "kind": provenance["kind"],
        })  # fmt: skip
    out_of_time = False
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start.update(epoch=epoch, step=global_step, scheduler=scheduler.state_dict())
        epoch_seed = cfg.seed + 1000 * epoch + ctx.rank
        _seed_everything(epoch_seed, cfg.deterministic)
        _seed_transforms(train_ds, epoch_seed)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        ddp_model.train()
        batches = _cycle(loader, epoch)
        sums = {"loss": 0.0, "supervised": 0.0, "kd": 0.0}
        if attention is not None:
            sums["attention"] = 0.0
        t0 = time.perf_counter()
        if clock["start"] is None:
            clock["start"] = t0
        steps_done = 0
        for step in range(steps):
            try:
                batch = next(batches)
                parts = train_step(
                    ddp_model, optimizer, loss_fn, batch, device, channels,
                    teacher, t_channels, amp_dtype, scaler, attention, attention_weight,
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
                    epoch * steps + step + 1,
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
        do_val = val_entries and ((epoch + 1) % cfg.val_every == 0 or last_epoch)
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
                        model, val_ds, device, val_roi, channels, cfg.val_overlap,
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
                    _write_log(history, run_dir / LOG_FILE)
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
                    "val_cases": len(val_entries),
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
            _write_log(history, run_dir / LOG_FILE)
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
    "TrainResult",
    "distill",
    "fine_tune",
    "lr_lambda",
    "resume_run",
    "train_step",
    "train_teacher",
    "validate",
]
