"""Tiny synthetic NIfTI cases for tests, in every BraTS naming, stored as RAS or LPS.

Volumes are built in RAS voxel order (x towards the patient's Right, y Anterior, z Superior) by
hand, independently of the package's orientation code, and written either as RAS (identity-like
affine) or as LPS (x and y flipped, BraTS-style affine) with the *same* world coordinates, so that
both files must open identically.

The base volume is asymmetric on purpose: a bright marker sits in the patient's left hemisphere
(small x), a second one at the front (large y) and a third at the top (large z). Modality ``m``
holds ``base * (MODALITIES.index(m) + 1)``, so a test can tell which file became which modality.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from napari_brats_kd.labels import MODALITIES, convert_labels

#: Spatial shape in RAS voxel order (x, y, z): small, and different along every axis.
SHAPE: tuple[int, int, int] = (12, 10, 8)
LEFT_MARKER = 1000  # left hemisphere, x in [1, 3)
FRONT_MARKER = 700  # anterior, y in [8, 10)
TOP_MARKER = 500  # superior, z in [6, 8)


def base_volume(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """int16 RAS-ordered volume: a 'brain' block with three position markers and a few negatives."""
    nx, ny, nz = shape
    rng = np.random.default_rng(0)
    vol = np.zeros(shape, np.int16)
    vol[1:-1, 1:-1, 1:-1] = rng.integers(100, 200, size=(nx - 2, ny - 2, nz - 2))
    vol[1:3, ny // 2, nz // 2] = LEFT_MARKER
    vol[nx // 2, ny - 2 : ny, nz // 2] = FRONT_MARKER
    vol[nx // 2 + 1, ny // 2 - 1, nz - 2 : nz] = TOP_MARKER
    vol[2, 2, 2] = -5  # real scans carry a few negative values
    return vol


def seg_volume(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """uint8 RAS-ordered BraTS 2021 label map (1 NCR, 2 ED, 4 ET), off-centre."""
    seg = np.zeros(shape, np.uint8)
    seg[6:10, 3:7, 2:6] = 2
    seg[7:9, 4:6, 3:5] = 1
    seg[8, 5, 4] = 4
    return seg


def affine_for(orientation: str, shape=SHAPE, zooms=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Affine of a file stored in ``orientation`` ("RAS" or "LPS") with the same world grid."""
    zx, zy, zz = zooms
    if orientation == "RAS":
        return np.diag([zx, zy, zz, 1.0])
    if orientation == "LPS":
        aff = np.diag([-zx, -zy, zz, 1.0])
        aff[0, 3] = (shape[0] - 1) * zx
        aff[1, 3] = (shape[1] - 1) * zy
        return aff
    raise ValueError(orientation)


def to_file_order(data_ras: np.ndarray, orientation: str) -> np.ndarray:
    """RAS-ordered array (spatial axes first) -> the voxel order of an ``orientation`` file."""
    return data_ras if orientation == "RAS" else data_ras[::-1, ::-1, ...]


