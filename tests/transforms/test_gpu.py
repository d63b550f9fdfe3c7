"""Tests for stssl.transforms.gpu: kornia VideoSequential pipeline, intrinsics from kornia's matrices, views."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stssl.transforms.functional import crop_clip, hflip_clip, resize_clip
from stssl.transforms.gpu import GPUAugment, make_views

K0 = torch.tensor([[20.0, 0.0, 15.3], [0.0, 22.0, 11.7], [0.0, 0.0, 1.0]], dtype=torch.float64)


def project(K: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    p = K @ point
    return p[:2] / p[2]


def blob_image(H: int, W: int, uv: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    ys = torch.arange(H, dtype=torch.float64)[:, None]
    xs = torch.arange(W, dtype=torch.float64)[None, :]
    return torch.exp(-((xs - uv[0]) ** 2 + (ys - uv[1]) ** 2) / (2 * sigma**2))


def centroid(frame: torch.Tensor) -> torch.Tensor:
    frame = frame.double().clamp_min(0)
    H, W = frame.shape
    ys = torch.arange(H, dtype=torch.float64)[:, None]
    xs = torch.arange(W, dtype=torch.float64)[None, :]
    total = frame.sum()
    return torch.stack([(frame * xs).sum() / total, (frame * ys).sum() / total])


def moving_batch(B: int = 2, T: int = 4, H: int = 24, W: int = 32) -> torch.Tensor:
    """``(B, 3, T, H, W)`` in [0, 1]: a pattern moving 3 px right per frame."""
    base = torch.rand(B, 3, H, W + 3 * T, generator=torch.Generator().manual_seed(5))
    return torch.stack([base[..., 3 * t : 3 * t + W] for t in range(T)], dim=2)


def crop_box(aug: GPUAugment, b: int, T: int) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of clip ``b`` from kornia's sampled ``src`` box (corner pixel indices)."""
    src = aug.last_params["kornia"][0].data["src"][b * T]
    x0, y0 = int(src[0, 0]), int(src[0, 1])
    return y0, x0, int(src[2, 1]) - y0 + 1, int(src[1, 0]) - x0 + 1


def test_shapes_dtype_and_device() -> None:
    aug = GPUAugment((12, 16), color_jitter=0.4, grayscale=0.2, blur=0.5)
    video = moving_batch()
    out, K = aug(video, K0.float().expand(2, 3, 3))
    assert out.shape == (2, 3, 4, 12, 16) and out.dtype == video.dtype and out.device == video.device
    assert K is not None and K.shape == (2, 3, 3) and K.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    out, K = aug(video, None)
    assert K is None


def test_same_augmentation_on_every_frame_different_across_batch() -> None:
    # Clips [A, X, A, X]: frames 0 and 2 (and 1 and 3) must stay identical after the augmentation.
    B = 4
    a = torch.rand(B, 3, 1, 24, 32, generator=torch.Generator().manual_seed(0))
    x = torch.rand(B, 3, 1, 24, 32, generator=torch.Generator().manual_seed(1))
    video = torch.cat([a, x, a, x], dim=2)
    same = a.expand(B, 3, 4, 24, 32)
    aug = GPUAugment((16, 16), color_jitter=0.4, color_jitter_p=1.0, grayscale=0.3, blur=0.5)
    out, _ = aug(video, None, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, 0], out[:, :, 2]) and torch.equal(out[:, :, 1], out[:, :, 3])
    assert not torch.equal(out[:, :, 0], out[:, :, 1])
    out, _ = aug(same, None, generator=torch.Generator().manual_seed(1))
    for t in range(1, 4):
        assert torch.equal(out[:, :, t], out[:, :, 0])
    # Same input clip in every batch row, but each row draws its own augmentation.
    assert not torch.equal(out[0], out[1])


