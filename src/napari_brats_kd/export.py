"""Export a model to ONNX or TorchScript, and check the export against PyTorch.

Both formats take a ``(N, C, X, Y, Z)`` float32 tensor (normalised, model orientation, spatial
sizes multiples of the network stride) and return region logits ``(N, R, X, Y, Z)``; spatial sizes
are dynamic. The model config travels along (ONNX metadata ``napari_brats_kd.config``, TorchScript
extra file ``config.json``), so an exported file still says which modalities go in which channel.
Each export is run on a phantom case (or random data) and compared with the PyTorch model: the
largest probability difference and the fraction of voxels whose label agrees are reported.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import labels as lab
from .errors import CheckpointError
from .models import LoadedModel, normalize_input, resolve_model
from .models.geometry import network_stride
from .onnx_graphs import (
    META_CONFIG,
    META_WEIGHTS_SHA,
    ONNX_OPSET,
    new_session,
    onnxruntime_available,
)


@dataclass(frozen=True)
class ExportReport:
    """Result of an export and its check against PyTorch.

    Attributes
    ----------
    path
        File written.
    format
        ``"onnx"`` or ``"torchscript"``.
    input_shape
        Shape of the check input ``(1, C, X, Y, Z)``.
    max_abs_diff
        Largest absolute difference of sigmoid probabilities, export vs PyTorch.
    label_agreement
        Fraction of voxels with the same label map value (1.0 = identical labels).
    """

    path: Path
    format: str
    input_shape: tuple[int, ...]
    max_abs_diff: float
    label_agreement: float

    def __str__(self) -> str:
        return (
            f"{self.format} -> {self.path}: max |p_export - p_torch| = {self.max_abs_diff:.2e}, "
            f"label agreement {100 * self.label_agreement:.4f} % on input "
            f"{'x'.join(map(str, self.input_shape))}"
        )


def check_input(loaded: LoadedModel, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A normalised ``(1, C, X, Y, Z)`` check input: a 4 mm phantom case, or noise without one.

    Spatial sizes are rounded up to the network stride.
    """
    cfg = loaded.config
    stride = network_stride(cfg)
    try:
        from .phantom import make_phantom

        image = make_phantom(seed, spacing=4.0).model_input(cfg.modalities)
    except (ImportError, OSError):  # phantom assets missing: random brain-like data
        image = np.random.default_rng(seed).random((cfg.in_channels, size, size, size), np.float32)
    image = normalize_input(image, cfg.normalization)
    target = [max(stride, int(np.ceil(s / stride) * stride)) for s in image.shape[1:]]
    padded = np.zeros((cfg.in_channels, *target), np.float32)
    padded[:, : image.shape[1], : image.shape[2], : image.shape[3]] = image
    return torch.from_numpy(padded)[None]


