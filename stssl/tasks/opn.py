"""Order Prediction Network (OPN; Lee et al., "Unsupervised Representation Learning by Sorting Sequences",
ICCV 2017).

From each video, ``n`` frames (default 4) are drawn in temporal order and shuffled. A permutation and its reverse
form one class (a sequence played backwards is as plausible as forwards), so there are ``n!/2`` classes (12 for
4 frames). Each frame is encoded independently by the shared encoder; a pair layer turns every pair of frame
features into a relation (the pair's feature difference, or their concatenation as in the paper), and the
concatenated relations are classified.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import (
    PairFusion,
    check_ordered_draw,
    check_pool_grid,
    classification_output,
    dropout_linear,
    encode_frames,
    gather_frames,
    order_permutations,
    ordered_min_frames,
    pair_relations,
    pooled_dim,
    relu_layer,
    sample_ordered_frames,
)
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["OPNBatch", "OPNTask", "make_opn_batch", "opn_classes"]


def opn_classes(num_frames: int) -> torch.Tensor:
    """The ``n!/2`` order classes: one canonical permutation per {order, reversed order} pair.

    The canonical member is the one that starts lower than it ends (``p[0] < p[-1]``), i.e. the
    lexicographically smaller of the two; rows are in lexicographic order, row 0 is the identity.

    Returns:
        ``(n!/2, n)`` int64.

    Example:
        >>> opn_classes(3).tolist()
        [[0, 1, 2], [0, 2, 1], [1, 0, 2]]
        >>> tuple(opn_classes(4).shape)
        (12, 4)
    """
    if not 2 <= num_frames <= 6:
        raise ValueError(f"opn_classes: num_frames must be in [2, 6], got {num_frames}")
    perms = order_permutations(num_frames)
    return perms[perms[:, 0] < perms[:, -1]]


@dataclass
class OPNBatch:
    """Output of :func:`make_opn_batch`. ``frames`` and ``label`` are on the video's device, the rest on the CPU.

    Attributes:
        frames: ``(B, n, C, H, W)`` in shuffled order: ``frames[:, i]`` is the ``permutation[:, i]``-th of the
            drawn frames in time order, i.e. input frame ``frame_indices[:, i]``.
        label: ``(B,)`` index into :func:`opn_classes`.
        permutation: ``(B, n)`` the applied order: ``opn_classes(n)[label]`` or its reverse.
        frame_indices: ``(B, n)`` the input frame shown at each position.
    """

    frames: torch.Tensor
    label: torch.Tensor
    permutation: torch.Tensor
    frame_indices: torch.Tensor


def make_opn_batch(
    video: torch.Tensor,
    num_frames: int = 4,
    min_gap: int = 1,
    max_span: int | None = None,
    *,
    generator: torch.Generator | None = None,
    owner: str = "make_opn_batch",
) -> OPNBatch:
    """Draw ``num_frames`` ordered frames per video and shuffle them by a random class and direction.

    Pure and seeded: the same ``generator`` state gives the same output. Random draws happen on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= (num_frames - 1) * min_gap + 1``.
        num_frames: ``n``, frames per tuple (``n!/2`` classes).
        min_gap: smallest gap between consecutive drawn frames.
        max_span: the frames fit in this many consecutive frames (None: anywhere in the clip).
        generator: a CPU ``torch.Generator``.
        owner: how error messages name the caller.

    Returns:
        An :class:`OPNBatch`.

    Example:
        >>> video = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(3, 1, 8, 1, 1)
        >>> out = make_opn_batch(video, 4, generator=torch.Generator().manual_seed(0))
        >>> bool((out.frames.flatten(1) == out.frame_indices).all())
        True
        >>> canon = opn_classes(4)[out.label]
        >>> bool(((out.permutation == canon) | (out.permutation == canon.flip(1))).all(dim=1).all())
        True
    """
    sizes = check_shape(video, "B C T H W", name=f"{owner}: video")
    classes = opn_classes(num_frames)
    B = sizes["B"]
    ordered = sample_ordered_frames(B, sizes["T"], num_frames, min_gap, max_span, generator=generator, owner=owner)
    label = torch.randint(len(classes), (B,), generator=generator)
    reverse = torch.randint(2, (B,), generator=generator)
    permutation = torch.where(reverse[:, None] == 1, classes[label].flip(1), classes[label])
    frame_indices = torch.gather(ordered, 1, permutation)
    return OPNBatch(
        frames=gather_frames(video, frame_indices),
        label=label.to(video.device),
        permutation=permutation,
        frame_indices=frame_indices,
    )


class OPNTask(PretextTask):
    """Frame order prediction over ``num_frames!/2`` classes (12 for 4 frames, chance 1/12).

    Args:
        num_frames: frames per tuple (3 to 6).
        min_gap: smallest gap between consecutive drawn frames.
        max_span: the frames fit in this many consecutive frames (None: anywhere in the clip).
        hidden: width of the pair layer.
        dropout: dropout before the classifier.
        pool_grid: ``(h, w)`` cells kept from each frame's dense map (see :func:`~stssl.tasks.common.pool_cells`).
        pair_fusion: ``"diff"`` feeds the pair layer ``f_i - f_j``; ``"concat"`` feeds ``[f_i, f_j]`` (the
            paper's pairwise feature extraction).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss`` and ``acc``.

    Example:
        >>> from stssl.encoders.frame2d import resnet18_2d_tiny
        >>> enc, task = resnet18_2d_tiny(width=4), OPNTask(hidden=8)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 4, 32, 32)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs), task.num_classes
        (['acc', 'loss'], 12)
    """

    default_name = "opn"

    def __init__(
        self,
        num_frames: int = 4,
        min_gap: int = 1,
        max_span: int | None = None,
        hidden: int = 256,
        dropout: float = 0.5,
        pool_grid: tuple[int, int] = (1, 1),
        pair_fusion: PairFusion = "diff",
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        if not 3 <= num_frames <= 6:
            raise ValueError(f"OPNTask: num_frames must be in [3, 6], got {num_frames}")
        check_ordered_draw("OPNTask", num_frames, min_gap, max_span)
        if pair_fusion not in ("diff", "concat"):
            raise ValueError(f"OPNTask: unknown pair_fusion {pair_fusion!r}; choose from ['diff', 'concat']")
        self.num_frames = int(num_frames)
        self.min_gap = int(min_gap)
        self.max_span = None if max_span is None else int(max_span)
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.pool_grid = check_pool_grid("OPNTask", pool_grid)
        self.pair_fusion = pair_fusion
        self.num_classes = math.factorial(num_frames) // 2
        self.pairs = list(itertools.combinations(range(num_frames), 2))
        self.pair_head: nn.Module | None = None
        self.classifier: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=ordered_min_frames(self.num_frames, self.min_gap))

    def build(self, spec: EncoderSpec) -> None:
        feat_dim = pooled_dim(spec.dim, self.pool_grid)
        self.pair_head = relu_layer(feat_dim if self.pair_fusion == "diff" else 2 * feat_dim, self.hidden)
        self.classifier = dropout_linear(self.hidden * len(self.pairs), self.num_classes, self.dropout)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.pair_head is None or self.classifier is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        gen = generator if generator is not None else self.next_generator()
        ob = make_opn_batch(
            batch["video"], self.num_frames, self.min_gap, self.max_span, generator=gen, owner=type(self).__name__
        )
        feats = encode_frames(encoder, ob.frames, self.pool_grid)  # (B, n, F)
        relations = pair_relations(feats, self.pairs, self.pair_head, self.pair_fusion)
        return classification_output(self.classifier(relations), ob.label)
