"""The anatomy asset: the MNI ICBM152 2009a template at 2 mm, its builder, loader and sampler."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

#: The packaged asset: it stays in ``napari_brats_kd/assets`` (package data, see pyproject.toml),
#: one level above this sub-package.
ASSET_PATH = Path(__file__).parent.with_name("assets") / "mni_icbm152_2mm.npz"
_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


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


def _sample_atlas(atlas: _Atlas, mni: np.ndarray, keys: Sequence[str]) -> dict[str, np.ndarray]:
    inv = np.linalg.inv(atlas.affine).astype(np.float32)
    idx = np.tensordot(inv[:3, :3], mni, axes=1) + inv[:3, 3].reshape(3, *([1] * (mni.ndim - 1)))
    return {
        k: ndimage.map_coordinates(atlas.maps[k], idx, order=1, mode="constant", cval=0.0).astype(
            np.float32, copy=False
        )
        for k in keys
    }
