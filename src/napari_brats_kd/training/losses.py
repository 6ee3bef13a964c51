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

Optionally (``attention_weight`` > 0, :class:`AttentionTransfer`) the student also matches the
teacher's **attention maps** (Zagoruyko & Komodakis, 2017) at every encoder stage: the channel mean
of the squared activations, L2-normalised over space. Maps need no channel projection, so a
student of 8 filters learns where a 32-filter teacher's encoder looks; a half-resolution student's
maps are upsampled to the teacher's grid.

Optionally (``label_correction``) the teacher's outputs are first corrected by the labels
(*knowledge adjustment*, Wen et al., 2021): where the teacher's decision for a voxel and region
contradicts the ground truth, its logit changes sign, so the target lands on the right side of
0.5 with the teacher's own confidence. Why: a student that copies its teacher also copies its
mistakes, and a teacher that is weaker than the labels (a short training run, a hard case) then
holds the student back; corrected, the teacher still shapes the soft boundaries and the
uncertainty it knows, but never argues against the labels. Unlabelled samples have nothing to be
corrected by and keep the teacher's outputs.

The supervised term is counted only for samples with ground truth (``labelled`` mask), so batches
that mix labelled cases and unlabelled cases of another site learn from the teacher everywhere
and from labels where they exist.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from ..errors import TrainingError


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

    Computed from logits as the binary cross-entropy of the student against the teacher's
    probabilities minus the teacher's entropy, both stable for any logits.

    Parameters
    ----------
    teacher_logits, student_logits
        Tensors of one shape ``(B, R, ...)``; gradients flow to the student's only (the
        teacher's are treated as constants).
    temperature
        Softening temperature ``T`` (> 0).

    Returns
    -------
    torch.Tensor
        Per-sample divergence, shape ``(B,)``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    t = teacher_logits.detach().float() / temperature
    s = student_logits.float() / temperature
    # KL(p || q) = BCE(q; p) - H(p): one fused cross-entropy kernel for the student, whose
    # gradient is exactly (q - p) / T, and the teacher's entropy H(p) = softplus(t) - p t as a
    # constant. The textbook form (four log-sigmoids and their backward) made the distillation
    # loss cost about as much as the student's own forward pass on a CPU.
    with torch.no_grad():
        p = torch.sigmoid(t)
        entropy = (F.softplus(t) - p * t).flatten(1).mean(1)
    cross_entropy = F.binary_cross_entropy_with_logits(s, p, reduction="none")
    return cross_entropy.flatten(1).mean(1) - entropy


def correct_teacher_logits(
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    labelled: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher logits with the sign flipped wherever the teacher contradicts the labels.

    Knowledge adjustment (Wen et al., 2021, adapted to sigmoid outputs): a voxel's teacher
    probability ``p`` becomes ``1 - p`` where the teacher's decision (``p > 0.5``) disagrees with
    the binary label (``p = 0.5`` counts as a disagreement and moves just across), so the
    corrected target keeps the teacher's confidence but never its mistake.

    Parameters
    ----------
    teacher_logits
        ``(B, R, ...)`` teacher logits.
    target
        ``(B, R, ...)`` binary region masks, on the same grid.
    labelled
        ``(B,)`` booleans: samples without ground truth keep the teacher's logits (all samples
        are corrected if ``None``).

    Returns
    -------
    torch.Tensor
        Corrected logits, shaped like ``teacher_logits``.
    """
    if teacher_logits.shape != target.shape:
        raise ValueError(
            f"Cannot correct the teacher by the labels: its outputs have shape "
            f"{tuple(teacher_logits.shape)}, the labels {tuple(target.shape)}."
        )
    sign = torch.where(target > 0.5, 1.0, -1.0).to(teacher_logits.dtype)
    margin = teacher_logits * sign  # > 0 where the teacher decides as the label does
    # A logit of exactly 0 is no decision: it counts as wrong, and moves to the label's side.
    wrong = margin <= 0
    if labelled is not None:
        mask = labelled.to(device=wrong.device, dtype=torch.bool)
        wrong &= mask.reshape(-1, *([1] * (wrong.ndim - 1)))
    # Where wrong, -margin is the teacher's |logit|: keep it, on the label's side. In place on
    # the temporary, as the loss runs on whole batches of patches at every step.
    flipped = margin.neg_().clamp_min_(1e-3).mul_(sign)
    return torch.where(wrong, flipped, teacher_logits)


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
    label_correction
        Correct the teacher's outputs by the labels of labelled samples before they are used
        (:func:`correct_teacher_logits`).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 2.0,
        supervised: nn.Module | None = None,
        dice_weight: float = 0.0,
        label_correction: bool = False,
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
        self.label_correction = bool(label_correction)
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
        if self.label_correction and target is not None:
            teacher_logits = correct_teacher_logits(teacher_logits, target, labelled)
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


# ------------------------------------------------------------------------- attention transfer
#: Encoder stages of the SegResNet family (the bundle teacher, ``segresnet-halfres`` and the
#: students, whose SegResNet is ``net``; also under DDP's ``module.``).
_STAGE_NAME = re.compile(r"(?:^|\.)down_layers\.(\d+)$")


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, X, Y, Z)`` activations -> ``(B, 1, X, Y, Z)`` channel mean of their squares."""
    return features.float().pow(2).mean(1, keepdim=True)


