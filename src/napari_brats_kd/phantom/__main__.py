"""``python -m napari_brats_kd.phantom``: maintenance of the phantom's anatomy asset."""

import sys

from . import _main

sys.exit(_main())
