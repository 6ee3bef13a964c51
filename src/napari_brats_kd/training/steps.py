"""One optimisation step, the finiteness check after it, and validation by whole cases.

The pieces of the loop that touch the network: :func:`train_step` on a batch of patches and
:func:`validate` with sliding-window inference. They know nothing of run folders, schedules or
processes, so that tests can drive (or replace) them alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from ..callbacks import ShouldStop
from ..errors import Cancelled, TrainingError
from .data import TEACHER
from .losses import AttentionTransfer


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
    should_stop: ShouldStop | None = None,
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


__all__ = ["train_step", "validate", "weights_are_finite"]
