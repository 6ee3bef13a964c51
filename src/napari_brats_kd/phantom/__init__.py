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
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import nibabel as nib
import numpy as np
from scipy import ndimage

from .. import orientation as orient
from ..callbacks import Progress, ShouldStop
from ..errors import Cancelled, ResourceError
from ..labels import MODALITIES, LabelConvention, get_convention
from ..volume import Case, Volume
from ..writing import save_case

__all__ = [
    "SITES",
    "PhantomData",
    "SiteParams",
    "build_asset",
    "make_phantom",
    "render_phantom",
    "write_phantom_dataset",
]

ASSET_PATH = Path(__file__).parent.with_name("assets") / "mni_icbm152_2mm.npz"
_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}

#: Extent of the BraTS grid in mm between the first and last voxel centres (i, j, k).
_FOV_MM = np.array([s - 1 for s in orient.BRATS_SHAPE], dtype=float)

#: Template point (MNI mm, RAS+) placed at :data:`_BRAIN_CENTRE_VOX`: the centre of the brain's box.
_MNI_CENTRE = np.array([0.0, -17.0, 5.0])
#: BraTS voxel (i, j, k) where the brain's centre lies in real cases (BraTS-GLI-00001-000: the
#: brain spans i 49-188, j 28-217, k 10-146).
_BRAIN_CENTRE_VOX = np.array([119.0, 122.0, 78.0])
#: Mean scale from template to BraTS brain per RAS axis (BraTS brains, in SRI24 space, are
#: narrower in S-I than the ICBM average whose box includes more brain stem).
_MEAN_SCALE = np.array([0.965, 1.03, 0.9])

#: Template T1 values (0-255 in the asset) of CSF, grey and white matter, used as knots when the
#: template's own T1 contrast is remapped to a modality's tissue intensities.
_TEMPLATE_T1_KNOTS = (66.0, 166.0, 220.0)

#: Relative tissue intensities (CSF, GM, WM) of healthy brain per modality, before site changes.
_TISSUE_INTENSITY: dict[str, tuple[float, float, float]] = {
    "t1": (0.25, 0.62, 1.0),
    "t1c": (0.25, 0.70, 1.0),
    "t2": (1.0, 0.40, 0.28),
    "flair": (0.12, 0.64, 0.50),
}
#: Relative intensities of the tumour classes per modality: NCR, ED, ET.
_LESION_INTENSITY: dict[str, tuple[float, float, float]] = {
    "t1": (0.30, 0.70, 0.55),
    "t1c": (0.35, 0.72, 1.45),
    "t2": (0.95, 0.80, 0.58),
    "flair": (0.55, 1.00, 0.80),
}
#: Scanner units of the white matter (order of magnitude of raw BraTS int16 values per modality).
_MODALITY_GAIN = {"t1": 1.0, "t1c": 2.4, "t2": 0.6, "flair": 1.1}


# --------------------------------------------------------------------------------------------------
# Site (scanner) parameters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteParams:
    """How one hospital's scanner renders the same anatomy.

    Attributes
    ----------
    name
        Short name written into case ids (``"phantom-A-0007"``).
    contrast
        Scales tissue intensities about their mean per modality: 1 keeps the reference contrast,
        below 1 flattens it, above 1 sharpens it. Orderings between tissues are kept for any
        value > 0.
    tissue_jitter
        Half-width of a uniform random relative change of each tissue's intensity per case
        (e.g. 0.05 = +-5 %), drawn from the acquisition stream.
    gamma
        Power applied to the normalised image (1 = linear; <1 brightens mid-tones).
    noise
        Standard deviation of the Rician noise relative to the brightest healthy tissue.
    bias
        Strength of the smooth multiplicative bias field (std of its log gain).
    blur_mm
        Gaussian blur sigma in mm along the file axes (L-R, P-A, I-S): ``(0, 0, 1.2)`` mimics
        thick slices, equal in-plane values a lower in-plane resolution.
    scale_range
        Range of the random scanner scale factor (raw units per unit of white-matter T1 signal);
        drawn log-uniformly per modality and case.
    offset_fraction
        Largest random additive offset, as a fraction of the scale.
    """

    name: str = "A"
    contrast: float = 1.0
    tissue_jitter: float = 0.0
    gamma: float = 1.0
    noise: float = 0.035
    bias: float = 0.10
    blur_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scale_range: tuple[float, float] = (700.0, 1300.0)
    offset_fraction: float = 0.05

    def __post_init__(self) -> None:
        problems = []
        if not self.contrast > 0:
            problems.append(f"contrast must be > 0 (got {self.contrast})")
        if not 0 <= self.tissue_jitter < 0.3:
            problems.append(f"tissue_jitter must be in [0, 0.3) (got {self.tissue_jitter})")
        if not self.gamma > 0:
            problems.append(f"gamma must be > 0 (got {self.gamma})")
        if self.noise < 0 or self.bias < 0:
            problems.append(f"noise and bias must be >= 0 (got {self.noise}, {self.bias})")
        if len(self.blur_mm) != 3 or min(self.blur_mm) < 0:
            problems.append(f"blur_mm must be three sigmas >= 0 (got {self.blur_mm})")
        lo, hi = self.scale_range
        if not 0 < lo <= hi or hi * 2.5 > 32767 / 2:
            problems.append(
                f"scale_range must satisfy 0 < lo <= hi <= 6500 (got {self.scale_range})"
            )
        if problems:
            raise ValueError(f"Invalid SiteParams {self.name!r}: " + "; ".join(problems) + ".")


