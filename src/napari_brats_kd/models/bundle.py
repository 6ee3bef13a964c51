"""Import MONAI bundle weights (e.g. ``brats_mri_segmentation``) as a teacher.

A MONAI bundle folder holds ``configs/inference.json`` (or ``.yaml``) describing the network and
``models/model.pt`` with its ``state_dict``. The config is read as data only (literal arguments of
``network_def``; MONAI's ``$`` expressions and ``@`` references are never evaluated) and the weights
with ``torch.load(weights_only=True)``, which refuses to unpickle anything but tensors and plain
containers: opening a downloaded bundle cannot run code.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .. import labels
from ..errors import CheckpointError
from .checkpoint import LoadedModel, load_state_dict_checked
from .config import BUNDLE_ROI_SIZE, BUNDLE_SEGRESNET_ARGS, ModelConfig, canonical_modalities
from .networks import build_model

log = logging.getLogger(__name__)

#: MONAI class names in ``network_def._target_`` -> our architecture keys.
_TARGETS = {"segresnet": "segresnet", "unet": "unet", "swinunetr": "swinunetr"}

#: Keys under which training scripts commonly nest the state_dict.
_STATE_KEYS = ("state_dict", "model", "network", "model_state_dict", "net")


def _read_bundle_config(folder: Path) -> dict[str, Any]:
    configs = folder / "configs"
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        path = configs / name
        if not path.is_file():
            continue
        import yaml

        try:
            if path.suffix == ".json":
                return json.loads(path.read_text())
            return yaml.safe_load(path.read_text()) or {}
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise CheckpointError(f"Cannot read bundle config {path}: {exc}") from exc
    return {}


def _literal(value: Any) -> bool:
    """Whether a bundle config value is plain data (not a ``$`` expression or ``@`` reference)."""
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, list | tuple):
        return all(_literal(v) for v in value)
    if isinstance(value, dict):
        return all(_literal(v) for v in value.values())
    return True


def _config_from_bundle(
    folder: Path | None, modalities: tuple[str, ...] | None
) -> tuple[ModelConfig, list[str]]:
    """Model config for a bundle; returns the config and notes on what was assumed."""
    notes: list[str] = []
    cfg: dict[str, Any] = _read_bundle_config(folder) if folder is not None else {}
    net = cfg.get("network_def") or {}
    target = str(net.get("_target_", "SegResNet")).rsplit(".", 1)[-1].lower()
    arch = _TARGETS.get(target)
    if arch is None:
        raise CheckpointError(
            f"Bundle network {net.get('_target_')!r} is not supported: expected SegResNet, UNet "
            "or SwinUNETR."
        )
    if net:
        args = {
            k: v
            for k, v in net.items()
            if not k.startswith("_") and k not in ("spatial_dims",) and _literal(v)
        }
    else:
        args = {"in_channels": 4, "out_channels": 3, **BUNDLE_SEGRESNET_ARGS}
        notes.append("no network_def found: assumed the brats_mri_segmentation SegResNet")
    in_channels = int(args.pop("in_channels", 4))
    out_channels = int(args.pop("out_channels", 3))
    if out_channels != len(labels.REGIONS):
        raise CheckpointError(
            f"Bundle network has {out_channels} outputs: expected {len(labels.REGIONS)} "
            f"sigmoid region channels ({', '.join(labels.REGIONS)})."
        )
    mods = canonical_modalities(modalities) if modalities else labels.BUNDLE_MODALITY_ORDER
    if len(mods) != in_channels:
        raise CheckpointError(
            f"Bundle network takes {in_channels} input channels but {len(mods)} modalities "
            f"({', '.join(mods)}) were given: pass modalities= in the bundle's channel order."
        )
    roi = BUNDLE_ROI_SIZE
    inferer = cfg.get("inferer") or {}
    if _literal(inferer.get("roi_size", None)) and isinstance(inferer.get("roi_size"), list):
        roi = tuple(int(v) for v in inferer["roi_size"])  # type: ignore[assignment]
    name, description = "monai-bundle", "MONAI bundle network"
    if folder is not None:
        meta_path = folder / "configs" / "metadata.json"
        name = folder.name
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                description = f"MONAI bundle {folder.name} v{meta.get('version', '?')}"
            except (OSError, ValueError):
                notes.append(f"could not read {meta_path}")
    return (
        ModelConfig(
            arch=arch,
            arch_args=args,
            modalities=mods,
            roi_size=roi,
            name=name,
            description=description,
            provenance={"source": "monai-bundle", "path": str(folder) if folder else None},
        ),
        notes,
    )


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickler raises many exception types on junk
        # torch's own text runs to many lines (with advice to unpickle unsafely): it goes to the
        # log, the user gets what the file is not and what is accepted.
        log.info("torch.load(%s) failed: %s", path, exc)
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path.name} is not a PyTorch weights file that can be loaded safely ({first}). "
            "Give a state_dict saved with torch.save (as MONAI bundles ship models/model.pt) or "
            "a .safetensors checkpoint; pickled objects are refused."
        ) from exc
    for _ in range(2):  # {"state_dict": {...}} or {"model": {"state_dict": ...}}
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            nested = next((obj[k] for k in _STATE_KEYS if isinstance(obj.get(k), dict)), None)
            if nested is None:
                break
            obj = nested
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} holds no state_dict of tensors.")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_bundle(path: str | os.PathLike, modalities: tuple[str, ...] | None = None) -> LoadedModel:
    """Load a MONAI bundle folder or its ``model.pt`` as a :class:`LoadedModel`.

    Parameters
    ----------
    path
        A bundle folder (with ``configs/inference.json`` and ``models/model.pt``), or a ``.pt``
        state_dict of the ``brats_mri_segmentation`` SegResNet.
    modalities
        Input channel order of the network (default: the bundle's T1c, T1, T2, FLAIR).

    Returns
    -------
    LoadedModel
        Network in eval mode; its config has the bundle's architecture and ROI.

    Raises
    ------
    CheckpointError
        If no weights are found, the file holds pickled objects or is corrupt, or the weights do
        not fit the network the bundle describes.
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        weights = path / "models" / "model.pt"
        if not weights.is_file():
            found = sorted(path.glob("models/*.pt")) + sorted(path.glob("*.pt"))
            if not found:
                raise CheckpointError(
                    f"Bundle folder {path} has no models/model.pt: download the bundle's weights "
                    "(e.g. `python -m monai.bundle download brats_mri_segmentation`) first."
                )
            weights = found[0]
    elif path.is_file():
        weights = path
        # A model.pt inside <bundle>/models/ still finds its configs.
        parent = path.parent.parent if path.parent.name == "models" else None
        folder = parent if parent is not None and (parent / "configs").is_dir() else None
    else:
        raise CheckpointError(f"MONAI bundle or weights file {path} does not exist.")
    config, notes = _config_from_bundle(folder, modalities)
    if notes:
        config.provenance["notes"] = notes
    config.provenance["weights"] = str(weights)
    try:
        model = build_model(config)
    except CheckpointError as exc:
        raise CheckpointError(f"Bundle {path}: {exc}") from exc
    state = _load_state(weights)
    load_state_dict_checked(model, state, weights)
    model.eval()
    return LoadedModel(model=model, config=config, path=path)
