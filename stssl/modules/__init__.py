"""Lightning modules and callbacks."""

from __future__ import annotations

from stssl.modules.callbacks import ClipImages, MetricsJSON
from stssl.modules.depth_eval import DepthPoseEvaluator, predict_video
from stssl.modules.ssl import SSLModule, check_batch

__all__ = ["ClipImages", "DepthPoseEvaluator", "MetricsJSON", "SSLModule", "check_batch", "predict_video"]
