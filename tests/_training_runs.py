"""Training settings shared by the tests in tests/training/: tiny teacher and distillation
configs on the phantom sites (``_teacher_cfg``, ``_distill_cfg``: a folder holding siteA and siteB;
``_cfg``: one labelled folder) and a run's log.csv (``_log``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from _training_settings import FAST, TINY
from napari_brats_kd.training import DistillConfig, TrainConfig, load_config


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


def _cfg(data_dir: Path, run_dir: Path, *extra: str):
    return load_config(
        "teacher",
        [
            f"data_dir={data_dir}",
            f"run_dir={run_dir}",
            f"model.arch_args={json.dumps(TINY)}",
            *FAST,
            *extra,
        ],
    )


def _log(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "log.csv").open() as fh:
        return list(csv.DictReader(fh))
