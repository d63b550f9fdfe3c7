"""stssl.losses: pure loss functions on tensors."""

from __future__ import annotations

from stssl.losses.photometric import min_reprojection_loss, photometric_error, smoothness_loss, ssim

__all__ = ["min_reprojection_loss", "photometric_error", "smoothness_loss", "ssim"]
