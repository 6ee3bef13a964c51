"""napari-brats-kd: brain-tumour segmentation of BraTS MRI with knowledge distillation.

The scripting API lives here and imports nothing from Qt, napari or magicgui at import time::

    from napari_brats_kd import load_case, save_labels, make_phantom
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# name -> module: resolved lazily so that `import napari_brats_kd` (done by napari at start-up to
# read the manifest) stays fast and pulls in neither torch nor monai.
_LAZY = {
    "load_case": "napari_brats_kd.io",
    "load_volume": "napari_brats_kd.io",
    "save_labels": "napari_brats_kd.io",
    "find_cases": "napari_brats_kd.io",
    "Case": "napari_brats_kd.volume",
    "Volume": "napari_brats_kd.volume",
    "LabelConvention": "napari_brats_kd.labels",
    "make_phantom": "napari_brats_kd.phantom",
    "SiteParams": "napari_brats_kd.phantom",
    "write_phantom_dataset": "napari_brats_kd.phantom",
    "segment_viewer": "napari_brats_kd._napari.scripting",
    "segment": "napari_brats_kd.inference",
    "segment_folder": "napari_brats_kd.batch",
    "SegmentationResult": "napari_brats_kd.inference",
    "load_checkpoint": "napari_brats_kd.models",
    "resolve_model": "napari_brats_kd.models",
    "available_models": "napari_brats_kd.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_brats_kd' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
