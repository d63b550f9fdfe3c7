"""tools/pretext_report.py: short pretext runs on the world, each optionally probed by stssl-eval."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

# seeds 2 and 11 turn (right / left) inside 40 frames: both probe classes besides "straight" occur
PROBE_YAML = """
protocol:
  class_path: stssl.eval.protocols.ProbeProtocol
  init_args:
    split:
      class_path: stssl.eval.protocols.WorldSplit
      init_args: {{world: driving, train_seeds: [2], test_seeds: [11], frames: 40, height: 16, width: 48,
                  root: "{root}"}}
    clip_len: 4
    step: 1
    k: 5
    epochs: 20
    batch_size: 8
baseline: true
baseline_seeds: [1]
"""


@pytest.mark.slow
def test_arrow_run_is_summarised_and_probed(tmp_path: Path, load_tool: Callable[[str], ModuleType]) -> None:
    tool = load_tool("pretext_report")
    probe_cfg = tmp_path / "probe.yaml"
    probe_cfg.write_text(PROBE_YAML.format(root=tmp_path / "worlds"))
    out = tmp_path / "report.json"
    world = [f"--data.world_root={tmp_path / 'worlds'}", "--data.world_frames=16", "--data.world_size=[32,96]",
             "--data.world_train_seeds=[0]", "--data.world_val_seeds=[7]", "--data.num_workers=0",
             "--data.batch_size=2", "--trainer.limit_train_batches=2", "--trainer.enable_progress_bar=false"]
    assert tool.main(["--configs", "configs/pretrain/arrow_tiny.yaml", "--epochs", "1", "--val-clips", "2",
                      "--out-root", str(tmp_path / "runs"), "--probe", str(probe_cfg), "--json", str(out),
                      "--", *world]) == 0
    res = json.loads(out.read_text())["arrow_tiny"]
    assert "error" not in res, res
    arrow = res["tasks"]["arrow"]
    assert arrow["chance"] == 0.5 and 0.0 <= arrow["last"]["acc"] <= 1.0
    probe = res["probe"]
    assert "error" not in probe, probe
    for encoder in ("pretrained", "scratch"):
        assert 0.0 <= probe[encoder]["knn_acc"] <= 1.0 and 0.0 <= probe[encoder]["linear_acc"] <= 1.0
    written = json.loads((Path(res["run_dir"]) / "probe" / "metrics.json").read_text())
    assert written["checkpoint"] == str(Path(res["run_dir"]) / "checkpoints" / "last.ckpt")
    assert probe["pretrained"]["knn_acc"] == written["pretrained"]["knn_acc"]
    assert written["test_seeds_in_pretraining"] == []  # pretrained on seed 0, probed on seed 11
    spread = probe["scratch_range"]  # two random inits: seed 0 (scratch) and 1
    assert spread["seeds"] == [0, 1] and spread["min"]["linear_acc"] <= spread["max"]["linear_acc"]

    # --reuse summarises the finished run and its probe without running either again
    again = tmp_path / "again.json"
    assert tool.main(["--configs", "configs/pretrain/arrow_tiny.yaml", "--epochs", "1", "--out-root",
                      str(tmp_path / "runs"), "--probe", str(probe_cfg), "--json", str(again), "--reuse"]) == 0
    reused = json.loads(again.read_text())["arrow_tiny"]
    assert reused["probe"]["pretrained"] == probe["pretrained"] and reused["run_dir"] == res["run_dir"]


def test_a_failing_probe_is_reported_not_raised(tmp_path: Path, load_tool: Callable[[str], ModuleType]) -> None:
    tool = load_tool("pretext_report")
    run_dir = tmp_path / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    res = tool.probe_run(run_dir, str(tmp_path / "missing.yaml"))
    assert set(res) == {"error", "wall_s"} and res["error"]


def test_val_clips_are_spread_over_the_configs_validation_scenes(
    tmp_path: Path, load_tool: Callable[[str], ModuleType]
) -> None:
    tool = load_tool("pretext_report")
    four, default = tmp_path / "four.yaml", tmp_path / "default.yaml"
    four.write_text("data:\n  world_val_seeds: [1000, 1001, 1002, 1003]\n")
    default.write_text("model: {}\n")
    assert tool.val_clips_per_video(four, 64) == 16 and tool.val_clips_per_video(four, 10) == 3
    assert tool.val_clips_per_video(default, 64) == 64  # the datamodule's default: one validation scene
    with pytest.raises(ValueError, match="--val-clips must be >= 1"):
        tool.val_clips_per_video(default, 0)
