"""Shared fixtures: paths to the real cases, small phantoms, and sane thread counts for 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores on CI: keep BLAS/torch from oversubscribing when tests run models.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory) -> Path:
    """A fresh user cache (exported ONNX graphs) for the session, never the tester's own."""
    from napari_brats_kd.onnx_graphs import CACHE_ENV

    folder = tmp_path_factory.mktemp("user_cache")
    os.environ[CACHE_ENV] = str(folder)  # subprocesses (the CLI) inherit it
    return folder


REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """``../shared/data/real`` beside the clone; tests using it skip when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real cases not available at {REAL_DATA}")
    return REAL_DATA
