"""File > Open Sample > napari-brats-kd > Synthetic BraTS case."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_sample_case_opens_from_the_menu(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    # napari builds File > Open Sample from npe2's sample-data contributions...
    from npe2 import PluginManager

    samples = dict(PluginManager.instance().iter_sample_data())
    assert "Synthetic BraTS case" in [s.display_name for s in samples["napari-brats-kd"]]
    # ...and the menu action opens it: four modalities and the ground truth on one 1 mm grid.
    viewer.open_sample("napari-brats-kd", "synthetic_case")
    names = [layer.name for layer in viewer.layers]
    case = names[0].rsplit(" ", 1)[0]
    assert names == [f"{case} {m}" for m in ("T1", "T1c", "T2", "FLAIR")] + [f"{case} segmentation"]
    seg = viewer.layers[-1]
    assert seg.data.shape == (155, 240, 240)
    np.testing.assert_allclose(seg.scale, (1, 1, 1))
    # The sample's tumours are in the patient's left hemisphere: the screen's right half.
    columns = np.nonzero(np.asarray(seg.data))[2]
    assert columns.size > 0 and np.median(columns) > 120
