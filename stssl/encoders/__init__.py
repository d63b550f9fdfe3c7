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
from stssl.encoders.s3d import S3D, s3d, s3d_tiny
from stssl.encoders.slowfast import SlowFast, slowfast_r50, slowfast_r101, slowfast_tiny
from stssl.encoders.vit import VideoViT, vit_base, vit_micro, vit_micro_divided, vit_small, vit_tiny
from stssl.encoders.x3d import X3D, x3d_l, x3d_tiny, x3d_xs

__all__ = ["CPU_PRESETS", "ENCODERS", "S3D", "X3D", "Encoder", "FrameEncoder2D", "ResNet3D", "SlowFast", "VideoViT", "build_encoder"]

#: CPU presets (tiny widths/depths of the standard architectures), as opposed to the standard sizes.
CPU_PRESETS: tuple[str, ...] = (
    "r3d_tiny", "mc3_tiny", "r2plus1d_tiny", "s3d_tiny", "x3d_tiny", "slowfast_tiny", "vit_micro",
    "vit_micro_divided", "resnet18_2d_tiny", "resnet50_2d_tiny",
)

ENCODERS: dict[str, Callable[..., Encoder]] = {
    "r3d_18": r3d_18,
    "mc3_18": mc3_18,
    "r2plus1d_18": r2plus1d_18,
    "r3d_tiny": r3d_tiny,
    "mc3_tiny": mc3_tiny,
    "r2plus1d_tiny": r2plus1d_tiny,
    "s3d": s3d,
    "s3d_tiny": s3d_tiny,
    "x3d_xs": x3d_xs,
    "x3d_s": x3d_xs,  # X3D-S and -M are the X3D-XS network, trained on longer / larger clips
    "x3d_m": x3d_xs,
    "x3d_l": x3d_l,
    "x3d_tiny": x3d_tiny,
    "slowfast_r50": slowfast_r50,
    "slowfast_r101": slowfast_r101,
    "slowfast_tiny": slowfast_tiny,
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_micro": vit_micro,
    "vit_micro_divided": vit_micro_divided,
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
