"""Batched, temporally consistent augmentation on the batch's device (kornia ``VideoSequential``).

Every clip of a batch gets its own random crop, flip and colour jitter, shared by all of its frames
(``same_on_frame=True``). Intrinsics follow the geometric part.

Conventions (checked numerically in ``tests/transforms/test_gpu.py``):

- kornia's ``RandomResizedCrop`` runs in ``cropping_mode="slice"`` with ``align_corners=False``: it crops by
  index and resizes with ``interpolate(align_corners=False)``, and its matrix is the half-pixel map
  ``x' = (x - x0 + 0.5) * W' / w - 0.5`` — the pixel-centre convention of :mod:`stssl.geometry.camera`.
  (kornia's default ``align_corners=True`` maps corner pixel centres onto each other instead; not used here.)
  The resize is not antialiased, so keep the crop at most ~2x larger than the output.
- kornia's flip matrix is ``x' = W - 1 - x``. ``VideoSequential`` has no ``transform_matrix`` attribute, so
  the per-clip ``(B, 3, 3)`` matrix ``M`` (input pixels -> output pixels) is rebuilt from the sampled
  parameters with ``get_transformation_matrix(..., recompute=True)`` on the frames, taking frame 0 of each clip.
- ``K' = M @ K``; for a flipped clip that has ``fx' < 0``, and we return ``K' @ diag(-1, 1, 1)`` instead, the
  same convention as :func:`stssl.transforms.functional.hflip_intrinsics`: ``fx > 0`` and the flipped clip is
  the image of the mirrored world (``X -> -X``). ``last_params["flipped"]`` says which clips were mirrored,
  so a task can mirror its poses too.

kornia draws its parameters from torch's global generator (it has no per-call generator); pass ``generator``
to :meth:`GPUAugment.forward` for a reproducible draw that leaves the global state untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from stssl.checks import check_shape
from stssl.transforms.functional import _jitter_ranges, _pair

__all__ = ["GPUAugment", "make_views"]


class GPUAugment(nn.Module):
    """Random resized crop, flip, colour jitter and optional grayscale/blur, one draw per clip.

    Args:
        size: output ``(H', W')`` or an int for a square.
        scale: ``(min, max)`` fraction of the frame area kept by the crop.
        ratio: ``(min, max)`` crop aspect ratio relative to the output's ``W'/H'``.
        hflip: probability of mirroring a clip.
        color_jitter: 0 for none, a strength ``s`` (= ``(s, s, s, s/4)``) or ``(brightness, contrast,
            saturation, hue)`` ranges (torchvision's ``ColorJitter`` semantics, kornia ``ColorJitter``).
        color_jitter_p: probability that a clip gets the colour jitter.
        grayscale: probability of turning a clip gray.
        blur: probability of a Gaussian blur.
        blur_sigma: ``(min, max)`` blur sigma in output pixels; the kernel spans about ``+-2 sigma_max``.

    Shape:
        - video: ``(B, C, T, H, W)`` float in ``[0, 1]`` (``C == 3`` for colour jitter/grayscale).
        - K: ``(B, 3, 3)`` pixels at ``(H, W)``, or ``None``.
        - output: ``(B, C, T, H', W')`` and ``(B, 3, 3)`` (or ``None``).

    Example:
        >>> aug = GPUAugment((8, 8), color_jitter=0.4)
        >>> K = torch.tensor([[10.0, 0, 7.5], [0, 10.0, 7.5], [0, 0, 1]]).expand(2, 3, 3)
        >>> video, K_out = aug(torch.rand(2, 3, 4, 16, 16), K, generator=torch.Generator().manual_seed(0))
        >>> tuple(video.shape), tuple(K_out.shape)
        ((2, 3, 4, 8, 8), (2, 3, 3))
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float | Sequence[float] = 0.0,
        color_jitter_p: float = 0.8,
        grayscale: float = 0.0,
        blur: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        super().__init__()
        import kornia.augmentation as KA

        self.size = _pair(size, "size")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale: expected 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio: expected 0 < min <= max, got {ratio}")
        for name, p in (
            ("hflip", hflip),
            ("color_jitter_p", color_jitter_p),
            ("grayscale", grayscale),
            ("blur", blur),
        ):
            if not 0 <= p <= 1:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
        if not 0 < blur_sigma[0] <= blur_sigma[1]:
            raise ValueError(f"blur_sigma: expected 0 < min <= max, got {blur_sigma}")
        jitter = _jitter_ranges(color_jitter)
        aspect = self.size[1] / self.size[0]
        ops: list[nn.Module] = [
            KA.RandomResizedCrop(
                self.size,
                scale=(float(scale[0]), float(scale[1])),
                ratio=(ratio[0] * aspect, ratio[1] * aspect),
                align_corners=False,
                cropping_mode="slice",
            )
        ]
        if hflip > 0:
            ops.append(KA.RandomHorizontalFlip(p=hflip))
        if any(jitter) and color_jitter_p > 0:
            ops.append(KA.ColorJitter(*jitter, p=color_jitter_p))
        if grayscale > 0:
            ops.append(KA.RandomGrayscale(p=grayscale))
        if blur > 0:
            kernel = 2 * int(round(2 * blur_sigma[1])) + 1
            ops.append(KA.RandomGaussianBlur((kernel, kernel), blur_sigma, p=blur))
        self.pipeline = KA.VideoSequential(*ops, data_format="BCTHW", same_on_frame=True)
        self.last_params: dict[str, Any] = {}

    def forward(
        self,
        video: torch.Tensor,
        K: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment each clip of the batch; see the class docstring for shapes.

        Args:
            video: ``(B, C, T, H, W)`` float in ``[0, 1]``.
            K: ``(B, 3, 3)`` intrinsics or ``None``.
            generator: a CPU generator for a reproducible draw (torch's global generators are then left as
                they were); ``None`` draws from the global state.

        Returns:
            ``(video, K)``: ``(B, C, T, H', W')`` and ``(B, 3, 3)`` (``None`` if ``K`` is ``None``).
            ``self.last_params`` gets ``transform`` ``(B, 3, 3)`` (input to output pixels, before the flip
            convention), ``flipped`` ``(B,)`` bool and ``kornia``, the sampled kornia parameters (per frame,
            ``B * T`` rows; pass them back as ``aug.pipeline(video, params=...)`` to replay the draw).
        """
        sizes = check_shape(video, "B C T H W", name="video")
        if not video.is_floating_point():
            raise TypeError(f"video: expected a float tensor in [0, 1], got dtype {video.dtype}")
        if K is not None:
            check_shape(K, "B 3 3", sizes, name="K")
        if generator is None:
            return self._forward(video, K)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        devices = [video.device] if video.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=video.device.type):
            torch.random.default_generator.manual_seed(seed)
            if devices:
                index = video.device.index if video.device.index is not None else torch.cuda.current_device()
                torch.cuda.default_generators[index].manual_seed(seed)
            return self._forward(video, K)

    def _forward(
        self, video: torch.Tensor, K: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, C, T, H, W = video.shape
        params = self.pipeline.forward_parameters(video.shape)
        out = self.pipeline(video, params=params)
        # (B * T, 3, 3) per frame -> frame 0 of each clip (all frames share the draw).
        frames = video.new_zeros(()).expand(B * T, C, H, W)  # only shape/dtype/device are read
        M = self.pipeline.get_transformation_matrix(frames, params, recompute=True)
        M = (
            torch.eye(3, dtype=video.dtype, device=video.device).expand(B, 3, 3)
            if M is None
            else M.reshape(B, T, 3, 3)[:, 0]
        )
        flipped = M[:, 0, 0] < 0
        self.last_params = {"transform": M, "flipped": flipped, "kornia": params}
        if K is None:
            return out, None
        K_out = M.to(K.dtype) @ K
        mirror = torch.where(flipped, -1.0, 1.0).to(K.dtype)
        K_out = torch.cat([K_out[:, :, :1] * mirror[:, None, None], K_out[:, :, 1:]], dim=2)
        return out, K_out

    def make_views(
        self,
        video: torch.Tensor,
        K: torch.Tensor | None,
        num_views: int,
        generator: torch.Generator | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Independently augmented views of every clip (one kornia call over ``V * B`` clips).

        Args:
            video: ``(B, C, T, H, W)`` float in ``[0, 1]``.
            K: ``(B, 3, 3)`` or ``None``.
            num_views: ``V >= 1``.
            generator: optional CPU generator, as in :meth:`forward`.

        Returns:
            ``V`` pairs ``(video (B, C, T, H', W'), K (B, 3, 3) | None)``.
        """
        return make_views(self, video, K, num_views, generator)


def make_views(
    augment: GPUAugment,
    video: torch.Tensor,
    K: torch.Tensor | None,
    num_views: int,
    generator: torch.Generator | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``num_views`` independently augmented views of each clip, for contrastive tasks.

    The batch is repeated ``V`` times and augmented in a single call, so each view of each clip gets its own
    draw; view ``v`` of clip ``b`` is row ``v * B + b`` of that call.

    Args:
        augment: the :class:`GPUAugment` to apply.
        video: ``(B, C, T, H, W)`` float in ``[0, 1]``.
        K: ``(B, 3, 3)`` or ``None``.
        num_views: ``V >= 1``.
        generator: optional CPU generator for a reproducible draw.

    Returns:
        A list of ``V`` pairs ``(video (B, C, T, H', W'), K (B, 3, 3) | None)``.

    Example:
        >>> views = make_views(GPUAugment(8), torch.rand(2, 3, 4, 16, 16), None, 3)
        >>> len(views), tuple(views[0][0].shape)
        (3, (2, 3, 4, 8, 8))
    """
    sizes = check_shape(video, "B C T H W", name="video")
    if K is not None:
        check_shape(K, "B 3 3", sizes, name="K")
    if num_views < 1:
        raise ValueError(f"num_views: expected >= 1, got {num_views}")
    B = sizes["B"]
    rep = video.repeat(num_views, 1, 1, 1, 1)
    K_rep = None if K is None else K.repeat(num_views, 1, 1)
    out, K_out = augment(rep, K_rep, generator=generator)
    return [
        (out[v * B : (v + 1) * B], None if K_out is None else K_out[v * B : (v + 1) * B])
        for v in range(num_views)
    ]
