"""Tests for stssl.losses.clustering: Sinkhorn marginals, swapped prediction, k-means and inverse-size weights."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from stssl.losses.clustering import inverse_size_weights, kmeans, pca_whitening, sinkhorn_knopp, swav_loss

F64 = torch.float64


def rand(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def naive_sinkhorn(scores: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """SwAV's linear-domain loop, written out per entry."""
    n, k = scores.shape
    p = [[math.exp(scores[i, j].item() / eps) for j in range(k)] for i in range(n)]
    total = sum(map(sum, p))
    p = [[v / total for v in row] for row in p]
    for _ in range(iterations):
        for j in range(k):
            col = sum(p[i][j] for i in range(n))
            for i in range(n):
                p[i][j] /= col * k
        for i in range(n):
            row = sum(p[i])
            p[i] = [v / (row * n) for v in p[i]]
    return torch.tensor(p, dtype=F64) * n


# --- Sinkhorn-Knopp --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k", "iterations"), [(6, 3, 1), (5, 4, 3), (3, 7, 10)])
def test_sinkhorn_matches_naive_loop(n: int, k: int, iterations: int) -> None:
    scores = 0.1 * rand(n, k, seed=n * k)
    torch.testing.assert_close(
        sinkhorn_knopp(scores, 0.05, iterations), naive_sinkhorn(scores, 0.05, iterations)
    )


def test_sinkhorn_uniform_input_gives_uniform_codes() -> None:
    q = sinkhorn_knopp(torch.full((8, 4), 0.3), epsilon=0.05, iterations=3)
    torch.testing.assert_close(q, torch.full((8, 4), 0.25))


def test_sinkhorn_marginals_converge_to_equipartition() -> None:
    n, k = 32, 4
    scores = rand(n, k, seed=1)
    scores[:, 0] += 2.0  # a strongly preferred prototype
    col_errors = []
    for iterations in (1, 3, 10, 100):
        q = sinkhorn_knopp(scores, epsilon=0.5, iterations=iterations)
        torch.testing.assert_close(q.sum(dim=1), torch.ones(n, dtype=F64))  # exact after each round
        assert (q >= 0).all()
        col_errors.append((q.sum(dim=0) - n / k).abs().max().item())
    before = torch.softmax(scores / 0.5, dim=1).sum(dim=0)
    assert (before - n / k).abs().max() > 5  # the raw softmax is far from balanced
    assert col_errors == sorted(col_errors, reverse=True)  # monotone here
    assert col_errors[-1] < 1e-9


