"""Synthetic BraTS cases ("phantoms") with exact ground truth.

A phantom is built from real anatomy, the MNI ICBM152 2009a symmetric template (T1 and grey / white
matter probability maps), shipped downsampled to 2 mm in ``assets/mni_icbm152_2mm.npz``. Each case:

1. places the template in BraTS space (240x240x155 voxels, 1 mm, the LPS affine of real BraTS files)
   with a random global scale / rotation / shift and a smooth random displacement field;
2. grows 1 to 3 tumours inside white matter, each with a necrotic core (NCR), an enhancing rim (ET)
   and edema (ED) that spreads further along white matter than into grey matter, and pushes the
   surrounding tissue away (mass effect);
3. renders T1, T1c, T2 and FLAIR from the tissue fractions and the tumour labels with
   modality-specific contrast, enhancing vessels / choroid plexus in T1c, a smooth multiplicative
   bias field, Rician noise and an arbitrary scanner scale, and stores int16 images that are exactly
   0 outside the (skull-stripped) brain.

The labels are exact by construction: the images are rendered *from* the label map. Everything
random comes from a :class:`numpy.random.Generator` seeded with ``seed``, split into independent
streams for anatomy, tumours and acquisition, so the same seed gives identical arrays and a
different scanner "site" (:class:`SiteParams`) changes the look but not the anatomy or the labels.
Random fields are drawn on fixed control grids in millimetres, so a coarse phantom (``spacing=4``)
shows the same brain and tumours as the full-size one.

Work is done on a working grid of at least 2 mm (the template's own resolution) and smooth fields
are upsampled with a separable linear interpolation, which keeps a full-size case at about a second
or two on one core.

Rebuild the anatomy asset from nilearn's copy of the template (only needed by maintainers)::

    python -m napari_brats_kd.phantom --rebuild-asset

Modules, by concern:

- :mod:`.sites`: :class:`SiteParams`, the :data:`SITES` presets and tissue / lesion contrasts;
- :mod:`.atlas`: the packaged template (:data:`ASSET_PATH`), its builder :func:`build_asset`,
  loader and sampler;
- :mod:`.fields`: grids, separable resampling, smooth random fields, the output grid and the
  memory check;
- :mod:`.anatomy`: placement of the template in BraTS space, tumours, mass effect, tumour levels;
- :mod:`.render`: :func:`render_phantom`, step by step, with :mod:`.acquire` for labels and the
  per-modality acquisition on the output grid;
- :mod:`.data`: :class:`PhantomData`, the arrays a phantom is made of;
- :mod:`.dataset`: :func:`make_phantom` (a :class:`~napari_brats_kd.volume.Case`) and
  :func:`write_phantom_dataset` (case folders);
- :mod:`.__main__`: ``python -m napari_brats_kd.phantom``.
"""

from .atlas import ASSET_PATH, build_asset
from .data import PhantomData
from .dataset import make_phantom, write_phantom_dataset
from .render import render_phantom
from .sites import SITES, SiteParams

__all__ = [
    "ASSET_PATH",
    "SITES",
    "PhantomData",
    "SiteParams",
    "build_asset",
    "make_phantom",
    "render_phantom",
    "write_phantom_dataset",
]
