"""DDP with 2 gloo processes on the CPU: the same code path users run on GPU clusters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "stssl.cli", "fit",
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp",
        "--trainer.max_epochs=1", "--trainer.limit_val_batches=1", "--data.clips_per_video=8",
        "--trainer.enable_progress_bar=false",
        "--data.world_frames=16", "--data.world_train_seeds=[0]", "--data.world_val_seeds=[7]",
        "--data.world_size=[48,144]", "--data.size=[32,96]", "--data.batch_size=2",
        f"--data.world_root={tmp_path / 'cache'}", f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--model.encoder.init_args.width=8",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "distributed_backend=gloo" in out.stderr + out.stdout
    assert "All distributed processes registered" in out.stderr + out.stdout
    metrics = json.loads((tmp_path / "runs" / "version_0" / "metrics.json").read_text())
    # 8 clips split over 2 ranks in batches of 2: 2 steps (4 if each rank saw every clip)
    assert metrics["global_step"] == 2
    assert "val/depth_motion/photo" in metrics and "val/depth/abs_rel" in metrics
