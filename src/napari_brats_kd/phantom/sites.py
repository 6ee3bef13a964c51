"""Scanner sites: how one hospital's scanner renders the same anatomy, and its tissue contrasts.

:class:`SiteParams` holds a site's look (contrast, noise, bias, blur, raw intensity scale);
:data:`SITES` the three presets. The intensity tables say how bright each healthy tissue and
each tumour class is per modality before a site changes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..labels import MODALITIES

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
