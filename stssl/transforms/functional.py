"""Pure per-clip transforms on ``(C, T, H, W)`` tensors that keep intrinsics in step.

Every op applies the same parameters to every frame of the clip, so motion between frames is preserved.
Geometric ops take an optional ``K`` ``(..., 3, 3)`` (pixels at the input resolution) and return it updated
for the output, following :mod:`stssl.geometry.camera`: pixel centres sit at integer coordinates and a resize
maps ``u' + 0.5 = sx * (u + 0.5)``, the mapping of ``interpolate(..., align_corners=False)``.

uint8 clips stay uint8 (resizes use PyTorch's uint8 kernels and round); float clips stay float.
Dataloader workers run these ops (:class:`ClipAugment` for training, :class:`ClipResize` for validation).

Example:
    >>> video = torch.randint(0, 256, (3, 4, 24, 32), dtype=torch.uint8)
    >>> K = torch.tensor([[20.0, 0, 15.5], [0, 20.0, 11.5], [0, 0, 1]])
    >>> aug = ClipAugment((16, 16), color_jitter=0.4)
    >>> out, K_out = aug(video, K, torch.Generator().manual_seed(0))
    >>> out.shape, out.dtype, K_out.shape
    (torch.Size([3, 4, 16, 16]), torch.uint8, torch.Size([3, 3]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from stssl.checks import check_shape
from stssl.geometry.camera import crop_intrinsics, scale_intrinsics

__all__ = [
    "resize_clip",
    "crop_clip",
    "center_crop_clip",
    "hflip_clip",
    "hflip_intrinsics",
    "adjust_color_clip",
    "normalize_clip",
    "random_resized_crop_params",
    "sample_color_params",
    "ClipAugment",
    "ClipResize",
]

_INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact", "area")


def _check_clip(video: torch.Tensor, name: str = "video") -> dict[str, int]:
    sizes = check_shape(video, "C T H W", name=name)
    if video.dtype != torch.uint8 and not video.is_floating_point():
        raise TypeError(f"{name}: expected a uint8 or floating point clip, got dtype {video.dtype}")
    return sizes


def _check_K(K: torch.Tensor | None, name: str = "K") -> None:
    if K is None:
        return
    if not isinstance(K, torch.Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor of shape (3, 3) or (B, 3, 3), got {type(K).__name__}"
        )
    if K.ndim not in (2, 3) or tuple(K.shape[-2:]) != (3, 3):
        raise ValueError(f"{name}: expected shape (3, 3) or (B, 3, 3), got {tuple(K.shape)}")
    if not K.is_floating_point():
        raise TypeError(f"{name}: expected a floating point tensor, got dtype {K.dtype}")


def _pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    values = [size, size] if isinstance(size, int) else [int(s) for s in size]
    if len(values) != 2:
        raise ValueError(f"{name}: expected an int or (height, width), got {size!r}")
    if values[0] < 1 or values[1] < 1:
        raise ValueError(f"{name}: sizes must be positive, got {size!r}")
    return values[0], values[1]


def resize_clip(
    video: torch.Tensor,
    size: int | Sequence[int],
    K: torch.Tensor | None = None,
    antialias: bool = True,
    interpolation: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Resize every frame of a clip to ``size``.

    Args:
        video: ``(C, T, H, W)`` uint8 or float.
        size: ``(H', W')``, or an int: the shorter side becomes ``size`` and the aspect ratio is kept
            (the longer side is rounded down, as in torchvision).
        K: optional ``(3, 3)`` or ``(B, 3, 3)`` intrinsics at ``(H, W)``.
        antialias: low-pass filter when downsampling (bilinear/bicubic only).
        interpolation: one of ``bilinear``, ``bicubic``, ``nearest``, ``nearest-exact``, ``area``.

    Returns:
        ``(video, K)``: ``(C, T, H', W')`` with the input dtype, and ``K`` scaled by ``(W'/W, H'/H)``
        (``None`` when ``K`` is ``None``).

    Example:
        >>> K = torch.tensor([[10.0, 0, 7.5], [0, 10.0, 3.5], [0, 0, 1]])
        >>> out, K2 = resize_clip(torch.zeros(3, 2, 8, 16, dtype=torch.uint8), 4, K)
        >>> tuple(out.shape), K2[0].tolist()
        ((3, 2, 4, 8), [5.0, 0.0, 3.5])
    """
    sizes = _check_clip(video)
    _check_K(K)
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation: expected one of {_INTERPOLATIONS}, got {interpolation!r}")
    H, W = sizes["H"], sizes["W"]
    if isinstance(size, int):
        if size < 1:
            raise ValueError(f"size: must be positive, got {size}")
        if H <= W:
            out_h, out_w = size, max(1, int(size * W / H))
        else:
            out_h, out_w = max(1, int(size * H / W)), size
    else:
        out_h, out_w = _pair(size, "size")
    if (out_h, out_w) != (H, W):
        video = _resize_frames(video, (out_h, out_w), antialias, interpolation)
    if K is not None:
        K = scale_intrinsics(K, out_w / W, out_h / H)
    return video, K


