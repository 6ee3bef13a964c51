"""A full disk: every command fails in one line and never destroys an earlier good file.

The disk is a small tmpfs mounted for the test; where the machine does not allow mounting (not
root, no CAP_SYS_ADMIN), the tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nibabel as nib
import pytest

from _cli_helpers import assert_clean_error
from _model_helpers import tiny_student
from _training_settings import FAST, TINY


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB file system; ``fill(leave)`` fills it up to ``leave`` free bytes."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3M", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(disk: Path, leave: int) -> None:
    """Write filler files until about ``leave`` bytes remain free on ``disk``."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "ab") as fh:
        fh.write(b"\0" * max(free - leave, 0))


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory) -> Path:
    from napari_brats_kd.phantom import write_phantom_dataset

    return write_phantom_dataset(tmp_path_factory.mktemp("case"), n=1, seed=3, spacing=4)[0]


def test_export_on_a_full_disk_keeps_the_good_graph(small_disk, tmp_path, capsys) -> None:
    from napari_brats_kd.models import save_checkpoint

    loaded = tiny_student()
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", loaded.model, loaded.config)
    graph = small_disk / "tiny.onnx"
    from napari_brats_kd.cli import main

    assert main(["export", str(ckpt), "--onnx", str(graph)]) == 0
    good = graph.read_bytes()
    capsys.readouterr()
    fill(small_disk, leave=8 * 1024)
    assert_clean_error(["export", str(ckpt), "--onnx", str(graph)], capsys, "space")
    assert graph.read_bytes() == good
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "tiny.onnx"]


def test_phantoms_on_a_full_disk_leave_no_partial_file(small_disk, capsys) -> None:
    fill(small_disk, leave=150 * 1024)
    out = small_disk / "phantoms"
    assert_clean_error(["phantom", str(out), "--n", "3", "--spacing", "4"], capsys, "space")
    for path in out.rglob("*"):
        if path.is_file():  # what is there is whole
            assert not path.name.startswith("."), path
            nib.load(str(path)).get_fdata()


def test_a_segmentation_on_a_full_disk_fails_in_one_line(small_disk, case_folder, capsys):
    out = small_disk / "seg.nii.gz"
    out.write_bytes(b"an earlier result")
    fill(small_disk, leave=2 * 1024)
    argv = ["segment", str(case_folder), "-o", str(out), "--overwrite"]
    assert_clean_error(argv, capsys, "space")
    assert out.read_bytes() == b"an earlier result"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "seg.nii.gz"]


def test_training_on_a_full_disk_stops_cleanly(small_disk, tmp_path, capsys) -> None:
    from napari_brats_kd.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "data", n=3, seed=0, spacing=8)[0].parent
    fill(small_disk, leave=64 * 1024)
    argv = ["train", str(data), "--run-dir", str(small_disk / "run"), "--out", str(tmp_path / "t")]
    argv += ["--set", f"model.arch_args={json.dumps(TINY)}", "--set", "cache=none"]
    for setting in FAST:
        argv += ["--set", setting]
    assert_clean_error(argv, capsys, "space")
    leftovers = [p for p in (small_disk / "run").rglob(".*.tmp")]
    assert not leftovers
