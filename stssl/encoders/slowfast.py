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
features are brought to the slow pathway's ``ceil(T / alpha)`` frames by :func:`pool_fast_to_slow`, which
averages them with the fusion convolution's temporal geometry (windows of ``fusion_kernel`` frames, stride
``alpha``, padding ``fusion_kernel // 2``, padded frames not counted), so the window of slow frame ``j`` is
centred on video frame ``alpha * j``, the frame the slow pathway sees (windows are cut short at the clip's ends).
They are concatenated on channels after the slow features. The last stage's slow channels are exactly the slow
half of the 2304-channel (R50) feature that pytorchvideo's head pools and classifies; its fast channels are
pytorchvideo's fast-pathway output, averaged per slow frame, so ``pooled`` weights the fast frames slightly
unevenly (windows overlap) where pytorchvideo's head averages them uniformly.
"""

from __future__ import annotations

import warnings
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.types import EncoderSpec

__all__ = ["SlowFast", "pool_fast_to_slow", "slowfast_r50", "slowfast_r101", "slowfast_tiny"]

_DEPTHS = (18, 50, 101, 152)  # pytorchvideo's stage depths: 18 -> 1/1/1/1 bottlenecks, 50 -> 3/4/6/3, ...


def pool_fast_to_slow(fast: torch.Tensor, alpha: int, kernel: int) -> torch.Tensor:
    """Average fast-pathway features onto the slow frames: window ``j`` is centred on fast frame ``alpha * j``.

    The temporal geometry of SlowFast's fast-to-slow fusion convolution (kernel ``kernel``, stride ``alpha``,
    padding ``kernel // 2``): output frame ``j`` is the mean of fast frames ``[alpha*j - kernel//2,
    alpha*j + kernel//2]`` that lie inside the clip (padding is not counted), so the pooled features line up with
    the slow pathway's frames ``video[:, :, ::alpha]``.

    Args:
        fast: ``(B, C, T, H, W)`` fast-pathway features, one per input frame.
        alpha: slow-pathway frame stride (>= 1).
        kernel: window length in frames (odd, >= 1).

    Returns:
        ``(B, C, ceil(T / alpha), H, W)``.

    Example:
        >>> ramp = torch.arange(12.0).view(1, 1, 12, 1, 1)  # fast frame t holds t
        >>> pool_fast_to_slow(ramp, alpha=4, kernel=3).flatten().tolist()  # windows [0, 1], [3, 5], [7, 9]
        [0.5, 4.0, 8.0]
    """
    T = check_shape(fast, "B C T H W", name="pool_fast_to_slow: fast")["T"]
    if alpha < 1 or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"pool_fast_to_slow: need alpha >= 1 and an odd kernel >= 1, got alpha={alpha}, kernel={kernel}")
    if kernel == 1:
        return fast[:, :, ::alpha]
    # Zero-pad explicitly (avg_pool3d refuses T < kernel even with its own padding), sum each window, divide by the
    # frames it really holds. T' = (T + 2 (k // 2) - k) // alpha + 1 = ceil(T / alpha) for odd k.
    half = kernel // 2
    sums = F.avg_pool3d(F.pad(fast, (0, 0, 0, 0, half, half)), (kernel, 1, 1), (alpha, 1, 1), divisor_override=1)
    centres = torch.arange(sums.shape[2], device=fast.device) * alpha
    held = (centres + half).clamp_max(T - 1) - (centres - half).clamp_min(0) + 1
    return sums / held.to(sums.dtype).view(-1, 1, 1)


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
        self.fusion_kernel = fusion_kernel
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
        """Pool ``fast`` onto ``slow``'s frames (:func:`pool_fast_to_slow`); concatenate on channels after ``slow``."""
        return torch.cat([slow, pool_fast_to_slow(fast, self.alpha, self.fusion_kernel)], dim=1)


def slowfast_r50(**kwargs) -> SlowFast:
    """SlowFast R50 8x8 (33.6M parameters, as pytorchvideo's ``slowfast_r50`` without the classifier)."""
    return SlowFast(**{"depth": 50, "width": 64, "alpha": 4, "beta_inv": 8, "fusion_kernel": 7, **kwargs})


def slowfast_r101(**kwargs) -> SlowFast:
    """SlowFast R101 8x8 (62.0M parameters, as pytorchvideo's ``slowfast_r101`` without the classifier)."""
    return SlowFast(**{"depth": 101, "width": 64, "alpha": 4, "beta_inv": 8, "fusion_kernel": 7, **kwargs})


def slowfast_tiny(**kwargs) -> SlowFast:
    """A CPU preset: one bottleneck per stage, slow width 8 (stages 32-256), ``beta_inv=4``, ``alpha=4``."""
    return SlowFast(**{"depth": 18, "width": 8, "alpha": 4, "beta_inv": 4, **kwargs})
