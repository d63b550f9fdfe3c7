from __future__ import annotations

import pytest
import torch

from stssl.encoders.resnet3d import r3d_tiny
from stssl.tasks.views import TemporalViews, encode_views, sample_temporal_views, temporal_views_min_frames


def _frame_numbered(B: int = 3, T: int = 16, H: int = 4, W: int = 4) -> torch.Tensor:
    """``(B, 3, T, H, W)`` whose value at frame t of clip b is ``100 b + t`` (any pixel, any channel)."""
    values = 100 * torch.arange(B).view(B, 1, 1, 1, 1) + torch.arange(T).view(1, 1, T, 1, 1)
    return values.float().expand(B, 3, T, H, W).contiguous()


def test_views_are_the_frames_their_starts_say() -> None:
    video = _frame_numbered()
    out = sample_temporal_views(video, num_views=3, view_len=4, min_gap=2, max_gap=5,
                                generator=torch.Generator().manual_seed(0))
    assert out.views.shape == (3, 3, 3, 4, 4, 4)
    assert out.starts.shape == (3, 3) and out.starts.dtype == torch.long
    for b in range(3):
        for v in range(3):
            s = int(out.starts[b, v])
            expected = video[b, :, s : s + 4]
            assert torch.equal(out.views[b, v], expected), (b, v, s)


@pytest.mark.parametrize(("V", "L", "min_gap", "max_gap", "T"), [
    (2, 4, 0, None, 12), (2, 4, 3, 6, 12), (3, 2, 1, 3, 9), (4, 3, 0, 1, 8), (2, 4, 8, 8, 12), (2, 8, 0, None, 8),
])
def test_gaps_stay_within_bounds_and_views_inside_the_clip(V: int, L: int, min_gap: int, max_gap: int | None,
                                                           T: int) -> None:
    video = torch.zeros(64, 1, T, 1, 1)
    seen: set[int] = set()
    for seed in range(5):
        out = sample_temporal_views(video, V, L, min_gap, max_gap, generator=torch.Generator().manual_seed(seed))
        gaps = out.gaps
        assert gaps.shape == (64, V - 1)
        assert (gaps >= min_gap).all(), gaps.min()
        if max_gap is not None:
            assert (gaps <= max_gap).all(), gaps.max()
        assert (out.starts >= 0).all() and (out.starts + L <= T).all()
        seen |= set(gaps.flatten().tolist())
    # every allowed gap is drawn at some point (the draw is not stuck on one value)
    top = T - L - (V - 2) * min_gap if max_gap is None else min(max_gap, T - L - (V - 2) * min_gap)
    assert seen == set(range(min_gap, top + 1)), (seen, min_gap, top)


def test_first_start_covers_the_clip() -> None:
    out = sample_temporal_views(torch.zeros(256, 1, 12, 1, 1), 2, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    assert set(out.starts[:, 0].tolist()) == set(range(0, 12 - 4 - 2 + 1))


def test_seeded_draw_is_reproducible_and_varies_with_the_seed() -> None:
    video = _frame_numbered(B=4)

    def starts(seed: int) -> torch.Tensor:
        return sample_temporal_views(video, 2, 4, 0, 8, generator=torch.Generator().manual_seed(seed)).starts

    assert torch.equal(starts(3), starts(3))
    assert len({tuple(starts(s).flatten().tolist()) for s in range(6)}) > 1


def test_too_short_clip_and_bad_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"video has T=9 frames, needs .* = 4 \+ 2\*3 = 10"):
        sample_temporal_views(torch.zeros(1, 3, 9, 4, 4), num_views=3, view_len=4, min_gap=3)
    with pytest.raises(ValueError, match="max_gap must be >= min_gap"):
        sample_temporal_views(torch.zeros(1, 3, 9, 4, 4), min_gap=3, max_gap=2)
    with pytest.raises(ValueError, match="view_len must be >= 1"):
        TemporalViews(view_len=0)
    with pytest.raises(ValueError, match="min_gap must be >= 0"):
        TemporalViews(min_gap=-1)
    with pytest.raises(ValueError, match="scale"):
        TemporalViews(size=8, scale=(0.0, 1.0))
    assert temporal_views_min_frames(3, 4, 3) == TemporalViews(3, 4, 3).min_frames == 10


def _still_clips(B: int = 4, T: int = 8, size: int = 32) -> torch.Tensor:
    """Every frame of a clip is the same random image: any difference between frames comes from augmentation."""
    image = torch.rand(B, 3, 1, size, size, generator=torch.Generator().manual_seed(0))
    return image.expand(B, 3, T, size, size).contiguous()


