"""Temporal views for instance-discrimination tasks: several sub-clips of one video, each augmented on its own.

A positive pair in video contrastive learning is two clips of the same video (CVRL, Qian et al., "Spatiotemporal
Contrastive Video Representation Learning", CVPR 2021; rhoBYOL, Feichtenhofer et al., "A Large-Scale Study on
Unsupervised Spatiotemporal Representation Learning", CVPR 2021). From a batch clip of ``T`` frames:

1. :func:`sample_temporal_views` (pure, seeded) cuts ``V`` sub-clips of ``L = view_len`` frames whose start frames
   increase by a gap drawn in ``[min_gap, max_gap]`` frames, and returns the start frames as its labels;
2. :class:`TemporalViews` then augments every view with :class:`~stssl.transforms.gpu.GPUAugment` on the batch's
   device: one crop/flip/colour draw per view, shared by all frames of that view, independent across views.

``min_gap = 0`` allows two views of the same frames (augmentation alone makes them differ, as image SimCLR);
a gap smaller than ``view_len`` gives overlapping views; a large ``max_gap`` asks for invariance over longer times.
:func:`encode_views` runs an encoder on all views in one call and returns their pooled vectors (or a coarse
grid of cells). The contrastive (:mod:`stssl.tasks.instance`), distillation (:mod:`stssl.tasks.distill`) and
clustering (:mod:`stssl.tasks.clustering`, :mod:`stssl.tasks.deepcluster`) tasks all draw their views here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.tasks.common import gather_frames
from stssl.tasks.image_common import encode_pooled
from stssl.transforms.gpu import GPUAugment

__all__ = ["TemporalViewBatch", "TemporalViews", "encode_views", "sample_temporal_views", "temporal_views_min_frames"]


@dataclass
class TemporalViewBatch:
    """Output of :func:`sample_temporal_views` and :class:`TemporalViews`.

    Attributes:
        views: ``(B, V, C, L, H, W)``; ``views[b, v]`` is frames ``starts[b, v] .. starts[b, v] + L - 1`` of clip
            ``b`` (augmented, at the crop size, when it comes from :class:`TemporalViews`).
        starts: ``(B, V)`` int64 on the CPU, the first frame of each view within the input's ``T`` axis,
            non-decreasing along ``V``; ``starts.diff(dim=1)`` are the gaps, each in ``[min_gap, max_gap]``.
    """

    views: torch.Tensor
    starts: torch.Tensor

    @property
    def gaps(self) -> torch.Tensor:
        """``(B, V - 1)`` frames between the starts of consecutive views."""
        return self.starts.diff(dim=1)


def temporal_views_min_frames(num_views: int, view_len: int, min_gap: int = 0) -> int:
    """Frames needed to cut ``num_views`` views of ``view_len`` frames, consecutive starts ``min_gap`` apart.

    That is ``view_len + (num_views - 1) * min_gap``.

    Example:
        >>> temporal_views_min_frames(2, 8, min_gap=4)
        12
    """
    return view_len + (num_views - 1) * min_gap


def _check_view_options(owner: str, num_views: int, view_len: int, min_gap: int, max_gap: int | None) -> None:
    if num_views < 1:
        raise ValueError(f"{owner}: num_views must be >= 1, got {num_views}")
    if view_len < 1:
        raise ValueError(f"{owner}: view_len must be >= 1, got {view_len}")
    if min_gap < 0:
        raise ValueError(f"{owner}: min_gap must be >= 0, got {min_gap}")
    if max_gap is not None and max_gap < min_gap:
        raise ValueError(f"{owner}: max_gap must be >= min_gap, got min_gap={min_gap}, max_gap={max_gap}")


def sample_temporal_views(
    video: torch.Tensor,
    num_views: int = 2,
    view_len: int = 8,
    min_gap: int = 0,
    max_gap: int | None = None,
    generator: torch.Generator | None = None,
) -> TemporalViewBatch:
    """Cut ``num_views`` sub-clips of ``view_len`` frames from every clip, starts ``min_gap..max_gap`` apart.

    Per clip, the gaps between consecutive starts are drawn one after the other, each uniform over the integers
    in ``[min_gap, min(max_gap, room)]``, where ``room`` leaves space for the views still to place (so with a
    short clip, long gaps are clipped to what fits); then the first start is uniform over the positions where
    the whole set fits. Pure and seeded: all draws come from ``generator`` on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= view_len + (num_views - 1) * min_gap``.
        num_views: ``V >= 1``.
        view_len: frames per view ``L >= 1``.
        min_gap: smallest distance between the starts of consecutive views, in frames (``>= 0``; 0 allows
            identical frames).
        max_gap: largest such distance (``None``: as large as the clip allows).
        generator: a CPU ``torch.Generator``.

    Returns:
        A :class:`TemporalViewBatch` with ``views`` ``(B, V, C, L, H, W)`` on ``video``'s device.

    Raises:
        ValueError: for invalid options or a clip too short, naming the numbers.

    Example:
        >>> video = torch.arange(10.0).view(1, 1, 10, 1, 1)
        >>> out = sample_temporal_views(video, 2, 3, min_gap=4, generator=torch.Generator().manual_seed(0))
        >>> tuple(out.views.shape), bool(out.gaps.min() >= 4)
        ((1, 2, 1, 3, 1, 1), True)
        >>> bool(torch.equal(out.views[0, 1, 0, :, 0, 0], torch.arange(3.0) + out.starts[0, 1]))
        True
    """
    sizes = check_shape(video, "B C T H W", name="sample_temporal_views: video")
    _check_view_options("sample_temporal_views", num_views, view_len, min_gap, max_gap)
    T, B = sizes["T"], sizes["B"]
    need = temporal_views_min_frames(num_views, view_len, min_gap)
    if T < need:
        raise ValueError(
            f"sample_temporal_views: video has T={T} frames, needs view_len + (num_views-1)*min_gap = "
            f"{view_len} + {num_views - 1}*{min_gap} = {need}"
        )
    span = T - view_len  # the largest distance between the first and the last start
    top = span if max_gap is None else min(max_gap, span)
    offsets = [torch.zeros(B, dtype=torch.long)]
    used = torch.zeros(B, dtype=torch.long)
    for v in range(1, num_views):
        later = (num_views - 1 - v) * min_gap  # what the gaps still to draw need at least
        upper = torch.clamp(span - used - later, max=top)  # >= min_gap by the length check
        gap = min_gap + (torch.rand(B, generator=generator) * (upper - min_gap + 1)).floor().long()
        gap = torch.minimum(gap, upper)  # guards the rand() == 1 - eps rounding edge
        used = used + gap
        offsets.append(used.clone())
    first = (torch.rand(B, generator=generator) * (span - used + 1)).floor().long().clamp(max=span - used)
    starts = first[:, None] + torch.stack(offsets, dim=1)  # (B, V)
    frames = starts[:, :, None] + torch.arange(view_len)[None, None, :]  # (B, V, L)
    gathered = gather_frames(video, rearrange(frames, "B V L -> B (V L)"))
    views = rearrange(gathered, "B (V L) C H W -> B V C L H W", V=num_views)
    return TemporalViewBatch(views=views, starts=starts)


class TemporalViews(nn.Module):
    """Temporal cut (:func:`sample_temporal_views`) then one :class:`~stssl.transforms.gpu.GPUAugment` draw per view.

    Every view of every clip gets its own random resized crop, flip, colour jitter, grayscale and blur, shared by
    all of its frames (kornia ``VideoSequential`` with ``same_on_frame``); all ``V * B`` views are augmented in
    one call on the batch's device.

    Args:
        num_views: views per clip ``V``.
        view_len: frames per view ``L``.
        min_gap: smallest distance between consecutive views' start frames.
        max_gap: largest such distance (``None``: as far as the clip allows).
        size: output ``(H', W')`` of the crops (an int for a square); ``None`` keeps the input's size.
        scale: ``(min, max)`` fraction of the frame area each crop keeps.
        ratio: ``(min, max)`` crop aspect ratio relative to the output's.
        hflip: probability of mirroring a view.
        color_jitter: colour-jitter strength ``s`` (``(s, s, s, s/4)``) or four ranges; 0 for none.
        color_jitter_p: probability a view gets the colour jitter.
        grayscale: probability of a gray view.
        blur: probability of a Gaussian blur.
        augment: ``False`` skips the augmentation (views then differ only in time; for tests and ablations).

    Shape:
        - video: ``(B, C, T, H, W)`` float in ``[0, 1]``, ``T >=`` :attr:`min_frames`.
        - output: :class:`TemporalViewBatch`, ``views`` ``(B, V, C, L, H', W')``.

    Example:
        >>> tv = TemporalViews(num_views=3, view_len=2, min_gap=1, max_gap=2, size=16)
        >>> out = tv(torch.rand(2, 3, 8, 32, 32), generator=torch.Generator().manual_seed(0))
        >>> tuple(out.views.shape), tv.min_frames
        ((2, 3, 3, 2, 16, 16), 4)
    """

    def __init__(
        self,
        num_views: int = 2,
        view_len: int = 8,
        min_gap: int = 0,
        max_gap: int | None = None,
        size: int | tuple[int, int] | None = None,
        scale: tuple[float, float] = (0.3, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float | tuple[float, float, float, float] = 0.4,
        color_jitter_p: float = 0.8,
        grayscale: float = 0.2,
        blur: float = 0.0,
        augment: bool = True,
    ) -> None:
        super().__init__()
        _check_view_options("TemporalViews", num_views, view_len, min_gap, max_gap)
        self.num_views = int(num_views)
        self.view_len = int(view_len)
        self.min_gap = int(min_gap)
        self.max_gap = None if max_gap is None else int(max_gap)
        if size is not None and not isinstance(size, int) and len(size) != 2:
            raise ValueError(f"TemporalViews: size must be an int or (H, W), got {size!r}")
        self.size: tuple[int, int] | None = (
            None if size is None else (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        )
        self.augment = bool(augment)
        self._aug_kwargs = {
            "scale": tuple(scale), "ratio": tuple(ratio), "hflip": hflip, "color_jitter": color_jitter,
            "color_jitter_p": color_jitter_p, "grayscale": grayscale, "blur": blur,
        }
        # One pipeline per output size; with size=None the size is the input's, known at the first call.
        self._augmenters: dict[tuple[int, int], GPUAugment] = {}
        if self.size is not None and self.augment:
            self._augmenter(self.size)  # validates the options now

    @property
    def min_frames(self) -> int:
        """Frames a clip needs: ``view_len + (num_views - 1) * min_gap``."""
        return temporal_views_min_frames(self.num_views, self.view_len, self.min_gap)

    def _augmenter(self, size: tuple[int, int]) -> GPUAugment:
        if size not in self._augmenters:
            self._augmenters[size] = GPUAugment(size, **self._aug_kwargs)  # type: ignore[arg-type]
        return self._augmenters[size]

    def forward(self, video: torch.Tensor, generator: torch.Generator | None = None) -> TemporalViewBatch:
        """Cut and augment the views; see the class docstring for shapes."""
        cut = sample_temporal_views(
            video, self.num_views, self.view_len, self.min_gap, self.max_gap, generator=generator
        )
        if not self.augment:
            return cut
        size = self.size if self.size is not None else (int(video.shape[-2]), int(video.shape[-1]))
        flat = rearrange(cut.views, "B V C L H W -> (V B) C L H W")
        out, _ = self._augmenter(size)(flat, generator=generator)
        return replace(cut, views=rearrange(out, "(V B) C L H W -> B V C L H W", V=self.num_views))

    def centre(self, video: torch.Tensor) -> torch.Tensor:
        """One clean view per clip: the central ``view_len`` frames, the largest central crop with ``size``'s aspect
        ratio resized to ``size`` (resize and centre crop), no augmentation (what DeepCluster clusters: features of
        unaugmented inputs). ``(B, C, T, H, W)`` -> ``(B, 1, C, L, H', W')``.

        Example:
            >>> TemporalViews(num_views=2, view_len=2, size=8).centre(torch.rand(3, 3, 6, 16, 24)).shape
            torch.Size([3, 1, 3, 2, 8, 8])
        """
        check_shape(video, "B C T H W", name="TemporalViews.centre: video")
        frames = int(video.shape[2])
        if frames < self.view_len:
            raise ValueError(f"TemporalViews.centre: video has {frames} frames, fewer than view_len={self.view_len}")
        start = (frames - self.view_len) // 2
        clip = video[:, :, start : start + self.view_len]
        if self.size is not None and tuple(clip.shape[-2:]) != self.size:
            # crop, then resize (not ClipResize's resize-then-crop): no pixel from the cropped-off sides bleeds
            # into the border through the antialiasing filter
            H, W = int(clip.shape[-2]), int(clip.shape[-1])
            h, w = min(H, round(W * self.size[0] / self.size[1])), min(W, round(H * self.size[1] / self.size[0]))
            top, left = (H - h) // 2, (W - w) // 2
            clip = clip[..., top : top + h, left : left + w]
            B, C, L = clip.shape[:3]
            flat = rearrange(clip, "B C L H W -> (B L) C H W")
            flat = F.interpolate(flat.float(), size=self.size, mode="bilinear", align_corners=False, antialias=True)
            clip = rearrange(flat, "(B L) C H W -> B C L H W", B=B, L=L).to(video.dtype)
        return clip[:, None]

    def extra_repr(self) -> str:
        return (
            f"num_views={self.num_views}, view_len={self.view_len}, min_gap={self.min_gap}, max_gap={self.max_gap}, "
            f"size={self.size}, augment={self.augment}"
        )


def encode_views(encoder: Encoder, views: torch.Tensor, pool_grid: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Pooled encoder features of every view, from one encoder call over the ``V * B`` views.

    Views shorter than ``encoder.spec.min_frames`` have their frames repeated
    (:func:`~stssl.tasks.image_common.encode_pooled`).

    Args:
        encoder: any :class:`~stssl.encoders.base.Encoder`.
        views: ``(B, V, C, L, H, W)``.
        pool_grid: ``(h, w)`` cells kept from each view's dense map (:func:`~stssl.tasks.common.pool_cells`;
            ``(1, 1)``: the pooled vector).

    Returns:
        ``(V, B, D * h * w)``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> tuple(encode_views(r3d_tiny(width=4), torch.rand(2, 3, 3, 2, 16, 16)).shape)
        (3, 2, 32)
    """
    sizes = check_shape(views, "B V C L H W", name="encode_views: views")
    pooled = encode_pooled(encoder, rearrange(views, "B V C L H W -> (V B) C L H W"), pool_grid)
    return rearrange(pooled, "(V B) D -> V B D", V=sizes["V"])
