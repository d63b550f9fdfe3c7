"""Clustering objectives: equipartitioned codes (SwAV, SeLa) and k-means pseudo-labels (DeepCluster).

- :func:`sinkhorn_knopp`: soft assignments of ``N`` samples to ``K`` prototypes with equal prototype mass.
- :func:`swav_loss`: SwAV's swapped prediction: each view predicts the other views' codes.
- :func:`kmeans`: seeded Lloyd iterations, euclidean or cosine, with DeepCluster's empty-cluster reassignment.
- :func:`inverse_size_weights`: per-sample weights giving every non-empty cluster the same total mass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stssl.checks import check_shape
from stssl.losses.contrastive import cross_view_cross_entropy

__all__ = ["sinkhorn_knopp", "swav_loss", "kmeans", "pca_whitening", "inverse_size_weights", "KMEANS_METRICS", "KMEANS_INITS"]

KMEANS_METRICS = ("euclidean", "cosine")
KMEANS_INITS = ("k-means++", "random")


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equipartitioned soft codes by Sinkhorn-Knopp (Cuturi 2013; SeLa, Asano et al. 2020; SwAV, Caron et al.
    2020).

    Starts from ``P = exp(scores / epsilon)`` and alternately rescales it so that every prototype (column) holds
    mass ``N / K`` and every sample (row) mass 1, ending with the rows. The returned rows therefore sum to 1
    exactly, and the columns approach ``N / K`` as ``iterations`` grows (SwAV uses 3 with ``epsilon = 0.05``; SeLa
    runs to convergence). Computed in log-space, so no ``epsilon`` or score range overflows or leaves an empty
    column, and in float32 or float64: half-precision inputs are upcast and autocast is disabled inside. The
    codes are targets: no gradient is recorded.

    Under DDP the column marginals are global: gather ``scores`` from all ranks (no gradient needed), call this on
    the ``(world_size * N, K)`` result, and keep your own rows.

    Args:
        scores: ``(N, K)`` sample-prototype similarities.
        epsilon: entropic regularisation (smaller: harder codes).
        iterations: number of (column, row) normalisation rounds, ``>= 1``.

    Returns:
        ``(N, K)`` codes, rows summing to 1; float32 (float64 for float64 input).

    Example:
        >>> q = sinkhorn_knopp(torch.tensor([[1.0, 0.0], [0.9, 0.0]]), epsilon=0.5, iterations=100)
        >>> q.sum(dim=1), q.sum(dim=0)  # rows sum to 1, columns to N / K = 1
        (tensor([1., 1.]), tensor([1., 1.]))
    """
    sizes = check_shape(scores, "N K", name="sinkhorn_knopp: scores")
    if not epsilon > 0:
        raise ValueError(f"sinkhorn_knopp: epsilon must be > 0, got {epsilon}")
    if iterations < 1:
        raise ValueError(f"sinkhorn_knopp: iterations must be >= 1, got {iterations}")
    n, k = sizes["N"], sizes["K"]
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=scores.device.type, enabled=False):
        log_p = scores.detach().to(dtype)
        log_p = (log_p - log_p.max()) / epsilon
        log_p = log_p - torch.logsumexp(log_p.flatten(), dim=0)  # total mass 1
        log_col, log_row = math.log(k), math.log(n)
        for _ in range(iterations):
            log_p = log_p - (torch.logsumexp(log_p, dim=0, keepdim=True) + log_col)  # each prototype: 1 / K
            log_p = log_p - (torch.logsumexp(log_p, dim=1, keepdim=True) + log_row)  # each sample: 1 / N
        return torch.exp(log_p + log_row)


