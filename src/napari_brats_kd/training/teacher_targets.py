"""Teacher outputs cached on disk: distillation without running the teacher at every step.

Online distillation runs the frozen teacher on every training patch. On a CPU that forward pass
costs several times the student's own step (the shipped full-resolution teacher: about 5 s of a
6.8 s step on 2 cores), although the teacher's answer for a voxel does not change from one epoch
to the next. With ``teacher_targets: cached`` the teacher instead runs once per training case,
over the brain's bounding box of the normalised volume in model orientation, as segmentation
runs it; its region logits are stored as float16 ``.npy`` files, then cropped and spatially
augmented together with the image, so that a training step no longer touches the teacher.

What differs from online targets:

- The teacher sees the un-augmented case. Spatial augmentations (flips, affine, elastic) move
  the stored logits with the image (bilinear), so targets stay aligned; intensity augmentations
  (noise, bias field, gamma, blur, low resolution) perturb the student's input only, and the
  student learns to give the clean-image answer on a perturbed image.
- The teacher sees the whole brain rather than single patches: more context, so its targets are
  at least as good as online ones.

Files: ``<cache_dir>/teacher_targets/<key>/<case_id>-<stamp>.npy``. ``key`` hashes the
teacher's weights and everything that shapes its input (modalities, normalisation, padding,
window), so a changed teacher or setting never reuses stale outputs, and runs that share a teacher
and a ``cache_dir`` share the files. ``stamp`` hashes where the case's image files are, their
sizes and modification times (:func:`~.data.case_stamp`), so that two cases with one id (a
labelled and an unlabelled folder, two copies of a dataset) or a case whose images changed are
never mixed up; outputs of files that changed stay on disk until the folder is deleted. Each file
is written atomically; a stopped caching pass keeps the finished cases.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Transform
from torch import nn

from .._files import atomic_write
from ..callbacks import ShouldStop
from ..errors import Cancelled, ResourceError, TrainingError
from ..models import LoadedModel
from .data import CASE_ID, IMAGE, STAMP, TEACHER, CaseEntry, LoadCased, case_stamp


def resolve_target_mode(mode: str, device: torch.device, needs_activations: bool = False) -> str:
    """``"online"`` or ``"cached"`` for the ``teacher_targets`` setting on ``device``.

    ``auto`` caches on a CPU, where the teacher's forward pass dominates a distillation step, and
    runs the teacher online on a GPU, where it is cheap and sees every augmented patch, or when
    the loss ``needs_activations`` of the teacher (attention transfer).
    """
    if mode == "auto":
        return "cached" if device.type == "cpu" and not needs_activations else "online"
    return mode


def targets_key(teacher: nn.Module, settings: Mapping[str, Any]) -> str:
    """A short hash of the teacher's weights and the ``settings`` that shape its input."""
    h = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        t = tensor.detach().cpu()
        if t.is_floating_point():
            t = t.float()  # numpy has no bfloat16
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    h.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


#: Probabilities are clipped to [1e-6, 1 - 1e-6] before the logit: float32 sigmoids saturate, and
#: +-13.8 is as sure as a target needs to be (sigmoid(13.8 / T) > 0.999 at T = 2).
_EPS = 1e-6
#: The stored logit of "surely not this region": outside the brain, and where augmentation pads.
BACKGROUND_LOGIT = float(np.log(_EPS / (1 - _EPS)))


def target_file(folder: str | Path, case_id: str, stamp: str) -> Path:
    """Where the cached outputs of case ``case_id`` (:func:`~.data.case_stamp` ``stamp``) live."""
    return Path(folder) / f"{case_id}-{stamp}.npy"


