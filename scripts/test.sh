#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the whole test suite, GUI tests under a virtual X server.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not gui"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# napari tests with a Qt6 binding (its PyQt5 support is deprecated); the testing extra brings PyQt6.
export QT_API=${QT_API:-pyqt6}
echo "==> ruff"
"$VENV/bin/ruff" check src tests benchmarks examples
echo "==> npe2 validate"
"$VENV/bin/npe2" validate napari-brats-kd
echo "==> pytest"
if command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1600x1000x24" "$VENV/bin/python" -m pytest "$@"
else
  echo "xvfb-run not found: GUI tests will be skipped" >&2
  exec "$VENV/bin/python" -m pytest -m "not gui" "$@"
fi
