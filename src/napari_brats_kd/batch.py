"""Segmenting a case or a whole folder of cases into label files: :func:`segment_folder`.

What ``brats-kd segment`` does, as an API: every case under a folder is found, where each
result goes is decided and checked *before* anything runs (no two cases into one file, never
onto a case's own ground truth, no silent overwrite), the next case is read while the current
one is in the model, and a case that fails is reported and skipped without stopping the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .callbacks import Progress
from .errors import BratsKDError, CaseError, few

if TYPE_CHECKING:
    from .inference import SegmentationResult
    from .volume import Case


@dataclass
class FolderPlan:
    """The cases found under an input and the label file each writes.

    Attributes
    ----------
    cases
        Paths that each open one case (:func:`~napari_brats_kd.io.find_cases`).
    outputs
        ``{case path: label file}``; a case whose files cannot be named yet is absent (it is
        reported when it is read).
    several
        Whether the input is a dataset (results go into a folder, one file per case) rather than
        one case (the output is the file asked for).
    output
        The output given: a file for one case, a folder for several.
    """

    cases: list[Path]
    outputs: dict[Path, Path]
    several: bool
    output: Path


@dataclass
class CaseOutcome:
    """What happened to one case: its result and label file, or the error that stopped it."""

    path: Path
    case_id: str
    output: Path | None = None
    result: SegmentationResult | None = None
    error: BratsKDError | OSError | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the case was segmented and written."""
        return self.error is None


@dataclass
class FolderResult:
    """The outcome of :func:`segment_folder`: one :class:`CaseOutcome` per case, in order."""

    plan: FolderPlan
    outcomes: list[CaseOutcome]

    @property
    def failed(self) -> list[CaseOutcome]:
        """The cases that could not be segmented."""
        return [o for o in self.outcomes if not o.ok]

    @property
    def models(self) -> dict[str, int]:
        """``{model name: cases it segmented}`` (a folder may mix models by modalities)."""
        used: dict[str, int] = {}
        for o in self.outcomes:
            if o.result is not None:
                used[o.result.model] = used.get(o.result.model, 0) + 1
        return used


def _segment_output(output: Path, case_id: str, several: bool) -> Path:
    """The file a case's labels go to: ``-o`` itself, or ``<case_id>_seg.nii.gz`` in it.

    Raises
    ------
    CaseError
        For ``-o`` that would silently become something else than asked: one case and a name
        that is neither a NIfTI file nor an existing folder (``seg.txt``, ``segnoext``), or
        several cases and a NIfTI file name or an existing file.
    """
    from .naming import is_nifti_name

    if not several:
        if is_nifti_name(output):
            return output
        if not output.is_dir():
            raise CaseError(
                f"-o {output} is neither a NIfTI file name (.nii.gz or .nii) nor an existing "
                f"folder: write -o {output.with_suffix('').name or 'seg'}.nii.gz, or create the "
                "folder first."
            )
    elif is_nifti_name(output) or output.is_file():
        raise CaseError(
            f"-o {output} names a file, but a folder of cases is segmented: give a folder, which "
            "receives <case id>_seg.nii.gz for each case."
        )
    return output / f"{case_id}_seg.nii.gz"


def _planned_outputs(
    cases: list[Path], output: Path, overwrite: bool, several: bool
) -> dict[Path, Path]:
    """``{case path: output file}``, checked before anything runs.

    Raises
    ------
    CaseError
        If two cases would write one file (the same case id in two folders), an output would
        replace a file of its own case (its ground truth), or outputs exist and ``overwrite``
        is not set.
    """
    from .cases import case_files

    planned: dict[Path, Path] = {}
    inputs: dict[Path, list[Path]] = {}
    for case_path in cases:
        try:
            files = case_files(case_path)
        except BratsKDError:
            continue  # reported when the case is loaded
        planned[case_path] = _segment_output(output, files.case_id, several)
        inputs[case_path] = [f.resolve() for f in files.all_files]
    by_out: dict[Path, list[Path]] = {}
    for case_path, out in planned.items():
        by_out.setdefault(out.resolve(), []).append(case_path)
    clashes = {out: paths for out, paths in by_out.items() if len(paths) > 1}
    if clashes:
        out, paths = next(iter(clashes.items()))
        raise CaseError(
            f"{len(clashes)} output file(s) would be written by several cases with one case id, "
            f"e.g. {out.name} by {few(paths)}: segment those folders "
            "separately, into different output folders."
        )
    for case_path, out in planned.items():
        if out.resolve() in inputs[case_path]:
            raise CaseError(
                f"The output {out} is a file of the case it segments (its segmentation): choose "
                "another -o, so that the ground truth is kept."
            )
        if out.resolve().parent in {f.parent for f in inputs[case_path]}:
            # Beside the scans, a prediction would be read back as (or next to) the case's
            # ground truth the next time the case is opened.
            raise CaseError(
                f"The output {out} would be written among the scans of the case it segments: "
                "choose an -o outside the case folder."
            )
    existing = [out for out in planned.values() if out.exists()]
    if existing and not overwrite:
        raise CaseError(
            f"{len(existing)} output file(s) exist already, e.g. {existing[0]}: pass --overwrite "
            "to replace them, or choose another -o."
        )
    return planned


