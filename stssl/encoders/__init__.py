"""Video encoders with dense output. ``ENCODERS`` maps registry names to builders."""

from __future__ import annotations

from collections.abc import Callable

from stssl.encoders.base import Encoder
from stssl.encoders.frame2d import (
    FrameEncoder2D,
    resnet18_2d,
    resnet18_2d_tiny,
    resnet34_2d,
    resnet50_2d,
    resnet50_2d_tiny,
)
from stssl.encoders.resnet3d import (
    ResNet3D,
    mc3_18,
    mc3_tiny,
    r2plus1d_18,
    r2plus1d_tiny,
    r3d_18,
    r3d_tiny,
)

__all__ = ["ENCODERS", "Encoder", "FrameEncoder2D", "ResNet3D", "build_encoder"]

ENCODERS: dict[str, Callable[..., Encoder]] = {
    "r3d_18": r3d_18,
    "mc3_18": mc3_18,
    "r2plus1d_18": r2plus1d_18,
    "r3d_tiny": r3d_tiny,
    "mc3_tiny": mc3_tiny,
    "r2plus1d_tiny": r2plus1d_tiny,
    "resnet18_2d": resnet18_2d,
    "resnet34_2d": resnet34_2d,
    "resnet50_2d": resnet50_2d,
    "resnet18_2d_tiny": resnet18_2d_tiny,
    "resnet50_2d_tiny": resnet50_2d_tiny,
}


def build_encoder(name: str, **kwargs) -> Encoder:
    """Build a registered encoder by name, e.g. ``build_encoder("r3d_tiny", width=8)``.

    Raises:
        ValueError: for an unknown name, listing the registered ones.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(ENCODERS)}")
    return ENCODERS[name](**kwargs)
