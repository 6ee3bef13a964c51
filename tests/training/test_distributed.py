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
    # Plain SGD: its step is proportional to the gradient, so gradients summed over processes
    # instead of averaged would double it (Adam's step would hardly change).
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


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


@pytest.mark.slow
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
    # Only the summation order differs (rounding at ~1e-7).
    for k in single:
        torch.testing.assert_close(ddp_state[k], single[k], rtol=1e-5, atol=1e-6)


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


# The engine's own path (DistributedSampler, DDP wrapping, rank-0 checkpoints), compared with one
# process on the same global batch. Patches as large as the (padded) volume and no augmentation
# make every patch the whole case, so the only difference left is the number of processes: two
# processes with one case each against one process with both cases per step.
ENGINE_SETTINGS = [
    "epochs=2", "steps_per_epoch=1", "samples_per_case=1", "patch_size=[64,64,40]",
    "val_every=1", "val_roi_size=[64,64,40]", "num_workers=0", "warmup_epochs=0",
    "device=cpu", "augment=none",
]  # fmt: skip
TEACHER_ARGS = "model.arch_args={init_filters: 8, blocks_down: [1,1,1,1], dropout_prob: null}"


def _engine_run(
    data_dir: str,
    run_dir: str,
    batch_size: int,
    distil_from: str,
    teacher_ports: tuple[int, int] | None = None,
) -> None:
    """Train a teacher, then distil a student from the teacher ``distil_from``."""
    import os

    from napari_brats_kd.training import distill, load_config, train_teacher

    if teacher_ports is not None:
        os.environ["MASTER_PORT"] = str(teacher_ports[0])
    teacher = load_config(
        "teacher",
        [f"data_dir={data_dir}", f"run_dir={run_dir}/teacher", f"batch_size={batch_size}",
         TEACHER_ARGS, *ENGINE_SETTINGS],
    )  # fmt: skip
    result = train_teacher(teacher)
    assert not dist.is_initialized()  # the run left the group it created
    assert result.epochs_done == 2
    # A second rendezvous port: on the first one, rank 1 could join rank 0's old store before
    # rank 0 has torn it down, and the two would then wait on different groups (as torchrun
    # gives every launch its own store, users never reuse one).
    if teacher_ports is not None:
        os.environ["MASTER_PORT"] = str(teacher_ports[1])
    # Both runs distil from the two-process run's teacher, so that the students can be compared.
    student = load_config(
        "distill",
        [f"data_dir={data_dir}", f"run_dir={run_dir}/student", f"batch_size={batch_size}",
         f"teacher={distil_from}",
         "model.arch=student-tiny", "teacher_targets=cached", *ENGINE_SETTINGS],
    )  # fmt: skip
    assert distill(student).history[0]["kd"] > 0


def _log_rows(run_dir: Path) -> list[dict[str, str]]:
    import csv

    with open(run_dir / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def _engine_worker(
    rank: int, world: int, ports: tuple[int, int], data_dir: str, run_dir: str
) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1"
    )
    _engine_run(data_dir, run_dir, 1, f"{run_dir}/teacher/last.safetensors", teacher_ports=ports)


