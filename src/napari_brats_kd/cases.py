"""Which files make a case (:func:`case_files`), and the cases of a dataset (:func:`case_entries`,
:func:`iter_dirs`), from the names :mod:`.naming` reads and nnU-Net / MSD ``dataset.json`` files;
no voxel data is read (4D MSD files are told apart by their header alone).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CaseError, few
from .labels import MODALITIES, MODALITY_NAMES
from .naming import (
    BRATS2021_TOKENS,
    BRATS2023_TOKENS,
    MSD_DEFAULT_CHANNELS,
    NIFTI_SUFFIXES,
    NNUNET_DEFAULT_CHANNELS,
    SEGMENTATION_DIRS,
    FileRole,
    classify_file,
    is_nifti_name,
    modality_from_token,
    nifti_stem,
)

# --------------------------------------------------------------------------------------------------
# dataset.json (nnU-Net v1/v2, MSD)
# --------------------------------------------------------------------------------------------------


def find_dataset_json(folder: Path, levels: int = 2) -> Path | None:
    """``dataset.json`` in ``folder`` or up to ``levels`` parents (nnU-Net / MSD layouts)."""
    folder = Path(folder)
    for candidate in [folder, *list(folder.parents)[:levels]]:
        p = candidate / "dataset.json"
        if p.is_file():
            return p
    return None


def channels_from_dataset_json(path: Path) -> tuple[str, ...]:
    """Canonical modality key of each channel, from a ``dataset.json``.

    Reads nnU-Net v2 ``"channel_names"`` or v1 / MSD ``"modality"`` (``{"0": "FLAIR", ...}``).

    Raises
    ------
    CaseError
        If the file is unreadable, names no channels, or a channel name is not a modality.
    """
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CaseError(f"Cannot read {path}: {exc}. Fix or remove the dataset.json.") from None
    table = None
    if isinstance(spec, dict):
        table = spec.get("channel_names") or spec.get("modality")
    if not isinstance(table, dict) or not table:
        raise CaseError(
            f"{path} has neither 'channel_names' (nnU-Net v2) nor 'modality' (nnU-Net v1 / MSD): "
            "cannot tell which channel is which modality."
        )
    try:
        items = sorted((int(k), str(v)) for k, v in table.items())
    except ValueError:
        raise CaseError(f"{path}: channel keys must be '0', '1', ...; got {list(table)}.") from None
    if [i for i, _ in items] != list(range(len(items))):
        raise CaseError(f"{path}: channel keys must be 0..{len(items) - 1}; got {list(table)}.")
    out: list[str] = []
    for i, name in items:
        key = modality_from_token(name)
        if key is None:
            raise CaseError(
                f"{path}: channel {i} is named {name!r}, which is not a known modality "
                f"(expected one of {', '.join(MODALITY_NAMES.values())} or an alias such as "
                "T1ce, T1Gd, T2w, FLAIR)."
            )
        if key in out:
            raise CaseError(
                f"{path}: channels {out.index(key)} and {i} both map to {MODALITY_NAMES[key]}."
            )
        out.append(key)
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# Case files
# --------------------------------------------------------------------------------------------------


@dataclass
class CaseFiles:
    """The files of one case, as found by :func:`case_files`.

    Attributes
    ----------
    case_id
        Identifier of the case (file prefix, or folder name for loose names).
    naming
        One of :data:`NAMINGS`, or ``"single"`` for a lone file opened on its own.
    images
        ``{modality: path}`` of 3D modality files.
    multichannel
        For MSD: the 4D file and the modality of each of its channels.
    seg
        The case's segmentation file, if any.
    extra_segs
        Further segmentations (e.g. algorithm outputs in a ``segmentations/`` subfolder).
    unnamed
        Files beside the case's scans whose names tell no modality (say an algorithm's
        ``..._model_output.nii.gz``): :func:`~napari_brats_kd.io.load_case` opens those holding
        labels as further segmentations and lists the others in a note.
    notes
        Sentences for the user about what was found or assumed (missing modalities, ignored
        files, channel order assumed without a dataset.json); the napari reader shows them and
        :func:`~napari_brats_kd.io.load_case` passes them on as ``Case.notes``.
    channel_source
        Where channel names came from (nnU-Net / MSD), e.g. a dataset.json path.
    """

    case_id: str
    naming: str
    images: dict[str, Path] = field(default_factory=dict)
    multichannel: tuple[Path, tuple[str, ...]] | None = None
    seg: Path | None = None
    extra_segs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    channel_source: str | None = None
    unnamed: list[Path] = field(default_factory=list)

    @property
    def all_files(self) -> list[Path]:
        """Every file this case reads."""
        files = list(self.images.values())
        if self.multichannel is not None:
            files.append(self.multichannel[0])
        if self.seg is not None:
            files.append(self.seg)
        return files + list(self.extra_segs) + list(self.unnamed)


def nifti_files(folder: Path) -> list[Path]:
    """NIfTI files directly in ``folder`` (sorted; hidden files such as ``._x.nii`` skipped)."""
    try:
        return sorted(p for p in Path(folder).iterdir() if p.is_file() and is_nifti_name(p))
    except OSError as exc:
        raise CaseError(f"Cannot list folder {folder}: {exc}") from None


def header_ndim_channels(path: Path) -> tuple[int, int] | None:
    """``(ndim, size of the 4th axis)`` from a NIfTI header only, or ``None`` if unreadable."""
    import nibabel as nib  # header-only: nibabel reads the first bytes of the file

    try:
        shape = nib.load(str(path)).header.get_data_shape()
    except (
        OSError,
        ValueError,
        EOFError,
        zlib.error,
        struct.error,
        nib.filebasedimages.ImageFileError,
        nib.spatialimages.HeaderDataError,
    ):
        return None  # unreadable: the loader reports why when the file is opened
    shape = tuple(int(s) for s in shape)
    return len(shape), (shape[3] if len(shape) > 3 else 1)


def expected_names(case_id: str, naming: str) -> str:
    """The file names a case of this naming would have, for messages."""
    if naming == "brats2023":
        return ", ".join(f"{case_id}-{t}.nii.gz" for t in BRATS2023_TOKENS)
    if naming == "nnunet":
        return ", ".join(f"{case_id}_{i:04d}.nii.gz" for i in range(4))
    return ", ".join(f"{case_id}_{t}.nii.gz" for t in BRATS2021_TOKENS)


def _labels_dir_for(image_dir: Path) -> Path | None:
    """``labelsTr`` beside ``imagesTr`` (and ``labelsTs`` beside ``imagesTs``)."""
    name = image_dir.name
    if name.lower().startswith("images"):
        return image_dir.parent / ("labels" + name[len("images") :])
    return None


def _label_file(image_dir: Path, case_id: str) -> Path | None:
    labels_dir = _labels_dir_for(image_dir)
    if labels_dir is None or not labels_dir.is_dir():
        return None
    for suffix in NIFTI_SUFFIXES:
        p = labels_dir / f"{case_id}{suffix}"
        if p.is_file():
            return p
    return None


def _assumed_channels_note(channels: Sequence[str], layout: str) -> str:
    """The note telling the user that channel names were assumed, not read from a dataset.json.

    Parameters
    ----------
    channels
        Modality key of each channel, in channel order.
    layout
        Whose default order was assumed, e.g. ``"MSD"`` or ``"nnU-Net BraTS"``.

    Returns
    -------
    str
        A sentence for :attr:`CaseFiles.notes`.
    """
    names = ", ".join(MODALITY_NAMES[c] for c in channels)
    return (
        f"No dataset.json found: channels assumed to be {names} ({layout} order); add a "
        "dataset.json naming the channels if they are not."
    )


def _msd_channels(folder: Path) -> tuple[tuple[str, ...], str, str | None]:
    """Channel modalities of an MSD file in ``folder``, where they came from, and a note for the
    user when they were assumed."""
    ds = find_dataset_json(folder)
    if ds is not None:
        return channels_from_dataset_json(ds), str(ds), None
    return (
        MSD_DEFAULT_CHANNELS,
        "MSD Task01 default order (FLAIR, T1w, T1gd, T2w)",
        _assumed_channels_note(MSD_DEFAULT_CHANNELS, "MSD"),
    )


def _nnunet_case(folder: Path, roles: list[FileRole], case_id: str) -> CaseFiles:
    ds = find_dataset_json(folder)
    assumed: str | None = None
    if ds is not None:
        channels, source = channels_from_dataset_json(ds), str(ds)
    else:
        channels = NNUNET_DEFAULT_CHANNELS
        source = "nnU-Net BraTS default order (T1, T1ce, T2, FLAIR; no dataset.json found)"
        assumed = _assumed_channels_note(channels, "nnU-Net BraTS")
    mine = sorted((r for r in roles if r.case_id == case_id), key=lambda r: r.channel or 0)
    got = {r.channel: r.path for r in mine}
    expected = set(range(len(channels)))
    extra = sorted(set(got) - expected)
    missing = sorted(expected - set(got))
    if extra or missing:
        what = []
        if missing:
            what.append("missing " + ", ".join(f"{case_id}_{i:04d}" for i in missing))
        if extra:
            what.append("unexpected " + few(got[i].name for i in extra))
        raise CaseError(
            f"nnU-Net case {case_id!r} in {folder}: {'; '.join(what)}. Expected channels "
            f"0..{len(channels) - 1} = "
            f"{', '.join(MODALITY_NAMES[c] for c in channels)} (from {source})."
        )
    files = CaseFiles(case_id, "nnunet", channel_source=source)
    if assumed is not None:
        # A wrong guess swaps modalities silently (a model fed T1 as FLAIR still segments), so
        # the user must hear that the order was assumed.
        files.notes.append(assumed)
    for i, modality in enumerate(channels):
        files.images[modality] = got[i]
    files.seg = _label_file(folder, case_id)
    return files


def _check_single_case(folder: Path, roles: Sequence[FileRole]) -> None:
    ids = sorted({r.case_id for r in roles if r.case_id})
    if len(ids) > 1 and all(r.naming in ("brats2021", "brats2023") for r in roles):
        raise CaseError(
            f"Folder {folder} holds files of {len(ids)} cases ({', '.join(ids[:5])}"
            f"{', ...' if len(ids) > 5 else ''}): put each case in its own folder, or open one "
            "file at a time."
        )


def _extra_segmentations(folder: Path) -> list[Path]:
    out: list[Path] = []
    try:
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError:
        return out
    for sub in subdirs:
        if sub.name.lower() in SEGMENTATION_DIRS:
            out.extend(nifti_files(sub))
    return out


def _channel_or_msd_case(folder: Path, roles: list[FileRole]) -> CaseFiles | None:
    """The case of a folder in a channel-numbered layout (nnU-Net raw: ``_0000`` files; MSD: one
    4D file whose name says nothing), or ``None`` when the files are named by modality."""
    # nnU-Net raw: channel files, possibly of several cases (a flat imagesTr folder).
    channel_roles = [r for r in roles if r.kind == "channel"]
    if channel_roles:
        others = [r for r in roles if r.kind != "channel"]
        if others:
            raise CaseError(
                f"Folder {folder} mixes nnU-Net channel files (e.g. {channel_roles[0].path.name}) "
                f"with other files ({', '.join(r.path.name for r in others[:4])}): keep one "
                "layout per folder."
            )
        ids = sorted({r.case_id for r in channel_roles})
        if len(ids) > 1:
            raise CaseError(
                f"Folder {folder} is an nnU-Net dataset folder with {len(ids)} cases "
                f"({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}): open one of its files "
                f"(e.g. {ids[0]}_0000.nii.gz) to open that case."
            )
        return _nnunet_case(folder, channel_roles, ids[0])

    # MSD: files whose names say nothing, each a 4D multi-channel volume.
    unknown = [r for r in roles if r.kind == "unknown"]
    if unknown and len(unknown) == len(roles):
        probes = {r.path: header_ndim_channels(r.path) for r in unknown}
        multichannel = [
            p for p, pr in probes.items() if pr is not None and pr[0] == 4 and pr[1] > 1
        ]
        if len(multichannel) == len(unknown):
            if len(multichannel) > 1:
                raise CaseError(
                    f"Folder {folder} is an MSD-style dataset folder with {len(multichannel)} "
                    f"4D cases ({', '.join(p.name for p in multichannel[:5])}): open one file."
                )
            return msd_case(multichannel[0])

    return None


def case_files_in_folder(folder: Path) -> CaseFiles:
    """Assign the NIfTI files of a case folder to modalities and segmentation.

    Parameters
    ----------
    folder
        A folder holding one case (any naming in :data:`NAMINGS`), or a flat nnU-Net / MSD
        folder holding exactly one case.

    Returns
    -------
    CaseFiles

    Raises
    ------
    CaseError
        If the folder is empty, holds several cases, or a file cannot be assigned unambiguously
        (two files for one modality, a file whose name names no modality, two segmentations).
    """
    folder = Path(folder)
    files = nifti_files(folder)
    extra = _extra_segmentations(folder)
    if not files and not extra:
        raise CaseError(
            f"Folder {folder} holds no NIfTI files (.nii or .nii.gz). Open a case folder, e.g. "
            "one with BraTS2021_00000_t1.nii.gz ... _flair.nii.gz."
        )
    if not files:
        raise CaseError(
            f"Folder {folder} holds only segmentations in {extra[0].parent.name}/ and no scans: "
            "open its parent case folder, or one segmentation file."
        )
    roles = [classify_file(p) for p in files]
    masks = [r.path.name for r in roles if r.kind == "brainmask"]
    roles = [r for r in roles if r.kind != "brainmask"]
    if masks and not roles:
        raise CaseError(
            f"Folder {folder} holds only brain masks ({', '.join(masks[:3])}) and no scans: open "
            "the case folder with the scans."
        )

    layout_case = _channel_or_msd_case(folder, roles)
    if layout_case is not None:
        return layout_case
    unknown = [r for r in roles if r.kind == "unknown"]
    unnamed: list[Path] = []
    if unknown and any(r.kind == "image" for r in roles):
        # The scans tell their modalities apart: the other files must not stop the case from
        # opening (the reader shows those holding labels as further label maps).
        unnamed = [r.path for r in unknown]
        roles = [r for r in roles if r.kind != "unknown"]
    elif unknown:
        names = few(r.path.name for r in unknown)
        raise CaseError(
            f"Cannot tell which modality {names} in {folder} holds: name files with a suffix "
            "such as _t1, _t1ce, _t2, _flair, _seg (BraTS 2021), -t1n, -t1c, -t2w, -t2f, -seg "
            "(BraTS 2023) or _0000.._0003 (nnU-Net), or move the file out of the case folder."
        )

    _check_single_case(folder, roles)
    seg_roles = [r for r in roles if r.kind == "seg"]
    canonical = [r for r in seg_roles if r.naming in ("brats2021", "brats2023")]
    alternates: list[Path] = []
    if len(seg_roles) > 1 and len(canonical) == 1:
        # The challenge-named `_seg` / `-seg` is the ground truth; other label maps beside it
        # (an algorithm's `_pred`, a `_mask`) are shown as extra segmentations, not refused.
        alternates = [r.path for r in seg_roles if r is not canonical[0]]
        roles = [r for r in roles if r.path not in alternates]
    namings = {r.naming for r in roles}
    naming = namings.pop() if len(namings) == 1 else "loose"
    by_modality: dict[str, list[Path]] = {}
    segs: list[Path] = []
    for r in roles:
        if r.kind == "seg":
            segs.append(r.path)
        else:
            by_modality.setdefault(r.modality or "", []).append(r.path)
    clashes = {m: ps for m, ps in by_modality.items() if len(ps) > 1}
    if clashes:
        text = "; ".join(
            f"{few(p.name for p in ps)} all map to {MODALITY_NAMES[m]}" for m, ps in clashes.items()
        )
        raise CaseError(
            f"Ambiguous modalities in {folder}: {text}. Keep one file per modality "
            f"({', '.join(MODALITY_NAMES[m] for m in MODALITIES)}) in a case folder."
        )
    if len(segs) > 1:
        raise CaseError(
            f"Folder {folder} holds {len(segs)} segmentations ({few(p.name for p in segs)}):"
            " keep one beside the scans, or move the others into a 'segmentations/' subfolder."
        )
    ids = [r.case_id for r in roles if r.case_id]
    case_id = ids[0] if ids and len(set(ids)) == 1 else folder.name
    files = CaseFiles(case_id, naming)
    files.images = {m: by_modality[m][0] for m in MODALITIES if m in by_modality}
    files.seg = segs[0] if segs else None
    files.extra_segs = extra + alternates
    files.unnamed = unnamed
    if masks:
        files.notes.append(f"Not used: {few(masks)} (a brain mask, not a scan or labels).")
    missing = [m for m in MODALITIES if m not in files.images]
    if missing and files.images:
        files.notes.append(
            f"Case {case_id!r} has no {', '.join(MODALITY_NAMES[m] for m in missing)} "
            f"(found {', '.join(p.name for p in files.images.values())})."
        )
    return files


def msd_case(path: Path) -> CaseFiles:
    """The files of one MSD Task01 case: a 4D image and its ``labelsTr`` twin, if present."""
    path = Path(path)
    channels, source, assumed = _msd_channels(path.parent)
    files = CaseFiles(nifti_stem(path), "msd", channel_source=source)
    if assumed is not None:
        files.notes.append(assumed)
    files.multichannel = (path, channels)
    labels_dir = _labels_dir_for(path.parent)
    if labels_dir is not None and (labels_dir / path.name).is_file():
        files.seg = labels_dir / path.name
    return files


def case_files_for_file(path: Path) -> CaseFiles:
    """Files of the case one file belongs to.

    A file of a flat nnU-Net folder brings its sibling channels and its ``labelsTr`` label map; a
    4D MSD file brings its ``labelsTr`` twin; any other file is a case of its own (one image, or a
    segmentation only).

    Raises
    ------
    CaseError
        If the file's name names no modality and it is not a 4D multi-channel volume.
    """
    path = Path(path)
    role = classify_file(path)
    if role.kind == "channel":
        siblings = [classify_file(p) for p in nifti_files(path.parent)]
        return _nnunet_case(path.parent, [r for r in siblings if r.kind == "channel"], role.case_id)
    probe = header_ndim_channels(path)
    if probe is not None and probe[0] == 4 and probe[1] > 1 and role.kind != "seg":
        return msd_case(path)
    case_id = role.case_id or nifti_stem(path)
    files = CaseFiles(case_id, "single" if role.naming in (None, "loose") else role.naming)
    if role.kind == "seg":
        files.seg = path
    elif role.kind == "image" and role.modality is not None:
        files.images[role.modality] = path
    elif role.kind == "brainmask":
        raise CaseError(
            f"{path.name} is a brain mask (skull stripping), not a scan or a tumour segmentation: "
            "open the case's scans."
        )
    else:
        raise CaseError(
            f"Cannot tell which modality {path.name} holds: its name ends in none of _t1, _t1ce, "
            "_t2, _flair, _seg (BraTS 2021), -t1n, -t1c, -t2w, -t2f, -seg (BraTS 2023), or an "
            "alias such as _fla, _t1gd, _T1C, and it is not a 4D multi-channel (MSD) volume."
        )
    return files


def case_files(path: str | Path) -> CaseFiles:
    """Files of the case at ``path`` (a case folder or one file).

    See :func:`case_files_in_folder` and :func:`case_files_for_file`.
    """
    path = Path(path)
    if path.is_dir():
        return case_files_in_folder(path)
    if path.is_file():
        return case_files_for_file(path)
    raise CaseError(f"{path} does not exist: expected a case folder or a .nii/.nii.gz file.")


def case_entries(folder: Path) -> list[Path]:
    """Paths that each open one case of ``folder`` (files for flat nnU-Net / MSD, else the folder).

    Returns an empty list if ``folder`` holds no NIfTI file directly. Label folders (``labelsTr``),
    segmentation subfolders and folders holding only label maps are not cases of their own.
    """
    folder = Path(folder)
    name = folder.name.lower()
    if name.startswith("labels") or name in SEGMENTATION_DIRS:
        return []
    files = nifti_files(folder)
    if not files:
        return []
    roles = [classify_file(p) for p in files]
    if all(r.kind in ("seg", "brainmask") for r in roles):
        # Label maps without scans (e.g. a folder of `brats-kd segment` outputs inside the
        # dataset) are not a case: listing the dataset must not fail on them.
        return []
    if all(r.kind == "channel" for r in roles):
        first: dict[str, Path] = {}
        for r in sorted(roles, key=lambda r: (r.case_id, r.channel or 0)):
            first.setdefault(r.case_id, r.path)
        return [first[k] for k in sorted(first)]
    if all(r.kind == "unknown" for r in roles):
        probes = [header_ndim_channels(r.path) for r in roles]
        if all(p is not None and p[0] == 4 and p[1] > 1 for p in probes):
            return list(files)
    _check_single_case(folder, roles)
    return [folder]


#: How deep :func:`iter_dirs` goes below the folder it was given (a dataset is 1-3 levels deep).
MAX_WALK_DEPTH = 12


def iter_dirs(root: Path) -> Iterable[Path]:
    """``root`` and its subfolders, depth-first in sorted order, skipping hidden folders.

    The walk stays inside ``root``: a symlink to a folder outside it (a curated dataset of links
    to an archive) is yielded but not descended into, so a link to ``/`` costs one listing, not
    a walk of the file system; a folder reached twice (a link loop such as ``loop -> .``) is
    yielded once; the walk stops :data:`MAX_WALK_DEPTH` levels down.
    """
    root = Path(root)
    try:
        top = root.resolve()
    except (OSError, RuntimeError):
        return
    seen: set[Path] = set()

    def walk(folder: Path, real: Path, depth: int) -> Iterable[Path]:
        seen.add(real)
        yield folder
        inside = real == top or top in real.parents
        if not inside or depth >= MAX_WALK_DEPTH:
            return
        try:
            subdirs = sorted(
                p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
            )
        except OSError:
            return
        for sub in subdirs:
            try:
                sub_real = sub.resolve()
            except (OSError, RuntimeError):  # a dangling or looping link
                continue
            if sub_real not in seen:
                yield from walk(sub, sub_real, depth + 1)

    yield from walk(root, top, 0)


__all__ = [
    "MAX_WALK_DEPTH",
    "CaseFiles",
    "case_entries",
    "case_files",
    "case_files_for_file",
    "case_files_in_folder",
    "channels_from_dataset_json",
    "expected_names",
    "find_dataset_json",
    "header_ndim_channels",
    "iter_dirs",
    "msd_case",
    "nifti_files",
]
