"""Phantoms as cases and files: :func:`make_phantom` and :func:`write_phantom_dataset`."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..callbacks import Progress, ShouldStop
from ..errors import Cancelled
from ..labels import LabelConvention, get_convention
from ..volume import Case, Volume
from ..writing import save_case
from .render import render_phantom
from .sites import SiteParams, _resolve_site


def _header(affine: np.ndarray, dtype: type) -> nib.Nifti1Header:
    """A header like real BraTS files: sform and qform both set with code 1 (scanner), mm units."""
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm")
    return header


def make_phantom(
    seed: int = 0,
    site: str | SiteParams = "A",
    *,
    spacing: float = 1.0,
    convention: LabelConvention | str = LabelConvention.BRATS2021,
    n_lesions: int | None = None,
    lesion_side: str | None = None,
) -> Case:
    """Make one synthetic BraTS case with exact tumour labels.

    Parameters
    ----------
    seed
        Seed of the case (>= 0): the same seed gives identical arrays.
    site
        Scanner site preset name (``"A"`` reference, ``"B"``, ``"C"``; see :data:`SITES`) or a
        :class:`SiteParams`. The site changes the look, never the anatomy or the labels.
    spacing
        Voxel size in mm. 1 gives the BraTS grid (240x240x155); ``s`` gives the same field of view
        with ``ceil(240/s) x ceil(240/s) x ceil(155/s)`` voxels (4 mm: 60x60x39, fast for tests).
    convention
        Label convention of the segmentation (BraTS 2021: 1/2/4, BraTS 2023: 1/2/3, ...).
    n_lesions
        Number of tumours (1-3); ``None`` draws it from the seed. A brain with no room left for
        another well-separated tumour gets fewer (never none); ``extra["lesions"]`` lists them.
    lesion_side
        ``"left"`` or ``"right"`` puts every tumour centre in that hemisphere (patient's side);
        ``None`` lets the seed decide.

    Returns
    -------
    Case
        Images ``t1``, ``t1c``, ``t2``, ``flair`` (int16) and ``seg`` (uint8), with id
        ``"phantom-<site>-<seed:04d>"``; ``extra`` holds the seed, site, spacing, the lesions
        (centres in world mm and file-order voxels, hemisphere, radius) and the midline's world x.

    Raises
    ------
    ValueError
        For an unknown site, a spacing <= 0, n_lesions outside 1-3 or an unknown lesion_side.
    """
    spec = get_convention(convention)
    data = render_phantom(seed, site, spacing=spacing, n_lesions=n_lesions, lesion_side=lesion_side)
    images = {
        m: Volume.from_file_order(arr, data.affine, _header(data.affine, np.int16))
        for m, arr in data.images.items()
    }
    seg = Volume.from_file_order(
        data.labels(spec.convention), data.affine, _header(data.affine, np.uint8)
    )
    return Case(
        case_id=f"phantom-{data.site.name}-{data.seed:04d}",
        images=images,
        seg=seg,
        convention=spec.convention,
        convention_reason="synthetic phantom",
        naming="phantom",
        extra={
            "seed": data.seed,
            "site": data.site.name,
            "spacing": data.spacing,
            "lesions": data.lesions,
            "hemispheres": [les["side"] for les in data.lesions],
            "midline_x_world": data.midline_x_world,
        },
    )


#: Folder name and label convention of each naming :func:`write_phantom_dataset` writes (the
#: file names are :func:`~napari_brats_kd.writing.save_case`'s).
_NAMINGS = {
    "2021": ("BraTS2021_P{seed:05d}", LabelConvention.BRATS2021),
    "2023": ("BraTS-GLI-P{seed:05d}-000", LabelConvention.BRATS2023),
}


def write_phantom_dataset(
    out_dir: str | Path,
    n: int = 1,
    seed: int = 0,
    naming: str = "2021",
    site: str | SiteParams = "A",
    spacing: float = 1.0,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> list[Path]:
    """Write ``n`` phantom cases (seeds ``seed`` .. ``seed+n-1``) as BraTS case folders.

    Parameters
    ----------
    out_dir
        Folder to write into (created if needed).
    n
        Number of cases (>= 1).
    seed
        Seed of the first case.
    naming
        ``"2021"``: ``BraTS2021_P00007/BraTS2021_P00007_{t1,t1ce,t2,flair,seg}.nii.gz``, labels
        1/2/4; ``"2023"``:
        ``BraTS-GLI-P00007-000/BraTS-GLI-P00007-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``, labels 1/2/3.
    site
        Scanner site preset or :class:`SiteParams` (see :func:`make_phantom`).
    spacing
        Voxel size in mm (1 = the BraTS grid).
    progress
        ``progress(done, total, message)`` called once before the first case and after each case.
    should_stop
        Polled before each case; when it returns True, :class:`~napari_brats_kd.errors.Cancelled`
        is raised (cases already written stay on disk).

    Returns
    -------
    list of pathlib.Path
        The case folders, in seed order.

    Raises
    ------
    ValueError
        For n < 1, an unknown naming or site, or a spacing <= 0.
    """
    if int(n) < 1:
        raise ValueError(f"Number of phantom cases must be at least 1 (got {n}).")
    key = str(naming).removeprefix("brats")
    if key not in _NAMINGS:
        raise ValueError(f"Unknown phantom naming {naming!r}: expected '2021' or '2023'.")
    if not float(spacing) > 0:
        raise ValueError(f"Phantom spacing must be a positive number of mm (got {spacing}).")
    if int(seed) < 0:
        raise ValueError(f"Phantom seed must be >= 0 (got {seed}).")
    site_p = _resolve_site(site)
    folder_fmt, convention = _NAMINGS[key]
    out_dir = Path(out_dir)
    written: list[Path] = []
    if progress is not None:
        progress(0, int(n), "starting")
    for index in range(int(n)):
        if should_stop is not None and should_stop():
            raise Cancelled(f"Stopped after writing {index} of {n} phantom cases to {out_dir}.")
        case_seed = int(seed) + index
        case = make_phantom(case_seed, site_p, spacing=spacing, convention=convention)
        name = folder_fmt.format(seed=case_seed)
        folder = save_case(case, out_dir, case_naming=f"brats{key}", name=name)
        written.append(folder)
        if progress is not None:
            progress(index + 1, int(n), name)
    return written
