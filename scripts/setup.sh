#!/usr/bin/env bash
# Set up a fresh machine for napari-brats-kd: system libraries for napari under Xvfb, a virtual
# environment in .venv, the CPU build of PyTorch, and the package with its test extras.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# System packages napari needs to draw headless (Xvfb + Mesa GL + Qt's xcb libraries).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  if ! command -v xvfb-run >/dev/null 2>&1 || ! dpkg -s libgl1-mesa-dri libxcb-cursor0 >/dev/null 2>&1; then
    echo "==> installing system packages (xvfb, Mesa GL, Qt xcb libraries)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      xvfb xauth libgl1 libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 \
      libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
      libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 \
      libxi6 libxrender1 >/dev/null
  fi
elif ! command -v xvfb-run >/dev/null 2>&1; then
  echo "==> note: xvfb-run not found and not root: install Xvfb + Mesa yourself for GUI tests" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# PyTorch first and pinned: an unpinned torch pulls a multi-GB CUDA build. 2.13.0 is the CPU build
# here; on a GPU machine install the CUDA build of your choice before running this script.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "==> installing torch==${TORCH_VERSION:-2.13.0}"
  # TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes the CPU build from PyTorch's own
  # index, where plain PyPI would give a Linux machine the CUDA build.
  $PIP install -q "torch==${TORCH_VERSION:-2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
echo "==> installing napari-brats-kd[testing] (editable)"
$PIP install -q -e ".[testing]"
"$VENV/bin/python" -c "import napari_brats_kd, torch, monai, napari; print('napari-brats-kd', napari_brats_kd.__version__, '| torch', torch.__version__, '| monai', monai.__version__, '| napari', napari.__version__)"
