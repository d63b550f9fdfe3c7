"""Playback speed prediction (SpeedNet, Benaim et al., CVPR 2020; pace prediction, Wang et al., ECCV 2020).

From a longer input clip, ``clip_len`` frames are sub-sampled with a stride drawn from ``speeds`` (1 = normal
speed, 2 = twice as fast, ...) from a random start; the video encoder encodes the sub-sampled clip and a head
classifies which speed was used. The input must hold the fastest clip: ``T >= (clip_len - 1) * max(speeds) + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import (
    check_clip_len,
    check_pool_grid,
    classification_output,
    gather_frames,
    mlp_head,
    pool_cells,
    pooled_dim,
)
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["SpeedBatch", "SpeedTask", "make_speed_batch", "speed_min_frames"]


def _check_speeds(owner: str, speeds: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(s) for s in speeds)
    if len(out) < 2 or min(out) < 1 or len(set(out)) != len(out) or any(s != t for s, t in zip(out, speeds, strict=True)):
        raise ValueError(f"{owner}: speeds must be at least two distinct positive ints, got {tuple(speeds)}")
    return out


def speed_min_frames(clip_len: int, speeds: Sequence[int]) -> int:
    """Input frames needed to sub-sample ``clip_len`` frames at the fastest speed: ``(clip_len-1)*max(speeds)+1``.

    Example:
        >>> speed_min_frames(8, (1, 2, 4))
        29
    """
    return (clip_len - 1) * max(speeds) + 1


@dataclass
class SpeedBatch:
    """Output of :func:`make_speed_batch`. ``clips`` and ``label`` are on the video's device, the rest on the CPU.

    Attributes:
        clips: ``(B, C, L, H, W)``: ``clips[:, :, l]`` is input frame ``frame_indices[:, l]``.
        label: ``(B,)`` index into ``speeds``.
        speed: ``(B,)`` the frame stride used (``speeds[label]``).
        frame_indices: ``(B, L)`` ``start + speed * l``.
        start: ``(B,)`` first input frame of each clip.
    """

    clips: torch.Tensor
    label: torch.Tensor
    speed: torch.Tensor
    frame_indices: torch.Tensor
    start: torch.Tensor


def make_speed_batch(
    video: torch.Tensor,
    clip_len: int = 8,
    speeds: Sequence[int] = (1, 2, 4),
    *,
    generator: torch.Generator | None = None,
    owner: str = "make_speed_batch",
) -> SpeedBatch:
    """Sub-sample ``clip_len`` frames from each video at a random speed and a random start.

    The start is uniform over the positions where the clip fits at its own speed. Pure and seeded: the same
    ``generator`` state gives the same output. Random draws happen on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= (clip_len - 1) * max(speeds) + 1``.
        clip_len: frames per clip ``L``.
        speeds: the frame strides to choose from (the classes, in order).
        generator: a CPU ``torch.Generator``.
        owner: how error messages name the caller.

    Returns:
        A :class:`SpeedBatch`.

    Example:
        >>> video = torch.arange(13.0).view(1, 1, 13, 1, 1).expand(4, 1, 13, 1, 1)
        >>> out = make_speed_batch(video, 4, (1, 2, 4), generator=torch.Generator().manual_seed(0))
        >>> bool((out.clips.flatten(1).diff(dim=1) == out.speed[:, None]).all())
        True
    """
    sizes = check_shape(video, "B C T H W", name=f"{owner}: video")
    speeds = _check_speeds(owner, speeds)
    check_clip_len(owner, clip_len)
    need = speed_min_frames(clip_len, speeds)
    if sizes["T"] < need:
        raise ValueError(f"{owner}: video has T={sizes['T']} frames, needs (clip_len-1)*max(speeds)+1 = {need}")
    B = sizes["B"]
    label = torch.randint(len(speeds), (B,), generator=generator)
    speed = torch.tensor(speeds, dtype=torch.long)[label]
    room = sizes["T"] - (clip_len - 1) * speed  # valid starts: [0, room)
    start = (torch.rand(B, generator=generator, dtype=torch.float64) * room).long().clamp_max(room - 1)
    frame_indices = start[:, None] + speed[:, None] * torch.arange(clip_len)[None, :]
    clips = rearrange(gather_frames(video, frame_indices), "B L C H W -> B C L H W")
    return SpeedBatch(
        clips=clips, label=label.to(video.device), speed=speed, frame_indices=frame_indices, start=start
    )


class SpeedTask(PretextTask):
    """Classify the playback speed of a sub-sampled clip (chance ``1 / len(speeds)``).

    Args:
        clip_len: frames per sub-sampled clip.
        speeds: candidate frame strides (one class each).
        hidden: width of the head's hidden layer.
        dropout: dropout before the head's last layer.
        pool_grid: ``(h, w)`` cells kept from the encoder's dense map (see :func:`~stssl.tasks.common.pool_cells`).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss`` and ``acc``.

    Example:
        >>> task = SpeedTask(clip_len=4, speeds=(1, 2, 4))
        >>> task.requires.min_frames
        13
    """

    default_name = "speed"

    def __init__(
        self,
        clip_len: int = 8,
        speeds: tuple[int, ...] = (1, 2, 4),
        hidden: int = 256,
        dropout: float = 0.5,
        pool_grid: tuple[int, int] = (1, 1),
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        self.clip_len = check_clip_len("SpeedTask", clip_len)
        self.speeds = _check_speeds("SpeedTask", speeds)
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.pool_grid = check_pool_grid("SpeedTask", pool_grid)
        self.head: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=speed_min_frames(self.clip_len, self.speeds))

    def build(self, spec: EncoderSpec) -> None:
        self.head = mlp_head(pooled_dim(spec.dim, self.pool_grid), self.hidden, len(self.speeds), self.dropout)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.head is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        gen = generator if generator is not None else self.next_generator()
        sb = make_speed_batch(batch["video"], self.clip_len, self.speeds, generator=gen, owner=type(self).__name__)
        logits = self.head(pool_cells(encoder(sb.clips).dense, self.pool_grid))
        return classification_output(logits, sb.label)
