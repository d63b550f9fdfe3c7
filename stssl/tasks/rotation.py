"""Rotation prediction (RotNet; Gidaris et al., "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018), on single frames or on clips.

A square frame (or every frame of a square clip, all by the same angle) is rotated by 0, 90, 180 or 270 degrees
and a head classifies the angle from the encoder's features (4 classes, chance 1/4). Rotating by multiples of 90
degrees keeps a square's shape, so non-square inputs are first cropped to their largest square: centred
(``crop="center"``, the default), at a random place (``crop="random"``), or not at all (``crop="none"``, which
raises a clear error on non-square frames). Gidaris et al. found it best to feed all four rotations of each image
in the same batch (``all_rotations=True``).
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
)
from stssl.tasks.image_common import (
    CROP_MODES,
    begin_forward,
    check_choice,
    check_clip_len1,
    encode_pooled,
    sample_window,
    square_crop,
)
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["NUM_ROTATIONS", "RotationBatch", "RotationTask", "make_rotation_batch", "rotate_clips"]

#: Classes of the task: rotation by ``k * 90`` degrees, ``k = 0 … 3``.
NUM_ROTATIONS = 4


def rotate_clips(clips: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Rotate each square clip by its own ``k[i] * 90`` degrees, the same for all its frames.

    The direction is :func:`torch.rot90`'s over ``(H, W)``: counter-clockwise as displayed (row 0 on top), so
    ``rotate_clips(rotate_clips(x, k), -k)`` is ``x``.

    Args:
        clips: ``(N, C, L, S, S)``.
        k: ``(N,)`` integer quarter turns (any integers; taken modulo 4).

    Returns:
        ``(N, C, L, S, S)``.

    Example:
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 1, 2, 2)
        >>> rotate_clips(x, torch.tensor([1])).flatten().tolist()
        [2.0, 4.0, 1.0, 3.0]
    """
    sizes = check_shape(clips, "N C L S S", name="rotate_clips clips")
    check_shape(k, "N", sizes, name="rotate_clips k")
    k = k.to(clips.device).remainder(NUM_ROTATIONS)
    out = clips.clone()
    for quarter in range(1, NUM_ROTATIONS):
        sel = (k == quarter).nonzero().flatten()
        if sel.numel():
            out[sel] = torch.rot90(clips[sel], quarter, dims=(-2, -1))
    return out


@dataclass
class RotationBatch:
    """Output of :func:`make_rotation_batch`. ``clips`` and ``label`` are on the video's device, the rest on the CPU.

    Attributes:
        clips: ``(N, C, L, S, S)`` rotated square clips: ``rotate_clips(clips, -label)`` is input sample
            ``source``'s window, cropped at ``corner``.
        label: ``(N,)`` quarter turns ``k`` (counter-clockwise, see :func:`rotate_clips`).
        source: ``(N,)`` the input sample of each clip (``N = B``, or ``4 B`` with every sample's four rotations
            adjacent when ``all_rotations``).
        start: ``(B,)`` first frame of each sample's window.
        corner: ``(B, 2)`` ``(top, left)`` of each sample's square crop.
    """

    clips: torch.Tensor
    label: torch.Tensor
    source: torch.Tensor
    start: torch.Tensor
    corner: torch.Tensor


