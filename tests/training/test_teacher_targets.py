"""training/teacher_targets.py: cached and online teacher targets."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from _training_runs import _distill_cfg
from napari_brats_kd.errors import TrainingError
from napari_brats_kd.models import load_checkpoint
from napari_brats_kd.training import distill, load_config

torch.set_num_threads(2)


@pytest.mark.slow
def test_cached_teacher_targets_are_the_teachers_outputs_and_are_reused(
    data_dir, teacher_ckpt, tmp_path, monkeypatch
) -> None:
    import numpy as np

    import napari_brats_kd.predict_torch as predict_torch
    from napari_brats_kd.inference import brain_bbox
    from napari_brats_kd.predict_torch import predict_probabilities
    from napari_brats_kd.training.data import LoadCased

    cache = tmp_path / "cache"
    notes: list[str] = []

    def on_event(e: dict) -> None:
        if e["type"] == "note":
            notes.append(e["message"])

    cfg = _distill_cfg(
        data_dir, teacher_ckpt, tmp_path / "run", "teacher_targets=cached", f"cache_dir={cache}"
    )
    result = distill(cfg, on_event=on_event)
    assert load_checkpoint(result.last_checkpoint).config.provenance["teacher_targets"] == "cached"
    assert result.history[0]["kd"] > 0
    # The two training cases of site A and the two unlabelled site-B cases, each once.
    files = sorted(cache.glob("teacher_targets/*/*.npy"))
    assert len(files) == 4 and notes[-1] == "Caching teacher outputs: case 4/4"
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    case_id = split["train"][0]
    stored = np.load(next(f for f in files if f.stem.rsplit("-", 1)[0] == case_id))
    assert stored.dtype == np.float16
    # What the teacher says about the case, through the segmentation path.
    teacher = load_checkpoint(teacher_ckpt)
    loader = LoadCased(teacher.config.modalities, min_size=[16, 16, 16])
    image = loader({"case_id": case_id, "path": str(data_dir / "siteA" / case_id)})["image"]
    assert stored.shape == (3, *image.shape[1:])
    box = brain_bbox(image)
    probs, _ = predict_probabilities(teacher, np.ascontiguousarray(image[(slice(None), *box)]))
    stored_probs = 1 / (1 + np.exp(-stored[(slice(None), *box)].astype(np.float32)))
    assert np.abs(stored_probs - probs).max() < 2e-3
    outside = np.ones(image.shape[1:], bool)
    outside[box] = False
    assert (stored[:, outside] < -10).all()  # background, not "unsure"

    # A second run with the same teacher reads the files instead of running the teacher.
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran again")

    monkeypatch.setattr(predict_torch, "predict_probabilities", no_teacher)
    again = distill(replace(cfg, run_dir=str(tmp_path / "run2")))
    assert again.history[0]["kd"] > 0
    assert sorted(cache.glob("teacher_targets/*/*.npy")) == files


@pytest.mark.slow
def test_online_teacher_targets_run_the_teacher_on_each_patch(
    data_dir, teacher_ckpt, tmp_path
) -> None:
    cache = tmp_path / "cache"
    cfg = _distill_cfg(
        data_dir, teacher_ckpt, tmp_path / "run", "teacher_targets=online", f"cache_dir={cache}"
    )
    result = distill(cfg)
    assert load_checkpoint(result.last_checkpoint).config.provenance["teacher_targets"] == "online"
    assert result.history[0]["kd"] > 0
    assert not list(cache.glob("teacher_targets/*/*.npy"))
    with pytest.raises(TrainingError, match="teacher_targets must be one of auto, online, cached"):
        load_config("distill", ["teacher_targets=sometimes"])


@pytest.mark.slow
def test_stop_while_caching_keeps_the_finished_cases(data_dir, teacher_ckpt, tmp_path) -> None:
    from napari_brats_kd.errors import Cancelled
    from napari_brats_kd.training.data import LoadCased, discover_cases
    from napari_brats_kd.training.teacher_targets import cache_teacher_targets

    teacher = load_checkpoint(teacher_ckpt)
    entries = discover_cases(data_dir / "siteA")
    out = tmp_path / "targets"
    loader = LoadCased(teacher.config.modalities, require_label=False, use_label=False)
    with pytest.raises(Cancelled, match="1 of 3 cases done; they are kept"):
        cache_teacher_targets(
            teacher, entries, loader, out, None, torch.device("cpu"),
            should_stop=lambda: len(list(out.glob("*.npy"))) >= 1,
        )  # fmt: skip
    assert [p.stem.rsplit("-", 1)[0] for p in out.glob("*.npy")] == [entries[0].case_id]
    assert not list(out.glob(".*"))  # no half-written file left
    # The next pass computes only the missing cases.
    assert cache_teacher_targets(teacher, entries, loader, out, None, torch.device("cpu")) == 2
    assert cache_teacher_targets(teacher, entries, loader, out, None, torch.device("cpu")) == 0
    # Another case with the same id (e.g. in the unlabelled folder), or a case whose images
    # changed, gets outputs of its own rather than another scan's.
    import os

    from napari_brats_kd.training.data import CaseEntry

    twin = shutil.copytree(entries[0].path, tmp_path / "other" / entries[0].path.name)
    twin_entry = CaseEntry(entries[0].case_id, Path(twin), entries[0].modalities, False)
    assert cache_teacher_targets(teacher, [twin_entry], loader, out, None, torch.device("cpu")) == 1
    from napari_brats_kd.naming import case_files

    found = case_files(entries[1].path)
    seg, flair = found.seg, found.images["flair"]
    os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 10**9))
    assert cache_teacher_targets(teacher, entries, loader, out, None, torch.device("cpu")) == 0
    os.utime(flair, ns=(flair.stat().st_atime_ns, flair.stat().st_mtime_ns + 10**9))
    assert cache_teacher_targets(teacher, entries, loader, out, None, torch.device("cpu")) == 1
    assert len(list(out.glob("*.npy"))) == 5


def test_a_step_on_cached_targets_equals_a_step_with_the_online_teacher() -> None:
    import copy

    from napari_brats_kd.training.engine import train_step
    from napari_brats_kd.training.losses import DistillationLoss, SupervisedLoss

    torch.manual_seed(0)
    model, teacher = torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.Conv3d(2, 3, 3, padding=1)
    teacher.eval()
    image = torch.randn(2, 2, 8, 8, 8)
    batch = {
        "image": image,
        "label": (torch.rand(2, 3, 8, 8, 8) > 0.7).to(torch.uint8),
        "labelled": torch.tensor([True, False]),
    }
    loss = DistillationLoss(0.5, 2.0, SupervisedLoss(), dice_weight=1.0)
    cpu = torch.device("cpu")
    online, cached = copy.deepcopy(model), copy.deepcopy(model)
    opt_online = torch.optim.SGD(online.parameters(), lr=0.1)
    opt_cached = torch.optim.SGD(cached.parameters(), lr=0.1)
    parts_online = train_step(online, opt_online, loss, batch, cpu, teacher=teacher)
    with torch.no_grad():
        targets = teacher(image)
    parts_cached = train_step(cached, opt_cached, loss, {**batch, "teacher": targets}, cpu)
    assert parts_cached == pytest.approx(parts_online)
    assert parts_cached["kd"] > 0
    for a, b in zip(online.parameters(), cached.parameters(), strict=True):
        assert torch.allclose(a, b)
