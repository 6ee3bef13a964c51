"""File naming: which file of a case folder holds which modality, in every BraTS-style layout.

Four published layouts and the loose names found in the wild are recognised:

- ``"brats2021"`` (BraTS 2018-2021): ``<case>_t1``, ``_t1ce``, ``_t2``, ``_flair``, ``_seg``;
- ``"brats2023"`` (BraTS 2023+): ``<case>-t1n``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``, and the bare
  ``t1n``, ``t1c``, ``t2w``, ``t2f`` (the case id is then the folder's name);
- ``"nnunet"`` (nnU-Net raw): ``<case>_0000`` .. ``_0003``, channel names from a ``dataset.json``
  (v1 ``"modality"`` or v2 ``"channel_names"``) or, without one, T1, T1ce, T2, FLAIR; labels in
  ``labelsTr/<case>.nii.gz`` beside ``imagesTr``;
- ``"msd"`` (Medical Segmentation Decathlon Task01): one 4D file per case, channels FLAIR, T1w,
  T1gd, T2w (or as its ``dataset.json`` says), labels in ``labelsTr/`` under the same name;
- ``"loose"``: anything else whose suffix names a modality (``_fla``, ``flair``, ``t1gd``, ``T1C``,
  ``_bet`` suffixes, upper case) or a segmentation (``seg``, ``label``, ``mask``, ...), plus a
  ``segmentations/`` subfolder of algorithm outputs offered as extra label maps.

This module decides from names (and, for 4D MSD files, from the NIfTI header alone); it never reads
voxel data. :mod:`napari_brats_kd.io` loads what it finds. Anything it cannot assign unambiguously
raises :class:`~napari_brats_kd.errors.CaseError` naming the files and what was expected.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CaseError, few
from .labels import MODALITIES, MODALITY_NAMES

#: Naming conventions a case can be found in (also the ``naming`` of a :class:`~.volume.Case`).
NAMINGS: tuple[str, ...] = ("brats2021", "brats2023", "nnunet", "msd", "loose")

#: NIfTI file endings, longest first so that ``.nii.gz`` wins over ``.gz``.
NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")

#: Exact suffix tokens of the two official BraTS namings.
BRATS2021_TOKENS: dict[str, str] = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "flair"}
BRATS2023_TOKENS: dict[str, str] = {"t1n": "t1", "t1c": "t1c", "t2w": "t2", "t2f": "flair"}

#: nnU-Net channel order when no dataset.json says otherwise (Dataset137_BraTS21).
NNUNET_DEFAULT_CHANNELS: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
#: MSD Task01_BrainTumour channel order (its dataset.json: FLAIR, T1w, t1gd, T2w).
MSD_DEFAULT_CHANNELS: tuple[str, ...] = ("flair", "t1", "t1c", "t2")

# Aliases after lower-casing and dropping every non-alphanumeric character ("T1-Gd" -> "t1gd").
_MODALITY_ALIASES: dict[str, str] = {}
for _key, _aliases in {
    "t1": ("t1", "t1n", "t1w", "t1wi", "t1native", "t1pre", "t1precontrast", "t1weighted", "t1nc"),
    "t1c": (
        "t1c", "t1ce", "t1gd", "t1post", "t1wce", "t1wc", "t1wgd", "t1wpost", "t1postcontrast",
        "t1contrast", "t1cgd", "t1gad", "t1ceg", "t1wcontrast",
    ),
    "t2": ("t2", "t2w", "t2wi", "t2weighted"),
    "flair": ("flair", "fla", "t2f", "t2flair", "t2wflair", "flairt2", "t2weightedflair"),
}.items():  # fmt: skip
    for _alias in _aliases:
        _MODALITY_ALIASES[_alias] = _key

# Processing tags that follow the modality in real-world names ("_fla_bet", "t1_brain_n4").
_NOISE_TOKENS: frozenset[str] = frozenset(
    {
        "bet", "brain", "skullstripped", "stripped", "ss", "reg", "registered", "coreg", "n4",
        "n4corrected", "biascorr", "corrected", "norm", "normalized", "normalised", "preproc",
        "preprocessed", "sri", "sri24", "resampled", "std", "final", "native",
    }
)  # fmt: skip

# Name endings of brain / head masks (skull stripping): neither a modality nor a tumour
# segmentation, so a case folder passes over them (a mask read as labels would be a "tumour"
# filling the brain). Compared on the last tokens joined: "_brainmask", "_brain_mask", "-bet_mask".
_BRAIN_MASK_ENDINGS: frozenset[str] = frozenset(
    {"brainmask", "betmask", "skullmask", "skullstripmask", "headmask", "brainseg", "bm"}
)

# Name tokens that mark a segmentation file.
_SEG_TOKENS: frozenset[str] = frozenset(
    {
        "seg", "segs", "segmentation", "segmentations", "label", "labels", "labelmap", "mask",
        "gt", "groundtruth", "truth", "annotation", "annotations", "pred", "prediction", "tumor",
        "tumour", "tumormask", "tumourmask",
    }
)  # fmt: skip

# Subfolders of a case folder whose NIfTI files are extra segmentations (algorithm outputs).
SEGMENTATION_DIRS: frozenset[str] = frozenset(
    {"segmentations", "segmentation", "seg", "segs", "labels", "masks", "predictions", "preds"}
)

_TOKEN_RE = re.compile(r"[A-Za-z0-9]+")
_NNUNET_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_BRATS2023_RE = re.compile(r"^(?P<case>.+)-(?P<token>t1n|t1c|t2w|t2f|seg)$")
_BRATS2021_RE = re.compile(r"^(?P<case>.+)_(?P<token>t1|t1ce|t2|flair|seg)$")


def _normalise(token: str) -> str:
    return re.sub(r"[^a-z0-9]", "", token.lower())


def modality_from_token(token: str) -> str | None:
    """Canonical modality key of a name token, or ``None`` if it names no modality.

    Parameters
    ----------
    token
        A suffix such as ``"t1ce"``, ``"T1C"``, ``"t2f"``, ``"fla_bet"``, ``"T1-Gd"`` or
        ``"t2flair"``. Case, separators and processing tags (``bet``, ``brain``, ``n4``...) are
        ignored.

    Returns
    -------
    str or None
        One of :data:`~napari_brats_kd.labels.MODALITIES` (``"t1"``, ``"t1c"``, ``"t2"``,
        ``"flair"``), or ``None``.
    """
    parts = [p.lower() for p in _TOKEN_RE.findall(token)]
    kept = [p for p in parts if p not in _NOISE_TOKENS]
    if not kept:
        return None
    return _MODALITY_ALIASES.get("".join(kept))


def parse_modalities(text: str | Sequence[str]) -> tuple[str, ...]:
    """Parse a modality list such as ``"t1c,flair"`` into canonical keys.

    Parameters
    ----------
    text
        Comma-separated string or sequence of modality names. Common aliases
        (``t1ce``, ``t1gd``, ``fla``, ``t2f``, ``t1n``, ``t2w``) are accepted, case-insensitively.

    Returns
    -------
    tuple of str
        Canonical keys (members of :data:`MODALITIES`), in the order given.

    Raises
    ------
    ValueError
        If a name is not a known modality or appears twice.
    """
    items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
    out: list[str] = []
    for item in items:
        if not item:
            continue
        key = modality_from_token(item)
        if key is None:
            raise ValueError(
                f"Unknown modality {item!r}: expected one of {', '.join(MODALITIES)} "
                "(aliases such as t1ce, t1gd, fla, t2f, t1n, t2w are accepted)."
            )
        if key in out:
            raise ValueError(f"Modality {key!r} is listed twice in {text!r}.")
        out.append(key)
    if not out:
        raise ValueError("No modality given: expected e.g. 't1c,flair'.")
    return tuple(out)


def is_seg_token(token: str) -> bool:
    """Whether a name token marks a segmentation (``seg``, ``label``, ``mask``, ``gt``, ...)."""
    parts = [p.lower() for p in _TOKEN_RE.findall(token)]
    kept = [p for p in parts if p not in _NOISE_TOKENS]
    return bool(kept) and (kept[-1] in _SEG_TOKENS or "".join(kept) in _SEG_TOKENS)


def is_nifti_name(path: str | Path) -> bool:
    """Whether a file name ends in ``.nii`` or ``.nii.gz`` (any case)."""
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in NIFTI_SUFFIXES) and not name.startswith(".")


def nifti_stem(path: str | Path) -> str:
    """File name without its ``.nii`` / ``.nii.gz`` ending."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


