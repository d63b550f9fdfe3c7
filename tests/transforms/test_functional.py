"""Tests for stssl.transforms.functional: per-clip ops, intrinsics updates, ClipAugment and ClipResize."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

from stssl.transforms.functional import (
    ClipAugment,
    ClipResize,
    adjust_color_clip,
    center_crop_clip,
    crop_clip,
    hflip_clip,
    normalize_clip,
    random_resized_crop_params,
    resize_clip,
)

K0 = torch.tensor([[20.0, 0.0, 15.3], [0.0, 22.0, 11.7], [0.0, 0.0, 1.0]], dtype=torch.float64)


def project(K: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Pixel ``(u, v)`` of a camera-frame 3D point."""
    p = K @ point
    return p[:2] / p[2]


def blob_clip(H: int, W: int, uv: torch.Tensor, T: int = 2, sigma: float = 1.5) -> torch.Tensor:
    """A (3, T, H, W) float clip with a Gaussian mark centred at pixel ``uv`` (pixel centres at integers)."""
    ys = torch.arange(H, dtype=torch.float64)[:, None]
    xs = torch.arange(W, dtype=torch.float64)[None, :]
    img = torch.exp(-((xs - uv[0]) ** 2 + (ys - uv[1]) ** 2) / (2 * sigma**2))
    return img.float().expand(3, T, H, W).clone()


