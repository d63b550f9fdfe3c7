"""The CLI end to end: every config parses and instantiates; the default job runs on a small world."""

from __future__ import annotations

import json
import math
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
# stssl-train configs; configs/eval/ holds stssl-eval's (tests/eval/test_harness.py)
CONFIGS = sorted(p.relative_to(ROOT) for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "eval")


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


TINY_CONFIGS = [c for c in CONFIGS if c.parent.name == "pretrain" and c.stem.endswith("_tiny")]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder the CPU configs render their (small) world into once."""
    return tmp_path_factory.mktemp("world_cache")


@pytest.mark.slow
@pytest.mark.parametrize("config", TINY_CONFIGS, ids=str)
def test_each_cpu_config_trains_a_step_on_a_small_world(config: Path, small_world: Path, tmp_path: Path) -> None:
    """Each tiny pretext config runs fit (2 train + 1 val batch) on a small world (36 frames: the longest clip,
    12 frames at stride 3, spans 34): its tasks log finite numbers."""
    from stssl.cli import STSSLCLI

    cli = STSSLCLI(SSLModule, ClipDataModule, args=[
        "fit", "--config", str(ROOT / config), "--data.world_frames=36", "--data.world_train_seeds=[0]",
        "--data.world_val_seeds=[7]", "--data.world_size=[64,192]", "--data.size=[32,64]", "--data.batch_size=2",
        "--data.num_workers=0", f"--data.world_root={small_world}", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
    ])
    metrics = cli.trainer.callback_metrics
    for task in cli.model.tasks:
        logged = {k: float(v) for k, v in metrics.items() if k.startswith(f"train/{task.name}/")}
        assert logged, (config, sorted(metrics))
        assert all(math.isfinite(v) for v in logged.values()), logged


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
    # evaluating the checkpoint on another scene folder: `stssl-train validate` writes that scene's metrics
    other = next(p for p in env_cache.iterdir() if p.name.startswith("driving_s0_"))
    cmd = [
        sys.executable, "-m", "stssl.cli", "validate", "--config", str(run / "config.yaml"),
        "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), f"--data.val_sources=[{other}]",
        f"--trainer.default_root_dir={tmp_path / 'eval'}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "version_0" / "metrics.json").read_text())
    assert {"val/depth/abs_rel", "val/pose/ate"} <= set(evaluated)
    assert evaluated["val/depth/abs_rel"] != metrics["val/depth/abs_rel"]  # another scene, other numbers
    assert list((tmp_path / "eval" / "version_0" / "images").rglob(f"{other.name}_frame*.png"))
    # stssl-eval scores the checkpoint on that scene folder too (depth + pose protocol)
    cmd = [sys.executable, "-m", "stssl.eval.cli", "--config", str(ROOT / "configs/eval/depth_pose_world.yaml"),
           "--checkpoint", str(run / "checkpoints" / "last.ckpt"), f"--protocol.init_args.scenes=[{other}]",
           f"--output_dir={tmp_path / 'stssl_eval'}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    scored = json.loads((tmp_path / "stssl_eval" / "metrics.json").read_text())
    assert scored["protocol"] == "depth_pose" and scored["scenes"] == [str(other)]
    assert math.isclose(scored["pretrained"]["depth/abs_rel"], evaluated["val/depth/abs_rel"], rel_tol=1e-3)
    # depth maps and poses for a video, the size read from the checkpoint
    cmd = [sys.executable, str(ROOT / "tools" / "predict_depth.py"), str(run / "checkpoints" / "last.ckpt"),
           str(other / "video.mp4"), "--calib", str(other), "--out", str(tmp_path / "pred"), "--max-frames", "4"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    import numpy as np

    depth = np.load(tmp_path / "pred" / "depth.npz")["depth"]
    assert depth.shape == (4, 32, 96) and np.isfinite(depth).all() and (depth > 0).all()
    assert len((tmp_path / "pred" / "poses.txt").read_text().splitlines()) == 4
