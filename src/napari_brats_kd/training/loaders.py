"""The data of a run: cases and their split, the memory-cache check, teacher outputs, loaders.

Under DDP every rank builds the same split and its own share of the training batches; only rank 0
loads the validation cases.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..callbacks import ShouldStop
from ..errors import ResourceError, TrainingError
from ..labels import MODALITIES, MODALITY_NAMES
from . import distributed as dd
from .config import TrainConfig
from .data import (
    CACHE_REMEDY,
    TEACHER,
    CaseEntry,
    LoadCased,
    PoolSampler,
    build_dataset,
    discover_cases,
    first_case_info,
    make_split,
    memory_cache_bytes,
    memory_cache_verdict,
    patch_transforms,
    read_split,
    write_split,
)
from .teacher_targets import (
    BACKGROUND_LOGIT,
    LoadTeacherTargetsd,
    cache_teacher_targets,
    targets_key,
)

SPLIT_FILE = "split.json"

#: Added to the epoch per extra pass of one epoch, for samplers that shuffle by epoch: far from
#: any real epoch number, so no pass repeats another pass's order.
_PASS_STRIDE = 1_000_003


# ------------------------------------------------------------------------------------ seeding
def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy (MONAI's transforms), torch and MONAI; optionally deterministic kernels."""
    from monai.utils import set_determinism

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (MONAI transforms draw from the global RNG)
    torch.manual_seed(seed)
    set_determinism(seed=seed % 2**32, use_deterministic_algorithms=deterministic or None)
    if not deterministic:
        # set_determinism makes cuDNN deterministic; keep the fast autotuned kernels instead.
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = torch.cuda.is_available()


def seed_transforms(dataset: Any, seed: int) -> None:
    """Seed the random transforms of ``dataset`` (or of each part of a ``ConcatDataset``)."""
    from monai.transforms import Compose

    sets = getattr(dataset, "datasets", [dataset])
    for i, ds in enumerate(sets):
        transform = getattr(ds, "transform", None)
        if isinstance(transform, Compose):
            transform.set_random_state(seed=(seed + 7919 * i) % 2**32)


def cycle(loader: Any, epoch: int) -> Iterator[dict]:
    """The batches of ``loader`` without end, each pass in a new order.

    A plain ``RandomSampler`` reshuffles on its own; a ``DistributedSampler`` shuffles by its
    epoch only, so an epoch of more steps than one pass (``steps_per_epoch``) would repeat the
    same order pass after pass. Each further pass therefore gets its own sampler epoch (the same
    on every rank, and the same when the epoch is replayed on resume).
    """
    passes = 0
    while True:
        yield from loader
        passes += 1
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch + passes * _PASS_STRIDE)


# ---------------------------------------------------------------------------- cases and split
def check_modalities(entries: Sequence[CaseEntry], needed: Sequence[str], who: str) -> None:
    """Raise :class:`TrainingError` naming the first case that lacks one of ``needed``."""
    for e in entries:
        missing = [m for m in needed if m not in e.modalities]
        if missing:
            have = ", ".join(MODALITY_NAMES[m] for m in e.modalities) or "none"
            raise TrainingError(
                f"{who} needs {', '.join(MODALITY_NAMES[m] for m in missing)}, but case "
                f"{e.case_id!r} has only {have}."
            )


@dataclass
class Cases:
    """The cases of a run and the image channels each network takes.

    Attributes
    ----------
    train, val, unlabeled
        Training, validation and unlabelled (distillation only) cases.
    needed
        Modalities loaded, in :data:`~napari_brats_kd.labels.MODALITIES` order: the union of
        what the model and the teacher take.
    channels, teacher_channels
        Indices into ``needed`` of the model's and the teacher's modalities (``None``: no
        teacher).
    convention
        The label convention of the training cases.
    """

    train: list[CaseEntry]
    val: list[CaseEntry]
    unlabeled: list[CaseEntry]
    needed: list[str]
    channels: list[int]
    teacher_channels: list[int] | None
    convention: Any