def swav_loss(scores_views: torch.Tensor, codes: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SwAV's swapped prediction loss (Caron et al. 2020).

    Every view ``j`` predicts the code of every other view ``i``: the loss is the batch-mean cross-entropy between
    ``codes[i]`` and ``softmax(scores_views[j] / temperature)``, averaged over all pairs ``i != j``. Codes come from
    :func:`sinkhorn_knopp` on the (detached) scores of the views that get codes, usually only the global crops,
    which are then the first ``V_c`` views of ``scores_views``. ``codes`` is detached here.

    Args:
        scores_views: ``(V, N, K)`` prototype scores (cosine similarities of normalised features and prototypes).
        codes: ``(V_c, N, K)`` target codes, rows summing to 1; ``V_c <= V`` usually.
        temperature: softmax temperature of the predictions.

    Returns:
        Scalar loss.

    Example:
        >>> scores = torch.randn(2, 4, 3)
        >>> codes = torch.stack([sinkhorn_knopp(s) for s in scores])
        >>> loss = swav_loss(torch.zeros(2, 4, 3), codes)  # uniform predictions pay log K
        >>> torch.allclose(loss, torch.log(torch.tensor(3.0)))
        True
    """
    sizes = check_shape(scores_views, "V N K", name="swav_loss: scores_views")
    check_shape(codes, "V_c N K", sizes, name="swav_loss: codes")
    if not temperature > 0:
        raise ValueError(f"swav_loss: temperature must be > 0, got {temperature}")
    scores = scores_views.float() if scores_views.dtype in (torch.float16, torch.bfloat16) else scores_views
    log_probs = F.log_softmax(scores / temperature, dim=-1)
    return cross_view_cross_entropy(codes.detach().to(log_probs.dtype), log_probs)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, cosine: bool, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid per row (largest dot product for cosine; smallest distance otherwise)."""
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    c_sq = (centroids * centroids).sum(dim=1)
    for start in range(0, x.shape[0], chunk):
        dots = x[start : start + chunk] @ centroids.T
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin
        out[start : start + chunk] = dots.argmax(dim=1) if cosine else (c_sq - 2 * dots).argmin(dim=1)
    return out


def kmeans(
    x: torch.Tensor,
    k: int,
    iterations: int = 20,
    *,
    generator: torch.Generator | None,
    metric: str = "euclidean",
    init: str | torch.Tensor = "k-means++",
    perturbation: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with DeepCluster's empty-cluster reassignment (Caron et al. 2018), seeded.

    Initial centroids are ``k`` distinct samples drawn with ``generator``: by k-means++ seeding (Arthur &
    Vassilvitskii 2007: each next one with probability proportional to its squared distance to the nearest chosen
    one; the default) or uniformly (``"random"``, as faiss in DeepCluster); or ``init`` gives them. Each iteration assigns
    every sample to its nearest centroid, moves each centroid to the mean of its samples, then reassigns every
    empty cluster: the currently largest cluster is split in two, the empty centroid becoming a copy of the largest
    one plus a small random offset (``perturbation`` times the centroid's norm, drawn with ``generator``) and the
    largest moving by the opposite offset, so the next assignment divides its samples between them. A final
    assignment matches the returned centroids; a cluster can still be empty there only if the data cannot be
    split (e.g. fewer distinct points than ``k``).

    ``"cosine"``: spherical k-means: samples and centroids are L2-normalised and assigned by largest cosine.
    ``"euclidean"``: squared euclidean distance on ``x`` as given (DeepCluster whitens and normalises first).
    Assignment runs in chunks of rows, so large ``N`` fits in memory. No gradient is recorded.

    Args:
        x: ``(N, D)`` features, ``N >= k``.
        k: number of clusters.
        iterations: Lloyd iterations (0 returns the initial centroids and their assignment).
        generator: a CPU ``torch.Generator`` for the initial draws and the split offsets (``None``: global RNG).
        metric: one of :data:`KMEANS_METRICS`.
        init: one of :data:`KMEANS_INITS`, or ``(k, D)`` initial centroids (e.g. the previous epoch's).
        perturbation: relative size of the split offset.

    Returns:
        ``(centroids (k, D), assignments (N,) int64)``; centroids in ``x``'s dtype (unit norm for cosine).

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 1.0]])
        >>> centroids, assignments = kmeans(x, 2, 5, generator=torch.Generator().manual_seed(0))
        >>> bool(assignments[0] == assignments[1] != assignments[2] == assignments[3])
        True
        >>> sorted(centroids.tolist())
        [[0.0, 0.5], [10.0, 0.5]]
    """
    sizes = check_shape(x, "N D", name="kmeans: x")
    n, d = sizes["N"], sizes["D"]
    if metric not in KMEANS_METRICS:
        raise ValueError(f"kmeans: metric must be one of {KMEANS_METRICS}, got {metric!r}")
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be in [1, N={n}], got {k}")
    if iterations < 0:
        raise ValueError(f"kmeans: iterations must be >= 0, got {iterations}")
    cosine = metric == "cosine"
    with torch.no_grad():
        data = x.detach()
        if data.dtype in (torch.float16, torch.bfloat16):
            data = data.float()
        if cosine:
            data = F.normalize(data, dim=1)
        if isinstance(init, str):
            if init not in KMEANS_INITS:
                raise ValueError(
                    f"kmeans: init must be one of {KMEANS_INITS} or a (k, D) tensor, got {init!r}"
                )
            if init == "random":
                centroids = data[torch.randperm(n, generator=generator)[:k].to(data.device)].clone()
            else:
                centroids = _kmeans_plus_plus(data, k, generator)
        else:
            check_shape(init, "k D", {"k": k, "D": d}, name="kmeans: init")
            centroids = init.detach().to(data).clone()
            if cosine:
                centroids = F.normalize(centroids, dim=1)
        for _ in range(iterations):
            assignments = _nearest(data, centroids, cosine)
            counts = torch.bincount(assignments, minlength=k)
            sums = torch.zeros_like(centroids).index_add_(0, assignments, data)
            nonempty = counts > 0
            centroids[nonempty] = sums[nonempty] / counts[nonempty, None].to(data.dtype)
            if cosine:
                centroids = F.normalize(centroids, dim=1)
            centroids = _reassign_empty(centroids, counts, generator, perturbation, cosine)
        assignments = _nearest(data, centroids, cosine)
    return centroids.to(x.dtype), assignments


def pca_whitening(x: torch.Tensor, dim: int | None = None, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA whitening fitted on ``x`` (DeepCluster's step before k-means: PCA, whitening, then L2 normalisation).

    Returns ``(mean (D,), projection (D, d))`` such that ``(x - mean) @ projection`` has (up to ``eps``) identity
    covariance over ``x``'s rows: the ``d`` leading principal directions, each divided by the square root of its
    variance plus ``eps`` times the largest variance. Without it, a direction that dominates every embedding (a
    near-constant component after a partial collapse) also dominates the clustering, and the clusters follow noise
    in it; whitened, every retained direction weighs the same.

    Args:
        x: ``(N, D)`` samples, ``N >= 2``.
        dim: directions kept (``d``); ``None``: ``min(D, N - 1)``, all that the samples can span.
        eps: variance floor relative to the largest variance (directions with none are not blown up without limit).

    Returns:
        float tensors in ``x``'s dtype (float32 for half inputs), on ``x``'s device.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.2], [2.0, 0.2]])
        >>> mean, proj = pca_whitening(x)
        >>> white = (x - mean) @ proj
        >>> torch.allclose(white.T @ white / 3, torch.eye(2), atol=1e-4)
        True
    """
    sizes = check_shape(x, "N D", name="pca_whitening: x")
    n, d_in = sizes["N"], sizes["D"]
    if n < 2:
        raise ValueError(f"pca_whitening: need at least 2 samples, got x of shape {tuple(x.shape)}")
    keep = min(d_in, n - 1) if dim is None else int(dim)
    if not 1 <= keep <= d_in:
        raise ValueError(f"pca_whitening: dim must be in [1, D={d_in}] or None, got {dim}")
    if not eps > 0:
        raise ValueError(f"pca_whitening: eps must be > 0, got {eps}")
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    with torch.no_grad():
        data = x.detach().double()
        mean = data.mean(dim=0)
        centred = data - mean
        variances, vectors = torch.linalg.eigh(centred.T @ centred / (n - 1))  # ascending
        variances, vectors = variances.flip(0)[:keep].clamp(min=0), vectors.flip(1)[:, :keep]
        scale = (variances + eps * variances[0].clamp(min=torch.finfo(torch.float64).tiny)).rsqrt()
        projection = vectors * scale
    return mean.to(dtype), projection.to(dtype)


def _kmeans_plus_plus(data: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k-means++ seeding: ``k`` rows of ``data``, each next one drawn with probability proportional to its squared
    distance to the nearest row chosen so far (uniformly among the unchosen rows when all distances are 0)."""
    n = data.shape[0]
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    nearest_sq = ((data - data[chosen[0]]) ** 2).sum(dim=1)
    for _ in range(1, k):
        weights = nearest_sq.double().cpu().clamp(min=0)
        if not float(weights.sum()) > 0:
            weights = torch.ones(n, dtype=torch.float64)
            weights[chosen] = 0
        index = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(index)
        nearest_sq = torch.minimum(nearest_sq, ((data - data[index]) ** 2).sum(dim=1))
    return data[chosen].clone()


def _reassign_empty(
    centroids: torch.Tensor,
    counts: torch.Tensor,
    generator: torch.Generator | None,
    perturbation: float,
    cosine: bool,
) -> torch.Tensor:
    """Split the largest cluster into each empty one (counts are updated as if the split halves it)."""
    counts = counts.clone()
    for empty in torch.nonzero(counts == 0).flatten().tolist():
        largest = int(counts.argmax())
        base = centroids[largest].clone()
        direction = torch.randn(centroids.shape[1], generator=generator, dtype=centroids.dtype)
        direction = F.normalize(direction, dim=0).to(centroids.device)
        offset = perturbation * max(float(base.norm()), 1.0) * direction
        centroids[empty], centroids[largest] = base + offset, base - offset
        if cosine:
            centroids[[empty, largest]] = F.normalize(centroids[[empty, largest]], dim=1)
        half = int(counts[largest]) // 2
        counts[empty], counts[largest] = half, int(counts[largest]) - half
    return centroids


def inverse_size_weights(assignments: torch.Tensor, k: int) -> torch.Tensor:
    """Per-sample weights inversely proportional to cluster size (DeepCluster's uniform sampling over clusters).

    Sample ``i`` in cluster ``c`` gets ``1 / (C * size_c)`` with ``C`` the number of non-empty clusters: the
    weights sum to 1 and every non-empty cluster holds mass ``1 / C``. Sampling ``N`` indices with
    ``torch.utils.data.WeightedRandomSampler(weights, N)`` (or ``torch.multinomial``) draws clusters uniformly and
    samples uniformly within them, as DeepCluster's sampler does; ``weights * N`` (mean 1) weighs a per-sample loss
    to the same effect.

    Args:
        assignments: ``(N,)`` integer cluster index per sample, in ``[0, k)``.
        k: number of clusters.

    Returns:
        ``(N,)`` float32 weights on ``assignments``' device.

    Example:
        >>> inverse_size_weights(torch.tensor([0, 0, 0, 2]), k=3)
        tensor([0.1667, 0.1667, 0.1667, 0.5000])
    """
    check_shape(assignments, "N", name="inverse_size_weights: assignments")
    if assignments.dtype.is_floating_point or assignments.dtype == torch.bool:
        raise ValueError(f"inverse_size_weights: assignments must be integer, got {assignments.dtype}")
    if k < 1:
        raise ValueError(f"inverse_size_weights: k must be >= 1, got {k}")
    if assignments.numel() == 0:
        return torch.zeros(0, device=assignments.device)
    low, high = int(assignments.min()), int(assignments.max())
    if low < 0 or high >= k:
        raise ValueError(
            f"inverse_size_weights: assignments must be in [0, k={k}), got values in [{low}, {high}]"
        )
    counts = torch.bincount(assignments.long(), minlength=k).float()
    num_nonempty = int((counts > 0).sum())
    return 1.0 / (num_nonempty * counts[assignments.long()])
