"""Relative patch position (Doersch et al., "Unsupervised Visual Representation Learning by Context
Prediction", ICCV 2015), on single frames or on clips.

A 3x3 grid of cells is laid over a (square-cropped) frame; one patch per cell is cut with a gap and random jitter
(:func:`~stssl.tasks.image_common.grid_tile_boxes`, as the jigsaw's tiles; Doersch et al. use patches with gaps
of half a patch and up to 7 px of jitter, so that low-level cues such as continuing edges cannot solve the task).
The centre patch and one of its 8 neighbours are encoded independently by the shared encoder, a shared per-patch
layer maps each feature, and the concatenation is classified into the neighbour's direction (8 classes, chance
1/8). Against chromatic aberration (which tells a patch's place in the frame) each patch can be turned grey or
keep one random colour channel with the others replaced by noise (Doersch et al.'s "colour dropping"), and every
channel can be shifted by a few pixels (``channel_jitter``). Every frame of a clip is cut alike.

Neighbour labels, row-major around the centre (``dy, dx`` in cells)::

    0 (-1,-1)  1 (-1, 0)  2 (-1,+1)
    3 ( 0,-1)     centre  4 ( 0,+1)
    5 (+1,-1)  6 (+1, 0)  7 (+1,+1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import (
    check_pool_grid,
    classification_output,
    mlp_head,
    pooled_dim,
    relu_layer,
)
from stssl.tasks.image_common import (
    CROP_MODES,
    PatchAppearance,
    begin_forward,
    check_choice,
    check_clip_len1,
    check_fraction,
    crop_regions,
    cut_grid_patches,
    recolor_patch_sets,
)
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["NEIGHBOR_CELLS", "NEIGHBOR_OFFSETS", "RelativePositionBatch", "RelativePositionTask",
           "make_relative_position_batch"]

#: Grid cell (row-major in the 3x3 grid) of each neighbour label; the centre is cell 4.
NEIGHBOR_CELLS = torch.tensor([0, 1, 2, 3, 5, 6, 7, 8])
#: ``(dy, dx)`` in cells of each neighbour label.
NEIGHBOR_OFFSETS = torch.stack([NEIGHBOR_CELLS // 3 - 1, NEIGHBOR_CELLS % 3 - 1], dim=1)
_CENTER_CELL = 4


@dataclass
class RelativePositionBatch:
    """Output of :func:`make_relative_position_batch`. ``patches`` and ``label`` are on the video's device, the
    rest on the CPU.

    Attributes:
        patches: ``(B, 2, C, L, h, w)``: ``[:, 0]`` the centre patch, ``[:, 1]`` the neighbour.
        label: ``(B,)`` the neighbour's direction, ``0 … 7`` (see :data:`NEIGHBOR_OFFSETS`).
        top, left: ``(B, 2, C)`` where each patch's channels were cut, in the (square-cropped) window.
        corner: ``(B, 2)`` ``(top, left)`` of the square crop in the frame.
        start: ``(B,)`` first frame of each window.
        color_mode: ``(B, 2)`` per patch: 0 untouched, 1 grey, ``2 + c`` only channel ``c`` kept.
    """

    patches: torch.Tensor
    label: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    corner: torch.Tensor
    start: torch.Tensor
    color_mode: torch.Tensor


def make_relative_position_batch(
    video: torch.Tensor,
    clip_len: int = 1,
    crop: str = "random",
    patch_frac: float = 0.6,
    jitter: float = 0.5,
    channel_jitter: int = 0,
    gray_p: float = 0.0,
    channel_drop_p: float = 0.0,
    *,
    generator: torch.Generator | None = None,
) -> RelativePositionBatch:
    """Cut the centre patch and a random neighbour from a 3x3 grid over a window of each video.

    Pure and seeded: the same ``generator`` state gives the same output. Random draws happen on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= clip_len``.
        clip_len: frames per patch clip ``L`` (1: single frames).
        crop: square crop before the grid: ``"random"``, ``"center"`` or ``"none"``.
        patch_frac: patch side over cell side (Doersch et al.: 96 px patches 48 px apart, ``2/3``).
        jitter: fraction of the free room in a cell over which a patch's place varies.
        channel_jitter: per-channel extra shift in pixels.
        gray_p, channel_drop_p: per-patch colour handling, see
            :func:`~stssl.tasks.image_common.recolor_patches`.
        generator: a CPU ``torch.Generator``.

    Returns:
        A :class:`RelativePositionBatch`.

    Example:
        >>> video = torch.rand(4, 3, 1, 30, 30)
        >>> out = make_relative_position_batch(video, generator=torch.Generator().manual_seed(0))
        >>> tuple(out.patches.shape)
        (4, 2, 3, 1, 6, 6)
        >>> dy = (out.top[:, 1, 0] - out.top[:, 0, 0]).sign()  # cells are 10 px apart, patches move 1-3 px
        >>> bool((dy == NEIGHBOR_OFFSETS[out.label, 0]).all())
        True
    """
    owner = "make_relative_position_batch"
    B = check_shape(video, "B C T H W", name=f"{owner} video")["B"]
    gp = cut_grid_patches(video, clip_len, crop, 3, patch_frac, jitter, channel_jitter, generator=generator, owner=owner)
    label = torch.randint(len(NEIGHBOR_CELLS), (B,), generator=generator)
    cells = torch.stack([torch.full((B,), _CENTER_CELL), NEIGHBOR_CELLS[label]], dim=1)  # (B, 2)
    rows = torch.arange(B)[:, None]
    top_sel, left_sel = gp.top[rows, cells], gp.left[rows, cells]
    patches, mode = recolor_patch_sets(
        crop_regions(gp.clips, top_sel, left_sel, gp.size), gray_p, channel_drop_p, generator=generator
    )
    return RelativePositionBatch(
        patches=patches, label=label.to(video.device), top=top_sel, left=left_sel, corner=gp.corner,
        start=gp.start, color_mode=mode,
    )


class RelativePositionTask(PretextTask):
    """Classify where a patch lies relative to the centre patch (8 neighbours, chance 1/8).

    Args:
        clip_len: frames per patch clip (1: single frames).
        crop: ``"random"``, ``"center"`` or ``"none"`` square crop before the grid.
        patch_frac, jitter, channel_jitter: patch geometry, see :func:`make_relative_position_batch`.
        gray_p, channel_drop_p: per-patch colour handling (Doersch et al.'s colour dropping is
            ``channel_drop_p=1``).
        normalize_patches: standardise each patch per channel before encoding.
        resize_to: resize every patch to this square size before encoding (e.g. a multiple of a ViT's patch
            size); None keeps the cut size.
        hidden: width of the shared per-patch layer and the classifier's hidden layer.
        dropout: dropout before the classifier's last layer.
        pool_grid: ``(h, w)`` cells kept from each patch's dense map.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss`` and ``acc``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc, task = r3d_tiny(width=4), RelativePositionTask(hidden=8, channel_drop_p=0.5)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 1, 32, 48)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs), out.loss.dim()
        (['acc', 'loss'], 0)
    """

    default_name = "relative_position"

    def __init__(
        self,
        clip_len: int = 1,
        crop: str = "random",
        patch_frac: float = 0.6,
        jitter: float = 0.5,
        channel_jitter: int = 0,
        gray_p: float = 0.0,
        channel_drop_p: float = 0.0,
        normalize_patches: bool = False,
        resize_to: int | None = None,
        hidden: int = 256,
        dropout: float = 0.5,
        pool_grid: tuple[int, int] = (1, 1),
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        owner = "RelativePositionTask"
        self.clip_len = check_clip_len1(owner, clip_len)
        self.crop = check_choice(owner, "crop", crop, CROP_MODES)
        self.patch_frac = check_fraction(owner, "patch_frac", patch_frac, low_open=True)
        self.jitter = check_fraction(owner, "jitter", jitter)
        #: the validated patch options (``normalize`` is ``normalize_patches``)
        self.appearance = PatchAppearance.checked(
            owner, channel_jitter, gray_p, channel_drop_p, normalize_patches, resize_to
        )
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.pool_grid = check_pool_grid(owner, pool_grid)
        self.patch_head: nn.Module | None = None
        self.classifier: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.clip_len)

    def build(self, spec: EncoderSpec) -> None:
        self.patch_head = relu_layer(pooled_dim(spec.dim, self.pool_grid), self.hidden)
        self.classifier = mlp_head(2 * self.hidden, self.hidden, len(NEIGHBOR_CELLS), self.dropout)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        video, gen = begin_forward(
            "RelativePositionTask", self, batch, self.clip_len, generator, self.patch_head, self.classifier
        )
        assert self.patch_head is not None and self.classifier is not None  # checked by begin_forward
        app = self.appearance
        rb = make_relative_position_batch(
            video, self.clip_len, self.crop, self.patch_frac, self.jitter, app.channel_jitter, app.gray_p,
            app.channel_drop_p, generator=gen,
        )
        feats = app.encode(encoder, rb.patches, self.patch_head, self.pool_grid)
        return classification_output(self.classifier(feats), rb.label)
