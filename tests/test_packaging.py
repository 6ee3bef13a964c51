"""Packaging: what napari's plugin manager and a fresh environment need."""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QT_MODULES = ("PyQt5", "PyQt6", "PySide2", "PySide6", "qtpy", "napari", "magicgui", "vispy")


@pytest.mark.slow
def test_backend_imports_no_qt_or_napari() -> None:
    """Every backend module imports without Qt, napari or magicgui (runs on clusters and in CI)."""
    code = f"""
import importlib, json, pkgutil, sys
import napari_brats_kd
mods = [m.name for m in pkgutil.walk_packages(napari_brats_kd.__path__, 'napari_brats_kd.')
        if '._napari' not in m.name]
for m in mods:
    importlib.import_module(m)
print(json.dumps({{'modules': mods, 'gui': [q for q in {QT_MODULES!r} if q in sys.modules]}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "napari_brats_kd.labels" in result["modules"]
    assert result["gui"] == [], f"backend pulled in {result['gui']}"


def test_import_is_light() -> None:
    """napari imports the package at start-up to read the manifest: that must not load torch."""
    code = "import sys, napari_brats_kd; print('torch' in sys.modules, 'monai' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_installed_metadata_is_what_the_plugin_manager_needs() -> None:
    dist = metadata.distribution("napari-brats-kd")
    assert "Framework :: napari" in dist.metadata.get_all("Classifier")
    requires = dist.requires or []
    core = [r for r in requires if "extra ==" not in r]
    for qt in ("pyqt5", "pyqt6", "pyside2", "pyside6"):
        assert not any(r.lower().startswith(qt) for r in core), (
            f"{qt} must not be a hard dependency"
        )
    eps = {ep.name: ep.value for ep in dist.entry_points if ep.group == "napari.manifest"}
    assert eps == {"napari-brats-kd": "napari_brats_kd:napari.yaml"}
    scripts = {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
    assert "brats-kd" in scripts


def test_manifest_validates() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-brats-kd")
    assert manifest.name == "napari-brats-kd"
    assert manifest.contributions.readers and manifest.contributions.writers
    assert manifest.contributions.sample_data


@pytest.mark.slow
def test_wheel_ships_manifest_and_assets(tmp_path: Path) -> None:
    """A wheel built from the repo carries the manifest (a real file) and installs its plugin."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("napari_brats_kd-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert "napari_brats_kd/napari.yaml" in names
        assert zf.read("napari_brats_kd/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
        assert any(n.startswith("napari_brats_kd/assets/") for n in names), (
            "phantom anatomy missing"
        )
        index = json.loads(zf.read("napari_brats_kd/weights/index.json"))
        shipped = {
            f"napari_brats_kd/weights/{entry[key]}"
            for entry in index["models"]
            for key in ("file", "card")
        }
        assert {e["name"] for e in index["models"]} >= {"student", "teacher"}
        assert shipped <= names, "shipped weights or model cards missing from the wheel"
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "napari_brats_kd:napari.yaml" in zf.read(entry_points).decode()
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
    )
    # The installed copy is a plain file (the repo's is a symlink) and npe2 accepts it.
    shipped = target / "napari_brats_kd" / "napari.yaml"
    assert shipped.is_file() and not shipped.is_symlink()
    assert filecmp.cmp(shipped, ROOT / "napari.yaml", shallow=False)
    from npe2 import PluginManifest

    assert PluginManifest.from_file(shipped).name == "napari-brats-kd"
