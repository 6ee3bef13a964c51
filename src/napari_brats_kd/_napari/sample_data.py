"""napari sample data: File > Open Sample > Synthetic BraTS case (BraTS tumour segmentation ...)."""

from __future__ import annotations

from napari.types import LayerDataTuple

#: Seed of the sample case: fixed so that every user sees the same case.
SAMPLE_SEED = 0
#: Its tumours lie in the patient's left hemisphere, so the radiological view shows them on the
#: screen's right: an orientation check anyone can do by eye.
SAMPLE_LESION_SIDE = "left"


def synthetic_case() -> list[LayerDataTuple]:
    """A full-size synthetic BraTS case (four modalities + ground-truth segmentation)."""
    from ..phantom import make_phantom
    from .layers import case_to_layer_data

    return case_to_layer_data(make_phantom(seed=SAMPLE_SEED, lesion_side=SAMPLE_LESION_SIDE))