def test_geometry_equals_cpu_ops_frame_by_frame_and_intrinsics_match() -> None:
    T = 4
    video = moving_batch(B=6, T=T)
    K = K0.float().expand(6, 3, 3)
    aug = GPUAugment((12, 20), scale=(0.3, 0.9), hflip=0.5)
    out, K_out = aug(video, K, generator=torch.Generator().manual_seed(2))
    flipped = aug.last_params["flipped"]
    assert 0 < int(flipped.sum()) < 6, "this seed should flip some clips and not others"
    for b in range(6):
        top, left, h, w = crop_box(aug, b, T)
        clip, K_ref = crop_clip(video[b], top, left, h, w, K[b])
        clip, K_ref = resize_clip(clip, (12, 20), K_ref, antialias=False)
        if flipped[b]:
            clip, K_ref = hflip_clip(clip, K_ref)
        for t in range(T):  # the moving pattern gets the same crop on every frame
            frame = video[b, :, t, top : top + h, left : left + w][None]
            ref = F.interpolate(frame, size=(12, 20), mode="bilinear", align_corners=False)[0]
            ref = ref.flip(-1) if flipped[b] else ref
            torch.testing.assert_close(out[b, :, t], ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[b], clip, atol=1e-5, rtol=0)
        torch.testing.assert_close(K_out[b], K_ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("hflip", [0.0, 1.0, 0.5])
def test_intrinsics_follow_the_mark(hflip: float) -> None:
    # Each clip marks a different 3D point; after the augmentation the mark sits where the new K projects it
    # (the mirrored point for flipped clips).
    B, H, W = 8, 48, 64
    K = (K0 * torch.tensor([2.0, 2.0, 1.0], dtype=torch.float64)[:, None]).expand(B, 3, 3)
    g = torch.Generator().manual_seed(int(hflip * 10))
    points = torch.cat(
        [(torch.rand(B, 2, generator=g, dtype=torch.float64) - 0.5) * 0.1, torch.full((B, 1), 2.0)], 1
    )
    video = torch.stack([blob_image(H, W, project(K[b], points[b])) for b in range(B)])
    video = video[:, None, None].expand(B, 3, 2, H, W).float()
    aug = GPUAugment((24, 24), scale=(0.4, 0.9), hflip=hflip)
    out, K_out = aug(video, K.float(), generator=torch.Generator().manual_seed(1))
    flipped = aug.last_params["flipped"]
    if hflip in (0.0, 1.0):
        assert bool((flipped == bool(hflip)).all())
    assert bool((K_out[:, 0, 0] > 0).all())
    checked = 0
    for b in range(B):
        target = points[b] * torch.tensor([-1.0 if flipped[b] else 1.0, 1.0, 1.0], dtype=torch.float64)
        uv = project(K_out[b].double(), target)
        if not (3 <= uv[0] <= 20 and 3 <= uv[1] <= 20):
            continue  # the crop cut the mark: its centroid would be biased
        checked += 1
        for t in range(2):
            torch.testing.assert_close(centroid(out[b, 0, t]), uv, atol=0.1, rtol=0)
    assert checked >= 5


def test_seeded_generator_reproduces_and_leaves_global_state() -> None:
    aug = GPUAugment((16, 16), color_jitter=0.4, grayscale=0.2, blur=0.5)
    video, K = moving_batch(), K0.float().expand(2, 3, 3)
    state = torch.get_rng_state()
    a, Ka = aug(video, K, generator=torch.Generator().manual_seed(11))
    assert torch.equal(torch.get_rng_state(), state)
    b, Kb = aug(video, K, generator=torch.Generator().manual_seed(11))
    c, _ = aug(video, K, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and torch.equal(Ka, Kb)
    assert not torch.equal(a, c)


def test_make_views_are_independent_and_reproducible() -> None:
    aug = GPUAugment((16, 16), color_jitter=0.4)
    video, K = moving_batch(), K0.float().expand(2, 3, 3)
    views = make_views(aug, video, K, 3, generator=torch.Generator().manual_seed(0))
    assert len(views) == 3
    for v, K_v in views:
        assert v.shape == (2, 3, 4, 16, 16) and K_v is not None and K_v.shape == (2, 3, 3)
    assert not torch.equal(views[0][0], views[1][0]) and not torch.equal(views[1][0], views[2][0])
    again = aug.make_views(video, K, 3, generator=torch.Generator().manual_seed(0))
    for (v1, k1), (v2, k2) in zip(views, again, strict=True):
        assert torch.equal(v1, v2) and torch.equal(k1, k2)
    # View v of clip b is row v * B + b of one call on the repeated batch.
    full, K_full = aug(
        video.repeat(3, 1, 1, 1, 1), K.repeat(3, 1, 1), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(views[2][0], full[4:6]) and torch.equal(views[2][1], K_full[4:6])


def test_bad_inputs_name_the_argument() -> None:
    aug = GPUAugment(8)
    with pytest.raises(ValueError, match=r"video: expected shape \(B C T H W\)"):
        aug(torch.rand(3, 4, 16, 16))
    with pytest.raises(ValueError, match=r"K: expected shape \(B 3 3\) with B=2"):
        aug(torch.rand(2, 3, 4, 16, 16), torch.eye(3).expand(3, 3, 3))
    with pytest.raises(TypeError, match="video: expected a float tensor"):
        aug(torch.zeros(2, 3, 4, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="num_views"):
        make_views(aug, torch.rand(2, 3, 4, 16, 16), None, 0)
    with pytest.raises(ValueError, match="hflip"):
        GPUAugment(8, hflip=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_batch_device() -> None:
    aug = GPUAugment((16, 16), color_jitter=0.4, blur=0.5)
    video = moving_batch().to("cuda")
    K = K0.float().expand(2, 3, 3).to("cuda")
    out, K_out = aug(video, K, generator=torch.Generator().manual_seed(0))
    assert out.device == video.device and K_out.device == video.device
    ref, K_ref = aug(video.cpu(), K.cpu(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.cpu(), ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(K_out.cpu(), K_ref, atol=1e-4, rtol=0)
