"""A corpus of bad inputs, generated here, run through the ``brats-kd`` command line as a user
would: every one must end in a clean one-line error (exit 2) or a correct result, without a
traceback, a hang or a silently wrong output.

Kinds: settings (``--set``, flags, ``--config`` files), model checkpoints (non-finite, integer
or absurdly sized weights, damaged files), damaged training states for ``--resume``, scans
that are no scans (blank, constant, binary, corrupt gzip), folders (links out of the dataset,
link loops, thousands of junk files) and volumes too large for memory. The full-disk faults
are in ``test_full_disk.py``.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from _cli_helpers import assert_clean_error, run_cli
from _model_helpers import tiny_student
from _training_settings import FAST, TINY

DATA_STEMS = ("t1", "t1ce", "t2", "flair")


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------

#: (``--set`` pairs or flags, a word the message must hold: the setting's name)
BAD_SETTINGS: list[tuple[list[str], str]] = [
    (["--set", "augment.noise_prob=abc"], "augment.noise_prob"),
    (["--set", "augment.noise_prob=1.5"], "augment.noise_prob"),
    (["--set", "augment.gamma=[2.0,1.0]"], "augment.gamma"),
    (["--set", "augment.gamma=3"], "augment.gamma"),
    (["--set", "augment.preset=extreme"], "preset"),
    (["--set", "augment.flip_prob=true"], "augment.flip_prob"),
    (["--set", "batch_size=[1,2]"], "batch_size"),
    (["--set", "batch_size=0"], "batch_size"),
    (["--set", "batch_size=2.5"], "batch_size"),
    (["--set", "patch_size=5"], "patch_size"),
    (["--set", "patch_size=[0,0,0]"], "patch_size"),
    (["--set", "patch_size=[64,64]"], "patch_size"),
    (["--set", "patch_size=[100000,64,64]"], "patch_size"),
    (["--set", "val_roi_size=[0,0,0]"], "val_roi_size"),
    (["--set", "steps_per_epoch=-3"], "steps_per_epoch"),
    (["--set", "epochs=0"], "epochs"),
    (["--set", "epochs=ten"], "epochs"),
    (["--set", "lr=inf"], "lr"),
    (["--set", "lr=.nan"], "lr"),
    (["--set", "lr=-1e-3"], "lr"),
    (["--set", "weight_decay=-1"], "weight_decay"),
    (["--set", "seed=-1"], "seed"),
    (["--set", "max_minutes=-5"], "max_minutes"),
    (["--set", "val_fraction=1"], "val_fraction"),
    (["--set", "val_fraction=0.6", "--set", "test_fraction=0.5"], "test_fraction"),
    (["--set", "schedule=linear"], "schedule"),
    (["--set", "cache=ram"], "cache"),
    (["--set", "amp=maybe"], "amp"),
    (["--set", "model.kind=teacherx"], "model.kind"),
    (["--set", "model.arch_args=5"], "model.arch_args"),
    (["--set", "epochz=3"], "epochz"),
    (["--set", "epochs"], "key=value"),
    (["--set", "augment.noise_prob.x=1"], "augment.noise_prob"),
    (["--num-workers", "-1"], "num_workers"),
    (["--batch-size", "-2"], "batch_size"),
    (["--epochs", "0"], "epochs"),
    (["--lr", "inf"], "lr"),
    (["--device", "tpu"], "tpu"),
    (["--device", "cuda:7"], "cuda"),
]

BAD_DISTILL_SETTINGS: list[tuple[list[str], str]] = [
    (["--set", "alpha=2"], "alpha"),
    (["--set", "temperature=0"], "temperature"),
    (["--set", "kd_dice_weight=-1"], "kd_dice_weight"),
    (["--set", "teacher_targets=sometimes"], "teacher_targets"),
    (["--set", "unlabeled_weight=-1"], "unlabeled_weight"),
    (["--set", "kd_label_correction=7"], "kd_label_correction"),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three coarse phantom cases (8 mm: a few thousand voxels each)."""
    from napari_brats_kd.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("dataset")
    write_phantom_dataset(root, n=3, seed=0, spacing=8)
    return root


