"""Which models exist: shipped weights, models registered in this session, and paths.

Shipped weights live in ``napari_brats_kd/weights/`` and are listed in its ``index.json``::

    {"models": [{"name": "student", "file": "student.safetensors", "role": "student",
                 "description": "..."}]}

so adding a trained model to the package is a file drop plus one index entry. Models trained or
loaded during a session can be :func:`register_model`-ed so the widget lists them too.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CaseError, CheckpointError
from ..labels import MODALITY_NAMES
from .config import ModelConfig
from .header import read_checkpoint_config

if TYPE_CHECKING:  # torch comes with the checkpoint module: imported only to load weights
    from .checkpoint import LoadedModel

#: Folder of shipped weights and its index.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
INDEX_FILE = WEIGHTS_DIR / "index.json"

ROLES = ("student", "teacher")

_HOW_TO_GET = (
    "Train one with `brats-kd distill` / `brats-kd train`, or load a checkpoint "
    "(a .safetensors file written by napari-brats-kd) or a MONAI bundle folder "
    "(e.g. brats_mri_segmentation) by giving its path instead."
)


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the model list.

    Attributes
    ----------
    name
        Name shown to users and accepted by :func:`resolve_model`.
    path
        Weights file or bundle folder.
    description
        One line for the widget's tooltip.
    role
        ``"student"`` or ``"teacher"``.
    source
        ``"shipped"`` (package weights) or ``"session"`` (registered at run time).
    """

    name: str
    path: Path
    description: str
    role: str
    source: str


_session: dict[str, tuple[ModelInfo, LoadedModel | None]] = {}
_cache: dict[tuple[str, int], LoadedModel] = {}
_lock = threading.Lock()


def _read_index(index_file: Path | None = None) -> list[ModelInfo]:
    index_file = INDEX_FILE if index_file is None else index_file
    if not index_file.is_file():
        return []
    try:
        entries = json.loads(index_file.read_text()).get("models", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"Shipped model index {index_file} is unreadable: {exc}") from exc
    out = []
    for entry in entries:
        try:
            path = index_file.parent / entry["file"]
            out.append(
                ModelInfo(
                    name=str(entry["name"]),
                    path=path,
                    description=str(entry.get("description", "")),
                    role=str(entry.get("role", "student")),
                    source="shipped",
                )
            )
        except (KeyError, TypeError) as exc:
            raise CheckpointError(
                f"Entry {entry!r} of {index_file} lacks 'name' or 'file' ({exc})."
            ) from exc
    return out


def shipped_models() -> list[ModelInfo]:
    """Models listed in the package's ``weights/index.json`` whose file is present."""
    return [m for m in _read_index() if m.path.exists()]


def available_models() -> list[ModelInfo]:
    """Shipped models, then models registered in this session (most recent last)."""
    with _lock:
        session = [info for info, _ in _session.values()]
    return shipped_models() + session


def register_model(
    path_or_loaded: str | os.PathLike | LoadedModel,
    name: str | None = None,
    role: str | None = None,
) -> ModelInfo:
    """Make a checkpoint (or an in-memory model) appear in :func:`available_models`.

    Parameters
    ----------
    path_or_loaded
        A ``.safetensors`` checkpoint / bundle path, or a :class:`LoadedModel`.
    name
        Name to list it under (default: the config's name, else the file stem).
    role
        ``"student"`` or ``"teacher"`` (default: student for the ``student`` architecture).

    Returns
    -------
    ModelInfo
        The new entry; registering the same name again replaces the old entry.
    """
    if _is_loaded_model(path_or_loaded):
        loaded: LoadedModel | None = path_or_loaded  # type: ignore[assignment]
        config = path_or_loaded.config
        path = path_or_loaded.path or Path(f"<memory:{config.display_name}>")
    else:
        loaded = None
        path = Path(path_or_loaded)
        config = (
            read_checkpoint_config(path)
            if path.suffix == ".safetensors"
            else resolve_model(path).config
        )
    name = name or config.name or path.stem
    role = role or ("student" if config.arch == "student" else "teacher")
    info = ModelInfo(
        name=name,
        path=path,
        description=config.description or config.display_name,
        role=role,
        source="session",
    )
    with _lock:
        _session[name] = (info, loaded)
    return info


