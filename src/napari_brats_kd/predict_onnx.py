"""Region probabilities with ONNX Runtime and NumPy: the lean path of :func:`segment`.

One pass of the model's ONNX graph over the whole brain crop (optionally over its 8 mirrorings),
with neither torch nor MONAI imported: what a CPU-only user runs by default. Sliding windows, GPUs
and models held in memory go through :mod:`.predict_torch`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .device import fits
from .errors import ResourceError
from .models.geometry import network_stride
from .onnx_graphs import OnnxModel
from .passes import TTA_FLIPS, PassCounter, Progress, ShouldStop, plan_memory


def sigmoid_(x: np.ndarray) -> np.ndarray:
    """Logistic function in place (no temporary as large as ``x``)."""
    with np.errstate(over="ignore"):  # exp(large) = inf gives exactly 0, as it should
        np.negative(x, out=x)
        np.exp(x, out=x)
    x += 1.0
    return np.reciprocal(x, out=x)


def _padded(image: np.ndarray, multiple: int) -> np.ndarray:
    """``(C, X, Y, Z)`` as a ``(1, C, ...)`` batch zero-padded to a multiple of the stride."""
    target = [int(np.ceil(s / multiple) * multiple) for s in image.shape[1:]]
    if list(image.shape[1:]) == target:
        return np.ascontiguousarray(image[None], np.float32)
    out = np.zeros((1, image.shape[0], *target), np.float32)
    out[0, :, : image.shape[1], : image.shape[2], : image.shape[3]] = image
    return out


def full_pass_probabilities(
    model: OnnxModel,
    image: np.ndarray,
    *,
    tta: bool = False,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Sigmoid probabilities of a normalised ``(C, X, Y, Z)`` array, one pass per mirroring.

    Parameters
    ----------
    model
        The lean model (:func:`~napari_brats_kd.onnx_graphs.onnx_model`).
    image
        Normalised input in model orientation.
    tta
        Average over the 8 mirrorings.
    progress, should_stop
        As for :func:`~napari_brats_kd.inference.segment`; a pass stops within a layer of
        ``should_stop`` returning True.

    Returns
    -------
    probabilities, info
        float32 ``(len(regions), X, Y, Z)``, and the same info dict as the PyTorch back end.

    Raises
    ------
    ResourceError
        If the pass would not fit in the memory available.
    Cancelled
        If ``should_stop`` returned True.
    """
    shape = tuple(int(s) for s in image.shape[1:])
    stride = network_stride(model.config)
    padded_shape = tuple(int(np.ceil(s / stride) * stride) for s in shape)
    estimate = plan_memory(model.config, model.n_parameters, "full", padded_shape, shape)
    if not fits(estimate, "cpu"):
        raise ResourceError(
            f"Segmenting a {'x'.join(map(str, shape))} volume with {model.name} needs about "
            f"{estimate}, more than this machine has free. Close other programs, or crop the "
            "scan to the brain."
        )
    flips = TTA_FLIPS if tta else ((),)
    counter = PassCounter(len(flips), progress, should_stop)
    total: np.ndarray | None = None
    crop = (slice(None), slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))
    for axes in flips:
        counter.check()
        # Mirror, then pad (as the PyTorch path does): padding stays at the far end.
        spatial = tuple(a - 1 for a in axes)  # batch axes -> (C, X, Y, Z) axes
        logits = model.run(_padded(np.flip(image, spatial) if axes else image, stride), should_stop)
        logits = logits[0][crop]
        if axes:
            logits = np.flip(logits, spatial)
        probs = sigmoid_(np.ascontiguousarray(logits, np.float32))
        counter.step()
        total = probs if total is None else np.add(total, probs, out=total)
    assert total is not None
    if len(flips) > 1:
        total /= len(flips)
    info = {
        "device": "cpu",
        "backend": "onnxruntime",
        "strategy": "full",
        "window": padded_shape,
        "n_forward": counter.done,
    }
    return total, info
