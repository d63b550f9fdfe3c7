"""Relative camera pose from a pair of frames: monodepth2's pose decoder and a ready-made pose network.

Vector convention: a pose vector is ``(B, 6)`` = ``[axis-angle (rad) | translation (scene units)]``, i.e.
``(rx, ry, rz, tx, ty, tz)``, as :func:`stssl.geometry.pose.pose_vec_to_matrix` reads it (``X_b = R(r) @ X_a
+ t``). :class:`PoseNet` applied to ``(frames_a, frames_b)`` is read as ``b_from_a`` (maps points in frame ``a``
to frame ``b``; for view synthesis feed ``(image_tgt, image_src)`` to get ``src_from_tgt``). The network learns
whatever the photometric loss asks of it, so this is a naming convention for callers, not a constraint.

The decoder scales its raw output by ``0.01`` (as monodepth2 does) so an untrained network predicts a pose
close to identity, which keeps the first warps sensible.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.encoders.frame2d import resnet18_2d, resnet18_2d_tiny

__all__ = ["PoseDecoder", "PoseNet", "posenet_18", "posenet_tiny"]


class PoseDecoder(nn.Module):
    """monodepth2's pose decoder: 1x1 squeeze, two 3x3 convs, a 1x1 conv to ``6 * num_frames_to_predict``,
    spatial mean, times ``output_scale``.

    Args:
        in_channels: channels of the encoder's deepest stage.
        num_frames_to_predict: how many pose vectors to output per sample.
        hidden: channels of the squeeze and 3x3 convs (monodepth2: 256).
        output_scale: factor on the raw output (monodepth2: 0.01), so the initial pose is small.

    Shape:
        - input: ``(B, in_channels, H', W')`` (the deepest pyramid stage).
        - output: ``(B, num_frames_to_predict, 6)`` pose vectors ``[axis-angle (rad) | translation]``.

    Example:
        >>> dec = PoseDecoder(in_channels=32, num_frames_to_predict=2, hidden=16)
        >>> tuple(dec(torch.rand(3, 32, 2, 6)).shape)
        (3, 2, 6)
    """

    def __init__(
        self, in_channels: int, num_frames_to_predict: int = 1, hidden: int = 256, output_scale: float = 0.01
    ) -> None:
        super().__init__()
        for arg, value in (
            ("in_channels", in_channels),
            ("num_frames_to_predict", num_frames_to_predict),
            ("hidden", hidden),
        ):
            if int(value) < 1:
                raise ValueError(f"PoseDecoder: {arg} must be >= 1, got {value}")
        self.in_channels = int(in_channels)
        self.num_frames_to_predict = int(num_frames_to_predict)
        self.output_scale = float(output_scale)
        self.squeeze = nn.Conv2d(in_channels, hidden, 1)
        self.pose0 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.pose1 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.pose2 = nn.Conv2d(hidden, 6 * self.num_frames_to_predict, 1)
        self.relu = nn.ReLU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        check_shape(features, f"B {self.in_channels} H W", name="PoseDecoder features")
        x = self.relu(self.squeeze(features))
        x = self.relu(self.pose0(x))
        x = self.relu(self.pose1(x))
        x = self.pose2(x).mean(dim=(2, 3))
        return self.output_scale * rearrange(x, "b (f six) -> b f six", six=6)


class PoseNet(nn.Module):
    """Pose network on channel-stacked frame pairs: an encoder with 6 input channels + :class:`PoseDecoder`.

    Args:
        encoder: any :class:`~stssl.encoders.base.Encoder` with ``spec.in_channels == 6`` that accepts one
            frame (``spec.min_frames == 1``); by default ``resnet18_2d(in_channels=6)``.
        hidden: the decoder's hidden channels.

    Shape:
        ``forward(frames_a (B, 3, H, W), frames_b (B, 3, H, W)) -> (B, 6)``: the ``b_from_a`` pose vector
        ``[axis-angle (rad) | translation (scene units)]`` (see the module docstring).

    Example:
        >>> net = posenet_tiny()
        >>> vec = net(torch.rand(2, 3, 32, 96), torch.rand(2, 3, 32, 96))
        >>> tuple(vec.shape), bool(vec.abs().max() < 0.05)
        ((2, 6), True)
    """

    def __init__(self, encoder: Encoder | None = None, hidden: int = 256) -> None:
        super().__init__()
        encoder = resnet18_2d(in_channels=6) if encoder is None else encoder
        if encoder.spec.in_channels != 6 or encoder.spec.min_frames > 1:
            raise ValueError(
                f"PoseNet: encoder must take one 6-channel frame (two stacked RGB frames); "
                f"{type(encoder).__name__} has in_channels={encoder.spec.in_channels}, "
                f"min_frames={encoder.spec.min_frames}"
            )
        self.encoder = encoder
        self.decoder = PoseDecoder(encoder.spec.dim, num_frames_to_predict=1, hidden=hidden)

    def forward(self, frames_a: torch.Tensor, frames_b: torch.Tensor) -> torch.Tensor:
        return self.forward_with_features(frames_a, frames_b)[0]

    def forward_with_features(self, frames_a: torch.Tensor, frames_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(B, 6)`` pose vector and the encoder's pooled features ``(B, D)`` (for heads that share them)."""
        sizes = check_shape(frames_a, "B 3 H W", name="PoseNet frames_a")
        check_shape(frames_b, "B 3 H W", sizes, name="PoseNet frames_b")
        pair = torch.cat([frames_a, frames_b], dim=1)
        dense = self.encoder(rearrange(pair, "b c h w -> b c 1 h w")).dense
        feats = rearrange(dense, "b c t h w -> b c (t h) w")  # t == 1 for a per-frame encoder
        return self.decoder(feats)[:, 0], dense.mean(dim=(2, 3, 4))


def posenet_18(**kwargs) -> PoseNet:
    """monodepth2's separate pose network: ResNet-18 on 6 channels, hidden 256 (``kwargs`` go to the encoder)."""
    return PoseNet(resnet18_2d(**{"in_channels": 6, **kwargs}), hidden=256)


def posenet_tiny(**kwargs) -> PoseNet:
    """CPU preset: ``resnet18_2d_tiny`` on 6 channels, hidden 32 (``kwargs`` go to the encoder)."""
    return PoseNet(resnet18_2d_tiny(**{"in_channels": 6, **kwargs}), hidden=32)
