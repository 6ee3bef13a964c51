"""When and how fast the loop learns: the learning-rate factor, the time budget, mixed precision."""

from __future__ import annotations

import math

import torch

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


__all__ = ["amp_settings", "lr_lambda"]