def centroid(frame: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted centre ``(u, v)`` of a (H, W) image."""
    frame = frame.double().clamp_min(0)
    H, W = frame.shape
    ys = torch.arange(H, dtype=torch.float64)[:, None]
    xs = torch.arange(W, dtype=torch.float64)[None, :]
    total = frame.sum()
    return torch.stack([(frame * xs).sum() / total, (frame * ys).sum() / total])


def moving_clip(T: int = 4, H: int = 24, W: int = 32, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """A clip whose RGB pattern moves 3 px right per frame (every frame differs)."""
    g = torch.Generator().manual_seed(7)
    base = torch.rand(3, H, W + 3 * T, generator=g)
    frames = torch.stack([base[:, :, 3 * t : 3 * t + W] for t in range(T)], dim=1)
    return (frames * 255).round().to(torch.uint8) if dtype == torch.uint8 else frames.to(dtype)


# ---------------------------------------------------------------- resize / crop / flip


def test_resize_uint8_stays_uint8_and_matches_float_reference() -> None:
    video = moving_clip()
    out, K = resize_clip(video, (12, 20))
    assert out.dtype == torch.uint8 and out.shape == (3, 4, 12, 20) and K is None
    ref = F.interpolate(video.permute(1, 0, 2, 3).double(), size=(12, 20), mode="bilinear", antialias=True)
    ref = ref.permute(1, 0, 2, 3)
    assert (out.double() - ref).abs().max() <= 1.0


def test_resize_float_frame_by_frame_and_int_size() -> None:
    video = moving_clip(dtype=torch.float32)
    out, _ = resize_clip(video, 12)  # shorter side 24 -> 12, width 32 -> 16
    assert out.shape == (3, 4, 12, 16) and out.dtype == torch.float32
    for t in range(4):
        ref = F.interpolate(video[:, t][None], size=(12, 16), mode="bilinear", antialias=True)[0]
        torch.testing.assert_close(out[:, t], ref)


@pytest.mark.parametrize("size", [(12, 40), (30, 16)])
def test_resize_intrinsics_follow_the_mark(size: tuple[int, int]) -> None:
    point = torch.tensor([0.3, -0.2, 2.0], dtype=torch.float64)
    video = blob_clip(24, 32, project(K0, point), sigma=2.0)
    out, K = resize_clip(video, size, K0)
    assert K is not None and K.dtype == torch.float64
    torch.testing.assert_close(centroid(out[0, 1]), project(K, point), atol=0.1, rtol=0)


def test_crop_is_slicing_and_moves_principal_point() -> None:
    video = moving_clip()
    out, K = crop_clip(video, 3, 5, 10, 12, K0)
    assert torch.equal(out, video[:, :, 3:13, 5:17])
    point = torch.tensor([-0.1, 0.05, 1.5], dtype=torch.float64)
    blob = blob_clip(24, 32, project(K0, point))
    out, K = crop_clip(blob, 4, 6, 16, 20, K0)
    torch.testing.assert_close(centroid(out[0, 0]), project(K, point), atol=0.05, rtol=0)


def test_center_crop_matches_torchvision() -> None:
    video = moving_clip()
    out, K = center_crop_clip(video, (9, 13), K0)
    ref = TF.center_crop(video.permute(1, 0, 2, 3), [9, 13]).permute(1, 0, 2, 3)
    assert torch.equal(out, ref)
    top, left = round((24 - 9) / 2), round((32 - 13) / 2)
    torch.testing.assert_close(K[:2, 2], K0[:2, 2] - torch.tensor([left, top], dtype=torch.float64))


def test_hflip_mirrors_and_intrinsics_see_the_mirrored_world() -> None:
    video = moving_clip()
    out, _ = hflip_clip(video)
    assert torch.equal(out, video.flip(-1)) and out.dtype == torch.uint8
    K = K0.clone()
    K[0, 1] = 0.7  # a skew must change sign too
    point = torch.tensor([0.3, -0.2, 2.0], dtype=torch.float64)
    blob = blob_clip(24, 32, project(K, point))
    out, K_flip = hflip_clip(blob, K)
    assert K_flip[0, 0] > 0 and K_flip[0, 2] == 32 - 1 - K[0, 2]
    mirrored = point * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(centroid(out[0, 0]), project(K_flip, mirrored), atol=0.05, rtol=0)


def test_batched_intrinsics_are_updated_per_row() -> None:
    K = torch.stack([K0, 2 * K0 * torch.tensor([1, 1, 0.5], dtype=torch.float64)[:, None]]).float()
    _, K_out = resize_clip(torch.zeros(3, 2, 24, 32), (12, 16), K)
    assert K_out.shape == (2, 3, 3)
    for b in range(2):
        torch.testing.assert_close(K_out[b], resize_clip(torch.zeros(3, 2, 24, 32), (12, 16), K[b])[1])


# ---------------------------------------------------------------- colour and normalisation


def torchvision_color(
    frame: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float
) -> torch.Tensor:
    """Reference: torchvision's float colour ops on one (3, H, W) frame in [0, 1]."""
    frame = TF.adjust_contrast(TF.adjust_brightness(frame, brightness), contrast)
    return TF.adjust_hue(TF.adjust_saturation(frame, saturation), hue)


@pytest.mark.parametrize("hue", [0.1, -0.35, 0.5])
def test_color_same_factors_on_every_frame_equals_frame_by_frame(hue: float) -> None:
    params = {"brightness": 1.2, "contrast": 0.7, "saturation": 1.4, "hue": hue}
    video = moving_clip(dtype=torch.float32)
    video[:, :, :3] = 0.5  # gray rows (zero chroma) and ties between channels
    video[1, :, 3:6] = video[0, :, 3:6]
    out = adjust_color_clip(video, **params)
    assert out.dtype == torch.float32 and out.shape == video.shape
    for t in range(video.shape[1]):
        torch.testing.assert_close(out[:, t], torchvision_color(video[:, t], **params), atol=1e-5, rtol=0)
    video_u8 = moving_clip()
    out_u8 = adjust_color_clip(video_u8, **params)
    assert out_u8.dtype == torch.uint8
    for t in range(video.shape[1]):
        ref = torchvision_color(video_u8[:, t].float() / 255, **params) * 255
        assert (out_u8[:, t].float() - ref).abs().max() <= 0.5 + 1e-3  # rounded once
    assert not torch.equal(out_u8, video_u8)
    assert torch.equal(adjust_color_clip(video_u8), video_u8)


def test_color_identical_frames_stay_identical() -> None:
    frame = moving_clip(T=1, dtype=torch.float32)
    video = frame.expand(3, 5, 24, 32)
    out = adjust_color_clip(video, 0.8, 1.3, 0.5, -0.2)
    assert out.dtype == torch.float32
    for t in range(1, 5):
        assert torch.equal(out[:, t], out[:, 0])


def test_normalize_against_loop() -> None:
    video = moving_clip()
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    out = normalize_clip(video, mean, std)
    for c in range(3):
        torch.testing.assert_close(out[c], (video[c].float() / 255 - mean[c]) / std[c])
    with pytest.raises(ValueError, match="mean/std"):
        normalize_clip(video, [0.5], [0.5])


# ---------------------------------------------------------------- random crop parameters


def test_random_resized_crop_params_in_range_and_seeded() -> None:
    g = torch.Generator().manual_seed(0)
    draws = [random_resized_crop_params(60, 80, (0.3, 0.7), (0.5, 2.0), g) for _ in range(200)]
    for top, left, h, w in draws:
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.3 * 0.9 <= h * w / (60 * 80) <= 0.7 * 1.1
        assert 0.5 * 0.9 <= w / h <= 2.0 * 1.1
    assert len(set(draws)) > 150
    g2 = torch.Generator().manual_seed(0)
    assert draws[:20] == [random_resized_crop_params(60, 80, (0.3, 0.7), (0.5, 2.0), g2) for _ in range(20)]


def test_random_resized_crop_params_fallback_center() -> None:
    # A crop of aspect 10 covering the whole area cannot fit: fall back to the central crop, ratio clamped.
    top, left, h, w = random_resized_crop_params(20, 20, (1.0, 1.0), (10.0, 10.0), torch.Generator())
    assert (h, w) == (2, 20) and (top, left) == (9, 0)


# ---------------------------------------------------------------- ClipAugment / ClipResize


def test_clip_augment_seeded_and_uint8() -> None:
    aug = ClipAugment((16, 16), color_jitter=0.4)
    video = moving_clip()
    a, Ka = aug(video, K0.float(), torch.Generator().manual_seed(3))
    b, Kb = aug(video, K0.float(), torch.Generator().manual_seed(3))
    c, _ = aug(video, K0.float(), torch.Generator().manual_seed(4))
    assert a.dtype == torch.uint8 and a.shape == (3, 4, 16, 16) and a.is_contiguous()
    assert torch.equal(a, b) and torch.equal(Ka, Kb)
    assert not torch.equal(a, c)


def test_clip_augment_equals_ops_frame_by_frame() -> None:
    aug = ClipAugment((12, 20), scale=(0.3, 0.9), hflip=0.5, color_jitter=(0.3, 0.3, 0.3, 0.1))
    video = moving_clip()
    seen_flips = set()
    for seed in range(6):
        out, _ = aug(video, None, torch.Generator().manual_seed(seed))
        top, left, h, w = aug.last_params["crop"]
        seen_flips.add(aug.last_params["flipped"])
        for t in range(video.shape[1]):
            frame = video[:, t, top : top + h, left : left + w][None]
            ref = F.interpolate(frame, size=(12, 20), mode="bilinear", antialias=True)[0]
            if aug.last_params["flipped"]:
                ref = ref.flip(-1)
            ref = torchvision_color(ref.float() / 255, **aug.last_params["color"]) * 255
            assert (out[:, t].float() - ref).abs().max() <= 0.5 + 1e-3
    assert seen_flips == {True, False}


def test_clip_augment_identical_frames_stay_identical() -> None:
    video = moving_clip(T=1).expand(3, 4, 24, 32)
    aug = ClipAugment((16, 16), color_jitter=0.5)
    for seed in range(3):
        out, _ = aug(video, None, torch.Generator().manual_seed(seed))
        for t in range(1, 4):
            assert torch.equal(out[:, t], out[:, 0])


def test_clip_augment_intrinsics_follow_the_mark() -> None:
    point = torch.tensor([0.05, -0.04, 2.0], dtype=torch.float64)  # near the optical axis
    K_in = K0 * torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64)[:, None]
    video = blob_clip(48, 64, project(K_in, point))
    aug = ClipAugment((24, 24), scale=(0.5, 0.9), hflip=0.5)
    flips = []
    for seed in range(16):
        out, K = aug(video, K_in, torch.Generator().manual_seed(seed))
        flipped = aug.last_params["flipped"]
        target = point * torch.tensor([-1.0 if flipped else 1.0, 1.0, 1.0], dtype=torch.float64)
        uv = project(K, target)
        if not (3 <= uv[0] <= 20 and 3 <= uv[1] <= 20):
            continue  # the crop cut the mark: its centroid would be biased
        flips.append(flipped)
        torch.testing.assert_close(centroid(out[0, 0]), uv, atol=0.1, rtol=0)
    assert len(flips) >= 8 and set(flips) == {True, False}


