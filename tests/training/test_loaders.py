"""training/loaders.py: the memory cache is checked against free memory before any work."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from _training_runs import _distill_cfg
from napari_brats_kd.errors import ResourceError
from napari_brats_kd.training import distill

torch.set_num_threads(2)


@pytest.mark.slow
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
