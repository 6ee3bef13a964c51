"""training/engine.py on tiny phantoms: teacher, distillation, fine-tuning, out of memory, bad
input (stop/resume and the time budget: test_loop.py; the CLI: test_cli_training.py)."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from _training_runs import _distill_cfg, _teacher_cfg
from _training_settings import FAST, TINY
from napari_brats_kd.errors import ResourceError, TrainingError
from napari_brats_kd.models import load_checkpoint, save_checkpoint, teacher_config
from napari_brats_kd.training import (
    DistillConfig,
    TrainConfig,
    distill,
    fine_tune,
    load_config,
    train_teacher,
)

torch.set_num_threads(2)


@pytest.mark.slow
def test_teacher_run_writes_checkpoints_log_and_split(teacher_ckpt) -> None:
    run = teacher_ckpt.parent / "run"
    for name in ("best.safetensors", "last.safetensors", "last_state.pt", "config.yaml"):
        assert (run / name).is_file(), name
    loaded = load_checkpoint(run / "last.safetensors")
    assert loaded.config.modalities == ("t1c", "t1", "t2", "flair")
    assert loaded.config.provenance["kind"] == "train"
    assert set(load_checkpoint(teacher_ckpt).config.metrics["val_dice"]) == {"TC", "WT", "ET"}
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert float(rows[1]["val_mean_dice"]) >= 0.0 and float(rows[0]["patches_per_s"]) > 0
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 2 and len(split["val"]) == 1
    assert not set(split["train"]) & set(split["val"])
    state = torch.load(run / "last_state.pt", weights_only=True)  # plain tensors and dicts only
    assert state["epoch"] == 2
    # The training config is readable again and equals what ran.
    again = load_config(run / "config.yaml")
    assert again.epochs == 2 and again.model.arch_args == TINY


@pytest.mark.slow
def test_distill_labelled_unlabelled_cross_modal(data_dir, teacher_ckpt, tmp_path) -> None:
    cfg = load_config(
        "distill",
        [
            f"data_dir={data_dir / 'siteA'}",
            f"run_dir={tmp_path / 'run'}",
            f"out={tmp_path / 'student.safetensors'}",
            f"teacher={teacher_ckpt}",
            f"unlabeled_dir={data_dir / 'siteB'}",
            "model.arch=student-tiny",
            "model.modalities=[t1c,flair]",
            "alpha=0.5",
            "temperature=2.0",
            "kd_label_correction=true",
            "val_fraction=0.34",
            *FAST,
            "steps_per_epoch=2",
            "batch_size=2",
        ],
    )
    assert isinstance(cfg, DistillConfig)
    result = distill(cfg)
    student = load_checkpoint(result.out)
    assert student.config.modalities == ("t1c", "flair")
    assert student.config.arch == "student"
    assert student.config.provenance["n_unlabeled"] == 2
    assert student.config.provenance["teacher"]
    assert student.config.provenance["kd_label_correction"] is True
    row = result.history[0]
    assert row["kd"] > 0 and row["supervised"] > 0
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["unlabeled"]) == 2
    x = torch.zeros(1, 2, 32, 32, 32)
    assert student.model(x).shape == (1, 3, 32, 32, 32)


@pytest.mark.slow
def test_distillation_draws_unlabelled_cases_by_unlabeled_weight(
    data_dir, teacher_ckpt, tmp_path, monkeypatch
) -> None:
    from napari_brats_kd.training import engine

    labelled: list[bool] = []
    real_step = engine.train_step

    def recording_step(model, optimizer, loss_fn, batch, *args):
        labelled.extend(bool(v) for v in torch.as_tensor(batch["labelled"]).reshape(-1))
        return real_step(model, optimizer, loss_fn, batch, *args)

    monkeypatch.setattr(engine, "train_step", recording_step)
    for weight, run in ((0.0, "none"), (50.0, "mostly")):
        labelled.clear()
        cfg = _distill_cfg(
            data_dir, teacher_ckpt, tmp_path / run, f"unlabeled_weight={weight}",
            "steps_per_epoch=4", "samples_per_case=1",
        )  # fmt: skip
        distill(cfg)
        assert len(labelled) == 4
        if weight == 0:
            assert all(labelled)  # the unlabelled site is never drawn
        else:
            assert sum(labelled) <= 1  # 1 labelled per 50 unlabelled


@pytest.mark.slow
def test_fine_tune_freezes_encoder(data_dir, teacher_ckpt, tmp_path) -> None:
    before = load_checkpoint(teacher_ckpt).model.state_dict()
    result = fine_tune(
        teacher_ckpt,
        data_dir / "siteB",
        [f"run_dir={tmp_path / 'run'}", *FAST, "val_fraction=0.5", "pretrained_lr_factor=0.1"],
    )
    after = load_checkpoint(result.last_checkpoint)
    assert after.config.provenance["kind"] == "finetune"
    state = after.model.state_dict()
    enc = [k for k in state if k.startswith("down_layers.") and k.endswith("weight")]
    dec = [k for k in state if k.startswith("up_layers.") and k.endswith("conv1.conv.weight")]
    assert enc and dec
    assert all(torch.equal(before[k], state[k]) for k in enc)
    assert any(not torch.equal(before[k], state[k]) for k in dec)


@pytest.mark.slow
def test_fine_tune_from_a_monai_bundle(data_dir, tmp_path) -> None:
    from _bundles import write_bundle
    from napari_brats_kd.models import build_model

    net = build_model(teacher_config(**TINY))
    bundle = write_bundle(tmp_path / "brats_mri_segmentation", net, TINY)
    out = tmp_path / "tuned.safetensors"
    overrides = [*FAST, f"run_dir={tmp_path / 'run'}", f"out={out}", "val_fraction=0.34"]
    result = fine_tune(bundle, data_dir / "siteA", overrides)
    tuned = load_checkpoint(result.out)
    assert tuned.config.arch == "segresnet" and tuned.config.provenance["init_from"] == str(bundle)
    before, after = net.state_dict(), tuned.model.state_dict()
    # Started from the bundle's weights: its frozen encoder is still exactly the bundle's.
    enc = [k for k in before if k.startswith(("convInit.", "down_layers."))]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("conv_final"))


# ------------------------------------------------------------------------------------ bad input
def test_empty_folder_raises(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    cfg = TrainConfig(data_dir=str(tmp_path / "empty"), run_dir=str(tmp_path / "run"))
    with pytest.raises(TrainingError, match="No usable training data"):
        train_teacher(cfg)


def test_case_without_labels_is_named(data_dir, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(data_dir / "siteA", data)
    case = sorted(p for p in data.iterdir() if p.is_dir())[1]
    next(case.glob("*_seg.nii.gz")).unlink()
    with pytest.raises(TrainingError, match=case.name):
        train_teacher(_teacher_cfg(tmp_path, tmp_path / "run", f"data_dir={data}"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("cache", "workers"), [("memory", 0), ("disk", 1), ("none", 1)], ids=["memory", "disk", "none"]
)
def test_mixed_label_conventions_are_refused(tmp_path, cache, workers) -> None:
    from napari_brats_kd.phantom import write_phantom_dataset

    data = tmp_path / "mixed"
    write_phantom_dataset(data, n=2, seed=1, spacing=4, naming="2021")
    write_phantom_dataset(data, n=1, seed=5, spacing=4, naming="2023")
    cfg = _teacher_cfg(
        tmp_path, tmp_path / "run", f"data_dir={data}", "val_fraction=0", f"cache={cache}",
        f"num_workers={workers}", f"cache_dir={tmp_path / 'cache'}", "steps_per_epoch=3",
    )  # fmt: skip
    # Without the memory cache the cases are loaded in a DataLoader worker process as they are
    # drawn (3 steps draw all 3): the error still reaches the user as the TrainingError naming
    # the case, not as a worker's traceback.
    with pytest.raises(TrainingError, match=r"^Case 'BraTS2021_P0000\d' uses label convention"):
        train_teacher(cfg)


def _no_memory(*args, **kwargs):
    """Stands in for a call that runs out of memory (Python's MemoryError)."""
    raise MemoryError()


@pytest.mark.slow
def test_out_of_memory_in_a_step_is_a_resource_error_naming_the_settings(
    data_dir, tmp_path, monkeypatch
) -> None:
    from napari_brats_kd.training import engine

    def no_memory(*args, **kwargs):
        # What PyTorch's CPU allocator says (no "out of memory" in it).
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 68719476736 bytes.")  # fmt: skip

    run = tmp_path / "run"
    train_teacher(_teacher_cfg(data_dir, run, "epochs=1", "val_every=100"))
    good = (run / "last.safetensors").read_bytes()
    monkeypatch.setattr(engine, "train_step", no_memory)
    with pytest.raises(ResourceError, match=r"batch_size.*patch_size"):
        train_teacher(_teacher_cfg(data_dir, run, "epochs=2", "val_every=100"), resume=True)
    assert (run / "last.safetensors").read_bytes() == good


@pytest.mark.slow
def test_out_of_memory_in_validation_keeps_the_epoch_and_names_the_settings(
    data_dir, tmp_path, monkeypatch
) -> None:
    from napari_brats_kd.models import load_checkpoint
    from napari_brats_kd.training import engine

    monkeypatch.setattr(engine, "validate", _no_memory)
    run = tmp_path / "run"
    with pytest.raises(ResourceError, match="val_sw_batch_size"):
        train_teacher(_teacher_cfg(data_dir, run, "epochs=2", "val_every=1"))
    # The trained epoch was saved before the error: resuming goes on with epoch 2.
    assert load_checkpoint(run / "last.safetensors").config.provenance["epochs"] == 1


@pytest.mark.slow
def test_out_of_memory_filling_the_memory_cache_suggests_the_disk_cache(
    data_dir, tmp_path, monkeypatch
) -> None:
    from monai import data as md

    monkeypatch.setattr(md, "CacheDataset", _no_memory)
    with pytest.raises(ResourceError, match="set cache=disk"):
        train_teacher(_teacher_cfg(data_dir, tmp_path / "run", "cache=memory"))


@pytest.mark.slow
def test_teacher_modalities_missing_from_data(data_dir, teacher_ckpt, tmp_path) -> None:
    data = tmp_path / "data"
    shutil.copytree(data_dir / "siteA", data)
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    next(case.glob("*_t2.nii.gz")).unlink()
    cfg = DistillConfig(
        data_dir=str(data),
        run_dir=str(tmp_path / "run"),
        teacher=str(teacher_ckpt),
        patch_size=[16, 16, 16],
    )
    cfg.model.kind, cfg.model.arch, cfg.model.modalities = "student", "student-tiny", ["t1c"]
    with pytest.raises(TrainingError, match=rf"teacher.*T2.*{case.name}"):
        distill(cfg)


def test_teacher_regions_must_match_student(data_dir, tmp_path) -> None:
    cfg_wt = teacher_config(**TINY)
    cfg_wt.regions = ("WT",)
    net = __import__("napari_brats_kd.models", fromlist=["build_model"]).build_model(cfg_wt)
    ckpt = save_checkpoint(tmp_path / "wt_only.safetensors", net, cfg_wt)
    cfg = DistillConfig(
        data_dir=str(data_dir / "siteA"),
        run_dir=str(tmp_path / "run"),
        teacher=str(ckpt),
        patch_size=[16, 16, 16],
    )
    cfg.model.kind, cfg.model.arch = "student", "student-tiny"
    with pytest.raises(TrainingError, match="regions"):
        distill(cfg)


@pytest.mark.slow
def test_bad_settings_are_named(data_dir, tmp_path) -> None:
    with pytest.raises(TrainingError, match="patch_size"):
        train_teacher(_teacher_cfg(data_dir, tmp_path / "r", "patch_size=[20,16,16]"))
    with pytest.raises(TrainingError, match="epochz"):
        load_config("teacher", ["epochz=3"])
    with pytest.raises(TrainingError, match=r"max_minutes=0.0: must be > 0"):
        load_config("teacher", ["max_minutes=0"])
    with pytest.raises(TrainingError, match=r"unlabeled_weight=-1.0: must be >= 0"):
        load_config("distill", ["unlabeled_weight=-1"])
    assert load_config("teacher", ["max_minutes=1e1"]).max_minutes == 10.0  # YAML 1.1 string
    # The shipped defaults load without a teacher; distilling without one is refused.
    defaults = load_config("distill", [f"data_dir={data_dir}"])
    assert defaults.teacher == "" and defaults.alpha == 0.5
    with pytest.raises(TrainingError, match="needs a teacher"):
        distill(defaults)
    with pytest.raises(TrainingError, match="Teacher"):
        distill(load_config("distill", [f"data_dir={data_dir}", "teacher=/no/such.safetensors"]))


@pytest.mark.slow
def test_attention_distillation_runs_the_teacher_online_and_logs_its_term(
    data_dir, teacher_ckpt, tmp_path
) -> None:
    run = tmp_path / "run"
    cfg = _distill_cfg(data_dir, teacher_ckpt, run, "attention_weight=0.5")
    steps: list[dict] = []
    result = distill(cfg, on_event=lambda e: steps.append(e) if e["type"] == "step" else None)
    provenance = load_checkpoint(result.last_checkpoint).config.provenance
    # auto picks online targets on a CPU too: attention needs the teacher's activations.
    assert provenance["teacher_targets"] == "online" and provenance["attention_weight"] == 0.5
    assert steps[0]["attention"] > 0
    row = result.history[0]
    assert row["attention"] > 0 and row["loss"] > 0.5 * row["attention"]
    assert float(next(csv.DictReader((run / "log.csv").open()))["attention"]) > 0
    with pytest.raises(TrainingError, match="teacher's activations"):
        load_config("distill", ["attention_weight=1", "teacher_targets=cached"])
    with pytest.raises(TrainingError, match=r"attention_weight=-1.0: must be >= 0"):
        load_config("distill", ["attention_weight=-1"])
