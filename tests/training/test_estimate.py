"""The expected duration of a run, before it starts (the Train dock's "Expected" line)."""

from __future__ import annotations

import math

import pytest

from napari_brats_kd._napari.train_estimate import describe
from napari_brats_kd.training import load_config
from napari_brats_kd.training.estimate import estimate_run, planned_steps


def _config(**overrides):
    settings = {
        "data_dir": "unused", "model.kind": "student", "model.arch": "student-tiny",
        "patch_size": [16, 16, 16], "batch_size": 2, "samples_per_case": 1, "device": "cpu",
        "epochs": 5, "val_fraction": 0.2,
    }  # fmt: skip
    return load_config("teacher", {**settings, **overrides})


@pytest.mark.parametrize(
    ("n_cases", "overrides", "steps"),
    [
        (10, {}, 5 * math.ceil(8 / 2)),  # 2 of 10 validate, 8 train in batches of 2
        (1, {}, 5),  # a single case trains (nothing to validate)
        (10, {"steps_per_epoch": 25}, 5 * 25),  # a fixed epoch length wins
    ],
)
def test_planned_steps_are_the_engines(n_cases, overrides, steps) -> None:
    assert planned_steps(_config(**overrides), n_cases) == steps


def test_estimate_times_one_step_of_the_network_and_says_it() -> None:
    estimate = estimate_run(_config(), 10)
    assert estimate.steps == 20 and estimate.device == "cpu"
    assert 0 < estimate.seconds_per_step < 30
    assert estimate.seconds == pytest.approx(20 * estimate.seconds_per_step)
    line = describe(600, 2.5, "cpu")
    assert line.startswith("Expected: about 25 min 00 s of training (600 steps x 2.5 s")
    assert "validation add to it" in line
