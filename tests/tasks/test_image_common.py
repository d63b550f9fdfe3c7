"""The shared pieces of the classic image pretexts: crops, tile grids, colour handling, the dense decoder."""

from __future__ import annotations

import pytest
import torch

from stssl.encoders.frame2d import resnet18_2d_tiny
from stssl.encoders.resnet3d import r3d_tiny
from stssl.heads.dense import PyramidDecoder
from stssl.tasks.image_common import (
    PatchAppearance,
    begin_forward,
    channel_shifts,
    crop_regions,
    cut_grid_patches,
    decoder_widths,
    encode_pooled,
    fit_min_frames,
    grid_tile_boxes,
    normalize_patches,
    recolor_patch_sets,
    recolor_patches,
    resize_patches,
    sample_window,
    square_crop,
)


def test_crop_regions_matches_slicing_per_region_and_channel() -> None:
    clips = torch.rand(2, 3, 2, 12, 14, generator=torch.Generator().manual_seed(0))
    top = torch.tensor([[[0, 1, 2], [5, 5, 5]], [[3, 0, 7], [1, 2, 3]]])
    left = torch.tensor([[[9, 0, 4], [2, 2, 2]], [[0, 1, 2], [8, 9, 6]]])
    out = crop_regions(clips, top, left, (5, 5))
    assert out.shape == (2, 2, 3, 2, 5, 5)
    for b in range(2):
        for k in range(2):
            for c in range(3):
                t, lf = int(top[b, k, c]), int(left[b, k, c])
                assert torch.equal(out[b, k, c], clips[b, c, :, t : t + 5, lf : lf + 5])
    shared = crop_regions(clips, top[:, :, 0], left[:, :, 0], (5, 5))
    assert torch.equal(shared[:, :, 0], out[:, :, 0])
    with pytest.raises(ValueError, match="leaves the 12x14 frame"):
        crop_regions(clips, torch.tensor([[8], [0]]), torch.tensor([[0], [0]]), (5, 5))


def test_sample_window_and_square_crop() -> None:
    video = torch.rand(3, 3, 7, 10, 16, generator=torch.Generator().manual_seed(1))
    clips, start = sample_window(video, 4, generator=torch.Generator().manual_seed(0))
    for b in range(3):
        s = int(start[b])
        assert torch.equal(clips[b], video[b, :, s : s + 4])
    with pytest.raises(ValueError, match="MyTask: video has T=7 frames, needs clip_len = 8"):
        sample_window(video, 8, owner="MyTask")
    centre, corner = square_crop(clips, "center")
    assert centre.shape == (3, 3, 4, 10, 10) and corner.tolist() == [[0, 3]] * 3
    assert torch.equal(centre, clips[..., 3:13])
    rand, corner = square_crop(clips, "random", generator=torch.Generator().manual_seed(2))
    for b in range(3):
        left = int(corner[b, 1])
        assert torch.equal(rand[b], clips[b, ..., left : left + 10])
    assert square_crop(clips, "none")[0] is clips
    with pytest.raises(ValueError, match="unknown crop 'corner'"):
        square_crop(clips, "corner")


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_grid_tiles_stay_in_their_cells_with_gaps(jitter: float) -> None:
    top, left, (h, w) = grid_tile_boxes(64, 34, 31, 3, 0.7, jitter, generator=torch.Generator().manual_seed(0))
    cell_h, cell_w = 34 // 3, 31 // 3
    margin_h, margin_w = (34 - 3 * cell_h) // 2, (31 - 3 * cell_w) // 2
    assert (h, w) == (round(0.7 * cell_h), round(0.7 * cell_w))
    rows, cols = torch.arange(9) // 3, torch.arange(9) % 3
    off_y = top - margin_h - rows * cell_h
    off_x = left - margin_w - cols * cell_w
    assert (off_y >= 0).all() and (off_y <= cell_h - h).all() and (off_x >= 0).all() and (off_x <= cell_w - w).all()
    gap = left[:, 1] - (left[:, 0] + w)  # between horizontally adjacent tiles
    assert (gap >= 0).all()
    if jitter == 0.0:  # centred tiles: a constant gap of cell - tile
        assert (gap == cell_w - w).all()
    else:
        assert len(set(off_x.flatten().tolist())) > 1  # tiles do move inside their cells


