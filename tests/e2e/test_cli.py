"""The CLI end to end: every config parses and instantiates; the default job runs on a small world."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stssl.cli import STSSLCLI
from stssl.data import ClipDataModule
from stssl.encoders import Encoder
from stssl.modules import SSLModule
from stssl.tasks import PretextTask

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*.yaml"))


class _ParseOnlyCLI(STSSLCLI):
    def instantiate_classes(self) -> None:  # parse and build model/data, never the trainer (GPU configs)
        self.config_init = self.parser.instantiate_classes(self.config)


def _parse(*args: str) -> _ParseOnlyCLI:
    return _ParseOnlyCLI(SSLModule, ClipDataModule, args=list(args), run=False, auto_configure_optimizers=False)


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 6, CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c) for c in CONFIGS])
def test_each_config_parses_and_instantiates(config: Path) -> None:
    cli = _parse("--config", str(ROOT / config))
    model = cli.config_init["model"]
    assert isinstance(model, SSLModule)
    assert isinstance(model.encoder, Encoder)
    assert all(isinstance(t, PretextTask) for t in model.tasks)
    assert isinstance(cli.config_init["data"], ClipDataModule)


def test_configs_compose_later_overrides_earlier() -> None:
    cli = _parse("--config", str(ROOT / "configs/data/endoscopy_world.yaml"),
                 "--config", str(ROOT / "configs/pretrain/vcop_tiny.yaml"), "--data.batch_size=3")
    data = cli.config_init["data"]
    assert data.world == "endoscopy" and data.clip_len == 12 and data.batch_size == 3


def _frames_per_clip(data: ClipDataModule) -> int:
    return len(data.offsets) if data.offsets is not None else data.clip_len


def test_default_clip_is_long_enough_for_the_default_task() -> None:
    cli = _parse()
    model, data = cli.config_init["model"], cli.config_init["data"]
    assert _frames_per_clip(data) >= model.requires.min_frames


@pytest.mark.parametrize("config", [c for c in CONFIGS if "trainer" not in str(c)], ids=str)
def test_each_config_serves_clips_its_tasks_can_use(config: Path) -> None:
    cli = _parse("--config", str(ROOT / config))
    model, data = cli.config_init["model"], cli.config_init["data"]
    assert _frames_per_clip(data) >= model.requires.min_frames, (config, data.offsets, data.clip_len)


def test_help_lists_encoders_and_tasks() -> None:
    out = subprocess.run([sys.executable, "-m", "stssl.cli", "--help"], capture_output=True, text=True, check=True)
    assert "r3d_tiny" in out.stdout and "VCOPTask" in out.stdout and "fit" in out.stdout


@pytest.mark.slow
def test_default_job_fast_dev_run_on_a_small_world(tmp_path: Path) -> None:
    env_cache = tmp_path / "cache"
    cmd = [
        sys.executable, "-m", "stssl.cli", "fit",
        "--data.world_frames=16", "--data.world_train_seeds=[0]", "--data.world_val_seeds=[7]",
        "--data.world_size=[48,144]", "--data.size=[32,96]", "--data.batch_size=2",
        f"--data.world_root={env_cache}", f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    # the default job is depth + ego-motion, evaluated against the world's ground truth
    assert {"val/depth_motion/photo", "train/depth_motion/loss_epoch", "val/depth/abs_rel", "val/depth/a1",
            "val/pose/ate"} <= set(metrics), sorted(metrics)
    assert 0 < metrics["val/depth/abs_rel"] < 10 and 0 <= metrics["val/depth/a1"] <= 1
    assert (run / "metrics.csv").is_file()
    assert list(run.glob("events.out.tfevents.*")), "no TensorBoard events"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "images").glob("*.png"))
    assert list((run / "images").rglob("*_trajectory.png")), "no trajectory plot"
    assert "stssl-train fit: done" in out.stdout and str(run) in out.stdout
    # the checkpoint restores the whole module from its saved config
    restored = SSLModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert isinstance(restored.encoder, Encoder) and restored.tasks[0].name == "depth_motion"
