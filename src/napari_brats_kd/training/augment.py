"""Data augmentation for training: presets and per-transform settings, built from MONAI transforms.

Augmentations run on training patches (after normalisation and patch sampling) inside the
DataLoader workers. Spatial transforms move image and label together (labels with nearest
interpolation, so region masks stay binary and aligned); intensity transforms touch the image only.

Settings per transform (``prob`` is the chance it is applied to a patch; 0 turns it off):

=================  ============================================  ===========  ===========  ======
setting            MONAI transform, meaning                      none         light        strong
=================  ============================================  ===========  ===========  ======
``flip_prob``      ``RandFlipd`` per axis (x, y, z)              0            0.5          0.5
``affine_prob``    ``RandAffined``: rotation (rad, each axis)    0            0.2          0.3
``rotate``           ... rotation range +-                       .            0.26 (15°)   0.52
``scale``            ... isotropic-ish scale range +-            .            0.1          0.2
``elastic_prob``   ``Rand3DElasticd`` (sigma 5-8, magnitude       0            0            0.2
                   ``elastic_magnitude``)
``intensity_prob`` ``RandScaleIntensityd`` + ``RandShift...``     0            1.0          1.0
``intensity_scale``  ... factor range +-                         .            0.1          0.2
``intensity_shift``  ... offset range +- (z-score units)         .            0.1          0.2
``gamma_prob``     ``RandAdjustContrastd`` (``gamma`` range,      0            0.1          0.3
                   statistics retained)
``bias_prob``      ``RandBiasFieldd`` (coefficients up to         0            0.1          0.3
                   ``bias_coeff``)
``noise_prob``     ``RandGaussianNoised`` (std ``noise_std``)    0            0.1          0.2
``blur_prob``      ``RandGaussianSmoothd`` (sigma ``blur_sigma``) 0            0.1          0.2
``lowres_prob``    ``RandSimulateLowResolutiond`` (zoom           0            0            0.25
                   ``lowres_zoom``): thick-slice / other-scanner
                   look
=================  ============================================  ===========  ===========  ======

The ``strong`` preset leans on intensity and resolution changes because the gap between BraTS sites
(scanner, field strength, slice thickness) lies there more than in shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import TrainingError

PRESETS: tuple[str, ...] = ("none", "light", "strong")


@dataclass
class AugmentConfig:
    """Which augmentations to apply and how strongly (see the module docstring's table)."""

    preset: str = "light"
    flip_prob: float = 0.5
    affine_prob: float = 0.2
    rotate: float = 0.26
    scale: float = 0.1
    elastic_prob: float = 0.0
    elastic_magnitude: tuple[float, float] = (50.0, 150.0)
    intensity_prob: float = 1.0
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    gamma_prob: float = 0.1
    gamma: tuple[float, float] = (0.7, 1.5)
    bias_prob: float = 0.1
    bias_coeff: float = 0.1
    noise_prob: float = 0.1
    noise_std: float = 0.1
    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    lowres_prob: float = 0.0
    lowres_zoom: tuple[float, float] = (0.5, 1.0)

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> AugmentConfig:
        """Settings of a named preset (``none``, ``light``, ``strong``), with overrides."""
        base = _PRESET_VALUES.get(preset) if isinstance(preset, str) else None
        if base is None:
            raise TrainingError(
                f"Unknown augmentation preset {preset!r}: expected one of {', '.join(PRESETS)}."
            )
        cfg = replace(cls(), preset=preset, **base)
        return cfg.updated(overrides) if overrides else cfg

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | str | None) -> AugmentConfig:
        """From a YAML mapping: ``{"preset": "strong", "noise_prob": 0.3}``, or a preset name."""
        if data is None:
            return cls.from_preset("light")
        if isinstance(data, str):
            return cls.from_preset(data)
        if not isinstance(data, Mapping):
            raise TrainingError(
                f"Invalid setting augment={data!r:.80}: expected a preset name "
                f"({', '.join(PRESETS)}) or a group of augmentation settings."
            )
        data = dict(data)
        preset = data.pop("preset", "light")
        return cls.from_preset(preset, **data)

    def updated(self, overrides: Mapping[str, Any]) -> AugmentConfig:
        """A copy with some settings changed; unknown names raise :class:`TrainingError`."""
        known = {f.name for f in fields(self)}
        unknown = {str(k) for k in overrides} - known
        if unknown:
            raise TrainingError(
                f"Unknown augmentation setting(s) {sorted(unknown)}: known are {sorted(known)}."
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        return replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for YAML."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


_OFF = {
    "flip_prob": 0.0,
    "affine_prob": 0.0,
    "elastic_prob": 0.0,
    "intensity_prob": 0.0,
    "gamma_prob": 0.0,
    "bias_prob": 0.0,
    "noise_prob": 0.0,
    "blur_prob": 0.0,
    "lowres_prob": 0.0,
}
_PRESET_VALUES: dict[str, dict[str, Any]] = {
    "none": _OFF,
    "light": {},  # the dataclass defaults
    "strong": {
        "affine_prob": 0.3,
        "rotate": 0.52,
        "scale": 0.2,
        "elastic_prob": 0.2,
        "intensity_scale": 0.2,
        "intensity_shift": 0.2,
        "gamma_prob": 0.3,
        "bias_prob": 0.3,
        "bias_coeff": 0.2,
        "noise_prob": 0.2,
        "blur_prob": 0.2,
        "lowres_prob": 0.25,
    },
}


def build_augmentation(
    config: AugmentConfig,
    image_keys: Sequence[str] = ("image",),
    label_keys: Sequence[str] = ("label",),
    target_keys: Sequence[str] = (),
    target_fill: float = 0.0,
) -> list:
    """MONAI dictionary transforms for ``config``, to append after patch sampling.

    Parameters
    ----------
    config
        The augmentation settings.
    image_keys
        Keys of float images (interpolated bilinearly; intensity transforms apply).
    label_keys
        Keys of label / mask channels (nearest interpolation; intensity transforms skip them).
    target_keys
        Keys of cached teacher logits: moved by spatial transforms (bilinear), untouched by
        intensity transforms.
    target_fill
        Value the targets take where a rotation, scaling or deformation brings in padding (the
        image pads with 0, i.e. background, so for teacher logits: the background logit, not
        0 = "unsure").

    Returns
    -------
    list
        Transforms in application order (empty for the ``none`` preset).
    """
    from monai import transforms as mt

    img = list(image_keys)
    lab = list(label_keys)
    tgt = list(target_keys)
    both = img + lab + tgt
    modes = ["bilinear"] * len(img) + ["nearest"] * len(lab) + ["bilinear"] * len(tgt)
    out: list = []
    c = config
    if c.flip_prob > 0:
        out += [mt.RandFlipd(both, prob=c.flip_prob, spatial_axis=a) for a in range(3)]
    padding: list = []
    if c.affine_prob > 0:
        padding.append(
            mt.RandAffined(
                both,
                prob=c.affine_prob,
                rotate_range=(c.rotate, c.rotate, c.rotate),
                scale_range=(c.scale, c.scale, c.scale),
                mode=modes,
                padding_mode="zeros",
            )
        )
    if c.elastic_prob > 0:
        padding.append(
            mt.Rand3DElasticd(
                both,
                sigma_range=(5.0, 8.0),
                magnitude_range=tuple(c.elastic_magnitude),
                prob=c.elastic_prob,
                mode=modes,
                padding_mode="zeros",
            )
        )
    if padding and tgt and target_fill != 0.0:
        # Resampling pads with zeros only: shift the targets so that their fill value is 0.
        padding = [
            mt.ShiftIntensityd(tgt, offset=-target_fill),
            *padding,
            mt.ShiftIntensityd(tgt, offset=target_fill),
        ]
    out += padding
    if c.intensity_prob > 0:
        out.append(mt.RandScaleIntensityd(img, factors=c.intensity_scale, prob=c.intensity_prob))
        out.append(mt.RandShiftIntensityd(img, offsets=c.intensity_shift, prob=c.intensity_prob))
    if c.gamma_prob > 0:
        out.append(
            mt.RandAdjustContrastd(img, prob=c.gamma_prob, gamma=tuple(c.gamma), retain_stats=True)
        )
    if c.bias_prob > 0:
        out.append(mt.RandBiasFieldd(img, coeff_range=(0.0, c.bias_coeff), prob=c.bias_prob))
    if c.noise_prob > 0:
        out.append(mt.RandGaussianNoised(img, prob=c.noise_prob, std=c.noise_std))
    if c.blur_prob > 0:
        s = tuple(c.blur_sigma)
        out.append(mt.RandGaussianSmoothd(img, sigma_x=s, sigma_y=s, sigma_z=s, prob=c.blur_prob))
    if c.lowres_prob > 0:
        out.append(
            mt.RandSimulateLowResolutiond(img, prob=c.lowres_prob, zoom_range=tuple(c.lowres_zoom))
        )
    return out


__all__ = ["PRESETS", "AugmentConfig", "build_augmentation"]
