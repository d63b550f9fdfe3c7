"""stssl.losses: pure loss functions on tensors."""

from __future__ import annotations

from stssl.losses.clustering import inverse_size_weights, kmeans, pca_whitening, sinkhorn_knopp, swav_loss
from stssl.losses.contrastive import (
    MoCoQueue,
    byol_loss,
    cpc_loss,
    dino_loss,
    info_nce,
    nt_xent,
    update_center,
)
from stssl.losses.photometric import min_reprojection_loss, photometric_error, smoothness_loss, ssim

__all__ = [
    "MoCoQueue",
    "byol_loss",
    "cpc_loss",
    "dino_loss",
    "info_nce",
    "inverse_size_weights",
    "kmeans",
    "min_reprojection_loss",
    "nt_xent",
    "pca_whitening",
    "photometric_error",
    "sinkhorn_knopp",
    "smoothness_loss",
    "ssim",
    "swav_loss",
    "update_center",
]
