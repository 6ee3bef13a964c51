"""Property-based tests (hypothesis): whatever a user's settings, header or checkpoint config
holds, the product answers with a valid result or a typed one-line error, never anything else.

Beside the seeded fuzzing of files in ``test_io_fuzz.py``, these draw the values themselves:
settings of every type at every key, NIfTI header fields, and checkpoint configs.
"""

from __future__ import annotations

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_brats_kd.errors import BratsKDError

# Values a YAML file or `--set` can give: scalars, lists and mappings of them.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _setting_keys() -> list[str]:
    from napari_brats_kd.training import DistillConfig
    from napari_brats_kd.training.augment import AugmentConfig

    keys = [f.name for f in dataclasses.fields(DistillConfig) if f.name not in ("model", "augment")]
    keys += [f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig)]
    keys += ["model.kind", "model.arch", "model.modalities"]
    return keys


SETTING_KEYS = _setting_keys()

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.dictionaries(st.sampled_from(SETTING_KEYS), values, min_size=1, max_size=3))
def test_any_settings_give_a_valid_config_or_a_named_error(overrides) -> None:
    from napari_brats_kd.training import load_config
    from napari_brats_kd.training.schema import RANGES

    try:
        cfg = load_config("distill", overrides)
    except BratsKDError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip() and len(message) < 2000
        return
    # Accepted: every number lies in its range and has its type.
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        bounds = RANGES.get(f.name)
        if bounds is not None and value is not None:
            low, high, _, _ = bounds
            assert isinstance(value, (int, float)) and not isinstance(value, bool), f.name
            assert (low is None or value >= low) and (high is None or value <= high), f.name
    assert all(isinstance(v, int) and 8 <= v <= 512 for v in cfg.patch_size)
    assert isinstance(cfg.amp, bool) and isinstance(cfg.augment.noise_prob, float)


@FAST
@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=3))
def test_any_command_line_override_text_gives_a_config_or_a_named_error(texts) -> None:
    from napari_brats_kd.training import load_config

    try:
        load_config("teacher", texts)
    except BratsKDError as exc:
        assert str(exc)


# ---------------------------------------------------------------------------- checkpoint configs
arch_args = st.dictionaries(
    st.sampled_from(
        ["init_filters", "blocks_down", "blocks_up", "downsample", "channels", "strides",
         "feature_size", "depths", "num_groups", "dropout_prob", "norm"]
    ),
    values | st.lists(st.integers(-3, 10**7), max_size=12) | st.integers(-5, 10**9),
    max_size=4,
)  # fmt: skip


@FAST
@given(
    st.sampled_from(["segresnet", "student", "unet", "swinunetr", "resnet", ""]),
    arch_args,
    st.lists(st.sampled_from(["t1", "t1c", "t2", "flair", "t3", ""]), max_size=5),
    st.lists(st.integers(-10, 10**6), max_size=4),
)
def test_any_checkpoint_config_is_read_or_refused(arch, args, modalities, roi) -> None:
    """A config read from a checkpoint's metadata: a ModelConfig whose geometry the planners can
    use, or a CheckpointError; never an overflow, a hang or an allocation."""
    from napari_brats_kd.models.config import ModelConfig
    from napari_brats_kd.models.geometry import first_stage_width, network_stride

    data = {"arch": arch, "arch_args": args, "modalities": modalities, "roi_size": roi}
    try:
        cfg = ModelConfig.from_json(json.dumps(data))
        network_stride(cfg)
        first_stage_width(cfg)
    except BratsKDError as exc:
        assert str(exc)


@settings(max_examples=40, deadline=None)
@given(arch_args)
def test_building_any_student_config_ends_in_a_network_or_a_typed_error(args) -> None:
    from napari_brats_kd.models import build_model
    from napari_brats_kd.models.config import ModelConfig

    try:
        build_model(ModelConfig(arch="student", arch_args=args))
    except BratsKDError:
        pass


# ------------------------------------------------------------------------------------- headers
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    dims=st.lists(st.integers(-5, 2**15 - 1), min_size=8, max_size=8),
    pixdim=st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=8, max_size=8
    ),
    datatype=st.sampled_from([2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 1536, 0, 3, 32, 2304]),
    gz=st.booleans(),
)
def test_any_header_is_read_or_refused_before_allocating(tmp_path, dims, pixdim, datatype, gz):
    import gzip

    from napari_brats_kd import io

    data = np.arange(60, dtype=np.int16).reshape(5, 4, 3)
    img = nib.Nifti1Image(data, np.eye(4))
    raw = bytearray(img.to_bytes())
    header = np.frombuffer(raw[:348], dtype=img.header.structarr.dtype).copy()
    header["dim"] = np.array(dims, dtype=np.int16)
    header["pixdim"] = np.array(pixdim, dtype=np.float32)
    header["datatype"] = datatype
    raw[:348] = header.tobytes()
    path = tmp_path / ("x.nii.gz" if gz else "x.nii")
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    try:
        volume = io.load_volume(path)
    except BratsKDError as exc:
        assert str(exc)
        return
    assert volume.data.ndim == 3 and volume.data.size <= 60


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
