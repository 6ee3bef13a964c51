"""How long a run will take, said before it starts: its planned steps times one measured step.

:func:`planned_steps` counts the optimisation steps a config asks for on a dataset of a given
size, as the engine sizes its epochs; :func:`time_one_step` times one step of the config's
network on its device, patch and batch, on random data. Together (:func:`estimate_run`) they give
the duration of the training steps; reading and augmenting patches and validating add to it, so
the estimate is a lower bound, said as one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .config import TrainConfig
from .splits import make_split


@dataclass(frozen=True)
class RunEstimate:
    """What a run will cost.

    Attributes
    ----------
    steps
        Optimisation steps planned (all epochs).
    seconds_per_step
        One measured step of the network (forward, loss, backward, update).
    device
        Where it was measured.
    """

    steps: int
    seconds_per_step: float
    device: str

    @property
    def seconds(self) -> float:
        """The training steps' total duration."""
        return self.steps * self.seconds_per_step


def planned_steps(cfg: TrainConfig, n_cases: int) -> int:
    """Optimisation steps of ``cfg`` on ``n_cases`` labelled cases (one process).

    Parameters
    ----------
    cfg
        The run's settings (``epochs``, ``steps_per_epoch``, ``batch_size``, ``val_fraction``).
    n_cases
        Labelled cases in the dataset folder (some are held out for validation).

    Returns
    -------
    int
    """
    split = make_split([str(i) for i in range(max(n_cases, 1))], cfg.val_fraction, 0.0, cfg.seed)
    per_epoch = cfg.steps_per_epoch or max(1, math.ceil(len(split["train"]) / cfg.batch_size))
    return per_epoch * cfg.epochs


def time_one_step(cfg: TrainConfig, repeats: int = 2) -> tuple[float, str]:
    """Seconds of one optimisation step of ``cfg``'s network, and the device it ran on.

    The network is the one the run would train (``init_from``'s, or a new one from
    ``cfg.model``), fed ``batch_size * samples_per_case`` random patches of ``patch_size``. The
    first step (allocation, kernel selection) is not counted; the fastest of the next
    ``repeats`` is.

    Raises
    ------
    TrainingError
        The model cannot be built or loaded.
    ResourceError
        The device is not available.
    """
    import torch

    from ..device import select_device
    from .model_setup import load_model

    device = select_device(cfg.device)
    teacher_cfg = None
    if getattr(cfg, "teacher", None) and not cfg.model.modalities:
        from .model_setup import load_pretrained

        teacher_cfg = load_pretrained(cfg.teacher, "Teacher").config
    model, model_cfg = load_model(cfg, teacher_cfg)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    batch = torch.randn(
        cfg.batch_size * cfg.samples_per_case, len(model_cfg.modalities), *cfg.patch_size,
        device=device,
    )  # fmt: skip
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = model(batch)
        out = out[0] if isinstance(out, (list, tuple)) else out
        out.float().square().mean().backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times[1:]), str(device)


def estimate_run(cfg: TrainConfig, n_cases: int) -> RunEstimate:
    """The planned steps of ``cfg`` on ``n_cases`` cases and one measured step.

    Parameters
    ----------
    cfg
        The run's settings.
    n_cases
        Labelled cases in the dataset folder.

    Returns
    -------
    RunEstimate
    """
    seconds, device = time_one_step(cfg)
    return RunEstimate(planned_steps(cfg, n_cases), seconds, device)
