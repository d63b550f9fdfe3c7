"""Typed containers shared across stssl, and the shape-letter glossary.

Shape letters (used in docstrings, :func:`stssl.checks.check_shape` and ``einops`` patterns):

- ``B`` batch, ``V`` views, ``C`` channels, ``T`` time (frames), ``H``/``W`` height/width,
- ``N`` tokens, ``D`` feature dimension, ``K`` classes or prototypes, ``S`` segments or patches.
- A prime (``T'``) marks an axis downsampled by a network.

Conventions:

- Models see ``(B, C, T, H, W)``; one sample is ``(C, T, H, W)``; readers return ``(T, H, W, C)`` uint8.
- Dataset samples keep ``video`` as uint8 ``(C, T, H, W)``; the conversion to float in ``[0, 1]`` happens once,
  on the batch's device (:meth:`stssl.data.ClipDataModule.on_after_batch_transfer`).
- Intrinsics ``K`` are per sample ``(3, 3)`` (``(B, 3, 3)`` batched), in pixels at the tensor's resolution.
- Poses are named ``a_from_b``: a 4x4 matrix mapping points in frame ``b`` to frame ``a`` (metres).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

import torch
from typing_extensions import NotRequired

__all__ = ["ClipSample", "ClipBatch", "EncoderSpec", "EncoderOutput", "TaskOutput"]


class ClipSample(TypedDict):
    """One sample from :class:`stssl.data.ClipDataset`.

    Keys:
        video: uint8 ``(C, T, H, W)``.
        index: the dataset index this sample was served for (an int).
        frame_indices: int64 ``(T,)``, the frames read from the source video.
        K: float32 ``(3, 3)`` intrinsics in pixels at the output resolution, when the source has them.
        label: int class label, when the source has one.
        depth: float32 ``(1, T, H, W)`` ground-truth z-depth in metres (0 = invalid), with ``load_gt`` on scenes.
        world_from_camera: float32 ``(T, 4, 4)`` ground-truth camera poses, with ``load_gt`` on scenes.
    """

    video: torch.Tensor
    index: int
    frame_indices: torch.Tensor
    K: NotRequired[torch.Tensor]
    label: NotRequired[int]
    depth: NotRequired[torch.Tensor]
    world_from_camera: NotRequired[torch.Tensor]


class ClipBatch(TypedDict):
    """A collated batch: ``video`` ``(B, C, T, H, W)`` (float32 in ``[0, 1]`` once on the device),
    ``index`` ``(B,)``, ``frame_indices`` ``(B, T)``, optional ``K`` ``(B, 3, 3)``, ``label`` ``(B,)``, ``depth``
    ``(B, 1, T, H, W)`` and ``world_from_camera`` ``(B, T, 4, 4)``."""

    video: torch.Tensor
    index: torch.Tensor
    frame_indices: torch.Tensor
    K: NotRequired[torch.Tensor]
    label: NotRequired[torch.Tensor]
    depth: NotRequired[torch.Tensor]
    world_from_camera: NotRequired[torch.Tensor]


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder produces, per pyramid stage (shallow to deep).

    Attributes:
        channels: channels ``C_i`` of each pyramid stage.
        strides: ``(t, h, w)`` stride of each stage relative to the input clip.
        dim: ``D``, channels of ``dense`` and ``pooled`` (the last stage).
        in_channels: input channels ``C`` (3 for RGB).
        min_frames: the fewest input frames the encoder accepts.
    """

    channels: tuple[int, ...]
    strides: tuple[tuple[int, int, int], ...]
    in_channels: int = 3
    min_frames: int = 1

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.strides) or not self.channels:
            raise ValueError(
                f"EncoderSpec: channels {self.channels} and strides {self.strides} must be non-empty and equally long"
            )

    @property
    def dim(self) -> int:
        return self.channels[-1]


@dataclass
class EncoderOutput:
    """What every encoder returns.

    Attributes:
        dense: ``(B, D, T', H', W')`` the last stage's feature map.
        pooled: ``(B, D)`` global average of ``dense``.
        pyramid: ``(B, C_i, T_i, H_i, W_i)`` per stage, shallow to deep; ``pyramid[-1] is dense``.
    """

    dense: torch.Tensor
    pooled: torch.Tensor
    pyramid: tuple[torch.Tensor, ...]


@dataclass
class TaskOutput:
    """What a pretext task returns: a scalar ``loss`` and detached scalar ``logs`` (e.g. ``{"acc": ...}``)."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