def _resize_frames(video: torch.Tensor, size: tuple[int, int], antialias: bool, mode: str) -> torch.Tensor:
    # (C, T, H, W) -> (T, C, H, W): PyTorch's fast uint8 kernels want 3/4 channels in a contiguous batch.
    frames = video.permute(1, 0, 2, 3).contiguous()
    kwargs: dict = {}
    if mode in ("bilinear", "bicubic"):
        kwargs = {"align_corners": False, "antialias": antialias}
    if frames.dtype == torch.uint8 and mode == "bicubic":
        # No uint8 bicubic kernel without antialias: go through float and round back.
        out = F.interpolate(frames.float(), size=size, mode=mode, **kwargs).round_().clamp_(0, 255)
        out = out.to(torch.uint8)
    else:
        out = F.interpolate(frames, size=size, mode=mode, **kwargs)
    return out.permute(1, 0, 2, 3)


def crop_clip(
    video: torch.Tensor,
    top: int,
    left: int,
    height: int,
    width: int,
    K: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop the same window from every frame (a view, no copy).

    Args:
        video: ``(C, T, H, W)``.
        top: first row kept; ``0 <= top`` and ``top + height <= H``.
        left: first column kept; ``0 <= left`` and ``left + width <= W``.
        height: rows kept.
        width: columns kept.
        K: optional ``(3, 3)`` or ``(B, 3, 3)`` intrinsics; the principal point shifts by ``(left, top)``.

    Returns:
        ``(video, K)``: ``(C, T, height, width)`` and the updated ``K``.

    Example:
        >>> K = torch.tensor([[10.0, 0, 7.5], [0, 10.0, 3.5], [0, 0, 1]])
        >>> out, K2 = crop_clip(torch.zeros(3, 2, 8, 16), 2, 4, 4, 8, K)
        >>> tuple(out.shape), K2[:2, 2].tolist()
        ((3, 2, 4, 8), [3.5, 1.5])
    """
    sizes = _check_clip(video)
    _check_K(K)
    H, W = sizes["H"], sizes["W"]
    top, left, height, width = int(top), int(left), int(height), int(width)
    if height < 1 or width < 1 or top < 0 or left < 0 or top + height > H or left + width > W:
        raise ValueError(
            f"crop (top={top}, left={left}, height={height}, width={width}) must lie inside the video's "
            f"(H, W)=({H}, {W}) with positive size"
        )
    video = video[..., top : top + height, left : left + width]
    if K is not None:
        K = crop_intrinsics(K, top, left)
    return video, K


def center_crop_clip(
    video: torch.Tensor, size: int | Sequence[int], K: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Crop the central ``size`` window of every frame (``top = round((H - h) / 2)``, as torchvision).

    Args:
        video: ``(C, T, H, W)``.
        size: ``(h, w)`` or an int for a square; must fit inside ``(H, W)``.
        K: optional ``(3, 3)`` or ``(B, 3, 3)`` intrinsics.

    Returns:
        ``(video, K)``: ``(C, T, h, w)`` and the updated ``K``.

    Example:
        >>> out, _ = center_crop_clip(torch.arange(16.0).reshape(1, 1, 4, 4), 2)
        >>> out[0, 0].tolist()
        [[5.0, 6.0], [9.0, 10.0]]
    """
    sizes = _check_clip(video)
    h, w = _pair(size, "size")
    if h > sizes["H"] or w > sizes["W"]:
        raise ValueError(
            f"size: crop {(h, w)} is larger than the video's (H, W)=({sizes['H']}, {sizes['W']})"
        )
    top = int(round((sizes["H"] - h) / 2.0))
    left = int(round((sizes["W"] - w) / 2.0))
    return crop_clip(video, top, left, h, w, K)


def hflip_intrinsics(K: torch.Tensor, width: int | torch.Tensor) -> torch.Tensor:
    """Intrinsics of a horizontally mirrored image, as a camera that sees the mirrored world.

    A pixel ``u`` moves to ``W - 1 - u``. We keep ``fx > 0`` and instead mirror the world: the flipped image is
    the image of the scene with ``X -> -X`` taken with ``K'``, where ``cx' = W - 1 - cx`` and the skew changes
    sign. Poses and points used with a flipped clip must be mirrored too: ``P' = diag(-1, 1, 1) P`` and
    ``a_from_b' = S a_from_b S`` with ``S = diag(-1, 1, 1, 1)`` (monodepth2's convention).

    Args:
        K: ``(..., 3, 3)`` intrinsics.
        width: image width ``W`` in pixels (an int or a ``(...)`` tensor).

    Returns:
        ``(..., 3, 3)`` the mirrored intrinsics (a new tensor).

    Example:
        >>> K = torch.tensor([[10.0, 0, 5.0], [0, 10.0, 3.5], [0, 0, 1]])
        >>> hflip_intrinsics(K, 16)[0].tolist()
        [10.0, 0.0, 10.0]
    """
    _check_K(K)
    out = K.clone()
    out[..., 0, 1] = -K[..., 0, 1] + 0.0  # + 0.0 turns -0.0 into 0.0
    out[..., 0, 2] = torch.as_tensor(width, dtype=K.dtype, device=K.device) - 1 - K[..., 0, 2]
    return out


def hflip_clip(
    video: torch.Tensor, K: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mirror every frame left-right.

    ``K`` follows :func:`hflip_intrinsics`: ``cx' = W - 1 - cx`` with ``fx`` kept positive, so the flipped
    clip is the image of the mirrored world (``X -> -X``).

    Args:
        video: ``(C, T, H, W)``.
        K: optional ``(3, 3)`` or ``(B, 3, 3)`` intrinsics.

    Returns:
        ``(video, K)``: ``(C, T, H, W)`` and the updated ``K``.

    Example:
        >>> hflip_clip(torch.arange(3.0).reshape(1, 1, 1, 3))[0].flatten().tolist()
        [2.0, 1.0, 0.0]
    """
    sizes = _check_clip(video)
    _check_K(K)
    video = video.flip(-1)
    if K is not None:
        K = hflip_intrinsics(K, sizes["W"])
    return video, K


def adjust_color_clip(
    video: torch.Tensor,
    brightness: float = 1.0,
    contrast: float = 1.0,
    saturation: float = 1.0,
    hue: float = 0.0,
) -> torch.Tensor:
    """Jitter colours with the same factors on every frame (torchvision's definitions, in this order).

    Brightness scales the values; contrast blends each frame with the mean of its own grayscale image, so the
    result equals applying the op frame by frame; saturation blends with the grayscale image; hue rotates the
    hue channel by ``hue`` turns.

    Args:
        video: ``(3, T, H, W)`` RGB, uint8 or float in ``[0, 1]``.
        brightness: factor ``>= 0`` (1 keeps the clip).
        contrast: factor ``>= 0`` (1 keeps the clip).
        saturation: factor ``>= 0`` (1 keeps the clip; 0 is grayscale).
        hue: shift in ``[-0.5, 0.5]`` (0 keeps the clip).

    Returns:
        ``(3, T, H, W)`` with the input dtype.

    Example:
        >>> clip = torch.full((3, 2, 4, 4), 100, dtype=torch.uint8)
        >>> adjust_color_clip(clip, brightness=1.5).unique().tolist()
        [150]
    """
    _check_clip(video)
    check_shape(video, "3 T H W", name="video")
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if value < 0:
            raise ValueError(f"{name}: expected a factor >= 0, got {value}")
    if not -0.5 <= hue <= 0.5:
        raise ValueError(f"hue: expected a shift in [-0.5, 0.5], got {hue}")
    if (brightness, contrast, saturation, hue) == (1.0, 1.0, 1.0, 0.0):
        return video
    frames = video.permute(1, 0, 2, 3)  # (T, 3, H, W): torchvision ops treat leading dims as a batch
    # uint8 goes through float once (torchvision's uint8 kernels are ~10x slower and round at every step).
    is_uint8 = frames.dtype == torch.uint8
    frames = frames.float().div_(255.0) if is_uint8 else frames
    if brightness != 1.0:
        frames = TF.adjust_brightness(frames, brightness)
    if contrast != 1.0:
        frames = TF.adjust_contrast(frames, contrast)
    if saturation != 1.0:
        frames = TF.adjust_saturation(frames, saturation)
    if hue != 0.0:
        frames = _shift_hue(frames, hue)
    if is_uint8:
        frames = frames.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return frames.permute(1, 0, 2, 3)


def _shift_hue(frames: torch.Tensor, hue: float) -> torch.Tensor:
    """Rotate the HSV hue of ``(..., 3, H, W)`` float RGB in ``[0, 1]`` by ``hue`` turns (torchvision's
    ``adjust_hue``, without the full HSV round trip: value and chroma are kept, only the hue moves)."""
    r, g, b = frames.unbind(dim=-3)
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h = torch.where(
        maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    h6 = torch.remainder(h + 6.0 * hue, 6.0)  # hue in sixths of a turn
    out = []
    for n in (5.0, 3.0, 1.0):  # R, G, B of hsv_to_rgb: V - C * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
        k = torch.remainder(h6 + n, 6.0)
        out.append(maxc - chroma * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0))
    return torch.stack(out, dim=-3)


def normalize_clip(video: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Standardise each channel: ``(video - mean) / std``.

    Args:
        video: ``(C, T, H, W)``; uint8 is first converted to float32 in ``[0, 1]``.
        mean: ``C`` values (in ``[0, 1]`` units).
        std: ``C`` positive values.

    Returns:
        ``(C, T, H, W)`` float.

    Example:
        >>> normalize_clip(torch.full((2, 1, 1, 1), 255, dtype=torch.uint8), [0.5, 0.0], [0.5, 2.0]).flatten()
        tensor([1.0000, 0.5000])
    """
    sizes = _check_clip(video)
    if len(mean) != sizes["C"] or len(std) != sizes["C"]:
        raise ValueError(
            f"mean/std: expected {sizes['C']} values each (one per channel), got {len(mean)}/{len(std)}"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std: expected positive values, got {list(std)}")
    if video.dtype == torch.uint8:
        video = video.float().div_(255.0)
    mean_t = torch.as_tensor(mean, dtype=video.dtype, device=video.device).view(-1, 1, 1, 1)
    std_t = torch.as_tensor(std, dtype=video.dtype, device=video.device).view(-1, 1, 1, 1)
    return (video - mean_t) / std_t


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def random_resized_crop_params(
    H: int,
    W: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """Sample a crop window as torchvision's ``RandomResizedCrop``, from ``generator`` only.

    Draws an area fraction uniformly from ``scale`` and an aspect ratio (width / height) log-uniformly from
    ``ratio``; after 10 misses falls back to the central crop with the ratio clamped into ``ratio``.

    Args:
        H: image height.
        W: image width.
        scale: ``(min, max)`` fraction of the image area, ``0 < min <= max <= 1``.
        ratio: ``(min, max)`` crop width / height.
        generator: the random source (``None`` uses torch's global one).

    Returns:
        ``(top, left, h, w)`` in pixels, inside the image.

    Example:
        >>> random_resized_crop_params(32, 32, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
        (0, 0, 32, 32)
    """
    if H < 1 or W < 1:
        raise ValueError(f"H, W: expected positive sizes, got ({H}, {W})")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"scale: expected 0 < min <= max, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio: expected 0 < min <= max, got {ratio}")
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= W and 0 < h <= H:
            top = int(torch.randint(0, H - h + 1, (), generator=generator))
            left = int(torch.randint(0, W - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = W / H
    if in_ratio < ratio[0]:
        w, h = W, max(1, min(H, int(round(W / ratio[0]))))
    elif in_ratio > ratio[1]:
        h, w = H, max(1, min(W, int(round(H * ratio[1]))))
    else:
        h, w = H, W
    return (H - h) // 2, (W - w) // 2, h, w


def _jitter_ranges(color_jitter: float | Sequence[float]) -> tuple[float, float, float, float]:
    if isinstance(color_jitter, (int, float)):
        strength = float(color_jitter)
        ranges = [strength, strength, strength, min(strength / 4, 0.5)]
    else:
        ranges = [float(v) for v in color_jitter]
        if len(ranges) != 4:
            raise ValueError(
                f"color_jitter: expected a strength or (brightness, contrast, saturation, hue), got {color_jitter!r}"
            )
    b, c, s, h = ranges
    if min(ranges) < 0 or h > 0.5:
        raise ValueError(
            f"color_jitter: expected non-negative strengths with hue <= 0.5, got {color_jitter!r}"
        )
    return b, c, s, h


def sample_color_params(
    color_jitter: float | Sequence[float], generator: torch.Generator | None = None
) -> dict[str, float]:
    """Draw one set of :func:`adjust_color_clip` factors.

    Args:
        color_jitter: a strength ``s`` (meaning ``(s, s, s, s / 4)``) or ``(brightness, contrast, saturation,
            hue)``: factors are drawn uniformly from ``[max(0, 1 - v), 1 + v]`` and the hue from ``[-h, h]``.
        generator: the random source.

    Returns:
        ``{"brightness", "contrast", "saturation", "hue"}`` floats.

    Example:
        >>> sample_color_params(0.0)
        {'brightness': 1.0, 'contrast': 1.0, 'saturation': 1.0, 'hue': 0.0}
    """
    b, c, s, h = _jitter_ranges(color_jitter)
    return {
        "brightness": _uniform(max(0.0, 1 - b), 1 + b, generator) if b else 1.0,
        "contrast": _uniform(max(0.0, 1 - c), 1 + c, generator) if c else 1.0,
        "saturation": _uniform(max(0.0, 1 - s), 1 + s, generator) if s else 1.0,
        "hue": _uniform(-h, h, generator) if h else 0.0,
    }


class ClipAugment:
    """Seeded, temporally consistent training augmentation for one clip (for dataloader workers).

    One random resized crop (scale and aspect sampled as torchvision's ``RandomResizedCrop``), one flip decision
    and one colour jitter for the whole clip; ``K`` follows the crop, the resize and the flip
    (:func:`hflip_intrinsics`). The crop is a view and only the window is resized, on uint8 when the input is.

    Args:
        size: output ``(H', W')`` or an int for a square.
        scale: ``(min, max)`` fraction of the frame area kept.
        ratio: ``(min, max)`` crop aspect ratio relative to the output's ``W'/H'`` (``(1, 1)`` crops exactly the
            output's shape, so nothing is stretched).
        hflip: probability of mirroring the clip.
        color_jitter: 0 for none, a strength ``s`` (= ``(s, s, s, s/4)``) or ``(brightness, contrast,
            saturation, hue)`` ranges as in :func:`sample_color_params`.
        antialias: antialiased resizing.

    Call:
        ``aug(video, K, generator) -> (video, K)`` with ``video`` ``(C, T, H, W)`` (uint8 or float; colour jitter
        needs ``C == 3``), ``K`` ``(3, 3)`` or ``None``; the output is ``(C, T, H', W')`` with the input dtype.
        ``aug.last_params`` holds the parameters of the last call (``crop``, ``flipped``, ``color``).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float | Sequence[float] = 0.0,
        antialias: bool = True,
    ) -> None:
        self.size = _pair(size, "size")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale: expected 0 < min <= max <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio: expected 0 < min <= max, got {ratio}")
        if not 0 <= hflip <= 1:
            raise ValueError(f"hflip: expected a probability in [0, 1], got {hflip}")
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip = float(hflip)
        self.color_jitter = _jitter_ranges(color_jitter)
        self.antialias = antialias
        self.last_params: dict = {}

    def __repr__(self) -> str:
        return (
            f"ClipAugment(size={self.size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, "
            f"color_jitter={self.color_jitter})"
        )

    def __call__(
        self, video: torch.Tensor, K: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        sizes = _check_clip(video)
        _check_K(K)
        out_h, out_w = self.size
        aspect = out_w / out_h
        crop = random_resized_crop_params(
            sizes["H"], sizes["W"], self.scale, (self.ratio[0] * aspect, self.ratio[1] * aspect), generator
        )
        flipped = bool(torch.rand((), generator=generator).item() < self.hflip) if self.hflip > 0 else False
        color = sample_color_params(self.color_jitter, generator) if any(self.color_jitter) else None
        self.last_params = {"crop": crop, "flipped": flipped, "color": color}

        video, K = crop_clip(video, *crop, K=K)
        video, K = resize_clip(video, self.size, K, antialias=self.antialias)
        if flipped:
            video, K = hflip_clip(video, K)
        if color is not None:
            video = adjust_color_clip(video, **color)
        return video.contiguous(), K


class ClipResize:
    """The deterministic validation transform: resize (optionally keeping the aspect and centre-cropping).

    Args:
        size: output ``(H', W')`` or an int for a square.
        center_crop: if True, resize so the frame covers ``size`` keeping its aspect ratio, then crop the centre;
            if False, resize straight to ``size`` (the aspect may change; ``K`` scales per axis).
        antialias: antialiased resizing.

    Call:
        ``resize(video, K=None, generator=None) -> (video, K)``, the same signature as :class:`ClipAugment`
        (``generator`` is ignored), so a datamodule can swap them.

    Example:
        >>> out, _ = ClipResize((8, 8), center_crop=True)(torch.zeros(3, 2, 16, 32, dtype=torch.uint8))
        >>> tuple(out.shape)
        (3, 2, 8, 8)
    """

    def __init__(self, size: int | Sequence[int], center_crop: bool = False, antialias: bool = True) -> None:
        self.size = _pair(size, "size")
        self.center_crop = center_crop
        self.antialias = antialias

    def __repr__(self) -> str:
        return f"ClipResize(size={self.size}, center_crop={self.center_crop})"

    def __call__(
        self, video: torch.Tensor, K: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        sizes = _check_clip(video)
        _check_K(K)
        out_h, out_w = self.size
        if not self.center_crop:
            video, K = resize_clip(video, self.size, K, antialias=self.antialias)
            return video.contiguous(), K
        scale = max(out_h / sizes["H"], out_w / sizes["W"])
        mid = (max(out_h, round(sizes["H"] * scale)), max(out_w, round(sizes["W"] * scale)))
        video, K = resize_clip(video, mid, K, antialias=self.antialias)
        video, K = center_crop_clip(video, self.size, K)
        return video.contiguous(), K
