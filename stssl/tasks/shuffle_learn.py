"""Shuffle and Learn (Misra et al., "Shuffle and Learn: Unsupervised Learning using Temporal Order
Verification", ECCV 2016).

From each video, five frames ``a < b < c < d < e`` are drawn (consecutive ones at least ``min_gap`` apart). A
positive tuple is ``(b, c, d)`` or its reverse ``(d, c, b)``: the middle frame lies between the outer two. A
negative tuple keeps the outer frames and puts a frame from outside their window in the middle: ``(b, a, d)`` or
``(b, e, d)`` (or reversed). Each of the three frames is encoded independently by the shared encoder (as a
single-frame clip, repeated to the encoder's ``min_frames``), and a head classifies "in order" from the
concatenated per-frame features. Labels are drawn 50/50.
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
    check_ordered_draw,
    check_pool_grid,
    classification_output,
    dropout_linear,
    encode_frames,
    gather_frames,
    ordered_min_frames,
    pooled_dim,
    relu_layer,
    sample_ordered_frames,
)
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["ShuffleLearnBatch", "ShuffleLearnTask", "make_shuffle_learn_batch"]


@dataclass
class ShuffleLearnBatch:
    """Output of :func:`make_shuffle_learn_batch`. ``frames`` and ``label`` are on the video's device, indices on
    the CPU.

    Attributes:
        frames: ``(B, 3, C, H, W)`` the tuple as shown: ``frames[:, i]`` is input frame ``frame_indices[:, i]``.
        label: ``(B,)`` 1 = in order (the middle frame lies between the outer two), 0 = not.
        frame_indices: ``(B, 3)`` the input frame shown at each position.
        tuple_indices: ``(B, 5)`` the drawn ``a < b < c < d < e``.
    """

    frames: torch.Tensor
    label: torch.Tensor
    frame_indices: torch.Tensor
    tuple_indices: torch.Tensor


def make_shuffle_learn_batch(
    video: torch.Tensor,
    min_gap: int = 1,
    max_span: int | None = None,
    *,
    generator: torch.Generator | None = None,
    owner: str = "make_shuffle_learn_batch",
) -> ShuffleLearnBatch:
    """Build one positive or negative frame triplet per video (50/50), as Misra et al. sample them.

    Positives: ``(b, c, d)`` or ``(d, c, b)``. Negatives: ``(b, a, d)`` or ``(b, e, d)``, each possibly reversed.
    Pure and seeded: the same ``generator`` state gives the same output. Random draws happen on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= 4 * min_gap + 1``.
        min_gap: smallest gap between consecutive frames of ``a < b < c < d < e``.
        max_span: ``a..e`` fit in this many consecutive frames (None: anywhere in the clip).
        generator: a CPU ``torch.Generator``.
        owner: how error messages name the caller.

    Returns:
        A :class:`ShuffleLearnBatch`.

    Example:
        >>> video = torch.arange(9.0).view(1, 1, 9, 1, 1).expand(6, 1, 9, 1, 1)
        >>> out = make_shuffle_learn_batch(video, 2, generator=torch.Generator().manual_seed(0))
        >>> out.tuple_indices[0].tolist()  # T = 9 = 4 * 2 + 1 leaves a single tuple
        [0, 2, 4, 6, 8]
        >>> t = out.frame_indices
        >>> between = ((t[:, 0] < t[:, 1]) & (t[:, 1] < t[:, 2])) | ((t[:, 0] > t[:, 1]) & (t[:, 1] > t[:, 2]))
        >>> bool((between.long() == out.label).all())
        True
    """
    sizes = check_shape(video, "B C T H W", name=f"{owner}: video")
    B = sizes["B"]
    tup = sample_ordered_frames(B, sizes["T"], 5, min_gap, max_span, generator=generator, owner=owner)
    label = torch.randint(2, (B,), generator=generator)
    outer = torch.randint(2, (B,), generator=generator)  # negatives: 0 takes a, 1 takes e
    reverse = torch.randint(2, (B,), generator=generator)
    a, b, c, d, e = tup.unbind(dim=1)
    middle = torch.where(label == 1, c, torch.where(outer == 0, a, e))
    first = torch.where(reverse == 1, d, b)
    last = torch.where(reverse == 1, b, d)
    frame_indices = torch.stack([first, middle, last], dim=1)
    frames = gather_frames(video, frame_indices)
    return ShuffleLearnBatch(
        frames=frames, label=label.to(video.device), frame_indices=frame_indices, tuple_indices=tup
    )


class ShuffleLearnTask(PretextTask):
    """Temporal order verification of frame triplets (binary; chance 1/2).

    Each frame goes through the encoder alone, then a shared per-frame layer (the paper's fc7); the three
    results are concatenated in the shown order and classified (fc8).

    Args:
        min_gap: smallest gap between consecutive frames of the drawn five.
        max_span: the five frames fit in this many consecutive frames (None: anywhere in the clip).
        hidden: width of the per-frame layer.
        dropout: dropout before the classifier.
        pool_grid: ``(h, w)`` cells kept from each frame's dense map (see :func:`~stssl.tasks.common.pool_cells`).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss`` and ``acc``.

    Example:
        >>> from stssl.encoders.frame2d import resnet18_2d_tiny
        >>> enc, task = resnet18_2d_tiny(width=4), ShuffleLearnTask(hidden=8)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 5, 32, 32)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs), task.requires.min_frames
        (['acc', 'loss'], 5)
    """

    default_name = "shuffle_learn"

    def __init__(
        self,
        min_gap: int = 1,
        max_span: int | None = None,
        hidden: int = 256,
        dropout: float = 0.5,
        pool_grid: tuple[int, int] = (1, 1),
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        check_ordered_draw("ShuffleLearnTask", 5, min_gap, max_span)
        self.min_gap = int(min_gap)
        self.max_span = None if max_span is None else int(max_span)
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.pool_grid = check_pool_grid("ShuffleLearnTask", pool_grid)
        self.frame_head: nn.Module | None = None
        self.classifier: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=ordered_min_frames(5, self.min_gap))

    def build(self, spec: EncoderSpec) -> None:
        self.frame_head = relu_layer(pooled_dim(spec.dim, self.pool_grid), self.hidden)
        self.classifier = dropout_linear(3 * self.hidden, 2, self.dropout)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.frame_head is None or self.classifier is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        gen = generator if generator is not None else self.next_generator()
        sb = make_shuffle_learn_batch(
            batch["video"], self.min_gap, self.max_span, generator=gen, owner=type(self).__name__
        )
        feats = self.frame_head(encode_frames(encoder, sb.frames, self.pool_grid))  # (B, 3, hidden)
        logits = self.classifier(rearrange(feats, "B n F -> B (n F)"))
        return classification_output(logits, sb.label)
