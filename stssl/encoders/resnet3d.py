"""3D ResNets (R3D, MC3, R(2+1)D) with dense pyramid output and a width knob.

The blocks are torchvision's (``torchvision.models.video.resnet``), assembled with configurable widths and
depths; module names mirror torchvision's ``VideoResNet`` (``stem``, ``layer1`` … ``layer4``), so at ``width=64``
and ``layers=(2, 2, 2, 2)`` a torchvision state dict (without ``fc``) loads as is and the parameter counts match
torchvision's ``r3d_18`` / ``mc3_18`` / ``r2plus1d_18`` without the classifier.

Architectures (Tran et al., "A Closer Look at Spatiotemporal Convolutions", CVPR 2018):

- ``r3d``: full 3x3x3 convolutions everywhere; strides ``(1,2,2)`` stem, then ``(2,2,2)`` per stage from layer2.
- ``mc3``: 3D convolutions in layer1, 2D (1x3x3) in layers 2-4, so time is never downsampled.
- ``r2plus1d``: every 3x3x3 convolution factorised into 1x3x3 spatial then 3x1x1 temporal, with the mid width
  chosen to match the 3D parameter count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn
from torchvision.models.video.resnet import (
    BasicBlock,
    Conv2Plus1D,
    Conv3DNoTemporal,
    Conv3DSimple,
)

from stssl.encoders.base import Encoder
from stssl.types import EncoderSpec

__all__ = ["ResNet3D", "r3d_18", "mc3_18", "r2plus1d_18", "r3d_tiny", "r2plus1d_tiny", "mc3_tiny"]

Arch = Literal["r3d", "mc3", "r2plus1d"]
_ARCHS = ("r3d", "mc3", "r2plus1d")


def _stem(arch: str, in_channels: int, width: int) -> nn.Sequential:
    if arch == "r2plus1d":
        mid = max(1, (width * 45) // 64)  # torchvision uses 45 mid channels for width 64
        return nn.Sequential(
            nn.Conv3d(in_channels, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, width, (3, 1, 1), stride=1, padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv3d(in_channels, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def _conv_builders(arch: str) -> list[Callable[..., nn.Module]]:
    if arch == "r3d":
        return [Conv3DSimple] * 4
    if arch == "mc3":
        return [Conv3DSimple] + [Conv3DNoTemporal] * 3
    return [Conv2Plus1D] * 4


class ResNet3D(Encoder):
    """A ResNet-18-style video encoder: ``stem`` then four residual stages.

    Args:
        arch: ``"r3d"``, ``"mc3"`` or ``"r2plus1d"`` (see the module docstring).
        width: channels of the first stage; stages have ``width * (1, 2, 4, 8)``. 64 is the standard size.
        layers: residual blocks per stage; ``(2, 2, 2, 2)`` is the 18-layer network.
        in_channels: input channels.

    Shape:
        input ``(B, C, T, H, W)``; pyramid = the four stages' outputs, strides ``(1,2,2)``, ``(2,4,4)``,
        ``(4,8,8)``, ``(8,16,16)`` for r3d/r2plus1d and ``(1, s, s)`` for mc3. A temporal axis shorter than the
        stride is reduced to 1 (padding keeps it valid), so any ``T >= 1`` works.

    Example:
        >>> enc = ResNet3D("r3d", width=8, layers=(1, 1, 1, 1))
        >>> out = enc(torch.zeros(2, 3, 8, 32, 32))
        >>> tuple(out.dense.shape), tuple(out.pooled.shape)
        ((2, 64, 1, 2, 2), (2, 64))
    """

    def __init__(
        self,
        arch: Arch = "r3d",
        width: int = 64,
        layers: Sequence[int] = (2, 2, 2, 2),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if arch not in _ARCHS:
            raise ValueError(f"ResNet3D: unknown arch {arch!r}; choose from {list(_ARCHS)}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"ResNet3D: layers must be 4 positive block counts, got {tuple(layers)}")
        if width < 1:
            raise ValueError(f"ResNet3D: width must be >= 1, got {width}")
        self.arch = arch
        self.stem = _stem(arch, in_channels, width)
        builders = _conv_builders(arch)
        inplanes = width
        channels = []
        strides = []
        t_stride, s_stride = 1, 2
        for i, (n_blocks, builder) in enumerate(zip(layers, builders, strict=True)):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes:
                ds_stride = builder.get_downsample_stride(stride)  # type: ignore[attr-defined]
                downsample = nn.Sequential(
                    nn.Conv3d(inplanes, planes, kernel_size=1, stride=ds_stride, bias=False),
                    nn.BatchNorm3d(planes),
                )
            blocks = [BasicBlock(inplanes, planes, builder, stride, downsample)]
            blocks += [BasicBlock(planes, planes, builder) for _ in range(1, int(n_blocks))]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = planes
            if stride == 2:
                ds = builder.get_downsample_stride(stride)  # type: ignore[attr-defined]
                t_stride *= ds[0]
                s_stride *= ds[1]
            channels.append(planes)
            strides.append((t_stride, s_stride, s_stride))
        self.spec = EncoderSpec(channels=tuple(channels), strides=tuple(strides), in_channels=in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VideoResNet initialisation.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.stem(video)
        feats = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return tuple(feats)


def r3d_18(**kwargs) -> ResNet3D:
    """R3D-18 (33.2M parameters without the classifier, as torchvision's ``r3d_18``)."""
    return ResNet3D("r3d", **{"width": 64, "layers": (2, 2, 2, 2), **kwargs})


def mc3_18(**kwargs) -> ResNet3D:
    """MC3-18 (11.5M parameters without the classifier, as torchvision's ``mc3_18``)."""
    return ResNet3D("mc3", **{"width": 64, "layers": (2, 2, 2, 2), **kwargs})


def r2plus1d_18(**kwargs) -> ResNet3D:
    """R(2+1)D-18 (31.3M parameters without the classifier, as torchvision's ``r2plus1d_18``)."""
    return ResNet3D("r2plus1d", **{"width": 64, "layers": (2, 2, 2, 2), **kwargs})


def r3d_tiny(**kwargs) -> ResNet3D:
    """A CPU preset of R3D: width 16, one block per stage (0.9M parameters)."""
    return ResNet3D("r3d", **{"width": 16, "layers": (1, 1, 1, 1), **kwargs})


def mc3_tiny(**kwargs) -> ResNet3D:
    """A CPU preset of MC3: width 16, one block per stage."""
    return ResNet3D("mc3", **{"width": 16, "layers": (1, 1, 1, 1), **kwargs})


def r2plus1d_tiny(**kwargs) -> ResNet3D:
    """A CPU preset of R(2+1)D: width 16, one block per stage."""
    return ResNet3D("r2plus1d", **{"width": 16, "layers": (1, 1, 1, 1), **kwargs})