def _prefetched_cases(cases: list[Path]):
    """``(path, case or the error reading it)`` per case; the next is read during this one's run.

    Reading a case (decompressing four NIfTI files) takes about as long as the student's pass, and
    both release the GIL, so a folder of cases streams at close to the slower of the two.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .io import load_case

    def read(path: Path):
        try:
            # The ground truth is not needed: an odd one must not stop the scans' segmentation.
            return load_case(path, extra_segmentations=False, segmentation=False)
        except (BratsKDError, OSError) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="brats-kd-read") as pool:
        pending = pool.submit(read, cases[0]) if cases else None
        for i, path in enumerate(cases):
            assert pending is not None
            case = pending.result()
            pending = pool.submit(read, cases[i + 1]) if i + 1 < len(cases) else None
            yield path, case


def _import_in_background(*modules: str) -> None:
    """Import ``modules`` in a daemon thread, while the main thread prepares the first case.

    scipy.ndimage, onnxruntime and tqdm take about 0.3 s to import, a sixth of a whole
    ``segment`` command; cropping and normalising the scans runs on one core without the GIL,
    so the two overlap (reading runs on both cores: not then). The import
    system's locks make a main-thread import of the same module wait for this one.
    """
    import importlib
    import threading

    def work() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError:  # the main thread's own import reports it, where it matters
                return

    threading.Thread(target=work, name="brats-kd-imports", daemon=True).start()


def plan_folder(input_path: str | Path, output: str | Path, overwrite: bool = False) -> FolderPlan:
    """Find the cases under ``input_path`` and decide (and check) the file each one writes.

    Parameters
    ----------
    input_path
        A case folder, a case's file, or a dataset folder (any nesting of case folders, flat
        nnU-Net / MSD folders).
    output
        For one case: a ``.nii.gz`` / ``.nii`` file name, or an existing folder that receives
        ``<case id>_seg.nii.gz``. For a dataset: a folder, one ``<case id>_seg.nii.gz`` per case.
    overwrite
        Replace label files that exist already (never a file of the case itself).

    Returns
    -------
    FolderPlan

    Raises
    ------
    CaseError
        If nothing is found, ``output`` does not fit (a file for a dataset, ``seg.txt`` for a
        case), two cases would write one file, a result would land among a case's own files, or
        outputs exist and ``overwrite`` is not set.
    """
    from .io import find_cases

    input_path, output = Path(input_path), Path(output)
    cases = find_cases(input_path)
    # A dataset folder (even one holding a single case) writes into a folder, one file per case.
    several = len(cases) > 1 or any(c.resolve() != input_path.resolve() for c in cases)
    outputs = _planned_outputs(cases, output, overwrite, several)
    return FolderPlan(cases, outputs, several, output)


def iter_segment_folder(
    plan: FolderPlan,
    model: str = "student",
    *,
    case_progress: Callable[[str], Progress | None] | None = None,
    **segment_options: Any,
) -> Iterator[CaseOutcome]:
    """Segment the cases of ``plan`` one after the other, yielding each outcome as it is done.

    Parameters
    ----------
    plan
        From :func:`plan_folder`.
    model
        As for :func:`~napari_brats_kd.inference.segment` (``"student"`` picks, per case, the
        shipped student that needs only the case's scans).
    case_progress
        ``case_progress(case_id)`` gives the progress callable of that case's segmentation (or
        ``None``); the command line draws one bar per case this way.
    **segment_options
        Passed to :func:`~napari_brats_kd.inference.segment` (``device``, ``tta``,
        ``convention``, ...).

    Yields
    ------
    CaseOutcome
        One per case, in order; a case that fails (unreadable, refused by the model, a full
        disk) carries its error and the next case still runs.
    """
    from .models.registry import choose_model

    choose_model(model)  # a wrong name stops here, before any case is read
    for i, (case_path, case) in enumerate(_prefetched_cases(plan.cases)):
        if i == 0:
            # Started now, they run beside the single-threaded crop of the first case.
            _import_in_background("onnxruntime", "tqdm.auto", "scipy.ndimage")
        yield _segment_one(plan, case_path, case, model, case_progress, segment_options)


def _segment_one(
    plan: FolderPlan,
    case_path: Path,
    case: Case | BratsKDError | OSError,
    model: str,
    case_progress: Callable[[str], Progress | None] | None,
    options: dict[str, Any],
) -> CaseOutcome:
    """Segment one case read ahead (or carry the error that reading it gave) and save it."""
    from .inference import segment
    from .io import save_labels

    if isinstance(case, Exception):
        return CaseOutcome(case_path, case_path.name, error=case)
    outcome = CaseOutcome(case_path, case.case_id, notes=list(case.notes))
    try:
        progress = case_progress(case.case_id) if case_progress is not None else None
        result = segment(case, model, progress=progress, **options)
        outcome.notes += result.notes
        target = plan.outputs.get(case_path) or _segment_output(
            plan.output, case.case_id, plan.several
        )
        outcome.output = save_labels(target, result.labels, case.reference, result.convention)
        outcome.result = result
    except (BratsKDError, OSError) as exc:
        outcome.error = exc
    return outcome


def segment_folder(
    input_path: str | Path,
    output: str | Path,
    model: str = "student",
    *,
    overwrite: bool = False,
    **segment_options: Any,
) -> FolderResult:
    """Segment a case, or every case under a folder, into label files aligned with the scans.

    Parameters
    ----------
    input_path, output, overwrite
        As for :func:`plan_folder`.
    model, **segment_options
        As for :func:`iter_segment_folder`.

    Returns
    -------
    FolderResult
        One outcome per case; ``result.failed`` lists the cases that could not be segmented.

    Examples
    --------
    >>> from napari_brats_kd.batch import segment_folder
    >>> done = segment_folder("BraTS2021_Training", "predictions/")  # doctest: +SKIP
    >>> [o.case_id for o in done.failed]  # doctest: +SKIP
    []
    """
    plan = plan_folder(input_path, output, overwrite)
    return FolderResult(plan, list(iter_segment_folder(plan, model, **segment_options)))


__all__ = [
    "CaseOutcome",
    "FolderPlan",
    "FolderResult",
    "iter_segment_folder",
    "plan_folder",
    "segment_folder",
]
