from __future__ import annotations

import pytest
import torch

from stssl.data.sampling import (
    clip_pattern,
    num_valid_anchors,
    offset_pattern,
    offset_tuple,
    random_clip,
    sliding_windows,
    uniform_clips,
)


def naive_valid_starts(num_frames: int, pattern: list[int]) -> list[int]:
    """Every anchor placing the whole pattern inside [0, num_frames), by brute force."""
    return [a for a in range(-100, num_frames + 100) if all(0 <= a + p < num_frames for p in pattern)]


@pytest.mark.parametrize(("num_frames", "clip_len", "stride"), [(20, 4, 1), (20, 4, 3), (10, 10, 1), (7, 1, 5)])
def test_random_clip_covers_exactly_the_valid_starts(num_frames: int, clip_len: int, stride: int) -> None:
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(400):
        clip = random_clip(num_frames, clip_len, stride, generator=g)
        assert clip.dtype == torch.int64 and clip.shape == (clip_len,)
        assert torch.equal(clip - clip[0], torch.arange(clip_len) * stride)
        starts.add(int(clip[0]))
    expected = naive_valid_starts(num_frames, clip_pattern(clip_len, stride))
    assert sorted(starts) == expected
    assert num_valid_anchors(num_frames, clip_pattern(clip_len, stride)) == len(expected)


def test_random_clip_is_reproducible_from_the_generator() -> None:
    a = [random_clip(100, 8, 2, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    b = [random_clip(100, 8, 2, generator=torch.Generator().manual_seed(s)) for s in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert len({int(x[0]) for x in a}) > 1  # different seeds move the clip


def test_too_short_errors_name_the_parameters() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"clip_len=4 with stride=2 spans 7 frames but num_frames=6"):
        random_clip(6, 4, 2, generator=g)
    with pytest.raises(ValueError, match="num_frames=3"):
        uniform_clips(3, 4, 2)
    with pytest.raises(ValueError, match="num_frames=0"):
        sliding_windows(0, 1)
    with pytest.raises(ValueError, match=r"offsets=\(-1, 0, 1\) with stride=2 spans 5 frames but num_frames=4"):
        offset_tuple(4, (-1, 0, 1), 2, generator=g)


@pytest.mark.parametrize("bad", [{"clip_len": 0}, {"clip_len": 2, "stride": 0}, {"clip_len": 2.0}])
def test_invalid_arguments(bad: dict) -> None:
    with pytest.raises(ValueError, match="clip_len|stride"):
        random_clip(10, **bad, generator=torch.Generator())
    with pytest.raises(ValueError, match="offsets"):
        offset_pattern([], 1)
    with pytest.raises(ValueError, match="num_clips"):
        uniform_clips(10, 2, 0)
    with pytest.raises(ValueError, match="step"):
        sliding_windows(10, 2, step=0)


@pytest.mark.parametrize(("num_frames", "clip_len", "num_clips", "stride"), [(20, 4, 3, 1), (30, 5, 4, 2), (9, 3, 1, 3)])
def test_uniform_clips_match_segment_centres(num_frames: int, clip_len: int, num_clips: int, stride: int) -> None:
    clips = uniform_clips(num_frames, clip_len, num_clips, stride)
    assert clips.shape == (num_clips, clip_len)
    max_start = num_frames - 1 - (clip_len - 1) * stride
    for i, clip in enumerate(clips):
        # Reference: start at the centre of the i-th of num_clips equal segments of [0, max_start].
        assert int(clip[0]) == int((max_start * (i + 0.5)) // num_clips)
        assert torch.equal(clip - clip[0], torch.arange(clip_len) * stride)
        assert 0 <= int(clip.min()) and int(clip.max()) < num_frames
    assert torch.equal(uniform_clips(num_frames, clip_len, num_clips, stride), clips)  # deterministic


def test_uniform_single_clip_is_centred() -> None:
    clip = uniform_clips(21, 5, 1)[0]
    assert clip.tolist() == [8, 9, 10, 11, 12]  # 8 frames before, 8 after


@pytest.mark.parametrize(("num_frames", "clip_len", "stride", "step"), [(20, 4, 1, None), (20, 4, 2, 3), (11, 3, 1, 1)])
def test_sliding_windows_match_a_naive_loop(num_frames: int, clip_len: int, stride: int, step: int | None) -> None:
    span = (clip_len - 1) * stride + 1
    step_ = span if step is None else step
    expected = []
    start = 0
    while start + span <= num_frames:
        expected.append([start + i * stride for i in range(clip_len)])
        start += step_
    assert sliding_windows(num_frames, clip_len, stride, step).tolist() == expected


def test_offset_tuple_follows_offsets_and_covers_valid_centres() -> None:
    g = torch.Generator().manual_seed(1)
    centres = set()
    for _ in range(300):
        idx = offset_tuple(12, (-1, 0, 1), stride=2, generator=g)
        assert (idx - idx[1]).tolist() == [-2, 0, 2]
        centres.add(int(idx[1]))
    assert sorted(centres) == list(range(2, 10))  # c - 2 >= 0 and c + 2 <= 11


def test_offset_tuple_keeps_the_order_of_unsorted_offsets() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = offset_tuple(10, (0, -3, 2), generator=g)
        assert (idx - idx[0]).tolist() == [0, -3, 2]
        assert int(idx.min()) >= 0 and int(idx.max()) <= 9