def attention_transfer_loss(
    student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Mean over stage pairs of ``|| a_s / |a_s| - a_t / |a_t| ||^2`` (normalised attention maps).

    Student maps are resampled (trilinear) to the teacher's grid when the two differ. Each term
    lies in [0, 4] (0: the same spatial attention up to scale).
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError("attention transfer needs the same, non-zero number of stages")
    total = student_features[0].new_zeros((), dtype=torch.float32)
    for fs, ft in zip(student_features, teacher_features, strict=True):
        a_s, a_t = attention_map(fs), attention_map(ft.detach())
        if a_s.shape[2:] != a_t.shape[2:]:
            a_s = F.interpolate(a_s, size=a_t.shape[2:], mode="trilinear", align_corners=False)
        a_s = F.normalize(a_s.flatten(1), dim=1)
        a_t = F.normalize(a_t.flatten(1), dim=1)
        total = total + (a_s - a_t).pow(2).sum(1).mean()
    return total / len(student_features)


class _StageTaps:
    """Forward hooks that keep a network's encoder stage outputs while recording."""

    def __init__(self, model: nn.Module, who: str) -> None:
        stages = sorted(
            ((int(m.group(1)), module) for name, module in model.named_modules()
             if (m := _STAGE_NAME.search(name))),
            key=lambda item: item[0],
        )  # fmt: skip
        if not stages:
            raise TrainingError(
                f"Attention distillation needs SegResNet-family networks (the bundle teacher, "
                f"segresnet-halfres, the students); the {who} ({type(model).__name__}) has no "
                "encoder stages it knows. Set attention_weight to 0."
            )
        self.outputs: list[torch.Tensor | None] = [None] * len(stages)
        self.recording = False
        self._handles = [
            module.register_forward_hook(self._hook(i)) for i, (_, module) in enumerate(stages)
        ]

    def _hook(self, index: int):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if self.recording:
                self.outputs[index] = output

        return hook

    def take(self, n: int) -> list[torch.Tensor]:
        out = [o for o in self.outputs[:n] if o is not None]
        if len(out) != n:
            raise RuntimeError("attention transfer: a network ran without recording its stages")
        self.outputs = [None] * len(self.outputs)
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class AttentionTransfer:
    """Attention transfer between a student's and a teacher's encoder stages.

    Hooks on both networks keep their stage outputs while :meth:`recording` is active; calling the
    object after a forward pass of each returns :func:`attention_transfer_loss` over the first
    ``min(stages of student, stages of teacher)`` stages, paired shallow to deep.

    Parameters
    ----------
    student, teacher
        SegResNet-family networks (possibly DDP-wrapped).

    Raises
    ------
    TrainingError
        If either network has no SegResNet encoder stages.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        self._student = _StageTaps(student, "student")
        self._teacher = _StageTaps(teacher, "teacher")
        self.n_stages = min(len(self._student.outputs), len(self._teacher.outputs))

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Keep stage outputs of the forward passes run inside (and only those: validation
        passes must not hold whole-volume activations)."""
        self._student.recording = self._teacher.recording = True
        try:
            yield
        finally:
            self._student.recording = self._teacher.recording = False

    def __call__(self) -> torch.Tensor:
        n = self.n_stages
        return attention_transfer_loss(self._student.take(n), self._teacher.take(n))

    def remove(self) -> None:
        """Remove the hooks."""
        self._student.remove()
        self._teacher.remove()


__all__ = [
    "AttentionTransfer",
    "DistillationLoss",
    "SupervisedLoss",
    "attention_map",
    "attention_transfer_loss",
    "binary_kl_divergence",
]
