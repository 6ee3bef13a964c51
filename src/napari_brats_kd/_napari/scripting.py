"""Console scripting: segment the case open in a napari viewer in one call.

In napari's console (or a script that made a viewer)::

    from napari_brats_kd import segment_viewer
    result = segment_viewer(viewer, model="student")
    result.volumes_ml          # {"WT": ..., "TC": ..., "ET": ...} in cm3

It lives on the napari side of the package (it drives a viewer) but imports neither napari nor
Qt at import time; the viewer is used through its public attributes (``viewer.layers``,
``viewer.add_labels``), so ``from napari_brats_kd import segment_viewer`` stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..callbacks import Progress, ShouldStop
from ..errors import CaseError
from ..labels import MODALITY_NAMES


def _required_modalities(model: Any) -> tuple[str, ...]:
    """Input modalities of ``model`` (raises CheckpointError if it cannot be found)."""
    from ..models import resolve_model

    return tuple(resolve_model(model).config.modalities)


def _pick_layers(
    viewer: Any, layers: Mapping[str, Any] | None, needed: tuple[str, ...] | None
) -> dict[str, Any]:
    from ..naming import parse_modalities
    from .case_from_layers import find_modality_layers

    if layers is None:
        found = find_modality_layers(viewer.layers)
    else:
        # Accept layer names as well as layer objects, and modality aliases as keys.
        found = {}
        for key, layer in layers.items():
            (modality,) = parse_modalities([key])
            found[modality] = viewer.layers[layer] if isinstance(layer, str) else layer
    if needed is not None:
        missing = [MODALITY_NAMES[m] for m in needed if m not in found]
        if missing:
            have = ", ".join(getattr(found[m], "name", m) for m in found) or "none"
            raise CaseError(
                f"The viewer has no layer for {', '.join(missing)} (found: {have}): open the "
                "case's scans, or pass layers={'flair': layer, ...}."
            )
        found = {m: found[m] for m in needed}
    if not found:
        raise CaseError(
            "The viewer holds no modality layer (T1, T1c, T2, FLAIR): open a case first, e.g. "
            "viewer.open('case_folder', plugin='napari-brats-kd')."
        )
    return found


def segment_viewer(
    viewer: Any,
    model: str = "student",
    *,
    layers: Mapping[str, Any] | None = None,
    device: str = "auto",
    tta: bool = False,
    replace: bool = True,
    blocking: bool = True,
    progress: Progress | None = None,
    **segment_kwargs: Any,
) -> Any:
    """Segment the tumour of the case shown in ``viewer`` and add the result as a Labels layer.

    Parameters
    ----------
    viewer
        A ``napari.Viewer`` holding the case's modality layers.
    model
        Model name (``"student"``, ``"teacher"``, a model trained or registered in this session)
        or a checkpoint path / MONAI bundle folder.
    layers
        ``{modality: layer or layer name}`` to use instead of the layers found automatically
        (by this plugin's metadata, else by layer names such as ``"FLAIR"``).
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    tta
        Test-time augmentation (average over flips).
    replace
        Overwrite an earlier result layer of the same case and model (default) instead of adding
        another layer.
    blocking
        Wait for the result (default). With ``False`` the model runs in a napari thread worker and
        the :class:`~napari_brats_kd._napari._workers.Task` is returned at once: the layer appears
        when it finishes, ``task.worker.returned`` gives the result and ``task.cancel()`` stops it.
    progress
        ``progress(done, total, message)`` callable (blocking mode only).
    **segment_kwargs
        Passed on to :func:`napari_brats_kd.inference.segment` (e.g. ``min_component_voxels``).

    Returns
    -------
    SegmentationResult or Task
        The result (labels in display order, convention, ``volumes_ml``, model, device, seconds),
        or the running task when ``blocking=False``.

    Raises
    ------
    CaseError
        If the viewer lacks a modality the model needs or the layers do not belong together.
    CheckpointError
        If the model cannot be found or loaded.
    """
    from ..inference import segment
    from .case_from_layers import add_result_layer, case_from_layers

    needed = _required_modalities(model)
    picked = _pick_layers(viewer, layers, needed)
    case, warnings = case_from_layers(picked)
    for warning in warnings:
        import logging

        logging.getLogger(__name__).warning(warning)
    source_layer = next(iter(picked.values()))
    label = model if isinstance(model, str) and "/" not in model and "\\" not in model else None

    def add(result: Any) -> Any:
        add_result_layer(viewer, result, case, source_layer, label or result.model, replace)
        return result

    def run(progress_fn: Progress | None, should_stop: ShouldStop | None) -> Any:
        return segment(
            case,
            model=model,
            device=device,
            tta=tta,
            progress=progress_fn,
            should_stop=should_stop,
            **segment_kwargs,
        )

    if blocking:
        return add(run(progress, None))

    from ._workers import start_task

    return start_task(run, on_returned=add)
