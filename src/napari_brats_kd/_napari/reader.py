"""npe2 reader: BraTS NIfTI files and case folders in every naming convention.

``get_reader`` only looks at names (it never raises and reads no voxels). The reader function it
returns turns :class:`~napari_brats_kd.errors.BratsKDError` into a napari error notification and
returns napari's "no layers" sentinel ``[(None,)]``. Why: napari 0.9 wraps any exception a reader
raises in ``ReaderPluginError``; from the File menu that opens the "choose another reader" dialog
with the message buried under "Tried opening with napari-brats-kd, but failed", and from a script
(``viewer.open(..., plugin=...)``) it ends in a traceback. A notification tells the user what is
wrong with their file in one sentence, and nothing escapes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning

from .. import io, naming
from .. import labels as lab
from ..cases import nifti_files
from ..errors import BratsKDError, CaseError
from .layers import LayerDataTuple, case_to_layer_data, image_layer_data

ReaderFunction = Callable[[Any], list[LayerDataTuple]]

#: What napari takes as "read fine, nothing to add" (no fallback dialog, no traceback).
NO_LAYERS: list[tuple[None]] = [(None,)]


def _single_path(path: str | os.PathLike | list) -> Path | None:
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    return Path(path)


def _dir_has_nifti(folder: Path, depth: int = 1) -> bool:
    """NIfTI files in ``folder`` or (to ``depth``) its subfolders: a case or a dataset folder."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    if any(e.is_file() and naming.is_nifti_name(e.name) for e in entries):
        return True
    if depth <= 0:
        return False
    return any(e.is_dir() and _dir_has_nifti(Path(e.path), depth - 1) for e in entries)


def get_reader(path: str | os.PathLike | list) -> ReaderFunction | None:
    """Return a reader for a NIfTI file or a folder holding NIfTI files, else ``None``.

    Parameters
    ----------
    path
        What the user opened (one path, or a list of one path).

    Returns
    -------
    callable or None
        :func:`read_brats`, or ``None`` for anything this plugin does not read.
    """
    p = _single_path(path)
    if p is None:
        return None
    try:
        if p.is_dir():
            return read_brats if _dir_has_nifti(p) else None
        if p.is_file() and naming.is_nifti_name(p):
            return read_brats
    except OSError:
        return None
    return None


def _read_layers(p: Path) -> tuple[list[LayerDataTuple], list[str]]:
    if p.is_file():
        try:
            case = io.load_case(p)
        except CaseError as exc:
            if naming.classify_file(p).kind not in ("unknown", "brainmask"):
                raise
            # A lone scan whose name names no modality: still show it, as a plain image.
            vol = io.load_volume(p)
            name = naming.nifti_stem(p)
            return [image_layer_data(vol, name, None, None)], [
                f"{p.name}: {exc} Shown as a plain image."
            ]
        return case_to_layer_data(case), list(case.extra.get("notes", []))
    if p.is_dir():
        try:
            cases = io.find_cases(p)
        except CaseError:
            # Datasets pass over folders of label maps alone (earlier outputs); opened on its
            # own, such a folder is shown as the label map it holds.
            files = nifti_files(p)
            if not files or any(naming.classify_file(f).kind != "seg" for f in files):
                raise
            cases = [p]
        if len(cases) > 1 or (cases and cases[0] != p):
            if len(cases) == 1:
                p = cases[0]
            else:
                shown = ", ".join(c.name for c in cases[:5])
                raise CaseError(
                    f"{p} is a dataset folder with {len(cases)} cases ({shown}"
                    f"{', ...' if len(cases) > 5 else ''}): open one case folder or file."
                )
    case = io.load_case(p)
    return case_to_layer_data(case), list(case.extra.get("notes", []))


def read_brats(path: str | os.PathLike | list) -> list[LayerDataTuple]:
    """Read a BraTS case (folder or file) into napari layer data.

    Bad input shows an error notification with the reason and returns ``[(None,)]`` (no layers).
    """
    p = _single_path(path)
    if p is None:
        show_error("napari-brats-kd opens one file or one case folder at a time.")
        return NO_LAYERS
    try:
        layers, notes = _read_layers(p)
    except BratsKDError as exc:
        show_error(f"Cannot open {p.name}: {exc}")
        return NO_LAYERS
    for note in notes:
        show_warning(note)
    for _data, meta, kind in layers:
        info = meta["metadata"]["brats_kd"]
        if kind == "labels" and info.get("role") == "segmentation":
            conv = lab.get_convention(info["convention"])
            show_info(f"{meta['name']}: {conv.title} ({info['convention_reason']}).")
            break
    return layers