def test_clip_resize_center_crop_intrinsics() -> None:
    point = torch.tensor([0.1, 0.05, 2.0], dtype=torch.float64)
    video = blob_clip(24, 32, project(K0, point), sigma=2.0)
    out, K = ClipResize((16, 16), center_crop=True)(video, K0)
    assert out.shape == (3, 2, 16, 16)
    torch.testing.assert_close(centroid(out[0, 0]), project(K, point), atol=0.1, rtol=0)
    plain, K_plain = ClipResize((12, 16))(video, K0)
    ref, K_ref = resize_clip(video, (12, 16), K0)
    assert torch.equal(plain, ref) and torch.equal(K_plain, K_ref)


# ---------------------------------------------------------------- errors


def test_bad_inputs_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"video: expected shape \(C T H W\)"):
        resize_clip(torch.zeros(2, 3, 4, 8, 8), (4, 4))
    with pytest.raises(ValueError, match=r"K: expected shape \(3, 3\) or \(B, 3, 3\)"):
        crop_clip(torch.zeros(3, 2, 8, 8), 0, 0, 4, 4, K=torch.eye(4))
    with pytest.raises(ValueError, match="must lie inside"):
        crop_clip(torch.zeros(3, 2, 8, 8), 6, 0, 4, 4)
    with pytest.raises(ValueError, match=r"video: expected shape \(3 T H W\)"):
        adjust_color_clip(torch.zeros(1, 2, 8, 8), brightness=1.2)
    with pytest.raises(TypeError, match="video: expected a uint8 or floating"):
        hflip_clip(torch.zeros(3, 2, 8, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="size"):
        center_crop_clip(torch.zeros(3, 2, 8, 8), 9)
    with pytest.raises(ValueError, match="hue"):
        adjust_color_clip(torch.zeros(3, 2, 8, 8), hue=0.7)
    with pytest.raises(ValueError, match="scale"):
        ClipAugment(16, scale=(0.5, 1.5))
    with pytest.raises(ValueError, match="color_jitter"):
        ClipAugment(16, color_jitter=(0.1, 0.2))
