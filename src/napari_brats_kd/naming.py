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

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .labels import MODALITIES

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


# The case assembly moved to :mod:`.cases`; its names stay reachable here (``naming.case_files``),
# imported on first use so that the two modules do not import each other at load time.
_MOVED_TO_CASES = frozenset(
    {
        "CaseFiles",
        "MAX_WALK_DEPTH",
        "case_entries",
        "case_files",
        "case_files_for_file",
        "case_files_in_folder",
        "channels_from_dataset_json",
        "find_dataset_json",
        "header_ndim_channels",
        "iter_dirs",
        "msd_case",
        "nifti_files",
    }
)


def __getattr__(name: str):
    if name in _MOVED_TO_CASES:
        from . import cases

        return getattr(cases, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
