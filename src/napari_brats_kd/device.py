"""Compute-device selection and memory estimates for inference.

``device="auto"`` picks CUDA, then Apple's MPS, then the CPU. Before a run, :func:`estimate_memory`
predicts the peak memory of a forward pass from the volume size and the network's first-stage
width, so that inference can shrink its batch, fall back to the CPU or refuse with a clear
:class:`~napari_brats_kd.errors.ResourceError` instead of dying half-way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
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


def may_have_accelerator() -> bool:
    """Whether ``device="auto"`` could pick a GPU here, answered without importing torch.

    ``False`` means certainly not: no torch, a CPU-only torch build (``2.x+cpu``), or no GPU
    device node (NVIDIA, AMD) on Linux or Windows without CUDA. Then inference can take the lean
    ONNX Runtime path and skip torch's second of start-up. ``True`` only means "ask torch"
    (:func:`select_device`).
    """
    import importlib.metadata
    import importlib.util
    import platform
    import sys

    if importlib.util.find_spec("torch") is None:
        return False
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return True
    if "+cpu" in version:
        return False
    if sys.platform == "darwin":
        return platform.machine() == "arm64"  # Apple silicon: MPS
    if sys.platform.startswith("linux"):
        # NVIDIA, WSL2's GPU bridge (CUDA under Windows' WSL), AMD ROCm
        nodes = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/dxg")
        nodes += ("/dev/kfd",)
        return any(os.path.exists(node) for node in nodes)
    return True  # Windows and others: let torch tell


def check_device_name(device: str) -> None:
    """Refuse a device name that is none of :data:`DEVICE_CHOICES` nor ``cuda:N`` (torch is not
    imported: whether the device exists is for :func:`select_device` to say)."""
    name = str(device).lower()
    index = name.partition(":")[2]
    if name in DEVICE_CHOICES or (name.startswith("cuda:") and index.isdigit()):
        return
    raise ResourceError(
        f"Unknown device {device!r}: expected one of {', '.join(DEVICE_CHOICES)} or cuda:N "
        "(e.g. cuda:1)."
    )


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
        check_device_name(name)
        index = int(name.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ResourceError(
                f"Device {device!r} was requested but this machine has {count} CUDA GPU(s) "
                f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); pick one of those."
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


def available_memory(device: torch.device | str) -> int | None:
    """Bytes that can still be allocated on ``device`` (``None`` when unknown, e.g. MPS).

    On a CPU (``"cpu"`` or a torch device; torch is not imported for it): the system's available
    memory (free plus reclaimable caches), or less when this process runs under a memory limit
    of its own (a container, a batch job's ``--mem``).
    """
    kind = getattr(device, "type", str(device))
    if kind == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if kind != "cpu":
        return None
    system = _system_available()
    limited = cgroup_free_memory()
    if limited is not None and (system is None or limited < system):
        return limited
    return system


def _system_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is optional
        pass
    try:  # Linux: MemAvailable counts the page cache the kernel would give back (MemFree does not)
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


#: Limits at or above this are "no limit" (cgroup v1 writes 2^63 rounded to pages).
_NO_LIMIT = 2**60


def cgroup_free_memory(
    root: str | os.PathLike = "/sys/fs/cgroup", proc_cgroup: str | os.PathLike = "/proc/self/cgroup"
) -> int | None:
    """Bytes left under the memory limits of this process's control groups (Linux).

    A container or a batch job (Docker ``--memory``, SLURM ``--mem``) is killed at its group's
    limit however much memory the machine has free. The limits of the process's group and of every
    group above it count (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``); usage counts
    without the inactive page cache, which the kernel reclaims first.

    Returns
    -------
    int or None
        The smallest headroom, or ``None`` without a limit (or off Linux).
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    best: int | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, group = parts
        if controllers == "":  # cgroup v2
            base, files = Path(root), ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # cgroup v1
            base = Path(root) / "memory"
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        node = base / group.strip("/")
        while True:
            free = _group_headroom(node, *files)
            if free is not None:
                best = free if best is None else min(best, free)
            if node == base or base not in node.parents:
                break
            node = node.parent
    return best


def _group_headroom(node: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        limit_text = (node / limit_file).read_text().strip()
        if limit_text == "max" or int(limit_text) >= _NO_LIMIT:
            return None
        usage = int((node / usage_file).read_text())
    except (OSError, ValueError):
        return None
    inactive = 0
    try:
        for line in (node / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
    except (OSError, ValueError):
        pass
    return max(0, int(limit_text) - usage + inactive)


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


def fits(estimate: MemoryEstimate, device: torch.device | str, fraction: float = 0.9) -> bool:
    """Whether ``estimate`` fits in ``fraction`` of the memory free on ``device`` (unknown: yes)."""
    free = available_memory(device)
    return free is None or estimate.total <= fraction * free


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for ``device`` (bf16 where supported, else fp16); ``None`` on CPU."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
