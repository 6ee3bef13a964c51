"""The training commands of the command line (_cli_training.py): brats-kd train and distill.

Here rather than in tests/ because they share the phantom sites and teacher of tests/training."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from _training_settings import TINY
from napari_brats_kd.models import load_checkpoint
from napari_brats_kd.training import DistillConfig, load_config

torch.set_num_threads(2)


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
