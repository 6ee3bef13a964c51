"""Losses: supervised Dice + BCE with per-sample masks, binary-KL distillation and temperature."""

from __future__ import annotations

import pytest
import torch

from napari_brats_kd.training.losses import (
    DistillationLoss,
    SupervisedLoss,
    binary_kl_divergence,
)

torch.manual_seed(0)


def _logits(*shape: int) -> torch.Tensor:
    return torch.randn(*shape) * 3


def test_kd_is_zero_when_student_matches_teacher() -> None:
    t = _logits(2, 3, 8, 8, 8)
    loss = DistillationLoss(alpha=0.0, temperature=3.0)
    parts = loss(t.clone(), t)
    assert parts["loss"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["kd"].item() == pytest.approx(0.0, abs=1e-6)


def test_kd_positive_and_pulls_student_towards_teacher() -> None:
    t = _logits(2, 3, 6, 6, 6)
    s = _logits(2, 3, 6, 6, 6).requires_grad_(True)
    loss_fn = DistillationLoss(alpha=0.0, temperature=2.0)
    before = loss_fn(s, t)["loss"]
    assert before.item() > 0
    before.backward()
    with torch.no_grad():
        s2 = s - 50.0 * s.grad
    assert loss_fn(s2, t)["loss"].item() < before.item()


def test_temperature_softens_and_t_squared_rescales() -> None:
    t = _logits(1, 3, 5, 5, 5)
    s = _logits(1, 3, 5, 5, 5)
    kl1 = binary_kl_divergence(t, s, 1.0).mean()
    kl4 = binary_kl_divergence(t, s, 4.0).mean()
    assert kl4 < kl1  # softer distributions lie closer together
    parts = DistillationLoss(alpha=0.0, temperature=4.0)(s, t)
    assert parts["kd"].item() == pytest.approx(16.0 * kl4.item(), rel=1e-5)
    with pytest.raises(ValueError):
        binary_kl_divergence(t, s, 0.0)


def test_binary_kl_matches_definition() -> None:
    t = torch.tensor([[[0.5, -1.0]]])
    s = torch.tensor([[[2.0, 0.3]]])
    p, q = torch.sigmoid(t), torch.sigmoid(s)
    expected = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).mean()
    assert binary_kl_divergence(t, s).item() == pytest.approx(expected.item(), rel=1e-5)


def test_binary_kl_value_and_gradient_match_the_textbook_form_for_any_logits() -> None:
    # The fused form (cross-entropy minus the teacher's entropy) must give the same divergence
    # and the same pull on the student as the four-log-sigmoid form, also for saturated logits.
    import torch.nn.functional as F

    t = torch.cat([_logits(1, 3, 4, 4, 4), torch.full((1, 3, 4, 4, 4), 30.0)], 0)
    t[1, 1] = -30.0
    s0 = torch.cat([_logits(1, 3, 4, 4, 4), torch.full((1, 3, 4, 4, 4), -25.0)], 0)
    for temperature in (1.0, 2.0, 4.0):
        s = s0.clone().requires_grad_(True)
        teacher = t.clone().requires_grad_(True)
        fused = binary_kl_divergence(teacher, s, temperature)
        fused.sum().backward()
        s_ref = s0.clone().requires_grad_(True)
        a, b = t / temperature, s_ref / temperature
        p = torch.sigmoid(a)
        textbook = p * (F.logsigmoid(a) - F.logsigmoid(b)) + (1 - p) * (
            F.logsigmoid(-a) - F.logsigmoid(-b)
        )
        textbook = textbook.flatten(1).mean(1)
        textbook.sum().backward()
        assert torch.allclose(fused, textbook, rtol=1e-5, atol=1e-6)
        assert torch.allclose(s.grad, s_ref.grad, rtol=1e-5, atol=1e-9)
        assert teacher.grad is None  # the teacher is a constant


def test_supervised_mask_ignores_unlabelled_samples() -> None:
    logits = _logits(2, 3, 6, 6, 6)
    target = (torch.rand(2, 3, 6, 6, 6) > 0.7).float()
    sup = SupervisedLoss()
    masked = sup(logits, target, torch.tensor([True, False]))
    first = sup(logits[:1], target[:1])
    assert masked.item() == pytest.approx(first.item(), rel=1e-5)
    none = sup(logits, target, torch.tensor([False, False]))
    assert none.item() == 0.0


def test_supervised_loss_low_for_correct_prediction() -> None:
    target = (torch.rand(1, 3, 8, 8, 8) > 0.5).float()
    good = (target * 2 - 1) * 10
    sup = SupervisedLoss()
    assert sup(good, target).item() < 0.01
    assert sup(-good, target).item() > 1.0