@dataclass(frozen=True)
class FileRole:
    """What one file's name says it holds.

    Attributes
    ----------
    path
        The file.
    kind
        ``"image"`` (one modality), ``"seg"`` (a segmentation), ``"channel"`` (an nnU-Net
        ``_0000``-style channel file), ``"brainmask"`` (a skull-stripping mask, not used) or
        ``"unknown"``.
    modality
        Canonical modality key for ``"image"`` files.
    case_id
        The name with the modality / channel suffix removed (``""`` if nothing is left).
    naming
        ``"brats2021"``, ``"brats2023"``, ``"nnunet"`` or ``"loose"`` (``None`` if unknown).
    channel
        Channel index for ``"channel"`` files.
    """

    path: Path
    kind: str
    modality: str | None = None
    case_id: str = ""
    naming: str | None = None
    channel: int | None = None


def classify_file(path: str | Path) -> FileRole:
    """Decide from its name what a NIfTI file holds (no file access).

    Parameters
    ----------
    path
        A ``.nii`` / ``.nii.gz`` file name.

    Returns
    -------
    FileRole
    """
    path = Path(path)
    stem = nifti_stem(path)
    m = _NNUNET_RE.match(stem)
    if m:
        return FileRole(path, "channel", None, m["case"], "nnunet", int(m["channel"]))
    for regex, naming, table in (
        (_BRATS2023_RE, "brats2023", BRATS2023_TOKENS),
        (_BRATS2021_RE, "brats2021", BRATS2021_TOKENS),
    ):
        m = regex.match(stem)
        if m:
            if m["token"] == "seg":
                return FileRole(path, "seg", None, m["case"], naming)
            return FileRole(path, "image", table[m["token"]], m["case"], naming)
    if stem.lower() in BRATS2023_TOKENS:
        # A bare BraTS 2023 name (`t1n.nii.gz`, `t2f.nii.gz`: the case id is the folder's): the
        # 2023 naming, so its label convention (ET = 3), not a loose name.
        return FileRole(path, "image", BRATS2023_TOKENS[stem.lower()], "", "brats2023")
    # Loose names: look at the last few tokens, after dropping processing tags such as "_bet".
    spans = [(mt.start(), mt.group().lower()) for mt in _TOKEN_RE.finditer(stem)]
    for n in (1, 2):
        if len(spans) >= n and "".join(tok for _, tok in spans[-n:]) in _BRAIN_MASK_ENDINGS:
            case_id = stem[: spans[-n][0]].rstrip("-_. ")
            return FileRole(path, "brainmask", None, case_id, "loose")
    while spans and spans[-1][1] in _NOISE_TOKENS:
        spans.pop()
    if not spans:
        return FileRole(path, "unknown")
    # Longest suffix first: "t2_flair" is FLAIR, not T2 followed by junk.
    for n in range(min(3, len(spans)), 0, -1):
        joined = "".join(tok for _, tok in spans[-n:])
        case_id = stem[: spans[-n][0]].rstrip("-_. ")
        key = _MODALITY_ALIASES.get(joined)
        if key is not None:
            return FileRole(path, "image", key, case_id, "loose")
        if joined in _SEG_TOKENS:
            return FileRole(path, "seg", None, case_id, "loose")
    return FileRole(path, "unknown", case_id=stem)


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


def _expected_names(case_id: str, naming: str) -> str:
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
