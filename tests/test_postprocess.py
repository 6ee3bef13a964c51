"""drop_far_unlikely_components: what it removes, what it keeps, and its wiring into segment()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _model_helpers import pointwise_model
from napari_brats_kd import orientation as orient
from napari_brats_kd.inference import segment
from napari_brats_kd.models import LoadedModel
from napari_brats_kd.postprocess import FAR_MM, drop_far_unlikely_components
from napari_brats_kd.volume import Case, Volume


def _scene(shape=(60, 40, 40)):
    """A 10^3 main lesion (labels 1/2/4, probability 0.95) near one end of a label map."""
    labels = np.zeros(shape, np.uint8)
    prob = np.zeros(shape, np.float32)
    labels[5:15, 15:25, 15:25] = 2
    labels[8:12, 18:22, 18:22] = 4
    prob[5:15, 15:25, 15:25] = 0.95
    return labels, prob


def _add_blob(labels, prob, x0, p, size=3, label=2):
    sl = (slice(x0, x0 + size), slice(18, 18 + size), slice(18, 18 + size))
    labels[sl] = label
    prob[sl] = p
    return sl


def test_far_doubtful_component_is_dropped_and_the_lesion_kept():
    labels, prob = _scene()
    blob = _add_blob(labels, prob, 45, p=0.6)  # 30 voxels (mm) beyond the lesion
    out, dropped = drop_far_unlikely_components(labels, prob)
    assert not out[blob].any()
    np.testing.assert_array_equal(out[:20], labels[:20])
    assert [(d.voxels, round(d.confidence, 2)) for d in dropped] == [(27, 0.6)]
    assert labels[blob].all()  # the input is not changed


def test_confident_satellite_of_a_multifocal_tumour_is_kept():
    labels, prob = _scene()
    _add_blob(labels, prob, 45, p=0.9)
    out, dropped = drop_far_unlikely_components(labels, prob)
    assert out is labels and dropped == []


def test_doubtful_component_near_the_lesion_is_kept():
    labels, prob = _scene()
    # Its nearest voxel lies 6 voxels from the lesion's last slice (x = 14).
    _add_blob(labels, prob, 14 + 6, p=0.55)
    out, dropped = drop_far_unlikely_components(labels, prob)
    assert out is labels and dropped == []


def test_distance_is_measured_in_millimetres():
    labels, prob = _scene()
    blob = _add_blob(labels, prob, 14 + 8, p=0.55)  # 8 voxels away
    assert drop_far_unlikely_components(labels, prob, spacing=(1, 1, 1))[1] == []
    out, dropped = drop_far_unlikely_components(labels, prob, spacing=(2, 1, 1))  # 16 mm
    assert len(dropped) == 1 and not out[blob].any()
    assert 8 < FAR_MM < 16


def test_main_lesion_is_the_largest_probability_mass_not_the_largest_size():
    labels, prob = _scene()
    # A faint artefact larger than the lesion (1331 > 1000 voxels) at the other end.
    artefact = (slice(45, 56), slice(10, 21), slice(10, 21))
    labels[artefact] = 2
    prob[artefact] = 0.55
    out, dropped = drop_far_unlikely_components(labels, prob)
    assert not out[artefact].any() and out[5:15, 15:25, 15:25].all()
    assert [d.voxels for d in dropped] == [1331]


def test_one_component_or_none_is_returned_unchanged():
    labels, prob = _scene()
    assert drop_far_unlikely_components(labels, prob)[0] is labels
    empty = np.zeros_like(labels)
    assert drop_far_unlikely_components(empty, prob)[0] is empty
    with pytest.raises(ValueError, match="differ in shape"):
        drop_far_unlikely_components(labels, prob[:-1])


def _two_lesion_case(shape=(48, 40, 40)) -> Case:
    """A brain with a bright lesion and, 25 voxels away, a slightly brighter spot."""
    rng = np.random.default_rng(0)
    brain = np.zeros(shape, bool)
    brain[2:-2, 2:-2, 2:-2] = True
    data = rng.normal(0.0, 0.01, shape) + 1.0
    data[6:14, 16:24, 16:24] += 3.0  # the lesion
    data[39:42, 18:21, 18:21] += 0.5  # a doubtful spot
    images = {
        m: Volume.from_file_order((data * brain).astype(np.float32), orient.BRATS_AFFINE)
        for m in ("t1", "t1c", "t2", "flair")
    }
    return Case("TwoLesions_001", images, naming="brats2021")


def _threshold_model() -> LoadedModel:
    """Logits of each voxel's z-scored intensity x: WT = 4 (x - 1.5), TC and ET higher up.

    On the case above the lesion (x about 10) is sure tumour, the spot (x about 1.65) tumour at
    a probability near 0.65 and the rest of the brain (x about 0) background.
    """
    loaded = pointwise_model()
    conv = loaded.model.conv
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([-20.0, -6.0, -28.0]))  # TC, WT, ET: x > 5, 1.5, 7
    return loaded


def test_segment_drops_far_doubtful_components_by_default_and_says_so():
    case, model = _two_lesion_case(), _threshold_model()
    kept = segment(case, model, drop_far_components=False)
    default = segment(case, model)
    # BRATS_AFFINE is LPS, the models' voxel order: the spot's file indices are model indices.
    spot = (slice(39, 42), slice(18, 21), slice(18, 21))
    assert kept.labels_model_order[spot].all(), "the spot must pass 0.5 for the test to mean it"
    assert not default.labels_model_order[spot].any()
    assert default.labels_model_order[6:14, 16:24, 16:24].all()
    assert default.volumes_ml["WT"] == pytest.approx(kept.volumes_ml["WT"] - 27 / 1000)
    assert any("dropped 1 doubtful component" in note for note in default.notes)
    assert not any("dropped" in note for note in kept.notes)
