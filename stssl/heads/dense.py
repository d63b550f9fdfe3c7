"""Dense decoders over an encoder pyramid: the monodepth2-class multi-scale disparity decoder.

:class:`DisparityDecoder` works on 2-D per-frame pyramids ``(N, C_i, H_i, W_i)`` (shallow to deep, each stage
half the size of the one before, as :meth:`stssl.encoders.frame2d.FrameEncoder2D.forward_frames` gives).
:func:`frames_from_pyramid` folds the 5-D pyramid of a per-frame encoder (temporal stride 1) into that form,
and :meth:`DisparityDecoder.forward_video` does the round trip for clips.

Design follows monodepth2's ``DepthDecoder`` (Godard et al., "Digging Into Self-Supervised Monocular Depth
Estimation", ICCV 2019): from the deepest stage up, each level applies conv3x3 + ELU, upsamples (nearest) to the
next shallower stage's size, concatenates that stage (skip connection), and applies conv3x3 + ELU; convolutions
use reflection padding. Level ``s`` ends at ``1/2^s`` of the input, and a sigmoid conv3x3 head there gives the
disparity at scale ``s``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.types import EncoderSpec

__all__ = ["DisparityDecoder", "PyramidDecoder", "disp_to_depth", "frames_from_pyramid", "TINY_DEC_CHANNELS"]

#: Decoder widths for CPU presets (monodepth2 uses ``(16, 32, 64, 128, 256)``).
TINY_DEC_CHANNELS: tuple[int, ...] = (8, 8, 16, 16, 32)


def disp_to_depth(
    disp: torch.Tensor, min_depth: float, max_depth: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Map a sigmoid disparity in ``[0, 1]`` to a scaled disparity and a depth in ``[min_depth, max_depth]``.

    monodepth2's mapping: ``scaled_disp = 1 / max_depth + (1 / min_depth - 1 / max_depth) * disp`` and
    ``depth = 1 / scaled_disp``, so ``disp = 0`` is ``max_depth`` and ``disp = 1`` is ``min_depth``.

    Args:
        disp: any shape, e.g. ``(B, 1, H, W)``, values in ``[0, 1]``.
        min_depth: nearest depth (scene units, e.g. metres), ``> 0``.
        max_depth: farthest depth, ``> min_depth``.

    Returns:
        ``(scaled_disp, depth)``, both shaped like ``disp``.

    Example:
        >>> scaled, depth = disp_to_depth(torch.tensor([0.0, 1.0]), min_depth=0.1, max_depth=100.0)
        >>> depth.tolist()
        [100.0, 0.10000000149011612]
        >>> torch.allclose(scaled * depth, torch.ones(2))
        True
    """
    if not isinstance(disp, torch.Tensor):
        raise TypeError(f"disp_to_depth: disp must be a torch.Tensor, got {type(disp).__name__}")
    if not 0 < min_depth < max_depth:
        raise ValueError(
            f"disp_to_depth: expected 0 < min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}"
        )
    min_disp = 1.0 / max_depth
    max_disp = 1.0 / min_depth
    scaled_disp = min_disp + (max_disp - min_disp) * disp
    return scaled_disp, 1.0 / scaled_disp


def frames_from_pyramid(pyramid: Sequence[torch.Tensor]) -> tuple[tuple[torch.Tensor, ...], int]:
    """Fold a per-frame encoder's 5-D pyramid into 2-D per-frame features.

    Args:
        pyramid: stages ``(B, C_i, T, H_i, W_i)`` sharing ``B`` and ``T`` (temporal stride 1, e.g. from
            :class:`~stssl.encoders.frame2d.FrameEncoder2D` or any encoder run on a single frame).

    Returns:
        ``(stages, T)``: each stage as ``(B * T, C_i, H_i, W_i)`` (frames of one clip adjacent), and ``T``.

    Example:
        >>> stages, t = frames_from_pyramid([torch.zeros(2, 4, 3, 8, 8), torch.zeros(2, 6, 3, 4, 4)])
        >>> [tuple(s.shape) for s in stages], t
        ([(6, 4, 8, 8), (6, 6, 4, 4)], 3)
    """
    if len(pyramid) == 0:
        raise ValueError("frames_from_pyramid: pyramid is empty")
    sizes: dict[str, int] = {}
    for i, feat in enumerate(pyramid):
        try:
            check_shape(feat, "B * T * *", sizes, name=f"pyramid[{i}]")
        except ValueError as err:
            raise ValueError(
                f"{err} (frames_from_pyramid needs a per-frame pyramid: every stage with the same B and T)"
            ) from None
    t = pyramid[0].shape[2]
    return tuple(rearrange(f, "b c t h w -> (b t) c h w") for f in pyramid), t


