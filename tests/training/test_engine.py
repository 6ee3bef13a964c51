"""Training engine on tiny phantoms: teacher, distillation, fine-tuning, stop/resume, bad input."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from _training_settings import FAST, TINY
from napari_brats_kd.errors import ResourceError, TrainingError
from napari_brats_kd.models import load_checkpoint, save_checkpoint, teacher_config
from napari_brats_kd.training import (
    DistillConfig,
    TrainConfig,
    distill,
    fine_tune,
    load_config,
    resume_run,
    train_teacher,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from napari_brats_kd.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root / "siteA", n=3, seed=10, spacing=4)
    write_phantom_dataset(root / "siteB", n=2, seed=40, spacing=4, site="B")
    return root


def _teacher_cfg(data_dir: Path, run_dir: Path, *extra: str) -> TrainConfig:
    return load_config(
        "teacher",
        [
            f"data_dir={data_dir / 'siteA'}",
            f"run_dir={run_dir}",
            f"model.arch_args={json.dumps(TINY)}",
            "val_fraction=0.34",
            *FAST,
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def teacher_ckpt(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("teacher") / "run"
    out = run.parent / "teacher.safetensors"
    cfg = _teacher_cfg(data_dir, run, "epochs=2", f"out={out}")
    events: list[dict] = []
    result = train_teacher(cfg, on_event=events.append)
    assert result.out == out and out.is_file()
    types = [e["type"] for e in events]
    assert types.count("step") == 2 and types.count("epoch") == 2 and types.count("val") == 2
    # "start" comes first (so UIs show "Epoch 1/2" before the first step), once.
    assert types[0] == "start" and types.count("start") == 1
    start = events[0]
    assert (start["epochs"], start["start_epoch"], start["steps_per_epoch"]) == (2, 0, 1)
    assert (start["n_train"], start["n_val"], start["kind"]) == (2, 1, "train")
    assert start["run_dir"] == str(run)
    # One val_progress per validation case, just before each epoch's "val" summary.
    progress = [e for e in events if e["type"] == "val_progress"]
    assert [(e["epoch"], e["done"], e["total"]) for e in progress] == [(1, 1, 1), (2, 1, 1)]
    assert types.index("val_progress") < types.index("val")
    return out


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


def test_unlabelled_cases_are_drawn_in_the_ratio_asked_for() -> None:
    from napari_brats_kd.training.data import PoolSampler

    def unlabelled_share(weight: float, n: int = 6000) -> float:
        # 28 labelled cases (indices 0-27) beside 14 unlabelled ones (28-41).
        return sum(i >= 28 for i in PoolSampler(28, 14, weight, n, seed=3)) / n

    # Not in proportion to the folders' sizes (which would be 1/3 unlabelled).
    assert unlabelled_share(1.0) == pytest.approx(0.5, abs=0.03)
    assert unlabelled_share(0.5) == pytest.approx(1 / 3, abs=0.03)
    assert unlabelled_share(0.0) == 0.0
    # Every case of each pool is drawn.
    assert set(PoolSampler(28, 14, 1.0, 2000, seed=3)) == set(range(42))
    # Two DDP ranks draw disjoint halves of what one process would draw for both; a new epoch
    # draws anew, the same epoch again draws the same.
    one = PoolSampler(28, 14, 1.0, 20, seed=3)
    ranks = [PoolSampler(28, 14, 1.0, 10, rank=r, world_size=2, seed=3) for r in (0, 1)]
    assert list(ranks[0]) == list(one)[0::2] and list(ranks[1]) == list(one)[1::2]
    first = list(one)
    one.set_epoch(1)
    assert list(one) != first
    one.set_epoch(0)
    assert list(one) == first


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
def test_stop_leaves_loadable_checkpoint_and_resume_continues(
    data_dir, tmp_path, monkeypatch
) -> None:
    from napari_brats_kd.training import engine

    used: list[float] = []  # the rate each step really runs at
    real_step = engine.train_step

    def recording_step(model, optimizer, *args):
        used.append(optimizer.param_groups[-1]["lr"])
        return real_step(model, optimizer, *args)

    monkeypatch.setattr(engine, "train_step", recording_step)
    run = tmp_path / "run"
    cfg = _teacher_cfg(data_dir, run, "epochs=2", "steps_per_epoch=2", "val_every=5")
    steps: list[int] = []
    lrs: dict[int, float] = {}

    def on_event(e: dict) -> None:
        if e["type"] == "step":
            steps.append(e["step"])
            lrs[e["step"]] = e["lr"]

    planned: dict[int, float] = {}
    train_teacher(
        replace(cfg, run_dir=str(tmp_path / "whole")),
        on_event=lambda e: planned.update({e["step"]: e["lr"]}) if e["type"] == "step" else None,
    )
    planned_used = list(used)
    used.clear()
    # Stop during the second epoch (after global step 3).
    result = train_teacher(cfg, should_stop=lambda: len(steps) >= 3, on_event=on_event)
    assert result.stopped and result.epochs_done == 1
    assert load_checkpoint(result.last_checkpoint).model is not None
    state = torch.load(run / "last_state.pt", weights_only=True)
    # The training time so far is kept, so that a time budget set on resume counts it.
    assert state["epoch"] == 1 and state["train_seconds"] > 0
    steps.clear()
    used.clear()
    starts: list[dict] = []
    resumed = resume_run(
        run, on_event=lambda e: starts.append(e) if e["type"] == "start" else on_event(e)
    )
    assert [(e["start_epoch"], e["epochs"]) for e in starts] == [(1, 2)]
    assert not resumed.stopped and resumed.epochs_done == 2
    # The interrupted epoch is redone from its start, step count and learning rates included:
    # the run takes the 4 steps and the schedule it planned.
    assert steps == [3, 4]
    assert lrs == pytest.approx(planned)
    assert used == pytest.approx(planned_used[2:])  # the replayed steps run at the planned rates
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert len(rows) == 2


@pytest.mark.slow
def test_run_writes_tensorboard_curves_matching_its_log(data_dir, tmp_path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train_teacher(_teacher_cfg(data_dir, run, "epochs=2", "val_every=1"))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = list(csv.DictReader((run / "log.csv").open()))
    for tag in ("loss", "lr", "val_mean_dice", "val_dice_WT"):
        curve = events.Scalars(tag)
        assert [e.step for e in curve] == [1, 2]
        assert [e.value for e in curve] == pytest.approx([float(r[tag]) for r in rows], rel=1e-5)


@pytest.mark.slow
def test_resume_with_more_epochs_stretches_the_lr_schedule(data_dir, tmp_path) -> None:
    from napari_brats_kd.training.engine import lr_lambda

    def record(into: dict[int, float]):
        return lambda e: into.update({e["step"]: e["lr"]}) if e["type"] == "step" else None

    run = tmp_path / "run"
    cfg = _teacher_cfg(data_dir, run, "epochs=2", "steps_per_epoch=2", "val_every=5")
    first: dict[int, float] = {}
    more: dict[int, float] = {}
    train_teacher(cfg, on_event=record(first))
    resume_run(run, ["epochs=4"], on_event=record(more))
    # What resume_run documents: the remaining steps follow the 8-step schedule from step 5 on,
    # so the learning rate climbs back up from where the finished 4-step schedule left it.
    schedule = (cfg.schedule, cfg.min_lr_factor)
    assert more == pytest.approx({g: cfg.lr * lr_lambda(g, 8, 0, *schedule) for g in range(5, 9)})
    assert more[5] > first[4]


@pytest.mark.slow
def test_time_budget_ends_the_run_validated_with_the_lr_decayed(data_dir, tmp_path) -> None:
    out = tmp_path / "timed.safetensors"
    cfg = _teacher_cfg(
        data_dir, tmp_path / "run", "epochs=50", "steps_per_epoch=3", "val_every=10",
        "max_minutes=1e-5", f"out={out}",
    )  # fmt: skip
    events: list[dict] = []
    result = train_teacher(cfg, on_event=events.append)
    steps = [e for e in events if e["type"] == "step"]
    # The first step spends the budget: the run ends there as if at its last epoch.
    assert result.time_limit_reached and not result.stopped
    assert len(steps) == 1 and result.epochs_done == 1
    assert [e["epoch"] for e in events if e["type"] == "val"] == [1]
    assert result.out == out and load_checkpoint(out).config.provenance["epochs"] == 1
    # The schedule was paced by time: it ended with the budget, not after 150 steps.
    assert steps[0]["lr"] == pytest.approx(cfg.lr * cfg.min_lr_factor)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert len(rows) == 1 and float(rows[0]["patches_per_s"]) > 0


@pytest.mark.slow
def test_validation_that_spends_the_budget_ends_the_run(data_dir, tmp_path, monkeypatch) -> None:
    import time
    from types import SimpleNamespace

    from napari_brats_kd.training import engine

    # A clock that stands still except during validation, which takes "10 minutes".
    now = [0.0]
    real_validate = engine.validate

    def slow_validate(*args, **kwargs):
        now[0] += 600.0
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: now[0],
                                                        strftime=time.strftime))  # fmt: skip
    monkeypatch.setattr(engine, "validate", slow_validate)
    cfg = _teacher_cfg(
        data_dir, tmp_path / "run", "epochs=5", "steps_per_epoch=2", "val_every=1", "max_minutes=5"
    )
    events: list[dict] = []
    result = train_teacher(cfg, on_event=events.append)
    # The first epoch's validation spent the budget: no further step, no second validation.
    assert result.time_limit_reached and result.epochs_done == 1
    assert [e["type"] for e in events].count("step") == 2
    assert [e["epoch"] for e in events if e["type"] == "val"] == [1]


@pytest.mark.slow
def test_generous_time_budget_changes_nothing(data_dir, tmp_path) -> None:
    from napari_brats_kd.training.engine import lr_lambda

    cfg = _teacher_cfg(
        data_dir, tmp_path / "run", "epochs=2", "steps_per_epoch=2", "val_every=5",
        "max_minutes=60",
    )  # fmt: skip
    lrs: dict[int, float] = {}
    result = train_teacher(
        cfg, on_event=lambda e: lrs.update({e["step"]: e["lr"]}) if e["type"] == "step" else None
    )
    assert not result.time_limit_reached and result.epochs_done == 2
    schedule = (cfg.schedule, cfg.min_lr_factor)
    assert lrs == pytest.approx({g: cfg.lr * lr_lambda(g, 4, 0, *schedule) for g in range(1, 5)})


@pytest.mark.slow
def test_stop_during_validation_skips_the_rest_and_keeps_a_checkpoint(data_dir, tmp_path) -> None:
    run = tmp_path / "run"
    cfg = _teacher_cfg(data_dir, run, "val_fraction=0.67")  # 1 training case, 2 validation cases
    events: list[dict] = []
    # Stop once the first validation case is done: the second is never validated.
    stop = lambda: any(e["type"] == "val_progress" for e in events)  # noqa: E731
    result = train_teacher(cfg, should_stop=stop, on_event=events.append)
    types = [e["type"] for e in events]
    assert events[0]["type"] == "start" and events[0]["n_val"] == 2
    assert [(e["done"], e["total"]) for e in events if e["type"] == "val_progress"] == [(1, 2)]
    assert "val" not in types
    assert result.stopped and result.best_checkpoint is None
    assert load_checkpoint(result.last_checkpoint).model is not None
    # The epoch's steps were all done: it counts as finished (without its validation), so that
    # resuming goes on with the next epoch instead of training this one twice.
    assert result.epochs_done == 1
    assert torch.load(run / "last_state.pt", weights_only=True)["epoch"] == 1
    steps: list[int] = []
    resumed = resume_run(
        run,
        ["epochs=2"],
        on_event=lambda e: steps.append(e["step"]) if e["type"] == "step" else None,
    )
    assert steps == [2] and resumed.epochs_done == 2 and not resumed.stopped
    assert [r["epoch"] for r in resumed.history] == [1, 2]


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


@pytest.mark.parametrize("arch", ["segresnet", "unet", "swinunetr"])
def test_pretrained_layers_learn_slower_than_the_output_layer(arch) -> None:
    from napari_brats_kd.models import build_model
    from napari_brats_kd.training.engine import _param_groups

    model = build_model(teacher_config(arch=arch))
    cfg = load_config("finetune", ["freeze=[]", "lr=1e-3"])
    body, head = _param_groups(model, cfg, arch, pretrained=True)
    assert body["lr"] == pytest.approx(1e-4) and head["lr"] == pytest.approx(1e-3)
    # The head is the output block: every convolution in it writes the 3 region channels, and
    # the one that maps features to them is among them.
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d)
    ]
    head_ids = {id(p) for p in head["params"]}
    in_head = [m for m in convs if id(m.weight) in head_ids]
    assert in_head and all(m.out_channels == 3 for m in in_head)
    assert any(m.in_channels > 3 for m in in_head)
    assert len(body["params"]) + len(head["params"]) == len(list(model.parameters()))


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


def test_memory_cache_estimate_is_about_what_the_cache_keeps(data_dir) -> None:
    from napari_brats_kd.training.data import LoadCased, discover_cases, memory_cache_bytes

    entries = discover_cases(data_dir / "siteA")
    loader = LoadCased(("t1c", "t1", "t2", "flair"))
    kept = sum(
        sum(v.nbytes for v in loader({"case_id": e.case_id, "path": str(e.path)}).values()
            if hasattr(v, "nbytes"))
        for e in entries
    )  # fmt: skip
    estimate = memory_cache_bytes(len(entries), entries[0], 4, 3)
    assert 0.7 * kept < estimate < 1.3 * kept
    # Cached teacher outputs (float16 per region) add a quarter more or so.
    with_targets = memory_cache_bytes(len(entries), entries[0], 4, 3, teacher_targets=True)
    assert with_targets > 1.2 * estimate


def test_a_memory_cache_that_does_not_fit_is_refused_before_any_work(
    data_dir, teacher_ckpt, tmp_path, monkeypatch
) -> None:
    import napari_brats_kd.device as device

    # 1 MiB free: nothing is loaded, and the teacher's outputs are not cached, before the refusal.
    monkeypatch.setattr(device, "available_memory", lambda _device: 2**20)
    run = tmp_path / "run"
    cfg = _distill_cfg(data_dir, teacher_ckpt, run, "cache=memory", "teacher_targets=cached")
    # 2 training, 2 unlabelled and 1 validation case.
    with pytest.raises(ResourceError, match=r"would keep 5 cases .* MiB in all, but 1 MiB .*: set "
                       "cache=disk"):  # fmt: skip
        distill(cfg)
    assert not list(run.glob("cache/teacher_targets/*/*.npy"))
    assert not (run / "last.safetensors").exists()
    # The suggested disk cache is not refused (with the real free memory: the teacher's own
    # memory check would refuse 1 MiB).
    monkeypatch.undo()
    distill(replace(cfg, cache="disk"))
    assert (run / "last.safetensors").is_file()


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
def test_cli_train_runs_and_reports(data_dir, tmp_path, capsys) -> None:
    from napari_brats_kd.cli import main

    out = tmp_path / "cli_teacher.safetensors"
    args = ["train", str(data_dir / "siteA"), "--out", str(out), "--epochs", "1"]
    args += ["--patch-size", "16", "16", "16", "--augment", "none"]
    args += ["--set", f"model.arch_args={json.dumps(TINY)}", "--set", "steps_per_epoch=1"]
    args += ["--set", "val_roi_size=[64,64,40]", "--set", "num_workers=0"]
    assert main(args) == 0
    assert load_checkpoint(out).config.arch == "segresnet"
    assert "Best mean validation Dice" in capsys.readouterr().out
    assert main(["train", str(tmp_path / "nothing")]) == 2
    capsys.readouterr()
    assert main([*args, "--epochs", "5", "--max-minutes", "1e-5"]) == 0
    assert "Time limit reached after 1 epoch(s)." in capsys.readouterr().out


@pytest.mark.slow
def test_cli_init_from_fine_tunes_with_the_finetune_defaults(
    data_dir, teacher_ckpt, tmp_path
) -> None:
    import yaml

    from napari_brats_kd.cli import main

    def run(name: str, *flags: str) -> tuple[dict, dict]:
        out = tmp_path / f"{name}.safetensors"
        args = ["train", str(data_dir / "siteA"), "--init-from", str(teacher_ckpt)]
        args += ["--out", str(out), "--epochs", "1", "--patch-size", "16", "16", "16"]
        args += ["--augment", "none", "--set", "steps_per_epoch=1", "--set", "num_workers=0"]
        args += ["--set", "val_roi_size=[64,64,40]", "--set", "batch_size=1", *flags]
        assert main(args) == 0
        cfg = yaml.safe_load((tmp_path / f"{name}_run" / "config.yaml").read_text())
        return cfg, load_checkpoint(out).model.state_dict()

    before = load_checkpoint(teacher_ckpt).model.state_dict()
    cfg, after = run("tuned")
    # Pretrained layers learn 10x slower and the encoder is frozen, as fine_tune() does it.
    assert cfg["pretrained_lr_factor"] == 0.1 and cfg["freeze"] == ["encoder"]
    assert cfg["lr"] == load_config("finetune").lr
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("down_layers."))
    cfg, after = run("all", "--freeze", "none", "--pretrained-lr-factor", "0.5")
    assert cfg["pretrained_lr_factor"] == 0.5 and cfg["freeze"] == []
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("down_layers."))


def test_cli_distill_options_reach_the_config(tmp_path) -> None:
    from napari_brats_kd.cli import _distill_settings, _training_overrides, build_parser

    parser, _ = build_parser()

    def config(*argv: str) -> DistillConfig:
        args = parser.parse_args(["distill", str(tmp_path), *argv])
        return load_config("distill", _training_overrides(args, _distill_settings(args)))

    cfg = config("--kd-label-correction", "--attention-weight", "0.5", "--alpha", "0.3")
    assert cfg.kd_label_correction is True and cfg.attention_weight == 0.5 and cfg.alpha == 0.3
    assert config().kd_label_correction is False and config().alpha == 0.5


def test_cli_old_flag_name_still_works_and_names_the_new_one(tmp_path, capsys) -> None:
    from napari_brats_kd.cli import _distill_settings, build_parser

    parser, _ = build_parser()
    args = parser.parse_args(["distill", str(tmp_path), "--label-correction"])
    assert _distill_settings(args)["kd_label_correction"] is True
    assert "--label-correction is now called --kd-label-correction" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["distill", "--help"])
    help_text = capsys.readouterr().out
    assert "--kd-label-correction" in help_text and "--label-correction" not in help_text


@pytest.mark.slow
def test_cli_distill_cross_modal_onto_another_site_with_a_split_then_resumed(
    data_dir, teacher_ckpt, tmp_path, capsys
) -> None:
    from napari_brats_kd.cli import main

    ids = sorted(p.name for p in (data_dir / "siteA").iterdir() if p.is_dir())
    split = {"train": ids[:2], "val": ids[2:], "test": []}
    (tmp_path / "split.json").write_text(json.dumps(split))
    out, run = tmp_path / "student.safetensors", tmp_path / "student_run"
    args = ["distill", str(data_dir / "siteA"), "--teacher", str(teacher_ckpt)]
    args += ["--out", str(out), "--student", "student-tiny", "--modalities", "t1c,flair"]
    args += ["--unlabeled", str(data_dir / "siteB"), "--split", str(tmp_path / "split.json")]
    args += ["--epochs", "1", "--patch-size", "16", "16", "16", "--augment", "none"]
    args += ["--set", "steps_per_epoch=1", "--set", "num_workers=0", "--set", "batch_size=1"]
    args += ["--set", "val_roi_size=[64,64,40]"]
    assert main(args) == 0
    assert "Best mean validation Dice" in capsys.readouterr().out
    student = load_checkpoint(out)
    assert student.config.modalities == ("t1c", "flair")
    assert student.config.provenance["n_unlabeled"] == 2
    saved = json.loads((run / "split.json").read_text())
    assert (saved["train"], saved["val"]) == (split["train"], split["val"])
    # Resumed with more epochs: the run goes on from its first epoch.
    assert main(["distill", str(data_dir / "siteA"), "--resume", str(run), "--epochs", "2"]) == 0
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert load_checkpoint(run / "last.safetensors").config.provenance["epochs"] == 2


@pytest.mark.slow
def test_a_resume_refused_for_a_bad_setting_leaves_the_run_config_as_it_was(
    data_dir, tmp_path
) -> None:
    run = tmp_path / "run"
    train_teacher(_teacher_cfg(data_dir, run, "val_every=5"))
    before = (run / "config.yaml").read_bytes()
    with pytest.raises(TrainingError, match="patch_size"):
        resume_run(run, ["patch_size=[20,16,16]"])
    assert (run / "config.yaml").read_bytes() == before
    assert resume_run(run, ["epochs=2"]).epochs_done == 2


def _distill_cfg(data_dir: Path, teacher: Path, run: Path, *extra: str) -> DistillConfig:
    return load_config(
        "distill",
        [
            f"data_dir={data_dir / 'siteA'}",
            f"run_dir={run}",
            f"teacher={teacher}",
            f"unlabeled_dir={data_dir / 'siteB'}",
            "model.arch=student-tiny",
            "val_fraction=0.34",
            *FAST,
            "augment=none",
            *extra,
        ],
    )


@pytest.mark.slow
def test_cached_teacher_targets_are_the_teachers_outputs_and_are_reused(
    data_dir, teacher_ckpt, tmp_path, monkeypatch
) -> None:
    import numpy as np

    import napari_brats_kd.predict_torch as predict_torch
    from napari_brats_kd.inference import brain_bbox
    from napari_brats_kd.predict_torch import predict_probabilities
    from napari_brats_kd.training.data import LoadCased

    cache = tmp_path / "cache"
    notes: list[str] = []

    def on_event(e: dict) -> None:
        if e["type"] == "note":
            notes.append(e["message"])

    cfg = _distill_cfg(
        data_dir, teacher_ckpt, tmp_path / "run", "teacher_targets=cached", f"cache_dir={cache}"
    )
    result = distill(cfg, on_event=on_event)
    assert load_checkpoint(result.last_checkpoint).config.provenance["teacher_targets"] == "cached"
    assert result.history[0]["kd"] > 0
    # The two training cases of site A and the two unlabelled site-B cases, each once.
    files = sorted(cache.glob("teacher_targets/*/*.npy"))
    assert len(files) == 4 and notes[-1] == "Caching teacher outputs: case 4/4"
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    case_id = split["train"][0]
    stored = np.load(next(f for f in files if f.stem.rsplit("-", 1)[0] == case_id))
    assert stored.dtype == np.float16
    # What the teacher says about the case, through the segmentation path.
    teacher = load_checkpoint(teacher_ckpt)
    loader = LoadCased(teacher.config.modalities, min_size=[16, 16, 16])
    image = loader({"case_id": case_id, "path": str(data_dir / "siteA" / case_id)})["image"]
    assert stored.shape == (3, *image.shape[1:])
    box = brain_bbox(image)
    probs, _ = predict_probabilities(teacher, np.ascontiguousarray(image[(slice(None), *box)]))
    stored_probs = 1 / (1 + np.exp(-stored[(slice(None), *box)].astype(np.float32)))
    assert np.abs(stored_probs - probs).max() < 2e-3
    outside = np.ones(image.shape[1:], bool)
    outside[box] = False
    assert (stored[:, outside] < -10).all()  # background, not "unsure"

    # A second run with the same teacher reads the files instead of running the teacher.
    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran again")

    monkeypatch.setattr(predict_torch, "predict_probabilities", no_teacher)
    again = distill(replace(cfg, run_dir=str(tmp_path / "run2")))
    assert again.history[0]["kd"] > 0
    assert sorted(cache.glob("teacher_targets/*/*.npy")) == files


@pytest.mark.slow
def test_online_teacher_targets_run_the_teacher_on_each_patch(
    data_dir, teacher_ckpt, tmp_path
) -> None:
    cache = tmp_path / "cache"
    cfg = _distill_cfg(
        data_dir, teacher_ckpt, tmp_path / "run", "teacher_targets=online", f"cache_dir={cache}"
    )
    result = distill(cfg)
    assert load_checkpoint(result.last_checkpoint).config.provenance["teacher_targets"] == "online"
    assert result.history[0]["kd"] > 0
    assert not list(cache.glob("teacher_targets/*/*.npy"))
    with pytest.raises(TrainingError, match="teacher_targets must be one of auto, online, cached"):
        load_config("distill", ["teacher_targets=sometimes"])


@pytest.mark.slow
def test_stop_while_caching_keeps_the_finished_cases(data_dir, teacher_ckpt, tmp_path) -> None:
    from napari_brats_kd.errors import Cancelled
    from napari_brats_kd.training.data import LoadCased, discover_cases
    from napari_brats_kd.training.teacher_targets import cache_teacher_targets

    teacher = load_checkpoint(teacher_ckpt)
    entries = discover_cases(data_dir / "siteA")
    out = tmp_path / "targets"
    loader = LoadCased(teacher.config.modalities, require_label=False, use_label=False)
    with pytest.raises(Cancelled, match="1 of 3 cases done; they are kept"):
        cache_teacher_targets(
            teacher, entries, loader, out, None, torch.device("cpu"),
            should_stop=lambda: len(list(out.glob("*.npy"))) >= 1,
        )  # fmt: skip
    assert [p.stem.rsplit("-", 1)[0] for p in out.glob("*.npy")] == [entries[0].case_id]
    assert not list(out.glob(".*"))  # no half-written file left
    # The next pass computes only the missing cases.
    assert cache_teacher_targets(teacher, entries, loader, out, None, torch.device("cpu")) == 2
    assert cache_teacher_targets(teacher, entries, loader, out, None, torch.device("cpu")) == 0
    # Another case with the same id (e.g. in the unlabelled folder), or a case whose images
    # changed, gets outputs of its own rather than another scan's.
    import os

    from napari_brats_kd.training.data import CaseEntry

    twin = shutil.copytree(entries[0].path, tmp_path / "other" / entries[0].path.name)
    twin_entry = CaseEntry(entries[0].case_id, Path(twin), entries[0].modalities, False)
    assert cache_teacher_targets(teacher, [twin_entry], loader, out, None, torch.device("cpu")) == 1
    from napari_brats_kd.naming import case_files

    found = case_files(entries[1].path)
    seg, flair = found.seg, found.images["flair"]
    os.utime(seg, ns=(seg.stat().st_atime_ns, seg.stat().st_mtime_ns + 10**9))
    assert cache_teacher_targets(teacher, entries, loader, out, None, torch.device("cpu")) == 0
    os.utime(flair, ns=(flair.stat().st_atime_ns, flair.stat().st_mtime_ns + 10**9))
    assert cache_teacher_targets(teacher, entries, loader, out, None, torch.device("cpu")) == 1
    assert len(list(out.glob("*.npy"))) == 5


def test_disk_cache_reloads_a_case_whose_images_changed(data_dir, tmp_path) -> None:
    import nibabel as nib
    import numpy as np

    from napari_brats_kd.naming import case_files
    from napari_brats_kd.training.data import LoadCased, build_dataset, discover_cases

    case = discover_cases(data_dir / "siteA")[0]
    shutil.copytree(case.path, tmp_path / "data" / case.path.name)
    (entry,) = discover_cases(tmp_path / "data")
    loader = LoadCased(("t1", "t1c", "t2", "flair"))

    def loaded() -> np.ndarray:
        return np.asarray(
            build_dataset([entry], loader, None, "disk", tmp_path / "cache")[0]["image"]
        )

    before = loaded()
    assert np.array_equal(loaded(), before)  # read back from the disk cache
    flair = case_files(entry.path).images["flair"]
    img = nib.load(flair)
    nib.save(nib.Nifti1Image(np.flip(np.asanyarray(img.dataobj), 0), img.affine, img.header), flair)
    after = loaded()
    assert not np.array_equal(after[3], before[3]) and np.array_equal(after[:3], before[:3])


def test_a_step_on_cached_targets_equals_a_step_with_the_online_teacher() -> None:
    import copy

    from napari_brats_kd.training.engine import train_step
    from napari_brats_kd.training.losses import DistillationLoss, SupervisedLoss

    torch.manual_seed(0)
    model, teacher = torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.Conv3d(2, 3, 3, padding=1)
    teacher.eval()
    image = torch.randn(2, 2, 8, 8, 8)
    batch = {
        "image": image,
        "label": (torch.rand(2, 3, 8, 8, 8) > 0.7).to(torch.uint8),
        "labelled": torch.tensor([True, False]),
    }
    loss = DistillationLoss(0.5, 2.0, SupervisedLoss(), dice_weight=1.0)
    cpu = torch.device("cpu")
    online, cached = copy.deepcopy(model), copy.deepcopy(model)
    opt_online = torch.optim.SGD(online.parameters(), lr=0.1)
    opt_cached = torch.optim.SGD(cached.parameters(), lr=0.1)
    parts_online = train_step(online, opt_online, loss, batch, cpu, teacher=teacher)
    with torch.no_grad():
        targets = teacher(image)
    parts_cached = train_step(cached, opt_cached, loss, {**batch, "teacher": targets}, cpu)
    assert parts_cached == pytest.approx(parts_online)
    assert parts_cached["kd"] > 0
    for a, b in zip(online.parameters(), cached.parameters(), strict=True):
        assert torch.allclose(a, b)


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
