"""Region probabilities with PyTorch: GPUs, MONAI's sliding windows, and models held in memory.

The back end of :func:`~napari_brats_kd.inference.segment` whenever the lean ONNX path
(:mod:`.predict_onnx`) does not apply, and of validation during training. Memory is checked before
each run; on a GPU the window batch shrinks, then the CPU is used, before giving up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .device import autocast_dtype, fits, select_device
from .errors import CheckpointError, ModelInputError, ResourceError
from .models import LoadedModel, resolve_model
from .models.geometry import network_stride
from .models.networks import count_parameters
from .passes import (
    BACKENDS,
    TTA_FLIPS,
    PassCounter,
    Progress,
    ShouldStop,
    count_windows,
    plan_memory,
    plan_passes,
)


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    shape = x.shape[2:]
    target = [int(np.ceil(s / multiple) * multiple) for s in shape]
    pad = []
    for s, t in zip(reversed(shape), reversed(target), strict=True):
        pad += [0, t - s]
    return (F.pad(x, pad) if any(pad) else x), tuple(shape)


def _memory_ok(
    loaded: LoadedModel,
    strategy: str,
    window: Sequence[int],
    volume: Sequence[int],
    batch: int,
    device: torch.device,
) -> tuple[bool, str]:
    est = plan_memory(
        loaded.config,
        count_parameters(loaded.model),
        strategy,
        window,
        volume,
        batch,
        half_precision=autocast_dtype(device) is not None,
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
    steps: PassCounter,
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
        from .onnx_graphs import onnxruntime_available

        if not onnxruntime_available():
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
    dev = select_device(device)
    shape = tuple(int(s) for s in image.shape[1:])
    plan, window = plan_passes(loaded.config, shape, strategy, roi_size)
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
    steps = PassCounter(n_windows * flips, progress, should_stop)
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
                steps = PassCounter(n_windows * flips, progress, should_stop)
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
