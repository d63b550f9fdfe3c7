"""Callbacks every stssl run uses: final metrics to ``metrics.json``, sample clips to PNG (and TensorBoard)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import torch
from einops import rearrange

__all__ = ["ClipImages", "MetricsJSON", "run_dir"]


def run_dir(trainer: L.Trainer) -> Path:
    """The run's directory: the first logger's ``log_dir``, else ``trainer.default_root_dir``.

    Under DDP ``trainer.log_dir`` is a collective (rank 0 broadcasts it): call this on every rank, before any
    ``is_global_zero`` check, or the ranks deadlock.
    """
    log_dir = trainer.log_dir
    return Path(log_dir if log_dir is not None else trainer.default_root_dir)


def _scalar_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for key, value in sorted(metrics.items()):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


class MetricsJSON(L.Callback):
    """Writes ``<run_dir>/metrics.json`` with the latest epoch-level metrics after every validation and at the
    end of fit/validate/test, so an interrupted run still leaves its last figures."""

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking:
            return
        path = run_dir(trainer) / "metrics.json"  # on every rank: a collective under DDP
        if not trainer.is_global_zero:
            return
        metrics = _scalar_metrics(trainer.callback_metrics)
        metrics = {k: v for k, v in metrics.items() if not k.endswith("_step")}
        metrics["epoch"] = trainer.current_epoch
        metrics["global_step"] = trainer.global_step
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        tmp.replace(path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)


class ClipImages(L.Callback):
    """Saves the first validation batch's clips as a PNG grid per epoch (rows: samples, columns: frames) under
    ``<run_dir>/images/`` and logs it to TensorBoard when a TensorBoard logger is present.

    Args:
        max_clips: rows in the grid.
        max_frames: columns in the grid.
    """

    def __init__(self, max_clips: int = 4, max_frames: int = 8) -> None:
        self.max_clips = max_clips
        self.max_frames = max_frames

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or trainer.sanity_checking:
            return
        out_dir = run_dir(trainer) / "images"  # on every rank: a collective under DDP
        if not trainer.is_global_zero:
            return
        video = batch["video"][: self.max_clips, :, : self.max_frames].detach().float().cpu()
        if video.max() > 1.5:
            video = video / 255.0
        grid = rearrange(video.clamp(0, 1), "B C T H W -> C (B H) (T W)")
        out_dir.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        Image.fromarray(pixels).save(out_dir / f"val_clips_epoch{trainer.current_epoch:03d}.png")
        for logger in trainer.loggers:
            add_image = getattr(getattr(logger, "experiment", None), "add_image", None)
            if add_image is not None:
                add_image("val/clips", grid, global_step=trainer.global_step)
