"""S3D (separable 3D Inception, Xie et al. 2018) with dense pyramid output and a width knob.

Xie, Sun, Huang, Tu, Murphy, "Rethinking Spatiotemporal Feature Learning: Speed-Accuracy Trade-offs in Video
Classification", ECCV 2018. Every 3x3x3 convolution of an inflated Inception-v1 is factorised into a 1x3x3
spatial and a 3x1x1 temporal convolution.

The blocks are torchvision's (``torchvision.models.video.s3d``: ``TemporalSeparableConv``,
``SepInceptionBlock3D``; ``torchvision.ops.Conv3dNormActivation``), assembled here with every channel count
scaled by ``width / 64``. The module ``features`` is an ``nn.Sequential`` indexed exactly as torchvision's
``S3D.features``, so at ``width=64`` a torchvision state dict (without ``classifier``) loads as is and the
parameter count (7,910,048) equals torchvision's ``s3d`` without its classifier.

Differences from torchvision's network:

- The last max-pool (2x2x2, stride 2, no padding) uses ``ceil_mode=True``, so an odd-sized ``/16`` map keeps its
  last row/frame instead of dropping it (torchvision floors). For even ``/16`` maps (e.g. 224 px, 16 or 64
  frames) the two are identical; with ceil mode every stage is ``ceil(size / stride)`` and 1 frame is enough.
- Batch-norm momentum defaults to PyTorch's 0.1 (``bn_momentum``); torchvision uses 0.001, which suits
  fine-tuning its TF-ported weights but leaves running statistics stale when training from scratch. Epsilon is
  torchvision's 1e-3.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.video.s3d import SepInceptionBlock3D, TemporalSeparableConv
from torchvision.ops.misc import Conv3dNormActivation

from stssl.encoders.base import Encoder
from stssl.types import EncoderSpec

__all__ = ["S3D", "s3d", "s3d_tiny"]

# Inception-v1 mixed blocks (Szegedy et al. 2015, Table 1) at width 64: per block the output channels of the
# 1x1 branch, (mid, out) of the two separable-conv branches, and the pooled branch's 1x1 projection.
_MIXED_3 = ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64))
_MIXED_4 = (
    (192, 96, 208, 16, 48, 64),
    (160, 112, 224, 24, 64, 64),
    (128, 128, 256, 24, 64, 64),
    (112, 144, 288, 32, 64, 64),
    (256, 160, 320, 32, 128, 128),
)
_MIXED_5 = ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128))

# Index in ``features`` of the last module of each pyramid stage (torchvision's numbering).
_STAGE_ENDS = (3, 6, 12, 15)
_STRIDES = ((2, 4, 4), (2, 8, 8), (4, 16, 16), (8, 32, 32))


class S3D(Encoder):
    """S3D video encoder; four-stage pyramid, one stage per resolution between max-pools.

    Stages (standard channels at ``width=64``): ``features[0:4]`` separable stem and ``Conv2c`` (192, stride
    ``(2, 4, 4)``), ``features[4:7]`` ``Mixed_3b-c`` (480, ``(2, 8, 8)``), ``features[7:13]`` ``Mixed_4b-f``
    (832, ``(4, 16, 16)``), ``features[13:16]`` ``Mixed_5b-c`` (1024, ``(8, 32, 32)``).

    Args:
        width: channels of the stem; every channel count of the network is scaled by ``width / 64`` (rounded,
            at least 1). 64 is the standard size.
        in_channels: input channels.
        bn_momentum: batch-norm momentum (torchvision uses 0.001; see the module docstring).

    Shape:
        input ``(B, C, T, H, W)``, any ``T, H, W >= 1``; pyramid stage ``i`` is
        ``(B, spec.channels[i], ceil(T / t_i), ceil(H / h_i), ceil(W / w_i))`` with ``(t_i, h_i, w_i) =
        spec.strides[i]``: every strided convolution and pool pads, and the last, pad-free pool rounds up.

    Example:
        >>> enc = S3D(width=8)
        >>> out = enc(torch.zeros(2, 3, 8, 32, 32))
        >>> [tuple(p.shape) for p in out.pyramid]
        [(2, 24, 4, 8, 8), (2, 60, 4, 4, 4), (2, 104, 2, 2, 2), (2, 128, 1, 1, 1)]
        >>> enc.spec.strides[-1], tuple(out.pooled.shape)
        ((8, 32, 32), (2, 128))
    """

    def __init__(self, width: int = 64, in_channels: int = 3, bn_momentum: float = 0.1) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"S3D: width must be >= 1, got {width}")
        if in_channels < 1:
            raise ValueError(f"S3D: in_channels must be >= 1, got {in_channels}")

        def ch(c: int) -> int:
            return max(1, round(c * width / 64))

        norm = partial(nn.BatchNorm3d, eps=1e-3, momentum=bn_momentum)
        layers: list[nn.Module] = [
            TemporalSeparableConv(in_channels, ch(64), 7, 2, 3, norm),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            Conv3dNormActivation(ch(64), ch(64), kernel_size=1, stride=1, norm_layer=norm),
            TemporalSeparableConv(ch(64), ch(192), 3, 1, 1, norm),
        ]
        dim = ch(192)
        channels = [dim]
        pools = (
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.MaxPool3d(kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1)),
            nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 0, 0), ceil_mode=True),
        )
        for pool, mixed in zip(pools, (_MIXED_3, _MIXED_4, _MIXED_5), strict=True):
            layers.append(pool)
            for b0, b1_mid, b1, b2_mid, b2, b3 in mixed:
                outs = (ch(b0), ch(b1), ch(b2), ch(b3))
                layers.append(
                    SepInceptionBlock3D(dim, outs[0], ch(b1_mid), outs[1], ch(b2_mid), outs[2], outs[3], norm)
                )
                dim = sum(outs)
            channels.append(dim)
        self.features = nn.Sequential(*layers)
        self.width = width
        self.spec = EncoderSpec(channels=tuple(channels), strides=_STRIDES, in_channels=in_channels)

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = []
        x = video
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _STAGE_ENDS:
                feats.append(x)
        return tuple(feats)


def s3d(**kwargs) -> S3D:
    """S3D at the standard width 64 (7.91M parameters, as torchvision's ``s3d`` without the classifier)."""
    return S3D(**{"width": 64, **kwargs})


def s3d_tiny(**kwargs) -> S3D:
    """A CPU preset of S3D: width 8, every channel count divided by 8 (0.13M parameters, ``D = 128``)."""
    return S3D(**{"width": 8, **kwargs})
