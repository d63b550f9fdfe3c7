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
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["VCOPBatch", "VCOPTask", "make_vcop_batch", "order_permutations"]


def order_permutations(num_clips: int) -> torch.Tensor:
    """All ``num_clips!`` orders, in lexicographic order: ``(num_clips!, num_clips)`` int64; row 0 is identity.

    Example:
        >>> order_permutations(3)[:3].tolist()
        [[0, 1, 2], [0, 2, 1], [1, 0, 2]]
    """
    if not 2 <= num_clips <= 6:
        raise ValueError(f"order_permutations: num_clips must be in [2, 6], got {num_clips}")
    return torch.tensor(list(itertools.permutations(range(num_clips))), dtype=torch.long)


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
    frames = frames.to(video.device)
    idx = rearrange(frames, "B n L -> B 1 (n L) 1 1").expand(-1, sizes["C"], -1, sizes["H"], sizes["W"])
    gathered = torch.gather(video, 2, idx)
    clips = rearrange(gathered, "B C (n L) H W -> B n C L H W", n=num_clips)
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
            and each cell). ``(1, 1)`` is the paper's global pooling; a coarse grid keeps where things are, which
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
        self.pool_grid = (int(pool_grid[0]), int(pool_grid[1]))
        if min(self.pool_grid) < 1:
            raise ValueError(f"VCOPTask: pool_grid must be two positive ints, got {pool_grid}")
        self.num_orders = math.factorial(num_clips)
        order_permutations(num_clips)  # validates num_clips
        self.pairs = list(itertools.combinations(range(num_clips), 2))
        self.pair_head: nn.Module | None = None
        self.classifier: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.num_clips * self.clip_len + (self.num_clips - 1) * self.gap)

    def build(self, spec: EncoderSpec) -> None:
        feat_dim = spec.dim * self.pool_grid[0] * self.pool_grid[1]
        self.pair_head = nn.Sequential(nn.Linear(2 * feat_dim, self.hidden), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(
            nn.Dropout(self.dropout), nn.Linear(self.hidden * len(self.pairs), self.num_orders)
        )

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.pair_head is None or self.classifier is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        video = batch["video"]
        gen = generator if generator is not None else self.next_generator()
        vb = make_vcop_batch(video, self.num_clips, self.clip_len, self.gap, generator=gen)
        out = encoder(rearrange(vb.clips, "B n C L H W -> (B n) C L H W"))
        if self.pool_grid == (1, 1):
            feats = out.pooled
        else:
            cells = nn.functional.adaptive_avg_pool3d(out.dense, (1, *self.pool_grid))
            feats = rearrange(cells, "Bn D 1 h w -> Bn (D h w)")
        feats = rearrange(feats, "(B n) D -> B n D", n=self.num_clips)
        relations = [self.pair_head(torch.cat([feats[:, i], feats[:, j]], dim=1)) for i, j in self.pairs]
        logits = self.classifier(torch.cat(relations, dim=1))
        loss = nn.functional.cross_entropy(logits, vb.label)
        acc = (logits.argmax(dim=1) == vb.label).float().mean()
        return TaskOutput(loss=loss, logs={"loss": loss.detach(), "acc": acc.detach()})
