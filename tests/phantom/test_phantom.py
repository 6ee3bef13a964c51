"""Synthetic BraTS phantoms: reproducibility, geometry, nested labels, contrasts, sites, files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_brats_kd import orientation as orient
from napari_brats_kd.errors import Cancelled
from napari_brats_kd.labels import MODALITIES, LabelConvention
from napari_brats_kd.phantom import (
    ASSET_PATH,
    SITES,
    PhantomData,
    SiteParams,
    build_asset,
    make_phantom,
    render_phantom,
    write_phantom_dataset,
)

NCR, ED, ET = (PhantomData.CLASS_CODES[c] for c in ("NCR", "ED", "ET"))


@pytest.fixture(scope="module")
def small() -> dict[str, PhantomData]:
    """The same seed at 3 mm for each site, with tissue fractions."""
    return {name: render_phantom(11, name, spacing=3, tissue=True) for name in SITES}


def _means(data: PhantomData, modality: str) -> dict[str, float]:
    """Mean intensity of nearly pure CSF, GM and WM voxels away from the tumour."""
    img = data.images[modality].astype(float)
    healthy = ndimage.binary_dilation(data.classes > 0, iterations=2) == 0
    out = {}
    for tissue, thr in (("csf", 0.7), ("gm", 0.7), ("wm", 0.85)):
        sel = (data.tissue[tissue] > thr) & healthy & data.tissue["brain"]
        assert sel.sum() > 20, f"too few pure {tissue} voxels to compare"
        out[tissue] = float(img[sel].mean())
    return out


# ---------------------------------------------------------------------------------- reproducibility
def test_same_seed_gives_identical_case() -> None:
    a = make_phantom(5, spacing=4)
    b = make_phantom(5, spacing=4)
    for m in MODALITIES:
        np.testing.assert_array_equal(a.images[m].data, b.images[m].data)
    np.testing.assert_array_equal(a.seg.data, b.seg.data)
    assert a.extra == b.extra


def test_different_seeds_differ() -> None:
    a = make_phantom(1, spacing=4)
    b = make_phantom(2, spacing=4)
    assert not np.array_equal(a.seg.data, b.seg.data)
    assert not np.array_equal(a.images["t1"].data, b.images["t1"].data)
    assert a.extra["lesions"] != b.extra["lesions"]


def test_anatomy_does_not_depend_on_spacing() -> None:
    coarse = make_phantom(9, spacing=4)
    finer = make_phantom(9, spacing=2)
    for les_c, les_f in zip(coarse.extra["lesions"], finer.extra["lesions"], strict=True):
        np.testing.assert_allclose(les_c["centre_world"], les_f["centre_world"], atol=1e-6)
    # Same tumour volume within the resampling error of a 4 mm grid.
    vol = [c.seg.voxel_volume_mm3 * np.count_nonzero(c.seg.data) for c in (coarse, finer)]
    assert vol[0] == pytest.approx(vol[1], rel=0.25)


# ----------------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize(("spacing", "shape"), [(4, (60, 60, 39)), (3, (80, 80, 52))])
def test_shape_affine_dtypes_and_metadata(spacing: float, shape: tuple[int, int, int]) -> None:
    case = make_phantom(7, "B", spacing=spacing, convention="brats2023")
    expected = orient.BRATS_AFFINE.copy()
    expected[:3, :3] *= spacing
    for vol in [*case.images.values(), case.seg]:
        assert vol.file_shape == shape
        np.testing.assert_array_equal(vol.affine, expected)
        assert vol.file_axcodes == ("L", "P", "S")
        assert vol.header is not None and int(vol.header["sform_code"]) == 1
    assert case.modalities == MODALITIES
    assert all(v.data.dtype == np.int16 for v in case.images.values())
    assert case.seg.data.dtype == np.uint8
    assert case.case_id == "phantom-B-0007"
    assert case.naming == "phantom"
    assert case.convention is LabelConvention.BRATS2023
    assert case.convention_reason == "synthetic phantom"
    assert case.extra["seed"] == 7 and case.extra["site"] == "B"
    for les in case.extra["lesions"]:
        # The voxel centre maps through the affine onto the world centre.
        world = expected @ np.append(les["centre_voxel"], 1.0)
        np.testing.assert_allclose(world[:3], les["centre_world"], atol=1e-2)
        assert les["side"] in ("left", "right")


def test_full_size_case_matches_brats_grid() -> None:
    case = make_phantom(0)
    assert case.reference.file_shape == orient.BRATS_SHAPE
    np.testing.assert_array_equal(case.reference.affine, orient.BRATS_AFFINE)
    brain = case.images["t1"].file_data() > 0
    ijk = np.argwhere(brain)
    extent = ijk.max(0) - ijk.min(0) + 1
    # A real BraTS brain (BraTS-GLI-00001-000) spans about 140 x 190 x 137 voxels.
    assert np.all(np.abs(extent - np.array([140, 190, 137])) < 25), extent
    assert 1.2e6 < brain.sum() < 2.1e6


def test_background_exactly_zero_and_labels_inside_brain(small: dict) -> None:
    data = small["A"]
    brain = data.tissue["brain"]
    for m in MODALITIES:
        img = data.images[m]
        assert np.all(img[~brain] == 0)
        assert np.all(img[brain] > 0)
    assert np.all(data.classes[~brain] == 0)


# ------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("seed", [0, 3, 4])
def test_labels_are_nested_like_a_glioma(seed: int) -> None:
    data = render_phantom(seed, spacing=2)
    cls = data.classes
    assert set(np.unique(cls)) == {0, NCR, ED, ET}
    tc = (cls == NCR) | (cls == ET)
    wt = cls > 0
    brain = data.tissue["brain"]
    # Edema wraps the core: the core's outer neighbours are edema (or outside the brain).
    shell = ndimage.binary_dilation(tc) & ~tc
    assert np.mean(wt[shell] | ~brain[shell]) > 0.95
    # The enhancing rim wraps the necrosis: necrosis rarely touches edema directly.
    ncr_shell = ndimage.binary_dilation(cls == NCR) & (cls != NCR)
    assert np.mean(cls[ncr_shell] == ET) > 0.8
    # Every lesion centre lies in the tumour core.
    for les in data.lesions:
        assert tc[tuple(np.round(les["centre_voxel"]).astype(int))]


@pytest.mark.parametrize("side", ["left", "right"])
def test_lesion_side_forces_hemisphere(side: str) -> None:
    for seed in (0, 1, 2):
        data = render_phantom(seed, spacing=4, lesion_side=side, n_lesions=2)
        # Midline = centre of the (symmetric) brain's L-R extent, in world x (RAS+: left is -x).
        i = np.argwhere(data.tissue["brain"])[:, 0]
        mid_x = (data.affine @ [(i.min() + i.max()) / 2, 0, 0, 1])[0]
        assert abs(mid_x - data.midline_x_world) < 8
        for les in data.lesions:
            assert les["side"] == side
            x = les["centre_world"][0]
            assert (x < mid_x) if side == "left" else (x > mid_x)
        ijk = np.argwhere(data.classes > 0)
        wt_x = (data.affine @ np.c_[ijk, np.ones(len(ijk))].T)[0]
        frac_left = np.mean(wt_x < mid_x)
        assert frac_left > 0.85 if side == "left" else frac_left < 0.15


def test_number_of_lesions_can_be_forced() -> None:
    assert len(make_phantom(2, spacing=4, n_lesions=1).extra["lesions"]) == 1
    assert len(make_phantom(2, spacing=4, n_lesions=3).extra["lesions"]) == 3


# ---------------------------------------------------------------------------------------- contrasts
@pytest.mark.parametrize("site", list(SITES))
def test_tissue_contrasts_as_in_real_scans(small: dict, site: str) -> None:
    data = small[site]
    t1, t2, flair = (_means(data, m) for m in ("t1", "t2", "flair"))
    assert t1["wm"] > t1["gm"] > t1["csf"]
    assert t2["csf"] > t2["gm"] > t2["wm"]
    assert flair["csf"] < min(flair["gm"], flair["wm"])
    assert flair["gm"] > flair["wm"]


@pytest.mark.parametrize("site", list(SITES))
def test_tumour_contrasts(small: dict, site: str) -> None:
    data = small[site]
    cls = data.classes
    wm = (data.tissue["wm"] > 0.85) & (cls == 0)
    flair, t1c, t1 = (data.images[m].astype(float) for m in ("flair", "t1c", "t1"))
    assert flair[cls == ED].mean() > 1.2 * flair[wm].mean()
    assert t1c[cls == ET].mean() > 1.5 * t1c[cls == NCR].mean()
    assert t1c[cls == ET].mean() > t1c[wm].mean()
    assert t1[(cls == NCR) | (cls == ET)].mean() < t1[wm].mean()


def test_site_changes_look_not_anatomy(small: dict) -> None:
    a, b = small["A"], small["B"]
    np.testing.assert_array_equal(a.classes, b.classes)
    np.testing.assert_array_equal(a.tissue["brain"], b.tissue["brain"])
    assert a.lesions == b.lesions

    def noise_and_contrast(d: PhantomData) -> tuple[float, float]:
        img = d.images["t1"].astype(float)
        wm = (d.tissue["wm"] > 0.9) & (d.classes == 0)
        # Neighbour differences inside pure WM measure noise relative to the WM level.
        pair = wm & np.roll(wm, 1, axis=0)
        diff = (img - np.roll(img, 1, axis=0))[pair]
        means = _means(d, "t1")
        return float(diff.std() / means["wm"]), means["gm"] / means["wm"]

    noise_a, ratio_a = noise_and_contrast(a)
    noise_b, ratio_b = noise_and_contrast(b)
    assert noise_b > 1.3 * noise_a
    assert ratio_b > ratio_a + 0.05  # GM closer to WM: flatter contrast


def test_custom_site_params() -> None:
    quiet = SiteParams(name="Q", noise=0.0, bias=0.0)
    case = make_phantom(3, quiet, spacing=4)
    assert case.case_id == "phantom-Q-0003"
    with pytest.raises(ValueError, match="contrast"):
        SiteParams(contrast=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"site": "Z"}, "Unknown phantom site"),
        ({"spacing": 0}, "spacing"),
        ({"spacing": -2}, "spacing"),
        ({"n_lesions": 4}, "n_lesions"),
        ({"lesion_side": "up"}, "lesion_side"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_phantom(**{"spacing": 4, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "at least 1"),
        ({"naming": "2019"}, "naming"),
        ({"site": "Q"}, "site"),
        ({"spacing": 0.0}, "spacing"),
    ],
)
def test_invalid_dataset_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_phantom_dataset(tmp_path, **{"spacing": 4, **kwargs})
    assert not any(tmp_path.iterdir())


def test_should_stop_cancels_between_cases(tmp_path: Path) -> None:
    answers = iter([False, True])
    with pytest.raises(Cancelled, match="1 of 3"):
        write_phantom_dataset(tmp_path, n=3, spacing=4, should_stop=lambda: next(answers))
    assert [p.name for p in tmp_path.iterdir()] == ["BraTS2021_P00000"]


# -------------------------------------------------------------------------------------------- asset
def test_asset_is_small_and_licensed() -> None:
    assert ASSET_PATH.stat().st_size < 1_500_000
    notice = (ASSET_PATH.parent / "MNI_ICBM152_LICENSE.txt").read_text()
    assert "McConnell Brain Imaging Centre" in notice and "Permission to use" in notice


@pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="needs nilearn's template")
def test_asset_rebuild_is_reproducible(tmp_path: Path) -> None:
    out = build_asset(out_path=tmp_path / "asset.npz")
    with np.load(out) as new, np.load(ASSET_PATH) as shipped:
        assert sorted(new.files) == sorted(shipped.files)
        for key in shipped.files:
            np.testing.assert_array_equal(new[key], shipped[key])


@pytest.mark.realdata
def test_phantom_brain_sits_where_real_brains_do(real_data_dir: Path) -> None:
    real = nib.load(real_data_dir / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz")
    np.testing.assert_array_equal(real.affine, orient.BRATS_AFFINE)
    phantom = render_phantom(0, spacing=2)
    real_ijk = np.argwhere(np.asanyarray(real.dataobj) > 0)
    ph_ijk = np.argwhere(phantom.tissue["brain"]) * 2
    assert np.all(np.abs(real_ijk.mean(0) - ph_ijk.mean(0)) < 12)
    assert np.all(np.abs(np.ptp(real_ijk, 0) - np.ptp(ph_ijk, 0)) < 25)
