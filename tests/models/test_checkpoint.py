"""Self-describing checkpoints, MONAI bundle import and the model registry."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from _bundles import write_bundle
from _model_helpers import ship_students, tiny_student
from napari_brats_kd.errors import CheckpointError
from napari_brats_kd.models import (
    available_models,
    build_model,
    clear_session_models,
    load_bundle,
    load_checkpoint,
    register_model,
    resolve_model,
    save_checkpoint,
    teacher_config,
)
from napari_brats_kd.models import registry as reg
from napari_brats_kd.models.checkpoint import META_CONFIG


@pytest.fixture(autouse=True)
def _fresh_registry():
    clear_session_models()
    yield
    clear_session_models()


def _outputs(model, channels=4, size=16):
    torch.manual_seed(0)
    x = torch.randn(1, channels, size, size, size)
    with torch.inference_mode():
        return model.eval()(x)


def test_round_trip_gives_identical_outputs(tmp_path):
    loaded = tiny_student(("t1c", "flair"))
    loaded.config.provenance = {"seed": 0, "epochs": 1}
    path = save_checkpoint(tmp_path / "student", loaded.model, loaded.config, extra={"epoch": 1})
    assert path.name == "student.safetensors"
    sidecar = json.loads((tmp_path / "student.json").read_text())
    assert sidecar["config"]["modalities"] == ["t1c", "flair"]
    again = load_checkpoint(path)
    assert again.config == loaded.config
    assert again.extra == {"epoch": 1}
    assert not again.model.training
    assert torch.equal(_outputs(again.model, 2), _outputs(loaded.model, 2))
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file
    # Readable like any file the user writes (not mkstemp's 0600): shared installs and clusters.
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_fp16_file_is_half_the_size_and_loads_into_float32(tmp_path):
    loaded = tiny_student()
    full = save_checkpoint(tmp_path / "full", loaded.model, loaded.config)
    half = save_checkpoint(tmp_path / "half", loaded.model, loaded.config, dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    again = load_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in again.model.parameters())
    ref, out = _outputs(loaded.model), _outputs(again.model)
    assert torch.allclose(out, ref, atol=1e-2 * float(ref.abs().max()))


def test_wrapped_model_is_saved_without_prefix(tmp_path):
    loaded = tiny_student()
    wrapped = torch.nn.DataParallel(loaded.model)  # adds "module." to every key
    path = save_checkpoint(tmp_path / "w.safetensors", wrapped, loaded.config)
    assert not any(k.startswith("module.") for k in load_file(path))
    assert torch.equal(_outputs(load_checkpoint(path).model), _outputs(loaded.model))


def test_corrupt_and_truncated_files_raise(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(CheckpointError, match=r"bad.safetensors"):
        load_checkpoint(bad)
    loaded = tiny_student()
    good = save_checkpoint(tmp_path / "good", loaded.model, loaded.config)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut.safetensors"):
        load_checkpoint(cut)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_checkpoint(tmp_path / "nothing.safetensors")


def test_file_without_config_raises(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=r"no napari-brats-kd model config"):
        load_checkpoint(path)


def _rewrite(src, dst, state=None, config_json=None):
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    state = load_file(src) if state is None else state
    if config_json is not None:
        meta[META_CONFIG] = config_json
    save_file(state, str(dst), metadata=meta)
    return dst


def test_missing_unexpected_and_misshaped_weights_raise(tmp_path):
    loaded = tiny_student()
    path = save_checkpoint(tmp_path / "s", loaded.model, loaded.config)
    state = load_file(path)
    key = sorted(state)[0]
    missing = _rewrite(
        path, tmp_path / "missing.safetensors", {k: v for k, v in state.items() if k != key}
    )
    with pytest.raises(CheckpointError, match=f"missing weights {key}"):
        load_checkpoint(missing)
    extra = _rewrite(path, tmp_path / "extra.safetensors", {**state, "head.bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected weights head.bias"):
        load_checkpoint(extra)
    # The config claims a wider network than the weights hold.
    wider = loaded.config.to_dict()
    wider["arch_args"] = {**wider["arch_args"], "init_filters": 16}
    shapes = _rewrite(path, tmp_path / "shapes.safetensors", config_json=json.dumps(wider))
    with pytest.raises(CheckpointError, match=r"wrong shapes"):
        load_checkpoint(shapes)


def test_unknown_architecture_in_file_raises(tmp_path):
    loaded = tiny_student()
    path = save_checkpoint(tmp_path / "s", loaded.model, loaded.config)
    d = loaded.config.to_dict()
    d["arch"] = "mystery-net"
    odd = _rewrite(path, tmp_path / "odd.safetensors", config_json=json.dumps(d))
    with pytest.raises(CheckpointError, match=r"odd.safetensors.*Unknown architecture"):
        load_checkpoint(odd)


def test_bundle_folder_is_loaded_with_its_network_def(tmp_path):
    args = {"blocks_down": [1, 1], "blocks_up": [1], "init_filters": 8, "dropout_prob": 0.2}
    cfg = teacher_config(**args)
    net = build_model(cfg).eval()
    bundle = write_bundle(tmp_path / "brats_mri_segmentation", net, args)
    loaded = load_bundle(bundle)
    assert loaded.config.arch == "segresnet"
    assert loaded.config.modalities == ("t1c", "t1", "t2", "flair")
    assert loaded.config.roi_size == (96, 96, 64)
    assert "0.5.3" in loaded.config.description
    assert torch.equal(_outputs(loaded.model), _outputs(net))
    # resolve_model dispatches folders and .pt files to the bundle loader
    assert torch.equal(_outputs(resolve_model(str(bundle)).model), _outputs(net))


def test_bare_model_pt_defaults_to_the_bundle_architecture(tmp_path):
    net = build_model(teacher_config()).eval()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    loaded = load_bundle(tmp_path / "model.pt")
    assert loaded.config.arch_args["init_filters"] == 16
    assert torch.equal(_outputs(loaded.model), _outputs(net))


def test_bundle_with_pickled_module_is_refused(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")  # a whole pickled module
    with pytest.raises(CheckpointError, match=r"pickled objects are refused"):
        load_bundle(tmp_path / "model.pt")
    # Junk named .pt (a text file, a Git LFS pointer) is a short CheckpointError, whatever
    # exception torch's unpickler raises, never a traceback or a page of torch's advice.
    for name, text in (
        ("notes.pt", "not weights at all\n"),
        ("lfs.pt", "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(CheckpointError, match=rf"{name} is not a PyTorch weights file") as e:
            load_bundle(tmp_path / name)
        assert len(str(e.value)) < 400 and "\x1b" not in str(e.value)
    empty = tmp_path / "empty_bundle"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"no models/model.pt"):
        load_bundle(empty)


def test_no_shipped_student_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(reg, "INDEX_FILE", tmp_path / "index.json")
    (tmp_path / "index.json").write_text(json.dumps({"models": []}))
    with pytest.raises(CheckpointError, match=r"No shipped student weights.*Train one"):
        resolve_model("student")
    with pytest.raises(CheckpointError, match=r"neither a known model name"):
        resolve_model("no-such-model")


def test_shipped_index_is_a_file_drop(tmp_path, monkeypatch):
    loaded = tiny_student()
    save_checkpoint(tmp_path / "student-v1", loaded.model, loaded.config)
    index = {
        "models": [
            {
                "name": "student-v1",
                "file": "student-v1.safetensors",
                "role": "student",
                "description": "test student",
            }
        ]
    }
    (tmp_path / "index.json").write_text(json.dumps(index))
    monkeypatch.setattr(reg, "INDEX_FILE", tmp_path / "index.json")
    names = [(m.name, m.role, m.source) for m in available_models()]
    assert ("student-v1", "student", "shipped") in names
    assert torch.equal(_outputs(resolve_model("student").model), _outputs(loaded.model))
    assert resolve_model("student-v1").config == loaded.config


def test_registered_models_are_listed_and_resolved(tmp_path):
    loaded = tiny_student()
    path = save_checkpoint(tmp_path / "mine", loaded.model, loaded.config)
    info = register_model(path, name="my-distilled")
    assert info.source == "session" and info.role == "student"
    assert "my-distilled" in [m.name for m in available_models()]
    assert resolve_model("my-distilled").config == loaded.config
    register_model(loaded, name="in-memory")
    assert resolve_model("in-memory") is loaded


FOUR = ("t1c", "t1", "t2", "flair")


def test_the_default_student_falls_back_to_one_that_fits_the_scans(tmp_path, monkeypatch):
    from napari_brats_kd.models import resolve_model_for

    ship_students(tmp_path, monkeypatch, {"student": FOUR, "student-t1cflair": ("t1c", "flair")})
    loaded, why = resolve_model_for("student", FOUR)
    assert loaded.config.name == "student" and why is None
    loaded, why = resolve_model_for("student", ("flair", "t1c"))
    assert loaded.config.modalities == ("t1c", "flair")
    assert why == "used student-t1cflair (T1c, FLAIR): the case has no T1, T2, which student needs"
    # A model asked for by name is taken as it is: the caller says what the case lacks.
    loaded, why = resolve_model_for("student-t1cflair", FOUR)
    assert loaded.config.name == "student-t1cflair" and why is None


def test_no_fitting_student_lists_what_each_one_needs(tmp_path, monkeypatch):
    from napari_brats_kd.errors import CaseError
    from napari_brats_kd.models import resolve_model_for

    ship_students(tmp_path, monkeypatch, {"student": FOUR, "student-t1cflair": ("t1c", "flair")})
    with pytest.raises(CaseError) as err:
        resolve_model_for("student", ("t1c",))
    assert str(err.value).startswith(
        "No shipped student fits a case with T1c: student needs T1c, T1, T2, FLAIR; "
        "student-t1cflair needs T1c, FLAIR."
    )
