"""Inpainting as a pretext: the context encoder (Pathak et al., "Context Encoders: Feature Learning by
Inpainting", CVPR 2016), on single frames or on clips.

A rectangular hole, the same in every frame of a clip, is filled with a constant (``fill``, mid-grey by default;
Pathak et al. fill with the mean pixel); the encoder sees the holed clip, a light dense decoder over its feature
pyramid (:class:`~stssl.heads.dense.PyramidDecoder`, sigmoid output) predicts every pixel, and the loss is
the mean squared error over the hole (``region="center"``: the central ``hole_frac`` of each side, Pathak et al.'s
central region; ``region="random"``: a rectangle of that size at a random place per sample). Pathak et al. also
score a thin band of visible context around the hole (their "overlap", 4 px at 10x weight) so the prediction
blends in; here ``context_weight`` adds ``context_weight x`` the L1 (or L2) error on the visible pixels within
``overlap`` pixels of the hole (``overlap=None``: on all visible pixels). Off by default.

Not implemented: Pathak et al.'s adversarial term. It needs a discriminator trained by its own optimiser on an
opposite objective, which the one-loss-per-task interface of :class:`~stssl.tasks.base.PretextTask` cannot express
without hidden state; the L2 objective alone learns the features (blurry fills), the adversarial term mainly
sharpens the inpainted pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.heads.dense import PyramidDecoder
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.image_common import (
    begin_forward,
    check_choice,
    check_clip_len1,
    check_fraction,
    decoder_widths,
    fit_min_frames,
    sample_window,
)
from stssl.types import EncoderSpec, TaskOutput

__all__ = [
    "CONTEXT_NORMS",
    "HOLE_REGIONS",
    "InpaintingBatch",
    "InpaintingTask",
    "make_inpainting_batch",
    "psnr_from_mse",
]

#: Where the hole goes.
HOLE_REGIONS = ("center", "random")
#: Norms of the optional context term.
CONTEXT_NORMS = ("l1", "l2")


@dataclass
class InpaintingBatch:
    """Output of :func:`make_inpainting_batch`. Tensors are on the video's device except ``box`` and ``start``.

    Attributes:
        masked: ``(B, C, L, H, W)`` the window with the hole filled by ``fill``.
        target: ``(B, C, L, H, W)`` the window as it was: ``masked * (1 - mask) + target * mask == target``.
        mask: ``(B, 1, 1, H, W)`` float, 1 inside the hole (the same for every frame and channel).
        box: ``(B, 4)`` int64 ``(top, left, height, width)`` of the hole.
        start: ``(B,)`` first frame of each window.
    """

    masked: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    box: torch.Tensor
    start: torch.Tensor


def make_inpainting_batch(
    video: torch.Tensor,
    clip_len: int = 1,
    region: str = "center",
    hole_frac: float = 0.5,
    fill: float = 0.5,
    *,
    generator: torch.Generator | None = None,
) -> InpaintingBatch:
    """Cut a window of ``clip_len`` frames from each video and blank a rectangular hole in every frame.

    Pure and seeded: the same ``generator`` state gives the same output. Random draws happen on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= clip_len``.
        clip_len: frames per clip ``L`` (1: single frames).
        region: ``"center"`` (the central hole) or ``"random"`` (uniform position per sample).
        hole_frac: hole side over frame side, in ``(0, 1)``: ``0.5`` hides the central quarter of the area.
        fill: value written into the hole.
        generator: a CPU ``torch.Generator``.

    Returns:
        An :class:`InpaintingBatch`.

    Example:
        >>> video = torch.rand(2, 3, 1, 8, 8)
        >>> out = make_inpainting_batch(video, generator=torch.Generator().manual_seed(0))
        >>> out.box[0].tolist(), int(out.mask.sum())
        ([2, 2, 4, 4], 32)
        >>> bool((out.masked[:, :, :, 2:6, 2:6] == 0.5).all()), torch.equal(out.target, video)
        (True, True)
    """
    owner = "make_inpainting_batch"
    sizes = check_shape(video, "B C T H W", name=f"{owner} video")
    check_choice(owner, "region", region, HOLE_REGIONS)
    check_fraction(owner, "hole_frac", hole_frac, low_open=True)
    if hole_frac >= 1.0:
        raise ValueError(f"{owner}: hole_frac must be < 1 (some context must stay visible), got {hole_frac}")
    B, H, W = sizes["B"], sizes["H"], sizes["W"]
    clips, start = sample_window(video, clip_len, generator=generator, owner=owner)
    hh, hw = max(1, int(round(hole_frac * H))), max(1, int(round(hole_frac * W)))
    if hh >= H or hw >= W:
        raise ValueError(f"{owner}: a {H}x{W} frame is too small for hole_frac={hole_frac} (hole {hh}x{hw})")
    if region == "center":
        top = torch.full((B,), (H - hh) // 2, dtype=torch.long)
        left = torch.full((B,), (W - hw) // 2, dtype=torch.long)
    else:
        top = torch.randint(H - hh + 1, (B,), generator=generator)
        left = torch.randint(W - hw + 1, (B,), generator=generator)
    device = video.device
    rows = torch.arange(H, device=device)[None, :]
    cols = torch.arange(W, device=device)[None, :]
    t, lf = top.to(device)[:, None], left.to(device)[:, None]
    inside = ((rows >= t) & (rows < t + hh))[:, :, None] & ((cols >= lf) & (cols < lf + hw))[:, None, :]
    mask = inside[:, None, None].to(clips.dtype)  # (B, 1, 1, H, W)
    masked = torch.where(inside[:, None, None], torch.as_tensor(fill, dtype=clips.dtype, device=device), clips)
    box = torch.stack([top, left, torch.full_like(top, hh), torch.full_like(top, hw)], dim=1)
    return InpaintingBatch(masked=masked, target=clips, mask=mask, box=box, start=start)


def psnr_from_mse(mse: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB from a mean squared error.

    Example:
        >>> float(psnr_from_mse(torch.tensor(0.01)))
        20.0
    """
    return 10.0 * torch.log10(max_val**2 / mse.clamp_min(1e-10))