def make_rotation_batch(
    video: torch.Tensor,
    clip_len: int = 1,
    crop: str = "center",
    all_rotations: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> RotationBatch:
    """Cut a window of ``clip_len`` frames from each video, crop it square, and rotate it by a random multiple of
    90 degrees (the same angle for every frame).

    Pure and seeded: the same ``generator`` state gives the same output. Random draws happen on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= clip_len``.
        clip_len: frames per clip ``L`` (1: single frames).
        crop: ``"center"``, ``"random"`` or ``"none"`` (square inputs only), see :func:`square_crop`.
        all_rotations: give all four rotations of every sample (``N = 4 B``, labels ``0, 1, 2, 3`` per sample)
            instead of one random rotation each.
        generator: a CPU ``torch.Generator``.

    Returns:
        A :class:`RotationBatch`.

    Raises:
        ValueError: when the frames are not square and ``crop="none"``, or the video is too short.

    Example:
        >>> video = torch.rand(3, 3, 4, 8, 12)
        >>> out = make_rotation_batch(video, 2, generator=torch.Generator().manual_seed(0))
        >>> tuple(out.clips.shape), out.corner[0].tolist()
        ((3, 3, 2, 8, 8), [0, 2])
        >>> s = int(out.start[0])
        >>> torch.equal(rotate_clips(out.clips, -out.label)[0], video[0, :, s : s + 2, :, 2:10])
        True
    """
    sizes = check_shape(video, "B C T H W", name="make_rotation_batch video")
    check_choice("make_rotation_batch", "crop", crop, CROP_MODES)
    if crop == "none" and sizes["H"] != sizes["W"]:
        raise ValueError(
            f"make_rotation_batch: video frames are {sizes['H']}x{sizes['W']}, not square; rotations by 90 degrees "
            "need square inputs: use crop='center' or crop='random'"
        )
    clips, start = sample_window(video, clip_len, generator=generator, owner="make_rotation_batch")
    clips, corner = square_crop(clips, crop, generator=generator, owner="make_rotation_batch")
    B = sizes["B"]
    if all_rotations:
        source = torch.arange(B).repeat_interleave(NUM_ROTATIONS)
        label = torch.arange(NUM_ROTATIONS).repeat(B)
        clips = clips.repeat_interleave(NUM_ROTATIONS, dim=0)
    else:
        source = torch.arange(B)
        label = torch.randint(NUM_ROTATIONS, (B,), generator=generator)
    rotated = rotate_clips(clips, label)
    return RotationBatch(clips=rotated, label=label.to(video.device), source=source, start=start, corner=corner)


class RotationTask(PretextTask):
    """Classify the rotation (0, 90, 180, 270 degrees) of a square frame or clip (chance 1/4).

    Args:
        clip_len: frames per clip (1: single frames, which any encoder accepts; the frames of a clip share
            the rotation).
        crop: how non-square frames become square: ``"center"``, ``"random"`` or ``"none"`` (error unless square).
        all_rotations: feed all four rotations of every sample (4x the encoder batch; RotNet's best setting).
        hidden: width of the head's hidden layer.
        dropout: dropout before the head's last layer.
        pool_grid: ``(h, w)`` cells kept from the encoder's dense map; a grid keeps *where* things are, which
            rotation is about (see :func:`~stssl.tasks.common.pool_cells`).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss`` and ``acc``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc, task = r3d_tiny(width=4), RotationTask(hidden=8)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 2, 32, 48)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs), out.loss.dim()
        (['acc', 'loss'], 0)
    """

    default_name = "rotation"

    def __init__(
        self,
        clip_len: int = 1,
        crop: str = "center",
        all_rotations: bool = False,
        hidden: int = 256,
        dropout: float = 0.0,
        pool_grid: tuple[int, int] = (2, 2),
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        self.clip_len = check_clip_len1("RotationTask", clip_len)
        self.crop = check_choice("RotationTask", "crop", crop, CROP_MODES)
        self.all_rotations = bool(all_rotations)
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.pool_grid = check_pool_grid("RotationTask", pool_grid)
        self.head: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.clip_len)

    def build(self, spec: EncoderSpec) -> None:
        self.head = mlp_head(pooled_dim(spec.dim, self.pool_grid), self.hidden, NUM_ROTATIONS, self.dropout)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        video, gen = begin_forward("RotationTask", self, batch, self.clip_len, generator, self.head)
        assert self.head is not None  # checked by begin_forward
        rb = make_rotation_batch(video, self.clip_len, self.crop, self.all_rotations, generator=gen)
        return classification_output(self.head(encode_pooled(encoder, rb.clips, self.pool_grid)), rb.label)