def test_sinkhorn_is_stable_shift_invariant_and_float32_under_autocast() -> None:
    scores = rand(16, 5, seed=2, dtype=torch.float32)
    big = sinkhorn_knopp(1e4 * scores, epsilon=0.01, iterations=3)  # exp(1e6) in the linear domain
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big.sum(dim=1), torch.ones(16))
    torch.testing.assert_close(sinkhorn_knopp(scores.double() + 100.0), sinkhorn_knopp(scores.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = sinkhorn_knopp(scores.bfloat16())
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, sinkhorn_knopp(scores.bfloat16().float()))
    assert sinkhorn_knopp(scores.double()).dtype == F64
    assert not sinkhorn_knopp(scores.requires_grad_()).requires_grad


def test_sinkhorn_bad_inputs() -> None:
    with pytest.raises(ValueError, match="sinkhorn_knopp: scores: expected shape"):
        sinkhorn_knopp(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        sinkhorn_knopp(torch.randn(2, 3), epsilon=0.0)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        sinkhorn_knopp(torch.randn(2, 3), iterations=0)


# --- SwAV ------------------------------------------------------------------------------------------------------


def naive_swav(scores: torch.Tensor, codes: torch.Tensor, tau: float) -> float:
    v, n, k = scores.shape
    total, pairs = 0.0, 0
    for i in range(codes.shape[0]):
        for j in range(v):
            if i == j:
                continue
            for b in range(n):
                logits = [scores[j, b, c].item() / tau for c in range(k)]
                log_norm = math.log(sum(math.exp(x) for x in logits))
                total += -sum(codes[i, b, c].item() * (logits[c] - log_norm) for c in range(k)) / n
            pairs += 1
    return total / pairs


@pytest.mark.parametrize(("v", "v_c"), [(2, 2), (4, 2), (3, 3)])
def test_swav_loss_matches_naive_loop(v: int, v_c: int) -> None:
    scores = rand(v, 5, 3, seed=v)
    codes = torch.stack([sinkhorn_knopp(scores[i]) for i in range(v_c)])
    assert swav_loss(scores, codes, 0.1).item() == pytest.approx(naive_swav(scores, codes, 0.1), rel=1e-10)


def test_swav_loss_limits_and_gradients() -> None:
    # uniform predictions pay log K whatever the codes; predictions equal to one-hot codes of the other view pay ~0
    codes = torch.stack([sinkhorn_knopp(rand(6, 4, seed=s)) for s in (1, 2)])
    assert swav_loss(torch.zeros(2, 6, 4, dtype=F64), codes).item() == pytest.approx(math.log(4))
    onehot = torch.eye(4, dtype=F64)[torch.tensor([0, 1, 2, 3, 0, 1])].expand(2, 6, 4)
    assert swav_loss(100 * onehot, onehot, temperature=1.0).item() == pytest.approx(0.0, abs=1e-12)

    scores = rand(3, 4, 5, seed=3).requires_grad_()
    codes = torch.stack([sinkhorn_knopp(s) for s in scores[:2].detach()])
    assert torch.autograd.gradcheck(lambda s: swav_loss(s, codes, 0.5), (scores,))
    swav_loss(scores, codes).backward()
    assert (
        scores.grad is not None
        and torch.isfinite(scores.grad).all()
        and (scores.grad.abs().sum(dim=(1, 2)) > 0).all()
    )


def test_swav_loss_bad_inputs() -> None:
    with pytest.raises(ValueError, match="swav_loss: codes: expected shape"):
        swav_loss(torch.randn(2, 4, 3), torch.rand(2, 4, 5))
    with pytest.raises(ValueError, match="swav_loss: scores_views: expected shape"):
        swav_loss(torch.randn(4, 3), torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        swav_loss(torch.randn(2, 4, 3), torch.rand(2, 4, 3), temperature=-1.0)


# --- k-means ---------------------------------------------------------------------------------------------------


def blobs(per: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated 2-D blobs (spread 0.3 around centres 10 apart) and their labels."""
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    g = torch.Generator().manual_seed(seed)
    x = centres.repeat_interleave(per, dim=0) + 0.3 * torch.randn(3 * per, 2, generator=g)
    return x, torch.arange(3).repeat_interleave(per)


def same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    return all((a[i] == a[j]) == (b[i] == b[j]) for i, j in itertools.combinations(range(len(a)), 2))


def naive_lloyd(x: torch.Tensor, centroids: torch.Tensor, iterations: int) -> tuple[torch.Tensor, list[int]]:
    c = [row.clone() for row in centroids]
    assign: list[int] = []
    for _ in range(iterations + 1):
        assign = [min(range(len(c)), key=lambda j, p=p: float(((p - c[j]) ** 2).sum())) for p in x]
        if _ == iterations:
            break
        for j in range(len(c)):
            members = [x[i] for i in range(len(x)) if assign[i] == j]
            c[j] = torch.stack(members).mean(dim=0)
    return torch.stack(c), assign


def test_kmeans_matches_naive_lloyd_from_the_same_init() -> None:
    x = rand(20, 3, seed=1)
    init = x[:4].clone()
    centroids, assignments = kmeans(x, 4, 5, generator=torch.Generator().manual_seed(0), init=init)
    ref_centroids, ref_assign = naive_lloyd(x, init, 5)
    assert assignments.tolist() == ref_assign
    torch.testing.assert_close(centroids, ref_centroids)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_kmeans_recovers_blobs_and_is_deterministic(metric: str, init: str) -> None:
    x, labels = blobs()
    if metric == "cosine":  # three directions instead of three places
        x = x + torch.tensor([3.0, 3.0])
        x = torch.cat([x[:10] * torch.tensor([1.0, -1.0]), x[10:20], -x[20:]])
    recovered = 0
    for seed in range(5):
        centroids, assignments = kmeans(
            x, 3, 10, generator=torch.Generator().manual_seed(seed), metric=metric, init=init
        )
        assert centroids.shape == (3, 2) and assignments.shape == (30,) and assignments.dtype == torch.long
        if metric == "cosine":
            torch.testing.assert_close(centroids.norm(dim=1), torch.ones(3))
        again = kmeans(x, 3, 10, generator=torch.Generator().manual_seed(seed), metric=metric, init=init)
        assert torch.equal(again[0], centroids) and torch.equal(again[1], assignments)
        recovered += same_partition(assignments, labels)
    assert recovered >= (5 if init == "k-means++" else 3)


def test_kmeans_reassigns_empty_clusters_by_splitting_the_largest() -> None:
    x, labels = blobs()
    # two centroids on the same point and one far from all data: two clusters start empty
    init = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1000.0, 1000.0]])
    _, stuck = kmeans(x, 3, 0, generator=torch.Generator().manual_seed(0), init=init)
    assert torch.bincount(stuck, minlength=3).eq(0).sum() == 2  # without iterations nothing is fixed
    centroids, assignments = kmeans(x, 3, 10, generator=torch.Generator().manual_seed(0), init=init)
    assert torch.bincount(assignments, minlength=3).min() > 0
    assert same_partition(assignments, labels)
    assert (centroids.abs() < 12).all()  # the far centroid was moved onto the data


def test_kmeans_with_duplicate_points_and_bad_inputs() -> None:
    x = torch.tensor([[1.0, 1.0]] * 5 + [[2.0, 2.0]] * 5)
    centroids, assignments = kmeans(x, 3, 5, generator=torch.Generator().manual_seed(0))
    assert (
        torch.isfinite(centroids).all() and assignments.max() < 3
    )  # only two distinct points: one may stay empty
    with pytest.raises(ValueError, match=r"kmeans: k must be in \[1, N=10\]"):
        kmeans(x, 11, generator=None)
    with pytest.raises(ValueError, match="kmeans: metric must be one of"):
        kmeans(x, 2, generator=None, metric="manhattan")
    with pytest.raises(ValueError, match="kmeans: init must be one of"):
        kmeans(x, 2, generator=None, init="forgy")
    with pytest.raises(ValueError, match="kmeans: init: expected shape"):
        kmeans(x, 2, generator=None, init=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="kmeans: x: expected shape"):
        kmeans(torch.zeros(4), 2, generator=None)


# --- inverse-size weights --------------------------------------------------------------------------------------


def test_pca_whitening_matches_an_svd_reference_and_whitens() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    x = x + 3.0  # an offset common to every row, as in a partly collapsed embedding
    mean, proj = pca_whitening(x, eps=1e-12)
    white = (x - mean) @ proj
    torch.testing.assert_close(white.T @ white / 49, torch.eye(6, dtype=torch.float64))
    # reference: principal directions from the SVD of the centred data, scaled to unit variance (signs may differ)
    _, s, vt = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    ref = (x - x.mean(0)) @ vt.T / (s / 49**0.5)
    torch.testing.assert_close(white.abs(), ref.abs())
    mean2, proj2 = pca_whitening(x, dim=2)  # the two leading directions only
    assert proj2.shape == (6, 2)
    torch.testing.assert_close(((x - mean2) @ proj2).abs(), ref[:, :2].abs(), atol=1e-4, rtol=1e-4)


def test_pca_whitening_floors_empty_directions_and_rejects_bad_inputs() -> None:
    x = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 2.0, 1.0], [1.0, 2.0, 1.0]])  # no variance in the 3rd
    mean, proj = pca_whitening(x, dim=3)
    assert torch.isfinite(proj).all() and proj.dtype == torch.float32
    torch.testing.assert_close(mean, torch.tensor([0.5, 1.0, 1.0]))
    assert pca_whitening(x)[1].shape == (3, 3)  # min(D, N - 1) = 3
    assert pca_whitening(x.half())[1].dtype == torch.float32
    with pytest.raises(ValueError, match="pca_whitening: need at least 2 samples"):
        pca_whitening(x[:1])
    with pytest.raises(ValueError, match=r"pca_whitening: dim must be in \[1, D=3\]"):
        pca_whitening(x, dim=4)
    with pytest.raises(ValueError, match="pca_whitening: eps must be > 0"):
        pca_whitening(x, eps=0.0)
    with pytest.raises(ValueError, match="pca_whitening: x: expected shape"):
        pca_whitening(torch.zeros(4))


def test_inverse_size_weights_give_every_cluster_equal_mass() -> None:
    assignments = torch.tensor([0, 0, 0, 0, 1, 3, 3, 0])  # cluster 2 empty
    weights = inverse_size_weights(assignments, k=4)
    for i, c in enumerate(assignments.tolist()):
        assert weights[i].item() == pytest.approx(1 / (3 * int((assignments == c).sum())))
    assert weights.sum().item() == pytest.approx(1.0)
    mass = torch.zeros(4).index_add_(0, assignments, weights)
    torch.testing.assert_close(mass, torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3]))
    # sampling by the weights draws clusters about uniformly although cluster 0 holds 5 of 8 samples
    draws = torch.multinomial(weights, 6000, replacement=True, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(assignments[draws], minlength=4).float() / 6000
    torch.testing.assert_close(freq, torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3]), atol=0.03, rtol=0)


def test_inverse_size_weights_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"assignments must be in \[0, k=2\)"):
        inverse_size_weights(torch.tensor([0, 2]), k=2)
    with pytest.raises(ValueError, match="assignments must be integer"):
        inverse_size_weights(torch.tensor([0.0, 1.0]), k=2)
    with pytest.raises(ValueError, match="inverse_size_weights: assignments: expected shape"):
        inverse_size_weights(torch.zeros(2, 2, dtype=torch.long), k=2)
