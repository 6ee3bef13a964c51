"""Output grid, tumour labels and acquisition: from working-grid images to int16 scanner files.

Lesion contrast is added only inside the box around the tumours, and only the voxels inside
the brain get noise and scanner units, because these stages run at the output resolution and are
what peaks in memory and time for a 1 mm phantom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..labels import MODALITIES
from .data import PhantomData
from .fields import _field_at, _Grid, _output_affine, _output_shape, _resample
from .sites import SiteParams

if TYPE_CHECKING:  # render imports this module: only the type checker needs _Draws
    from .render import _Draws

_Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class _Output:
    """The output grid and how working-grid arrays are carried onto it."""

    spacing: float
    shape: tuple[int, int, int]
    affine: np.ndarray
    to_work: list[np.ndarray]  # output voxel positions as fractional working-grid indices
    same_grid: bool

    @classmethod
    def make(cls, spacing: float, work: _Grid) -> _Output:
        shape = _output_shape(spacing)
        out_axes = [np.arange(n, dtype=np.float64) * spacing for n in shape]
        to_work = [x / work.step for x in out_axes]
        same_grid = work.shape == shape and work.step == spacing
        return cls(spacing, shape, _output_affine(spacing), to_work, same_grid)

    def up(self, a: np.ndarray) -> np.ndarray:
        """``a`` on the whole output grid (``a`` itself, not a copy, when the grids coincide)."""
        return a if self.same_grid else _resample(a, self.to_work)

    def up_box(self, a: np.ndarray, box: _Box) -> np.ndarray:
        """``a`` on the output grid, inside ``box`` only."""
        if self.same_grid:
            return a[box]
        return _resample(a, [self.to_work[ax][box[ax]] for ax in range(3)])


@dataclass(frozen=True)
class _TumourBox:
    """Tumour classes and lesion look in the output-grid box around the tumours."""

    box: _Box
    classes: np.ndarray  # uint8 class codes (PhantomData.CLASS_CODES) inside the box
    ed_grade: np.ndarray  # how far edema has moved from healthy tissue to its own intensity
    texture: np.ndarray  # multiplicative texture of NCR and ET

    @classmethod
    def label(
        cls,
        levels: dict[str, np.ndarray],
        tex: np.ndarray,
        work: _Grid,
        out: _Output,
        brain: np.ndarray,
    ) -> _TumourBox:
        """Classes from the upsampled level functions, nested ET/NCR in TC in WT, in the brain."""
        near = np.argwhere((levels["edema"] < 1.6) | (levels["core"] < 1.6))
        wlo, whi = near.min(0) - 1, near.max(0) + 2
        box = tuple(
            slice(
                int(max(math.floor(wlo[a] * work.step / out.spacing), 0)),
                int(min(math.ceil(whi[a] * work.step / out.spacing) + 1, out.shape[a])),
            )
            for a in range(3)
        )
        lv = {k: out.up_box(v, box) for k, v in levels.items()}
        in_brain = brain[box]
        tc = (lv["core"] < 1.0) & in_brain
        wt = (tc | (lv["edema"] < 1.0)) & in_brain
        ncr = tc & (lv["necro"] < 1.0)
        classes = np.zeros(tc.shape, np.uint8)
        codes = PhantomData.CLASS_CODES
        classes[wt] = codes["ED"]
        classes[tc] = codes["ET"]
        classes[ncr] = codes["NCR"]
        # Edema fades from the core outwards but stays visibly above normal tissue up to its
        # label edge.
        ed_grade = np.clip(1.0 - lv["edema"], 0.0, 1.0) * 0.5 + 0.5
        texture = 1.0 + 0.08 * out.up_box(tex, box)
        return cls(box, classes, ed_grade, texture)  # type: ignore[arg-type]

    def full(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The class map on the whole output grid (0 outside the box)."""
        classes = np.zeros(shape, np.uint8)
        classes[self.box] = self.classes
        return classes


