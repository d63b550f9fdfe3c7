"""SlowFast (Feichtenhofer et al. 2019) from ``pytorchvideo.models.slowfast.create_slowfast``, one clip in.

Feichtenhofer, Fan, Malik, He, "SlowFast Networks for Video Recognition", ICCV 2019.

The network is built by pytorchvideo's ``create_slowfast``; its stem and four residual stages are kept (the
pathway pooling and classifier, ``blocks[5:]``, are dropped) in a ``ModuleList`` named ``blocks`` with
pytorchvideo's indices, so a pytorchvideo SlowFast state dict without its ``blocks.5.``/``blocks.6.`` keys
loads as is. At the defaults this is SlowFast R50 8x8 (``alpha=4``, ``beta_inv=8``, fusion kernel 7): 33.6M
parameters, pytorchvideo's ``slowfast_r50`` without its 400-class classifier.

The :class:`~stssl.encoders.base.Encoder` contract takes one clip; the wrapper makes both pathways from it:

- fast pathway: every frame of the clip (``T`` frames; the paper's 8x8 model sees 32 frames at stride 2);
- slow pathway: every ``alpha``-th frame, ``video[:, :, ::alpha]`` (``ceil(T / alpha)`` frames). These are the
  frames the time-strided fast-to-slow fusion convolution (kernel ``fusion_kernel``, stride ``alpha``, padding
  ``fusion_kernel // 2``) is centred on, so fused and slow features align frame by frame.

Each pyramid stage fuses the two pathways' stage outputs (before the lateral fusion) into one tensor: the fast
features are averaged over windows of ``alpha`` frames (the last window may be shorter), which brings them to
the slow pathway's ``ceil(T / alpha)`` frames, and concatenated on channels after the slow features. The last
stage is then exactly the 2304-channel (R50) feature that pytorchvideo's head pools and classifies.
"""

from __future__ import annotations

import warnings
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from stssl.encoders.base import Encoder
from stssl.types import EncoderSpec

__all__ = ["SlowFast", "slowfast_r50", "slowfast_r101", "slowfast_tiny"]

_DEPTHS = (18, 50, 101, 152)  # pytorchvideo's stage depths: 18 -> 1/1/1/1 bottlenecks, 50 -> 3/4/6/3, ...


