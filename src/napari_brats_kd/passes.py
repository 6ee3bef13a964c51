"""Planning a model's forward passes over a volume, shared by both back ends (no torch here).

One pass over the whole (brain-cropped) volume when it fits the model's ROI, else MONAI-style
sliding windows; optionally over the 8 mirrorings (test-time augmentation). Each pass reports
progress and can be cancelled (:class:`PassCounter`), and the memory a plan needs is estimated
before anything is allocated (:func:`plan_memory`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from .callbacks import Progress, ShouldStop
from .device import MemoryEstimate, estimate_memory
from .errors import Cancelled, ModelInputError
from .models.config import ModelConfig
from .models.geometry import first_stage_width, network_stride

#: Flip sets of the test-time augmentation (all 8 mirrorings of the 3 spatial axes, as nnU-Net),
#: as axes of a ``(N, C, X, Y, Z)`` batch.
TTA_FLIPS: tuple[tuple[int, ...], ...] = tuple(
    axes for r in range(4) for axes in itertools.combinations((2, 3, 4), r)
)

STRATEGIES = ("auto", "full", "sliding")

BACKENDS = ("auto", "torch", "onnxruntime")


class PassCounter:
    """Counts forward passes, reports progress and honours cancellation between them.

    Parameters
    ----------
    total
        Passes planned.
    progress
        ``progress(done, total, message)``, called after each pass.
    should_stop
        Polled before each pass (and, on the ONNX path, during it); True raises
        :class:`~napari_brats_kd.errors.Cancelled`.
    """

    def __init__(self, total: int, progress: Progress | None, should_stop: ShouldStop | None):
        self.total, self.done = total, 0
        self.progress, self.should_stop = progress, should_stop

    def check(self) -> None:
        """Raise :class:`Cancelled` if the caller asked to stop."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("Segmentation cancelled.")

    def step(self) -> None:
        """Count one finished pass and report it."""
        self.done += 1
        if self.progress is not None:
            done = min(self.done, self.total)
            what = "model pass" if self.total == 1 else f"model pass {done}/{self.total}"
            self.progress(done, self.total, what)


def _round_roi(roi: Sequence[int], stride: int, limit: Sequence[int]) -> tuple[int, int, int]:
    """ROI no larger than needed (``limit``) and a multiple of the network stride."""
    out = []
    for r, lim in zip(roi, limit, strict=True):
        r = min(int(r), int(np.ceil(lim / stride) * stride))
        out.append(max(stride, (r // stride) * stride))
    return tuple(out)  # type: ignore[return-value]


def plan_passes(
    config: ModelConfig,
    shape: Sequence[int],
    strategy: str = "auto",
    roi_size: Sequence[int] | None = None,
) -> tuple[str, tuple[int, int, int]]:
    """``("full", padded shape)`` or ``("sliding", window)`` for a volume of ``shape``.

    Raises
    ------
    ModelInputError
        If the strategy is unknown or an explicit ROI is not a multiple of the stride.
    """
    if strategy not in STRATEGIES:
        raise ModelInputError(f"Unknown strategy {strategy!r}: expected one of {STRATEGIES}.")
    stride = network_stride(config)
    roi = tuple(roi_size) if roi_size is not None else config.roi_size
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
                f"ROI {tuple(roi)} is not a multiple of {config.display_name}'s stride {stride}."
            )
        return "sliding", tuple(int(r) for r in roi)  # type: ignore[return-value]
    return "sliding", _round_roi(roi, stride, shape)


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


def plan_memory(
    config: ModelConfig,
    n_parameters: int,
    strategy: str,
    window: Sequence[int],
    volume: Sequence[int],
    batch: int = 1,
    half_precision: bool = False,
) -> MemoryEstimate:
    """Peak memory of running a plan of :func:`plan_passes`."""
    width, scale = first_stage_width(config)
    window_voxels = int(np.prod(window)) if strategy == "sliding" else int(np.prod(volume))
    return estimate_memory(
        window_voxels=window_voxels,
        volume_voxels=int(np.prod(volume)),
        first_stage_channels=width,
        stage_scale=scale,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        n_parameters=n_parameters,
        batch=batch if strategy == "sliding" else 1,
        bytes_per_value=2 if half_precision else 4,
    )