def test_channel_shifts_are_bounded_and_inside() -> None:
    top = torch.tensor([[0, 10]])
    t3, l3 = channel_shifts(top, top, 3, 2, (16, 16), (6, 6), generator=torch.Generator().manual_seed(0))
    assert t3.shape == (1, 2, 3)
    assert ((t3 - top[..., None]).abs() <= 2).all() and (t3 >= 0).all() and (t3 <= 10).all()
    t0, _ = channel_shifts(top, top, 3, 0, (16, 16), (6, 6))
    assert torch.equal(t0, top[..., None].expand(1, 2, 3))


def test_recolor_grey_and_channel_drop() -> None:
    x = torch.rand(6, 3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    grey, mode = recolor_patches(x, gray_p=1.0, generator=torch.Generator().manual_seed(0))
    assert (mode == 1).all()
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(grey[:, c], luma)
    dropped, mode = recolor_patches(x, channel_drop_p=1.0, generator=torch.Generator().manual_seed(0))
    assert ((mode >= 2) & (mode <= 4)).all()
    for n in range(6):
        keep = int(mode[n]) - 2
        assert torch.equal(dropped[n, keep], x[n, keep])
        for c in set(range(3)) - {keep}:
            assert (dropped[n, c] - 0.5).abs().max() < 0.05  # mid-grey + tiny noise: no colour left
    same, mode = recolor_patches(x)
    assert same is x and (mode == 0).all()
    mixed, mode = recolor_patches(x, 0.5, 0.5, generator=torch.Generator().manual_seed(3))
    again, mode2 = recolor_patches(x, 0.5, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mixed, again) and torch.equal(mode, mode2)
    with pytest.raises(ValueError, match="need C=3 channels, got C=1"):
        recolor_patches(torch.rand(2, 1, 1, 4, 4), gray_p=0.5)
    with pytest.raises(ValueError, match="gray_p \\+ channel_drop_p must be <= 1"):
        recolor_patches(x, 0.7, 0.7)


def test_normalize_and_fit_min_frames() -> None:
    y = normalize_patches(torch.rand(3, 3, 2, 4, 4) * 5 + 2)
    torch.testing.assert_close(y.std(dim=(2, 3, 4), unbiased=False), torch.ones(3, 3), atol=1e-3, rtol=0)
    clip = torch.rand(1, 3, 3, 4, 4)
    assert fit_min_frames(clip, 2) is clip
    assert torch.equal(fit_min_frames(clip, 6), clip.repeat_interleave(2, dim=2))


@pytest.mark.parametrize("make_encoder", [lambda: r3d_tiny(width=4), lambda: resnet18_2d_tiny(width=8)])
def test_pyramid_decoder_restores_the_input_size(make_encoder) -> None:
    enc = make_encoder()
    dec = PyramidDecoder(enc.spec.channels, out_channels=5)
    out = dec(enc(torch.rand(2, 3, 4, 32, 48)).pyramid, (4, 32, 48))
    assert out.shape == (2, 5, 4, 32, 48)
    out.mean().backward()
    assert all(p.grad is not None for p in dec.parameters())
    with pytest.raises(ValueError, match="dec_channels must give"):
        PyramidDecoder((4, 8), 2, dec_channels=(4,))


def test_resize_patches() -> None:
    x = torch.rand(2, 3, 2, 6, 6)
    assert resize_patches(x, None) is x and resize_patches(x, 6) is x
    up = resize_patches(x, 12)
    assert up.shape == (2, 3, 2, 12, 12)
    flat = torch.full((1, 3, 1, 6, 6), 0.3)
    torch.testing.assert_close(resize_patches(flat, 4), torch.full((1, 3, 1, 4, 4), 0.3))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"channel_jitter": -1}, "T: channel_jitter must be >= 0, got -1"),
        ({"gray_p": 1.5}, "T: gray_p must be in [0.0, 1.0], got 1.5"),
        ({"channel_drop_p": -0.1}, "T: channel_drop_p must be in [0.0, 1.0], got -0.1"),
        ({"gray_p": 0.6, "channel_drop_p": 0.6}, "T: gray_p + channel_drop_p must be <= 1, got 0.6 + 0.6"),
        ({"resize_to": 0}, "T: resize_to must be a positive size in pixels or None, got 0"),
    ],
)
def test_patch_appearance_rejects_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        PatchAppearance.checked("T", **options)
    assert str(err.value) == message