@pytest.mark.parametrize(("flags", "word"), BAD_SETTINGS, ids=lambda v: str(v))
def test_a_bad_training_setting_is_named(flags, word, dataset, tmp_path, capsys) -> None:
    argv = ["train", str(dataset), "--out", str(tmp_path / "t.safetensors"), *flags]
    assert_clean_error(argv, capsys, word)
    assert not (tmp_path / "t.safetensors").exists()


@pytest.mark.parametrize(("flags", "word"), BAD_DISTILL_SETTINGS, ids=lambda v: str(v))
def test_a_bad_distillation_setting_is_named(flags, word, dataset, tmp_path, capsys) -> None:
    argv = ["distill", str(dataset), "--teacher", "teacher", "--out", str(tmp_path / "s"), *flags]
    assert_clean_error(argv, capsys, word)


def _config_files(folder: Path) -> dict[str, Path]:
    files = {
        "binary": b"\x00\xff\x13\x37" * 64,
        "list": b"- epochs\n- 3\n",
        "python tag": b"epochs: !!python/object/apply:os.system ['echo pwned']\n",
        "bad yaml": b"epochs: [1, 2\n",
        "not utf-8": "epochs: 3 # caf\u00e9\n".encode("latin-1"),
    }
    out = {}
    for name, data in files.items():
        path = folder / f"{name.replace(' ', '_')}.yaml"
        path.write_bytes(data)
        out[name] = path
    out["missing"] = folder / "no_such.yaml"
    out["a folder"] = folder
    return out


@pytest.mark.parametrize(
    "which", ["binary", "list", "python tag", "bad yaml", "not utf-8", "missing", "a folder"]
)
def test_a_bad_config_file_is_refused(which, dataset, tmp_path, capsys) -> None:
    config = _config_files(tmp_path)[which]
    argv = ["train", str(dataset), "--config", str(config), "--out", str(tmp_path / "t")]
    assert_clean_error(argv, capsys, "config")
    assert not list(Path(".").glob("pwned*"))


def test_a_path_setting_is_not_read_as_yaml(dataset, tmp_path) -> None:
    """``--out "a: 1"`` names a file: flags are handed over typed, not re-parsed as YAML."""
    import argparse

    from napari_brats_kd.cli import _training_overrides
    from napari_brats_kd.training import load_config

    args = argparse.Namespace(
        data_dir="2021", out=str(tmp_path / "run: 1.safetensors"), run_dir=None, epochs=None,
        max_minutes=None, batch_size=None, patch_size=None, lr=None, device=None,
        num_workers=None, augment=None, seed=None, split=None, overrides=["epochs=3"],
    )  # fmt: skip
    cfg = load_config("teacher", _training_overrides(args, {}))
    assert cfg.out == str(tmp_path / "run: 1.safetensors")
    assert cfg.data_dir == "2021" and cfg.epochs == 3


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def _tiny_checkpoint(folder: Path) -> Path:
    from napari_brats_kd.models import save_checkpoint

    loaded = tiny_student()
    return save_checkpoint(folder / "tiny.safetensors", loaded.model, loaded.config)


