"""Photometric losses for self-supervised depth and ego-motion (monodepth2-class).

- :func:`ssim`: per-pixel SSIM map, with monodepth2's 3x3 box window (``"box3"``) or kornia's Gaussian window.
- :func:`photometric_error`: ``alpha * (1 - SSIM) / 2 + (1 - alpha) * L1``, per pixel, averaged over channels.
- :func:`min_reprojection_loss`: per-pixel minimum over source frames with auto-masking of static pixels.
- :func:`smoothness_loss`: edge-aware smoothness of mean-normalised inverse depth.

Images are expected in ``[0, 1]`` (``max_val=1``); the SSIM constants are ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from kornia.filters import box_blur
from kornia.losses import inverse_depth_smoothness_loss
from kornia.metrics import ssim as kornia_ssim

from stssl.checks import check_shape

__all__ = ["SSIM_WINDOWS", "ssim", "photometric_error", "min_reprojection_loss", "smoothness_loss"]

SSIM_WINDOWS = ("box3", "gaussian")
REDUCTIONS = ("masked_mean", "mean_of_min")


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    window: str = "box3",
    window_size: int = 11,
    max_val: float = 1.0,
) -> torch.Tensor:
    """Per-pixel structural similarity ``SSIM(x, y)``, not reduced and not clamped.

    ``SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))`` with local means and
    (biased) covariances taken over a window around each pixel.

    - ``"box3"``: the monodepth2 variant: an unweighted 3x3 window with reflection padding (``"reflect"``: the edge
      pixel is not repeated), so every output pixel sees exactly 9 samples; cheap and sharp, the standard choice
      for photometric losses. ``window_size`` is ignored.
    - ``"gaussian"``: kornia's SSIM (Wang et al. 2004): a ``window_size`` Gaussian window, ``sigma = 1.5``, reflect
      padding; smoother, the choice for reporting image quality. Called with ``eps=0`` so ``SSIM(x, x) = 1``.

    The two agree in the formula and constants but not in value: the box window weighs its 9 neighbours equally
    and sees only a 3x3 neighbourhood.

    Args:
        x: ``(B, C, H, W)`` image, values in ``[0, max_val]``; ``H, W >= 2`` (``> window_size // 2`` for
            ``"gaussian"``).
        y: ``(B, C, H, W)`` image.
        window: ``"box3"`` or ``"gaussian"``.
        window_size: odd Gaussian window size (``"gaussian"`` only).
        max_val: dynamic range ``L`` of the images.

    Returns:
        ``(B, C, H, W)`` SSIM map in ``[-1, 1]`` (up to rounding); 1 where ``x`` and ``y`` agree locally.

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> ssim(x, x).min().item() > 0.9999
        True
        >>> ssim(x, 1 - x, window="gaussian").mean().item() < 0
        True
    """
    check_shape(y, "B C H W", check_shape(x, "B C H W", name="x"), name="y")
    if window not in SSIM_WINDOWS:
        raise ValueError(f"ssim: window must be one of {SSIM_WINDOWS}, got {window!r}")
    if window == "gaussian":
        return kornia_ssim(x, y, window_size, max_val=float(max_val), eps=0.0, padding="same")
    if x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError(f"ssim: box3 reflection padding needs H, W >= 2, got x of shape {tuple(x.shape)}")
    c1 = (0.01 * max_val) ** 2
    c2 = (0.03 * max_val) ** 2

    def mean3(t: torch.Tensor) -> torch.Tensor:
        return box_blur(t, 3, border_type="reflect")

    mu_x, mu_y = mean3(x), mean3(y)
    var_x = mean3(x * x) - mu_x * mu_x
    var_y = mean3(y * y) - mu_y * mu_y
    cov_xy = mean3(x * y) - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def photometric_error(
    pred: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.85,
    *,
    window: str = "box3",
) -> torch.Tensor:
    """Per-pixel photometric error ``alpha * clamp((1 - SSIM) / 2, 0, 1) + (1 - alpha) * |pred - target|``.

    Both terms are averaged over channels. The SSIM term lies in ``[0, 1]`` (clamped as monodepth2 does), so for
    images in ``[0, 1]`` the error does too; it is 0 exactly when ``pred == target``.

    Args:
        pred: ``(B, C, H, W)`` reconstructed image (e.g. a warped source), values in ``[0, 1]``.
        target: ``(B, C, H, W)`` target image.
        alpha: weight of the SSIM term, in ``[0, 1]`` (monodepth2: 0.85).
        window: SSIM window, see :func:`ssim`.

    Returns:
        ``(B, 1, H, W)`` error per pixel.

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> photometric_error(x, x).abs().max().item()
        0.0
        >>> torch.allclose(photometric_error(x, x + 0.1, alpha=0.0), torch.full((2, 1, 8, 8), 0.1))
        True
    """
    sizes = check_shape(pred, "B C H W", name="pred")
    check_shape(target, "B C H W", sizes, name="target")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"photometric_error: alpha must be in [0, 1], got {alpha}")
    l1 = (pred - target).abs().mean(dim=1, keepdim=True)
    if alpha == 0.0:
        return l1
    dssim = ((1.0 - ssim(pred, target, window=window)) / 2.0).clamp(0.0, 1.0).mean(dim=1, keepdim=True)
    return alpha * dssim + (1.0 - alpha) * l1


def _stack_errors(errors: torch.Tensor | Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """``(B, S, H, W)`` from a tensor of that shape or a non-empty sequence of ``(B, 1, H, W)``."""
    if isinstance(errors, torch.Tensor):
        check_shape(errors, "B S H W", name=name)
        return errors
    if len(errors) == 0:
        raise ValueError(f"{name}: expected at least one (B, 1, H, W) error map, got an empty sequence")
    sizes: dict[str, int] = {}
    for i, e in enumerate(errors):
        check_shape(e, "B 1 H W", sizes, name=f"{name}[{i}]")
    return torch.cat(list(errors), dim=1)


def min_reprojection_loss(
    errors: torch.Tensor | Sequence[torch.Tensor],
    identity_errors: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    reduction: str = "masked_mean",
    identity_noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pixel minimum reprojection error over source frames, with monodepth2's auto-masking.

    ``min_error = min_s errors[s]`` handles occlusions (each pixel uses the source that sees it best). With
    ``identity_errors`` (the photometric error of each *unwarped* source against the target), pixels where some
    identity error is strictly lower than ``min_error`` are masked out: static scenes, objects moving with the
    camera and textureless regions, which the warp cannot explain better than no motion at all. Ties keep the
    pixel.

    Reductions:

    - ``"masked_mean"`` (default): mean of ``min_error`` over the kept pixels (0 when none is kept), i.e. the
      masked pixels are excluded from the loss and from its normalisation.
    - ``"mean_of_min"``: monodepth2's ``mean(min(identity ∪ errors))`` over all pixels: masked pixels contribute
      their identity error, which carries no gradient to depth or pose, but they count in the denominator, so the
      gradient is the masked-mean gradient times the kept fraction.

    Tie-break noise: monodepth2 adds ``randn * 1e-5`` to the identity errors so that exact ties (e.g. a
    zero-motion warp) are broken at random. Here the default ``identity_noise=0`` is deterministic (ties keep the
    pixel); a positive ``identity_noise`` adds ``identity_noise * randn`` drawn from ``generator`` (seed it for
    reproducible masks; ``None`` uses the global RNG). The noise only decides the mask and, under
    ``"mean_of_min"``, the value of masked pixels.

    Args:
        errors: ``(B, S, H, W)`` or a sequence of ``S`` maps ``(B, 1, H, W)``: the error of each warped source.
        identity_errors: the same for the unwarped sources (any number ``S_id`` of them), or ``None`` for no
            auto-masking.
        reduction: ``"masked_mean"`` or ``"mean_of_min"``.
        identity_noise: standard deviation of tie-break noise on the identity errors (monodepth2: 1e-5).
        generator: random generator for that noise.

    Returns:
        ``loss`` (scalar) and ``aux`` with ``automask`` ``(B, 1, H, W)`` bool (True = pixel used), ``min_error``
        ``(B, 1, H, W)`` and ``source_index`` ``(B, 1, H, W)`` int64 (the source that attained the minimum).

    Example:
        >>> errors = [torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), 0.2)]
        >>> identity = torch.tensor([[[[0.1, 0.9], [0.9, 0.9]]]])
        >>> loss, aux = min_reprojection_loss(errors, identity)
        >>> round(loss.item(), 6), aux["automask"].flatten().tolist()
        (0.2, [False, True, True, True])
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"min_reprojection_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    reprojection = _stack_errors(errors, "errors")
    min_error, source_index = reprojection.min(dim=1, keepdim=True)
    if identity_errors is None:
        automask = torch.ones_like(min_error, dtype=torch.bool)
        return min_error.mean(), {"automask": automask, "min_error": min_error, "source_index": source_index}

    identity = _stack_errors(identity_errors, "identity_errors")
    sizes = check_shape(reprojection, "B S H W", name="errors")
    check_shape(identity, "B S_id H W", {k: sizes[k] for k in "BHW" if k in sizes}, name="identity_errors")
    if identity_noise > 0:
        device = generator.device if generator is not None else identity.device
        noise = torch.randn(identity.shape, generator=generator, device=device, dtype=identity.dtype)
        identity = identity + identity_noise * noise.to(identity.device)
    min_identity = identity.min(dim=1, keepdim=True).values
    automask = min_error <= min_identity
    if reduction == "masked_mean":
        kept = automask.to(min_error.dtype)
        loss = (min_error * kept).sum() / kept.sum().clamp(min=1.0)
    else:
        loss = torch.where(automask, min_error, min_identity.detach()).mean()
    return loss, {"automask": automask, "min_error": min_error, "source_index": source_index}


def smoothness_loss(disp: torch.Tensor, image: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Edge-aware smoothness of mean-normalised inverse depth (monodepth2's ``get_smooth_loss``).

    ``d = disp / mean_{H,W}(disp)`` per sample (so the loss cannot be lowered by shrinking the depth scale), then
    ``mean |dx d| exp(-mean_c |dx I|) + mean |dy d| exp(-mean_c |dy I|)`` with forward differences
    (kornia's ``inverse_depth_smoothness_loss``). Invariant to the scale of ``disp``.

    Args:
        disp: ``(B, 1, H, W)`` positive inverse depth (disparity).
        image: ``(B, C, H, W)`` the image at the same resolution, values in ``[0, 1]``.
        eps: added to the mean before dividing.

    Returns:
        Scalar loss.

    Example:
        >>> disp, image = torch.rand(2, 1, 8, 8) + 0.1, torch.rand(2, 3, 8, 8)
        >>> torch.allclose(smoothness_loss(disp, image), smoothness_loss(5 * disp, image), atol=1e-5)
        True
    """
    sizes = check_shape(disp, "B 1 H W", name="disp")
    check_shape(image, "B C H W", sizes, name="image")
    normalised = disp / (disp.mean(dim=(2, 3), keepdim=True) + eps)
    return inverse_depth_smoothness_loss(normalised, image.to(normalised.dtype))
