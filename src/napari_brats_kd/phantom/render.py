"""Rendering: one phantom's arrays from its seed and site (:func:`render_phantom`), step by step.

1. draws: everything random, up front, from four independent streams of the seed;
2. working grid (at least the template's 2 mm): anatomy pushed by the tumours, tissue fractions,
   tumour level functions and the healthy images in relative units;
3. output grid: the brain mask and the tumour classes, in the box around the tumours only;
4. acquisition per modality (:mod:`.acquire`): bias, blur, lesion contrast, gamma, Rician noise,
   scanner units, int16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..labels import MODALITIES
from .acquire import _acquire_images, _Output, _TumourBox
from .anatomy import _draw_lesions, _Lesion, _lesion_levels, _Placement, _push_points
from .atlas import _Atlas, _load_atlas, _sample_atlas
from .data import PhantomData
from .fields import _check_memory, _field_at, _Grid, _smooth_noise
from .sites import _MODALITY_GAIN, SiteParams, _resolve_site, _site_intensities

#: Template T1 values (0-255 in the asset) of CSF, grey and white matter, used as knots when the
#: template's own T1 contrast is remapped to a modality's tissue intensities.
_TEMPLATE_T1_KNOTS = (66.0, 166.0, 220.0)


@dataclass
class _Draws:
    """Everything random about one case except the acquisition noise, drawn before any rendering.

    The control grids are fixed in millimetres, so the draws do not depend on the spacing, and
    the site only uses its own stream (``rng_look``), so it never changes anatomy or labels.
    """

    placement: _Placement
    ctrl: dict[str, tuple[np.ndarray, float]]  # smooth-noise control grid and its step (mm)
    lesions: list[_Lesion]
    tissue_c: dict[str, np.ndarray]  # CSF, GM, WM intensity per modality
    lesion_c: dict[str, np.ndarray]  # NCR, ED, ET intensity per modality
    bias_ctrl: dict[str, np.ndarray]  # log-gain control grids: "common" and one per modality
    scanner: dict[str, tuple[float, float]]  # raw scale and offset per modality
    rng_noise: np.random.Generator  # drawn from last, by the acquisition of each modality


@dataclass
class _Work:
    """Anatomy and tumour fields on the working grid."""

    grid: _Grid
    frac: dict[str, np.ndarray]  # template t1 (0-255), gm, wm, brain, csf fractions
    noise: dict[str, np.ndarray]  # the control grids of :class:`_Draws` sampled on this grid
    levels: dict[str, np.ndarray]  # core, necro, edema: < 1 inside
    vessels: np.ndarray  # T1c-enhancing structures (0-1.2)


def _check_args(
    spacing: float, n_lesions: int | None, lesion_side: str | None, seed: int
) -> tuple[float, int]:
    """Validated ``(spacing, seed)``; refuses bad values before anything is allocated."""
    spacing = float(spacing)
    if not (spacing > 0 and math.isfinite(spacing)):
        raise ValueError(f"Phantom spacing must be a positive number of mm (got {spacing}).")
    if spacing > 40:
        raise ValueError(f"Phantom spacing {spacing} mm is too coarse: use at most 40 mm.")
    _check_memory(spacing)
    if n_lesions is not None and not 1 <= int(n_lesions) <= 3:
        raise ValueError(f"n_lesions must be 1, 2, 3 or None for random (got {n_lesions}).")
    if lesion_side not in (None, "left", "right"):
        raise ValueError(f"lesion_side must be 'left', 'right' or None (got {lesion_side!r}).")
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"Phantom seed must be >= 0 (got {seed}).")
    return spacing, seed


def _draw(
    seed: int,
    site: SiteParams,
    atlas: _Atlas,
    n_lesions: int | None,
    lesion_side: str | None,
) -> _Draws:
    """Draw geometry, tumours and look; the order of the draws within each stream is fixed."""
    rng_anat, rng_tumour, rng_look, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )
    placement = _Placement.draw(rng_anat)
    ctrl = {
        "shape": (_smooth_noise(rng_tumour, 7.0), 7.0),
        "necro": (_smooth_noise(rng_tumour, 5.0), 5.0),
        "edema": (_smooth_noise(rng_tumour, 9.0), 9.0),
        "tex": (_smooth_noise(rng_tumour, 4.0), 4.0),
        "va": (_smooth_noise(rng_anat, 10.0), 10.0),
        "vb": (_smooth_noise(rng_anat, 10.0), 10.0),
    }
    lesions = _draw_lesions(rng_tumour, placement, atlas, n_lesions, lesion_side)
    tissue_c, lesion_c = _site_intensities(site, rng_look)
    bias_ctrl = {"common": _smooth_noise(rng_look, 48.0)}
    for m in MODALITIES:
        bias_ctrl[m] = _smooth_noise(rng_look, 48.0)
    lo, hi = site.scale_range
    scanner = {}
    for m in MODALITIES:
        a = math.exp(rng_look.uniform(math.log(lo), math.log(hi))) * _MODALITY_GAIN[m]
        scanner[m] = (a, a * rng_look.uniform(0.0, site.offset_fraction))
    return _Draws(placement, ctrl, lesions, tissue_c, lesion_c, bias_ctrl, scanner, rng_noise)


def _vessels(mni: np.ndarray, frac: dict[str, np.ndarray], noise: dict) -> np.ndarray:
    """Enhancing structures of T1c (0-1): choroid plexus, falx / sinus edge, sulcal vessels."""
    x, y, z = mni
    # Choroid plexus glomus in the atria of both lateral ventricles.
    plexus = np.zeros_like(x)
    for sx in (-1.0, 1.0):
        d2 = (x - sx * 26.0) ** 2 + (y + 40.0) ** 2 + ((z - 14.0) * 1.3) ** 2
        plexus += np.exp(-d2 / (2 * 4.0**2))
    plexus *= np.clip(frac["csf"] * 2.0, 0, 1)
    # Falx and sagittal sinus: the CSF of the interhemispheric fissure, above the brain stem.
    sinus = np.exp(-(x**2) / (2 * 1.5**2)) * np.clip(frac["csf"] * 2.0, 0, 1) * (z > -5)
    # Cortical / sulcal vessels: tubes where two smooth random fields both cross zero.
    tubes = np.exp(-(noise["va"] ** 2 + noise["vb"] ** 2) / (2 * 0.15**2))
    tubes *= np.clip(frac["csf"] * 3.0, 0, 1) * (frac["brain"] > 0.3)
    return np.clip(plexus + 0.9 * sinus + 1.2 * tubes, 0, 1.2)


def _working_fields(spacing: float, draws: _Draws, atlas: _Atlas) -> _Work:
    """Sample anatomy, noise, tumour levels and vessels on a working grid of at least 2 mm."""
    work = _Grid.covering(max(spacing, 2.0))
    wax = work.axes
    pts = work.points()
    pushed = _push_points(pts, draws.lesions)
    mni = draws.placement.to_mni(pushed, wax)
    frac = _sample_atlas(atlas, mni, ("t1", "gm", "wm", "brain"))
    frac["csf"] = np.clip(frac["brain"] - frac["gm"] - frac["wm"], 0, 1)
    noise_w = {k: _field_at(c, s, wax) for k, (c, s) in draws.ctrl.items()}
    levels = _lesion_levels(pts, draws.lesions, frac["wm"], frac["csf"], mni[0], noise_w)
    vessels = _vessels(mni, frac, noise_w)
    # The point grids (pts, pushed, mni) are dropped here, before the output stage that peaks
    # in memory.
    return _Work(work, frac, noise_w, levels, vessels)


def _healthy_images(work: _Work, draws: _Draws) -> dict[str, np.ndarray]:
    """Healthy images per modality on the working grid (relative units, WM T1 ~ 1)."""
    texture = 1.0 + 0.04 * work.noise["tex"]
    frac = work.frac
    knots_in = (0.0, *_TEMPLATE_T1_KNOTS, 255.0)
    healthy = {}
    for m in MODALITIES:
        c_csf, c_gm, c_wm = draws.tissue_c[m]
        if m in ("t1", "t1c"):
            # Remap the template's own T1 (it carries deep grey nuclei and partial volumes).
            img = np.interp(frac["t1"], knots_in, (0.0, c_csf, c_gm, c_wm, 1.08 * c_wm))
            img = img.astype(np.float32)
        else:
            img = c_csf * frac["csf"] + c_gm * frac["gm"] + c_wm * frac["wm"]
        img *= texture
        if m == "t1c":
            img += work.vessels * (draws.lesion_c["t1c"][2] - c_gm)
        healthy[m] = img
    return healthy


def _lesion_info(lesions: list[_Lesion], out: _Output) -> list[dict]:
    """Per tumour: centre in world mm and file-order voxels, hemisphere, radius (rounded)."""
    info = []
    for les in lesions:
        vox = les.centre / out.spacing
        world = out.affine @ np.append(vox, 1.0)
        info.append(
            {
                "centre_world": [round(float(v), 3) for v in world[:3]],
                "centre_voxel": [round(float(v), 3) for v in vox],
                "side": les.side,
                "radius_mm": round(les.radius, 3),
            }
        )
    return info


def render_phantom(
    seed: int = 0,
    site: str | SiteParams = "A",
    *,
    spacing: float = 1.0,
    n_lesions: int | None = None,
    lesion_side: str | None = None,
    tissue: bool = False,
) -> PhantomData:
    """Simulate one phantom and return its arrays (images, classes, tissue maps, geometry).

    Parameters
    ----------
    seed, site, spacing, n_lesions, lesion_side
        As for :func:`~napari_brats_kd.phantom.make_phantom`.
    tissue
        Also return the healthy tissue fractions (CSF, GM, WM) on the output grid, which tests
        and benchmarks use to check contrasts (three more full-size arrays, so off by default).

    Returns
    -------
    PhantomData
        Arrays in file voxel order (L, P, S).

    Raises
    ------
    ValueError
        For an unknown site, a spacing <= 0 or > 40 mm, n_lesions outside 1-3, an unknown
        lesion_side or a negative seed.
    ~napari_brats_kd.errors.ResourceError
        When the phantom would not fit in the free memory.
    """
    spacing, seed = _check_args(spacing, n_lesions, lesion_side, seed)
    site_p = _resolve_site(site)
    atlas = _load_atlas()
    draws = _draw(seed, site_p, atlas, n_lesions, lesion_side)
    work = _working_fields(spacing, draws, atlas)
    healthy = _healthy_images(work, draws)
    out = _Output.make(spacing, work.grid)
    brain = out.up(work.frac["brain"]) > 0.5
    tumour = _TumourBox.label(work.levels, work.noise["tex"], work.grid, out, brain)
    images = _acquire_images(healthy, tumour, brain, work.grid, out, site_p, draws)
    tissue_maps: dict[str, np.ndarray] = {"brain": brain}
    if tissue:
        for k in ("csf", "gm", "wm"):
            tissue_maps[k] = (np.clip(out.up(work.frac[k]), 0, 1) * brain).astype(np.float32)
    return PhantomData(
        images=images,
        classes=tumour.full(out.shape),
        tissue=tissue_maps,
        affine=out.affine,
        lesions=_lesion_info(draws.lesions, out),
        midline_x_world=draws.placement.midline_x_world(),
        site=site_p,
        seed=seed,
        spacing=spacing,
        scanner=draws.scanner,
    )