def find_cases(
    cfg: TrainConfig,
    ctx: dd.DistContext,
    run_dir: Path,
    resume: bool,
    model_cfg: Any,
    teacher_cfg: Any | None,
) -> Cases:
    """Discover and check the cases, and split them (rank 0 writes ``split.json``).

    A resumed run keeps its folder's split; else ``split_file`` or a new seeded split.

    Raises
    ------
    TrainingError
        Unlabelled cases in ``data_dir``, or a case without a modality a network needs.
    """
    entries = discover_cases(cfg.data_dir, cfg.max_cases)
    unlabelled_in_data = [e.case_id for e in entries if not e.has_seg]
    if unlabelled_in_data:
        raise TrainingError(
            f"{len(unlabelled_in_data)} case(s) in {cfg.data_dir} have no segmentation "
            f"({', '.join(unlabelled_in_data[:5])}): supervised training needs labels for every "
            "case; give unlabelled cases to distillation as the unlabelled set instead."
        )
    teacher_mods = set(teacher_cfg.modalities if teacher_cfg is not None else ())
    needed = [m for m in MODALITIES if m in set(model_cfg.modalities) | teacher_mods]
    model_who = f"The model (modalities {', '.join(model_cfg.modalities)})"
    check_modalities(entries, model_cfg.modalities, model_who)
    if teacher_cfg is not None:
        check_modalities(
            entries, teacher_cfg.modalities,
            f"The teacher {teacher_cfg.display_name} (modalities "
            f"{', '.join(teacher_cfg.modalities)})",
        )  # fmt: skip
    unlab_entries: list[CaseEntry] = []
    if teacher_cfg is not None and cfg.unlabeled_dir:
        unlab_entries = discover_cases(cfg.unlabeled_dir)
        check_modalities(unlab_entries, needed, "Distillation on the unlabelled cases")
    ids = [e.case_id for e in entries]
    split_path = run_dir / SPLIT_FILE
    if resume and split_path.is_file():
        split = read_split(split_path, ids)
    elif cfg.split_file:
        split = read_split(cfg.split_file, ids)
    else:
        split = make_split(ids, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    if ctx.is_main:
        write_split({**split, "unlabeled": [e.case_id for e in unlab_entries]}, split_path)
    by_id = {e.case_id: e for e in entries}
    train_entries = [by_id[i] for i in split["train"]]
    return Cases(
        train=train_entries,
        val=[by_id[i] for i in split["val"]],
        unlabeled=unlab_entries,
        needed=needed,
        channels=[needed.index(m) for m in model_cfg.modalities],
        teacher_channels=(
            [needed.index(m) for m in teacher_cfg.modalities] if teacher_cfg else None
        ),
        convention=first_case_info(train_entries[0])["convention"],
    )


# ---------------------------------------------------------------------------- memory and teacher
def check_memory_cache(
    cfg: TrainConfig, ctx: dd.DistContext, cases: Cases, n_regions: int, cached_targets: bool
) -> None:
    """With ``cache: memory``, refuse a run whose cached cases would not fit in memory.

    Checked before the teacher's outputs are cached (minutes on a CPU) and before loading. Every
    process on this machine keeps its own cache of the training cases; rank 0 also keeps the
    validation cases. Every rank computes the same sum, so all decide alike.

    Raises
    ------
    ResourceError
        On every process, when the cache does not fit on any of them.
    """
    if cfg.cache != "memory":
        return
    keep = [*cases.train, *cases.unlabeled]
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    try:
        per_process = memory_cache_bytes(
            len(keep), keep[0], len(cases.needed), n_regions,
            teacher_targets=cached_targets, min_size=cfg.patch_size,
        )  # fmt: skip
        once = (
            memory_cache_bytes(len(cases.val), cases.val[0], len(cases.needed), n_regions)
            if cases.val
            else 0
        )
        verdict = memory_cache_verdict(per_process, once, len(keep) + len(cases.val), processes)
    except Exception:  # an unreadable case is reported, with its name, when it is loaded
        verdict = None
    # All processes stop together: one that went on would wait for the others forever.
    if dd.any_true(verdict is not None and not verdict.fits, ctx):
        raise ResourceError(
            verdict.message if verdict is not None
            else f"cache: memory does not fit in another process's memory: {CACHE_REMEDY}."
        )  # fmt: skip


def cache_teacher_outputs(
    cfg: Any,
    ctx: dd.DistContext,
    cases: Cases,
    loaded_teacher: Any,
    teacher: torch.nn.Module,
    loader_kw: dict[str, Any],
    cache_dir: Path,
    emit: Callable[[dict], None] | None,
    should_stop: ShouldStop | None,
) -> LoadTeacherTargetsd:
    """Run the teacher once per training and unlabelled case and keep its logits on disk.

    Parameters
    ----------
    cfg
        The distillation settings.
    ctx
        The process group: under DDP every rank caches its share.
    cases
        The run's cases.
    loaded_teacher, teacher
        The loaded teacher (its config and the model that keys the cache) and the private copy
        on the device that computes the outputs.
    loader_kw
        Keyword arguments of :class:`~napari_brats_kd.training.data.LoadCased`.
    cache_dir
        The run's cache folder (``teacher_targets/<key>`` in it).
    emit, should_stop
        Note events per case (rank 0) and the stop poll.

    Returns
    -------
    LoadTeacherTargetsd
        The transform that adds the cached logits to a loaded case.
    """
    image_loader = LoadCased(
        cases.needed, use_label=False, require_label=False, min_size=cfg.patch_size, **loader_kw
    )
    settings = {
        "modalities": cases.needed,
        "channels": cases.teacher_channels,
        "teacher_roi": list(loaded_teacher.config.roi_size),
        "overlap": cfg.val_overlap,
        "normalization": loader_kw["normalization"],
        "min_size": list(cfg.patch_size),
    }
    targets_dir = cache_dir / "teacher_targets" / targets_key(loaded_teacher.model, settings)
    to_cache = [*cases.train, *cases.unlabeled]

    def cached_case(done: int, total: int) -> None:
        if emit is not None:
            emit({"type": "note", "message": f"Caching teacher outputs: case {done}/{total}"})

    def cache(entries: list[CaseEntry]) -> None:
        # The private copy, already on the device: the loaded network may be shared.
        cache_teacher_targets(
            replace(loaded_teacher, model=teacher), entries, image_loader, targets_dir,
            cases.teacher_channels, ctx.device, overlap=cfg.val_overlap,
            sw_batch_size=cfg.val_sw_batch_size, should_stop=should_stop,
            on_case=cached_case,
        )  # fmt: skip

    # Under DDP every rank caches its share; then each fills in what it cannot see (a cache
    # folder that is not shared between nodes), the ranks starting at evenly spaced cases so
    # that the processes of a node mostly take different ones and none waits at a barrier.
    cache(to_cache[ctx.rank :: ctx.world_size])
    if ctx.distributed:
        dd.barrier(ctx)
        start = ctx.rank * len(to_cache) // ctx.world_size
        cache(to_cache[start:] + to_cache[:start])
    return LoadTeacherTargetsd(targets_dir)


# ---------------------------------------------------------------------------- datasets and loader
@dataclass
class TrainData:
    """The datasets and the training loader of a run.

    Attributes
    ----------
    train_ds
        Training patches (a ``ConcatDataset`` with the unlabelled cases when there are some).
    val_ds
        Whole validation cases on rank 0, else ``None``.
    sampler, loader
        The training sampler (``set_epoch`` where it shuffles by epoch) and its DataLoader.
    steps
        Optimisation steps per epoch.
    """

    train_ds: Any
    val_ds: Any
    sampler: Any
    loader: Any
    steps: int


def build_data(
    cfg: TrainConfig,
    ctx: dd.DistContext,
    cases: Cases,
    loader_kw: dict[str, Any],
    cache_dir: Path,
    targets: LoadTeacherTargetsd | None,
) -> TrainData:
    """Datasets (cached as ``cfg.cache`` says), the sampler and the training DataLoader.

    ``targets`` (cached teacher outputs) joins every training case's loading and is cropped
    and augmented with its image.
    """
    from monai.data import DataLoader
    from torch.utils.data import ConcatDataset

    from .augment import build_augmentation

    extra_loads = [targets] if targets is not None else []
    with_targets = bool(extra_loads)
    augment = build_augmentation(
        cfg.augment, target_keys=(TEACHER,) if with_targets else (), target_fill=BACKGROUND_LOGIT
    )
    rand = patch_transforms(
        cfg.patch_size, cfg.samples_per_case, cfg.pos_fraction, augment, with_targets
    )
    needed = cases.needed
    train_ds = build_dataset(
        cases.train,
        [LoadCased(needed, min_size=cfg.patch_size, **loader_kw), *extra_loads],
        rand,
        cfg.cache,
        cache_dir / "train",
        cfg.num_workers,
    )
    if cases.unlabeled:
        unlab_ds = build_dataset(
            cases.unlabeled,
            [LoadCased(needed, use_label=False, require_label=False, min_size=cfg.patch_size,
                       **loader_kw), *extra_loads],
            rand, cfg.cache, cache_dir / "unlabeled", cfg.num_workers,
        )  # fmt: skip
        train_ds = ConcatDataset([train_ds, unlab_ds])
    val_ds = None
    if cases.val and ctx.is_main:
        val_ds = build_dataset(
            cases.val, LoadCased(needed, **loader_kw), None, cfg.cache, cache_dir / "val",
            cfg.num_workers,
        )  # fmt: skip
    sampler, steps = _sampler(cfg, ctx, cases, train_ds)
    loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=ctx.distributed,
        persistent_workers=False,
    )
    return TrainData(train_ds, val_ds, sampler, loader, steps)