def _gain_fields(
    site: SiteParams, bias_ctrl: dict[str, np.ndarray], axes_mm: Sequence[np.ndarray]
) -> dict[str, np.ndarray]:
    """Smooth multiplicative bias field per modality: a common coil shading plus its own."""
    gain = {}
    for m in MODALITIES:
        log_gain = 0.7 * bias_ctrl["common"] + 0.5 * bias_ctrl[m]
        gain[m] = np.exp(site.bias * _field_at(log_gain, 48.0, axes_mm)).astype(np.float32)
    return gain


def _lesion_delta(
    h_box: np.ndarray,
    g_box: np.ndarray,
    tumour: _TumourBox,
    lesion_c: np.ndarray,
    blur_out: Sequence[float],
) -> np.ndarray:
    """Change from healthy to lesion signal in the tumour box, biased and blurred like the rest."""
    codes = PhantomData.CLASS_CODES
    ncr_c, ed_c, et_c = lesion_c
    target = np.where(
        tumour.classes == codes["ED"],
        h_box + (ed_c - h_box) * tumour.ed_grade,
        np.where(tumour.classes == codes["NCR"], ncr_c, et_c) * tumour.texture,
    )
    delta = np.where(tumour.classes > 0, target - h_box, 0.0).astype(np.float32) * g_box
    if any(blur_out):
        delta = ndimage.gaussian_filter(delta, blur_out, mode="constant", truncate=3.0)
    return delta


def _to_scanner(
    vals: np.ndarray,
    site: SiteParams,
    sigma: float,
    scanner: tuple[float, float],
    rng_noise: np.random.Generator,
) -> np.ndarray:
    """Gamma, Rician noise and scanner units of the brain's voxels, as int16 >= 1."""
    vals = np.maximum(vals, 0.0)
    if site.gamma != 1.0:
        vals = vals**site.gamma
    if sigma > 0:
        n1 = rng_noise.standard_normal(vals.shape, dtype=np.float32)
        n2 = rng_noise.standard_normal(vals.shape, dtype=np.float32)
        vals = np.sqrt((vals + sigma * n1) ** 2 + (sigma * n2) ** 2)
    a, b = scanner
    # >= 1 inside the brain so that exactly 0 still means outside it (skull-stripped).
    return np.clip(np.rint(vals * a + b), 1, 32767).astype(np.int16)


def _acquire_images(
    healthy: dict[str, np.ndarray],
    tumour: _TumourBox,
    brain: np.ndarray,
    work: _Grid,
    out: _Output,
    site: SiteParams,
    draws: _Draws,
) -> dict[str, np.ndarray]:
    """Per modality: bias, blur, lesion look, noise, scanner units; int16, 0 outside the brain."""
    blur_work = [s / work.step for s in site.blur_mm]
    blur_out = [s / out.spacing for s in site.blur_mm]
    gain_work = _gain_fields(site, draws.bias_ctrl, work.axes)
    inside = np.flatnonzero(brain)
    images: dict[str, np.ndarray] = {}
    # Modalities in a fixed order: they draw their noise one after the other from rng_noise.
    for m in MODALITIES:
        signal = healthy[m] * gain_work[m]
        if any(blur_work):
            signal = ndimage.gaussian_filter(signal, blur_work, mode="nearest", truncate=3.0)
        full = out.up(signal)
        if out.same_grid:
            full = full.copy()
        h_box = out.up_box(healthy[m], tumour.box)
        g_box = out.up_box(gain_work[m], tumour.box)
        full[tumour.box] += _lesion_delta(h_box, g_box, tumour, draws.lesion_c[m], blur_out)
        sigma = site.noise * float(max(draws.tissue_c[m]))
        raw = _to_scanner(full.ravel()[inside], site, sigma, draws.scanner[m], draws.rng_noise)
        image = np.zeros(out.shape, np.int16)
        image.ravel()[inside] = raw
        images[m] = image
    return images
