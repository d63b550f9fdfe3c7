"""Arrow of time (Wei et al., "Learning and Using the Arrow of Time", CVPR 2018).

Each clip is played forward or reversed (label 0 or 1), encoded as a whole by the video encoder, and a head
classifies the direction from the encoder's dense features. The task needs an encoder that mixes time (a 3D CNN):
a per-frame encoder sees the same frames either way, so after temporal pooling it is blind to direction unless
``time_cells > 1`` keeps the features of successive time steps apart.
"""

from __future__ import annotations

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

__all__ = ["ArrowBatch", "ArrowTask", "make_arrow_batch"]


@dataclass
class ArrowBatch:
    """Output of :func:`make_arrow_batch`. ``clips`` and ``label`` are on the video's device, indices on the CPU.

    Attributes:
        clips: ``(B, C, L, H, W)`` the clips as played: ``clips[:, :, l]`` is input frame ``frame_indices[:, l]``.
        label: ``(B,)`` 0 = forward, 1 = reversed.
        frame_indices: ``(B, L)`` the input frame shown at each clip step (decreasing where ``label == 1``).
        start: ``(B,)`` first frame of the (forward) window within the input's ``T`` axis.
    """

    clips: torch.Tensor
    label: torch.Tensor
    frame_indices: torch.Tensor
    start: torch.Tensor


def make_arrow_batch(
    video: torch.Tensor,
    clip_len: int = 8,
    *,
    generator: torch.Generator | None = None,
    owner: str = "make_arrow_batch",
) -> ArrowBatch:
    """Cut a window of ``clip_len`` consecutive frames from each video and reverse it with probability 1/2.

    Pure and seeded: the same ``generator`` state gives the same output. Random draws happen on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= clip_len``.
        clip_len: frames per clip ``L`` (at least 2, so direction is defined).
        generator: a CPU ``torch.Generator``.
        owner: how error messages name the caller.

    Returns:
        An :class:`ArrowBatch`.

    Example:
        >>> video = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(4, 1, 10, 1, 1)
        >>> out = make_arrow_batch(video, 4, generator=torch.Generator().manual_seed(0))
        >>> bool((out.clips.flatten(1) == out.frame_indices).all())
        True
        >>> steps = out.frame_indices.diff(dim=1)
        >>> bool((steps == torch.where(out.label == 1, -1, 1)[:, None]).all())
        True
    """
    sizes = check_shape(video, "B C T H W", name=f"{owner}: video")
    check_clip_len(owner, clip_len)
    if sizes["T"] < clip_len:
        raise ValueError(f"{owner}: video has T={sizes['T']} frames, needs clip_len = {clip_len}")
    B = sizes["B"]
    label = torch.randint(2, (B,), generator=generator)
    start = torch.randint(sizes["T"] - clip_len + 1, (B,), generator=generator)
    steps = torch.arange(clip_len)
    steps = torch.where(label[:, None] == 1, steps.flip(0), steps)  # (B, L)
    frame_indices = start[:, None] + steps
    clips = rearrange(gather_frames(video, frame_indices), "B L C H W -> B C L H W")
    return ArrowBatch(clips=clips, label=label.to(video.device), frame_indices=frame_indices, start=start)


class ArrowTask(PretextTask):
    """Classify whether a clip plays forward or backward (chance 1/2).

    Args:
        clip_len: frames per clip; the batch needs at least this many.
        hidden: width of the head's hidden layer.
        dropout: dropout before the head's last layer.
        pool_grid: ``(h, w)`` cells kept from the encoder's dense map (see :func:`~stssl.tasks.common.pool_cells`).
        time_cells: temporal cells kept; 1 pools over time (right for 3D CNNs), more lets a per-frame encoder
            compare time steps.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss`` and ``acc``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc, task = r3d_tiny(width=4), ArrowTask(clip_len=4, hidden=8)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 6, 32, 32)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs), out.loss.dim()
        (['acc', 'loss'], 0)
    """

    default_name = "arrow"

    def __init__(
        self,
        clip_len: int = 8,
        hidden: int = 256,
        dropout: float = 0.5,
        pool_grid: tuple[int, int] = (1, 1),
        time_cells: int = 1,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        self.clip_len = check_clip_len("ArrowTask", clip_len)
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.pool_grid = check_pool_grid("ArrowTask", pool_grid, time_cells)
        self.time_cells = int(time_cells)
        self.head: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.clip_len)

    def build(self, spec: EncoderSpec) -> None:
        self.head = mlp_head(pooled_dim(spec.dim, self.pool_grid, self.time_cells), self.hidden, 2, self.dropout)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.head is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        gen = generator if generator is not None else self.next_generator()
        ab = make_arrow_batch(batch["video"], self.clip_len, generator=gen, owner=type(self).__name__)
        feats = pool_cells(encoder(ab.clips).dense, self.pool_grid, self.time_cells)
        return classification_output(self.head(feats), ab.label)