@pytest.mark.slow
def test_train_and_distill_under_two_processes_match_one_process(tmp_path: Path) -> None:
    from napari_brats_kd.models import load_checkpoint
    from napari_brats_kd.phantom import write_phantom_dataset

    data = tmp_path / "data"
    write_phantom_dataset(data, n=3, seed=0, spacing=4)  # 2 training cases, 1 for validation
    mp.spawn(_engine_worker, args=(2, _free_ports(2), str(data), str(tmp_path / "ddp")), nprocs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the two processes: the same kernels, the same rounding
    try:
        _engine_run(
            str(data), str(tmp_path / "single"), 2, str(tmp_path / "ddp/teacher/last.safetensors")
        )
    finally:
        torch.set_num_threads(threads)

    for model in ("teacher", "student"):
        ddp_run, single_run = tmp_path / "ddp" / model, tmp_path / "single" / model
        ddp, single = (load_checkpoint(r / "last.safetensors") for r in (ddp_run, single_run))
        assert ddp.config.provenance["world_size"] == 2
        assert single.config.provenance["world_size"] == 1
        # One log line per epoch, written once (by rank 0), with the same losses: the logged loss
        # is the mean over processes, i.e. over the global batch, as in one process.
        ddp_log, single_log = (_log_rows(r) for r in (ddp_run, single_run))
        assert len(ddp_log) == len(single_log) == 2
        for ddp_row, single_row in zip(ddp_log, single_log, strict=True):
            assert float(ddp_row["loss"]) == pytest.approx(float(single_row["loss"]), rel=1e-4)
        # The second epoch's loss differs from the first: the weights moved.
        assert float(single_log[1]["loss"]) != pytest.approx(float(single_log[0]["loss"]))
        # Adam moves a weight whose gradient is about zero by about the learning rate, towards
        # whichever side rounding puts the gradient on, so a different summation order moves a
        # handful of weights differently (8 of 443211 seen). Both processes training on the same
        # case instead of one each moved 11 % of them differently (and changed the logged loss).
        ddp_w, single_w = (torch.cat([v.flatten() for v in m.model.state_dict().values()])
                           for m in (ddp, single))  # fmt: skip
        close = torch.isclose(ddp_w, single_w, rtol=1e-3, atol=1e-4)
        assert close.float().mean() > 0.999, f"{model}: {(~close).sum()} of {close.numel()} differ"
    # Both training cases' teacher outputs were cached (each rank caching its share first).
    assert len(list((tmp_path / "ddp" / "student").glob("cache/teacher_targets/*/*.npy"))) == 2


def _refusing_worker(rank: int, ports: tuple[int, ...], data_dir: str, out_dir: str) -> None:
    import os

    import napari_brats_kd.device as device
    from napari_brats_kd.errors import ResourceError
    from napari_brats_kd.training import load_config, train_teacher

    torch.set_num_threads(1)
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(ports[0]),
    )  # fmt: skip
    if rank == 0:  # only rank 0 sees too little memory: rank 1 alone would go on
        device.available_memory = lambda _device: 2**20
    cfg = load_config(
        "teacher",
        [f"data_dir={data_dir}", f"run_dir={out_dir}/run", "cache=memory", "batch_size=1",
         TEACHER_ARGS, *ENGINE_SETTINGS],
    )  # fmt: skip
    try:
        train_teacher(cfg)
    except ResourceError as exc:
        Path(out_dir, f"refused_{rank}.txt").write_text(str(exc))


@pytest.mark.slow
def test_a_memory_cache_refused_on_one_process_stops_all_of_them(tmp_path: Path) -> None:
    import time

    from napari_brats_kd.phantom import write_phantom_dataset

    data = tmp_path / "data"
    write_phantom_dataset(data, n=3, seed=0, spacing=4)
    context = mp.spawn(
        _refusing_worker, args=(_free_ports(1), str(data), str(tmp_path)), nprocs=2, join=False
    )
    deadline = time.monotonic() + 120
    while not context.join(timeout=5):
        if time.monotonic() > deadline:  # a rank waiting for the other forever
            for process in context.processes:
                process.kill()
            pytest.fail("a process hung after the other refused the memory cache")
    for rank in (0, 1):
        assert "set cache=disk" in (tmp_path / f"refused_{rank}.txt").read_text()
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_an_epoch_longer_than_one_pass_reshuffles_every_pass_on_every_rank() -> None:
    """With ``steps_per_epoch`` above one pass of the cases, each rank's DistributedSampler would
    replay one order pass after pass; every pass must be a new shuffle, with the ranks still
    splitting each pass between them, and an epoch replayed on resume must repeat itself."""
    from torch.utils.data import DataLoader, DistributedSampler

    from napari_brats_kd.training.engine import _cycle

    cases = list(range(8))

    def passes(rank: int, epoch: int, n_passes: int = 3) -> list[list[int]]:
        sampler = DistributedSampler(cases, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(epoch)  # as the training loop does at each epoch's start
        batches = _cycle(DataLoader(cases, batch_size=1, sampler=sampler), epoch)
        drawn = [int(next(batches)) for _ in range(4 * n_passes)]
        return [drawn[i : i + 4] for i in range(0, len(drawn), 4)]

    rank0, rank1 = passes(0, epoch=5), passes(1, epoch=5)
    for a, b in zip(rank0, rank1, strict=True):
        assert sorted(a + b) == cases  # each pass: the ranks share out all cases
    assert len({tuple(p) for p in rank0}) == 3  # a new order every pass
    assert passes(0, epoch=5) == rank0  # replaying the epoch draws the same
    assert passes(0, epoch=6)[0] != rank0[0]
