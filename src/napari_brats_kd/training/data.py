"""Training data: case discovery, the train/val/test split, and MONAI datasets of patches.

Every case is loaded with :func:`napari_brats_kd.io.load_case`, put in model orientation
(:meth:`~napari_brats_kd.volume.Case.model_input`), normalised with
:func:`napari_brats_kd.models.normalize_input` (the exact function inference uses) and its labels
turned into region channels (TC, WT, ET) with :func:`napari_brats_kd.labels.labels_to_regions`.
These deterministic steps are cached (in memory or on disk); patch sampling and augmentation run
afterwards, in the DataLoader workers.

Patch sampling is balanced between tumour and background: ``RandCropByPosNegLabeld`` centres a
patch on a tumour (WT) voxel with probability ``pos_fraction`` and otherwise on a brain voxel
outside the tumour. Unlabelled cases (another site, learnt from the teacher only) centre their
patches on brain voxels.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import MapTransform, Transform

from .. import errors
from ..errors import BratsKDError, ResourceError, TrainingError
from ..labels import REGIONS, labels_to_regions
from .splits import (
    CaseEntry,
    case_stamp,
    discover_cases,
    make_split,
    read_split,
    write_split,
)

#: Keys of a loaded case dictionary.
IMAGE, LABEL, LABELLED, CASE_ID = "image", "label", "labelled", "case_id"
#: Cached teacher logits (float ``(R, X, Y, Z)``), present when distilling from cached targets.
TEACHER = "teacher"
#: Item key of :func:`case_stamp` (set by :func:`build_dataset`, passed on by :class:`LoadCased`).
STAMP = "stamp"
FG, BG = "fg_indices", "bg_indices"


class LoadCased(Transform):
    """Load a case for training: ``{"path", "case_id"}`` -> arrays (deterministic, so cached).

    Output keys: ``image`` (float32 ``(C, X, Y, Z)``, normalised, model orientation, channels in
    ``modalities`` order), ``label`` (uint8 ``(R, X, Y, Z)`` region masks; zeros if unlabelled),
    ``labelled`` (bool), ``convention``, and the patch-centre candidates ``fg_indices`` /
    ``bg_indices`` (flat indices: tumour and non-tumour brain; brain and brain when unlabelled),
    beside the input keys (``case_id``, ``path``, and ``stamp`` when given).

    Parameters
    ----------
    modalities
        Channels to stack.
    regions
        Region channels of ``label``.
    normalization
        Method of :func:`~napari_brats_kd.models.normalize_input`.
    require_label
        Raise :class:`TrainingError` for a case without segmentation (supervised data).
    use_label
        Whether to read labels at all (``False`` for the unlabelled pool).
    expected_convention
        Label convention every case of the dataset must share (``None``: not checked).
    min_size
        Pad volumes smaller than this (one patch) with background, centred, so that any patch
        fits; padding is background in image and labels, so it changes no metric.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        regions: Sequence[str] = REGIONS,
        normalization: str = "zscore_nonzero",
        require_label: bool = True,
        use_label: bool = True,
        expected_convention: str | None = None,
        min_size: Sequence[int] | None = None,
    ) -> None:
        self.min_size = tuple(min_size) if min_size is not None else None
        self.modalities = tuple(modalities)
        self.regions = tuple(regions)
        self.normalization = normalization
        self.require_label = require_label
        self.use_label = use_label
        self.expected_convention = expected_convention

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        from ..io import load_case
        from ..models import normalize_input

        case_id = item[CASE_ID]
        try:
            case = load_case(item["path"], extra_segmentations=False)
            image = case.model_input(self.modalities)
        except BratsKDError as exc:
            raise TrainingError(f"Case {case_id!r} cannot be used for training: {exc}") from exc
        image = normalize_input(image, self.normalization)
        labelled = self.use_label and case.seg is not None
        if self.use_label and self.require_label and case.seg is None:
            raise TrainingError(
                f"Case {case_id!r} ({item['path']}) has no segmentation, but supervised training "
                "needs labels for every case (pass unlabelled cases as --unlabeled to distil)."
            )
        convention = case.convention.value if labelled else None
        if labelled and self.expected_convention and convention != self.expected_convention:
            raise TrainingError(
                f"Case {case_id!r} uses label convention {convention}, but the dataset's first "
                f"case uses {self.expected_convention}: keep one convention per data folder "
                "(convert with napari_brats_kd.labels.convert_labels)."
            )
        if labelled:
            seg = case.to_model_order(case.seg.data)
            label = labels_to_regions(seg, case.convention, self.regions).astype(np.uint8)
        else:
            label = np.zeros((len(self.regions), *image.shape[1:]), np.uint8)
        if self.min_size is not None:
            image, label = _pad_to(image, self.min_size), _pad_to(label, self.min_size)
        brain = np.any(image != 0, axis=0)
        if labelled:
            tumour = label.any(axis=0)
            fg = np.flatnonzero(tumour)
            bg = np.flatnonzero(brain & ~tumour)
        else:
            fg = bg = np.flatnonzero(brain)
        if fg.size == 0 and bg.size == 0:  # an empty image: sample anywhere
            fg = bg = np.arange(brain.size)
        return {
            **item,  # its path and stamp, for transforms that look up files of the case
            IMAGE: image,
            LABEL: label,
            LABELLED: bool(labelled),
            CASE_ID: case_id,
            "convention": convention or "",
            FG: fg,
            BG: bg,
        }