def cache_teacher_targets(
    teacher: LoadedModel,
    entries: Sequence[CaseEntry],
    loader: LoadCased,
    out_dir: str | Path,
    channels: Sequence[int] | None,
    device: torch.device,
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    should_stop: ShouldStop | None = None,
    on_case: Callable[[int, int], None] | None = None,
) -> int:
    """Run ``teacher`` once over every case of ``entries`` not cached yet and store its logits.

    Each case goes through the same path as segmentation
    (:func:`~napari_brats_kd.inference.predict_probabilities`, one pass over the brain's bounding
    box when it fits the teacher's ROI, else gaussian-blended windows); outside the box, where the
    image is empty, the stored logit is :data:`BACKGROUND_LOGIT`.

    Parameters
    ----------
    teacher
        The loaded teacher (its network is moved to ``device``).
    entries
        Cases to cache; those with a file (:func:`target_file`) already are skipped.
    loader
        Loads a case exactly as training does (same modalities, normalisation and padding), so
        the stored logits have the image's shape.
    out_dir
        Folder of the ``<case_id>-<stamp>.npy`` files.
    channels
        Image channels the teacher takes, in its order (``None``: all).
    device, overlap, sw_batch_size
        Inference settings.
    should_stop
        Polled before every case to compute; True raises
        :class:`~napari_brats_kd.errors.Cancelled` (the finished cases are kept).
    on_case
        ``on_case(done, total)`` after every computed case, ``total`` counting only the cases
        that were missing.

    Returns
    -------
    int
        Number of cases computed (not found in the cache).

    Raises
    ------
    TrainingError
        If the teacher does not fit in memory on a case.
    """
    from ..inference import brain_bbox
    from ..predict_torch import predict_probabilities

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = [(e, target_file(out_dir, e.case_id, case_stamp(e.path))) for e in entries]
    todo = [(e, path) for e, path in todo if not path.is_file()]
    computed = 0
    for done, (entry, path) in enumerate(todo):
        if path.is_file():  # written meanwhile by another process sharing the folder
            continue
        if should_stop is not None and should_stop():
            raise Cancelled(
                f"Stopped while caching teacher outputs ({done} of {len(todo)} cases done; "
                f"they are kept in {out_dir} and reused by the next run)."
            )
        image = loader({CASE_ID: entry.case_id, "path": str(entry.path)})[IMAGE]
        if channels is not None:
            image = image[list(channels)]
        shape = (len(teacher.config.regions), *image.shape[1:])
        logits = np.full(shape, BACKGROUND_LOGIT, dtype=np.float16)
        box = brain_bbox(image)
        if box is not None:
            try:
                probs, _ = predict_probabilities(
                    teacher, np.ascontiguousarray(image[(slice(None), *box)]), device=device,
                    overlap=overlap, sw_batch_size=sw_batch_size, backend="torch",
                )  # fmt: skip
            except ResourceError as exc:
                raise TrainingError(
                    f"Caching the teacher's outputs for case {entry.case_id!r}: {exc} With "
                    "teacher_targets: online the teacher runs on training patches only."
                ) from exc
            logits[(slice(None), *box)] = _logit(probs)

        def write(tmp: Path, array: np.ndarray = logits) -> None:
            with open(tmp, "wb") as f:
                np.save(f, array)

        atomic_write(path, write)
        computed += 1
        if on_case is not None:
            on_case(done + 1, len(todo))
    return computed


def _logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(probs, _EPS, 1.0 - _EPS)
    return (np.log(p) - np.log1p(-p)).astype(np.float16)


class LoadTeacherTargetsd(Transform):
    """Add the cached teacher logits of a loaded case under ``teacher`` (float16 ``(R, ...)``).

    Runs after :class:`~.data.LoadCased` on the items of :func:`~.data.build_dataset`, which carry
    the case stamp (and is cached with it).

    Raises
    ------
    TrainingError
        If a case's file is missing or does not match the image's shape (a cache written for
        other data).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        path = target_file(self.folder, item[CASE_ID], item[STAMP])
        try:
            logits = np.load(path)
        except (OSError, ValueError) as exc:
            raise TrainingError(
                f"Cached teacher outputs for case {item[CASE_ID]!r} cannot be read from {path}: "
                f"{exc}. Delete {self.folder} to have them computed again."
            ) from exc
        if logits.shape[1:] != tuple(item[IMAGE].shape[1:]):
            raise TrainingError(
                f"Cached teacher outputs {path} have shape {logits.shape[1:]}, but case "
                f"{item[CASE_ID]!r} has {tuple(item[IMAGE].shape[1:])} (they were written for other "
                f"data). Delete {self.folder} to have them computed again."
            )
        return {**item, TEACHER: logits}


__all__ = [
    "BACKGROUND_LOGIT",
    "TEACHER",
    "LoadTeacherTargetsd",
    "cache_teacher_targets",
    "resolve_target_mode",
    "target_file",
    "targets_key",
]
