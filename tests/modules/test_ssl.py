from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from stssl.encoders import build_encoder
from stssl.modules import SSLModule, check_batch
from stssl.modules.callbacks import MetricsJSON
from stssl.tasks import TaskRequirements, VCOPTask


def _loader(frames: int = 12, n: int = 4) -> DataLoader:
    data = [{"video": torch.rand(3, frames, 32, 32), "index": i} for i in range(n)]
    return DataLoader(data, batch_size=2)


def _module(**task_kwargs) -> SSLModule:
    return SSLModule(build_encoder("r3d_tiny", width=8), [VCOPTask(hidden=16, **task_kwargs)])


def test_check_batch_names_what_is_missing() -> None:
    video = torch.rand(2, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="missing key 'video'"):
        check_batch({"x": video}, TaskRequirements())
    with pytest.raises(ValueError, match=r"need at least 12 frames per clip, got shape \(2, 3, 4, 8, 8\); raise"):
        check_batch({"video": video}, TaskRequirements(min_frames=12))
    with pytest.raises(ValueError, match="need intrinsics 'K'"):
        check_batch({"video": video}, TaskRequirements(intrinsics=True))
    check_batch({"video": video, "K": torch.eye(3).expand(2, 3, 3)}, TaskRequirements(min_frames=4, intrinsics=True))


def test_task_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="task names must be unique"):
        SSLModule(build_encoder("r3d_tiny", width=8), [VCOPTask(), VCOPTask()])
    with pytest.raises(ValueError, match="tasks is empty"):
        SSLModule(build_encoder("r3d_tiny", width=8), [])


def test_short_clips_fail_on_the_first_batch(tmp_path) -> None:
    trainer = L.Trainer(fast_dev_run=True, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="need at least 12 frames"):
        trainer.fit(_module(), _loader(frames=8))


def test_fit_logs_per_task_metrics_and_writes_metrics_json(tmp_path) -> None:
    model = _module()
    weights_before = [p.detach().clone() for p in model.encoder.parameters()]
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        default_root_dir=tmp_path, callbacks=[MetricsJSON()], enable_model_summary=False)
    trainer.fit(model, _loader(), _loader())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("train/loss_epoch", "train/vcop/loss_epoch", "train/vcop/acc_epoch", "val/vcop/loss", "val/vcop/acc"):
        assert key in metrics, sorted(metrics)
    assert 0.0 <= metrics["val/vcop/acc"] <= 1.0
    changed = any(not torch.equal(a, b) for a, b in zip(weights_before, model.encoder.parameters(), strict=True))
    assert changed, "training did not update the encoder"


def test_validation_labels_are_fixed_across_epochs(tmp_path) -> None:
    model = _module(dropout=0.0)
    loader = _loader()
    trainer = L.Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path, enable_model_summary=False)
    first = trainer.validate(model, loader, verbose=False)[0]
    second = trainer.validate(model, loader, verbose=False)[0]
    assert first == second