#: Scanner presets: A is the reference site; B and C are other hospitals.
SITES: dict[str, SiteParams] = {
    "A": SiteParams(name="A"),
    # An older 1.5 T scanner: flatter contrast, noisier, strong coil shading and 1x1x3 mm-like
    # thick slices (a 3 mm boxcar slice profile has sigma ~0.9 mm, plus some slice overlap).
    "B": SiteParams(
        name="B",
        contrast=0.7,
        tissue_jitter=0.05,
        gamma=1.0,
        noise=0.08,
        bias=0.30,
        blur_mm=(0.3, 0.3, 1.3),
        scale_range=(150.0, 400.0),
        offset_fraction=0.15,
    ),
    # A site with a different vendor's contrast (gamma, sharper tissues) and a smoother,
    # in-plane-blurred reconstruction at a very different raw intensity scale.
    "C": SiteParams(
        name="C",
        contrast=1.2,
        tissue_jitter=0.08,
        gamma=0.75,
        noise=0.04,
        bias=0.15,
        blur_mm=(0.9, 0.9, 0.4),
        scale_range=(2000.0, 4500.0),
        offset_fraction=0.0,
    ),
}


def _resolve_site(site: str | SiteParams) -> SiteParams:
    if isinstance(site, SiteParams):
        return site
    key = str(site).strip().upper()
    if key not in SITES:
        raise ValueError(
            f"Unknown phantom site {site!r}: expected one of {', '.join(SITES)} or a SiteParams."
        )
    return SITES[key]


# --------------------------------------------------------------------------------------------------
# Anatomy asset
# --------------------------------------------------------------------------------------------------


def _default_template_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "nilearn is not installed: pass source_dir, the folder holding "
            + ", ".join(_TEMPLATE_FILES.values())
        )
    return Path(spec.origin).parent / "datasets" / "data"