def _rewrite(path: Path, out: Path, tensors=None, config=None) -> Path:
    """A copy of checkpoint ``path`` with some tensors or its config replaced."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from napari_brats_kd.models.header import META_CONFIG

    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    if tensors is not None:
        state = tensors(state)
    if config is not None:
        metadata[META_CONFIG] = json.dumps(config(json.loads(metadata[META_CONFIG])))
    save_file(state, str(out), metadata=metadata)
    return out


def _bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, a word of the message)."""
    import torch

    good = _tiny_checkpoint(folder)

    def nan_weights(state):
        return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                for k, v in state.items()}  # fmt: skip

    def one_inf(state):
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name] = state[name].clone()
        state[name].view(-1)[0] = float("inf")
        return state

    def integer_weights(state):
        return {k: v.to(torch.int32) if v.is_floating_point() else v for k, v in state.items()}

    def wide(cfg):
        return {**cfg, "arch_args": {**cfg["arch_args"], "init_filters": 10**9}}

    def deep(cfg):
        return {**cfg, "arch_args": {**cfg["arch_args"], "blocks_down": [1] * 10**6}}

    def huge(cfg):  # 1.2 G parameters: 4.5 GiB of weights
        args = {**cfg["arch_args"], "init_filters": 256, "blocks_down": [1, 2, 2, 4]}
        return {**cfg, "arch_args": args}

    out = {
        "nan weights": (_rewrite(good, folder / "nan.safetensors", nan_weights), "not finite"),
        "one inf": (_rewrite(good, folder / "inf.safetensors", one_inf), "not finite"),
        "integer weights": (_rewrite(good, folder / "int.safetensors", integer_weights), "integer"),
        "10^9 filters": (_rewrite(good, folder / "wide.safetensors", config=wide), "init_filters"),
        "10^6 blocks": (_rewrite(good, folder / "deep.safetensors", config=deep), "blocks"),
        "1.2 G parameters": (
            _rewrite(good, folder / "huge.safetensors", config=huge),
            "parameters",
        ),
    }
    data = good.read_bytes()
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    junk = folder / "junk.safetensors"
    junk.write_bytes(os.urandom(4096))
    empty = folder / "empty.safetensors"
    empty.write_bytes(b"")
    out.update(
        {
            "truncated": (truncated, "truncated"),
            "random bytes": (junk, "junk.safetensors"),
            "empty": (empty, "empty.safetensors"),
        }
    )
    return out


CHECKPOINT_KINDS = [
    "nan weights", "one inf", "integer weights", "10^9 filters", "10^6 blocks",
    "1.2 G parameters", "truncated", "random bytes", "empty",
]  # fmt: skip


@pytest.fixture(scope="module")
def case_folder(tmp_path_factory) -> Path:
    """One 4 mm phantom case, BraTS 2021-named."""
    from napari_brats_kd.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("case")
    return write_phantom_dataset(root, n=1, seed=3, spacing=4)[0]


@pytest.mark.parametrize("kind", CHECKPOINT_KINDS)
def test_a_bad_checkpoint_is_refused_by_segment(kind, case_folder, tmp_path, capsys) -> None:
    path, word = _bad_checkpoints(tmp_path)[kind]
    out = tmp_path / "seg.nii.gz"
    argv = ["segment", str(case_folder), "-o", str(out), "--model", str(path)]
    assert_clean_error(argv, capsys, word)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["nan weights", "integer weights", "10^9 filters", "truncated"])
def test_a_bad_checkpoint_is_refused_by_export_and_training(
    kind, dataset, tmp_path, capsys
) -> None:
    path, word = _bad_checkpoints(tmp_path)[kind]
    assert_clean_error(["export", str(path), "--onnx", str(tmp_path / "m.onnx")], capsys, word)
    assert not (tmp_path / "m.onnx").exists()
    argv = ["train", str(dataset), "--init-from", str(path), "--out", str(tmp_path / "t")]
    assert_clean_error(argv, capsys, word)


def test_a_step_that_breaks_the_weights_stops_training_with_advice() -> None:
    """A step whose update makes the weights non-finite stops the run in words (the issue's
    ``--lr inf`` finished and wrote 83 NaN tensors; ``lr`` is now refused above 10, and a run
    that diverges anyway stops here), and such weights are never written."""
    import torch

    from napari_brats_kd.errors import CheckpointError, TrainingError
    from napari_brats_kd.models import save_checkpoint
    from napari_brats_kd.training.engine import train_step
    from napari_brats_kd.training.losses import SupervisedLoss

    loaded = tiny_student()
    model = loaded.model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e38)
    batch = {
        "image": torch.randn(1, 4, 16, 16, 16),
        "label": (torch.rand(1, 3, 16, 16, 16) > 0.5).float(),
        "labelled": torch.ones(1),
    }
    with pytest.raises(TrainingError, match=r"diverged.*learning rate"):
        for _ in range(3):
            train_step(model, optimizer, SupervisedLoss(), batch, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="not finite"):
        save_checkpoint(Path("never.safetensors"), model, loaded.config)
    assert not Path("never.safetensors").exists()


