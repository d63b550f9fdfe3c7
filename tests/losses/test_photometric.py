"""Tests for stssl.losses.photometric against naive loops and closed forms."""

from __future__ import annotations

import pytest
import torch

from stssl.losses.photometric import min_reprojection_loss, photometric_error, smoothness_loss, ssim

F64 = torch.float64
C1, C2 = 0.01**2, 0.03**2


def reflect(i: int, n: int) -> int:
    """Index into a reflection-padded axis (edge not repeated): -1 -> 1, n -> n - 2."""
    return -i if i < 0 else (2 * n - 2 - i if i >= n else i)


def naive_ssim_box3(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    B, C, H, W = x.shape
    out = torch.zeros_like(x)
    for b in range(B):
        for c in range(C):
            for v in range(H):
                for u in range(W):
                    xs, ys = [], []
                    for dv in (-1, 0, 1):
                        for du in (-1, 0, 1):
                            xs.append(x[b, c, reflect(v + dv, H), reflect(u + du, W)].item())
                            ys.append(y[b, c, reflect(v + dv, H), reflect(u + du, W)].item())
                    mx, my = sum(xs) / 9, sum(ys) / 9
                    vx = sum((a - mx) ** 2 for a in xs) / 9
                    vy = sum((a - my) ** 2 for a in ys) / 9
                    cxy = sum((a - mx) * (b_ - my) for a, b_ in zip(xs, ys, strict=True)) / 9
                    out[b, c, v, u] = ((2 * mx * my + C1) * (2 * cxy + C2)) / (
                        (mx**2 + my**2 + C1) * (vx + vy + C2)
                    )
    return out


def test_ssim_box3_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 2, 5, 6, generator=g, dtype=F64)
    y = (x + 0.3 * torch.rand(2, 2, 5, 6, generator=g, dtype=F64)).clamp(0, 1)
    torch.testing.assert_close(ssim(x, y), naive_ssim_box3(x, y))


@pytest.mark.parametrize("window", ["box3", "gaussian"])
def test_ssim_identity_symmetry_and_constants(window: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=F64)
    y = torch.rand(2, 3, 16, 16, generator=g, dtype=F64)
    torch.testing.assert_close(ssim(x, x, window=window), torch.ones_like(x))
    torch.testing.assert_close(ssim(x, y, window=window), ssim(y, x, window=window))
    assert ssim(x, y, window=window).abs().max() <= 1.0 + 1e-9
    # flat images: the structure terms cancel, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.2, 0.7
    flat = ssim(
        torch.full((1, 1, 16, 16), a, dtype=F64), torch.full((1, 1, 16, 16), b, dtype=F64), window=window
    )
    torch.testing.assert_close(flat, torch.full_like(flat, (2 * a * b + C1) / (a * a + b * b + C1)))


def test_ssim_windows_differ_on_texture() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 1, 16, 16, generator=g, dtype=F64)
    y = torch.rand(1, 1, 16, 16, generator=g, dtype=F64)
    assert (ssim(x, y, window="box3") - ssim(x, y, window="gaussian")).abs().max() > 0.05


def test_photometric_error_closed_forms() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 8, 8, generator=g, dtype=F64)
    y = torch.rand(2, 3, 8, 8, generator=g, dtype=F64)
    assert photometric_error(x, x).abs().max().item() == 0.0
    err = photometric_error(x, y)
    assert err.shape == (2, 1, 8, 8)
    torch.testing.assert_close(photometric_error(x, y, alpha=0.0), (x - y).abs().mean(1, keepdim=True))
    dssim = ((1 - ssim(x, y)) / 2).clamp(0, 1).mean(1, keepdim=True)
    torch.testing.assert_close(photometric_error(x, y, alpha=1.0), dssim)
    torch.testing.assert_close(err, 0.85 * dssim + 0.15 * (x - y).abs().mean(1, keepdim=True))
    a, b, alpha = 0.1, 0.6, 0.85
    flat = photometric_error(torch.full((1, 3, 8, 8), a, dtype=F64), torch.full((1, 3, 8, 8), b, dtype=F64))
    expected = alpha * (1 - (2 * a * b + C1) / (a * a + b * b + C1)) / 2 + (1 - alpha) * abs(a - b)
    torch.testing.assert_close(flat, torch.full_like(flat, expected))
    with pytest.raises(ValueError, match="alpha"):
        photometric_error(x, y, alpha=1.5)


def naive_min_reprojection(errors: torch.Tensor, identity: torch.Tensor | None, reduction: str) -> float:
    B, S, H, W = errors.shape
    total, count = 0.0, 0
    for b in range(B):
        for v in range(H):
            for u in range(W):
                m = min(errors[b, s, v, u].item() for s in range(S))
                if identity is None:
                    total, count = total + m, count + 1
                    continue
                mi = min(identity[b, s, v, u].item() for s in range(identity.shape[1]))
                if m <= mi:
                    total, count = total + m, count + 1
                elif reduction == "mean_of_min":
                    total, count = total + mi, count + 1
                else:
                    pass
    denominator = B * H * W if reduction == "mean_of_min" or identity is None else max(count, 1)
    return total / denominator