class InpaintingTask(PretextTask):
    """Predict the pixels of a hole in a frame or clip from its context (context encoder, L2 loss).

    Args:
        clip_len: frames per clip (1: single frames).
        region: ``"center"`` or ``"random"`` hole placement.
        hole_frac: hole side over frame side (0.5: the central quarter, Pathak et al.'s setting).
        fill: value of the hidden pixels in the encoder's input.
        context_weight: weight of the extra term on visible pixels near the hole (0: off).
        overlap: width in pixels of that band around the hole; ``None`` uses every visible pixel.
        context_norm: ``"l1"`` or ``"l2"`` for the context term.
        decoder_channels: :class:`~stssl.heads.dense.PyramidDecoder` widths; ``None`` halves the encoder's.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Expects ``batch["video"]`` in ``[0, 1]``. Logs ``loss``, ``hole_mse`` and ``hole_psnr`` of the prediction in the
    hole, ``fill_psnr`` of the trivial prediction (the fill value) and ``mean_psnr`` of filling with the mean of
    each sample's visible pixels, so a user sees whether the model beats them.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc, task = r3d_tiny(width=4), InpaintingTask(context_weight=0.1)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 2, 32, 32)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs)
        ['context', 'fill_psnr', 'hole_mse', 'hole_psnr', 'loss', 'mean_psnr']
    """

    default_name = "inpainting"

    def __init__(
        self,
        clip_len: int = 1,
        region: str = "center",
        hole_frac: float = 0.5,
        fill: float = 0.5,
        context_weight: float = 0.0,
        overlap: int | None = 4,
        context_norm: str = "l1",
        decoder_channels: Sequence[int] | None = None,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        owner = "InpaintingTask"
        self.clip_len = check_clip_len1(owner, clip_len)
        self.region = check_choice(owner, "region", region, HOLE_REGIONS)
        self.hole_frac = check_fraction(owner, "hole_frac", hole_frac, low_open=True)
        if self.hole_frac >= 1.0:
            raise ValueError(f"{owner}: hole_frac must be < 1, got {hole_frac}")
        self.fill = float(fill)
        if context_weight < 0:
            raise ValueError(f"{owner}: context_weight must be >= 0, got {context_weight}")
        if overlap is not None and overlap < 1:
            raise ValueError(f"{owner}: overlap must be >= 1 pixel or None (all visible pixels), got {overlap}")
        self.context_weight = float(context_weight)
        self.overlap = None if overlap is None else int(overlap)
        self.context_norm = check_choice(owner, "context_norm", context_norm, CONTEXT_NORMS)
        self.decoder_channels = decoder_widths(decoder_channels)
        self.decoder: PyramidDecoder | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.clip_len)

    def build(self, spec: EncoderSpec) -> None:
        self.decoder = PyramidDecoder(spec.channels, spec.in_channels, self.decoder_channels)

    def context_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The visible pixels scored by the context term: within ``overlap`` pixels of the hole (Chebyshev
        distance), or all visible pixels.

        Args:
            mask: ``(B, 1, 1, H, W)`` hole mask.

        Returns:
            ``(B, 1, 1, H, W)`` float, 0 inside the hole.
        """
        if self.overlap is None:
            return 1.0 - mask
        k = 2 * self.overlap + 1
        grown = F.max_pool2d(mask[:, :, 0], kernel_size=k, stride=1, padding=self.overlap)[:, :, None]
        return grown - mask

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        video, gen = begin_forward("InpaintingTask", self, batch, self.clip_len, generator, self.decoder)
        assert self.decoder is not None  # checked by begin_forward
        ib = make_inpainting_batch(video, self.clip_len, self.region, self.hole_frac, self.fill, generator=gen)
        L, H, W = ib.target.shape[2:]
        pyramid = encoder(fit_min_frames(ib.masked, encoder.spec.min_frames)).pyramid
        pred = torch.sigmoid(self.decoder(pyramid, (L, H, W)))
        C = pred.shape[1]
        per_pixel = C * L  # the mask covers every channel and frame
        hole = ib.mask.expand_as(pred)
        hole_mse = ((pred - ib.target).square() * hole).sum() / (ib.mask.sum() * per_pixel)
        loss = hole_mse
        logs: dict[str, torch.Tensor] = {}
        if self.context_weight > 0:
            band = self.context_mask(ib.mask)
            err = (pred - ib.target).abs() if self.context_norm == "l1" else (pred - ib.target).square()
            context = (err * band).sum() / (band.sum() * per_pixel).clamp_min(1.0)
            loss = loss + self.context_weight * context
            logs["context"] = context.detach()
        with torch.no_grad():
            n_hole = ib.mask.sum() * per_pixel
            fill_mse = ((self.fill - ib.target).square() * hole).sum() / n_hole
            visible = 1.0 - ib.mask
            n_visible = visible.sum(dim=(2, 3, 4), keepdim=True) * L  # per channel
            mean = (ib.target * visible).sum(dim=(2, 3, 4), keepdim=True) / n_visible
            mean_mse = ((mean - ib.target).square() * hole).sum() / n_hole
            logs.update(
                hole_mse=hole_mse.detach(), hole_psnr=psnr_from_mse(hole_mse.detach()),
                fill_psnr=psnr_from_mse(fill_mse), mean_psnr=psnr_from_mse(mean_mse),
            )
        return TaskOutput(loss=loss, logs={"loss": loss.detach(), **logs})
