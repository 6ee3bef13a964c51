"""Anatomy placement (BraTS grid -> template) and tumours: where they grow, mass effect, levels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .atlas import _Atlas, _sample_atlas
from .fields import _field_at, _Grid, _smooth_noise

#: Template point (MNI mm, RAS+) placed at :data:`_BRAIN_CENTRE_VOX`: the centre of the brain's box.
_MNI_CENTRE = np.array([0.0, -17.0, 5.0])
#: BraTS voxel (i, j, k) where the brain's centre lies in real cases (BraTS-GLI-00001-000: the
#: brain spans i 49-188, j 28-217, k 10-146).
_BRAIN_CENTRE_VOX = np.array([119.0, 122.0, 78.0])
#: Mean scale from template to BraTS brain per RAS axis (BraTS brains, in SRI24 space, are
#: narrower in S-I than the ICBM average whose box includes more brain stem).
_MEAN_SCALE = np.array([0.965, 1.03, 0.9])


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
