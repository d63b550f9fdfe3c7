"""Pieces shared by the classic image pretexts applied to frames and clips (rotation, jigsaw, colorization,
inpainting, relative patch position).

Every one of these tasks works on a window of ``clip_len`` consecutive frames (``clip_len=1``: single frames) and
applies the *same* transform to every frame of the window, so a clip carries one label. What they share:

- draws: :func:`sample_window` (a random window of frames), :func:`square_crop` (centre or random square),
  :func:`grid_tile_boxes` (a grid of cells with one jittered tile per cell, gaps between tiles),
  :func:`channel_shifts` (per-channel spatial jitter against chromatic aberration);
- crops: :func:`crop_regions` (per-sample, per-region, optionally per-channel crops in one gather);
- colour: :func:`recolor_patches` (per-patch greyscale or colour-channel dropping, against colour shortcuts),
  :func:`normalize_patches` (per-patch, per-channel standardisation against low-level statistics shortcuts);
- grid patches (jigsaw, relative position): :func:`cut_grid_patches` (window, square crop, jittered grid and
  channel shifts in one seeded call), :func:`recolor_patch_sets`, and :class:`PatchAppearance` (the validated
  per-patch options: channel jitter, greyscale / channel dropping, standardisation, resizing) whose
  :meth:`~PatchAppearance.encode` encodes every patch of a set independently;
- encoding: :func:`fit_min_frames`, :func:`encode_pooled`;
- the width option of :class:`stssl.heads.dense.PyramidDecoder`: :func:`decoder_widths`;
- option checks: :func:`check_clip_len1`, :func:`check_fraction`, :func:`check_choice`,
  :func:`check_channel_jitter`; the common start of a task's forward: :func:`begin_forward`.

All random draws use the passed CPU ``torch.Generator``; large noise tensors are drawn on the data's device from a
generator seeded by one draw of the CPU generator (:func:`device_generator`), so outputs stay reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.tasks.common import gather_frames, pool_cells

if TYPE_CHECKING:
    from stssl.tasks.base import PretextTask

__all__ = [
    "CROP_MODES",
    "CropMode",
    "GridPatches",
    "PatchAppearance",
    "begin_forward",
    "channel_shifts",
    "check_channel_jitter",
    "check_choice",
    "check_clip_len1",
    "check_fraction",
    "check_frames",
    "crop_regions",
    "cut_grid_patches",
    "decoder_widths",
    "device_generator",
    "encode_pooled",
    "fit_min_frames",
    "grid_tile_boxes",
    "normalize_patches",
    "recolor_patch_sets",
    "recolor_patches",
    "resize_patches",
    "sample_window",
    "square_crop",
]

CropMode = Literal["center", "random", "none"]
#: Square-crop modes of :func:`square_crop`.
CROP_MODES: tuple[str, ...] = ("center", "random", "none")

#: ITU-R BT.601 luma weights used for per-patch greyscale.
_LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------------------------- option checks


def check_clip_len1(owner: str, clip_len: int) -> int:
    """Validate a ``clip_len`` option of a frame task (``>= 1``; 1 means single frames).

    Example:
        >>> check_clip_len1("MyTask", 0)
        Traceback (most recent call last):
        ...
        ValueError: MyTask: clip_len must be >= 1, got 0
    """
    if int(clip_len) < 1:
        raise ValueError(f"{owner}: clip_len must be >= 1, got {clip_len}")
    return int(clip_len)


def check_fraction(owner: str, name: str, value: float, *, low: float = 0.0, high: float = 1.0,
                   low_open: bool = False) -> float:
    """Validate a number in ``[low, high]`` (``(low, high]`` with ``low_open``).

    Example:
        >>> check_fraction("MyTask", "gray_p", 1.5)
        Traceback (most recent call last):
        ...
        ValueError: MyTask: gray_p must be in [0.0, 1.0], got 1.5
    """
    v = float(value)
    bad = (v <= low if low_open else v < low) or v > high
    if bad:
        bracket = "(" if low_open else "["
        raise ValueError(f"{owner}: {name} must be in {bracket}{low}, {high}], got {value}")
    return v


def check_choice(owner: str, name: str, value: str, choices: Sequence[str]) -> str:
    """Validate a string option against its choices.

    Example:
        >>> check_choice("MyTask", "crop", "middle", CROP_MODES)
        Traceback (most recent call last):
        ...
        ValueError: MyTask: unknown crop 'middle'; choose from ['center', 'random', 'none']
    """
    if value not in choices:
        raise ValueError(f"{owner}: unknown {name} {value!r}; choose from {list(choices)}")
    return value


def check_frames(owner: str, video: torch.Tensor, clip_len: int) -> None:
    """Raise a clear error when a ``(B, C, T, H, W)`` video has fewer than ``clip_len`` frames (other ranks pass
    through to the generator's shape check).

    Example:
        >>> check_frames("MyTask", torch.zeros(1, 3, 2, 4, 4), 3)
        Traceback (most recent call last):
        ...
        ValueError: MyTask: video has T=2 frames, needs clip_len = 3
    """
    if video.dim() == 5 and video.shape[2] < clip_len:
        raise ValueError(f"{owner}: video has T={video.shape[2]} frames, needs clip_len = {clip_len}")


def check_channel_jitter(owner: str, channel_jitter: int) -> int:
    """Validate a per-channel shift in pixels (``>= 0``; see :func:`channel_shifts`).

    Example:
        >>> check_channel_jitter("MyTask", -1)
        Traceback (most recent call last):
        ...
        ValueError: MyTask: channel_jitter must be >= 0, got -1
    """
    if channel_jitter < 0:
        raise ValueError(f"{owner}: channel_jitter must be >= 0, got {channel_jitter}")
    return int(channel_jitter)


def begin_forward(
    owner: str, task: PretextTask, batch: dict, clip_len: int, generator: torch.Generator | None,
    *built: nn.Module | None,
) -> tuple[torch.Tensor, torch.Generator]:
    """The common start of a frame task's ``forward``: check the task was built, that the video has ``clip_len``
    frames, and pick the label generator (the passed one, else the task's own :meth:`next_generator`).

    Args:
        owner: how the frame-count error names the task.
        task: the task (its class names the build error; it supplies the fallback generator).
        batch: the batch, ``batch["video"]`` ``(B, C, T, H, W)``.
        clip_len: frames the task needs.
        generator: the CPU generator passed to ``forward``, or None.
        built: the modules ``build`` creates; any None raises.

    Returns:
        ``(video, generator)``.
    """
    if any(module is None for module in built):
        raise RuntimeError(f"{type(task).__name__}: call build(encoder.spec) before forward")
    video = batch["video"]
    check_frames(owner, video, clip_len)
    return video, generator if generator is not None else task.next_generator()


# ---------------------------------------------------------------------------------------------- draws


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded by one draw of the CPU ``generator`` (for large noise tensors).

    Example:
        >>> g = device_generator(torch.Generator().manual_seed(0), torch.device("cpu"))
        >>> torch.rand(1, generator=g).shape
        torch.Size([1])
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def sample_window(
    video: torch.Tensor, clip_len: int, *, generator: torch.Generator | None = None, owner: str = "sample_window"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a random window of ``clip_len`` consecutive frames from each video.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= clip_len``.
        clip_len: ``L``, frames per window.
        generator: a CPU ``torch.Generator``.
        owner: how error messages name the caller.

    Returns:
        ``(clips, start)``: ``(B, C, L, H, W)`` on ``video``'s device and ``(B,)`` int64 first frames (CPU).

    Example:
        >>> video = torch.arange(6.0).view(1, 1, 6, 1, 1)
        >>> clips, start = sample_window(video, 3, generator=torch.Generator().manual_seed(0))
        >>> clips.flatten().tolist() == [float(start) + i for i in range(3)]
        True
    """
    sizes = check_shape(video, "B C T H W", name=f"{owner} video")
    check_clip_len1(owner, clip_len)
    if sizes["T"] < clip_len:
        raise ValueError(f"{owner}: video has T={sizes['T']} frames, needs clip_len = {clip_len}")
    start = torch.randint(sizes["T"] - clip_len + 1, (sizes["B"],), generator=generator)
    frames = start[:, None] + torch.arange(clip_len)[None, :]
    clips = rearrange(gather_frames(video, frames), "B L C H W -> B C L H W")
    return clips, start


def crop_regions(
    clips: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Crop ``K`` regions of one size from each clip, optionally at a different offset per channel.

    ``out[b, k, c, l] = clips[b, c, l, top[b, k, c] : top[b, k, c] + h, left[b, k, c] : left[b, k, c] + w]``.

    Args:
        clips: ``(B, C, L, H, W)``.
        top: ``(B, K)`` or ``(B, K, C)`` int64 row of each region's top-left corner (any device).
        left: same shape as ``top``, column of the corner.
        size: ``(h, w)`` of every region.

    Returns:
        ``(B, K, C, L, h, w)`` on ``clips``' device.

    Raises:
        ValueError: when a region leaves the frame.

    Example:
        >>> clips = torch.arange(16.0).view(1, 1, 1, 4, 4)
        >>> crop_regions(clips, torch.tensor([[1]]), torch.tensor([[2]]), (2, 2)).flatten().tolist()
        [6.0, 7.0, 10.0, 11.0]
    """
    sizes = check_shape(clips, "B C L H W", name="crop_regions clips")
    B, C, L, H, W = (sizes[k] for k in "BCLHW")
    h, w = int(size[0]), int(size[1])
    if top.shape != left.shape or top.dim() not in (2, 3) or top.shape[0] != B:
        raise ValueError(
            f"crop_regions: top and left must both be (B, K) or (B, K, C) with B={B}, got {tuple(top.shape)} and "
            f"{tuple(left.shape)}"
        )
    if top.dim() == 3 and top.shape[2] != C:
        raise ValueError(f"crop_regions: per-channel offsets need C={C} channels, got {tuple(top.shape)}")
    if h < 1 or w < 1:
        raise ValueError(f"crop_regions: size must be positive, got {size}")
    if top.numel() and (int(top.min()) < 0 or int(left.min()) < 0 or int(top.max()) + h > H
                        or int(left.max()) + w > W):
        raise ValueError(f"crop_regions: a {h}x{w} region at the given offsets leaves the {H}x{W} frame")
    device = clips.device
    K = top.shape[1]
    top3 = (top if top.dim() == 3 else top[:, :, None].expand(B, K, C)).to(device)
    left3 = (left if left.dim() == 3 else left[:, :, None].expand(B, K, C)).to(device)
    rows = top3[:, :, :, None, None, None] + torch.arange(h, device=device).view(1, 1, 1, 1, h, 1)
    cols = left3[:, :, :, None, None, None] + torch.arange(w, device=device).view(1, 1, 1, 1, 1, w)
    b = torch.arange(B, device=device).view(B, 1, 1, 1, 1, 1)
    c = torch.arange(C, device=device).view(1, 1, C, 1, 1, 1)
    t = torch.arange(L, device=device).view(1, 1, 1, L, 1, 1)
    return clips[b, c, t, rows, cols]


def square_crop(
    clips: torch.Tensor, mode: str = "center", *, generator: torch.Generator | None = None, owner: str = "square_crop"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop the largest square (side ``min(H, W)``) from each clip: centred, at a random place, or not at all.

    Args:
        clips: ``(B, C, L, H, W)``.
        mode: ``"center"``, ``"random"`` (uniform position per sample) or ``"none"`` (returned as is).
        generator: a CPU ``torch.Generator`` (used by ``"random"``).
        owner: how error messages name the caller.

    Returns:
        ``(crops, corner)``: ``(B, C, L, S, S)`` (``(B, C, L, H, W)`` for ``"none"``) and ``(B, 2)`` int64
        ``(top, left)`` of the crop in the input (zeros for ``"none"``).

    Example:
        >>> crops, corner = square_crop(torch.zeros(2, 3, 1, 8, 12))
        >>> tuple(crops.shape), corner[0].tolist()
        ((2, 3, 1, 8, 8), [0, 2])
    """
    sizes = check_shape(clips, "B C L H W", name=f"{owner} clips")
    check_choice(owner, "crop", mode, CROP_MODES)
    B, H, W = sizes["B"], sizes["H"], sizes["W"]
    if mode == "none":
        return clips, torch.zeros(B, 2, dtype=torch.long)
    side = min(H, W)
    if mode == "center":
        corner = torch.tensor([(H - side) // 2, (W - side) // 2]).expand(B, 2).clone()
    else:
        top = torch.randint(H - side + 1, (B,), generator=generator)
        left = torch.randint(W - side + 1, (B,), generator=generator)
        corner = torch.stack([top, left], dim=1)
    if side == H and side == W:
        return clips, corner
    crops = crop_regions(clips, corner[:, :1], corner[:, 1:], (side, side))[:, 0]
    return crops, corner


def grid_tile_boxes(
    batch: int,
    height: int,
    width: int,
    grid: int = 3,
    tile_frac: float = 0.85,
    jitter: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    owner: str = "grid_tile_boxes",
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Place one tile per cell of a ``grid x grid`` layout, with random gaps (Noroozi & Favaro; Doersch et al.).

    The frame is split into ``grid x grid`` cells of ``(height // grid, width // grid)`` pixels (the grid is
    centred; leftover rows/columns are margins). Each tile is ``tile_frac`` of its cell per side, so neighbouring
    tiles are separated by a gap, and it sits at an independent random offset inside its cell: uniform over the
    central ``jitter`` fraction of the free room (``jitter=1``: anywhere in the cell, gaps from 0 to twice the
    room; ``jitter=0``: centred, a fixed gap of ``cell - tile``). Gaps and jitter keep a network from matching
    tiles by continuing edges and lines across tile borders.

    Args:
        batch: ``B``, layouts to draw.
        height, width: ``(H, W)`` of the frame.
        grid: cells per side ``G``; tiles are numbered row-major ``k = row * G + col``.
        tile_frac: tile side over cell side, in ``(0, 1]``.
        jitter: fraction of the free room the offset ranges over, in ``[0, 1]``.
        generator: a CPU ``torch.Generator``.
        owner: how error messages name the caller.

    Returns:
        ``(top, left, (h, w))``: ``(B, G*G)`` int64 corners in frame pixels and the tile size.

    Example:
        >>> top, left, size = grid_tile_boxes(1, 30, 30, 3, 0.8, generator=torch.Generator().manual_seed(0))
        >>> size, bool(((top % 10) <= 2).all() and ((left % 10) <= 2).all())
        ((8, 8), True)
    """
    if grid < 1:
        raise ValueError(f"{owner}: grid must be >= 1, got {grid}")
    check_fraction(owner, "tile_frac", tile_frac, low_open=True)
    check_fraction(owner, "jitter", jitter)
    cell_h, cell_w = height // grid, width // grid
    if cell_h < 1 or cell_w < 1:
        raise ValueError(f"{owner}: a {height}x{width} frame is too small for a {grid}x{grid} grid")
    tile = (max(1, int(round(tile_frac * cell_h))), max(1, int(round(tile_frac * cell_w))))
    n = grid * grid
    cells = torch.arange(n)
    corners = []
    for axis, (cell, t, extent) in enumerate(((cell_h, tile[0], height), (cell_w, tile[1], width))):
        room = cell - t
        lo = int((room - jitter * room) // 2)
        span = int(jitter * room)
        offset = lo + torch.randint(span + 1, (batch, n), generator=generator)
        index = cells // grid if axis == 0 else cells % grid
        margin = (extent - grid * cell) // 2
        corners.append(margin + index[None, :] * cell + offset)
    return corners[0], corners[1], tile


def channel_shifts(
    top: torch.Tensor,
    left: torch.Tensor,
    channels: int,
    max_shift: int,
    frame_size: tuple[int, int],
    tile: tuple[int, int],
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Give every colour channel of every tile its own small offset (Noroozi & Favaro's ``±2`` px channel jitter),
    so chromatic aberration cannot tell where a tile was in the frame.

    Args:
        top, left: ``(B, K)`` tile corners.
        channels: ``C``.
        max_shift: largest shift per axis in pixels (``0`` returns the corners expanded).
        frame_size: ``(H, W)``; shifted corners are clamped so tiles stay inside.
        tile: ``(h, w)`` tile size.
        generator: a CPU ``torch.Generator``.

    Returns:
        ``(top, left)`` as ``(B, K, C)`` int64.

    Example:
        >>> t, l = channel_shifts(torch.tensor([[4]]), torch.tensor([[4]]), 3, 2, (16, 16), (8, 8),
        ...                       generator=torch.Generator().manual_seed(0))
        >>> t.shape, bool(((t - 4).abs() <= 2).all())
        (torch.Size([1, 1, 3]), True)
    """
    B, K = top.shape
    top3 = top[:, :, None].expand(B, K, channels)
    left3 = left[:, :, None].expand(B, K, channels)
    if max_shift <= 0:
        return top3.clone(), left3.clone()
    dy = torch.randint(-max_shift, max_shift + 1, (B, K, channels), generator=generator)
    dx = torch.randint(-max_shift, max_shift + 1, (B, K, channels), generator=generator)
    top3 = (top3 + dy).clamp(0, frame_size[0] - tile[0])
    left3 = (left3 + dx).clamp(0, frame_size[1] - tile[1])
    return top3, left3


@dataclass
class GridPatches:
    """Output of :func:`cut_grid_patches`; everything but ``clips`` is on the CPU.

    Attributes:
        clips: ``(B, C, L, H, W)`` the windows, square-cropped (unless ``crop="none"``), on the video's device.
        start: ``(B,)`` first frame of each window.
        corner: ``(B, 2)`` ``(top, left)`` of the square crop in the frame.
        top, left: ``(B, G*G, C)`` every cell's patch corner per channel, in ``clips``' pixels, cells row-major.
        size: ``(h, w)`` of every patch.
    """

    clips: torch.Tensor
    start: torch.Tensor
    corner: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    size: tuple[int, int]


def cut_grid_patches(
    video: torch.Tensor,
    clip_len: int,
    crop: str,
    grid: int,
    patch_frac: float,
    jitter: float,
    channel_jitter: int,
    *,
    generator: torch.Generator | None = None,
    owner: str = "cut_grid_patches",
) -> GridPatches:
    """Lay a ``grid x grid`` layout of jittered patches over a window of each video (the shared first steps of the
    jigsaw and the relative-position tasks).

    In this order (so the draws are reproducible): :func:`sample_window`, :func:`square_crop`,
    :func:`grid_tile_boxes`, :func:`channel_shifts`. The patches themselves are not cut: pick cells and pass their
    corners to :func:`crop_regions`.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= clip_len``.
        clip_len: frames per window ``L``.
        crop: ``"random"``, ``"center"`` or ``"none"`` square crop before the grid.
        grid: cells per side ``G``.
        patch_frac, jitter: patch side over cell side and jitter range, see :func:`grid_tile_boxes`.
        channel_jitter: per-channel extra shift in pixels, see :func:`channel_shifts`.
        generator: a CPU ``torch.Generator``.
        owner: how error messages name the caller.

    Returns:
        A :class:`GridPatches`.

    Example:
        >>> gp = cut_grid_patches(torch.rand(2, 3, 1, 30, 36), 1, "center", 3, 0.8, 1.0, 0,
        ...                       generator=torch.Generator().manual_seed(0))
        >>> tuple(gp.clips.shape), tuple(gp.top.shape), gp.size
        ((2, 3, 1, 30, 30), (2, 9, 3), (8, 8))
    """
    sizes = check_shape(video, "B C T H W", name=f"{owner} video")
    check_choice(owner, "crop", crop, CROP_MODES)
    check_channel_jitter(owner, channel_jitter)
    B, C = sizes["B"], sizes["C"]
    clips, start = sample_window(video, clip_len, generator=generator, owner=owner)
    clips, corner = square_crop(clips, crop, generator=generator, owner=owner)
    H, W = clips.shape[-2:]
    top, left, size = grid_tile_boxes(B, H, W, grid, patch_frac, jitter, generator=generator, owner=owner)
    top3, left3 = channel_shifts(top, left, C, channel_jitter, (H, W), size, generator=generator)
    return GridPatches(clips=clips, start=start, corner=corner, top=top3, left=left3, size=size)


# ---------------------------------------------------------------------------------------------- colour


def recolor_patches(
    patches: torch.Tensor,
    gray_p: float = 0.0,
    channel_drop_p: float = 0.0,
    noise_std: float = 0.01,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch, with probability ``gray_p`` turn it grey, else with probability ``channel_drop_p`` keep one random
    colour channel and replace the others (defences against colour shortcuts and chromatic aberration).

    Greyscale is the BT.601 luma replicated to every channel (Noroozi & Favaro train on grey images 30% of the
    time). Channel dropping follows Doersch et al.: the dropped channels become mid-grey ``0.5`` plus Gaussian noise
    with ``noise_std`` times the kept channel's standard deviation over the patch. The same choice applies to every
    frame of a patch.

    Args:
        patches: ``(N, C, L, h, w)``, ``C == 3`` when either probability is positive.
        gray_p, channel_drop_p: probabilities, ``gray_p + channel_drop_p <= 1``.
        noise_std: noise scale of dropped channels relative to the kept one.
        generator: a CPU ``torch.Generator``.

    Returns:
        ``(patches, mode)``: recoloured ``(N, C, L, h, w)`` and ``(N,)`` int64 (CPU): ``0`` untouched, ``1`` grey,
        ``2 + c`` only channel ``c`` kept.

    Example:
        >>> x = torch.rand(4, 3, 1, 5, 5)
        >>> y, mode = recolor_patches(x, gray_p=1.0, generator=torch.Generator().manual_seed(0))
        >>> mode.tolist(), bool(torch.allclose(y[:, 0], y[:, 2]))
        ([1, 1, 1, 1], True)
    """
    sizes = check_shape(patches, "N C L h w", name="recolor_patches patches")
    check_fraction("recolor_patches", "gray_p", gray_p)
    check_fraction("recolor_patches", "channel_drop_p", channel_drop_p)
    if gray_p + channel_drop_p > 1.0 + 1e-9:
        raise ValueError(f"recolor_patches: gray_p + channel_drop_p must be <= 1, got {gray_p} + {channel_drop_p}")
    N, C = sizes["N"], sizes["C"]
    mode = torch.zeros(N, dtype=torch.long)
    if gray_p == 0.0 and channel_drop_p == 0.0:
        return patches, mode
    if C != 3:
        raise ValueError(f"recolor_patches: greyscale and channel dropping need C=3 channels, got C={C}")
    u = torch.rand(N, generator=generator)
    keep = torch.randint(C, (N,), generator=generator)
    gray = u < gray_p
    drop = (u >= gray_p) & (u < gray_p + channel_drop_p)
    mode = torch.where(gray, 1, torch.where(drop, 2 + keep, 0))
    out = patches.clone()
    device = patches.device
    if bool(gray.any()):
        weights = torch.tensor(_LUMA, device=device, dtype=patches.dtype).view(1, 3, 1, 1, 1)
        luma = (patches * weights).sum(dim=1, keepdim=True)
        out = torch.where(gray.to(device).view(N, 1, 1, 1, 1), luma.expand_as(patches), out)
    if bool(drop.any()):
        noise = torch.randn(patches.shape, generator=device_generator(generator, device), device=device,
                            dtype=patches.dtype)
        kept = patches.gather(1, keep.to(device).view(N, 1, 1, 1, 1).expand(N, 1, *patches.shape[2:]))
        filler = 0.5 + noise * noise_std * kept.std(dim=(2, 3, 4), keepdim=True, unbiased=False)
        is_kept = torch.arange(C, device=device)[None, :] == keep.to(device)[:, None]  # (N, C)
        dropped = torch.where(is_kept.view(N, C, 1, 1, 1), patches, filler)
        out = torch.where(drop.to(device).view(N, 1, 1, 1, 1), dropped, out)
    return out, mode


def recolor_patch_sets(
    patches: torch.Tensor, gray_p: float = 0.0, channel_drop_p: float = 0.0, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`recolor_patches` over sets of patches: every patch of every set draws its own colour handling.

    Args:
        patches: ``(B, K, C, L, h, w)``.
        gray_p, channel_drop_p: see :func:`recolor_patches`.
        generator: a CPU ``torch.Generator``.

    Returns:
        ``(patches, mode)``: ``(B, K, C, L, h, w)`` and ``(B, K)`` int64 (CPU), modes as :func:`recolor_patches`.

    Example:
        >>> y, mode = recolor_patch_sets(torch.rand(2, 4, 3, 1, 5, 5), gray_p=1.0)
        >>> tuple(y.shape), mode.tolist()
        ((2, 4, 3, 1, 5, 5), [[1, 1, 1, 1], [1, 1, 1, 1]])
    """
    B, K = patches.shape[:2]
    flat, mode = recolor_patches(
        rearrange(patches, "B K C L h w -> (B K) C L h w"), gray_p, channel_drop_p, generator=generator
    )
    return rearrange(flat, "(B K) C L h w -> B K C L h w", K=K), mode.view(B, K)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Standardise every patch per channel (zero mean, unit std over its frames and pixels), as Noroozi & Favaro
    normalise tiles independently so that low-level statistics cannot match them.

    Args:
        patches: ``(N, C, L, h, w)``.

    Example:
        >>> y = normalize_patches(torch.rand(2, 3, 1, 4, 4))
        >>> bool(y.mean(dim=(2, 3, 4)).abs().max() < 1e-5)
        True
    """
    check_shape(patches, "N C L h w", name="normalize_patches patches")
    mean = patches.mean(dim=(2, 3, 4), keepdim=True)
    std = patches.std(dim=(2, 3, 4), keepdim=True, unbiased=False)
    return (patches - mean) / (std + eps)


def resize_patches(patches: torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize every frame of every patch to ``size x size`` (bilinear, antialiased when shrinking), e.g. so tiles
    suit an encoder's patch size or stride; ``None`` returns the patches as they are.

    Args:
        patches: ``(N, C, L, h, w)``.
        size: output side in pixels, or None.

    Example:
        >>> resize_patches(torch.rand(2, 3, 1, 6, 6), 16).shape
        torch.Size([2, 3, 1, 16, 16])
    """
    sizes = check_shape(patches, "N C L h w", name="resize_patches patches")
    if size is None or (sizes["h"] == size and sizes["w"] == size):
        return patches
    frames = rearrange(patches, "N C L h w -> (N L) C h w")
    shrink = size < sizes["h"] or size < sizes["w"]
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return rearrange(frames, "(N L) C h w -> N C L h w", L=sizes["L"])


@dataclass(frozen=True)
class PatchAppearance:
    """How the patches of a patch task look: the per-patch appearance options shared by the jigsaw and the
    relative-position tasks, validated once by :meth:`checked`.

    Attributes:
        channel_jitter: per-channel extra shift in pixels (:func:`channel_shifts`).
        gray_p, channel_drop_p: per-patch colour handling (:func:`recolor_patches`), ``gray_p + channel_drop_p <= 1``.
        normalize: standardise each patch per channel before encoding (:func:`normalize_patches`).
        resize_to: resize every patch to this square size before encoding (:func:`resize_patches`), or None.

    Example:
        >>> PatchAppearance.checked("MyTask", gray_p=0.3).gray_p
        0.3
        >>> PatchAppearance.checked("MyTask", gray_p=0.6, channel_drop_p=0.6)
        Traceback (most recent call last):
        ...
        ValueError: MyTask: gray_p + channel_drop_p must be <= 1, got 0.6 + 0.6
    """

    channel_jitter: int = 0
    gray_p: float = 0.0
    channel_drop_p: float = 0.0
    normalize: bool = False
    resize_to: int | None = None

    @classmethod
    def checked(
        cls,
        owner: str,
        channel_jitter: int = 0,
        gray_p: float = 0.0,
        channel_drop_p: float = 0.0,
        normalize: bool = False,
        resize_to: int | None = None,
    ) -> PatchAppearance:
        """Validate the options (errors name ``owner``) and convert them to their types."""
        jitter_px = check_channel_jitter(owner, channel_jitter)
        gray = check_fraction(owner, "gray_p", gray_p)
        drop = check_fraction(owner, "channel_drop_p", channel_drop_p)
        if gray + drop > 1.0:
            raise ValueError(f"{owner}: gray_p + channel_drop_p must be <= 1, got {gray_p} + {channel_drop_p}")
        if resize_to is not None and resize_to < 1:
            raise ValueError(f"{owner}: resize_to must be a positive size in pixels or None, got {resize_to}")
        return cls(jitter_px, gray, drop, bool(normalize), None if resize_to is None else int(resize_to))

    def encode(
        self, encoder: Encoder, patches: torch.Tensor, head: nn.Module, pool_grid: tuple[int, int] = (1, 1)
    ) -> torch.Tensor:
        """Encode every patch of every set independently (resized, then standardised, as the options say), map each
        pooled feature by the shared per-patch ``head`` and concatenate each set's features in order.

        Args:
            encoder: the shared encoder.
            patches: ``(B, K, C, L, h, w)``.
            head: per-patch layer, ``(N, D * h * w) -> (N, F)``.
            pool_grid: ``(h, w)`` cells kept from each patch's dense map.

        Returns:
            ``(B, K * F)``.
        """
        K = patches.shape[1]
        flat = resize_patches(rearrange(patches, "B K C L h w -> (B K) C L h w"), self.resize_to)
        if self.normalize:
            flat = normalize_patches(flat)
        feats = head(encode_pooled(encoder, flat, pool_grid))
        return rearrange(feats, "(B K) F -> B (K F)", K=K)


# ---------------------------------------------------------------------------------------------- encoding


def fit_min_frames(clips: torch.Tensor, min_frames: int) -> torch.Tensor:
    """Repeat frames (nearest resampling in time) so a clip has at least ``min_frames`` frames.

    Args:
        clips: ``(N, C, L, H, W)``.
        min_frames: the encoder's ``spec.min_frames``.

    Returns:
        ``clips`` itself when ``L >= min_frames``, else ``(N, C, min_frames, H, W)``.

    Example:
        >>> fit_min_frames(torch.arange(2.0).view(1, 1, 2, 1, 1), 4).flatten().tolist()
        [0.0, 0.0, 1.0, 1.0]
    """
    L = clips.shape[2]
    if L >= min_frames:
        return clips
    index = (torch.arange(min_frames, device=clips.device) * L) // min_frames
    return clips.index_select(2, index)


def encode_pooled(encoder: Encoder, clips: torch.Tensor, pool_grid: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Encode a batch of clips (or single frames, ``L = 1``) and pool each to one feature.

    Args:
        encoder: any :class:`~stssl.encoders.base.Encoder`.
        clips: ``(N, C, L, H, W)``; frames are repeated up to ``encoder.spec.min_frames``.
        pool_grid: ``(h, w)`` cells kept (see :func:`~stssl.tasks.common.pool_cells`).

    Returns:
        ``(N, D * h * w)``.
    """
    return pool_cells(encoder(fit_min_frames(clips, encoder.spec.min_frames)).dense, pool_grid)


# ---------------------------------------------------------------------------------------------- dense decoder


def decoder_widths(decoder_channels: Sequence[int] | None) -> tuple[int, ...] | None:
    """A ``decoder_channels`` option as a tuple of ints (None stays None: :class:`~stssl.heads.dense.PyramidDecoder`'s default).

    Example:
        >>> decoder_widths([8.0, 16]), decoder_widths(None)
        ((8, 16), None)
    """
    return None if decoder_channels is None else tuple(int(c) for c in decoder_channels)
