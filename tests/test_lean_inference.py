"""The lean inference path: shipped ONNX graphs, the user cache, no torch, same labels."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from _model_helpers import make_case, tiny_student
from napari_brats_kd import onnx_graphs
from napari_brats_kd.errors import Cancelled
from napari_brats_kd.inference import segment
from napari_brats_kd.models import load_checkpoint, save_checkpoint
from napari_brats_kd.models.registry import INDEX_FILE, WEIGHTS_DIR, choose_model

SHIPPED = json.loads(INDEX_FILE.read_text())["models"]


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(onnx_graphs.CACHE_ENV, str(folder))
    onnx_graphs.clear_sessions()
    yield folder
    onnx_graphs.clear_sessions()


@pytest.fixture(scope="module")
def case():
    return make_case()


@pytest.mark.parametrize("entry", SHIPPED, ids=[e["name"] for e in SHIPPED])
def test_each_shipped_model_carries_its_graph_and_it_matches_pytorch(entry) -> None:
    import onnxruntime as ort
    import torch

    from napari_brats_kd.export import check_input

    weights = WEIGHTS_DIR / entry["file"]
    graph = onnx_graphs.shipped_graph_path(weights)
    assert graph.is_file(), f"{graph.name} missing: run scripts/package_*weights.py"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta[onnx_graphs.META_WEIGHTS_SHA] == onnx_graphs.file_sha256(weights)
    loaded = load_checkpoint(weights)
    x = check_input(loaded)
    with torch.inference_mode():
        ref = torch.sigmoid(loaded.model(x)).numpy()
    out = 1 / (1 + np.exp(-session.run(None, {"image": x.numpy()})[0]))
    assert np.abs(out - ref).max() < 1e-3
    assert ((out > 0.5) == (ref > 0.5)).mean() > 0.9999


def test_shipped_student_segments_without_torch_or_monai(tmp_path, fresh_cache) -> None:
    from napari_brats_kd.phantom import write_phantom_dataset

    write_phantom_dataset(tmp_path / "data", n=1, spacing=3.0)
    case_dir = next(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    out = tmp_path / "seg.nii.gz"
    code = (
        "import sys\n"
        "from napari_brats_kd.cli import main\n"
        f"rc = main(['segment', {str(case_dir)!r}, '-o', {str(out)!r}])\n"
        "heavy = sorted(m for m in ('torch', 'monai') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert "onnxruntime" in proc.stdout and out.is_file()
    assert not fresh_cache.exists(), "a shipped model must not need the cache"


def test_onnx_labels_equal_pytorch_labels(case) -> None:
    lean = segment(case, "student", device="cpu")
    torch_run = segment(case, "student", device="cpu", backend="torch")
    assert lean.backend == "onnxruntime" and torch_run.backend == "torch"
    differ = int((lean.labels != torch_run.labels).sum())
    assert differ <= max(5, lean.labels.size // 100_000), differ


@pytest.mark.slow
def test_onnx_tta_equals_pytorch_tta(case) -> None:
    lean = segment(case, "student", device="cpu", tta=True, return_probabilities=True)
    ref = segment(
        case, "student", device="cpu", tta=True, backend="torch", return_probabilities=True
    )
    assert lean.n_forward == ref.n_forward == 8
    assert np.abs(lean.probabilities - ref.probabilities).max() < 1e-3


def test_a_user_checkpoint_is_exported_once_then_read_from_the_cache(
    case, tmp_path, fresh_cache
) -> None:
    student = tiny_student()
    ckpt = save_checkpoint(tmp_path / "mine", student.model, student.config)
    first = segment(case, str(ckpt), device="cpu")
    assert first.backend == "onnxruntime"
    assert any("exported" in note for note in first.notes)
    cached = sorted(fresh_cache.glob("onnx/*.onnx"))
    assert len(cached) == 1 and onnx_graphs.file_sha256(ckpt) in cached[0].name
    onnx_graphs.clear_sessions()  # as a new process would
    again = segment(case, str(ckpt), device="cpu")
    assert not any("exported" in note for note in again.notes)
    assert np.array_equal(first.labels, again.labels)
    # A later change to the weights is a new hash, so a new graph: never stale results.
    other = tiny_student(seed=1)
    save_checkpoint(ckpt, other.model, other.config)
    changed = segment(case, str(ckpt), device="cpu")
    assert any("exported" in note for note in changed.notes)
    assert len(sorted(fresh_cache.glob("onnx/*.onnx"))) == 2


def test_a_damaged_cached_graph_is_made_again(case, tmp_path, fresh_cache) -> None:
    student = tiny_student()
    ckpt = save_checkpoint(tmp_path / "mine", student.model, student.config)
    good = segment(case, str(ckpt), device="cpu")
    graph = onnx_graphs.cached_graph_path(onnx_graphs.file_sha256(ckpt))
    graph.write_bytes(graph.read_bytes()[:1000])  # truncated, as by a full disk
    onnx_graphs.clear_sessions()
    again = segment(case, str(ckpt), device="cpu")
    assert np.array_equal(good.labels, again.labels)
    assert graph.stat().st_size > 1000


def test_a_graph_beside_other_weights_is_not_used(case, tmp_path, fresh_cache) -> None:
    from napari_brats_kd.export import write_graph

    a, b = tiny_student(seed=0), tiny_student(seed=1)
    ckpt_a = save_checkpoint(tmp_path / "a", a.model, a.config)
    write_graph(load_checkpoint(ckpt_a), ckpt_a)
    ckpt_b = save_checkpoint(tmp_path / "b", b.model, b.config)
    (tmp_path / "a.onnx").rename(tmp_path / "b.onnx")  # b's weights, a's graph
    lean = segment(case, str(ckpt_b), device="cpu", return_probabilities=True)
    ref = segment(case, str(ckpt_b), device="cpu", backend="torch", return_probabilities=True)
    assert any("exported" in note for note in lean.notes)  # b got a graph of its own
    assert np.abs(lean.probabilities - ref.probabilities).max() < 1e-4


def test_an_unwritable_cache_still_segments_and_says_so(case, tmp_path, monkeypatch) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(onnx_graphs.CACHE_ENV, str(blocker))
    onnx_graphs.clear_sessions()
    student = tiny_student()
    ckpt = save_checkpoint(tmp_path / "mine", student.model, student.config)
    result = segment(case, str(ckpt), device="cpu")
    onnx_graphs.clear_sessions()
    assert result.backend == "onnxruntime"
    assert any("could not keep" in note and onnx_graphs.CACHE_ENV in note for note in result.notes)


@pytest.mark.slow
def test_cancel_stops_a_running_pass_within_a_fraction_of_a_second() -> None:
    model = onnx_graphs.onnx_model(choose_model("teacher"))
    x = np.random.default_rng(0).standard_normal((1, 4, 128, 128, 128), np.float32)
    t0 = time.perf_counter()
    model.run(x)
    one_pass = time.perf_counter() - t0
    asked: list[float] = []

    def stop() -> bool:
        if not asked:
            asked.append(time.perf_counter())
        return True

    t0 = time.perf_counter()
    with pytest.raises(Cancelled):
        model.run(x, should_stop=stop)
    waited = time.perf_counter() - asked[0]
    assert waited < max(0.5, one_pass / 3), (waited, one_pass)


def test_a_cpu_only_torch_needs_no_accelerator_check() -> None:
    import importlib.metadata

    from napari_brats_kd.device import may_have_accelerator

    if "+cpu" not in importlib.metadata.version("torch"):
        pytest.skip("a torch build with GPU support: the answer depends on the machine")
    assert may_have_accelerator() is False


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(onnx_graphs.CACHE_ENV, str(tmp_path / "c"))
    assert onnx_graphs.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(onnx_graphs.CACHE_ENV)
    if sys.platform.startswith("linux"):
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert onnx_graphs.cache_dir() == tmp_path / "xdg" / "napari-brats-kd"


def test_a_broken_onnxruntime_falls_back_to_pytorch(case, monkeypatch) -> None:
    monkeypatch.setattr(onnx_graphs, "onnxruntime_available", lambda: False)
    result = segment(case, "student", device="cpu")
    assert result.backend == "torch"


def test_a_graph_that_cannot_be_made_is_tried_once_and_torch_runs(
    case, tmp_path, fresh_cache, monkeypatch
) -> None:
    from napari_brats_kd import export
    from napari_brats_kd.errors import CheckpointError

    calls = []

    def failing_export(*args, **kwargs):
        calls.append(1)
        raise CheckpointError("exporter cannot handle this network")

    monkeypatch.setattr(export, "graph_bytes", failing_export)
    student = tiny_student()
    ckpt = save_checkpoint(tmp_path / "mine", student.model, student.config)
    first = segment(case, str(ckpt), device="cpu")
    again = segment(case, str(ckpt), device="cpu")
    assert first.backend == again.backend == "torch" and len(calls) == 1
    assert any("onnxruntime unavailable" in note for note in first.notes)
