"""Clip order prediction (VCOP; Xu et al., "Self-supervised Spatiotemporal Learning via Video Clip Order
Prediction", CVPR 2019).

From each video, ``n`` consecutive clips of ``L`` frames (separated by ``gap`` frames) are cut, shuffled by one of
the ``n!`` permutations, encoded independently with the shared encoder, and a head classifies which permutation
was applied from the pairwise relations of the clip features.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import (
    check_pool_grid,
    classification_output,
    dropout_linear,
    gather_frames,
    order_permutations,
    pair_relations,
    pool_cells,
    pooled_dim,
    relu_layer,
)
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["VCOPBatch", "VCOPTask", "make_vcop_batch", "order_permutations"]


@dataclass
class VCOPBatch:
    """Output of :func:`make_vcop_batch`.

    Attributes:
        clips: ``(B, n, C, L, H, W)`` the clips in shuffled order: ``clips[:, i]`` is original clip
            ``permutation[:, i]``.
        label: ``(B,)`` index into :func:`order_permutations`.
        permutation: ``(B, n)`` the applied order.
        start: ``(B,)`` first frame of the first (unshuffled) clip within the input's ``T`` axis.
    """

    clips: torch.Tensor
    label: torch.Tensor
    permutation: torch.Tensor
    start: torch.Tensor


def make_vcop_batch(
    video: torch.Tensor,
    num_clips: int = 3,
    clip_len: int = 4,
    gap: int = 0,
    *,
    generator: torch.Generator | None = None,
) -> VCOPBatch:
    """Cut ``num_clips`` consecutive clips from each video and shuffle them by a random permutation.

    Pure and seeded: the same ``generator`` state gives the same output. Random draws happen on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= num_clips * clip_len + (num_clips - 1) * gap``.
        num_clips: clips per tuple ``n`` (``n!`` classes).
        clip_len: frames per clip ``L``.
        gap: frames skipped between consecutive clips.
        generator: a CPU ``torch.Generator``.

    Returns:
        A :class:`VCOPBatch`.

    Example:
        >>> video = torch.arange(12.0).view(1, 1, 12, 1, 1).expand(2, 1, 12, 1, 1)
        >>> out = make_vcop_batch(video, 3, 4, generator=torch.Generator().manual_seed(0))
        >>> perms = order_permutations(3)
        >>> bool((perms[out.label] == out.permutation).all())
        True
    """
    sizes = check_shape(video, "B C T H W", name="video")
    span = num_clips * clip_len + (num_clips - 1) * gap
    if clip_len < 1 or gap < 0:
        raise ValueError(f"make_vcop_batch: clip_len must be >= 1 and gap >= 0, got {clip_len}, {gap}")
    if sizes["T"] < span:
        raise ValueError(
            f"make_vcop_batch: video has T={sizes['T']} frames, needs num_clips*clip_len + (num_clips-1)*gap = {span}"
        )
    perms = order_permutations(num_clips)
    B = sizes["B"]
    label = torch.randint(len(perms), (B,), generator=generator)
    start = torch.randint(sizes["T"] - span + 1, (B,), generator=generator)
    permutation = perms[label]
    # frame index of frame l of original clip k: start + k * (clip_len + gap) + l
    clip_starts = start[:, None] + permutation * (clip_len + gap)  # (B, n) in shuffled order
    frames = clip_starts[:, :, None] + torch.arange(clip_len)[None, None, :]  # (B, n, L)
    gathered = gather_frames(video, rearrange(frames, "B n L -> B (n L)"))
    clips = rearrange(gathered, "B (n L) C H W -> B n C L H W", n=num_clips)
    return VCOPBatch(clips=clips, label=label.to(video.device), permutation=permutation.to(video.device), start=start)


class VCOPTask(PretextTask):
    """Clip order prediction over ``num_clips!`` orders.

    Args:
        num_clips: clips per tuple (3 gives 6 classes, chance 1/6).
        clip_len: frames per clip.
        gap: frames between clips.
        hidden: width of the pairwise relation layer.
        dropout: dropout before the classifier.
        pool_grid: ``(h, w)`` cells the clip feature keeps from the encoder's dense map (average pooled over time
            and each cell; see :func:`~stssl.tasks.common.pool_cells`). ``(1, 1)`` is the paper's global pooling; a coarse grid keeps where things are, which
            makes order observable from forward motion (objects drift outwards as the camera advances).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss`` and ``acc`` (top-1 order accuracy).
    """

    default_name = "vcop"

    def __init__(
        self,
        num_clips: int = 3,
        clip_len: int = 4,
        gap: int = 0,
        hidden: int = 256,
        dropout: float = 0.5,
        pool_grid: tuple[int, int] = (1, 1),
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        self.num_clips = num_clips
        self.clip_len = clip_len
        self.gap = gap
        self.hidden = hidden
        self.dropout = dropout
        self.pool_grid = check_pool_grid("VCOPTask", pool_grid)
        self.num_orders = math.factorial(num_clips)
        order_permutations(num_clips)  # validates num_clips
        self.pairs = list(itertools.combinations(range(num_clips), 2))
        self.pair_head: nn.Module | None = None
        self.classifier: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.num_clips * self.clip_len + (self.num_clips - 1) * self.gap)

    def build(self, spec: EncoderSpec) -> None:
        self.pair_head = relu_layer(2 * pooled_dim(spec.dim, self.pool_grid), self.hidden)
        self.classifier = dropout_linear(self.hidden * len(self.pairs), self.num_orders, self.dropout)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.pair_head is None or self.classifier is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        video = batch["video"]
        gen = generator if generator is not None else self.next_generator()
        vb = make_vcop_batch(video, self.num_clips, self.clip_len, self.gap, generator=gen)
        dense = encoder(rearrange(vb.clips, "B n C L H W -> (B n) C L H W")).dense
        feats = rearrange(pool_cells(dense, self.pool_grid), "(B n) F -> B n F", n=self.num_clips)
        relations = pair_relations(feats, self.pairs, self.pair_head, "concat")
        return classification_output(self.classifier(relations), vb.label)