def build_asset(source_dir: str | Path | None = None, out_path: str | Path = ASSET_PATH) -> Path:
    """Rebuild the packaged 2 mm anatomy asset from the 1 mm MNI ICBM152 2009a template.

    The T1, grey-matter and white-matter maps (``*_tal_nlin_sym_09a_converted.nii.gz`` as shipped
    in nilearn's wheel) are block-averaged 2x2x2 to 2 mm, cropped to the brain's box plus one voxel
    and stored as uint8 (0-255) in one compressed ``.npz`` with the 2 mm grid's RAS affine. The
    ``brain`` channel is the fraction of 1 mm voxels inside the template's brain mask (T1 > 0).

    Parameters
    ----------
    source_dir
        Folder with the three template files; default: nilearn's ``datasets/data`` folder.
    out_path
        Where to write the ``.npz`` (default: the packaged asset).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    src = Path(source_dir) if source_dir is not None else _default_template_dir()
    maps: dict[str, np.ndarray] = {}
    affine = None
    for key, name in _TEMPLATE_FILES.items():
        img = nib.load(src / name)
        if affine is not None and not np.allclose(img.affine, affine):
            raise ValueError(f"{name} is not on the same grid as the T1 template.")
        affine = img.affine
        maps[key] = np.asanyarray(img.dataobj).astype(np.float32)
    assert affine is not None
    maps["brain"] = (maps["t1"] > 0).astype(np.float32) * 255.0
    shape = np.array(maps["t1"].shape) // 2 * 2

    def block_mean(a: np.ndarray) -> np.ndarray:
        a = a[: shape[0], : shape[1], : shape[2]]
        return a.reshape(shape[0] // 2, 2, shape[1] // 2, 2, shape[2] // 2, 2).mean(axis=(1, 3, 5))

    small = {k: block_mean(v) for k, v in maps.items()}
    inside = np.argwhere(small["brain"] > 0)
    lo = np.maximum(inside.min(0) - 1, 0)
    hi = np.minimum(inside.max(0) + 2, small["brain"].shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    # 2 mm voxel (0,0,0) is the mean of 1 mm voxels 0 and 1: its centre is half a mm further on.
    affine2 = affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine2[:3, 3] = affine[:3, :3] @ (0.5 + 2.0 * lo) + affine[:3, 3]
    arrays = {k: np.clip(np.rint(v[crop]), 0, 255).astype(np.uint8) for k, v in small.items()}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, affine=affine2, **arrays)
    return out


@dataclass(frozen=True)
class _Atlas:
    maps: dict[str, np.ndarray]  # float32 0-1 (t1 in 0-255), on the 2 mm grid
    affine: np.ndarray  # 2 mm voxel -> MNI mm (RAS+)


@lru_cache(maxsize=1)
def _load_atlas() -> _Atlas:
    if not ASSET_PATH.is_file():
        raise FileNotFoundError(
            f"Phantom anatomy asset missing: {ASSET_PATH}. Reinstall napari-brats-kd or rebuild it "
            "with `python -m napari_brats_kd.phantom --rebuild-asset`."
        )
    with np.load(ASSET_PATH) as z:
        affine = np.array(z["affine"], dtype=float)
        maps = {k: z[k].astype(np.float32) for k in ("t1", "gm", "wm", "brain")}
    for k in ("gm", "wm", "brain"):
        maps[k] /= 255.0
    return _Atlas(maps, affine)


# --------------------------------------------------------------------------------------------------
# Grids and smooth random fields
# --------------------------------------------------------------------------------------------------


def _interp_axis(a: np.ndarray, pos: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``a`` along ``axis`` at fractional indices ``pos`` (clamped)."""
    n = a.shape[axis]
    if n == 1:
        return np.repeat(a, len(pos), axis=axis)
    pos = np.clip(pos, 0, n - 1)
    i0 = np.minimum(pos.astype(np.intp), n - 2)
    w = (pos - i0).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = len(pos)
    w = w.reshape(shape)
    lo = np.take(a, i0, axis=axis)
    hi = np.take(a, i0 + 1, axis=axis)
    # lo and hi are fresh arrays from take: work in place to spare full-size temporaries.
    np.subtract(hi, lo, out=hi)
    hi *= w
    lo += hi
    return lo


def _resample(a: np.ndarray, positions: Sequence[np.ndarray]) -> np.ndarray:
    """Separable linear resampling of a 3D array at per-axis fractional index vectors."""
    out = a.astype(np.float32, copy=False)
    # Shrinking axes first keeps the intermediate arrays small; among equal ratios the last axis
    # goes first because taking along axis 0 on the largest array copies contiguous rows.
    order = sorted(range(3), key=lambda ax: (len(positions[ax]) / a.shape[ax], -ax))
    for ax in order:
        out = _interp_axis(out, positions[ax], ax)
    return out


def _smooth_noise(rng: np.random.Generator, spacing_mm: float) -> np.ndarray:
    """Unit-variance smooth random field on a control grid covering the BraTS field of view."""
    shape = tuple(math.ceil(L / spacing_mm) + 3 for L in _FOV_MM)
    raw = rng.standard_normal(shape).astype(np.float32)
    smooth = ndimage.gaussian_filter(raw, 1.0, mode="wrap")
    return smooth / max(float(smooth.std()), 1e-6)


def _field_at(ctrl: np.ndarray, spacing_mm: float, axes_mm: Sequence[np.ndarray]) -> np.ndarray:
    """Sample a control-grid field (origin one control step before voxel 0) at grid axes in mm."""
    return _resample(ctrl, [np.asarray(x) / spacing_mm + 1.0 for x in axes_mm])


@dataclass(frozen=True)
class _Grid:
    """An axis-aligned grid in BraTS voxel millimetres (voxel (0,0,0) of the BraTS grid at 0)."""

    shape: tuple[int, int, int]
    step: float

    @property
    def axes(self) -> list[np.ndarray]:
        return [np.arange(n, dtype=np.float64) * self.step for n in self.shape]

    @classmethod
    def covering(cls, step: float) -> _Grid:
        return cls(tuple(math.ceil(L / step) + 1 for L in _FOV_MM), step)  # type: ignore[arg-type]

    def points(self) -> np.ndarray:
        """All grid points, shape (3, *shape), float32."""
        ax = [a.astype(np.float32) for a in self.axes]
        return np.stack(np.meshgrid(*ax, indexing="ij"))


