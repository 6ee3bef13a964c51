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

import contextlib
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from . import labels as lab
from .device import autocast_dtype, estimate_memory, fits, select_device
from .errors import Cancelled, CheckpointError, ModelInputError, ResourceError
from .models import LoadedModel, normalize_input, resolve_model, resolve_model_for
from .models.networks import count_parameters, first_stage_width, network_stride
from .orientation import MODEL_AXCODES, voxel_sizes_in
from .postprocess import FAR_MM, MIN_CONFIDENCE, DroppedComponent, drop_far_unlikely_components
from .volume import Case

Progress = Callable[[int, int, str], None]
ShouldStop = Callable[[], bool]

#: Voxels of margin kept around the brain's bounding box (context for the first convolutions).
BBOX_MARGIN = 4

#: Flip sets of the test-time augmentation (all 8 mirrorings of the 3 spatial axes, as nnU-Net).
TTA_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    axes for r in range(4) for axes in itertools.combinations((2, 3, 4), r)
)

STRATEGIES = ("auto", "full", "sliding")


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


# --------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------


def brain_bbox(image: np.ndarray, margin: int = BBOX_MARGIN) -> tuple[slice, slice, slice] | None:
    """Bounding box of voxels non-zero in any channel of ``(C, X, Y, Z)``, widened by ``margin``.

    Returns ``None`` when every voxel is zero.
    """
    mask = np.any(image != 0, axis=0)
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return None
        lo = max(int(hits[0]) - margin, 0)
        hi = min(int(hits[-1]) + 1 + margin, mask.shape[axis])
        out.append(slice(lo, hi))
    return tuple(out)  # type: ignore[return-value]


