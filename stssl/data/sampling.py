"""Pure, seeded frame-index samplers.

Every sampler places a *pattern* of relative frame offsets inside a video of ``num_frames`` frames and returns
the absolute frame indices as an int64 tensor. A plain clip of ``clip_len`` frames with frame ``stride`` ``s`` is
the pattern ``[0, s, 2s, ...]``; an offset tuple ``(-1, 0, 1)`` with stride ``s`` is ``[-s, 0, s]`` around a centre.
Randomness comes only from the ``torch.Generator`` passed in, so the same generator state gives the same indices.

Indices come back in the order of the pattern (sorted for plain clips), which is the order readers return frames.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> clip = random_clip(20, 4, stride=2, generator=g)
    >>> clip.shape, bool((clip.diff() == 2).all())
    (torch.Size([4]), True)
    >>> uniform_clips(10, 4, 2).tolist()
    [[1, 2, 3, 4], [4, 5, 6, 7]]
    >>> sliding_windows(10, 4).tolist()
    [[0, 1, 2, 3], [4, 5, 6, 7]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "clip_pattern",
    "offset_pattern",
    "num_valid_anchors",
    "place_pattern",
    "random_clip",
    "uniform_clips",
    "sliding_windows",
    "offset_tuple",
    "random_anchor",
    "uniform_anchors",
    "sliding_anchors",
]


def clip_pattern(clip_len: int, stride: int = 1) -> list[int]:
    """Relative offsets ``[0, stride, ..., (clip_len - 1) * stride]`` of a plain clip.

    Raises:
        ValueError: if ``clip_len`` or ``stride`` is not a positive integer.

    Example:
        >>> clip_pattern(3, 2)
        [0, 2, 4]
    """
    if not isinstance(clip_len, int) or clip_len < 1:
        raise ValueError(f"clip_len must be a positive int, got {clip_len!r}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    return [i * stride for i in range(clip_len)]


def offset_pattern(offsets: Sequence[int], stride: int = 1) -> list[int]:
    """Relative offsets ``[o * stride for o in offsets]`` of an offset tuple (e.g. ``(-1, 0, 1)``).

    Raises:
        ValueError: if ``offsets`` is empty or not integers, or ``stride`` is not a positive integer.

    Example:
        >>> offset_pattern((-1, 0, 1), 3)
        [-3, 0, 3]
    """
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    offsets = list(offsets)
    if not offsets or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets):
        raise ValueError(f"offsets must be a non-empty sequence of ints, got {offsets!r}")
    return [o * stride for o in offsets]


def _anchor_range(num_frames: int, pattern: Sequence[int], what: str) -> tuple[int, int]:
    """The inclusive range ``[lo, hi]`` of anchors ``a`` with every ``a + p`` inside ``[0, num_frames)``."""
    if not isinstance(num_frames, int) or num_frames < 0:
        raise ValueError(f"num_frames must be a non-negative int, got {num_frames!r}")
    lo, hi = -min(pattern), num_frames - 1 - max(pattern)
    if hi < lo:
        span = max(pattern) - min(pattern) + 1
        raise ValueError(f"video too short: {what} spans {span} frames but num_frames={num_frames}")
    return lo, hi


def num_valid_anchors(num_frames: int, pattern: Sequence[int]) -> int:
    """How many anchors place ``pattern`` fully inside a video of ``num_frames`` frames (0 if none).

    Example:
        >>> num_valid_anchors(10, clip_pattern(4, 2)), num_valid_anchors(5, clip_pattern(4, 2))
        (4, 0)
    """
    return max(0, num_frames - (max(pattern) - min(pattern)))


def place_pattern(anchors: Sequence[int] | torch.Tensor, pattern: Sequence[int]) -> torch.Tensor:
    """Absolute indices ``anchors[:, None] + pattern[None, :]``.

    Args:
        anchors: ``(N,)`` anchor frames.
        pattern: ``(T,)`` relative offsets.

    Returns:
        int64 ``(N, T)``.
    """
    a = torch.as_tensor(anchors, dtype=torch.int64).reshape(-1, 1)
    return a + torch.as_tensor(list(pattern), dtype=torch.int64).reshape(1, -1)


def random_anchor(num_frames: int, pattern: Sequence[int], *, generator: torch.Generator, what: str = "pattern") -> int:
    """A uniformly random valid anchor for ``pattern`` (see :func:`random_clip`)."""
    lo, hi = _anchor_range(num_frames, pattern, what)
    return lo + int(torch.randint(hi - lo + 1, (1,), generator=generator).item())


def uniform_anchors(num_frames: int, pattern: Sequence[int], num_clips: int, what: str = "pattern") -> list[int]:
    """``num_clips`` anchors at the centres of equal segments of the valid range (one clip: the middle)."""
    if not isinstance(num_clips, int) or num_clips < 1:
        raise ValueError(f"num_clips must be a positive int, got {num_clips!r}")
    lo, hi = _anchor_range(num_frames, pattern, what)
    n = hi - lo
    return [lo + (n * (2 * i + 1)) // (2 * num_clips) for i in range(num_clips)]


def sliding_anchors(num_frames: int, pattern: Sequence[int], step: int, what: str = "pattern") -> list[int]:
    """Anchors ``lo, lo + step, ...`` up to the last valid one (windows never run past the end)."""
    if not isinstance(step, int) or step < 1:
        raise ValueError(f"step must be a positive int, got {step!r}")
    lo, hi = _anchor_range(num_frames, pattern, what)
    return list(range(lo, hi + 1, step))


def _clip_what(clip_len: int, stride: int) -> str:
    return f"clip_len={clip_len} with stride={stride}"


def random_clip(num_frames: int, clip_len: int, stride: int = 1, *, generator: torch.Generator) -> torch.Tensor:
    """A clip of ``clip_len`` frames, ``stride`` apart, starting at a uniformly random valid frame.

    Args:
        num_frames: frames in the video.
        clip_len: ``T``, frames in the clip.
        stride: gap between consecutive sampled frames.
        generator: the only source of randomness.

    Returns:
        int64 ``(T,)`` increasing frame indices.

    Raises:
        ValueError: naming ``clip_len``, ``stride`` and ``num_frames`` when the video is too short.

    Example:
        >>> random_clip(3, 4, generator=torch.Generator())
        Traceback (most recent call last):
          ...
        ValueError: video too short: clip_len=4 with stride=1 spans 4 frames but num_frames=3
    """
    pattern = clip_pattern(clip_len, stride)
    start = random_anchor(num_frames, pattern, generator=generator, what=_clip_what(clip_len, stride))
    return place_pattern([start], pattern)[0]


def uniform_clips(num_frames: int, clip_len: int, num_clips: int, stride: int = 1) -> torch.Tensor:
    """``num_clips`` clips whose starts sit at the centres of equal segments of the valid start range.

    Deterministic (for evaluation). One clip is the centre clip.

    Returns:
        int64 ``(num_clips, T)``.

    Example:
        >>> uniform_clips(20, 4, 1, stride=2).tolist()
        [[6, 8, 10, 12]]
    """
    pattern = clip_pattern(clip_len, stride)
    anchors = uniform_anchors(num_frames, pattern, num_clips, what=_clip_what(clip_len, stride))
    return place_pattern(anchors, pattern)


def sliding_windows(num_frames: int, clip_len: int, stride: int = 1, step: int | None = None) -> torch.Tensor:
    """All windows of ``clip_len`` frames (``stride`` apart) whose starts are ``step`` apart.

    Args:
        step: frames between window starts; default the window's span (non-overlapping windows).

    Returns:
        int64 ``(N, T)``; windows never run past the last frame (a short tail is dropped).

    Example:
        >>> sliding_windows(7, 3, step=2).tolist()
        [[0, 1, 2], [2, 3, 4], [4, 5, 6]]
    """
    pattern = clip_pattern(clip_len, stride)
    step = pattern[-1] + 1 if step is None else step
    anchors = sliding_anchors(num_frames, pattern, step, what=_clip_what(clip_len, stride))
    return place_pattern(anchors, pattern)


def offset_tuple(
    num_frames: int, offsets: Sequence[int], stride: int = 1, *, generator: torch.Generator
) -> torch.Tensor:
    """Frames ``[c + o * stride for o in offsets]`` around a uniformly random valid centre ``c``.

    Args:
        offsets: e.g. ``(-1, 0, 1)`` for a target frame and its two neighbours (monodepth2's ``frame_ids``).
        stride: frame gap per unit offset.

    Returns:
        int64 ``(len(offsets),)`` in the order of ``offsets``.

    Example:
        >>> idx = offset_tuple(10, (-1, 0, 1), stride=3, generator=torch.Generator().manual_seed(0))
        >>> (idx - idx[1]).tolist()
        [-3, 0, 3]
    """
    pattern = offset_pattern(offsets, stride)
    what = f"offsets={tuple(offsets)} with stride={stride}"
    centre = random_anchor(num_frames, pattern, generator=generator, what=what)
    return place_pattern([centre], pattern)[0]