def _output_shape(spacing: float) -> tuple[int, int, int]:
    return tuple(math.ceil(n / spacing) for n in orient.BRATS_SHAPE)  # type: ignore[return-value]


#: Peak bytes per output voxel of :func:`render_phantom` (measured: 565 MB for the 8.9 M voxels of
#: a 1 mm phantom), with a margin.
_PEAK_BYTES_PER_VOXEL = 80


def _check_memory(spacing: float) -> None:
    """Refuse, before allocating, a phantom whose arrays would not fit in the free memory."""
    from ..device import available_memory

    shape = _output_shape(spacing)
    need = math.prod(shape) * _PEAK_BYTES_PER_VOXEL
    free = available_memory("cpu")
    if free is None or need <= free:
        return
    fits = spacing * (need / free) ** (1 / 3)
    raise ResourceError(
        f"A phantom at {spacing:g} mm spacing has {shape[0]}x{shape[1]}x{shape[2]} voxels and "
        f"needs about {need / 1024**3:.1f} GiB of memory; {free / 1024**3:.1f} GiB are free. "
        f"Use a spacing of {math.ceil(fits * 100) / 100:g} mm or coarser (BraTS is 1 mm)."
    )


def _output_affine(spacing: float) -> np.ndarray:
    affine = orient.BRATS_AFFINE.copy()
    affine[:3, :3] *= spacing
    return affine


# --------------------------------------------------------------------------------------------------
# Geometry: BraTS grid -> template
# --------------------------------------------------------------------------------------------------