def test_patch_appearance_converts_types_and_is_frozen() -> None:
    app = PatchAppearance.checked("T", 2.0, 1, 0, 1, 16.0)  # type: ignore[arg-type]
    assert app == PatchAppearance(2, 1.0, 0.0, True, 16)
    assert type(app.channel_jitter) is int and type(app.gray_p) is float and type(app.resize_to) is int
    with pytest.raises(AttributeError):
        app.gray_p = 0.5  # type: ignore[misc]


def test_patch_appearance_encode_matches_per_patch_encoding() -> None:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    head = torch.nn.Linear(enc.spec.dim, 5)
    patches = torch.rand(2, 3, 3, 1, 10, 10, generator=torch.Generator().manual_seed(1))
    enc.eval()  # batch norm in eval mode: each patch's feature does not depend on the others
    app = PatchAppearance(normalize=True, resize_to=16)
    out = app.encode(enc, patches, head)
    assert out.shape == (2, 3 * 5)
    one = normalize_patches(resize_patches(patches[1, 2:3], 16))
    expected = head(encode_pooled(enc, one))
    torch.testing.assert_close(out[1, 10:15], expected[0], atol=1e-5, rtol=1e-5)


def test_cut_grid_patches_places_cells_row_major_inside_the_crop() -> None:
    video = torch.rand(3, 3, 4, 30, 40, generator=torch.Generator().manual_seed(0))
    gp = cut_grid_patches(video, 2, "random", 3, 0.8, 1.0, 1, generator=torch.Generator().manual_seed(1))
    assert gp.clips.shape == (3, 3, 2, 30, 30) and gp.top.shape == (3, 9, 3) and gp.size == (8, 8)
    cell_row = (gp.top + 4) // 10  # the patch's centre stays in its cell up to the 1 px channel shift
    assert torch.equal(cell_row[:, :, 0], torch.arange(9).div(3, rounding_mode="floor").expand(3, 9))
    for b in range(3):
        s, c = int(gp.start[b]), int(gp.corner[b, 1])
        assert torch.equal(gp.clips[b], video[b, :, s : s + 2, :, c : c + 30])
    again = cut_grid_patches(video, 2, "random", 3, 0.8, 1.0, 1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.top, gp.top) and torch.equal(again.left, gp.left)
    with pytest.raises(ValueError, match="X: channel_jitter must be >= 0"):
        cut_grid_patches(video, 1, "center", 3, 0.8, 1.0, -1, owner="X")


def test_recolor_patch_sets_matches_flat_recolor() -> None:
    patches = torch.rand(2, 4, 3, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    out, mode = recolor_patch_sets(patches, 0.3, 0.5, generator=torch.Generator().manual_seed(1))
    flat, flat_mode = recolor_patches(patches.flatten(0, 1), 0.3, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, flat.view_as(patches)) and torch.equal(mode, flat_mode.view(2, 4))


def test_begin_forward_checks_build_and_frames_and_picks_generator() -> None:
    from stssl.tasks.rotation import RotationTask

    task = RotationTask(hidden=4, clip_len=2)
    batch = {"video": torch.rand(1, 3, 2, 8, 8)}
    with pytest.raises(RuntimeError, match="RotationTask: call build"):
        begin_forward("RotationTask", task, batch, 2, None, task.head)
    with pytest.raises(ValueError, match="Owner: video has T=2 frames, needs clip_len = 3"):
        begin_forward("Owner", task, batch, 3, None)
    g = torch.Generator()
    video, gen = begin_forward("Owner", task, batch, 2, g)
    assert video is batch["video"] and gen is g
    assert isinstance(begin_forward("Owner", task, batch, 2, None)[1], torch.Generator)


def test_decoder_widths() -> None:
    assert decoder_widths((4.0, 8)) == (4, 8) and decoder_widths(None) is None  # type: ignore[arg-type]
