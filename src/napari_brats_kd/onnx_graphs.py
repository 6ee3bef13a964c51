"""The lean inference path's models: ONNX graphs run by ONNX Runtime, without torch or MONAI.

Importing torch and MONAI takes about 3 s, five times what the student needs to segment a case,
so :func:`~napari_brats_kd.inference.segment` runs a model's ONNX graph whenever it can. Where the
graph comes from, first hit wins:

1. a shipped model carries one beside its weights (``weights/student.onnx``), written when it is
   packaged (:func:`napari_brats_kd.export.write_graph`) and checked against PyTorch by the tests.
   Its metadata names the SHA-256 of the weights it was made from, so a stale graph never runs;
2. any other napari-brats-kd checkpoint has its graph exported once (that needs torch) into the
   user cache, ``<cache>/onnx/<weights SHA-256>-<package version>-opset<N>.onnx``, and reused
   from then on by every process. ``NAPARI_BRATS_KD_CACHE`` moves the cache.

Sessions are kept per graph and thread count for the life of the process.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .callbacks import ShouldStop
from .errors import Cancelled, CheckpointError
from .models.config import ModelConfig
from .models.header import count_stored_parameters

if TYPE_CHECKING:
    from .models.registry import ModelChoice

#: ONNX opset of every graph (onnxruntime >= 1.17 runs it).
ONNX_OPSET = 17

#: Metadata keys of a graph written by napari-brats-kd.
META_WEIGHTS_SHA = "napari_brats_kd.weights_sha256"
META_CONFIG = "napari_brats_kd.config"

#: Environment variable naming the cache folder (default: the platform's user cache).
CACHE_ENV = "NAPARI_BRATS_KD_CACHE"

#: How often a running pass checks whether it was cancelled (seconds).
CANCEL_POLL_S = 0.05


def cache_dir() -> Path:
    """The user cache folder of napari-brats-kd (created on first write, not here)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "napari-brats-kd" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "napari-brats-kd"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-brats-kd"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_graph_path(weights_sha: str) -> Path:
    """Where the cache keeps the graph of the weights with this SHA-256."""
    return cache_dir() / "onnx" / f"{weights_sha}-{__version__}-opset{ONNX_OPSET}.onnx"


def shipped_graph_path(weights: Path) -> Path:
    """The graph a shipped model's weights carry (``student.safetensors`` -> ``student.onnx``)."""
    return weights.with_suffix(".onnx")


