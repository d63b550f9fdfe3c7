"""Heads over encoder outputs: dense decoders (disparity, any-pyramid) and pose networks."""

from __future__ import annotations

from stssl.heads.dense import (
    TINY_DEC_CHANNELS,
    DisparityDecoder,
    PyramidDecoder,
    disp_to_depth,
    frames_from_pyramid,
)
from stssl.heads.pose import PoseDecoder, PoseNet, posenet_18, posenet_tiny

__all__ = [
    "TINY_DEC_CHANNELS",
    "DisparityDecoder",
    "PoseDecoder",
    "PoseNet",
    "PyramidDecoder",
    "disp_to_depth",
    "frames_from_pyramid",
    "posenet_18",
    "posenet_tiny",
]
