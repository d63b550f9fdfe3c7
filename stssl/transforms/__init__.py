"""Temporally consistent clip augmentation: pure per-clip ops (CPU, dataloader workers) and batched kornia
pipelines on the batch's device. Geometric ops keep intrinsics ``K`` in step (pixel centres at integers)."""

from __future__ import annotations

from stssl.transforms.functional import (
    ClipAugment,
    ClipResize,
    adjust_color_clip,
    center_crop_clip,
    crop_clip,
    hflip_clip,
    hflip_intrinsics,
    normalize_clip,
    random_resized_crop_params,
    resize_clip,
    sample_color_params,
)
from stssl.transforms.gpu import GPUAugment, make_views

__all__ = [
    "ClipAugment",
    "ClipResize",
    "GPUAugment",
    "adjust_color_clip",
    "center_crop_clip",
    "crop_clip",
    "hflip_clip",
    "hflip_intrinsics",
    "make_views",
    "normalize_clip",
    "random_resized_crop_params",
    "resize_clip",
    "sample_color_params",
]