def test_alpha_mixes_supervised_and_kd() -> None:
    t = _logits(2, 3, 6, 6, 6)
    s = _logits(2, 3, 6, 6, 6)
    target = (torch.rand(2, 3, 6, 6, 6) > 0.5).float()
    full = DistillationLoss(alpha=1.0)(s, t, target)
    assert full["loss"].item() == pytest.approx(SupervisedLoss()(s, target).item(), rel=1e-5)
    half = DistillationLoss(alpha=0.5, temperature=2.0)(s, t, target)
    expected = 0.5 * half["supervised"] + 0.5 * half["kd"]
    assert half["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # Unlabelled samples only feel the teacher.
    unl = DistillationLoss(alpha=0.5)(s, t, target, torch.tensor([False, False]))
    assert unl["supervised"].item() == 0.0
    with pytest.raises(ValueError):
        DistillationLoss(alpha=1.5)


def test_kd_dice_term_makes_a_missed_small_region_count() -> None:
    # The teacher finds a 2x2x2 "ET" in a 16^3 patch; the student finds nothing there but agrees
    # elsewhere. Voxel-averaged KL barely notices (8 of 4096 voxels); the Dice term does.
    t = torch.full((1, 3, 16, 16, 16), -12.0)
    t[:, 2, 7:9, 7:9, 7:9] = 12.0
    s = torch.full_like(t, -12.0)
    kl_only = DistillationLoss(alpha=0.0, temperature=1.0)(s, t)["kd"].item()
    with_dice = DistillationLoss(alpha=0.0, temperature=1.0, dice_weight=1.0)(s, t)["kd"].item()
    assert kl_only < 0.02
    # The only region the teacher finds is entirely missed: Dice loss about 1 (empty regions of
    # the teacher are left to the KL term).
    assert with_dice > kl_only + 0.9
    # Matching the teacher zeroes both terms.
    assert DistillationLoss(alpha=0.0, dice_weight=1.0)(t.clone(), t)["kd"].item() < 0.01
    with pytest.raises(ValueError):
        DistillationLoss(dice_weight=-1.0)


def test_attention_transfer_compares_where_encoders_look_across_widths_and_grids() -> None:
    from napari_brats_kd.training.losses import attention_transfer_loss

    teacher = torch.randn(2, 32, 8, 8, 8)
    # Same spatial attention up to scale and width: zero loss.
    same = teacher.pow(2).mean(1, keepdim=True).sqrt().repeat(1, 8, 1, 1, 1) * 3.0
    assert attention_transfer_loss([same], [teacher]).item() == pytest.approx(0.0, abs=1e-6)
    # A half-resolution student map is upsampled to the teacher's grid.
    student = torch.randn(2, 8, 4, 4, 4, requires_grad=True)
    loss = attention_transfer_loss([student], [teacher.requires_grad_(True)])
    assert 0.0 < loss.item() <= 4.0
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None  # the teacher is a constant


def test_attention_transfer_hooks_record_training_passes_only() -> None:
    from napari_brats_kd.errors import TrainingError
    from napari_brats_kd.models import build_model, student_config, teacher_config
    from napari_brats_kd.training.losses import AttentionTransfer

    student = build_model(student_config(preset="student-tiny"))
    teacher = build_model(teacher_config(arch="segresnet-halfres", init_filters=8)).eval()
    at = AttentionTransfer(student, teacher)
    assert at.n_stages == 3  # student-tiny has 3 encoder stages, the teacher 4: the first 3 pair
    x = torch.randn(1, 4, 32, 32, 32)
    student(x)  # outside recording (validation): nothing kept
    with pytest.raises(RuntimeError, match="without recording"):
        at()
    with at.recording():
        student(x)
        with torch.no_grad():
            teacher(x)
    loss = at()
    assert loss.item() > 0 and loss.requires_grad
    at.remove()
    with pytest.raises(TrainingError, match="SegResNet-family"):
        AttentionTransfer(torch.nn.Conv3d(4, 3, 1), teacher)


def test_label_correction_moves_only_the_teachers_mistakes_to_the_labels_side() -> None:
    from napari_brats_kd.training.losses import correct_teacher_logits

    target = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]).reshape(1, 1, 6, 1, 1)
    teacher = torch.tensor([3.0, -2.0, -4.0, 5.0, 0.0, 0.0]).reshape(1, 1, 6, 1, 1)
    fixed = correct_teacher_logits(teacher, target).flatten().tolist()
    # Right stays as it is; wrong keeps its confidence on the label's side; 0 (no decision) goes
    # just across to the label's side.
    assert fixed[:4] == [3.0, 2.0, -4.0, -5.0]
    assert fixed[4] > 0 > fixed[5] and abs(fixed[4]) < 0.01
    # Samples without labels keep the teacher's outputs.
    both = torch.cat([teacher, teacher]), torch.cat([target, target])
    fixed2 = correct_teacher_logits(*both, labelled=torch.tensor([True, False]))
    assert torch.equal(fixed2[1], teacher[0]) and fixed2[0].flatten().tolist()[:4] == fixed[:4]
    with pytest.raises(ValueError, match="shape"):
        correct_teacher_logits(teacher, target[:, :, :3])


def test_label_corrected_kd_never_pulls_the_student_against_the_labels() -> None:
    # The teacher is confidently wrong on half the voxels (it misses a region the labels hold).
    target = torch.zeros(1, 3, 8, 8, 8)
    target[:, :, :4] = 1.0
    teacher = torch.full_like(target, -6.0)  # "no tumour" everywhere
    student = torch.zeros_like(target, requires_grad=True)
    plain = DistillationLoss(alpha=0.0, temperature=2.0)(student, teacher, target)["loss"]
    (g_plain,) = torch.autograd.grad(plain, student)
    corrected = DistillationLoss(alpha=0.0, temperature=2.0, label_correction=True)
    (g_fixed,) = torch.autograd.grad(corrected(student, teacher, target)["loss"], student)
    # Gradient descent moves logits by -grad: plain KD pushes the tumour voxels towards
    # "background"; corrected KD pushes them towards the label, and the rest stays as it was.
    assert (g_plain[:, :, :4] > 0).all() and (g_fixed[:, :, :4] < 0).all()
    assert torch.allclose(g_fixed[:, :, 4:], g_plain[:, :, 4:])
    # A student that learnt the labels with the teacher's confidence is where corrected KD rests.
    rest = torch.where(target > 0, 6.0, -6.0)
    assert corrected(rest, teacher, target)["kd"].item() < 1e-6
    # Without labels there is nothing to correct by: the teacher's outputs are the target.
    assert corrected(teacher.clone(), teacher)["kd"].item() < 1e-6
