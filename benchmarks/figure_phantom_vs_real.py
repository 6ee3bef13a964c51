"""Montage of a phantom next to a real BraTS case, same slice layout: docs/phantom_vs_real.png.

Rows: axial, coronal and sagittal slices through the core of the phantom's largest tumour, then
through the brightest FLAIR region of the real case. Columns: T1, T1c, T2, FLAIR and FLAIR with the
segmentation drawn on it (the real case ships none). Views are radiological (patient's right on the
screen's left), as napari shows them.

The real case is read from ``../shared/data/real`` beside the clone (never copied into the repo)::

    python benchmarks/figure_phantom_vs_real.py [--seed 3] [--site A] [--out FILE.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap

from napari_brats_kd import orientation as orient
from napari_brats_kd.labels import CLASS_COLORS, MODALITIES, MODALITY_NAMES
from napari_brats_kd.phantom import PhantomData, render_phantom

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real" / "BraTS-GLI-00001-000"
REAL_SUFFIX = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}


def _slices(vol: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal, sagittal slices of a display-ordered (I, P, L) volume."""
    z, y, x = centre
    return [vol[z], vol[:, y, :], vol[:, :, x]]


def _phantom(seed: int, site: str) -> tuple[dict, np.ndarray, tuple[int, int, int]]:
    data: PhantomData = render_phantom(seed, site)
    disp = {m: orient.to_display(a, data.affine) for m, a in data.images.items()}
    classes = orient.to_display(data.classes, data.affine)
    # Slice through the centre of the largest tumour (the centroid of several would miss them all).
    largest = max(data.lesions, key=lambda les: les["radius_mm"])
    marker = np.zeros(data.classes.shape, bool)
    marker[tuple(round(v) for v in largest["centre_voxel"])] = True
    centre = tuple(int(v) for v in np.argwhere(orient.to_display(marker, data.affine))[0])
    return disp, classes, centre  # type: ignore[return-value]


def _real(folder: Path) -> tuple[dict, tuple[int, int, int]]:
    disp = {}
    for m, suffix in REAL_SUFFIX.items():
        img = nib.load(folder / f"{folder.name}-{suffix}.nii.gz")
        disp[m] = orient.to_display(np.asanyarray(img.dataobj), img.affine)
    flair = disp["flair"].astype(np.float32)
    bright = np.argwhere(flair > np.percentile(flair[flair > 0], 98))
    centre = tuple(int(v) for v in np.median(bright, axis=0))
    return disp, centre  # type: ignore[return-value]


def _window(a: np.ndarray) -> tuple[float, float]:
    inside = a[a > 0]
    return (0.0, float(np.percentile(inside, 99.5))) if inside.size else (0.0, 1.0)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--site", default="A")
    parser.add_argument("--real", type=Path, default=REAL)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "phantom_vs_real.png")
    args = parser.parse_args(argv)

    ph, classes, ph_centre = _phantom(args.seed, args.site)
    real, real_centre = _real(args.real)
    cmap_seg = ListedColormap(
        [(0, 0, 0, 0), CLASS_COLORS["NCR"], CLASS_COLORS["ED"], CLASS_COLORS["ET"]]
    )
    views = ("axial", "coronal", "sagittal")
    fig, axes = plt.subplots(6, 5, figsize=(12.5, 15.5), facecolor="black")
    rows = [("phantom", ph, ph_centre, classes), ("real", real, real_centre, None)]
    for block, (title, vols, centre, seg) in enumerate(rows):
        windows = {m: _window(vols[m]) for m in MODALITIES}
        seg_slices = _slices(seg, centre) if seg is not None else [None] * 3
        for v, view in enumerate(views):
            r = block * 3 + v
            for c, m in enumerate((*MODALITIES, "flair")):
                ax = axes[r, c]
                ax.imshow(
                    _slices(vols[m], centre)[v],
                    cmap="gray",
                    clim=windows[m],
                    interpolation="nearest",
                    aspect="equal",
                )
                if c == 4 and seg_slices[v] is not None:
                    ax.imshow(
                        seg_slices[v],
                        cmap=cmap_seg,
                        vmin=0,
                        vmax=3,
                        alpha=0.45,
                        interpolation="nearest",
                    )
                ax.set_xticks([])
                ax.set_yticks([])
                for s in ax.spines.values():
                    s.set_visible(False)
                if r in (0, 3):
                    label = "FLAIR + seg" if c == 4 else MODALITY_NAMES[m]
                    ax.set_title(f"{title}: {label}", color="white", fontsize=10)
                if c == 0:
                    ax.set_ylabel(view, color="white", fontsize=10)
    axes[3, 4].text(
        0.5,
        -0.02,
        "(no segmentation shipped)",
        color="0.7",
        fontsize=8,
        ha="center",
        va="top",
        transform=axes[3, 4].transAxes,
    )
    fig.suptitle(
        f"Phantom (seed {args.seed}, site {args.site}; NCR red, ED green, ET yellow) vs real "
        f"BraTS-GLI-00001-000 - radiological view (patient's right on the left)",
        color="white",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=60, facecolor="black")
    print(f"Wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)")
    return args.out


if __name__ == "__main__":
    main()