# --------------------------------------------------------------------------------------------------
# A damaged training state
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(dataset, tmp_path_factory) -> Path:
    from napari_brats_kd.training import load_config, train_teacher

    run = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config(
        "teacher",
        [f"data_dir={dataset}", f"run_dir={run}", f"model.arch_args={json.dumps(TINY)}", *FAST,
         "cache=none", "val_fraction=0.34"],
    )  # fmt: skip
    train_teacher(cfg)
    assert (run / "last_state.pt").is_file()
    return run


def _damage_state(run: Path, kind: str) -> None:
    import torch

    state_file = run / "last_state.pt"
    good = state_file.read_bytes()
    if kind == "truncated":
        state_file.write_bytes(good[: len(good) // 3])
    elif kind == "random bytes":
        state_file.write_bytes(os.urandom(2048))
    elif kind == "empty":
        state_file.write_bytes(b"")
    elif kind == "pickle payload":
        import pickle

        class Payload:
            def __reduce__(self):
                return (os.system, ("echo pwned > pwned.txt",))

        torch.save({"model": Payload()}, state_file, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    else:
        state = torch.load(state_file, weights_only=True)
        if kind == "wrong shapes":
            state["model"] = {k: torch.zeros(3, 3) for k in state["model"]}
        elif kind == "missing entries":
            del state["optimizer"], state["rng"]
        elif kind == "nan weights":
            state["model"] = {k: v.float() * float("nan") for k, v in state["model"].items()}
        torch.save(state, state_file)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    ["truncated", "random bytes", "empty", "pickle payload", "wrong shapes", "missing entries",
     "nan weights"],
)  # fmt: skip
def test_a_damaged_training_state_is_a_checkpoint_error(kind, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    _damage_state(run, kind)
    line = assert_clean_error(["train", "--resume", str(run), "--epochs", "2"], capsys)
    assert "last_state.pt" in line and "cannot resume" in line.lower()
    assert not Path("pwned.txt").exists()


@pytest.mark.slow
def test_a_killed_runs_temporary_files_are_removed_at_its_next_start(finished_run, tmp_path):
    from napari_brats_kd.training import resume_run

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    stale = [run / ".last_state.pt.a1b2c3.tmp", run / ".best.safetensors.x9y8.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    keep = run / "notes.tmp"  # not a name the product writes: left alone
    keep.write_text("mine")
    resume_run(run, ["epochs=2"])
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


# --------------------------------------------------------------------------------------------------
# Scans that are no scans
# --------------------------------------------------------------------------------------------------


def _case_with(folder: Path, src: Path, stem: str, change: Callable[[np.ndarray], np.ndarray]):
    shutil.copytree(src, folder)
    path = next(folder.glob(f"*_{stem}.nii.gz"))
    img = nib.load(str(path))
    data = change(np.asanyarray(img.dataobj))
    header = img.header.copy()
    header.set_data_dtype(data.dtype)
    nib.save(nib.Nifti1Image(data, img.affine, header), str(path))
    return folder


SCAN_FAULTS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray], str]] = {
    "blank T1c": ("t1ce", np.zeros_like, "blank"),
    "constant T1c": ("t1ce", lambda a: np.full_like(a, 100), "constant"),
    "binary T1c (0/255)": ("t1ce", lambda a: np.where(a > np.median(a), 255, 0).astype(a.dtype),
                           "two values"),
    "blank FLAIR": ("flair", np.zeros_like, "blank"),
    "NaN voxels in T2": ("t2", lambda a: np.where(a > np.median(a), np.nan, a).astype(np.float32),
                         "NaN"),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(SCAN_FAULTS))
def test_a_scan_that_is_no_scan_is_named(fault, case_folder, tmp_path, capsys) -> None:
    stem, change, word = SCAN_FAULTS[fault]
    case = _case_with(tmp_path / case_folder.name, case_folder, stem, change)
    out = tmp_path / "seg.nii.gz"
    name = {"t1ce": "T1c", "flair": "FLAIR", "t2": "T2"}[stem]
    assert_clean_error(["segment", str(case), "-o", str(out)], capsys, word, name)
    assert not out.exists()


def test_a_flipped_byte_in_a_gzip_stream_is_refused(case_folder, tmp_path, capsys) -> None:
    case = tmp_path / case_folder.name
    shutil.copytree(case_folder, case)
    path = next(case.glob("*_t2.nii.gz"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert_clean_error(["segment", str(case), "-o", str(tmp_path / "s.nii.gz")], capsys, "t2")


def test_a_good_case_still_segments(case_folder, tmp_path, capsys) -> None:
    out = tmp_path / "seg.nii.gz"
    rc, _, err = run_cli(["segment", str(case_folder), "-o", str(out)], capsys)
    assert rc == 0, err
    assert set(np.unique(np.asanyarray(nib.load(str(out)).dataobj))) <= {0, 1, 2, 4}


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


def test_a_link_to_the_root_is_not_walked(case_folder, tmp_path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(case_folder, data / case_folder.name)
    (data / "everything").symlink_to("/")
    from napari_brats_kd.io import find_cases

    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(cases=find_cases(data)), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "find_cases walked the file system"
    assert box["cases"] == [data / case_folder.name]
    rc, _, err = run_cli(["segment", str(data), "-o", str(tmp_path / "pred")], capsys)
    assert rc == 0, err
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 1


def test_a_link_loop_is_one_case_not_many(case_folder, tmp_path) -> None:
    from napari_brats_kd.io import find_cases

    data = tmp_path / "data"
    shutil.copytree(case_folder, data / case_folder.name)
    (data / case_folder.name / "loop").symlink_to(".")
    (data / "up").symlink_to("..")
    assert find_cases(data) == [data / case_folder.name]


def test_a_folder_of_ten_thousand_junk_files_gives_one_short_line(tmp_path, capsys) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(10_000):
        (junk / f"file{i:05d}.nii.gz").touch()
    line = assert_clean_error(["segment", str(junk), "-o", str(tmp_path / "o")], capsys)
    assert len(line) < 600, len(line)


def test_an_empty_file_named_like_a_case_is_refused(tmp_path, capsys) -> None:
    case = tmp_path / "BraTS2021_00001"
    case.mkdir()
    for stem in DATA_STEMS:
        (case / f"BraTS2021_00001_{stem}.nii.gz").write_bytes(gzip.compress(b""))
    assert_clean_error(["segment", str(case), "-o", str(tmp_path / "s.nii.gz")], capsys)


# --------------------------------------------------------------------------------------------------
# Sizes from a header or a flag
# --------------------------------------------------------------------------------------------------


def test_a_phantom_too_fine_for_memory_is_refused_with_the_figure(tmp_path, capsys) -> None:
    line = assert_clean_error(
        ["phantom", str(tmp_path / "p"), "--n", "1", "--spacing", "0.01"], capsys, "GiB"
    )
    assert "spacing" in line
    assert not list(tmp_path.rglob("*.nii.gz"))


def test_a_header_claiming_a_huge_volume_is_refused(tmp_path, capsys) -> None:
    case = tmp_path / "BraTS2021_00002"
    case.mkdir()
    for stem in DATA_STEMS:
        header = nib.Nifti1Header()
        header.set_data_shape((30000, 30000, 20000))
        header.set_data_dtype(np.float32)
        raw = header.binaryblock + b"\0" * 4 + b"\0" * 1024
        (case / f"BraTS2021_00002_{stem}.nii.gz").write_bytes(gzip.compress(raw))
    assert_clean_error(["segment", str(case), "-o", str(tmp_path / "s.nii.gz")], capsys)
