"""napari sample data: File > Open Sample > napari-brats-kd > Synthetic BraTS case."""

from __future__ import annotations

from napari.types import LayerDataTuple

#: Seed of the sample case: fixed so that every user sees the same case (it has a left-hemisphere
#: lesion, which makes orientation easy to check by eye).
SAMPLE_SEED = 0


def synthetic_case() -> list[LayerDataTuple]:
    """A full-size synthetic BraTS case (four modalities + ground-truth segmentation)."""
    from ..phantom import make_phantom
    from .layers import case_to_layer_data

    return case_to_layer_data(make_phantom(seed=SAMPLE_SEED))