@dataclass
class _Placement:
    """Random placement of the template in BraTS space (the inverse map, BraTS -> MNI)."""

    centre_vox: np.ndarray  # BraTS voxel mm where the template centre lands
    scale: np.ndarray  # per RAS axis
    rot_inv: np.ndarray  # 3x3, applied to RAS offsets divided by scale
    disp: list[np.ndarray]  # control grids of the smooth displacement (mm), per BraTS axis
    disp_step: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Placement:
        centre = _BRAIN_CENTRE_VOX + rng.uniform(-3, 3, 3)
        scale = _MEAN_SCALE * rng.uniform(0.95, 1.05, 3)
        angles = np.deg2rad(rng.uniform(-4, 4, 3))
        rot = np.eye(3)
        for ax, ang in enumerate(angles):
            c, s = math.cos(ang), math.sin(ang)
            r = np.eye(3)
            i, j = [k for k in range(3) if k != ax]
            r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
            rot = rot @ r
        step = 36.0
        amp = rng.uniform(2.0, 4.0)
        disp = [_smooth_noise(rng, step) * amp for _ in range(3)]
        return cls(centre, scale, rot.T, disp, step)

    def to_mni(self, pts: np.ndarray, axes_mm: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """BraTS voxel mm (3, ...) -> MNI mm (3, ...). ``axes_mm``: grid axes for the field."""
        pts = pts.astype(np.float32, copy=True)
        if axes_mm is not None:
            for ax in range(3):
                pts[ax] += _field_at(self.disp[ax], self.disp_step, axes_mm)
        # BraTS voxel axes point L, P, S: flip i and j into RAS offsets.
        ras = np.stack(
            [
                -(pts[0] - self.centre_vox[0]),
                -(pts[1] - self.centre_vox[1]),
                pts[2] - self.centre_vox[2],
            ]
        ) / self.scale.reshape(3, *([1] * (pts.ndim - 1))).astype(np.float32)
        mni = np.tensordot(self.rot_inv.astype(np.float32), ras, axes=1)
        mni += _MNI_CENTRE.reshape(3, *([1] * (pts.ndim - 1))).astype(np.float32)
        return mni

    def midline_x_world(self) -> float:
        """World x (RAS+, mm) of the template's mid-sagittal plane through the brain centre."""
        # The mid-sagittal plane passes through the centre; world x = -i on the BraTS grid.
        return float(-self.centre_vox[0])


def _sample_atlas(atlas: _Atlas, mni: np.ndarray, keys: Sequence[str]) -> dict[str, np.ndarray]:
    inv = np.linalg.inv(atlas.affine).astype(np.float32)
    idx = np.tensordot(inv[:3, :3], mni, axes=1) + inv[:3, 3].reshape(3, *([1] * (mni.ndim - 1)))
    return {
        k: ndimage.map_coordinates(atlas.maps[k], idx, order=1, mode="constant", cval=0.0).astype(
            np.float32, copy=False
        )
        for k in keys
    }


# --------------------------------------------------------------------------------------------------
# Tumours
# --------------------------------------------------------------------------------------------------


@dataclass
class _Lesion:
    centre: np.ndarray  # BraTS voxel mm
    radius: float  # tumour-core radius (mm)
    axes: np.ndarray  # 3x3: rotation / anisotropy applied to offsets before the radius test
    necrosis: float  # NCR where the core level < necrosis (0-1)
    edema: float  # edema reach (mm) along white matter
    push: float  # mass effect: fraction of the core volume that displaces tissue
    side: str  # "left" / "right" (patient's)


def _draw_lesions(
    rng: np.random.Generator,
    placement: _Placement,
    atlas: _Atlas,
    n_lesions: int | None,
    lesion_side: str | None,
) -> list[_Lesion]:
    # Candidate centres on a coarse grid of the deformed (but not yet pushed) anatomy.
    coarse = _Grid.covering(6.0)
    pts = coarse.points()
    mni = placement.to_mni(pts, coarse.axes)
    tissue = _sample_atlas(atlas, mni, ("wm", "brain"))
    depth = ndimage.distance_transform_edt(tissue["brain"] > 0.5) * coarse.step
    if n_lesions is None:
        n_lesions = int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12]))
    ok = (tissue["wm"] > 0.6) & (mni[2] > -15) & (np.abs(mni[0]) > 8)
    # A forced side keeps centres well off the midline so that most of the tumour stays there
    # (edema may still cross through the corpus callosum, as real gliomas do).
    if lesion_side == "left":
        ok &= mni[0] < -18  # MNI x < 0 is the patient's left
    elif lesion_side == "right":
        ok &= mni[0] > 18
    cand = np.argwhere(ok)
    lesions: list[_Lesion] = []
    for index in range(n_lesions):
        big = n_lesions == 1 or index == 0
        radius = float(rng.uniform(12.0, 24.0) if big else rng.uniform(7.0, 14.0))
        for _attempt in range(200):
            c_idx = cand[rng.integers(len(cand))]
            centre = c_idx * coarse.step + rng.uniform(-2, 2, 3)
            r = float(min(radius, depth[tuple(c_idx)] - 4.0))
            if r < 5.0:
                continue
            if all(np.linalg.norm(centre - o.centre) > r + o.radius + 10 for o in lesions):
                radius = r
                break
        else:
            break  # no room left for another lesion: keep those placed
        q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
        axes = np.diag(rng.uniform(0.8, 1.25, 3)) @ q
        lesions.append(
            _Lesion(
                centre=centre,
                radius=radius,
                axes=axes,
                necrosis=float(rng.uniform(0.6, 0.88)),
                edema=float(rng.uniform(0.8, 2.4) * radius + 5.0),
                push=float(rng.uniform(0.4, 0.8)),
                side="left" if mni[0][tuple(c_idx)] < 0 else "right",
            )
        )
    if not lesions:
        raise RuntimeError("No room for a tumour in the phantom brain (report this seed as a bug).")
    return lesions


def _push_points(pts: np.ndarray, lesions: Sequence[_Lesion]) -> np.ndarray:
    """Mass effect as a backward map: sample tissue from closer to each lesion's centre.

    Tissue at radius ``r0`` moves out to ``r = (r0^3 + k R^3)^(1/3)``, which conserves the volume
    of tissue displaced by a sphere of ``k`` times the core volume and never folds.
    """
    out = pts.copy()
    for les in lesions:
        c = les.centre.reshape(3, *([1] * (pts.ndim - 1))).astype(np.float32)
        d = out - c
        r = np.sqrt((d * d).sum(0)) + 1e-3
        vol = les.push * les.radius**3
        r0 = np.cbrt(np.maximum(r**3 - vol, 0.0))
        out = c + d * (r0 / r)
    return out


