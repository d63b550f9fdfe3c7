"""DepthPoseEvaluator inside Lightning runs, and predict_video (inference API)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader

from stssl.data.datamodule import ClipDataModule
from stssl.encoders.frame2d import resnet18_2d_tiny
from stssl.eval.depth_pose import evaluate_scene, load_frames
from stssl.geometry.pose import pose_vec_to_matrix
from stssl.modules.callbacks import MetricsJSON
from stssl.modules.depth_eval import LOGGED_KEYS, DepthPoseEvaluator, find_task, predict_video
from stssl.modules.ssl import SSLModule
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.types import TaskOutput
from stssl.worlds.scene_io import read_calib, read_depth, read_poses

FRAMES, H, W = 12, 48, 144
SIZE = (32, 96)


@pytest.fixture(scope="module")
def scene(tiny_driving_scene: Path) -> Path:
    return tiny_driving_scene


class StandInTask(PretextTask):
    """The depth/motion contract with two tiny learnable parts: depth from a 3x3 conv, a constant pose."""

    default_name = "depth_motion"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.min_depth, self.max_depth = 0.1, 80.0
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.pose_vec = nn.Parameter(torch.tensor([0.0, 0.01, 0.0, 0.1, 0.0, -0.8]))
        self.calls = 0

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=2)

    def predict_depth(self, encoder: nn.Module, image: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert not torch.is_grad_enabled() and not self.training  # evaluation runs in eval mode, no grad
        return nn.functional.softplus(self.conv(image)) + 1.0

    def predict_pose(self, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        return pose_vec_to_matrix(self.pose_vec.expand(image_a.shape[0], 6))

    def forward(self, batch: dict, encoder: nn.Module, generator: torch.Generator | None = None) -> TaskOutput:
        frame = batch["video"][:, :, 0]
        loss = (self.conv(frame) - 1.0).pow(2).mean() + (self.pose_vec - 0.5).pow(2).sum()
        return TaskOutput(loss=loss, logs={"loss": loss.detach()})


def _module(task: PretextTask | None = None) -> SSLModule:
    torch.manual_seed(0)
    return SSLModule(resnet18_2d_tiny(), [task or StandInTask()])


def _datamodule(scene: Path, **kwargs) -> ClipDataModule:
    kwargs = {"clip_len": 2, "size": SIZE, "batch_size": 2, "augment": False, "world": None, **kwargs}
    return ClipDataModule(sources=[str(scene)], val_sources=[str(scene)], **kwargs)


def _trainer(tmp_path: Path, callbacks: list, **kwargs) -> L.Trainer:
    kwargs = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "num_sanity_val_steps": 0, **kwargs}
    return L.Trainer(logger=CSVLogger(tmp_path, name="run", version=0), callbacks=callbacks,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, **kwargs)


@pytest.mark.slow
def test_evaluator_logs_scene_metrics_and_writes_images_during_fit(scene: Path, tmp_path: Path) -> None:
    model = _module()
    evaluator = DepthPoseEvaluator(max_frames=8, num_images=2)  # scenes and size from the datamodule
    trainer = _trainer(tmp_path, [evaluator, MetricsJSON()])
    trainer.fit(model, datamodule=_datamodule(scene))
    assert list(evaluator.last_results) == [str(scene)]
    run = tmp_path / "run" / "version_0"
    metrics = json.loads((run / "metrics.json").read_text())
    for key in LOGGED_KEYS:
        assert f"val/{key}" in metrics, sorted(metrics)
    # the logged numbers are those of the pure evaluation of the trained model (same frames, size, range)
    task = find_task(model, "depth_motion")
    model.eval()
    ref = evaluate_scene(scene, lambda x: task.predict_depth(model.encoder, x), task.predict_pose, size=SIZE,
                         min_depth=0.1, max_depth=80.0, max_frames=8)
    for key in LOGGED_KEYS:
        assert metrics[f"val/{key}"] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key
    assert metrics["val/depth/abs_rel"] > 0.05  # an untrained model is not an oracle
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert any(row.get("val/pose/ate") for row in rows)
    images = sorted(p.name for p in (run / "images" / "depth_eval" / "epoch000").iterdir())
    name = scene.name
    assert images == [f"{name}_frame0000.png", f"{name}_frame0007.png", f"{name}_trajectory.png"]


def test_evaluator_respects_every_n_epochs_and_explicit_scenes(scene: Path, tmp_path: Path) -> None:
    task = StandInTask()
    loader = DataLoader([{"video": torch.rand(3, 2, *SIZE)} for _ in range(2)], batch_size=2)
    skip = DepthPoseEvaluator(scenes=[str(scene)], every_n_epochs=2, max_frames=5, save_images=False)
    out = _trainer(tmp_path, [skip]).validate(_module(task), loader, verbose=False)[0]
    assert task.calls == 0 and not any(k.startswith(("val/depth/", "val/pose/")) for k in out)

    run = DepthPoseEvaluator(scenes=[str(scene)], max_frames=5, save_images=False, size=(H, W), min_depth=1.0,
                             max_depth=50.0, batch_size=2)
    out = _trainer(tmp_path, [run]).validate(_module(task), loader, verbose=False)[0]
    assert task.calls == 3  # 5 frames, 2 per call
    assert 0 <= out["val/depth/a1"] <= 1 and out["val/pose/ate"] > 0
    assert not (tmp_path / "run" / "version_0" / "images").exists()


def test_evaluator_errors_name_what_is_wrong(scene: Path, tmp_path: Path) -> None:
    loader = DataLoader([{"video": torch.rand(3, 2, *SIZE)} for _ in range(2)], batch_size=2)
    with pytest.raises(ValueError, match=r"scenes=None needs a datamodule .* pass scenes"):
        _trainer(tmp_path, [DepthPoseEvaluator()]).validate(_module(), loader, verbose=False)
    with pytest.raises(KeyError, match=r"no task named 'depth' .* \['depth_motion'\]"):
        _trainer(tmp_path, [DepthPoseEvaluator(scenes=[str(scene)], task_name="depth")]).validate(
            _module(), loader, verbose=False)
    with pytest.raises(FileNotFoundError, match="scene folders not found"):
        DepthPoseEvaluator(scenes=[str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="every_n_epochs"):
        DepthPoseEvaluator(every_n_epochs=0)


def test_predict_video_writes_depth_poses_and_calib(scene: Path, tmp_path: Path) -> None:
    model = _module()
    task = find_task(model, "depth_motion")
    K = read_calib(scene)["K"]
    out = predict_video(model, scene / "video.mp4", tmp_path / "pred", size=SIZE, K=K, max_frames=6,
                        frame_step=2, batch_size=4)
    assert out["frame_indices"].tolist() == [0, 2, 4, 6, 8, 10]
    depth = read_depth(tmp_path / "pred")
    frames, _ = load_frames(scene / "video.mp4", size=SIZE, indices=[0, 2, 4, 6, 8, 10])
    model.eval()
    with torch.no_grad():
        ref = task.predict_depth(model.encoder, frames.float() / 255.0)[:, 0].numpy()
    np.testing.assert_allclose(depth, ref, rtol=1e-5)
    poses = read_poses(tmp_path / "pred")
    step = pose_vec_to_matrix(task.pose_vec.detach()[None].double())[0].numpy()
    np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-8)
    np.testing.assert_allclose(poses[2], np.linalg.inv(step) @ np.linalg.inv(step), atol=1e-6)
    calib = read_calib(tmp_path / "pred")
    assert (calib["height"], calib["width"]) == SIZE
    sx = SIZE[1] / W  # pixel centres stay pixel centres: cx' = (cx + 0.5) sx - 0.5
    np.testing.assert_allclose(calib["K"][0], [K[0, 0] * sx, 0.0, (K[0, 2] + 0.5) * sx - 0.5])
    assert len(out["png"]) == 6 and all(p.is_file() for p in out["png"])


def test_predict_video_checkpoint_errors(scene: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="checkpoint .*nope.ckpt not found"):
        predict_video(tmp_path / "nope.ckpt", scene / "video.mp4", tmp_path / "o", size=SIZE)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, max_epochs=0,
                        default_root_dir=tmp_path)
    model = _module()
    trainer.strategy.connect(model)
    ckpt = tmp_path / "plain.ckpt"
    trainer.save_checkpoint(ckpt)
    with pytest.raises(ValueError, match="cannot rebuild the model from .*plain.ckpt"):
        predict_video(ckpt, scene / "video.mp4", tmp_path / "o", size=SIZE)
    with pytest.raises(KeyError, match="no task named 'depth'"):
        predict_video(model, scene / "video.mp4", tmp_path / "o", size=SIZE, task_name="depth")


@pytest.mark.slow
def test_evaluator_with_the_real_depth_motion_task(scene: Path, tmp_path: Path) -> None:
    from stssl.tasks.depth_motion import DepthMotionTask

    task = DepthMotionTask(decoder_channels="tiny", scales=(0, 1), min_depth=0.5, max_depth=60.0)
    model = _module(task)
    dm = _datamodule(scene, offsets=[-1, 0, 1], clip_len=3)
    evaluator = DepthPoseEvaluator(max_frames=6, num_images=1)
    out = _trainer(tmp_path, [evaluator]).validate(model, datamodule=dm, verbose=False)[0]
    for key in LOGGED_KEYS:
        assert np.isfinite(out[f"val/{key}"]), key
    assert 0 <= out["val/depth/a1"] <= 1 and out["val/pose/ate"] >= 0
    model.eval()
    ref = evaluate_scene(scene, lambda x: task.predict_depth(model.encoder, x), task.predict_pose, size=SIZE,
                         min_depth=0.5, max_depth=60.0, max_frames=6)
    assert out["val/depth/abs_rel"] == pytest.approx(ref["depth/abs_rel"], rel=1e-5)
    assert out["val/pose/ate"] == pytest.approx(ref["pose/ate"], rel=1e-4, abs=1e-7)
    assert (tmp_path / "run" / "version_0" / "images" / "depth_eval" / "epoch000" / f"{scene.name}_trajectory.png").is_file()