@pytest.mark.parametrize("reduction", ["masked_mean", "mean_of_min"])
def test_min_reprojection_matches_naive_loop(reduction: str) -> None:
    g = torch.Generator().manual_seed(4)
    errors = torch.rand(2, 2, 5, 6, generator=g, dtype=F64)
    identity = torch.rand(2, 3, 5, 6, generator=g, dtype=F64) * 0.8
    loss, aux = min_reprojection_loss(list(errors.split(1, dim=1)), identity, reduction=reduction)
    assert loss.item() == pytest.approx(naive_min_reprojection(errors, identity, reduction), rel=1e-12)
    loss_stacked, aux_stacked = min_reprojection_loss(
        errors, list(identity.split(1, dim=1)), reduction=reduction
    )
    assert loss_stacked.item() == pytest.approx(loss.item(), rel=1e-12)
    mask = aux["automask"]
    assert mask.shape == (2, 1, 5, 6) and mask.dtype == torch.bool and 0 < mask.sum() < mask.numel()
    assert torch.equal(mask, errors.min(1, keepdim=True).values <= identity.min(1, keepdim=True).values)
    assert torch.equal(aux["source_index"], errors.argmin(1, keepdim=True))
    torch.testing.assert_close(aux["min_error"], errors.min(1, keepdim=True).values)
    no_mask, _ = min_reprojection_loss(errors)
    assert no_mask.item() == pytest.approx(naive_min_reprojection(errors, None, reduction))


def test_min_reprojection_masked_pixels_get_no_gradient() -> None:
    g = torch.Generator().manual_seed(5)
    errors = torch.rand(1, 2, 4, 4, generator=g, dtype=F64, requires_grad=True)
    identity = torch.rand(1, 1, 4, 4, generator=g, dtype=F64)
    loss, aux = min_reprojection_loss(errors, identity)
    loss.backward()
    grad = errors.grad.sum(1, keepdim=True)
    assert (grad[~aux["automask"]] == 0).all()
    torch.testing.assert_close(
        grad[aux["automask"]], torch.full_like(grad[aux["automask"]], 1 / aux["automask"].sum())
    )


def test_min_reprojection_tie_break_noise_is_seeded() -> None:
    errors = torch.full((2, 2, 8, 8), 0.5, dtype=F64)
    identity = errors[:, :1].clone()  # exact ties everywhere
    _, aux = min_reprojection_loss(errors, identity)
    assert bool(aux["automask"].all())  # deterministic default: ties keep the pixel
    masks = [
        min_reprojection_loss(
            errors, identity, identity_noise=1e-5, generator=torch.Generator().manual_seed(7)
        )[1]["automask"]
        for _ in range(2)
    ]
    assert torch.equal(masks[0], masks[1])
    assert 0.3 < masks[0].double().mean().item() < 0.7


def test_min_reprojection_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"errors\[1\]"):
        min_reprojection_loss([torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5)])
    with pytest.raises(ValueError, match="identity_errors"):
        min_reprojection_loss(torch.zeros(2, 2, 4, 4), torch.zeros(2, 1, 3, 4))
    with pytest.raises(ValueError, match="errors"):
        min_reprojection_loss([])
    with pytest.raises(ValueError, match="reduction"):
        min_reprojection_loss(torch.zeros(2, 2, 4, 4), reduction="sum")


def naive_smoothness(disp: torch.Tensor, image: torch.Tensor) -> float:
    B, C, H, W = image.shape
    sx, sy = 0.0, 0.0
    for b in range(B):
        mean = disp[b].mean().item()
        d = disp[b, 0] / mean
        for v in range(H):
            for u in range(W):
                if u + 1 < W:
                    edge = sum(abs(image[b, c, v, u] - image[b, c, v, u + 1]).item() for c in range(C)) / C
                    sx += abs(d[v, u] - d[v, u + 1]).item() * torch.exp(torch.tensor(-edge)).item()
                if v + 1 < H:
                    edge = sum(abs(image[b, c, v, u] - image[b, c, v + 1, u]).item() for c in range(C)) / C
                    sy += abs(d[v, u] - d[v + 1, u]).item() * torch.exp(torch.tensor(-edge)).item()
    return sx / (B * H * (W - 1)) + sy / (B * (H - 1) * W)


def test_smoothness_matches_naive_loop_and_is_scale_invariant() -> None:
    g = torch.Generator().manual_seed(8)
    disp = torch.rand(2, 1, 5, 6, generator=g, dtype=F64) + 0.1
    image = torch.rand(2, 3, 5, 6, generator=g, dtype=F64)
    loss = smoothness_loss(disp, image)
    assert loss.item() == pytest.approx(naive_smoothness(disp, image), rel=1e-6)
    assert smoothness_loss(7 * disp, image).item() == pytest.approx(loss.item(), rel=1e-6)
    assert smoothness_loss(torch.full_like(disp, 3.0), image).item() == 0.0


def test_smoothness_is_edge_aware() -> None:
    disp = torch.ones(1, 1, 8, 8, dtype=F64)
    disp[..., 4:] = 2.0  # a depth edge between columns 3 and 4
    image_with_edge = torch.zeros(1, 3, 8, 8, dtype=F64)
    image_with_edge[..., 4:] = 1.0
    flat_image = torch.zeros(1, 3, 8, 8, dtype=F64)
    assert smoothness_loss(disp, image_with_edge) < smoothness_loss(disp, flat_image)


def test_bad_shapes_name_the_argument() -> None:
    with pytest.raises(ValueError, match="y"):
        ssim(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 9))
    with pytest.raises(ValueError, match="window"):
        ssim(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), window="box5")
    with pytest.raises(ValueError, match="target"):
        photometric_error(torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="disp"):
        smoothness_loss(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8))


def test_works_with_shape_checks_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(9)
    x, y = torch.rand(2, 3, 6, 6, generator=g), torch.rand(2, 3, 6, 6, generator=g)
    errors, identity = torch.rand(2, 2, 6, 6, generator=g), torch.rand(2, 1, 6, 6, generator=g)
    expected = (
        photometric_error(x, y),
        min_reprojection_loss(errors, identity)[0],
        smoothness_loss(x[:, :1], y),
    )
    monkeypatch.setenv("STSSL_CHECKS", "0")
    got = (photometric_error(x, y), min_reprojection_loss(errors, identity)[0], smoothness_loss(x[:, :1], y))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
