"""Fixtures of the training tests: phantom sites A and B, and a tiny teacher trained on site A
(module scope: each test file that asks for them makes its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from _training_runs import _teacher_cfg
from napari_brats_kd.training import train_teacher


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from napari_brats_kd.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "siteA", n=3, seed=10, spacing=4)
    write_phantom_dataset(root / "siteB", n=2, seed=40, spacing=4, site="B")
    return root


@pytest.fixture(scope="module")
def teacher_ckpt(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    out = run.parent / "teacher.safetensors"
    cfg = _teacher_cfg(data_dir, run, "epochs=2", f"out={out}")
    events: list[dict] = []
    result = train_teacher(cfg, on_event=events.append)
    assert result.out == out and out.is_file()
    types = [e["type"] for e in events]
    assert types.count("step") == 2 and types.count("epoch") == 2 and types.count("val") == 2
    # "start" comes first (so UIs show "Epoch 1/2" before the first step), once.
    assert types[0] == "start" and types.count("start") == 1
    start = events[0]
    assert (start["epochs"], start["start_epoch"], start["steps_per_epoch"]) == (2, 0, 1)
    assert (start["n_train"], start["n_val"], start["kind"]) == (2, 1, "train")
    assert start["run_dir"] == str(run)
    # One val_progress per validation case, just before each epoch's "val" summary.
    progress = [e for e in events if e["type"] == "val_progress"]
    assert [(e["epoch"], e["done"], e["total"]) for e in progress] == [(1, 1, 1), (2, 1, 1)]
    assert types.index("val_progress") < types.index("val")
    return out
