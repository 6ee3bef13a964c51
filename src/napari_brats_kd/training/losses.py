"""Losses: supervised Dice + BCE on regions, and the knowledge-distillation loss.

Networks predict one sigmoid channel per region (TC, WT, ET; see
:data:`~napari_brats_kd.labels.REGIONS`), so every loss here treats each voxel of each region as an
independent binary decision.

Distillation (Hinton et al., adapted to sigmoid outputs)::

    loss = alpha * supervised(student, ground truth)
         + (1 - alpha) * T**2 * divergence(sigmoid(teacher / T), sigmoid(student / T))

The divergence is the **binary KL divergence** per voxel and region,
``KL(p || q) = p log(p / q) + (1 - p) log((1 - p) / (1 - q))`` with ``p`` the teacher's softened
probability and ``q`` the student's, averaged over voxels and regions. It equals binary
cross-entropy with soft targets minus the teacher's own entropy, so its gradient is that of
BCE-with-soft-targets, but it is exactly 0 when the student matches the teacher (which makes the
loss readable in logs). ``T**2`` keeps the gradient scale independent of the temperature.

Optionally (``dice_weight`` > 0) the teacher term also holds a soft Dice loss between the student's
and the teacher's probabilities (at T = 1). Why: the voxel-averaged KL is dominated by the many
background voxels, like plain BCE, so on its own it teaches small regions (ET, TC) slowly; the Dice
term weighs each region by its size, as the supervised Dice does for the ground truth. It counts
only the regions the teacher finds in a patch.

The supervised term is counted only for samples with ground truth (``labelled`` mask), so batches
that mix labelled cases and unlabelled cases of another site learn from the teacher everywhere
and from labels where they exist.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn


class SupervisedLoss(nn.Module):
    """Soft Dice + binary cross-entropy on sigmoid region outputs.

    Parameters
    ----------
    dice_weight, bce_weight
        Weights of the two terms.

    Notes
    -----
    The Dice term is computed per sample and channel (``batch=False``), so a per-sample mask can
    drop unlabelled samples without changing the others' contribution.
    """

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__()
        self.dice_weight = float(dice_weight)
        self.bce_weight = float(bce_weight)
        self.dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        sample_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss averaged over the samples selected by ``sample_mask`` (all if ``None``).

        Parameters
        ----------
        logits
            ``(B, R, ...)`` raw network outputs.
        target
            ``(B, R, ...)`` binary region masks.
        sample_mask
            ``(B,)`` booleans: which samples have ground truth.

        Returns
        -------
        torch.Tensor
            Scalar; 0 (with a gradient path) when no sample is selected.
        """
        target = target.to(logits.dtype)
        dice = self.dice(logits, target).flatten(1).mean(1)  # (B,)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        bce = bce.flatten(1).mean(1)  # (B,)
        per_sample = self.dice_weight * dice + self.bce_weight * bce
        if sample_mask is None:
            return per_sample.mean()
        w = sample_mask.to(per_sample.dtype)
        # Keep the graph connected even if the batch has no labelled sample (DDP needs every
        # parameter to receive a gradient, zero or not).
        return (per_sample * w).sum() / w.sum().clamp_min(1.0)


def binary_kl_divergence(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Mean binary KL divergence ``KL(sigmoid(t/T) || sigmoid(s/T))`` per voxel and channel.

    Computed from logits with log-sigmoids for numerical stability.

    Parameters
    ----------
    teacher_logits, student_logits
        Tensors of one shape ``(B, R, ...)``.
    temperature
        Softening temperature ``T`` (> 0).

    Returns
    -------
    torch.Tensor
        Per-sample divergence, shape ``(B,)``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    t = teacher_logits.float() / temperature
    s = student_logits.float() / temperature
    p = torch.sigmoid(t)
    log_p, log_1mp = F.logsigmoid(t), F.logsigmoid(-t)
    log_q, log_1mq = F.logsigmoid(s), F.logsigmoid(-s)
    kl = p * (log_p - log_q) + (1 - p) * (log_1mp - log_1mq)
    return kl.flatten(1).mean(1)


class DistillationLoss(nn.Module):
    """``alpha * supervised + (1 - alpha) * T^2 * binary KL(teacher || student)``.

    Parameters
    ----------
    alpha
        Weight of the ground-truth term, in [0, 1]; 0 learns from the teacher alone.
    temperature
        Softening temperature ``T`` of both outputs (>= 1 softens).
    supervised
        The ground-truth loss (default :class:`SupervisedLoss`).
    dice_weight
        Weight of a soft Dice loss between student and teacher probabilities, added to the
        teacher term (0 = binary KL alone).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 2.0,
        supervised: nn.Module | None = None,
        dice_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.alpha = float(alpha)
        self.temperature = float(temperature)
        self.supervised = supervised if supervised is not None else SupervisedLoss()
        if dice_weight < 0:
            raise ValueError(f"dice_weight must be >= 0, got {dice_weight}.")
        self.dice_weight = float(dice_weight)
        self.soft_dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor | None = None,
        labelled: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Total loss and its parts.

        Parameters
        ----------
        student_logits, teacher_logits
            ``(B, R, ...)`` logits; the teacher's are treated as constants.
        target
            ``(B, R, ...)`` region masks (ignored for unlabelled samples), or ``None``.
        labelled
            ``(B,)`` booleans: which samples have ground truth (all, if ``target`` is given and
            this is ``None``).

        Returns
        -------
        dict
            ``{"loss", "supervised", "kd"}`` scalars; ``loss`` is what to back-propagate.
        """
        teacher_logits = teacher_logits.detach()
        kd = binary_kl_divergence(teacher_logits, student_logits, self.temperature).mean()
        kd = kd * self.temperature**2
        if self.dice_weight > 0:
            soft_target = torch.sigmoid(teacher_logits.float())
            dice = self.soft_dice(student_logits.float(), soft_target).flatten(2).mean(2)
            # Only regions the teacher finds in the patch: the Dice of two near-empty soft masks
            # is about 1 whatever the student does, noise the KL term already handles better.
            present = (teacher_logits > 0).flatten(2).any(2).to(dice.dtype)  # (B, R)
            dice = (dice * present).sum() / present.sum().clamp_min(1.0)
            kd = kd + self.dice_weight * dice
        if target is None or self.alpha == 0.0:
            sup = student_logits.sum() * 0.0
        else:
            if labelled is None:
                labelled = torch.ones(target.shape[0], dtype=torch.bool, device=target.device)
            sup = self.supervised(student_logits, target, labelled)
        # Weights stay fixed whatever the batch holds, so the loss scale does not jump between
        # batches of labelled and unlabelled scans; unlabelled samples add no supervised term.
        loss = self.alpha * sup + (1.0 - self.alpha) * kd
        return {"loss": loss, "supervised": sup.detach(), "kd": kd.detach()}


__all__ = ["DistillationLoss", "SupervisedLoss", "binary_kl_divergence"]