def _sampler(cfg: TrainConfig, ctx: dd.DistContext, cases: Cases, train_ds: Any):
    """The training sampler and the steps per epoch it is sized for."""
    from torch.utils.data import DistributedSampler, RandomSampler

    if cases.unlabeled:
        # Two pools mixed in the ratio the user asked for, not in proportion to their sizes.
        per_rank = math.ceil(len(train_ds) / ctx.world_size)
        # As the samplers below count it: DDP drops a last partial batch, one process does not.
        batches = (
            per_rank // cfg.batch_size if ctx.distributed else math.ceil(per_rank / cfg.batch_size)
        )
        steps = cfg.steps_per_epoch or max(1, batches)
        sampler: Any = PoolSampler(
            len(cases.train), len(cases.unlabeled), cfg.unlabeled_weight,
            steps * cfg.batch_size, ctx.rank, ctx.world_size, cfg.seed,
        )  # fmt: skip
    elif ctx.distributed:
        sampler = DistributedSampler(
            train_ds, ctx.world_size, ctx.rank, shuffle=True, seed=cfg.seed
        )
        steps = cfg.steps_per_epoch or max(1, len(sampler) // cfg.batch_size)
    else:
        # An epoch is one pass of the DataLoader: `steps` batches drawn from reshuffled passes over
        # the cases. Worker processes then start once per epoch, not after every pass over a small
        # dataset (with many workers, those restarts cost as much as the steps).
        steps = cfg.steps_per_epoch or max(1, math.ceil(len(train_ds) / cfg.batch_size))
        sampler = RandomSampler(train_ds, num_samples=steps * cfg.batch_size)
    return sampler, steps


__all__ = [
    "SPLIT_FILE",
    "Cases",
    "TrainData",
    "build_data",
    "cache_teacher_outputs",
    "check_memory_cache",
    "check_modalities",
    "cycle",
    "find_cases",
    "seed_everything",
    "seed_transforms",
]