class SlowFast(Encoder):
    """A SlowFast ResNet: two pathways made from one clip, a four-stage pyramid of fused pathways.

    Args:
        depth: the ResNet depth of both pathways, one of 18 (one bottleneck per stage), 50, 101, 152.
        width: channels of the slow stem (64 in the paper); the slow stages have ``width * (4, 8, 16, 32)``
            channels, the fast pathway ``1 / beta_inv`` of the slow pathway's width.
        alpha: frame-rate ratio between the pathways: the slow pathway sees every ``alpha``-th frame.
        beta_inv: channel ratio slow / fast (8 in the paper); must divide ``width``.
        fusion_kernel: temporal kernel of the fast-to-slow fusion convolutions (odd; 7 in the 8x8 R50 model,
            5 in the paper's description).
        fusion_ratio: the fusion convolution's output channels relative to the fast pathway's (2 in the paper).
        in_channels: input channels (both pathways).

    Shape:
        input ``(B, C, T, H, W)`` with ``T >= alpha``, any ``H, W >= 1``; pyramid stage ``i`` is
        ``(B, spec.channels[i], ceil(T / alpha), ceil(H / s), ceil(W / s))`` with ``s = 4, 8, 16, 32``
        (every strided convolution and pool pads), ``spec.channels[i] = slow_i + fast_i``, strides
        ``(alpha, s, s)``. A clip of fewer than ``alpha`` frames is refused: its slow pathway would be one frame
        out of a window the fast pathway does not fill.

    Example:
        >>> enc = SlowFast(depth=18, width=8, alpha=4, beta_inv=4)
        >>> out = enc(torch.zeros(2, 3, 8, 32, 32))
        >>> [tuple(p.shape) for p in out.pyramid]
        [(2, 40, 2, 8, 8), (2, 80, 2, 4, 4), (2, 160, 2, 2, 2), (2, 320, 2, 1, 1)]
        >>> enc.spec.strides[-1], enc.spec.min_frames
        ((4, 32, 32), 4)
    """

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        alpha: int = 4,
        beta_inv: int = 8,
        fusion_kernel: int = 7,
        fusion_ratio: int = 2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"SlowFast: unknown depth {depth}; choose from {list(_DEPTHS)}")
        if alpha < 1 or beta_inv < 1 or fusion_ratio < 1 or in_channels < 1:
            raise ValueError(
                f"SlowFast: alpha, beta_inv, fusion_ratio and in_channels must be >= 1, got {alpha}, {beta_inv}, "
                f"{fusion_ratio}, {in_channels}"
            )
        if width < beta_inv or width % beta_inv:
            raise ValueError(f"SlowFast: width {width} must be a positive multiple of beta_inv={beta_inv}")
        if fusion_kernel < 1 or fusion_kernel % 2 == 0:
            raise ValueError(
                f"SlowFast: fusion_kernel must be odd (so fused features align with the slow frames), got "
                f"{fusion_kernel}"
            )
        # fvcore, imported by pytorchvideo, calls the deprecated torch.jit.script at import
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            from pytorchvideo.models.slowfast import create_slowfast

        net = create_slowfast(
            model_depth=depth,
            input_channels=(in_channels, in_channels),
            stem_dim_outs=(width, width // beta_inv),
            slowfast_channel_reduction_ratio=(beta_inv,),
            slowfast_conv_channel_fusion_ratio=fusion_ratio,
            slowfast_fusion_conv_kernel_size=(fusion_kernel, 1, 1),
            slowfast_fusion_conv_stride=(alpha, 1, 1),
        )
        self.blocks = nn.ModuleList(list(net.blocks)[:5])  # stem + 4 stages; drop pooling and head
        self.alpha = alpha
        self.depth = depth
        slow = tuple(width * 4 * 2**i for i in range(4))
        channels = tuple(c + c // beta_inv for c in slow)
        strides = tuple((alpha, 4 * 2**i, 4 * 2**i) for i in range(4))
        self.spec = EncoderSpec(channels=channels, strides=strides, in_channels=in_channels, min_frames=alpha)

    def pathways(self, video: torch.Tensor) -> list[torch.Tensor]:
        """The two pathway inputs ``[slow (B, C, ceil(T / alpha), H, W), fast (B, C, T, H, W)]`` of a clip."""
        return [video[:, :, :: self.alpha], video]

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        xs = self.pathways(video)
        feats = []
        for i, stage in enumerate(self.blocks):  # pytorchvideo MultiPathWayWithFuse, run step by step
            pathway_blocks = cast(nn.ModuleList, stage.multipathway_blocks)
            fusion = cast("nn.Module | None", stage.multipathway_fusion)
            xs = [block(x) for block, x in zip(pathway_blocks, xs, strict=True)]
            if i > 0:
                feats.append(self._fuse(xs[0], xs[1]))
            if fusion is not None:
                xs = fusion(xs)
        return tuple(feats)

    def _fuse(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        """Average ``fast`` over windows of ``alpha`` frames down to ``slow``'s length; concatenate on channels."""
        if self.alpha > 1:
            fast = F.avg_pool3d(fast, (self.alpha, 1, 1), (self.alpha, 1, 1), ceil_mode=True)
        return torch.cat([slow, fast], dim=1)


def slowfast_r50(**kwargs) -> SlowFast:
    """SlowFast R50 8x8 (33.6M parameters, as pytorchvideo's ``slowfast_r50`` without the classifier)."""
    return SlowFast(**{"depth": 50, "width": 64, "alpha": 4, "beta_inv": 8, "fusion_kernel": 7, **kwargs})


def slowfast_r101(**kwargs) -> SlowFast:
    """SlowFast R101 8x8 (62.0M parameters, as pytorchvideo's ``slowfast_r101`` without the classifier)."""
    return SlowFast(**{"depth": 101, "width": 64, "alpha": 4, "beta_inv": 8, "fusion_kernel": 7, **kwargs})


def slowfast_tiny(**kwargs) -> SlowFast:
    """A CPU preset: one bottleneck per stage, slow width 8 (stages 32-256), ``beta_inv=4``, ``alpha=4``."""
    return SlowFast(**{"depth": 18, "width": 8, "alpha": 4, "beta_inv": 4, **kwargs})