def grow_to_multiple(
    box: Sequence[slice], multiple: int, shape: Sequence[int]
) -> tuple[slice, slice, slice]:
    """Widen ``box`` (centred, within ``shape``) so each side is a multiple of ``multiple``.

    A crop the network can take as is needs no zero padding (one copy of the volume less), and
    the extra voxels are real image context.
    """
    out = []
    for sl, n in zip(box, shape, strict=True):
        size = sl.stop - sl.start
        target = min(int(np.ceil(size / multiple) * multiple), int(n))
        start = max(0, sl.start - (target - size) // 2)
        stop = start + target
        if stop > n:
            stop, start = int(n), int(n) - target
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    shape = x.shape[2:]
    target = [int(np.ceil(s / multiple) * multiple) for s in shape]
    pad = []
    for s, t in zip(reversed(shape), reversed(target), strict=True):
        pad += [0, t - s]
    return (F.pad(x, pad) if any(pad) else x), tuple(shape)


def _round_roi(roi: Sequence[int], stride: int, limit: Sequence[int]) -> tuple[int, int, int]:
    """ROI no larger than needed (``limit``) and a multiple of the network stride."""
    out = []
    for r, lim in zip(roi, limit, strict=True):
        r = min(int(r), int(np.ceil(lim / stride) * stride))
        out.append(max(stride, (r // stride) * stride))
    return tuple(out)  # type: ignore[return-value]


def count_windows(
    image_shape: Sequence[int], roi: Sequence[int], overlap: float, batch: int = 1
) -> int:
    """Forward passes MONAI's ``sliding_window_inference`` makes (same scan rule)."""
    from monai.data.utils import dense_patch_slices

    size = [max(int(i), int(r)) for i, r in zip(image_shape, roi, strict=True)]
    interval = [
        r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(size, roi, strict=True)
    ]
    n = len(dense_patch_slices(size, list(roi), interval))
    return int(np.ceil(n / batch))


def _dropped_note(dropped: Sequence[DroppedComponent], voxel_mm3: float) -> str:
    total_ml = sum(c.voxels for c in dropped) * voxel_mm3 / 1000.0
    return (
        f"dropped {len(dropped)} doubtful component(s), {total_ml:.{1 if total_ml >= 1 else 2}f} "
        "ml in all, more than "
        f"{FAR_MM:g} mm from the main lesion and with a mean tumour probability under "
        f"{MIN_CONFIDENCE:g} (to keep them: --keep-far-components, drop_far_components=False or "
        "the widget's 'Drop doubtful spots' box)"
    )


def remove_small_components(label_map: np.ndarray, min_voxels: int) -> np.ndarray:
    """Zero tumour components (26-connected, all classes together) smaller than ``min_voxels``."""
    if min_voxels <= 0:
        return label_map
    from scipy import ndimage

    components, n = ndimage.label(label_map > 0, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return label_map
    sizes = np.bincount(components.ravel())
    small = np.flatnonzero(sizes < min_voxels)
    small = small[small != 0]
    if small.size:
        label_map = label_map.copy()
        label_map[np.isin(components, small)] = 0
    return label_map


# --------------------------------------------------------------------------------------------------
# Network passes
# --------------------------------------------------------------------------------------------------


class _Steps:
    """Counts forward passes, reports progress and honours cancellation between them."""

    def __init__(self, total: int, progress: Progress | None, should_stop: ShouldStop | None):
        self.total, self.done = total, 0
        self.progress, self.should_stop = progress, should_stop

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("Segmentation cancelled.")

    def step(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total, f"pass {self.done}/{self.total}")


def _plan(
    loaded: LoadedModel,
    shape: Sequence[int],
    strategy: str,
    roi_size: Sequence[int] | None,
) -> tuple[str, tuple[int, int, int]]:
    cfg = loaded.config
    stride = network_stride(cfg)
    roi = tuple(roi_size) if roi_size is not None else cfg.roi_size
    padded = [int(np.ceil(s / stride) * stride) for s in shape]
    if strategy == "auto":
        strategy = "full" if all(p <= r for p, r in zip(padded, roi, strict=True)) else "sliding"
    if strategy == "full":
        return "full", tuple(padded)  # type: ignore[return-value]
    # roi_size given explicitly (e.g. the bundle's 240x240x160) is used as is, as MONAI would;
    # the config's default ROI is shrunk to the volume so no window is mostly padding.
    if roi_size is not None:
        if any(r % stride for r in roi):
            raise ModelInputError(
                f"ROI {tuple(roi)} is not a multiple of {cfg.display_name}'s stride {stride}."
            )
        return "sliding", tuple(int(r) for r in roi)  # type: ignore[return-value]
    return "sliding", _round_roi(roi, stride, shape)


def _memory_ok(
    loaded: LoadedModel,
    strategy: str,
    window: Sequence[int],
    volume: Sequence[int],
    batch: int,
    device: torch.device,
) -> tuple[bool, str]:
    cfg = loaded.config
    width, scale = first_stage_width(cfg)
    window_voxels = int(np.prod(window)) if strategy == "sliding" else int(np.prod(volume))
    dtype = autocast_dtype(device)
    est = estimate_memory(
        window_voxels=window_voxels,
        volume_voxels=int(np.prod(volume)),
        first_stage_channels=width,
        stage_scale=scale,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        n_parameters=count_parameters(loaded.model),
        batch=batch if strategy == "sliding" else 1,
        bytes_per_value=2 if dtype is not None else 4,
    )
    return fits(est, device), str(est)


def _forward_probabilities(
    loaded: LoadedModel,
    x: torch.Tensor,
    device: torch.device,
    strategy: str,
    window: tuple[int, int, int],
    overlap: float,
    sw_batch_size: int,
    tta: bool,
    steps: _Steps,
    backend: str = "torch",
) -> torch.Tensor:
    """Sigmoid probabilities ``(R, X, Y, Z)`` (CPU float32) of a normalised ``(C, X, Y, Z)``."""
    stride = network_stride(loaded.config)
    if backend == "onnxruntime":
        from .export import onnx_session

        session = onnx_session(loaded)

        def net(batch: torch.Tensor) -> torch.Tensor:
            array = np.ascontiguousarray(batch.numpy(), np.float32)
            return torch.from_numpy(session.run(None, {"image": array})[0])

        amp: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        net = loaded.model.to(device).eval()
        dtype = autocast_dtype(device)
        amp = (
            torch.autocast(device_type=device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        steps.check()
        with amp:
            out = net(batch)
        steps.step()
        return out.float()

    flips = TTA_FLIPS if tta else ((),)
    x = x.unsqueeze(0).to(device)
    total: torch.Tensor | None = None
    with torch.inference_mode():
        for axes in flips:
            xi = torch.flip(x, axes) if axes else x
            if strategy == "full":
                padded, shape = _pad_to_multiple(xi, stride)
                logits = predictor(padded)[..., : shape[0], : shape[1], : shape[2]]
            else:
                from monai.inferers import sliding_window_inference

                logits = sliding_window_inference(
                    xi,
                    roi_size=window,
                    sw_batch_size=sw_batch_size,
                    predictor=predictor,
                    overlap=overlap,
                    mode="gaussian",
                )
            probs = torch.sigmoid_(logits)  # in place: a full-size copy less
            if axes:
                probs = torch.flip(probs, axes)
            total = probs if total is None else total.add_(probs)
        assert total is not None
        if len(flips) > 1:
            total.div_(len(flips))
    return total[0].to("cpu", torch.float32)


BACKENDS = ("auto", "torch", "onnxruntime")


def _resolve_backend(
    backend: str, device: torch.device, loaded: LoadedModel, notes: list[str]
) -> str:
    """The back end to use: for ``"auto"``, onnxruntime on CPU when installed, else torch.

    onnxruntime was measured 20-30 % faster than PyTorch on 2 CPU cores for both the student and
    the teacher (benchmarks/results/inference_cpu.md); its graph is exported once per model.
    """
    if backend not in BACKENDS:
        raise ModelInputError(f"Unknown backend {backend!r}: expected one of {BACKENDS}.")
    if backend == "torch":
        return "torch"
    if device.type != "cpu":
        if backend == "onnxruntime":
            raise ResourceError(
                f"The onnxruntime back end runs on the CPU only, not {device}: use device='cpu' "
                "or backend='torch'."
            )
        return "torch"
    if backend == "auto":
        import importlib.util

        if importlib.util.find_spec("onnxruntime") is None:
            return "torch"
        try:
            from .export import onnx_session

            onnx_session(loaded)
        except CheckpointError as exc:  # an architecture the exporter cannot handle
            notes.append(f"onnxruntime unavailable for {loaded.name} ({exc}); used torch")
            return "torch"
    return "onnxruntime"


def predict_probabilities(
    loaded: LoadedModel | str,
    image: np.ndarray,
    *,
    device: str | torch.device = "auto",
    tta: bool = False,
    overlap: float = 0.5,
    sw_batch_size: int = 1,
    strategy: str = "auto",
    roi_size: Sequence[int] | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    notes: list[str] | None = None,
    backend: str = "auto",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Region probabilities of an already normalised ``(C, X, Y, Z)`` array.

    The building block of :func:`segment` (and of validation during training): no cropping, no
    normalisation, no thresholding. Memory is checked first; on a GPU the window batch is reduced,
    then the CPU is used, before giving up with :class:`ResourceError`.

    Returns
    -------
    probabilities, info
        float32 ``(len(regions), X, Y, Z)``, and ``{"device", "backend", "strategy", "window",
        "n_forward"}``.
    """
    loaded = resolve_model(loaded)
    notes = notes if notes is not None else []
    if strategy not in STRATEGIES:
        raise ModelInputError(f"Unknown strategy {strategy!r}: expected one of {STRATEGIES}.")
    dev = select_device(device)
    shape = tuple(int(s) for s in image.shape[1:])
    plan, window = _plan(loaded, shape, strategy, roi_size)
    batch = max(1, int(sw_batch_size))
    ok, est = _memory_ok(loaded, plan, window, shape, batch, dev)
    if not ok and dev.type != "cpu" and plan == "sliding" and batch > 1:
        batch = 1
        notes.append(f"window batch reduced to 1 (estimated {est} needed on {dev})")
        ok, est = _memory_ok(loaded, plan, window, shape, batch, dev)
    if not ok and dev.type != "cpu":
        cpu = torch.device("cpu")
        ok_cpu, est_cpu = _memory_ok(loaded, plan, window, shape, batch, cpu)
        if ok_cpu:
            notes.append(f"ran on CPU: estimated {est} does not fit in the free memory of {dev}")
            dev, ok, est = cpu, True, est_cpu
    if not ok:
        raise ResourceError(
            f"Segmenting a {'x'.join(map(str, shape))} volume with {loaded.name} needs about "
            f"{est} ({plan} pass, window {'x'.join(map(str, window))}), more than {dev} has free. "
            "Close other programs, use a smaller model (the student), or a smaller ROI."
        )
    backend = _resolve_backend(backend, dev, loaded, notes)
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))
    n_windows = 1 if plan == "full" else count_windows(shape, window, overlap, batch)
    flips = len(TTA_FLIPS) if tta else 1
    oom_types = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),)
    steps = _Steps(n_windows * flips, progress, should_stop)
    steps.check()
    try:
        probs = _forward_probabilities(
            loaded, x, dev, plan, window, overlap, batch, tta, steps, backend
        )
    except oom_types as exc:
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            ok_cpu, _ = _memory_ok(loaded, plan, window, shape, 1, torch.device("cpu"))
            if ok_cpu:
                notes.append(f"GPU ran out of memory ({exc}); ran on CPU instead")
                dev = torch.device("cpu")
                steps = _Steps(n_windows * flips, progress, should_stop)
                probs = _forward_probabilities(loaded, x, dev, plan, window, overlap, 1, tta, steps)
            else:
                raise ResourceError(
                    f"Out of GPU memory segmenting with {loaded.name}: {exc}"
                ) from exc
        else:
            raise ResourceError(f"Out of memory segmenting with {loaded.name}: {exc}") from exc
    except RuntimeError as exc:
        if "alloc" in str(exc).lower() and "memory" in str(exc).lower():
            raise ResourceError(
                f"Out of memory segmenting with {loaded.name} on {dev}: {exc}"
            ) from exc
        raise
    info = {
        "device": dev.type,
        "backend": backend,
        "strategy": plan,
        "window": window,
        "n_forward": steps.done,
    }
    return probs.numpy(), info


# --------------------------------------------------------------------------------------------------
# The public call
# --------------------------------------------------------------------------------------------------


def _gather_input(
    case_or_image: Case | np.ndarray,
    model_modalities: tuple[str, ...],
    modalities: Sequence[str] | None,
) -> np.ndarray:
    if isinstance(case_or_image, Case):
        return case_or_image.model_input(model_modalities)
    image = np.asarray(case_or_image)
    if image.ndim != 4:
        raise ModelInputError(
            f"segment expects a Case or a (C, X, Y, Z) array in model order, got shape "
            f"{image.shape}."
        )
    given = tuple(modalities) if modalities is not None else model_modalities
    if len(given) != image.shape[0]:
        raise ModelInputError(
            f"The array has {image.shape[0]} channels but modalities {list(given)} were named: "
            "pass modalities= listing one modality per channel."
        )
    missing = [m for m in model_modalities if m not in given]
    if missing:
        raise ModelInputError(
            f"The model needs {', '.join(lab.MODALITY_NAMES[m] for m in missing)}, which the "
            f"array (channels {', '.join(given)}) lacks."
        )
    order = [given.index(m) for m in model_modalities]
    return image[order] if order != list(range(len(given))) else image


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
        ``"student"`` / ``"teacher"`` (shipped weights), a registered model name, a checkpoint or
        MONAI bundle path, or a :class:`~napari_brats_kd.models.LoadedModel`. For a case that
        lacks a modality the default model of the role needs, ``"student"`` / ``"teacher"``
        take the shipped model of the role that needs only what the case has (a note says
        which, and why).
    modalities
        Channel names of an array input (default: the model's own order). Ignored for a Case.
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"`` or ``"mps"``. GPUs run under
        mixed precision.
    tta
        Average probabilities over the 8 mirrorings of the volume (8x slower, a little smoother).
    return_probabilities
        Also return the sigmoid probabilities (float32, display order).
    min_component_voxels
        Remove tumour components smaller than this many voxels (0 keeps everything).
    drop_far_components
        Remove tumour components that lie far from the main lesion and that the model is unsure
        of (:func:`~napari_brats_kd.postprocess.drop_far_unlikely_components`; a note says what
        was removed). On by default: on real scans these are mostly vessels and dura. Distances
        come from a case's affine; an array input is taken as isotropic voxels of
        ``voxel_volume_mm3`` (give a Case for anisotropic scans).
    overlap
        Overlap of sliding windows (only used when the brain exceeds the model's ROI).
    sw_batch_size
        Windows per forward pass.
    convention
        Label convention of the result (default: the case's, or the model's for arrays).
    progress
        ``progress(done, total, message)`` called after each forward pass.
    should_stop
        Polled before each forward pass; returning True raises :class:`~errors.Cancelled`.
    strategy
        ``"auto"`` (one pass over the brain crop when it fits the ROI, else windows), ``"full"``
        or ``"sliding"``.
    roi_size
        Sliding-window size (default: the model's ROI, shrunk to the volume).
    crop_to_brain
        Crop to the brain's bounding box first (default). ``False`` with ``strategy="sliding"``
        and ``roi_size=(240, 240, 160)`` reproduces MONAI's bundle inference.
    num_threads
        CPU threads for this call (default: PyTorch's current setting).
    voxel_volume_mm3
        Voxel volume for ``volumes_ml`` of an array input (default 1 mm3). Cases use their affine.
    backend
        ``"auto"`` (onnxruntime on CPU when installed, else PyTorch), ``"torch"`` or
        ``"onnxruntime"`` (CPU only; the graph is exported once per model and cached).

    Returns
    -------
    SegmentationResult

    Raises
    ------
    CheckpointError
        If the model cannot be found or loaded.
    CaseError, ModelInputError
        If the input lacks a modality the model needs or has the wrong shape.
    ResourceError
        If there is not enough memory on any usable device.
    Cancelled
        If ``should_stop`` returned True.
    """
    start = time.perf_counter()
    notes: list[str] = []
    if isinstance(case_or_image, Case):
        # "student" / "teacher": the shipped model of that role that needs only these scans.
        loaded, picked = resolve_model_for(model, case_or_image.modalities)
        if picked:
            notes.append(picked)
    else:
        loaded = resolve_model(model)
    cfg = loaded.config
    missing_regions = {"WT", "TC", "ET"} - set(cfg.regions)
    if missing_regions:
        raise ModelInputError(
            f"{loaded.name} predicts {list(cfg.regions)}; a label map needs WT, TC and ET."
        )
    image = _gather_input(case_or_image, cfg.modalities, modalities)
    if isinstance(case_or_image, Case):
        default_conv = case_or_image.convention
        voxel_mm3 = case_or_image.reference.voxel_volume_mm3
        spacing = voxel_sizes_in(case_or_image.reference.affine, MODEL_AXCODES)
    else:
        default_conv = lab.LabelConvention(cfg.convention)
        voxel_mm3 = 1.0 if voxel_volume_mm3 is None else float(voxel_volume_mm3)
        spacing = (voxel_mm3 ** (1 / 3),) * 3
    target = lab.get_convention(convention if convention is not None else default_conv).convention
    # min/max propagate NaN and show inf without allocating a mask as large as the case.
    if not all(np.isfinite(channel.min()) and np.isfinite(channel.max()) for channel in image):
        raise ModelInputError("The input holds NaN or infinite voxels; fix the scan first.")

    box = brain_bbox(image) if crop_to_brain else tuple(slice(0, s) for s in image.shape[1:])
    if box is None:
        raise ModelInputError(
            "Every voxel of the input is zero: there is no brain to segment "
            "(check that the right scans are loaded)."
        )
    if crop_to_brain:
        box = grow_to_multiple(box, network_stride(cfg), image.shape[1:])
    crop = normalize_input(image[(slice(None), *box)], cfg.normalization)

    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        probs_crop, info = predict_probabilities(
            loaded,
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

    # Everything after the network works on the crop: nothing outside the brain box is tumour.
    labels_crop = lab.regions_to_labels(probs_crop > 0.5, target, cfg.regions)
    # Skull-stripped BraTS scans are exactly 0 outside the brain, and tumour never lies there:
    # clearing those voxels removes margin/padding artefacts at no cost.
    labels_crop[~np.any(image[(slice(None), *box)] != 0, axis=0)] = 0
    labels_crop = remove_small_components(labels_crop, min_component_voxels)
    if drop_far_components:
        wt_probability = probs_crop[list(cfg.regions).index("WT")]
        labels_crop, dropped = drop_far_unlikely_components(labels_crop, wt_probability, spacing)
        if dropped:
            notes.append(_dropped_note(dropped, voxel_mm3))
    labels_model = np.zeros(image.shape[1:], np.uint8)
    labels_model[box] = labels_crop
    labels_display = np.ascontiguousarray(Case.from_model_order(labels_model))
    probabilities = None
    if return_probabilities:
        full = np.zeros((len(cfg.regions), *image.shape[1:]), np.float32)
        full[(slice(None), *box)] = probs_crop
        probabilities = np.ascontiguousarray(Case.from_model_order(full))
    return SegmentationResult(
        labels=labels_display,
        convention=target,
        volumes_ml=lab.region_volumes_ml(labels_crop, target, voxel_mm3),
        model=loaded.name,
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