class _ReflectPad1(nn.Module):
    """Pad one pixel on each side by reflection; by replication along an axis of size 1 (where reflection is
    undefined, e.g. the ``/32`` stage of a 32-pixel-high input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
        return F.pad(x, (1, 1, 1, 1), mode=mode)


class _ConvELU(nn.Sequential):
    """Reflection-padded conv3x3 followed by ELU (monodepth2's ``ConvBlock``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(_ReflectPad1(), nn.Conv2d(in_channels, out_channels, 3), nn.ELU(inplace=True))


class _DispHead(nn.Sequential):
    """Reflection-padded conv3x3 to one channel, then a sigmoid."""

    def __init__(self, in_channels: int) -> None:
        super().__init__(_ReflectPad1(), nn.Conv2d(in_channels, 1, 3), nn.Sigmoid())


class DisparityDecoder(nn.Module):
    """Multi-scale U-Net disparity decoder with sigmoid outputs (monodepth2's ``DepthDecoder``).

    Args:
        num_ch_enc: channels of the encoder stages, shallow to deep (``encoder.spec.channels``; monodepth2's
            ResNet-18 gives ``(64, 64, 128, 256, 512)``). Stage ``i`` must be at ``1/2^(i+1)`` of the input.
        num_ch_dec: decoder channels per level, one per encoder stage; level ``i`` ends at ``1/2^i``.
        scales: scales ``s`` at which to output a disparity map (``1/2^s`` of the input); each
            ``0 <= s < len(num_ch_enc)``.

    Shape:
        - features: ``len(num_ch_enc)`` tensors ``(N, num_ch_enc[i], H_i, W_i)``, ``H_i = ceil(H / 2^(i+1))``.
        - output: ``{s: (N, 1, H_s, W_s)}`` for each ``s`` in ``scales``, values in ``(0, 1)``; ``H_s`` is the
          size of stage ``s - 1`` (``ceil(H / 2^s)``) and ``H_0`` is ``image_size`` (default ``2 * H_0``
          of stage 0, which is ``H`` for even ``H``).

    Example:
        >>> from stssl.encoders.frame2d import resnet18_2d_tiny
        >>> enc = resnet18_2d_tiny()
        >>> dec = DisparityDecoder(enc.spec.channels, num_ch_dec=TINY_DEC_CHANNELS)
        >>> disps = dec(enc.forward_frames(torch.rand(2, 3, 32, 96)))
        >>> {s: tuple(d.shape) for s, d in disps.items()}
        {0: (2, 1, 32, 96), 1: (2, 1, 16, 48), 2: (2, 1, 8, 24), 3: (2, 1, 4, 12)}
    """

    def __init__(
        self,
        num_ch_enc: Sequence[int] = (64, 64, 128, 256, 512),
        num_ch_dec: Sequence[int] = (16, 32, 64, 128, 256),
        scales: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        num_ch_enc = tuple(int(c) for c in num_ch_enc)
        num_ch_dec = tuple(int(c) for c in num_ch_dec)
        scales = tuple(sorted({int(s) for s in scales}))
        n = len(num_ch_enc)
        if n == 0 or any(c < 1 for c in num_ch_enc):
            raise ValueError(
                f"DisparityDecoder: num_ch_enc must be positive channel counts, got {num_ch_enc}"
            )
        if len(num_ch_dec) != n or any(c < 1 for c in num_ch_dec):
            raise ValueError(
                f"DisparityDecoder: num_ch_dec must give {n} positive channel counts (one per encoder stage of "
                f"num_ch_enc={num_ch_enc}), got {num_ch_dec}"
            )
        if not scales or any(not 0 <= s < n for s in scales):
            raise ValueError(
                f"DisparityDecoder: scales must be non-empty and within [0, {n - 1}], got {scales}"
            )
        self.num_ch_enc = num_ch_enc
        self.num_ch_dec = num_ch_dec
        self.scales = scales
        # Level i (deepest first): conv on the level below, upsample, concat skip stage i-1, conv.
        self.upconvs_in = nn.ModuleList()
        self.upconvs_out = nn.ModuleList()
        for i in range(n):
            c_in = num_ch_enc[-1] if i == n - 1 else num_ch_dec[i + 1]
            self.upconvs_in.append(_ConvELU(c_in, num_ch_dec[i]))
            skip = num_ch_enc[i - 1] if i > 0 else 0
            self.upconvs_out.append(_ConvELU(num_ch_dec[i] + skip, num_ch_dec[i]))
        self.dispconvs = nn.ModuleDict({str(s): _DispHead(num_ch_dec[s]) for s in scales})

    @classmethod
    def from_spec(cls, spec: EncoderSpec, **kwargs) -> DisparityDecoder:
        """A decoder for an encoder's pyramid: ``num_ch_enc = spec.channels``; ``kwargs`` go to the constructor.

        Raises:
            ValueError: when the spec's strides are not the per-frame ``(1, 2^(i+1), 2^(i+1))`` pattern.
        """
        expected = tuple((1, 2 ** (i + 1), 2 ** (i + 1)) for i in range(len(spec.channels)))
        if tuple(spec.strides) != expected:
            raise ValueError(
                f"DisparityDecoder.from_spec: needs a per-frame pyramid with strides {expected}, got {spec.strides}"
            )
        return cls(num_ch_enc=spec.channels, **kwargs)

    def forward(
        self, features: Sequence[torch.Tensor], image_size: tuple[int, int] | None = None
    ) -> dict[int, torch.Tensor]:
        """Decode disparities from a 2-D pyramid.

        Args:
            features: ``(N, C_i, H_i, W_i)`` per stage, shallow to deep, ``C_i == num_ch_enc[i]``.
            image_size: ``(H, W)`` of the input image, the size of the scale-0 output; by default twice the
                size of ``features[0]``.

        Returns:
            ``{scale: (N, 1, H_s, W_s)}`` sigmoid disparities, see the class docstring.
        """
        n = len(self.num_ch_enc)
        if len(features) != n:
            raise ValueError(
                f"DisparityDecoder: expected {n} feature stages with channels {self.num_ch_enc}, got {len(features)}"
                f" with shapes {[tuple(f.shape) for f in features]}"
            )
        sizes: dict[str, int] = {}
        for i, (feat, c) in enumerate(zip(features, self.num_ch_enc, strict=True)):
            check_shape(feat, f"N {c} * *", sizes, name=f"DisparityDecoder features[{i}]")
        if image_size is None:
            h0, w0 = features[0].shape[-2:]
            image_size = (2 * h0, 2 * w0)
        elif len(image_size) != 2 or any(int(s) < 1 for s in image_size):
            raise ValueError(f"DisparityDecoder: image_size must be (H, W) positive, got {image_size}")
        out: dict[int, torch.Tensor] = {}
        x = features[-1]
        for i in range(n - 1, -1, -1):
            x = self.upconvs_in[i](x)
            size = tuple(features[i - 1].shape[-2:]) if i > 0 else tuple(int(s) for s in image_size)
            x = F.interpolate(x, size=size, mode="nearest")
            if i > 0:
                x = torch.cat([x, features[i - 1]], dim=1)
            x = self.upconvs_out[i](x)
            if i in self.scales:
                out[i] = self.dispconvs[str(i)](x)
        return dict(sorted(out.items()))

    def forward_video(
        self, pyramid: Sequence[torch.Tensor], image_size: tuple[int, int] | None = None
    ) -> dict[int, torch.Tensor]:
        """Decode every frame of a per-frame encoder's 5-D pyramid.

        Args:
            pyramid: ``(B, C_i, T, H_i, W_i)`` per stage (see :func:`frames_from_pyramid`).
            image_size: ``(H, W)`` of the input frames (see :meth:`forward`).

        Returns:
            ``{scale: (B, 1, T, H_s, W_s)}``.

        Example:
            >>> from stssl.encoders.frame2d import resnet18_2d_tiny
            >>> enc = resnet18_2d_tiny()
            >>> dec = DisparityDecoder.from_spec(enc.spec, num_ch_dec=TINY_DEC_CHANNELS, scales=(0, 2))
            >>> disps = dec.forward_video(enc(torch.rand(2, 3, 4, 32, 32)).pyramid)
            >>> {s: tuple(d.shape) for s, d in disps.items()}
            {0: (2, 1, 4, 32, 32), 2: (2, 1, 4, 8, 8)}
        """
        stages, t = frames_from_pyramid(pyramid)
        return {
            s: rearrange(d, "(b t) c h w -> b c t h w", t=t)
            for s, d in self.forward(stages, image_size).items()
        }


def _conv_elu(in_channels: int, out_channels: int, kernel: tuple[int, int, int]) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2, kernel[2] // 2)
    return nn.Sequential(nn.Conv3d(in_channels, out_channels, kernel, padding=padding), nn.ELU(inplace=True))


class PyramidDecoder(nn.Module):
    """A light feature-pyramid decoder from any encoder's pyramid to a dense ``(B, K, L, H, W)`` output.

    Every stage gets a 1x1x1 lateral convolution; from the deepest stage up, the map is upsampled (trilinear) to
    the next shallower stage's ``(T_i, H_i, W_i)``, concatenated with its lateral and mixed by a 1x3x3 convolution
    + ELU; the result is upsampled to the requested output size and a 1x3x3 conv + ELU + 1x3x3 conv head gives
    ``out_channels`` raw values (no activation: the task picks one). Stage sizes are read from the tensors, so
    3D CNNs (time downsampled, upsampled back here), per-frame 2D encoders and single frames all work. (The
    monodepth2-style :class:`DisparityDecoder` needs a per-frame pyramid with ``/2 … /32``
    strides, so it does not serve 3D CNNs.)

    Args:
        enc_channels: ``C_i`` per encoder stage, shallow to deep (``encoder.spec.channels``).
        out_channels: ``K``, output channels.
        dec_channels: decoder width per stage (same length); ``None`` uses ``max(8, C_i // 2)``.

    Shape:
        - pyramid: ``(B, C_i, T_i, H_i, W_i)`` per stage.
        - output: ``(B, out_channels, L, H, W)`` for ``size=(L, H, W)``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc = r3d_tiny(width=4)
        >>> dec = PyramidDecoder(enc.spec.channels, out_channels=2)
        >>> tuple(dec(enc(torch.rand(2, 3, 4, 32, 32)).pyramid, (4, 32, 32)).shape)
        (2, 2, 4, 32, 32)
    """

    def __init__(
        self, enc_channels: Sequence[int], out_channels: int, dec_channels: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        enc = tuple(int(c) for c in enc_channels)
        dec = tuple(max(8, c // 2) for c in enc) if dec_channels is None else tuple(int(c) for c in dec_channels)
        if not enc or any(c < 1 for c in enc):
            raise ValueError(f"PyramidDecoder: enc_channels must be positive channel counts, got {enc}")
        if len(dec) != len(enc) or any(c < 1 for c in dec):
            raise ValueError(
                f"PyramidDecoder: dec_channels must give {len(enc)} positive widths (one per encoder stage of "
                f"enc_channels={enc}), got {dec}"
            )
        if out_channels < 1:
            raise ValueError(f"PyramidDecoder: out_channels must be >= 1, got {out_channels}")
        self.enc_channels = enc
        self.dec_channels = dec
        self.out_channels = int(out_channels)
        self.lateral = nn.ModuleList(_conv_elu(c, d, (1, 1, 1)) for c, d in zip(enc, dec, strict=True))
        self.fuse = nn.ModuleList(_conv_elu(dec[i] + dec[i + 1], dec[i], (1, 3, 3)) for i in range(len(enc) - 1))
        self.head = nn.Sequential(
            _conv_elu(dec[0], dec[0], (1, 3, 3)), nn.Conv3d(dec[0], self.out_channels, (1, 3, 3), padding=(0, 1, 1))
        )

    def forward(self, pyramid: Sequence[torch.Tensor], size: tuple[int, int, int]) -> torch.Tensor:
        if len(pyramid) != len(self.enc_channels):
            raise ValueError(f"PyramidDecoder: got {len(pyramid)} pyramid stages, built for {len(self.enc_channels)}")
        sizes: dict[str, int] = {}
        lateral = []
        for i, (feat, layer) in enumerate(zip(pyramid, self.lateral, strict=True)):
            check_shape(feat, f"B {self.enc_channels[i]} * * *", sizes, name=f"PyramidDecoder pyramid[{i}]")
            lateral.append(layer(feat))
        x = lateral[-1]
        for i in range(len(lateral) - 2, -1, -1):
            x = F.interpolate(x, size=lateral[i].shape[2:], mode="trilinear", align_corners=False)
            x = self.fuse[i](torch.cat([x, lateral[i]], dim=1))
        x = F.interpolate(x, size=tuple(int(s) for s in size), mode="trilinear", align_corners=False)
        return self.head(x)
