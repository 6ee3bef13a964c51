"""The cases of a training run and their split: discovery, the seeded or given split, stamps.

:func:`discover_cases` lists a data folder's cases (with the modalities each has), the split
puts each in train / val / test (:func:`make_split`, or a user's :func:`read_split`), and
:func:`case_stamp` fingerprints a case's scans so that caches know when a case changed.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CaseError, TrainingError


@dataclass
class CaseEntry:
    """One case of a dataset, as its file names describe it (nothing decoded yet).

    Attributes
    ----------
    case_id
        The case's identifier.
    path
        What :func:`~napari_brats_kd.io.load_case` reads.
    modalities
        Modalities its files provide.
    has_seg
        Whether it has a segmentation file.
    """

    case_id: str
    path: Path
    modalities: tuple[str, ...] = ()
    has_seg: bool = False


def discover_cases(data_dir: str | Path, max_cases: int | None = None) -> list[CaseEntry]:
    """The cases of a dataset folder, sorted by id.

    Raises
    ------
    TrainingError
        If the folder is missing or holds no case, or two cases share an id.
    """
    from ..io import find_cases
    from ..naming import case_files

    try:
        paths = find_cases(data_dir)
        entries = []
        for p in paths:
            files = case_files(p)
            mods = tuple(files.images) or (files.multichannel[1] if files.multichannel else ())
            entries.append(CaseEntry(files.case_id, Path(p), mods, files.seg is not None))
    except CaseError as exc:
        raise TrainingError(f"No usable training data under {data_dir}: {exc}") from exc
    ids = [e.case_id for e in entries]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise TrainingError(f"Case ids occur twice under {data_dir}: {dupes[:5]}.")
    entries.sort(key=lambda e: e.case_id)
    if max_cases is not None:
        entries = entries[: max(1, int(max_cases))]
    return entries


def make_split(
    case_ids: Sequence[str],
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> dict[str, list[str]]:
    """A seeded split ``{"train", "val", "test"}`` of case ids.

    At least one case is kept for training; validation gets at least one case when the fractions
    ask for any and there are two or more cases.
    """
    ids = sorted(case_ids)
    rng = random.Random(seed)
    rng.shuffle(ids)
    n = len(ids)
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * n)
    if val_fraction > 0 and n_val == 0 and n >= 2:
        n_val = 1
    n_test = min(n_test, max(0, n - 1 - n_val))
    n_val = min(n_val, n - 1 - n_test)
    test, val, train = ids[:n_test], ids[n_test : n_test + n_val], ids[n_test + n_val :]
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def read_split(path: str | Path, known_ids: Sequence[str]) -> dict[str, list[str]]:
    """Read a user's split JSON (``{"train": [...], "val": [...], "test": [...]}``).

    Raises
    ------
    TrainingError
        If the file is unreadable, lacks ``train``, names cases the dataset does not have, or
        lists a case twice (in one list, or in two: validating or testing on a training case
        would overstate the model's Dice).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainingError(f"Split file {path} cannot be read as JSON: {exc}") from exc
    if not isinstance(data, dict) or not data.get("train"):
        raise TrainingError(f"Split file {path} must map 'train' (and 'val', 'test') to case ids.")
    split = {k: sorted(str(i) for i in data.get(k, [])) for k in ("train", "val", "test")}
    for part, ids in split.items():
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise TrainingError(f"Split file {path} lists {twice[:5]} twice in '{part}'.")
    parts = list(split)
    for i, first in enumerate(parts):
        for second in parts[i + 1 :]:
            shared = sorted(set(split[first]) & set(split[second]))
            if shared:
                raise TrainingError(
                    f"Split file {path} puts {shared[:5]} in both '{first}' and '{second}': "
                    "each case belongs to one part, or its scores are measured on training data."
                )
    unknown = sorted(set().union(*split.values()) - set(known_ids))
    if unknown:
        raise TrainingError(
            f"Split file {path} names cases not found in the data folder: {unknown[:5]}."
        )
    return split


def write_split(split: dict[str, list[str]], path: str | Path) -> Path:
    """Write a split as JSON (atomically: a run folder never holds half a split)."""
    from .._files import atomic_write

    text = json.dumps(split, indent=1)
    return atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def case_stamp(path: str | Path) -> str:
    """A short hash of a case's image files: resolved paths, sizes and modification times.

    Its segmentation does not count (a corrected label does not change what a teacher sees).
    ``path`` is what :func:`~napari_brats_kd.io.load_case` reads.
    """
    from ..naming import case_files

    found = case_files(path)
    files = [*found.images.values(), *([found.multichannel[0]] if found.multichannel else [])]
    h = hashlib.sha256()
    for f in sorted(Path(f).resolve() for f in files):
        st = f.stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:10]


__all__ = ["CaseEntry", "case_stamp", "discover_cases", "make_split", "read_split", "write_split"]