def _load_path(path: Path) -> LoadedModel:
    """Load a path by kind: napari-brats-kd checkpoint, bundle folder or ``.pt`` state_dict."""
    from .bundle import load_bundle
    from .checkpoint import load_checkpoint

    if not path.exists():
        raise CheckpointError(f"Model {str(path)!r} is neither a known model name nor a file.")
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    with _lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    if path.is_dir():
        ckpts = sorted(path.glob("*.safetensors"))
        loaded = load_checkpoint(ckpts[0]) if len(ckpts) == 1 else load_bundle(path)
    elif path.suffix == ".safetensors":
        loaded = load_checkpoint(path)
    elif path.suffix in (".pt", ".pth", ".ckpt"):
        loaded = load_bundle(path)
    else:
        raise CheckpointError(
            f"Model file {path} has an unknown type: expected a .safetensors checkpoint, a "
            "MONAI bundle folder, or a .pt state_dict."
        )
    with _lock:
        _cache[key] = loaded
    return loaded


def _is_loaded_model(obj: Any) -> bool:
    """Whether ``obj`` is a :class:`LoadedModel`, without importing torch to find out.

    One can only exist once the checkpoint module (and torch) has been imported.
    """
    checkpoint = sys.modules.get(f"{__package__}.checkpoint")
    return checkpoint is not None and isinstance(obj, checkpoint.LoadedModel)


@dataclass(frozen=True)
class ModelChoice:
    """A model picked by name or path, before its weights are loaded.

    Attributes
    ----------
    name
        The name it goes by (the shipped or registered name, else the file name).
    path
        Weights file or bundle folder (``None`` for a model made in memory).
    config
        Its config, read from the checkpoint's header; ``None`` for a MONAI bundle or a ``.pt``
        state dict, whose config is only known once loaded.
    reason
        Why this model was picked when it is not the one the name means by default (the case
        lacks a modality the default needs), else ``None``.
    loaded
        The model itself when it is already in memory (registered in this session).
    """

    name: str
    path: Path | None
    config: ModelConfig | None
    reason: str | None = None
    loaded: LoadedModel | None = None


def _config_of(path: Path) -> ModelConfig | None:
    """A checkpoint's config from its header (``None`` for bundles and ``.pt`` files)."""
    if path.is_file() and path.suffix == ".safetensors":
        return read_checkpoint_config(path)
    if path.is_dir():
        ckpts = sorted(path.glob("*.safetensors"))
        if len(ckpts) == 1:
            return read_checkpoint_config(ckpts[0])
    return None


def choose_model(
    spec: str | os.PathLike | LoadedModel,
    modalities: Sequence[str] | None = None,
    role: str = "student",
) -> ModelChoice:
    """Find the model ``spec`` names without loading it (no torch, no MONAI).

    ``"student"`` and ``"teacher"`` mean "the shipped model of that role": when ``modalities`` is
    given and the first one needs a modality the case lacks (say a clinical scan with T1c and
    FLAIR only), the first shipped model of the role whose inputs the case has is taken instead.
    A named model or a file is taken as it is, fitting or not (the caller's check then says what
    is missing).

    Parameters
    ----------
    spec
        As for :func:`resolve_model`.
    modalities
        The modalities the case has (``None``: take the role's default).
    role
        Role to take when ``spec`` is empty (``""``).

    Returns
    -------
    ModelChoice

    Raises
    ------
    CaseError
        If ``spec`` is a role and no shipped model of it fits the modalities: the message lists
        each model with the modalities it would need.
    CheckpointError
        If the name is unknown, no shipped weights of the role exist, or a header is unreadable.
    """
    if _is_loaded_model(spec):
        loaded: LoadedModel = spec  # type: ignore[assignment]
        return ModelChoice(loaded.name, loaded.path, loaded.config, loaded=loaded)
    text = str(spec) or role
    with _lock:
        entry = _session.get(text)
    shipped = shipped_models()
    if entry is not None:
        info, in_memory = entry
        config = in_memory.config if in_memory is not None else _config_of(info.path)
        lacks = config is not None and not set(modalities or config.modalities) >= set(
            config.modalities
        )
        if not (text in ROLES and lacks):  # a registered "student" that fits the case wins
            return ModelChoice(info.name, info.path, config, loaded=in_memory)

    if text in ROLES:  # before names: the shipped "student" is also the role's default
        return _choose_for_role(text, [m for m in shipped if m.role == text], modalities)
    for info in shipped:
        if info.name == text:
            return ModelChoice(info.name, info.path, read_checkpoint_config(info.path))
    path = Path(text).expanduser()
    if not path.exists():
        known = [m.name for m in available_models()]
        raise CheckpointError(
            f"Model {text!r} is neither a known model name "
            f"({', '.join(known) if known else 'none are available'}) nor an existing file. "
            f"{_HOW_TO_GET}"
        )
    return ModelChoice(path.name, path, _config_of(path))