def test_augmentation_is_shared_by_the_frames_of_a_view_and_differs_across_views() -> None:
    tv = TemporalViews(num_views=3, view_len=4, size=16, scale=(0.3, 0.6), color_jitter=0.4, grayscale=0.2)
    out = tv(_still_clips(), generator=torch.Generator().manual_seed(0))
    views = out.views
    assert views.shape == (4, 3, 3, 4, 16, 16)
    # same draw for every frame of a view
    torch.testing.assert_close(views, views[:, :, :, :1].expand_as(views), rtol=0, atol=1e-6)
    # different draws for the views of one clip (same frames, so only the augmentation can differ)
    for b in range(4):
        for i in range(3):
            for j in range(i + 1, 3):
                assert (views[b, i] - views[b, j]).abs().mean() > 1e-3, (b, i, j)


def test_temporal_views_are_seeded_and_leave_the_global_rng_alone() -> None:
    tv = TemporalViews(view_len=4, size=16, color_jitter=0.4)
    video = torch.rand(2, 3, 10, 24, 24, generator=torch.Generator().manual_seed(1))
    state = torch.random.get_rng_state()
    a = tv(video, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), state)
    b = tv(video, generator=torch.Generator().manual_seed(5))
    c = tv(video, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.views, b.views) and torch.equal(a.starts, b.starts)
    assert not torch.equal(a.views, c.views)


def test_without_augmentation_the_module_is_the_pure_cut_and_size_none_keeps_the_size() -> None:
    video = torch.rand(2, 3, 10, 20, 28, generator=torch.Generator().manual_seed(0))
    plain = TemporalViews(2, 4, 1, 3, augment=False)(video, generator=torch.Generator().manual_seed(2))
    ref = sample_temporal_views(video, 2, 4, 1, 3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(plain.views, ref.views) and torch.equal(plain.starts, ref.starts)
    augmented = TemporalViews(2, 4, 1, 3)(video, generator=torch.Generator().manual_seed(2))
    assert augmented.views.shape == (2, 2, 3, 4, 20, 28)
    assert torch.equal(augmented.starts, ref.starts)  # the temporal draw comes first, from the same generator


def test_encode_views_is_one_pooled_vector_per_view() -> None:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4).eval()
    views = torch.rand(2, 3, 3, 2, 16, 16)
    with torch.no_grad():
        out = encode_views(enc, views)
        assert out.shape == (3, 2, 32)
        for v in range(3):
            torch.testing.assert_close(out[v], enc(views[:, v]).pooled)


def test_encode_views_keeps_a_grid_of_cells_and_repeats_frames_for_the_encoder() -> None:
    from stssl.encoders import build_encoder
    from stssl.tasks.common import pool_cells

    torch.manual_seed(0)
    enc = r3d_tiny(width=4).eval()
    views = torch.rand(2, 3, 3, 2, 16, 16)
    with torch.no_grad():
        cells = encode_views(enc, views, pool_grid=(2, 2))
        assert cells.shape == (3, 2, 32 * 4)
        torch.testing.assert_close(cells[1], pool_cells(enc(views[:, 1]).dense, (2, 2)))
        vit = build_encoder("vit_micro").eval()  # min_frames = 2: one-frame views are shown twice
        assert vit.spec.min_frames == 2
        single = views[:, :, :, :1]
        out = encode_views(vit, single)
        torch.testing.assert_close(out[2], vit(single[:, 2].expand(-1, -1, 2, -1, -1)).pooled)



def test_centre_is_the_central_sub_clip_centre_cropped_to_the_view_aspect() -> None:
    video = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1, 1).expand(2, 3, 6, 8, 16).clone()
    video[..., :, :4] = -1.0  # the left and right quarters fall outside the centred square crop
    video[..., :, 12:] = -1.0
    views = TemporalViews(num_views=2, view_len=2, size=4)
    clean = views.centre(video)
    assert clean.shape == (2, 1, 3, 2, 4, 4)
    torch.testing.assert_close(clean[0, 0, 0, :, 0, 0], torch.tensor([2.0, 3.0]))  # frames 2 and 3 of 6
    assert bool((clean >= 0).all())  # nothing from the cropped-off sides
    same = TemporalViews(num_views=1, view_len=6).centre(video)  # size None: the clip as it is
    assert torch.equal(same[:, 0], video)
    with pytest.raises(ValueError, match="video has 6 frames, fewer than view_len=8"):
        TemporalViews(num_views=1, view_len=8).centre(video)
