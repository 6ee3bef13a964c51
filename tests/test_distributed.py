"""DDP: two gloo processes on CPU take the same steps as one process on the same global batch."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from napari_brats_kd.models import build_model, teacher_config
from napari_brats_kd.training import distributed as dd
from napari_brats_kd.training.engine import train_step
from napari_brats_kd.training.losses import SupervisedLoss

TINY = {"init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1], "dropout_prob": None}
STEPS = 2


def _global_batches() -> list[dict]:
    g = torch.Generator().manual_seed(123)
    out = []
    for _ in range(STEPS):
        image = torch.randn(4, 4, 8, 8, 8, generator=g)
        label = (torch.rand(4, 3, 8, 8, 8, generator=g) > 0.6).float()
        out.append({"image": image, "label": label, "labelled": torch.ones(4, dtype=torch.bool)})
    return out


def _fresh_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(teacher_config(**TINY))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ctx = dd.init_distributed("cpu")  # reuses the group the test created
        assert ctx.distributed and ctx.rank == rank
        model, opt = _fresh_model()
        ddp = dd.wrap_model(model, ctx)
        per_rank = 4 // world
        for batch in _global_batches():
            shard = {k: v[rank * per_rank : (rank + 1) * per_rank] for k, v in batch.items()}
            train_step(ddp, opt, SupervisedLoss(), shard, torch.device("cpu"))
        assert dd.any_true(rank == 1, ctx)  # a stop on one rank reaches all
        assert dd.mean_over_processes(float(rank), ctx) == pytest.approx(0.5)
        if rank == 0:
            torch.save(model.state_dict(), out_file)
        # Leave together: a rank that destroys the group while its peer still works in it was
        # once seen to abort ("terminate called without an active exception") on 2 CPUs.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_global_batch(tmp_path: Path) -> None:
    out_file = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    ddp_state = torch.load(out_file, weights_only=True)

    model, opt = _fresh_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    for batch in _global_batches():
        train_step(model, opt, SupervisedLoss(), batch, torch.device("cpu"))
    single = model.state_dict()
    changed = [k for k in single if not torch.equal(single[k], initial[k])]
    assert changed, "the steps must move the weights for the comparison to mean anything"
    # Adam divides by sqrt(v): rounding from a different summation order of near-zero gradients
    # shows at ~1e-5; a real mismatch (e.g. gradients summed instead of averaged) is ~1e-2.
    for k in single:
        torch.testing.assert_close(ddp_state[k], single[k], rtol=1e-3, atol=1e-4)


def _free_ports(n: int) -> tuple[int, ...]:
    # All sockets open at once, so that the ports differ.
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


def _engine_worker(
    rank: int, world: int, ports: tuple[int, int], data_dir: str, run_dir: str
) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]),
    )  # fmt: skip
    from napari_brats_kd.training import load_config, train_teacher

    cfg = load_config(
        "teacher",
        [
            f"data_dir={data_dir}", f"run_dir={run_dir}", "epochs=1", "steps_per_epoch=2",
            "batch_size=1", "samples_per_case=1", "patch_size=[16,16,16]", "val_every=1",
            "val_roi_size=[64,64,40]", "num_workers=0", "warmup_epochs=0", "device=cpu",
            "model.arch_args={init_filters: 8, blocks_down: [1,1,1,1], dropout_prob: null}",
        ],
    )  # fmt: skip
    result = train_teacher(cfg)
    assert not dist.is_initialized()  # the run left the group it created
    assert result.epochs_done == 1
    # Distillation from it, with the teacher's outputs cached by both ranks (each its share).
    # A second rendezvous port: on the first one, rank 1 could join rank 0's old store before
    # rank 0 has torn it down, and the two would then wait on different groups (as torchrun
    # gives every launch its own store, users never reuse one).
    from napari_brats_kd.training import distill

    os.environ["MASTER_PORT"] = str(ports[1])

    student = load_config(
        "distill",
        [
            f"data_dir={data_dir}", f"run_dir={run_dir}_student", f"teacher={run_dir}/last.safetensors",
            "model.arch=student-tiny", "teacher_targets=cached", "epochs=1", "steps_per_epoch=2",
            "batch_size=1", "samples_per_case=1", "patch_size=[16,16,16]", "val_every=1",
            "val_roi_size=[64,64,40]", "num_workers=0", "warmup_epochs=0", "device=cpu",
            "augment=none",
        ],
    )  # fmt: skip
    assert distill(student).history[0]["kd"] > 0


@pytest.mark.slow
def test_train_teacher_under_two_processes(tmp_path: Path) -> None:
    from napari_brats_kd.models import load_checkpoint
    from napari_brats_kd.phantom import write_phantom_dataset

    data = tmp_path / "data"
    write_phantom_dataset(data, n=3, seed=0, spacing=4)
    run = tmp_path / "run"
    ports = _free_ports(2)
    mp.spawn(_engine_worker, args=(2, ports, str(data), str(run)), nprocs=2, join=True)
    loaded = load_checkpoint(run / "last.safetensors")
    assert loaded.config.provenance["world_size"] == 2
    assert (run / "log.csv").read_text().count("\n") == 2  # header + one epoch, written once
    student = load_checkpoint(tmp_path / "run_student" / "last.safetensors").config.provenance
    assert student["world_size"] == 2 and student["teacher_targets"] == "cached"
    assert len(list((tmp_path / "run_student").glob("cache/teacher_targets/*/*.npy"))) == 2