def _choose_for_role(
    role: str, candidates: list[ModelInfo], modalities: Sequence[str] | None
) -> ModelChoice:
    if not candidates:
        raise CheckpointError(
            f"No shipped {role} weights are installed (napari_brats_kd/weights/index.json lists "
            f"none for this role). {_HOW_TO_GET}"
        )
    first = candidates[0]
    first_config = read_checkpoint_config(first.path)
    have = set(modalities) if modalities is not None else None
    if have is None or have >= set(first_config.modalities):
        return ModelChoice(first.name, first.path, first_config)
    # Only now the other headers: a damaged file the default does not need stops nothing.
    needs = {info.name: read_checkpoint_config(info.path) for info in candidates}
    for info in candidates:
        config = needs[info.name]
        if have >= set(config.modalities):
            lacking = [m for m in needs[first.name].modalities if m not in have]
            reason = (
                f"used {info.name} ({_names(config.modalities)}): the case has no "
                f"{_names(lacking)}, which {needs[first.name].name or role} needs"
            )
            return ModelChoice(info.name, info.path, config, reason)
    options = "; ".join(f"{name} needs {_names(c.modalities)}" for name, c in needs.items())
    raise CaseError(
        f"No shipped {role} fits a case with {_names(modalities or ()) or 'no scans'}: "
        f"{options}. Add the missing scans, or give a model trained on these (brats-kd distill "
        "--modalities ...)."
    )


def load_choice(choice: ModelChoice) -> LoadedModel:
    """The network of a :class:`ModelChoice` (loaded once per file and cached)."""
    if choice.loaded is not None:
        return choice.loaded
    assert choice.path is not None  # only in-memory models lack a path
    return _load_path(choice.path)


def resolve_model(spec: str | os.PathLike | LoadedModel, role: str = "student") -> LoadedModel:
    """Turn a model name, path or loaded model into a :class:`LoadedModel`.

    Parameters
    ----------
    spec
        ``"student"`` / ``"teacher"`` (the shipped model of that role), the name of a shipped or
        registered model, a ``.safetensors`` checkpoint, a MONAI bundle folder or ``model.pt``, or
        an already loaded model (returned as is).
    role
        Role to load when ``spec`` is empty (``""``).

    Returns
    -------
    LoadedModel

    Raises
    ------
    CheckpointError
        If the name is unknown, no shipped weights of the role exist, or loading fails.
    """
    return load_choice(choose_model(spec, role=role))


def resolve_model_for(
    spec: str | os.PathLike | LoadedModel, modalities: Sequence[str]
) -> tuple[LoadedModel, str | None]:
    """The model ``spec`` names, or, for a role, the shipped one that fits the scans at hand.

    :func:`choose_model`, then the weights loaded.

    Returns
    -------
    model, reason
        The model, and why it was picked when it is not the one ``spec`` names by default
        (``None`` otherwise).

    Raises
    ------
    CaseError, CheckpointError
        As :func:`choose_model`, or if loading fails.
    """
    choice = choose_model(spec, modalities)
    return load_choice(choice), choice.reason


def _names(modalities: Sequence[str]) -> str:
    return ", ".join(MODALITY_NAMES[m] for m in modalities)


def clear_session_models() -> None:
    """Forget registered models and cached loads (tests, or to free memory)."""
    with _lock:
        _session.clear()
        _cache.clear()
