"""X3D (Feichtenhofer 2020) from ``pytorchvideo.models.x3d.create_x3d``, without its head, as a dense encoder.

Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020.

The network is built by pytorchvideo's ``create_x3d``; only its stem and four residual stages are kept (the head,
``blocks[5]``: ``conv5`` 1x1x1 projection, pooling, the 2048-wide ``lin5`` and the classifier, is dropped). The
kept blocks stay in a ``ModuleList`` named ``blocks`` with pytorchvideo's indices, so a pytorchvideo X3D state
dict without its ``blocks.5.`` keys loads as is.

X3D-XS, -S and -M share one network (width factor 2.0, depth factor 2.2, stage depths 3/5/11/7) and differ only
in the clip they are trained on: XS 4 frames at 160 px, S 13 at 160 px, M 16 at 224 px (X3D-L: depth factor 5.0,
16 frames at 312 px). One builder, :func:`x3d_xs`, makes it; ``ENCODERS`` registers it as ``x3d_xs``, ``x3d_s``
and ``x3d_m``. The paper gives 3.76M parameters for XS/S/M and 6.1M for L, head included; pytorchvideo's
networks count 3.79M and 6.15M with a 400-class head, of which the head is 1.79M, so the backbones here have
2.01M (XS/S/M) and 4.37M (L) parameters.

Every strided convolution pads (3x3 kernels, padding 1; 1x1 shortcut projections), so every stage is
``ceil(size / stride)``; time is never downsampled.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from stssl.encoders.base import Encoder
from stssl.types import EncoderSpec

__all__ = ["X3D", "x3d_l", "x3d_tiny", "x3d_xs"]

_STRIDES = ((1, 2, 2), (1, 4, 4), (1, 8, 8), (1, 16, 16), (1, 32, 32))


class X3D(Encoder):
    """An X3D backbone: stem + four residual stages, each a pyramid stage.

    Args:
        width_factor: X3D's channel expansion ``gamma_w`` (2.0 for XS-L); stages have
            ``round_width((12, 24, 48, 96) * width_factor)`` channels (multiples of 8, at least 8).
        depth_factor: X3D's depth expansion ``gamma_d`` (2.2 for XS/S/M, 5.0 for L); stages have
            ``ceil((1, 2, 5, 3) * depth_factor)`` blocks.
        stem_dim_in: channels of the first stage before width expansion (12 in the paper).
        bottleneck_factor: inner width of each bottleneck relative to its output (2.25 in the paper).
        se_ratio: squeeze-excitation reduction on every other block; 0 disables it.
        in_channels: input channels.
        norm_momentum: batch-norm momentum.

    Shape:
        input ``(B, C, T, H, W)``, any ``T, H, W >= 1``; pyramid stage ``i`` (stem, then stages 2-5) is
        ``(B, spec.channels[i], T, ceil(H / 2^(i+1)), ceil(W / 2^(i+1)))``, strides ``(1, 2, 2)`` …
        ``(1, 32, 32)``.

    Example:
        >>> enc = X3D(width_factor=0.5, depth_factor=0.5)
        >>> out = enc(torch.zeros(2, 3, 4, 32, 32))
        >>> [tuple(p.shape) for p in out.pyramid]
        [(2, 8, 4, 16, 16), (2, 8, 4, 8, 8), (2, 16, 4, 4, 4), (2, 24, 4, 2, 2), (2, 48, 4, 1, 1)]
    """

    def __init__(
        self,
        width_factor: float = 2.0,
        depth_factor: float = 2.2,
        stem_dim_in: int = 12,
        bottleneck_factor: float = 2.25,
        se_ratio: float = 0.0625,
        in_channels: int = 3,
        norm_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("width_factor", width_factor), ("depth_factor", depth_factor)):
            if not value > 0:
                raise ValueError(f"X3D: {name} must be > 0, got {value}")
        if stem_dim_in < 1 or in_channels < 1:
            raise ValueError(
                f"X3D: stem_dim_in and in_channels must be >= 1, got {stem_dim_in}, {in_channels}"
            )
        if not bottleneck_factor > 0 or se_ratio < 0:
            raise ValueError(
                f"X3D: bottleneck_factor must be > 0 and se_ratio >= 0, got {bottleneck_factor}, {se_ratio}"
            )
        # fvcore, imported by pytorchvideo, calls the deprecated torch.jit.script at import
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            from pytorchvideo.models.x3d import create_x3d

        net = create_x3d(
            input_channel=in_channels,
            width_factor=width_factor,
            depth_factor=depth_factor,
            stem_dim_in=stem_dim_in,
            bottleneck_factor=bottleneck_factor,
            se_ratio=se_ratio,
            norm_momentum=norm_momentum,
        )
        self.blocks = nn.ModuleList(list(net.blocks)[:5])  # drop the head, blocks[5]
        channels = tuple(_out_channels(block) for block in self.blocks)
        self.spec = EncoderSpec(channels=channels, strides=_STRIDES, in_channels=in_channels)

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = []
        x = video
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return tuple(feats)


def _out_channels(block: nn.Module) -> int:
    """Output channels of a stem or residual stage: its last batch norm (the last block's ``norm_c``)."""
    norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm3d)]
    return norms[-1].num_features


def x3d_xs(**kwargs) -> X3D:
    """X3D-XS, -S and -M: one network (2.01M parameters without the head), registered under the three names.

    The three differ only in the clips they are trained on (XS 4 frames at 160 px, S 13 at 160 px, M 16 at
    224 px), which is the data's business, not the encoder's; ``ENCODERS`` maps ``"x3d_s"`` and ``"x3d_m"`` to this
    builder.
    """
    return X3D(**{"width_factor": 2.0, "depth_factor": 2.2, **kwargs})


def x3d_l(**kwargs) -> X3D:
    """X3D-L: depth factor 5.0, trained on 16-frame 312 px clips (4.37M parameters without the head)."""
    return X3D(**{"width_factor": 2.0, "depth_factor": 5.0, **kwargs})


def x3d_tiny(**kwargs) -> X3D:
    """A CPU preset of X3D: width and depth factors 0.5 (stages of 8/16/24/48 channels, 1/1/3/2 blocks)."""
    return X3D(**{"width_factor": 0.5, "depth_factor": 0.5, **kwargs})
