"""Settings of the dock widgets that persist between napari sessions (a small JSON file).

The file lives in the user's config folder (``platformdirs.user_config_dir("napari-brats-kd")``,
the convention napari itself follows), or in ``$NAPARI_BRATS_KD_CONFIG_DIR`` when that is set
(tests point it at a temporary folder so they never read or write a real user's settings).
A missing, unreadable or malformed file means "no saved settings": settings must never stop a
widget from opening.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .._files import atomic_write

logger = logging.getLogger(__name__)

#: Environment variable naming the folder of the settings files (overrides the user config dir).
CONFIG_DIR_ENV = "NAPARI_BRATS_KD_CONFIG_DIR"

APP_NAME = "napari-brats-kd"


def config_dir() -> Path:
    """Folder of the settings files (not created here)."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override).expanduser()
    try:
        from platformdirs import user_config_dir
    except ImportError:  # napari brings platformdirs; a bare environment may not
        return Path.home() / ".config" / APP_NAME
    return Path(user_config_dir(APP_NAME, appauthor=False))


def settings_path(name: str) -> Path:
    """Path of the settings file ``name`` (e.g. ``"train_widget"``)."""
    return config_dir() / f"{name}.json"


def load_settings(name: str) -> dict[str, Any]:
    """The saved settings ``name`` as a dict (empty when none are saved or the file is broken)."""
    path = settings_path(name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable settings file %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(name: str, values: dict[str, Any]) -> Path | None:
    """Write ``values`` (JSON-serialisable) atomically; returns the path, or None on failure.

    A read-only home or a full disk must not break training: failures are logged, not raised.
    """
    path = settings_path(name)
    try:
        text = json.dumps(values, indent=1, sort_keys=True)
        atomic_write(path, lambda tmp: tmp.write_text(text))
    except (OSError, TypeError, ValueError) as exc:
        logger.warning("Could not save settings to %s: %s", path, exc)
        return None
    return path