def _compare(
    loaded: LoadedModel, run: Callable[[np.ndarray], np.ndarray], x: torch.Tensor
) -> tuple[float, float]:
    """Worst probability difference and label agreement over ``x`` and a half-depth copy.

    The second, smaller input proves the exported graph is not frozen to the export input's shape.
    """
    stride = network_stride(loaded.config)
    half = max(stride, (x.shape[-1] // 2) // stride * stride)
    results = [_compare_one(loaded, run, t) for t in (x, x[..., :half].contiguous())]
    return max(r[0] for r in results), min(r[1] for r in results)


def _compare_one(
    loaded: LoadedModel, run: Callable[[np.ndarray], np.ndarray], x: torch.Tensor
) -> tuple[float, float]:
    with torch.inference_mode():
        ref = torch.sigmoid(loaded.model.cpu().eval()(x)).numpy()[0]
    out = 1.0 / (1.0 + np.exp(-run(x.numpy())[0].astype(np.float64)))
    conv = lab.LabelConvention(loaded.config.convention)
    regions = loaded.config.regions
    labels_ref = lab.regions_to_labels(ref > 0.5, conv, regions)
    labels_out = lab.regions_to_labels(out > 0.5, conv, regions)
    return float(np.abs(out - ref).max()), float((labels_ref == labels_out).mean())


def onnx_bytes(
    loaded: LoadedModel, sample: torch.Tensor | None = None, opset: int = ONNX_OPSET
) -> bytes:
    """The ONNX graph of ``loaded`` (dynamic batch and spatial axes), as bytes.

    Raises
    ------
    CheckpointError
        If the exporter fails.
    """
    import io

    stride = network_stride(loaded.config)
    if sample is None:
        sample = torch.zeros(1, loaded.config.in_channels, 2 * stride, 2 * stride, 2 * stride)
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    net = loaded.model.cpu().eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript-based exporter is deprecated in favour of torch.export, which does
            # not yet handle MONAI's data-dependent shapes; it still gives a correct graph.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (sample,),
                buffer,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": axes, "logits": axes},
                opset_version=opset,
                dynamo=False,
            )
    except Exception as exc:  # exporter failures come in many types; report them as one
        raise CheckpointError(f"ONNX export of {loaded.name} failed: {exc}") from exc
    return buffer.getvalue()


def _half_exact_initializers(proto) -> int:
    """Store float32 weights that are exactly float16 as float16, cast back when loaded.

    The shipped teacher's weights are kept in float16 (half the file), so its float32 graph
    holds float16 values: stored as such, with a ``Cast`` to float32 that onnxruntime folds when
    the session is built, the graph halves too and computes exactly what it did. A tensor that
    would change is left as it is. Returns the number of tensors converted.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    casts, converted = [], 0
    for init in list(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        value = numpy_helper.to_array(init)
        half = value.astype(np.float16)
        if value.size < 16 or not np.array_equal(half.astype(np.float32), value):
            continue
        stored = f"{init.name}__fp16"
        graph.initializer.remove(init)
        graph.initializer.append(numpy_helper.from_array(half, stored))
        casts.append(helper.make_node("Cast", [stored], [init.name], to=TensorProto.FLOAT))
        converted += 1
    for node in reversed(casts):
        graph.node.insert(0, node)
    return converted


def graph_bytes(loaded: LoadedModel, weights_sha: str | None = None) -> bytes:
    """The ONNX graph the lean inference path runs (:mod:`napari_brats_kd.onnx_graphs`).

    :func:`onnx_bytes`, plus, when the ``onnx`` package is installed, the model config and the
    SHA-256 of the weights file in the metadata and float16 storage of weights that are exactly
    float16.

    Parameters
    ----------
    loaded
        The model.
    weights_sha
        SHA-256 of the checkpoint it was loaded from (names the weights in the metadata).
    """
    data = onnx_bytes(loaded)
    try:
        import onnx
    except ImportError:
        return data
    proto = onnx.load_from_string(data)
    _half_exact_initializers(proto)
    props = {META_CONFIG: loaded.config.to_json(), "producer": "napari-brats-kd"}
    if weights_sha is not None:
        props[META_WEIGHTS_SHA] = weights_sha
    onnx.helper.set_model_props(proto, props)
    return proto.SerializeToString()


def write_graph(loaded: LoadedModel, weights: str | os.PathLike) -> ExportReport:
    """Write the lean-path graph beside a checkpoint (``x.safetensors`` -> ``x.onnx``) and check it.

    What packaging a model does, so the shipped model needs no export at run time.

    Parameters
    ----------
    loaded
        The model loaded from ``weights``.
    weights
        Its checkpoint file.

    Returns
    -------
    ExportReport
        The check against PyTorch on a phantom case.
    """
    import onnxruntime as ort

    from ._files import atomic_write
    from .onnx_graphs import file_sha256, shipped_graph_path

    weights = Path(weights)
    out = shipped_graph_path(weights)
    data = graph_bytes(loaded, file_sha256(weights))
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = check_input(loaded)
    diff, agree = _compare(loaded, lambda a: session.run(None, {"image": a})[0], x)
    return ExportReport(out, "onnx", tuple(x.shape), diff, agree)


def onnx_session(loaded: LoadedModel, threads: int | None = None):
    """A cached onnxruntime CPU session of ``loaded``, rebuilt when its weights change.

    Parameters
    ----------
    loaded
        The model.
    threads
        Intra-op threads (default: ``torch.get_num_threads()``).

    Raises
    ------
    CheckpointError
        If onnxruntime is not installed or the export fails.
    """
    if not onnxruntime_available():
        raise CheckpointError(
            "The onnxruntime back end needs onnxruntime: pip install 'napari-brats-kd[onnx]'."
        )
    threads = int(threads or torch.get_num_threads())
    # In-place updates (an optimizer step) bump tensor versions: a stale graph is never reused.
    version = tuple((p.data_ptr(), p._version) for p in loaded.model.parameters())
    key = ("onnxruntime", threads)
    cached = loaded.runtime_cache.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    session = new_session(onnx_bytes(loaded), threads)
    loaded.runtime_cache[key] = (version, session)
    return session


def export_onnx(
    model: str | os.PathLike | LoadedModel, out: str | os.PathLike, opset: int = ONNX_OPSET
) -> ExportReport:
    """Export ``model`` to an ONNX file with dynamic batch and spatial axes, and check it.

    Parameters
    ----------
    model
        Model name, checkpoint / bundle path or loaded model.
    out
        ``.onnx`` file to write.
    opset
        ONNX opset version.

    Returns
    -------
    ExportReport

    Raises
    ------
    CheckpointError
        If the model cannot be loaded or exported, or onnx / onnxruntime are missing.
    """
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as exc:
        raise CheckpointError(
            "ONNX export needs the onnx and onnxruntime packages: "
            "pip install 'napari-brats-kd[onnx]'."
        ) from exc
    from ._files import atomic_write

    loaded = resolve_model(model)
    out = Path(out)
    x = check_input(loaded)
    proto = onnx.load_from_string(onnx_bytes(loaded, x, opset))
    onnx.helper.set_model_props(
        proto, {"napari_brats_kd.config": loaded.config.to_json(), "producer": "napari-brats-kd"}
    )
    data = proto.SerializeToString()
    # Written whole or not at all: a full disk must not leave a torn graph where a good one was.
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    diff, agree = _compare(loaded, lambda a: session.run(None, {"image": a})[0], x)
    return ExportReport(out, "onnx", tuple(x.shape), diff, agree)


def export_torchscript(
    model: str | os.PathLike | LoadedModel, out: str | os.PathLike
) -> ExportReport:
    """Export ``model`` to a traced TorchScript file (spatial sizes stay dynamic), and check it.

    Parameters
    ----------
    model
        Model name, checkpoint / bundle path or loaded model.
    out
        ``.pt`` file to write (load with ``torch.jit.load``; the config is the extra file
        ``config.json``).

    Returns
    -------
    ExportReport
    """
    from ._files import atomic_write

    loaded = resolve_model(model)
    out = Path(out)
    x = check_input(loaded)
    net = loaded.model.cpu().eval()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic are benign
            traced = torch.jit.trace(net, x, check_trace=False)
    except Exception as exc:  # tracer failures come in many types; report them as one
        raise CheckpointError(f"TorchScript export of {loaded.name} failed: {exc}") from exc
    extra = {"config.json": loaded.config.to_json()}
    # Written whole or not at all: a full disk must not leave a torn file where a good one was.
    atomic_write(out, lambda tmp: torch.jit.save(traced, str(tmp), _extra_files=extra))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        reloaded = torch.jit.load(str(out), map_location="cpu")

    def run(a: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return reloaded(torch.from_numpy(a)).numpy()

    diff, agree = _compare(loaded, run, x)
    return ExportReport(out, "torchscript", tuple(x.shape), diff, agree)
