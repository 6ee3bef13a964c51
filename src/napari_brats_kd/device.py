"""Compute-device selection and memory estimates for inference.

``device="auto"`` picks CUDA, then Apple's MPS, then the CPU. Before a run, :func:`estimate_memory`
predicts the peak memory of a forward pass from the volume size and the network's first-stage
width, so that inference can shrink its batch, fall back to the CPU or refuse with a clear
:class:`~napari_brats_kd.errors.ResourceError` instead of dying half-way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ResourceError

if TYPE_CHECKING:  # torch is imported inside the functions so the CLI can read DEVICE_CHOICES fast
    import torch

#: Device names accepted by the API, the CLI and the widget.
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")

#: Full-resolution feature maps alive at once at the peak of a SegResNet-like forward pass.
#: Calibrated with benchmarks/bench_inference.py on CPU: the bundle SegResNet on one 240x240x160
#: window peaked 3.4 GB above the process baseline, about 4.9 maps of 16 channels plus the input,
#: output and blending buffers; 6 leaves headroom for allocator slack.
ACTIVATION_MAPS = 6.0


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"``/``"cpu"``/``"cuda"``/``"mps"`` (or ``"cuda:1"``) to a torch device.

    Raises
    ------
    ResourceError
        If the requested accelerator is not available on this machine.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ResourceError(
                "CUDA was requested but no CUDA GPU is available to PyTorch here "
                f"(torch {torch.__version__}); use device 'cpu' or 'auto'."
            )
        return torch.device(name)
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ResourceError("MPS was requested but is not available; use 'cpu' or 'auto'.")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ResourceError(f"Unknown device {device!r}: expected one of {', '.join(DEVICE_CHOICES)}.")


def available_memory(device: torch.device) -> int | None:
    """Bytes that can still be allocated on ``device`` (``None`` when unknown, e.g. MPS)."""
    import torch

    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except ImportError:  # psutil is optional; fall back to sysconf on POSIX
            try:
                return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            except (ValueError, OSError, AttributeError):
                return None
    return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak bytes of one inference run, split by cause."""

    activations: int
    buffers: int
    weights: int

    @property
    def total(self) -> int:
        return self.activations + self.buffers + self.weights

    def __str__(self) -> str:
        return f"{self.total / 2**30:.2f} GiB"


def estimate_memory(
    window_voxels: int,
    volume_voxels: int,
    first_stage_channels: int,
    stage_scale: float,
    in_channels: int,
    out_channels: int,
    n_parameters: int,
    batch: int = 1,
    bytes_per_value: int = 4,
) -> MemoryEstimate:
    """Predict peak memory of segmenting one volume.

    Parameters
    ----------
    window_voxels
        Voxels of one network input (the padded crop for a full pass, the ROI for windows).
    volume_voxels
        Voxels of the whole (cropped) volume: input, output and blending buffers live at this size.
    first_stage_channels, stage_scale
        Width of the network's first stage and its resolution relative to the input (1/8 for a
        half-resolution student).
    in_channels, out_channels
        Modalities in, regions out.
    n_parameters
        Parameters of the network.
    batch
        Windows per forward pass.
    bytes_per_value
        4 for float32, 2 under fp16/bf16 autocast (activations only).

    Returns
    -------
    MemoryEstimate
    """
    stage_voxels = window_voxels * batch * stage_scale
    activations = int(
        stage_voxels * first_stage_channels * ACTIVATION_MAPS * bytes_per_value
        # the input window and the upsampled logits exist at full resolution whatever the stem
        + window_voxels * batch * (in_channels + 2 * out_channels) * 4
    )
    # normalised input, logits, blending weights / counts, probabilities
    buffers = int(volume_voxels * (in_channels + 4 * out_channels) * 4)
    return MemoryEstimate(activations, buffers, int(n_parameters * 4))


def fits(estimate: MemoryEstimate, device: torch.device, fraction: float = 0.9) -> bool:
    """Whether ``estimate`` fits in ``fraction`` of the memory free on ``device`` (unknown: yes)."""
    free = available_memory(device)
    return free is None or estimate.total <= fraction * free


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device`` (bf16 where supported, else fp16); ``None`` on CPU."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
