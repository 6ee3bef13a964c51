"""``python -m napari_brats_kd.phantom``: maintenance of the phantom's anatomy asset.

Rebuild the packaged 2 mm template from nilearn's copy of the 1 mm one::

    python -m napari_brats_kd.phantom --rebuild-asset [--source FOLDER]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .atlas import ASSET_PATH, build_asset


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m napari_brats_kd.phantom",
        description="Maintenance of the phantom's anatomy asset.",
    )
    parser.add_argument(
        "--rebuild-asset",
        action="store_true",
        help=f"rebuild {ASSET_PATH.name} from the 1 mm MNI ICBM152 2009a template",
    )
    parser.add_argument(
        "--source", type=Path, default=None, help="folder with the template (default: nilearn's)"
    )
    args = parser.parse_args(argv)
    if not args.rebuild_asset:
        parser.print_help()
        return 1
    path = build_asset(args.source)
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
