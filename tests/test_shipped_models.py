"""The demo models that ship in the package: present, honest, small, and they segment."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from napari_brats_kd.inference import segment
from napari_brats_kd.labels import MODALITIES
from napari_brats_kd.metrics import evaluate_labels
from napari_brats_kd.models import available_models, resolve_model
from napari_brats_kd.models.registry import INDEX_FILE, WEIGHTS_DIR
from napari_brats_kd.phantom import make_phantom


def shipped() -> dict[str, dict]:
    return {e["role"]: e for e in json.loads(INDEX_FILE.read_text())["models"]}


def test_a_student_and_a_teacher_ship_with_model_cards():
    entries = shipped()
    assert set(entries) == {"student", "teacher"}
    listed = {(m.name, m.role) for m in available_models() if m.source == "shipped"}
    assert listed == {("student", "student"), ("teacher", "teacher")}
    for entry in entries.values():
        assert (WEIGHTS_DIR / entry["file"]).is_file()
        card = (WEIGHTS_DIR / entry["card"]).read_text()
        # The card says what the model is, what it was trained on and how well it does.
        for needed in ("not for clinical use", "phantom", "Training time", "Held-out metrics"):
            assert needed in card, f"{entry['card']} lacks {needed!r}"


def test_descriptions_say_demo_not_clinical():
    for role in ("student", "teacher"):
        loaded = resolve_model(role)
        for text in (loaded.config.description, shipped()[role]["description"]):
            assert "synthetic phantoms" in text and "not for clinical use" in text
        assert loaded.config.metrics["held_out_phantoms"]["all"]["n_cases"] >= 12


def test_the_package_stays_lean():
    student = WEIGHTS_DIR / shipped()["student"]["file"]
    teacher = WEIGHTS_DIR / shipped()["teacher"]["file"]
    assert student.stat().st_size < 5e6
    # The teacher is stored in fp16 (half the bytes) and loads back as fp32.
    with safe_open(str(teacher), framework="pt") as fh:
        dtypes = {fh.get_tensor(k).dtype for k in fh.keys()}
    assert {str(d) for d in dtypes} == {"torch.float16"}
    params = resolve_model("teacher").model.parameters()
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in params)


@pytest.fixture(scope="module")
def held_out_phantom():
    return make_phantom(9999, "A")  # a seed no shipped model was trained or tested on


# What the demo models do (their model cards): they find the whole tumour, the core and the
# enhancing rim; on this case, when shipped, the student scored WT / TC / ET Dice of 0.96 / 0.98 /
# 0.96 and the teacher 0.97 / 0.98 / 0.96. A regression to an empty map, an everywhere-tumour map
# or a model blind to TC / ET (as an early student was) fails here.
@pytest.mark.parametrize(("role", "floor"), [("student", 0.85), ("teacher", 0.85)])
def test_shipped_models_segment_a_held_out_phantom(held_out_phantom, role, floor):
    case = held_out_phantom
    result = segment(case, role, device="cpu")
    assert result.labels.shape == case.seg.data.shape
    assert set(resolve_model(role).config.modalities) == set(MODALITIES)
    scores = evaluate_labels(result.labels, case.seg.data, result.convention)
    for region in ("WT", "TC", "ET"):
        assert scores.dice[region] > floor, scores.dice
    assert 0.5 < result.volumes_ml["WT"] / float(np.count_nonzero(case.seg.data) / 1000) < 2


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_segment_defaults_resolve_to_the_shipped_weights(role):
    loaded = resolve_model(role)
    assert loaded.path is not None and loaded.path.parent == WEIGHTS_DIR
    assert loaded.config.name == role
