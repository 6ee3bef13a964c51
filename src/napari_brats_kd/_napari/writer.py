"""npe2 writer: a Labels layer -> a NIfTI label map aligned with its source scan.

The layer's ``metadata["brats_kd"]`` (set by our reader and segmentation widgets) holds the source
scan's affine and header: the file is written in that scan's own voxel order and geometry, so it
overlays the scan in any viewer. ``metadata["brats_kd"]["target_convention"]`` (e.g.
``"brats2023"``) converts the labels on the way out; by default the layer's own convention is kept.
A layer without that metadata (painted by hand) is written with a default geometry and a warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import io
from .layers import labels_to_volume, warn_all


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer as ``.nii.gz`` / ``.nii`` (npe2 single-layer writer).

    Parameters
    ----------
    path
        Target file chosen by the user.
    data
        The layer's label array (display order).
    meta
        The layer's state (``metadata``, ``scale``, ``name`` ...).

    Returns
    -------
    list of str
        The file written.
    """
    arr = np.asarray(data[0] if isinstance(data, list) else data)  # multiscale: full resolution
    plan = labels_to_volume(arr, meta.get("metadata"), meta.get("scale"))
    warn_all(plan.warnings)
    written = io.save_labels(
        path, arr, plan.reference, plan.source_convention, plan.target_convention
    )
    return [str(written)]
