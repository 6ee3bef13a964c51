"""Tumour segmentation of one case: :func:`segment`.

The pipeline, in model orientation (:data:`~napari_brats_kd.orientation.MODEL_AXCODES`):

1. stack the modalities the model needs, in its channel order;
2. crop to the brain's bounding box (non-zero in any channel, plus a margin): a BraTS brain fills
   about 40 % of the 240x240x155 grid, so this alone more than halves the work;
3. normalise each channel (z-score over brain voxels, as the model was trained);
4. pad to a multiple of the network's stride and run it once over the whole crop, or with MONAI's
   gaussian-blended sliding windows when the crop exceeds the model's ROI;
5. optionally average sigmoid probabilities over mirrored copies (test-time augmentation);
6. threshold at 0.5, nest the regions (ET in TC in WT) into a label map, clear voxels outside the
   brain (zero in every channel), drop tiny components, paste back into the full grid and return
   it in napari's display order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import labels as lab
from .device import may_have_accelerator
from .errors import Cancelled, ModelInputError
from .model_input import (
    BBOX_MARGIN,
    InputFacts,
    brain_bbox,
    brain_box,
    gather_input,
    grow_to_multiple,
    network_input,
)
from .models.registry import ModelChoice, choose_model, load_choice
from .passes import (
    BACKENDS,
    STRATEGIES,
    TTA_FLIPS,
    Progress,
    ShouldStop,
    count_windows,
    plan_passes,
)
from .postprocess import (
    FAR_MM,
    MIN_CONFIDENCE,
    DroppedComponent,
    drop_far_unlikely_components,
    remove_small_components,
)
from .scan_checks import check_scans
from .volume import Case

if TYPE_CHECKING:
    from .models import LoadedModel
    from .models.config import ModelConfig
    from .onnx_graphs import OnnxModel

__all__ = [
    "BACKENDS",
    "BBOX_MARGIN",
    "STRATEGIES",
    "TTA_FLIPS",
    "SegmentationResult",
    "brain_bbox",
    "grow_to_multiple",
    "prepare_model",
    "segment",
]


@dataclass
class SegmentationResult:
    """What :func:`segment` returns.

    Attributes
    ----------
    labels
        ``uint8`` label map in display order, in ``convention``.
    convention
        Label convention of ``labels``.
    volumes_ml
        ``{"WT": ..., "TC": ..., "ET": ...}`` in millilitres.
    model
        Display name of the model that ran.
    device
        Device it ran on (``"cpu"``, ``"cuda"``, ...).
    backend
        ``"torch"`` or ``"onnxruntime"``.
    seconds
        Wall-clock time of the whole call.
    probabilities
        Sigmoid probabilities ``(len(regions), *labels.shape)`` float32 in display order, when
        asked for.
    regions
        Channel names of ``probabilities``.
    labels_model_order
        ``labels`` in model orientation (what a model-order array input lines up with).
    strategy
        ``"full"`` (one pass over the brain crop) or ``"sliding"`` (windows).
    n_forward
        Number of network forward passes (windows times TTA flips).
    notes
        Fallbacks taken (smaller batch, CPU instead of GPU), for logs.
    """

    labels: np.ndarray
    convention: lab.LabelConvention
    volumes_ml: dict[str, float]
    model: str
    device: str
    seconds: float
    backend: str = "torch"
    probabilities: np.ndarray | None = None
    regions: tuple[str, ...] = lab.REGIONS
    labels_model_order: np.ndarray | None = None
    strategy: str = "full"
    n_forward: int = 0
    notes: list[str] = field(default_factory=list)


def _dropped_note(dropped: Sequence[DroppedComponent], voxel_mm3: float) -> str:
    total_ml = sum(c.voxels for c in dropped) * voxel_mm3 / 1000.0
    return (
        f"dropped {len(dropped)} doubtful component(s), {total_ml:.{1 if total_ml >= 1 else 2}f} "
        "ml in all, more than "
        f"{FAR_MM:g} mm from the main lesion and with a mean tumour probability under "
        f"{MIN_CONFIDENCE:g} (to keep them: --keep-far-components, drop_far_components=False or "
        "the widget's 'Drop doubtful spots' box)"
    )


# --------------------------------------------------------------------------------------------------
# The public call
# --------------------------------------------------------------------------------------------------


class _Stages:
    """Progress of :func:`segment` in the steps a user sees: scans, each model pass, labels."""

    def __init__(self, progress: Progress | None, passes: int) -> None:
        self.progress, self.total = progress, passes + 2

    def _report(self, done: int, message: str) -> None:
        if self.progress is not None:
            self.progress(done, self.total, message)

    def scans_ready(self) -> None:
        self._report(1, "scans cropped to the brain and normalised")

    def model_pass(self, done: int, total: int, message: str) -> None:
        self.total = total + 2  # the back end's count is the true one (a GPU may batch less)
        self._report(1 + done, message)

    def labels_ready(self) -> None:
        self._report(self.total, "label map made")


def _expected_passes(
    plan: tuple[str, tuple[int, int, int]],
    shape: Sequence[int],
    overlap: float,
    batch: int,
    tta: bool,
) -> int:
    strategy, window = plan
    # The back end reports the exact count once it starts (a GPU short of memory batches less).
    windows = 1 if strategy == "full" else count_windows(shape, window, overlap, max(1, batch))
    return windows * (len(TTA_FLIPS) if tta else 1)


def _lean_model(
    choice: ModelChoice, plan: str, device: str, backend: str, threads: int | None
) -> OnnxModel | None:
    """The ONNX Runtime model to run, when the lean path applies (else ``None``: PyTorch).

    It applies on the CPU (asked for, or ``"auto"`` on a machine without an accelerator) for
    one pass over the crop of a napari-brats-kd checkpoint, with onnxruntime installed.
    """
    from .onnx_graphs import onnx_model, onnxruntime_available

    on_cpu = str(device) == "cpu" or (str(device) == "auto" and not may_have_accelerator())
    if backend == "torch" or not on_cpu or plan != "full" or not onnxruntime_available():
        return None
    return onnx_model(choice, threads)


def _probabilities(
    choice: ModelChoice,
    config: ModelConfig,
    plan: str,
    crop: np.ndarray,
    *,
    device: str,
    backend: str,
    tta: bool,
    strategy: str,
    roi_size: Sequence[int] | None,
    overlap: float,
    sw_batch_size: int,
    num_threads: int | None,
    progress: Progress | None,
    should_stop: ShouldStop | None,
    notes: list[str],
) -> tuple[np.ndarray, dict]:
    """Region probabilities of the normalised crop: ONNX Runtime when it can, else PyTorch."""
    from .errors import CheckpointError

    try:
        lean = _lean_model(choice, plan, device, backend, num_threads)
    except CheckpointError as exc:  # an architecture the exporter cannot handle
        if backend == "onnxruntime":
            raise
        notes.append(f"onnxruntime unavailable for {config.display_name} ({exc}); used torch")
        lean, backend = None, "torch"
    if lean is not None:
        notes.extend(lean.notes)
        lean.notes.clear()  # said once per process (the graph was exported, or not cached)
        from .predict_onnx import full_pass_probabilities

        return full_pass_probabilities(
            lean, crop, tta=tta, progress=progress, should_stop=should_stop
        )
    import torch

    from .predict_torch import predict_probabilities

    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        return predict_probabilities(
            load_choice(choice),
            crop,
            device=device,
            tta=tta,
            overlap=overlap,
            sw_batch_size=sw_batch_size,
            strategy=strategy,
            roi_size=roi_size,
            progress=progress,
            should_stop=should_stop,
            notes=notes,
            backend=backend,
        )
    finally:
        if num_threads is not None:
            torch.set_num_threads(old_threads)


def prepare_model(
    model: str | LoadedModel = "student",
    modalities: Sequence[str] | None = None,
    *,
    device: str = "auto",
    backend: str = "auto",
    num_threads: int | None = None,
) -> str:
    """Get a model ready, so that the next :func:`segment` with it starts at once.

    On the lean path this builds the ONNX Runtime session (exporting the graph into the user
    cache first, for a checkpoint seen for the first time); otherwise it loads the network with
    PyTorch. The widgets call it in the background when they open.

    Parameters
    ----------
    model, modalities
        As for :func:`segment` (``modalities``: those of the case, for a role name).
    device, backend, num_threads
        As for :func:`segment`.

    Returns
    -------
    str
        What is ready, e.g. ``"student (onnxruntime on the CPU)"``.

    Raises
    ------
    CheckpointError, CaseError
        If the model cannot be found or loaded.
    """
    from .errors import CheckpointError

    choice = choose_model(model, modalities)
    try:
        lean = _lean_model(choice, "full", device, backend, num_threads)
    except CheckpointError:  # the exporter cannot take it: segment() says so and uses torch
        lean = None
    if lean is not None:
        return f"{lean.config.display_name} (onnxruntime on the CPU)"
    loaded = load_choice(choice)
    from . import predict_torch  # noqa: F401 - the import is the warm-up (torch, MONAI)

    return f"{loaded.name} (PyTorch)"


def segment(
    case_or_image: Case | np.ndarray,
    model: str | LoadedModel = "student",
    *,
    modalities: Sequence[str] | None = None,
    device: str = "auto",
    tta: bool = False,
    return_probabilities: bool = False,
    min_component_voxels: int = 0,
    drop_far_components: bool = True,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    convention: lab.LabelConvention | str | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    strategy: str = "auto",
    roi_size: Sequence[int] | None = None,
    crop_to_brain: bool = True,
    num_threads: int | None = None,
    voxel_volume_mm3: float | None = None,
    backend: str = "auto",
) -> SegmentationResult:
    """Segment the brain tumour of one case into a BraTS label map.

    Parameters
    ----------
    case_or_image
        A :class:`~napari_brats_kd.volume.Case`, or a ``(C, X, Y, Z)`` array in model orientation
        whose channels are ``modalities``.
    model
        ``"student"`` / ``"teacher"`` (for a case, the shipped model of the role that needs only
        the case's scans; a note says which and why), a registered name, a checkpoint or MONAI
        bundle path, or a :class:`~napari_brats_kd.models.LoadedModel`.
    modalities
        Channel names of an array input (default: the model's order); ignored for a Case.
    device, backend, num_threads
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"`` or ``"mps"`` (GPUs run under
        mixed precision); ``"auto"`` (onnxruntime on a CPU, its graph exported once per model
        and cached, else PyTorch), ``"torch"`` or ``"onnxruntime"``; CPU threads (default:
        ``OMP_NUM_THREADS`` when set, else one per physical core with onnxruntime, PyTorch's
        setting with PyTorch).
    tta, return_probabilities
        Average probabilities over the 8 mirrorings of the volume (8x slower, a little
        smoother); also return the sigmoid probabilities (float32, display order).
    min_component_voxels, drop_far_components
        Remove tumour components smaller than this many voxels (0 keeps everything); remove
        those far from the main lesion that the model is unsure of (on by default: on real
        scans they are mostly vessels and dura; see :func:`~napari_brats_kd.postprocess.
        drop_far_unlikely_components`; a note says what was removed). Distances come from a
        case's affine, or isotropic voxels of ``voxel_volume_mm3`` for an array.
    convention, voxel_volume_mm3
        Label convention of the result (default: the case's, or the model's for arrays); voxel
        volume for ``volumes_ml`` of an array input (default 1 mm3; a case uses its affine).
    progress, should_stop
        ``progress(done, total, message)`` at each stage (scans cropped and normalised, each
        forward pass, label map made); ``should_stop()`` polled before and during each pass
        (True raises :class:`~napari_brats_kd.errors.Cancelled`).
    strategy, roi_size, overlap, sw_batch_size
        ``"auto"`` (one pass over the brain crop if it fits the model's ROI, else windows),
        ``"full"`` or ``"sliding"``; window size (default the ROI), overlap, windows per pass.
    crop_to_brain
        Crop to the brain's bounding box first (default). ``False`` with ``strategy="sliding"``
        and ``roi_size=(240, 240, 160)`` reproduces MONAI's bundle inference.

    Returns
    -------
    SegmentationResult

    Raises
    ------
    CheckpointError, ModelInputError, ResourceError, Cancelled
        The model cannot be found or loaded; the input lacks a modality the model needs, has
        the wrong shape or is no scan; not enough memory on any usable device; stopped.
    """
    start = time.perf_counter()
    notes: list[str] = []
    choice, cfg = _choose(case_or_image, model, backend, notes)
    channels = gather_input(case_or_image, cfg.modalities, modalities)
    check_scans(channels, cfg.modalities)
    facts = InputFacts.of(case_or_image, cfg, convention, voxel_volume_mm3)
    grid = tuple(int(n) for n in channels[0].shape)
    brain, box = brain_box(channels, cfg, crop_to_brain)
    size = tuple(sl.stop - sl.start for sl in box)
    plan = plan_passes(cfg, size, strategy, roi_size)
    crop, brain_crop = network_input(channels, brain, box, cfg, plan, tta)
    stages = _Stages(progress, _expected_passes(plan, size, overlap, int(sw_batch_size), tta))
    stages.scans_ready()
    probs_input, info = _probabilities(
        choice, cfg, plan[0], crop, device=device, backend=backend, tta=tta, strategy=strategy,
        roi_size=roi_size, overlap=overlap, sw_batch_size=sw_batch_size, num_threads=num_threads,
        progress=stages.model_pass, should_stop=should_stop, notes=notes,
    )  # fmt: skip
    if should_stop is not None and should_stop():  # a Cancel during the last pass
        raise Cancelled("Segmentation cancelled.")
    probs_crop = probs_input[:, : size[0], : size[1], : size[2]]  # without the stride padding
    post = (min_component_voxels, drop_far_components)
    labels_crop = _labels_of(probs_crop, brain_crop, cfg, facts, post, notes)
    stages.labels_ready()
    labels_model = np.zeros(grid, np.uint8)
    labels_model[box] = labels_crop
    probabilities = None
    if return_probabilities:
        full = np.zeros((len(cfg.regions), *grid), np.float32)
        full[(slice(None), *box)] = probs_crop
        probabilities = np.ascontiguousarray(Case.from_model_order(full))
    return SegmentationResult(
        labels=np.ascontiguousarray(Case.from_model_order(labels_model)),
        convention=facts.target,
        volumes_ml=lab.region_volumes_ml(labels_crop, facts.target, facts.voxel_mm3),
        model=cfg.display_name,
        device=info["device"],
        backend=info["backend"],
        seconds=time.perf_counter() - start,
        probabilities=probabilities,
        regions=tuple(cfg.regions),
        labels_model_order=labels_model,
        strategy=info["strategy"],
        n_forward=info["n_forward"],
        notes=notes,
    )


def _choose(
    case_or_image: Case | np.ndarray, model: str | LoadedModel, backend: str, notes: list[str]
) -> tuple[ModelChoice, ModelConfig]:
    """The model to run and its config; for a case, ``"student"`` / ``"teacher"`` is the
    shipped model of that role that needs only the case's scans (a note says which)."""
    if backend not in BACKENDS:
        raise ModelInputError(f"Unknown backend {backend!r}: expected one of {BACKENDS}.")
    choice = choose_model(
        model, case_or_image.modalities if isinstance(case_or_image, Case) else None
    )
    if choice.reason:
        notes.append(choice.reason)
    cfg = choice.config if choice.config is not None else load_choice(choice).config
    missing_regions = {"WT", "TC", "ET"} - set(cfg.regions)
    if missing_regions:
        raise ModelInputError(
            f"{cfg.display_name} predicts {list(cfg.regions)}; a label map needs WT, TC and ET."
        )
    return choice, cfg


def _labels_of(
    probs_crop: np.ndarray,
    brain_crop: np.ndarray,
    cfg: ModelConfig,
    facts: InputFacts,
    post: tuple[int, bool],
    notes: list[str],
) -> np.ndarray:
    """The label map of the crop: thresholded regions, then the post-processing asked for."""
    min_component_voxels, drop_far_components = post
    # Everything after the network works on the crop: nothing outside the brain box is tumour.
    labels_crop = lab.regions_to_labels(probs_crop > 0.5, facts.target, cfg.regions)
    # Skull-stripped BraTS scans are exactly 0 outside the brain, and tumour never lies there:
    # clearing those voxels removes margin/padding artefacts at no cost.
    labels_crop[~brain_crop] = 0
    labels_crop = remove_small_components(labels_crop, min_component_voxels)
    if drop_far_components:
        wt_probability = probs_crop[list(cfg.regions).index("WT")]
        labels_crop, dropped = drop_far_unlikely_components(
            labels_crop, wt_probability, facts.spacing
        )
        if dropped:
            notes.append(_dropped_note(dropped, facts.voxel_mm3))
    return labels_crop