def _lesion_levels(
    pts: np.ndarray,
    lesions: Sequence[_Lesion],
    wm: np.ndarray,
    csf: np.ndarray,
    mni_x: np.ndarray,
    noise: dict,
) -> dict[str, np.ndarray]:
    """Level functions (< 1 inside) of tumour core, necrosis and edema on the working grid."""
    big = np.float32(1e3)
    core = np.full(pts.shape[1:], big, np.float32)
    necro = np.full(pts.shape[1:], big, np.float32)
    edema = np.full(pts.shape[1:], big, np.float32)
    # Edema travels along fibres: its reach shrinks in grey matter and stops at CSF.
    reach = 0.25 + 0.75 * np.clip(wm, 0, 1)
    for les in lesions:
        d = pts - les.centre.reshape(3, 1, 1, 1).astype(np.float32)
        e = np.tensordot(les.axes.astype(np.float32), d, axes=1)
        r = np.sqrt((e * e).sum(0))
        lvl = r / les.radius + 0.3 * noise["shape"]
        core = np.minimum(core, lvl)
        # Irregular necrosis, but always inside an enhancing rim at least 3 mm thick.
        nec = np.maximum(
            (lvl + 0.25 * noise["necro"]) / les.necrosis, lvl / (1.0 - 3.0 / les.radius)
        )
        necro = np.minimum(necro, nec)
        # Distance beyond the (noisy) core surface, so that edema always wraps the core.
        beyond = (lvl - 1.0) * les.radius
        # Only the corpus callosum connects the hemispheres: edema crosses the midline less.
        other_side = (mni_x > 0) if les.side == "left" else (mni_x < 0)
        ed = beyond / (les.edema * reach * np.where(other_side, 0.3, 1.0)) + 0.3 * noise["edema"]
        ed = np.where((csf > 0.6) & (beyond > 2.0), big, ed)
        edema = np.minimum(edema, ed)
    return {"core": core, "necro": necro, "edema": edema}


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@dataclass
class PhantomData:
    """Everything a phantom is made of, as arrays in file voxel order (L, P, S).

    Attributes
    ----------
    images
        ``{modality: int16 array}`` for ``t1``, ``t1c``, ``t2``, ``flair``.
    classes
        uint8 class map: 0 background, 1 NCR, 2 ED, 3 ET (convention-free; see :attr:`CLASS_CODES`).
    tissue
        ``"brain"`` (bool mask: the only voxels with non-zero images) and, when asked for, the
        healthy-tissue fractions ``"csf"``, ``"gm"``, ``"wm"`` (float32 0-1, as before the tumour
        replaced them).
    affine
        4x4 voxel-to-world affine (LPS voxel order, RAS+ world, voxel size = spacing).
    lesions
        One dict per tumour: ``centre_world`` (mm, RAS+), ``centre_voxel`` (file order),
        ``side`` (patient's ``"left"``/``"right"``), ``radius_mm``.
    midline_x_world
        World x (mm) of the brain's mid-sagittal plane; patient's left is at smaller x.
    site, seed, spacing
        What the phantom was made with.
    """

    CLASS_CODES: ClassVar[dict[str, int]] = {"NCR": 1, "ED": 2, "ET": 3}

    images: dict[str, np.ndarray]
    classes: np.ndarray
    tissue: dict[str, np.ndarray]
    affine: np.ndarray
    lesions: list[dict]
    midline_x_world: float
    site: SiteParams
    seed: int
    spacing: float
    scanner: dict[str, tuple[float, float]] = field(default_factory=dict)

    def labels(self, convention: LabelConvention | str = LabelConvention.BRATS2021) -> np.ndarray:
        """The segmentation in a BraTS label convention (uint8)."""
        values = get_convention(convention).values
        lut = np.zeros(4, np.uint8)
        for cls, code in self.CLASS_CODES.items():
            lut[code] = values[cls]
        return lut[self.classes]


def _site_intensities(
    site: SiteParams, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Tissue (CSF, GM, WM) and lesion (NCR, ED, ET) intensities per modality for this site."""
    tissue, lesion = {}, {}
    for m in MODALITIES:
        base = np.array(_TISSUE_INTENSITY[m])
        mean = base.mean()
        jitter = 1.0 + rng.uniform(-site.tissue_jitter, site.tissue_jitter, 3)
        tissue[m] = np.maximum((mean + site.contrast * (base - mean)) * jitter, 0.02)
        les = np.array(_LESION_INTENSITY[m])
        jitter = 1.0 + rng.uniform(-site.tissue_jitter, site.tissue_jitter, 3)
        lesion[m] = np.maximum((mean + site.contrast * (les - mean)) * jitter, 0.02)
    return tissue, lesion


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


# --------------------------------------------------------------------------------------------------
# Public API: Case and files
# --------------------------------------------------------------------------------------------------


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


#: File names per naming: (folder pattern, {modality or "seg": suffix}, separator, convention).
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
