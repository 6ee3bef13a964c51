"""training/data.py: the pool sampler, patch sampling, the memory and disk caches."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


def test_unlabelled_cases_are_drawn_in_the_ratio_asked_for() -> None:
    from napari_brats_kd.training.data import PoolSampler

    def unlabelled_share(weight: float, n: int = 6000) -> float:
        # 28 labelled cases (indices 0-27) beside 14 unlabelled ones (28-41).
        return sum(i >= 28 for i in PoolSampler(28, 14, weight, n, seed=3)) / n

    # Not in proportion to the folders' sizes (which would be 1/3 unlabelled).
    assert unlabelled_share(1.0) == pytest.approx(0.5, abs=0.03)
    assert unlabelled_share(0.5) == pytest.approx(1 / 3, abs=0.03)
    assert unlabelled_share(0.0) == 0.0
    # Every case of each pool is drawn.
    assert set(PoolSampler(28, 14, 1.0, 2000, seed=3)) == set(range(42))
    # Two DDP ranks draw disjoint halves of what one process would draw for both; a new epoch
    # draws anew, the same epoch again draws the same.
    one = PoolSampler(28, 14, 1.0, 20, seed=3)
    ranks = [PoolSampler(28, 14, 1.0, 10, rank=r, world_size=2, seed=3) for r in (0, 1)]
    assert list(ranks[0]) == list(one)[0::2] and list(ranks[1]) == list(one)[1::2]
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first
    one.set_epoch(0)
    assert list(one) == first


# --------------------------------------------------------------------------- patch sampling
@pytest.mark.parametrize("pos_fraction", [0.0, 0.25, 0.5, 1.0])
def test_patch_sampling_is_balanced_by_pos_fraction(pos_fraction: float) -> None:
    """With ``pos_fraction`` p, about a fraction p of the training patches is centred on tumour.

    A user who sets ``pos_fraction: 1`` sees tumour in every patch; with 0 on a case whose tumour
    is small, almost no patch shows any tumour; in between, the share of tumour-centred patches
    follows p. The synthetic case's image holds each voxel's flat index, so the centre voxel of a
    patch says where it was cut from.
    """
    from monai.transforms import Compose

    from napari_brats_kd.training.data import patch_transforms

    shape = (32, 32, 32)
    tumour = np.zeros(shape, bool)
    tumour[14:18, 14:18, 14:18] = True  # 64 of 32768 voxels
    case = {
        "image": np.arange(tumour.size, dtype=np.float32).reshape(1, *shape),
        "label": np.repeat(tumour[None], 3, axis=0).astype(np.uint8),
        "labelled": True,
        "case_id": "synthetic",
        "fg_indices": np.flatnonzero(tumour),
        "bg_indices": np.flatnonzero(~tumour),
    }
    n = 400
    sample = Compose(patch_transforms([8, 8, 8], n, pos_fraction, []))
    sample.set_random_state(seed=0)
    patches = sample(case)
    assert len(patches) == n
    centres = [int(np.asarray(p["image"])[0, 4, 4, 4]) for p in patches]
    centred_in_tumour = np.mean(tumour.ravel()[centres])
    with_tumour = np.mean([bool(np.asarray(p["label"]).any()) for p in patches])
    assert all(tuple(np.asarray(p["image"]).shape) == (1, 8, 8, 8) for p in patches)
    if pos_fraction == 1.0:
        assert centred_in_tumour == 1.0 and with_tumour == 1.0
    elif pos_fraction == 0.0:
        assert centred_in_tumour == 0.0
        assert with_tumour < 0.1  # a few background patches graze the 4-voxel tumour
    else:
        # Binomial: standard deviation <= 0.025 for 400 draws; 4 of them either side.
        assert abs(centred_in_tumour - pos_fraction) < 0.1


def test_memory_cache_estimate_is_about_what_the_cache_keeps(data_dir) -> None:
    from napari_brats_kd.training.data import LoadCased, discover_cases, memory_cache_bytes

    entries = discover_cases(data_dir / "siteA")
    loader = LoadCased(("t1c", "t1", "t2", "flair"))
    kept = sum(
        sum(v.nbytes for v in loader({"case_id": e.case_id, "path": str(e.path)}).values()
            if hasattr(v, "nbytes"))
        for e in entries
    )  # fmt: skip
    estimate = memory_cache_bytes(len(entries), entries[0], 4, 3)
    assert 0.7 * kept < estimate < 1.3 * kept
    # Cached teacher outputs (float16 per region) add a quarter more or so.
    with_targets = memory_cache_bytes(len(entries), entries[0], 4, 3, teacher_targets=True)
    assert with_targets > 1.2 * estimate


def test_disk_cache_reloads_a_case_whose_images_changed(data_dir, tmp_path) -> None:
    import nibabel as nib
    import numpy as np

    from napari_brats_kd.naming import case_files
    from napari_brats_kd.training.data import LoadCased, build_dataset, discover_cases

    case = discover_cases(data_dir / "siteA")[0]
    shutil.copytree(case.path, tmp_path / "data" / case.path.name)
    (entry,) = discover_cases(tmp_path / "data")
    loader = LoadCased(("t1", "t1c", "t2", "flair"))

    def loaded() -> np.ndarray:
        return np.asarray(
            build_dataset([entry], loader, None, "disk", tmp_path / "cache")[0]["image"]
        )

    before = loaded()
    assert np.array_equal(loaded(), before)  # read back from the disk cache
    flair = case_files(entry.path).images["flair"]
    img = nib.load(flair)
    nib.save(nib.Nifti1Image(np.flip(np.asanyarray(img.dataobj), 0), img.affine, img.header), flair)
    after = loaded()
    assert not np.array_equal(after[3], before[3]) and np.array_equal(after[:3], before[:3])