def write_nifti(
    path: Path,
    data_ras: np.ndarray,
    orientation: str = "LPS",
    zooms=(1.0, 1.0, 1.0),
    qform_code: int = 1,
    sform_code: int = 1,
) -> Path:
    """Write a RAS-ordered array as a NIfTI stored in ``orientation``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = affine_for(orientation, data_ras.shape[:3], zooms)
    img = nib.Nifti1Image(np.ascontiguousarray(to_file_order(data_ras, orientation)), affine)
    img.set_qform(affine, code=qform_code)
    img.set_sform(affine, code=sform_code)
    nib.save(img, str(path))
    return path


def modality_volume(modality: str) -> np.ndarray:
    """The volume a test writes for ``modality`` (base scaled by its index + 1)."""
    return (base_volume().astype(np.int32) * (MODALITIES.index(modality) + 1)).astype(np.int16)


def write_case_2021(folder: Path, case_id="BraTS2021_00000", orientation="LPS", seg=True) -> Path:
    """BraTS 2018-2021 naming: ``<case>_t1/_t1ce/_t2/_flair/_seg.nii.gz``."""
    folder = Path(folder) / case_id
    tokens = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
    for m, tok in tokens.items():
        write_nifti(folder / f"{case_id}_{tok}.nii.gz", modality_volume(m), orientation)
    if seg:
        write_nifti(folder / f"{case_id}_seg.nii.gz", seg_volume(), orientation)
    return folder


def write_case_2023(
    folder: Path, case_id="BraTS-GLI-00000-000", orientation="LPS", seg=True
) -> Path:
    """BraTS 2023 naming: ``<case>-t1n/-t1c/-t2w/-t2f/-seg.nii.gz`` (labels 1, 2, 3)."""
    folder = Path(folder) / case_id
    tokens = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}
    for m, tok in tokens.items():
        write_nifti(folder / f"{case_id}-{tok}.nii.gz", modality_volume(m), orientation)
    if seg:
        labels = convert_labels(seg_volume(), "brats2021", "brats2023")
        write_nifti(folder / f"{case_id}-seg.nii.gz", labels, orientation)
    return folder


def write_nnunet(
    root: Path,
    case_ids=("BraTS2021_00000",),
    channels: tuple[str, ...] = ("t1", "t1c", "t2", "flair"),
    dataset_json: str | None = "v2",
    orientation="RAS",
    labels=True,
) -> Path:
    """nnU-Net raw layout: ``imagesTr/<case>_000i.nii.gz``, ``labelsTr/<case>.nii.gz``.

    ``channels`` is the modality of each channel index; ``dataset_json`` is ``"v1"``
    (``"modality"``), ``"v2"`` (``"channel_names"``) or ``None`` (no file: default order).
    Returns the ``imagesTr`` folder.
    """
    root = Path(root)
    names = {"t1": "T1", "t1c": "T1ce", "t2": "T2", "flair": "FLAIR"}
    for case_id in case_ids:
        for i, m in enumerate(channels):
            write_nifti(
                root / "imagesTr" / f"{case_id}_{i:04d}.nii.gz", modality_volume(m), orientation
            )
        if labels:
            lab = convert_labels(seg_volume(), "brats2021", "nnunet")
            write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", lab, orientation)
    if dataset_json is not None:
        key = "channel_names" if dataset_json == "v2" else "modality"
        spec = {key: {str(i): names[m] for i, m in enumerate(channels)}, "file_ending": ".nii.gz"}
        (root / "dataset.json").write_text(json.dumps(spec))
    return root / "imagesTr"


def write_msd(root: Path, case_id="BRATS_001", orientation="RAS", dataset_json=True) -> Path:
    """MSD Task01 layout: ``imagesTr/<case>.nii.gz`` 4D (FLAIR, T1w, T1gd, T2w), ``labelsTr``.

    Returns the 4D image file.
    """
    root = Path(root)
    order = ("flair", "t1", "t1c", "t2")
    data = np.stack([modality_volume(m) for m in order], axis=-1)
    path = write_nifti(root / "imagesTr" / f"{case_id}.nii.gz", data, orientation)
    lab = convert_labels(seg_volume(), "brats2021", "msd")
    write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", lab, orientation)
    if dataset_json:
        spec = {"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}
        (root / "dataset.json").write_text(json.dumps(spec))
    return path


def write_case_loose(folder: Path, case_id="TCGA-XX-0001", orientation="LPS", extra=True) -> Path:
    """Real-world names (``_fla_bet``, ``_T1_bet``, ``_t1gd``, ``_T2w``), segmentations/ folder."""
    folder = Path(folder) / case_id
    names = {"flair": "fla_bet", "t1": "T1_bet", "t1c": "t1gd", "t2": "T2w"}
    for m, tok in names.items():
        write_nifti(folder / f"{case_id}_{tok}.nii.gz", modality_volume(m), orientation)
    if extra:
        write_nifti(folder / "segmentations" / "algo-a.nii.gz", seg_volume(), orientation)
        fused = np.where(seg_volume() == 4, 1, seg_volume()).astype(np.uint8)
        write_nifti(folder / "segmentations" / "fusion_simple.nii.gz", fused, orientation)
    return folder
