"""The run folder: its file names, the training state saved in it, its log.

``last_state.pt`` holds plain tensors and dicts only (loadable with ``weights_only=True``): the
model, optimizer and scheduler states, the epoch and step counters, the best metric, the log
history, the training seconds spent and the RNG states. Every file is written atomically.
"""

from __future__ import annotations

import csv
import random
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._files import atomic_write, remove_stale_temporaries
from ..errors import CheckpointError, TrainingError
from . import distributed as dd
from .config import DistillConfig, TrainConfig

CONFIG_FILE = "config.yaml"
STATE_FILE = "last_state.pt"
LAST_CKPT = "last.safetensors"
BEST_CKPT = "best.safetensors"
LOG_FILE = "log.csv"
LOG_COLUMNS = (
    "epoch",
    "step",
    "loss",
    "supervised",
    "kd",
    "attention",
    "lr",
    "patches_per_s",
    "epoch_time_s",
    "val_dice_TC",
    "val_dice_WT",
    "val_dice_ET",
    "val_mean_dice",
)


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes
    ----------
    run_dir
        The run folder.
    best_checkpoint
        ``best.safetensors`` (highest mean validation Dice) or ``None`` if never validated.
    last_checkpoint
        ``last.safetensors`` (the weights at the end or at the stop).
    out
        Copy of the best (else last) checkpoint at the requested output path, if any.
    epochs_done
        Completed epochs.
    best_metric, best_epoch
        Best mean validation Dice and its (1-based) epoch; NaN / 0 without validation.
    stopped
        Whether ``should_stop`` ended the run early.
    time_limit_reached
        Whether the run ended because its ``max_minutes`` budget was spent (a normal end: last
        validation done, ``out`` written).
    history
        One dict per completed epoch (the rows of ``log.csv``).
    """

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path
    out: Path | None = None
    epochs_done: int = 0
    best_metric: float = float("nan")
    best_epoch: int = 0
    stopped: bool = False
    time_limit_reached: bool = False
    history: list[dict] = field(default_factory=list)


@dataclass
class RunState:
    """Where a run stands: what ``last_state.pt`` keeps besides the optimiser's states.

    Attributes
    ----------
    epoch
        Epochs done when the run (re)starts: the first epoch to train, 0-based.
    global_step
        Optimisation steps taken.
    best_metric, best_epoch
        Best mean validation Dice and its 1-based epoch (``-inf`` / 0 before any).
    history
        One dict per completed epoch (the rows of ``log.csv``).
    """

    epoch: int = 0
    global_step: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)

    @classmethod
    def from_saved(cls, state: dict) -> RunState:
        """The counters of a state :func:`load_resume_state` returned."""
        return cls(
            epoch=int(state["epoch"]),
            global_step=int(state["global_step"]),
            best_metric=float(state["best_metric"]),
            best_epoch=int(state["best_epoch"]),
            history=list(state["history"]),
        )


def save_training_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler_state: dict,
    epoch: int,
    global_step: int,
    run: RunState,
    train_seconds: float,
) -> None:
    """Write ``last_state.pt`` atomically (with the RNG states of this moment).

    ``epoch`` and ``global_step`` are those a resumed run starts from (an epoch saved inside
    itself is replayed), which may differ from ``run``'s.
    """
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler_state,
        "epoch": epoch,
        "global_step": global_step,
        "best_metric": run.best_metric,
        "best_epoch": run.best_epoch,
        "history": run.history,
        "train_seconds": train_seconds,
        "rng": rng_state(),
    }
    atomic_torch_save(state, path)


def load_resume_state(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> dict:
    """Load ``last_state.pt`` into the model, optimizer and scheduler.

    Parameters
    ----------
    path
        The state file.
    model, optimizer, scheduler
        This run's, built as for a new run; their states are replaced.

    Returns
    -------
    dict
        The whole saved state (counters, history, RNG states, ...).

    Raises
    ------
    CheckpointError
        Naming the file when it is truncated, holds other than plain tensors, or does not fit
        this run's network and optimizer: what is wrong and what to do.
    """
    advice = (
        "Start a new run (or resume from a copy of the run folder taken before the damage); the "
        "run's best checkpoint beside it is a separate file and may be intact."
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, a blocked pickle payload, not a torch file
        raise CheckpointError(
            f"Cannot resume: {path} is damaged or not a training state ({first_line(exc)}). "
            + advice
        ) from None
    try:
        weights = state["model"]
        bad = [
            k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()
        ]
        if bad:
            raise CheckpointError(
                f"Cannot resume: {path} holds weights that are not finite ({', '.join(bad[:3])}): "
                "the run diverged before it was saved. " + advice
            )
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        # The optimizer's own rates are those of the moment it was saved; a stop inside an epoch
        # saves the schedule of the epoch's start (the epoch is replayed), and the first replayed
        # step must use that schedule's rate.
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
        missing = [
            k
            for k in ("epoch", "global_step", "best_metric", "best_epoch", "history", "rng")
            if k not in state
        ]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(
            f"Cannot resume: {path} does not fit this run's network and optimizer "
            f"({first_line(exc)}). " + advice
        ) from None
    return state


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters (its type if empty)."""
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def rng_state() -> dict[str, Any]:
    """The Python, numpy, torch (and CUDA) RNG states, as plain lists and tensors."""
    np_state = np.random.get_state()  # noqa: NPY002 (the global RNG MONAI uses)
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states :func:`rng_state` returned."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(  # noqa: NPY002
        ("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0)
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then renamed over ``path``."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def write_log(history: list[dict], path: Path) -> None:
    """Write ``log.csv``: one row per epoch of ``history`` in :data:`LOG_COLUMNS` order."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(LOG_COLUMNS), extrasaction="ignore")
            writer.writeheader()
            for row in history:
                writer.writerow({k: row.get(k, "") for k in LOG_COLUMNS})

    atomic_write(path, write)


def default_run_dir(cfg: TrainConfig) -> Path:
    """Beside ``cfg.out`` (``name_run``), else a time-stamped folder in ``runs/``."""
    if cfg.out:
        out = Path(cfg.out)
        return out.with_name(out.name.removesuffix(".safetensors") + "_run")
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def open_run_dir(cfg: TrainConfig, ctx: dd.DistContext, resume: bool) -> Path:
    """The run folder of ``cfg`` (rank 0 creates it and clears stale temporary files).

    Raises
    ------
    TrainingError
        ``resume`` and the folder has no ``last_state.pt``.
    """
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    state_path = run_dir / STATE_FILE
    if resume and not state_path.is_file():
        raise TrainingError(f"Cannot resume: {state_path} does not exist (no finished step).")
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # A run killed while writing (kill -9, a full disk) leaves its temporary files behind.
        remove_stale_temporaries(run_dir)
    return run_dir


def provenance(
    cfg: TrainConfig,
    ctx: dd.DistContext,
    counts: tuple[int, int, int],
    teacher_cfg: Any | None,
    targets_mode: str,
    attention_weight: float,
) -> dict[str, Any]:
    """What the run's checkpoints record of how they were made.

    Parameters
    ----------
    cfg, ctx
        The settings and the process group.
    counts
        Training, validation and unlabelled cases.
    teacher_cfg, targets_mode, attention_weight
        The teacher's model config, teacher-output mode and attention weight (distillation).
    """
    distill = isinstance(cfg, DistillConfig)
    pretrained = cfg.init_from is not None
    n_train, n_val, n_unlabeled = counts
    out: dict[str, Any] = {
        "kind": "distill" if distill else ("finetune" if pretrained else "train"),
        "data_dir": str(cfg.data_dir),
        "n_train": n_train,
        "n_val": n_val,
        "n_unlabeled": n_unlabeled,
        "seed": cfg.seed,
        "patch_size": list(cfg.patch_size),
        "augment": cfg.augment.preset,
        "device": str(ctx.device),
        "world_size": ctx.world_size,
        "torch": torch.__version__,
    }
    if distill:
        out.update(
            teacher=teacher_cfg.display_name,
            teacher_path=str(cfg.teacher),
            alpha=cfg.alpha,
            temperature=cfg.temperature,
            kd_dice_weight=cfg.kd_dice_weight,
            kd_label_correction=cfg.kd_label_correction,
            teacher_targets=targets_mode,
            attention_weight=attention_weight,
        )
    if pretrained:
        out["init_from"] = str(cfg.init_from)
    return out


def write_config(cfg: TrainConfig, run_dir: Path) -> Any:
    """Save the settings as ``config.yaml``; the TensorBoard writer, if it is installed.

    Called only once data, model and teacher are checked: a resume with a bad override leaves
    the run's config as it was.
    """
    from .config import save_config

    save_config(replace(cfg, run_dir=str(run_dir)), run_dir / CONFIG_FILE)
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(run_dir / "tensorboard"))
    except ImportError:  # TensorBoard is optional
        return None


def copy_out(src: Path, out: str | Path) -> Path:
    """Copy checkpoint ``src`` (and its ``.json`` sidecar, if any) to ``out`` atomically."""
    out_path = atomic_write(out, lambda tmp: shutil.copyfile(src, tmp))
    side = src.with_suffix(".json")
    if side.is_file():
        shutil.copyfile(side, out_path.with_suffix(".json"))
    return out_path


__all__ = [
    "BEST_CKPT",
    "CONFIG_FILE",
    "LAST_CKPT",
    "LOG_COLUMNS",
    "LOG_FILE",
    "STATE_FILE",
    "RunState",
    "TrainResult",
    "atomic_torch_save",
    "copy_out",
    "default_run_dir",
    "first_line",
    "load_resume_state",
    "open_run_dir",
    "provenance",
    "rng_state",
    "save_training_state",
    "set_rng_state",
    "write_config",
    "write_log",
]
