"""The scripts in examples/ run as a user runs them, from a fresh clone, and do what they say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, timeout: float) -> str:
    # The virtual environment's scripts (brats-kd) first on PATH, as after activating it.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_segment_console_writes_labels_on_the_case_grid(tmp_path: Path) -> None:
    from napari_brats_kd.io import load_segmentation
    from napari_brats_kd.phantom import make_phantom

    out = _run([sys.executable, str(EXAMPLES / "segment_console.py")], tmp_path, timeout=300)
    volumes = dict(re.findall(r"^\s+(WT|TC|ET): ([\d.]+) ml$", out, flags=re.M))
    assert set(volumes) == {"WT", "TC", "ET"}
    # The regions nest: ET inside TC inside WT.
    assert float(volumes["WT"]) >= float(volumes["TC"]) >= float(volumes["ET"]) > 0
    seg = load_segmentation(tmp_path / "segmentation.nii.gz")
    case = make_phantom(seed=0, spacing=1.0)  # the case the example segments without CASE_DIR
    assert seg.geometry_matches(case.reference)
    assert set(np.unique(seg.data)) <= {0, 1, 2, 4}
    # The shipped student finds the phantom's tumour where it is.
    pred, truth = seg.data > 0, case.seg.data > 0
    assert 2 * (pred & truth).sum() / (pred.sum() + truth.sum()) > 0.9


def test_segment_cli_segments_a_case_and_a_folder_and_exports(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = _run(["bash", str(EXAMPLES / "segment_cli.sh")], tmp_path, timeout=600)
    found = re.findall(r"^outputs in (.+)$", out, flags=re.M)
    assert found, f"no 'outputs in' line:\n{out[-3000:]}"
    work = Path(found[-1])
    try:
        segs = sorted(p.name for p in (work / "segs").iterdir())
        assert segs == [f"BraTS2021_P0950{i}_seg.nii.gz" for i in range(3)]
        assert (work / "one_seg.nii.gz").is_file()
        # ONNX and TorchScript each agree with PyTorch.
        assert out.count("label agreement 100.0000 %") == 2
        assert (work / "model.onnx").stat().st_size > 0 and (work / "model_ts.pt").is_file()
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def test_distill_example_trains_a_teacher_and_a_two_modality_student(tmp_path: Path) -> None:
    from napari_brats_kd.labels import BUNDLE_MODALITY_ORDER
    from napari_brats_kd.models import load_checkpoint

    out = _run([sys.executable, str(EXAMPLES / "distill.py"), str(tmp_path)], tmp_path, timeout=900)
    assert re.search(r"teacher: best mean val Dice [\d.]+ ->", out)
    assert re.search(r"student: best mean val Dice [\d.]+ ->", out)
    student = load_checkpoint(tmp_path / "student.safetensors").config
    assert student.modalities == ("t1c", "flair")
    assert student.provenance["kind"] == "distill"
    teacher = load_checkpoint(tmp_path / "teacher.safetensors").config
    assert teacher.modalities == BUNDLE_MODALITY_ORDER  # all four, in the MONAI bundle's order
    assert (tmp_path / "student_run" / "log.csv").read_text().count("\n") == 6  # header + 5 epochs
