"""The encoder contract: every encoder gives a dense pyramid, a dense map and a pooled vector.

Modelled on timm's ``forward_features``/``feature_info``, made typed: subclasses implement
:meth:`Encoder.forward_features` returning the pyramid, set :attr:`Encoder.spec`, and get
:meth:`Encoder.forward` (shape checks, pooling) for free.
"""

from __future__ import annotations

import torch
from torch import nn

from stssl.checks import check_shape
from stssl.types import EncoderOutput, EncoderSpec

__all__ = ["Encoder"]


class Encoder(nn.Module):
    """Base class of video encoders.

    Subclasses set ``self.spec`` (an :class:`~stssl.types.EncoderSpec`) in ``__init__`` and implement
    :meth:`forward_features`.

    Shape:
        - input: ``(B, C, T, H, W)`` float, ``C == spec.in_channels``, ``T >= spec.min_frames``.
        - output: :class:`~stssl.types.EncoderOutput` with ``dense (B, D, T', H', W')``, ``pooled (B, D)`` and
          one ``(B, C_i, T_i, H_i, W_i)`` tensor per pyramid stage.
    """

    spec: EncoderSpec

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the feature pyramid, shallow to deep: one ``(B, C_i, T_i, H_i, W_i)`` tensor per stage."""
        raise NotImplementedError

    def forward(self, video: torch.Tensor) -> EncoderOutput:
        sizes = check_shape(video, f"B {self.spec.in_channels} T H W", name=f"{type(self).__name__} input")
        if sizes.get("T", self.spec.min_frames) < self.spec.min_frames:
            raise ValueError(
                f"{type(self).__name__} input: expected at least {self.spec.min_frames} frames, got shape "
                f"{tuple(video.shape)}"
            )
        pyramid = tuple(self.forward_features(video))
        if len(pyramid) != len(self.spec.channels):
            raise RuntimeError(
                f"{type(self).__name__}.forward_features returned {len(pyramid)} stages, spec has {len(self.spec.channels)}"
            )
        dense = pyramid[-1]
        return EncoderOutput(dense=dense, pooled=dense.mean(dim=(2, 3, 4)), pyramid=pyramid)

    def output_size(self, frames: int, height: int, width: int) -> list[tuple[int, int, int]]:
        """``(T_i, H_i, W_i)`` of each pyramid stage for an input of the given size (runs a dry forward)."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        with torch.no_grad():
            pyramid = self.forward_features(torch.zeros(1, self.spec.in_channels, frames, height, width, device=device))
        self.train(was_training)
        return [tuple(p.shape[2:]) for p in pyramid]  # type: ignore[misc]