@functools.cache
def onnxruntime_available() -> bool:
    """Whether onnxruntime imports (a broken install, e.g. a missing DLL, counts as absent)."""
    try:
        import onnxruntime  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def default_threads() -> int:
    """Intra-op threads: ``OMP_NUM_THREADS`` when set (clusters set it), else 0 (one per core)."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


@dataclass
class OnnxModel:
    """A model ready for the lean path: its config and an ONNX Runtime session.

    Attributes
    ----------
    name
        Name the model goes by.
    config
        Its config (modalities, regions, normalisation, ROI).
    weights
        The checkpoint the graph was made from.
    graph
        The graph file (``None`` when it could only be kept in memory).
    n_parameters
        Values stored in the checkpoint (for the memory estimate).
    session
        The ``onnxruntime.InferenceSession``.
    notes
        What happened on the way (a graph exported, a cache that could not be written).
    """

    name: str
    config: ModelConfig
    weights: Path
    graph: Path | None
    n_parameters: int
    session: Any = field(repr=False)
    notes: list[str] = field(default_factory=list)

    def run(self, batch: np.ndarray, should_stop: ShouldStop | None = None) -> np.ndarray:
        """Region logits ``(N, R, X, Y, Z)`` of a normalised ``(N, C, X, Y, Z)`` float32 batch.

        Parameters
        ----------
        batch
            Network input; spatial sizes multiples of the network stride.
        should_stop
            Polled every :data:`CANCEL_POLL_S` seconds while the pass runs; when it returns
            True the pass is abandoned within one layer and :class:`Cancelled` raised.
        """
        import onnxruntime as ort

        feed = {"image": np.ascontiguousarray(batch, np.float32)}
        options = ort.RunOptions()
        if should_stop is None:
            try:
                return self.session.run(None, feed, options)[0]
            except Exception as exc:  # onnxruntime's own error types
                raise _run_error(self.name, exc) from exc
        finished = threading.Event()

        def watch() -> None:
            while not finished.wait(CANCEL_POLL_S):
                if should_stop():
                    options.terminate = True  # onnxruntime checks it between nodes
                    return

        watcher = threading.Thread(target=watch, name="brats-kd-cancel", daemon=True)
        watcher.start()
        try:
            return self.session.run(None, feed, options)[0]
        except Exception as exc:  # onnxruntime's own error types; only a stop is ours
            if options.terminate:
                raise Cancelled("Segmentation cancelled.") from exc
            raise _run_error(self.name, exc) from exc
        finally:
            finished.set()
            watcher.join()


_sessions: dict[tuple[str, int], OnnxModel] = {}


def _run_error(name: str, exc: Exception) -> Exception:
    """A user-facing error for a failed onnxruntime pass (memory, or anything else)."""
    from .errors import ResourceError

    text = str(exc)
    if "alloc" in text.lower():
        return ResourceError(
            f"Out of memory segmenting with {name}: {text.splitlines()[0][:300]}. Close other "
            "programs, or use a smaller model (the student)."
        )
    return CheckpointError(f"onnxruntime failed running {name}: {text.splitlines()[0][:300]}")


_failed: dict[str, Exception] = {}
_building: dict[tuple[str, int], threading.Lock] = {}
_lock = threading.Lock()


def new_session(source: Path | bytes, threads: int):
    """An onnxruntime CPU session of a graph file or its bytes (``threads``: 0 = one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: one per physical core (onnxruntime's default)
    options.inter_op_num_threads = 1
    return ort.InferenceSession(
        str(source) if isinstance(source, Path) else source,
        options,
        providers=["CPUExecutionProvider"],
    )


def _graph_weights_sha(session: Any) -> str | None:
    return session.get_modelmeta().custom_metadata_map.get(META_WEIGHTS_SHA)


def onnx_model(choice: ModelChoice, threads: int | None = None) -> OnnxModel | None:
    """The lean-path model of ``choice``, or ``None`` when it has no lean path.

    No lean path: onnxruntime is not installed, the model is held in memory (its weights may
    differ from any file), or it is not a napari-brats-kd checkpoint (a MONAI bundle, a ``.pt``
    state dict). A graph missing from the package and the cache is exported here, once, which
    imports torch.

    Parameters
    ----------
    choice
        A model picked by :func:`~napari_brats_kd.models.registry.choose_model`.
    threads
        Intra-op threads (``None``: :func:`default_threads`; 0: one per physical core).

    Raises
    ------
    CheckpointError
        If the checkpoint cannot be read or exported.
    """
    if not onnxruntime_available() or choice.loaded is not None or choice.config is None:
        return None
    weights = choice.path
    if weights is not None and weights.is_dir():
        weights = next(iter(sorted(weights.glob("*.safetensors"))), None)
    if weights is None or not weights.is_file():
        return None
    threads = int(threads) if threads else default_threads()
    sha = file_sha256(weights)
    key = (sha, threads)
    with _lock:
        cached = _sessions.get(key)
        failed = _failed.get(sha)
        building = _building.setdefault(key, threading.Lock())
    if cached is not None:
        return cached
    if failed is not None:  # a graph that cannot be made is not tried again for every case
        raise failed
    with building:  # a warm-up and a Run at once build one session, not two
        with _lock:
            cached = _sessions.get(key)
        if cached is not None:
            return cached
        try:
            model = _open(choice, weights, sha, threads)
        except CheckpointError as exc:
            with _lock:
                _failed[sha] = exc
            raise
        with _lock:
            _sessions[key] = model
    return model


def _open(choice: ModelChoice, weights: Path, sha: str, threads: int) -> OnnxModel:
    assert choice.config is not None
    notes: list[str] = []
    n_parameters = count_stored_parameters(weights)
    # A shipped graph must name its weights; a cached one is named by them (its metadata can be
    # missing: the exporter adds it only when the onnx package is installed).
    for graph, unnamed_ok in ((shipped_graph_path(weights), False), (cached_graph_path(sha), True)):
        if not graph.is_file():
            continue
        try:
            session = new_session(graph, threads)
        except Exception:  # a truncated or foreign file: made anew below
            continue
        if _graph_weights_sha(session) in ((sha, None) if unnamed_ok else (sha,)):
            return OnnxModel(choice.name, choice.config, weights, graph, n_parameters, session)
    graph, data = _export_to_cache(choice, sha, notes)
    try:
        session = new_session(graph if graph is not None else data, threads)
    except Exception as exc:  # onnxruntime's own error types: a graph it cannot run
        raise CheckpointError(f"onnxruntime cannot run the graph of {choice.name}: {exc}") from exc
    return OnnxModel(choice.name, choice.config, weights, graph, n_parameters, session, notes)


def _export_to_cache(choice: ModelChoice, sha: str, notes: list[str]) -> tuple[Path | None, bytes]:
    """Export the graph (torch) and keep it in the cache; in memory only if that fails."""
    from ._files import atomic_write
    from .export import graph_bytes
    from .models.registry import load_choice

    data = graph_bytes(load_choice(choice), weights_sha=sha)
    target = cached_graph_path(sha)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: tmp.write_bytes(data))
    except OSError as exc:
        notes.append(
            f"could not keep {choice.name}'s ONNX graph in {target.parent} ({exc}): it is "
            f"exported again in each new session; set {CACHE_ENV} to a writable folder"
        )
        return None, data
    notes.append(f"exported {choice.name}'s ONNX graph once, to {target}")
    return target, data


def clear_sessions() -> None:
    """Forget the sessions of this process (tests, or to free memory)."""
    with _lock:
        _sessions.clear()
        _failed.clear()