def _pad_to(array: np.ndarray, size: Sequence[int]) -> np.ndarray:
    pads = [max(0, int(p) - s) for s, p in zip(array.shape[1:], size, strict=True)]
    if not any(pads):
        return array
    return np.pad(array, [(0, 0)] + [(p // 2, p - p // 2) for p in pads])


def first_case_info(entry: CaseEntry) -> dict[str, Any]:
    """Modalities, convention and label presence of one case (checked before training)."""
    from ..io import load_case

    try:
        case = load_case(entry.path, extra_segmentations=False)
    except BratsKDError as exc:
        raise TrainingError(f"Case {entry.case_id!r} cannot be read: {exc}") from exc
    return {
        "modalities": case.modalities,
        "convention": case.convention.value if case.seg is not None else None,
        "labelled": case.seg is not None,
    }


def patch_transforms(
    patch_size: Sequence[int],
    samples_per_case: int,
    pos_fraction: float,
    augment: list,
    teacher_targets: bool = False,
) -> list:
    """Random transforms turning a loaded case into ``samples_per_case`` augmented patches.

    Each patch is copied out of the case (:class:`CopyPatchd`) right after the crop, so the
    memory cache can hand out its cases without copying them whole.

    ``augment`` comes from :func:`~.augment.build_augmentation`; with ``teacher_targets`` the
    cached teacher logits (key ``teacher``) are cropped with the image and made float32 before it
    (build ``augment`` with ``target_keys=("teacher",)`` so spatial transforms move them too).
    """
    from monai import transforms as mt

    keys = [IMAGE, LABEL] + ([TEACHER] if teacher_targets else [])
    pos = float(pos_fraction)
    # Stored as float16 (half the cache); resampling and the loss want float32.
    cast = [mt.CastToTyped(TEACHER, dtype=np.float32)] if teacher_targets else []
    return [
        mt.RandCropByPosNegLabeld(
            keys,
            label_key=LABEL,
            spatial_size=tuple(patch_size),
            pos=pos,
            neg=1.0 - pos,
            num_samples=samples_per_case,
            fg_indices_key=FG,
            bg_indices_key=BG,
        ),
        CopyPatchd(keys),
        mt.DeleteItemsd([FG, BG]),
        *cast,
        *augment,
        mt.EnsureTyped(keys, track_meta=False),
    ]


#: Prefix of a user-facing error carried out of a DataLoader worker (see :class:`_KeepUserErrors`).
_WORKER_ERROR = "napari-brats-kd error from a DataLoader worker: "


def user_error_in(exc: BaseException) -> BratsKDError | None:
    """The user-facing error inside MONAI's "applying transform" wrapping, if there is one.

    Also finds one raised in a DataLoader worker process, which reaches the main process only as
    text (see :class:`_KeepUserErrors`), and rebuilds it with its type and message.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BratsKDError):
            return current
        carried = _carried_error(current)
        if carried is not None:
            return carried
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _carried_error(exc: BaseException) -> BratsKDError | None:
    found = re.search(re.escape(_WORKER_ERROR) + r"(\{.*\})", str(exc))
    if found is None:
        return None
    try:
        payload = json.loads(found.group(1))
        cls = getattr(errors, str(payload["type"]), TrainingError)
        message = str(payload["message"])
    except (ValueError, KeyError, TypeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, BratsKDError)):
        cls = TrainingError
    return cls(message)


class _KeepUserErrors:
    """A dataset whose items' user-facing errors survive DataLoader worker processes.

    PyTorch re-raises a worker's exception in the main process from its type and formatted
    traceback only. MONAI wraps a transform's error in a ``RuntimeError``, so the
    :class:`~napari_brats_kd.errors.TrainingError` naming the bad case would arrive as a bare
    "Caught RuntimeError in DataLoader worker process 0". Here the error's type and message
    travel as one JSON line that :func:`user_error_in` reads back.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as exc:
            error = user_error_in(exc)
            if error is None:
                raise
            payload = json.dumps({"type": type(error).__name__, "message": str(error)})
            raise RuntimeError(_WORKER_ERROR + payload) from exc

    def __getattr__(self, name: str) -> Any:
        # The wrapped dataset's attributes (``transform``, ``data``...); "dataset" itself is
        # looked up here only while unpickling in a spawned worker, before __init__ state exists.
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class PoolSampler:
    """Indices of a labelled + unlabelled :class:`~torch.utils.data.ConcatDataset`, drawn so
    that the unlabelled pool gives ``unlabeled_weight`` patches per labelled one.

    Cases are drawn with replacement, uniformly within each pool, whatever the pools' sizes:
    14 unlabelled scans beside 28 labelled cases give, at ``unlabeled_weight`` 1, as many
    unlabelled draws as labelled ones. Under DDP every rank draws the same ``world_size``-times
    longer sequence from the run's seed and the epoch (:meth:`set_epoch`) and keeps every
    ``world_size``-th index from its rank on, so ranks see different cases and a run is the same
    however it is resumed.

    Parameters
    ----------
    n_labelled, n_unlabelled
        Cases in each pool (labelled first in the dataset).
    unlabeled_weight
        Unlabelled draws per labelled draw (0: labelled cases only).
    num_samples
        Indices per epoch on this rank.
    rank, world_size
        This process and the number of processes.
    seed
        The run's seed.
    """

    def __init__(
        self,
        n_labelled: int,
        n_unlabelled: int,
        unlabeled_weight: float,
        num_samples: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        import torch

        weights = [1.0 / n_labelled] * n_labelled
        weights += [unlabeled_weight / n_unlabelled] * n_unlabelled if n_unlabelled else []
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.num_samples = int(num_samples)
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the indices of ``epoch`` (a new sequence per epoch, the same on every rank)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        import torch

        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = self.num_samples * self.world_size
        drawn = torch.multinomial(self.weights, n, replacement=True, generator=g)
        return iter(drawn[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.num_samples


def build_dataset(
    entries: Sequence[CaseEntry],
    loader: LoadCased | Sequence[Transform],
    random_transforms: Sequence | None,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    num_workers: int = 0,
):
    """A MONAI dataset of ``entries``: cached loading, then ``random_transforms`` on every fetch.

    Parameters
    ----------
    entries
        Cases to include.
    loader
        The :class:`LoadCased` transform, or it followed by more deterministic transforms (the
        cached part).
    random_transforms
        Transforms applied on each fetch (patch sampling, augmentation); ``None`` for whole
        volumes (validation).
    cache
        ``"memory"`` (CacheDataset), ``"disk"`` (PersistentDataset in ``cache_dir``) or ``"none"``.
    cache_dir
        Folder of the disk cache.
    num_workers
        Threads used to fill the memory cache.
    """
    from monai import data as md
    from monai import transforms as mt

    # The stamp is part of the disk cache's key: a case whose images change is loaded anew.
    items = [{CASE_ID: e.case_id, "path": str(e.path), STAMP: case_stamp(e.path)} for e in entries]
    loaders = [loader] if isinstance(loader, Transform) else list(loader)
    transforms = mt.Compose([*loaders, *(random_transforms or [])])
    if cache == "memory":
        try:
            dataset = md.CacheDataset(
                items,
                transforms,
                cache_rate=1.0,
                num_workers=max(1, num_workers),
                progress=False,
                copy_cache=not _crops_first(transforms, len(loaders)),
            )
        except (RuntimeError, MemoryError) as exc:
            error = user_error_in(exc)
            if error is not None:
                raise error from exc
            if is_out_of_memory(exc):
                raise ResourceError(
                    f"Out of memory while loading {len(items)} case(s) into memory (cache: "
                    f"memory): {CACHE_REMEDY}."
                ) from exc
            raise
    elif cache == "disk":
        if cache_dir is None:
            raise TrainingError("cache: disk needs cache_dir (a folder for the cached cases).")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        # The deterministic transforms' settings (modalities, normalisation, cached teacher
        # outputs...) are part of each file's key: a changed setting never reads a stale case.
        dataset = md.PersistentDataset(
            items, transforms, cache_dir=str(cache_dir), hash_transform=md.utils.pickle_hashing
        )
    else:
        dataset = md.Dataset(items, transforms)
    return _KeepUserErrors(dataset)


def _crops_first(transforms: Any, n_cached: int) -> bool:
    """Whether the memory cache's ``transforms`` (a ``Compose``) hand the cached case, after the
    first ``n_cached`` transforms, to :func:`patch_transforms`' crop and then its patch copy.

    MONAI's CacheDataset deep-copies the whole cached case (image, labels, teacher outputs,
    sampling indices: about 300 MB at BraTS size) at every draw, so that random transforms
    cannot change the cache, although training keeps only a patch of 1-2 % of it: about a tenth
    of a CPU training step. After this crop (new dictionaries, arrays that view the cache) and
    :class:`CopyPatchd` (each patch in its own memory), nothing can write into the cache, so
    the case need not be copied.
    """
    from monai.transforms import RandCropByPosNegLabeld, RandomizableTrait

    # Where CacheDataset starts applying transforms to the cached case (its own rule).
    first = transforms.get_index_of_first(
        lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)
    )
    steps = transforms.transforms
    return (
        first == n_cached
        and len(steps) >= n_cached + 2
        and isinstance(steps[n_cached], RandCropByPosNegLabeld)
        and isinstance(steps[n_cached + 1], CopyPatchd)
    )


class CopyPatchd(MapTransform):
    """Give each cropped patch its own memory (the crop's arrays view the cached case).

    Later transforms may then work in place without changing the cache, which therefore need
    not be copied whole at every draw (see :func:`build_dataset`).
    """

    def __call__(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        import torch

        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            d[key] = value.clone() if isinstance(value, torch.Tensor) else np.array(value)
        return d


#: Share of a BraTS-sized field of view inside the brain (0.15-0.25 in phantoms and real scans):
#: the cache keeps an int64 index per brain voxel for patch sampling.
_BRAIN_FRACTION = 0.25
#: Share of the available memory the memory cache may take; the rest is for the network, its
#: batches, DataLoader workers and (in napari) the viewer.
MEMORY_CACHE_SHARE = 0.8
#: What to do when the memory cache does not fit, in the key=value form that works both with
#: ``--set`` and in the training widget's Extra settings.
CACHE_REMEDY = (
    "set cache=disk (each case stored once in cache_dir, about as large as in memory, and read "
    "from there at every step) or cache=none (the NIfTI files read at every step); with --set "
    "on the command line, in Extra settings in the training widget"
)


def memory_cache_bytes(
    n_cases: int,
    example: CaseEntry,
    n_channels: int,
    n_regions: int,
    teacher_targets: bool = False,
    min_size: Sequence[int] | None = None,
) -> int:
    """About how many bytes ``cache: memory`` keeps for ``n_cases`` cases the size of ``example``.

    Per voxel: the normalised image (float32 per channel), the region labels (uint8 each), cached
    teacher outputs (float16 each) and the patch sampler's brain indices.

    Raises
    ------
    OSError, nibabel.filebasedimages.ImageFileError
        If the example's image header cannot be read.
    """
    import itertools

    import nibabel as nib

    from ..naming import case_files

    found = case_files(example.path)
    first = next(iter(found.images.values()), found.multichannel[0] if found.multichannel else None)
    if first is None:
        return 0
    shape = nib.load(str(first)).shape[:3]
    voxels = float(np.prod(shape))
    if min_size is not None:
        # Smaller volumes are padded to one patch, axis by axis (in the model's axis order, which
        # may not be the file's: the largest of the pairings).
        voxels = max(
            float(np.prod([max(s, p) for s, p in zip(shape, order, strict=True)]))
            for order in itertools.permutations(min_size)
        )
    per_voxel = 4 * n_channels + n_regions + 8 * _BRAIN_FRACTION
    if teacher_targets:
        per_voxel += 2 * n_regions
    return int(n_cases * voxels * per_voxel)


@dataclass(frozen=True)
class MemoryCacheVerdict:
    """Whether the memory caches of the processes on this machine fit in its free memory."""

    fits: bool
    message: str


def memory_cache_verdict(
    per_process: int, once: int, n_cases: int, processes: int = 1
) -> MemoryCacheVerdict | None:
    """Check memory caches against the free memory before minutes of loading end in the system
    killing the process (and, in napari, the viewer with it).

    Parameters
    ----------
    per_process
        Bytes every process keeps (the training cases; :func:`memory_cache_bytes`).
    once
        Bytes kept by one process only (rank 0's validation cases).
    n_cases
        Cases one process keeps at most (for the message).
    processes
        Processes on this machine that each keep a cache.

    Returns
    -------
    MemoryCacheVerdict or None
        ``None`` when the free memory is unknown.
    """
    import torch

    from ..device import available_memory

    available = available_memory(torch.device("cpu"))
    if available is None:
        return None
    total = per_process * processes + once
    each = f" in each of {processes} processes" if processes > 1 else ""
    return MemoryCacheVerdict(
        fits=total <= MEMORY_CACHE_SHARE * available,
        message=(
            f"cache: memory would keep {n_cases} cases{each} in memory, about {_size(total)} in "
            f"all, but {_size(available)} is available: {CACHE_REMEDY}."
        ),
    )


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.0f} MiB"


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that memory ran out (CPU or GPU, as PyTorch and Python word it)."""
    import torch

    if isinstance(exc, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError))):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    # CUDA: "CUDA out of memory"; CPU: "DefaultCPUAllocator: can't allocate memory"; MPS and
    # some BLAS back ends: "not enough memory".
    return any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory"))


__all__ = [
    "CACHE_REMEDY",
    "MEMORY_CACHE_SHARE",
    "CaseEntry",
    "CopyPatchd",
    "LoadCased",
    "MemoryCacheVerdict",
    "PoolSampler",
    "build_dataset",
    "case_stamp",
    "discover_cases",
    "first_case_info",
    "is_out_of_memory",
    "make_split",
    "memory_cache_bytes",
    "memory_cache_verdict",
    "patch_transforms",
    "read_split",
    "user_error_in",
    "write_split",
]
