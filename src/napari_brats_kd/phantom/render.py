"""Rendering: one phantom's arrays from its seed and site (:func:`render_phantom`)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..labels import MODALITIES
from .anatomy import _draw_lesions, _lesion_levels, _Placement, _push_points
from .atlas import _load_atlas, _sample_atlas
from .data import PhantomData
from .fields import (
    _check_memory,
    _field_at,
    _Grid,
    _output_affine,
    _output_shape,
    _resample,
    _smooth_noise,
)
from .sites import _MODALITY_GAIN, SiteParams, _resolve_site, _site_intensities

#: Template T1 values (0-255 in the asset) of CSF, grey and white matter, used as knots when the
#: template's own T1 contrast is remapped to a modality's tissue intensities.
_TEMPLATE_T1_KNOTS = (66.0, 166.0, 220.0)


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

    Parameters are those of :func:`make_phantom`, plus ``tissue``: also return the healthy tissue
    fractions (CSF, GM, WM) on the output grid, which tests and benchmarks use to check contrasts
    (three more full-size arrays, so off by default).

    Returns
    -------
    PhantomData
        Arrays in file voxel order (L, P, S).
    """
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
    site_p = _resolve_site(site)
    atlas = _load_atlas()
    rng_anat, rng_tumour, rng_look, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )

    # ---- geometry and random fields (fixed control grids: independent of spacing and site)
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
    tissue_c, lesion_c = _site_intensities(site_p, rng_look)
    bias_ctrl = {"common": _smooth_noise(rng_look, 48.0)}
    for m in MODALITIES:
        bias_ctrl[m] = _smooth_noise(rng_look, 48.0)
    lo, hi = site_p.scale_range
    scanner = {}
    for m in MODALITIES:
        a = math.exp(rng_look.uniform(math.log(lo), math.log(hi))) * _MODALITY_GAIN[m]
        scanner[m] = (a, a * rng_look.uniform(0.0, site_p.offset_fraction))

    # ---- working grid: at least the template's 2 mm
    work = _Grid.covering(max(spacing, 2.0))
    wax = work.axes
    pts = work.points()
    pushed = _push_points(pts, lesions)
    mni = placement.to_mni(pushed, wax)
    frac = _sample_atlas(atlas, mni, ("t1", "gm", "wm", "brain"))
    frac["csf"] = np.clip(frac["brain"] - frac["gm"] - frac["wm"], 0, 1)
    noise_w = {k: _field_at(c, s, wax) for k, (c, s) in ctrl.items()}
    levels = _lesion_levels(pts, lesions, frac["wm"], frac["csf"], mni[0], noise_w)

    # ---- healthy images on the working grid (relative units, WM T1 ~ 1)
    texture = 1.0 + 0.04 * noise_w["tex"]
    vessels = _vessels(mni, frac, noise_w)
    del pts, pushed, mni  # the output stage below is what peaks in memory
    knots_in = (0.0, *_TEMPLATE_T1_KNOTS, 255.0)
    healthy = {}
    for m in MODALITIES:
        c_csf, c_gm, c_wm = tissue_c[m]
        if m in ("t1", "t1c"):
            # Remap the template's own T1 (it carries deep grey nuclei and partial volumes).
            img = np.interp(frac["t1"], knots_in, (0.0, c_csf, c_gm, c_wm, 1.08 * c_wm))
            img = img.astype(np.float32)
        else:
            img = c_csf * frac["csf"] + c_gm * frac["gm"] + c_wm * frac["wm"]
        img *= texture
        if m == "t1c":
            img += vessels * (lesion_c["t1c"][2] - c_gm)
        healthy[m] = img

    # ---- output grid
    out_shape = _output_shape(spacing)
    affine = _output_affine(spacing)
    out_axes = [np.arange(n, dtype=np.float64) * spacing for n in out_shape]
    to_work = [x / work.step for x in out_axes]
    same_grid = work.shape == out_shape and work.step == spacing
    up = (lambda a: a) if same_grid else (lambda a: _resample(a, to_work))
    brain = up(frac["brain"]) > 0.5
    # Tumour labels from the upsampled level functions, in the box around the tumours only.
    classes = np.zeros(out_shape, np.uint8)
    near = np.argwhere(levels["edema"].__lt__(1.6) | (levels["core"] < 1.6))
    wlo, whi = near.min(0) - 1, near.max(0) + 2
    box = tuple(
        slice(
            int(max(math.floor(wlo[a] * work.step / spacing), 0)),
            int(min(math.ceil(whi[a] * work.step / spacing) + 1, out_shape[a])),
        )
        for a in range(3)
    )
    box_pos = [to_work[a][box[a]] for a in range(3)]
    if same_grid:
        lv = {k: v[box] for k, v in levels.items()}
        tex_box = noise_w["tex"][box]
    else:
        lv = {k: _resample(v, box_pos) for k, v in levels.items()}
        tex_box = _resample(noise_w["tex"], box_pos)
    in_brain = brain[box]
    tc = (lv["core"] < 1.0) & in_brain
    wt = (tc | (lv["edema"] < 1.0)) & in_brain
    ncr = tc & (lv["necro"] < 1.0)
    cls_box = np.zeros(tc.shape, np.uint8)
    codes = PhantomData.CLASS_CODES
    cls_box[wt] = codes["ED"]
    cls_box[tc] = codes["ET"]
    cls_box[ncr] = codes["NCR"]
    classes[box] = cls_box

    # ---- per modality: blur, bias, lesion look, noise, scanner units, int16
    blur_work = [s / work.step for s in site_p.blur_mm]
    blur_out = [s / spacing for s in site_p.blur_mm]
    gain_work = {}
    for m in MODALITIES:
        log_gain = 0.7 * bias_ctrl["common"] + 0.5 * bias_ctrl[m]
        gain_work[m] = np.exp(site_p.bias * _field_at(log_gain, 48.0, wax)).astype(np.float32)
    # Edema fades from the core outwards but stays visibly above normal tissue up to its label edge.
    ed_grade = np.clip(1.0 - lv["edema"], 0.0, 1.0) * 0.5 + 0.5
    lesion_tex = 1.0 + 0.08 * tex_box
    images: dict[str, np.ndarray] = {}
    inside = np.flatnonzero(brain)
    for m in MODALITIES:
        signal = healthy[m] * gain_work[m]
        if any(blur_work):
            signal = ndimage.gaussian_filter(signal, blur_work, mode="nearest", truncate=3.0)
        full = up(signal)
        if same_grid:
            full = full.copy()
        h_box = healthy[m][box] if same_grid else _resample(healthy[m], box_pos)
        g_box = gain_work[m][box] if same_grid else _resample(gain_work[m], box_pos)
        ncr_c, ed_c, et_c = lesion_c[m]
        target = np.where(
            cls_box == codes["ED"],
            h_box + (ed_c - h_box) * ed_grade,
            np.where(cls_box == codes["NCR"], ncr_c, et_c) * lesion_tex,
        )
        delta = np.where(cls_box > 0, target - h_box, 0.0).astype(np.float32) * g_box
        if any(blur_out):
            delta = ndimage.gaussian_filter(delta, blur_out, mode="constant", truncate=3.0)
        full[box] += delta
        vals = np.maximum(full.ravel()[inside], 0.0)
        if site_p.gamma != 1.0:
            vals = vals**site_p.gamma
        sigma = site_p.noise * float(max(tissue_c[m]))
        if sigma > 0:
            n1 = rng_noise.standard_normal(vals.shape, dtype=np.float32)
            n2 = rng_noise.standard_normal(vals.shape, dtype=np.float32)
            vals = np.sqrt((vals + sigma * n1) ** 2 + (sigma * n2) ** 2)
        a, b = scanner[m]
        raw = np.clip(np.rint(vals * a + b), 1, 32767).astype(np.int16)
        out = np.zeros(out_shape, np.int16)
        out.ravel()[inside] = raw
        images[m] = out

    tissue_maps: dict[str, np.ndarray] = {"brain": brain}
    if tissue:
        for k in ("csf", "gm", "wm"):
            tissue_maps[k] = (np.clip(up(frac[k]), 0, 1) * brain).astype(np.float32)
    lesion_info = []
    for les in lesions:
        vox = les.centre / spacing
        world = affine @ np.append(vox, 1.0)
        lesion_info.append(
            {
                "centre_world": [round(float(v), 3) for v in world[:3]],
                "centre_voxel": [round(float(v), 3) for v in vox],
                "side": les.side,
                "radius_mm": round(les.radius, 3),
            }
        )
    return PhantomData(
        images=images,
        classes=classes,
        tissue=tissue_maps,
        affine=affine,
        lesions=lesion_info,
        midline_x_world=placement.midline_x_world(),
        site=site_p,
        seed=seed,
        spacing=spacing,
        scanner=scanner,
    )
