"""Colorization as a pretext (Zhang et al., "Colorful Image Colorization", ECCV 2016; Larsson et al., "Learning
Representations for Automatic Colorization", ECCV 2016), on single frames or on clips.

Each frame is converted to CIE Lab (:func:`kornia.color.rgb_to_lab`, sRGB in ``[0, 1]``, D65). The encoder sees
only the lightness ``L / 100`` (replicated to its input channels); a light dense decoder over its feature
pyramid (:class:`~stssl.heads.dense.PyramidDecoder`) predicts the two colour channels ``ab`` of every
frame, either by regression (``loss="l1"`` or ``"l2"`` on ``ab / 100``) or, as Zhang et al., by classification
over a quantised ``ab`` grid (``loss="classify"``: ``num_bins x num_bins`` cells over ``[-110, 110]^2``, cross
entropy per pixel, predictions decoded as the expected bin centre). Not included: Zhang et al.'s class
rebalancing and annealed-mean decoding, and their restriction to the 313 in-gamut bins (out-of-gamut bins simply
never occur as targets here).

The logs carry ``ab_l1`` (mean absolute ``ab`` error, in Lab units) next to ``gray_ab_l1``, the error of the
trivial all-grey prediction ``ab = 0``, so a user sees whether the model predicts colour at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F
from einops import rearrange

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.heads.dense import PyramidDecoder
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.image_common import (
    begin_forward,
    check_choice,
    check_clip_len1,
    decoder_widths,
    fit_min_frames,
    sample_window,
)
from stssl.types import EncoderSpec, TaskOutput

__all__ = [
    "AB_RANGE",
    "COLOR_LOSSES",
    "ColorizationBatch",
    "ColorizationTask",
    "ab_bin_centers",
    "ab_to_bins",
    "make_colorization_batch",
]

#: Losses of :class:`ColorizationTask`.
COLOR_LOSSES = ("l1", "l2", "classify")
#: ``ab`` values are quantised over ``[-AB_RANGE, AB_RANGE]`` (sRGB's gamut lies within about ``[-108, 98]``).
AB_RANGE = 110.0
_AB_SCALE = 100.0  # regression targets are ab / 100


@dataclass
class ColorizationBatch:
    """Output of :func:`make_colorization_batch`. Tensors are on the video's device except ``start`` (CPU).

    Attributes:
        gray: ``(B, 3, L, H, W)`` lightness ``L / 100`` in ``[0, 1]`` replicated to 3 channels (the encoder's input).
        lightness: ``(B, 1, L, H, W)`` ``L`` in ``[0, 100]``.
        ab: ``(B, 2, L, H, W)`` the colour channels (about ``[-110, 110]``): ``lab_to_rgb(cat(lightness, ab))``
            gives the window back.
        start: ``(B,)`` first frame of each window.
    """

    gray: torch.Tensor
    lightness: torch.Tensor
    ab: torch.Tensor
    start: torch.Tensor


def make_colorization_batch(
    video: torch.Tensor, clip_len: int = 1, *, generator: torch.Generator | None = None
) -> ColorizationBatch:
    """Cut a window of ``clip_len`` frames from each RGB video and split it into lightness and colour (CIE Lab).

    Pure and seeded: the same ``generator`` state gives the same output (the only draw is the window start).

    Args:
        video: ``(B, 3, T, H, W)`` sRGB in ``[0, 1]`` with ``T >= clip_len``.
        clip_len: frames per clip ``L`` (1: single frames).
        generator: a CPU ``torch.Generator``.

    Returns:
        A :class:`ColorizationBatch`.

    Example:
        >>> video = torch.rand(2, 3, 3, 8, 8)
        >>> out = make_colorization_batch(video, 2, generator=torch.Generator().manual_seed(0))
        >>> lab = rearrange(torch.cat([out.lightness, out.ab], dim=1), "B C L H W -> (B L) C H W")
        >>> rgb = rearrange(kornia.color.lab_to_rgb(lab), "(B L) C H W -> B C L H W", L=2)
        >>> s = int(out.start[0])
        >>> torch.allclose(rgb[0], video[0, :, s : s + 2], atol=1e-4)
        True
    """
    sizes = check_shape(video, "B 3 T H W", name="make_colorization_batch video (RGB)")
    clips, start = sample_window(video, clip_len, generator=generator, owner="make_colorization_batch")
    lab = kornia.color.rgb_to_lab(rearrange(clips, "B C L H W -> (B L) C H W"))
    lab = rearrange(lab, "(B L) C H W -> B C L H W", B=sizes["B"])
    lightness, ab = lab[:, :1], lab[:, 1:]
    gray = (lightness / 100.0).expand(-1, 3, -1, -1, -1)
    return ColorizationBatch(gray=gray, lightness=lightness, ab=ab, start=start)


def ab_to_bins(ab: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Quantise ``ab`` onto a ``num_bins x num_bins`` grid over ``[-AB_RANGE, AB_RANGE]^2`` (values outside clamp).

    Args:
        ab: ``(B, 2, ...)``.
        num_bins: cells per axis.

    Returns:
        ``(B, ...)`` int64 class ``i_a * num_bins + i_b``.

    Example:
        >>> ab_to_bins(torch.tensor([[-110.0, 109.9], [0.0, 0.0]]).view(2, 2), 2).tolist()
        [1, 3]
    """
    width = 2 * AB_RANGE / num_bins
    index = ((ab + AB_RANGE) / width).floor().long().clamp(0, num_bins - 1)
    return index[:, 0] * num_bins + index[:, 1]


def ab_bin_centers(num_bins: int, device: torch.device | None = None) -> torch.Tensor:
    """The ``ab`` centre of every class of :func:`ab_to_bins`: ``(num_bins**2, 2)``.

    Example:
        >>> ab_to_bins(ab_bin_centers(4).T.unsqueeze(0), 4).tolist() == [list(range(16))]
        True
    """
    width = 2 * AB_RANGE / num_bins
    centers = -AB_RANGE + width * (torch.arange(num_bins, device=device, dtype=torch.float32) + 0.5)
    a, b = torch.meshgrid(centers, centers, indexing="ij")
    return torch.stack([a.flatten(), b.flatten()], dim=1)


class ColorizationTask(PretextTask):
    """Predict the ``ab`` colour of every pixel of a frame or clip from its lightness.

    Args:
        clip_len: frames per clip (1: single frames).
        loss: ``"l1"`` or ``"l2"`` regression of ``ab / 100``, or ``"classify"`` over ``num_bins**2`` ``ab`` bins.
        num_bins: cells per ``ab`` axis for ``"classify"`` (Zhang et al.'s grid step of 10 is ``num_bins=22``).
        out_stride: predict at ``1 / out_stride`` of the input size (Zhang et al. predict at 1/4; targets are
            area-averaged ``ab``), which keeps ``"classify"``'s logits small.
        decoder_channels: :class:`~stssl.heads.dense.PyramidDecoder` widths; ``None`` halves the encoder's.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Expects RGB ``batch["video"]`` in ``[0, 1]``. Logs ``loss``, ``ab_l1`` and ``gray_ab_l1`` (the ``ab = 0``
    baseline), and ``acc`` (per-pixel bin accuracy) for ``"classify"``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc, task = r3d_tiny(width=4), ColorizationTask()
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 2, 32, 32)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs)
        ['ab_l1', 'gray_ab_l1', 'loss']
    """

    default_name = "colorization"

    def __init__(
        self,
        clip_len: int = 1,
        loss: str = "l1",
        num_bins: int = 16,
        out_stride: int = 1,
        decoder_channels: Sequence[int] | None = None,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        owner = "ColorizationTask"
        self.clip_len = check_clip_len1(owner, clip_len)
        self.loss = check_choice(owner, "loss", loss, COLOR_LOSSES)
        if num_bins < 2:
            raise ValueError(f"{owner}: num_bins must be >= 2, got {num_bins}")
        if out_stride < 1:
            raise ValueError(f"{owner}: out_stride must be >= 1, got {out_stride}")
        self.num_bins = int(num_bins)
        self.out_stride = int(out_stride)
        self.decoder_channels = decoder_widths(decoder_channels)
        self.decoder: PyramidDecoder | None = None
        self.in_channels = 3

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.clip_len)

    def build(self, spec: EncoderSpec) -> None:
        out = self.num_bins**2 if self.loss == "classify" else 2
        self.in_channels = spec.in_channels
        self.decoder = PyramidDecoder(spec.channels, out, self.decoder_channels)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        video, gen = begin_forward("ColorizationTask", self, batch, self.clip_len, generator, self.decoder)
        assert self.decoder is not None  # checked by begin_forward
        cb = make_colorization_batch(video, self.clip_len, generator=gen)
        L, H, W = cb.ab.shape[2:]
        size = (L, max(1, H // self.out_stride), max(1, W // self.out_stride))
        inputs = cb.gray[:, :1].expand(-1, self.in_channels, -1, -1, -1)
        out = self.decoder(encoder(fit_min_frames(inputs, encoder.spec.min_frames)).pyramid, size)
        ab = cb.ab if self.out_stride == 1 else F.adaptive_avg_pool3d(cb.ab, size)
        logs: dict[str, torch.Tensor] = {}
        if self.loss == "classify":
            target = ab_to_bins(ab, self.num_bins)
            loss = F.cross_entropy(out, target)
            with torch.no_grad():
                probs = out.softmax(dim=1)
                pred_ab = torch.einsum("bkthw,kc->bcthw", probs, ab_bin_centers(self.num_bins, out.device))
                logs["acc"] = (out.argmax(dim=1) == target).float().mean()
        else:
            err = out - ab / _AB_SCALE
            loss = err.abs().mean() if self.loss == "l1" else err.square().mean()
            pred_ab = out.detach() * _AB_SCALE
        with torch.no_grad():
            logs["ab_l1"] = (pred_ab - ab).abs().mean()
            logs["gray_ab_l1"] = ab.abs().mean()
        return TaskOutput(loss=loss, logs={"loss": loss.detach(), **logs})
