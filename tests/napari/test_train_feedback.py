"""The Train dock's feedback without a display: the status line, the plot's points, the table."""

from __future__ import annotations

import numpy as np

from napari_brats_kd._napari.compare import difference_labels
from napari_brats_kd._napari.train_feedback import (
    RunFeedback,
    format_seconds,
    format_validation,
)


class Plot:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def add_step(self, *args):
        self.calls.append(("step", *args))

    def add_epoch(self, *args):
        self.calls.append(("epoch", *args))

    def add_validation(self, *args):
        self.calls.append(("val", *args))


def test_status_line_counts_the_eta_from_the_first_step():
    plot = Plot()
    feedback = RunFeedback(plot)
    feedback.reset(4)
    assert feedback.event({"type": "start", "start_epoch": 1, "epochs": 5}) == (
        "Epoch 2/5 · preparing first step..."
    )
    assert feedback.progress(1, 11, "step 1", now=100.0) == "Epoch 2/5 · step 1/11"
    # The engine sends each step's event before its progress call: the loss comes from the event.
    assert feedback.event({"type": "step", "epoch": 2, "step": 3, "loss": 0.412}) is None
    line = feedback.progress(3, 11, "epoch 2/5 loss 9.9999", now=110.0)
    assert line == "Epoch 2/5 · step 3/11 · ETA 40 s · loss 0.4120"
    assert feedback.event({"type": "step", "epoch": 3, "step": 4, "loss": 0.5}) is None
    assert feedback.epoch == 3 and plot.calls == [("step", 3, 0.412), ("step", 4, 0.5)]
    assert feedback.event({"type": "val_progress", "epoch": 3, "done": 1, "total": 2}) == (
        "Epoch 3/5 · validating case 1/2"
    )
    feedback.event({"type": "val", "epoch": 3, "dice": {"WT": 0.5}})
    assert plot.calls[-1] == ("val", 3, {"WT": 0.5})
    assert feedback.event({"type": "note", "message": "Writing..."}) == "Writing..."


def test_times_and_the_validation_table():
    assert [format_seconds(s) for s in (42, 187, 7500, float("inf"))] == [
        "42 s",
        "3 min 07 s",
        "2 h 05 min",
        "?",
    ]
    assert format_validation([]).startswith("No validation yet")
    rows = [
        {"epoch": e, "val_mean_dice": 0.1 * e, "val_dice_WT": 0.1, "val_dice_TC": 0.2,
         "val_dice_ET": 0.3}
        for e in range(1, 10)
    ]  # fmt: skip
    table = format_validation(rows, best_epoch=2, last=3).splitlines()
    assert [line.split()[0] for line in table[2:]] == ["2*", "7", "8", "9"]


def test_difference_labels():
    new = np.array([0, 1, 2, 0, 4])
    ref = np.array([0, 0, 2, 1, 1])
    assert difference_labels(new, ref).tolist() == [0, 1, 0, 2, 3]


def test_a_stopped_run_offers_its_last_checkpoint_once_an_epoch_is_done(tmp_path):
    from types import SimpleNamespace

    from napari_brats_kd._napari.train_feedback import checkpoint_to_offer, finished_status

    last, best = tmp_path / "last.safetensors", tmp_path / "best.safetensors"
    last.write_bytes(b"weights")

    def result(stopped: bool, epochs_done: int, best_checkpoint=best):
        return SimpleNamespace(
            stopped=stopped, epochs_done=epochs_done, last_checkpoint=last,
            best_checkpoint=best_checkpoint, best_epoch=1, run_dir=tmp_path,
        )  # fmt: skip

    assert checkpoint_to_offer(result(False, 3)) == best
    assert checkpoint_to_offer(result(False, 3, best_checkpoint=None)) == last
    assert checkpoint_to_offer(result(True, 2)) == last  # what it learnt so far, not the best
    assert checkpoint_to_offer(result(True, 0)) is None  # stopped before an epoch ended
    line = finished_status(result(True, 2), "run-1")
    assert "Resume continues" in line and "Segment current case" in line
    assert "Segment current case" not in finished_status(result(True, 0))
