"""Tests for stssl.losses.contrastive against naive loops and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from stssl.losses.contrastive import (
    MoCoQueue,
    byol_loss,
    cpc_loss,
    dino_loss,
    info_nce,
    nt_xent,
    update_center,
)

F64 = torch.float64


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    views = [*z1, *z2]
    n = len(z1)
    total = 0.0
    for i, anchor in enumerate(views):
        partner = (i + n) % (2 * n)
        denom = sum(math.exp(cos(anchor, other) / tau) for j, other in enumerate(views) if j != i)
        total += -math.log(math.exp(cos(anchor, views[partner]) / tau) / denom)
    return total / (2 * n)


def naive_info_nce(
    q: torch.Tensor, k: torch.Tensor, negatives: list[list[torch.Tensor]], tau: float
) -> float:
    total = 0.0
    for i in range(len(q)):
        pos = math.exp(cos(q[i], k[i]) / tau)
        denom = pos + sum(math.exp(cos(q[i], neg) / tau) for neg in negatives[i])
        total += -math.log(pos / denom)
    return total / len(q)


# --- NT-Xent ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5])
def test_nt_xent_matches_naive_loop(n: int) -> None:
    z1, z2 = rand(n, 6, seed=1), rand(n, 6, seed=2)
    assert nt_xent(z1, z2, temperature=0.3).item() == pytest.approx(naive_nt_xent(z1, z2, 0.3), rel=1e-10)


def test_nt_xent_closed_forms() -> None:
    n, tau = 4, 0.2
    eye = torch.eye(n, dtype=F64)
    # aligned and mutually orthogonal pairs: positive cos 1, 2N - 2 negatives at cos 0
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    assert nt_xent(eye, 3 * eye, tau).item() == pytest.approx(expected, rel=1e-12)
    # all views identical: the positive is one of 2N - 1 equal logits
    same = torch.ones(n, 3, dtype=F64)
    assert nt_xent(same, same, tau).item() == pytest.approx(math.log(2 * n - 1), rel=1e-12)
    # a single pair has no negatives
    assert nt_xent(rand(1, 3), rand(1, 3, seed=1)).item() == pytest.approx(0.0, abs=1e-12)


def test_nt_xent_is_symmetric_scale_invariant_and_differentiable() -> None:
    z1, z2 = rand(3, 5, seed=3), rand(3, 5, seed=4)
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(z2, z1))
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(2 * z1, 0.5 * z2))
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z1, z2))


def test_nt_xent_with_gather_equals_the_global_batch_loss_and_gradient() -> None:
    """Simulated 2-rank DDP: each rank's loss on its chunk against the gathered batch; their mean (what DDP's
    gradient averaging optimises) equals the single-process loss on the whole batch, and so does the gradient."""
    world, n = 2, 3
    z1_full, z2_full = (
        rand(world * n, 4, seed=5).requires_grad_(),
        rand(world * n, 4, seed=6).requires_grad_(),
    )
    full = nt_xent(z1_full, z2_full, 0.5)
    grads_full = torch.autograd.grad(full, (z1_full, z2_full))

    unit = torch.nn.functional.normalize
    losses = []
    for rank in range(world):
        chunk = slice(rank * n, (rank + 1) * n)
        # a fake all-gather with gradients: the local (normalised) rows in place `rank`, the other ranks' rows
        # from the full batch (called for z1, then for z2)
        sources = iter([unit(z1_full, dim=1), unit(z2_full, dim=1)])

        def gather(x: torch.Tensor, rank: int = rank, sources=sources) -> torch.Tensor:
            source = next(sources)
            return torch.cat([x if r == rank else source[r * n : (r + 1) * n] for r in range(world)])

        losses.append(nt_xent(z1_full[chunk], z2_full[chunk], 0.5, gather=gather, rank=rank))
    mean = torch.stack(losses).mean()
    torch.testing.assert_close(mean, full)
    grads = torch.autograd.grad(mean, (z1_full, z2_full))
    for ours, ref in zip(grads, grads_full, strict=True):
        torch.testing.assert_close(ours, ref)


def test_nt_xent_bad_inputs_name_the_argument() -> None:
    with pytest.raises(ValueError, match="nt_xent: z2: expected shape"):
        nt_xent(torch.randn(4, 8), torch.randn(3, 8))
    with pytest.raises(ValueError, match="nt_xent: z1: expected shape"):
        nt_xent(torch.randn(4, 8, 1), torch.randn(4, 8))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8), temperature=0.0)
    with pytest.raises(ValueError, match="gather must return"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8), gather=lambda x: x[:3])


def test_nt_xent_upcasts_half_precision() -> None:
    z1, z2 = rand(4, 8, seed=7).float(), rand(4, 8, seed=8).float()
    loss = nt_xent(z1.bfloat16(), z2.bfloat16())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(nt_xent(z1, z2).item(), rel=2e-2)


# --- InfoNCE and the MoCo queue --------------------------------------------------------------------------------


def test_info_nce_in_batch_matches_naive_loop_and_closed_form() -> None:
    q, k = rand(4, 6, seed=1), rand(4, 6, seed=2)
    negatives = [[k[j] for j in range(4) if j != i] for i in range(4)]
    assert info_nce(q, k, temperature=0.2).item() == pytest.approx(
        naive_info_nce(q, k, negatives, 0.2), rel=1e-10
    )
    eye = torch.eye(5, dtype=F64)
    expected = math.log(1 + 4 * math.exp(-1 / 0.1))
    assert info_nce(eye, eye, temperature=0.1).item() == pytest.approx(expected, rel=1e-12)


def test_info_nce_with_queue_and_per_query_negatives_match_naive_loop() -> None:
    q, k = rand(3, 5, seed=3), rand(3, 5, seed=4)
    queue = rand(7, 5, seed=5)
    shared = [list(queue) for _ in range(3)]
    assert info_nce(q, k, queue, 0.07).item() == pytest.approx(naive_info_nce(q, k, shared, 0.07), rel=1e-10)
    per_query = rand(3, 2, 5, seed=6)
    own = [list(per_query[i]) for i in range(3)]
    assert info_nce(q, k, per_query, 0.5).item() == pytest.approx(naive_info_nce(q, k, own, 0.5), rel=1e-10)


def test_info_nce_gradients_reach_query_and_keys() -> None:
    q, k, neg = (rand(3, 4, seed=s).requires_grad_() for s in (1, 2, 3))
    assert torch.autograd.gradcheck(lambda a, b, c: info_nce(a, b, c, 0.5), (q, k, neg))
    loss = info_nce(q, k, neg)
    loss.backward()
    assert all(
        t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in (q, k, neg)
    )


def test_info_nce_bad_shapes_name_the_argument() -> None:
    with pytest.raises(ValueError, match="info_nce: positive_key: expected shape"):
        info_nce(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match="info_nce: negative_keys: expected shape"):
        info_nce(torch.randn(3, 4), torch.randn(3, 4), torch.randn(10, 5))
    with pytest.raises(ValueError, match="info_nce: negative_keys: expected shape"):
        info_nce(torch.randn(3, 4), torch.randn(3, 4), torch.randn(2, 10, 4))


def naive_queue(size: int, initial: torch.Tensor, batches: list[torch.Tensor]) -> tuple[torch.Tensor, int]:
    queue, ptr = initial.clone(), 0
    for batch in batches:
        for key in batch:
            queue[ptr] = key / key.norm()
            ptr = (ptr + 1) % size
    return queue, ptr


@pytest.mark.parametrize("batch_sizes", [[2, 2, 2], [3, 4], [6], [11, 1], [1, 13, 2]])
def test_moco_queue_matches_one_at_a_time_pushes(batch_sizes: list[int]) -> None:
    size = 5
    queue = MoCoQueue(dim=3, size=size, seed=1)
    initial = queue.keys
    torch.testing.assert_close(initial.norm(dim=1), torch.ones(size))
    batches = [rand(b, 3, seed=10 + i).float() for i, b in enumerate(batch_sizes)]
    for batch in batches:
        queue.enqueue(batch)
    expected, ptr = naive_queue(size, initial, batches)
    torch.testing.assert_close(queue.keys, expected)
    assert int(queue.ptr) == ptr
    assert int(queue.filled) == min(sum(batch_sizes), size)


def test_moco_queue_is_checkpointed_and_safe_to_enqueue_before_backward() -> None:
    queue = MoCoQueue(dim=4, size=6)
    queue.enqueue(rand(4, 4).float())
    state = queue.state_dict()
    assert set(state) == {"queue", "ptr", "filled"}
    restored = MoCoQueue(dim=4, size=6, seed=99)
    restored.load_state_dict(state)
    torch.testing.assert_close(restored.keys, queue.keys)
    assert int(restored.ptr) == 4 and int(restored.filled) == 4
    assert not torch.equal(MoCoQueue(4, 6, seed=99).keys, queue.keys)  # the state, not the seed, was restored

    q = rand(2, 4, seed=1).float().requires_grad_()
    k = rand(2, 4, seed=2).float()
    loss = info_nce(q, k, queue.keys)
    queue.enqueue(k)  # modifies the buffer in place; the loss holds a copy
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_moco_queue_bad_inputs() -> None:
    with pytest.raises(ValueError, match="dim and size must be >= 1"):
        MoCoQueue(dim=4, size=0)
    with pytest.raises(ValueError, match="MoCoQueue.enqueue: keys: expected shape"):
        MoCoQueue(dim=4, size=3).enqueue(torch.randn(2, 5))


# --- BYOL ------------------------------------------------------------------------------------------------------


def test_byol_loss_matches_naive_loop_and_limits() -> None:
    p, z = rand(4, 6, seed=1), rand(4, 6, seed=2)
    naive = sum(2 - 2 * cos(p[i], z[i]) for i in range(4)) / 4
    assert byol_loss(p, z).item() == pytest.approx(naive, rel=1e-12)
    assert byol_loss(p, 3 * p).item() == pytest.approx(0.0, abs=1e-12)
    assert byol_loss(p, -p).item() == pytest.approx(4.0, rel=1e-12)
    eye = torch.eye(4, dtype=F64)
    assert byol_loss(eye, eye.roll(1, dims=1)).item() == pytest.approx(2.0, rel=1e-12)


def test_byol_loss_stops_the_gradient_on_the_target() -> None:
    p, z = rand(3, 5, seed=1).requires_grad_(), rand(3, 5, seed=2).requires_grad_()
    byol_loss(p, z).backward()
    assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert z.grad is None
    assert torch.autograd.gradcheck(lambda a: byol_loss(a, z), (p.detach().clone().requires_grad_(),))
    with pytest.raises(ValueError, match="byol_loss: z: expected shape"):
        byol_loss(torch.randn(3, 5), torch.randn(4, 5))


# --- DINO ------------------------------------------------------------------------------------------------------


def naive_dino(
    student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor, ts: float, tt: float
) -> float:
    total, pairs = 0.0, 0
    for i in range(teacher.shape[0]):
        for j in range(student.shape[0]):
            if i == j:
                continue
            for b in range(teacher.shape[1]):
                t = [(teacher[i, b, c] - center[c]).item() / tt for c in range(teacher.shape[2])]
                s = [student[j, b, c].item() / ts for c in range(teacher.shape[2])]
                t_norm = math.log(sum(math.exp(v) for v in t))
                s_norm = math.log(sum(math.exp(v) for v in s))
                total += (
                    -sum(math.exp(tv - t_norm) * (sv - s_norm) for tv, sv in zip(t, s, strict=True))
                    / teacher.shape[1]
                )
            pairs += 1
    return total / pairs


@pytest.mark.parametrize(("v_s", "v_t"), [(2, 2), (5, 2), (1, 3), (3, 1)])
def test_dino_loss_matches_naive_loop(v_s: int, v_t: int) -> None:
    student, teacher, center = rand(v_s, 3, 4, seed=1), rand(v_t, 3, 4, seed=2), rand(4, seed=3)
    ours = dino_loss(student, teacher, center, 0.1, 0.04).item()
    assert ours == pytest.approx(naive_dino(student, teacher, center, 0.1, 0.04), rel=1e-10)


def test_dino_loss_limits_and_gradients() -> None:
    # a constant (after centring) teacher is uniform; a constant student then pays log K
    center = rand(6, seed=4)
    teacher = center.expand(2, 3, 6).clone()
    assert dino_loss(torch.full((4, 3, 6), 2.0, dtype=F64), teacher, center).item() == pytest.approx(
        math.log(6)
    )
    # the student matching the sharpened teacher in every other view attains the teacher's entropy
    t = rand(2, 3, 5, seed=5)
    student = t.flip(0) * (0.1 / 0.04)  # student view j = teacher view 1 - j
    q = torch.softmax(t / 0.04, dim=-1)
    entropy = -(q * q.log()).sum(-1).mean()
    assert dino_loss(student, t, torch.zeros(5, dtype=F64)).item() == pytest.approx(entropy.item(), rel=1e-9)

    s, te = rand(3, 2, 5, seed=6).requires_grad_(), rand(2, 2, 5, seed=7).requires_grad_()
    dino_loss(s, te, torch.zeros(5, dtype=F64)).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert te.grad is None  # the teacher is a target
    assert torch.autograd.gradcheck(
        lambda a: dino_loss(a, te, torch.zeros(5, dtype=F64)), (s.detach().clone().requires_grad_(),)
    )


def test_dino_loss_bad_inputs() -> None:
    with pytest.raises(ValueError, match="dino_loss: center: expected shape"):
        dino_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.zeros(5))
    with pytest.raises(ValueError, match="dino_loss: teacher_logits: expected shape"):
        dino_loss(torch.randn(2, 3, 4), torch.randn(2, 2, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="at least two views"):
        dino_loss(torch.randn(1, 3, 4), torch.randn(1, 3, 4), torch.zeros(4))


def test_update_center_is_a_pure_ema() -> None:
    center = rand(4, seed=1)
    before = center.clone()
    logits = rand(2, 3, 4, seed=2)
    new = update_center(center, logits, momentum=0.9)
    torch.testing.assert_close(new, 0.9 * before + 0.1 * logits.mean(dim=(0, 1)))
    torch.testing.assert_close(center, before)  # the input is untouched
    torch.testing.assert_close(update_center(center, logits, momentum=1.0), before)
    torch.testing.assert_close(update_center(center, logits, momentum=0.0), logits.mean(dim=(0, 1)))
    with pytest.raises(ValueError, match="momentum must be in"):
        update_center(center, logits, momentum=1.5)
    with pytest.raises(ValueError, match="update_center: teacher_logits: expected shape"):
        update_center(center, torch.randn(2, 3, 5))


# --- CPC -------------------------------------------------------------------------------------------------------


def naive_cpc(pred: torch.Tensor, z: torch.Tensor, tau: float) -> float:
    b_size, t_size, k_max, _ = pred.shape
    per_k = []
    for k in range(1, k_max + 1):
        terms = []
        for b in range(b_size):
            for t in range(t_size - k):
                p = pred[b, t, k - 1]
                scores = {
                    (b2, t2): float(p @ z[b2, t2]) / tau for b2 in range(b_size) for t2 in range(t_size)
                }
                log_norm = math.log(sum(math.exp(s) for s in scores.values()))
                terms.append(log_norm - scores[(b, t + k)])
        per_k.append(sum(terms) / len(terms))
    return sum(per_k) / k_max


@pytest.mark.parametrize(("b", "t", "k"), [(2, 4, 1), (3, 5, 3), (1, 3, 2)])
def test_cpc_loss_matches_naive_loop(b: int, t: int, k: int) -> None:
    pred, z = rand(b, t, k, 4, seed=1), rand(b, t, 4, seed=2)
    assert cpc_loss(pred, z, 0.7).item() == pytest.approx(naive_cpc(pred, z, 0.7), rel=1e-10)
    unit = torch.nn.functional.normalize
    assert cpc_loss(pred, z, 0.7, normalize=True).item() == pytest.approx(
        naive_cpc(unit(pred, dim=-1), unit(z, dim=-1), 0.7), rel=1e-10
    )


def test_cpc_loss_closed_form_ignores_steps_past_the_end_and_differentiates() -> None:
    b, t, d, score = 2, 4, 8, 3.0
    z = torch.eye(d, dtype=F64).view(b, t, d)  # B T orthonormal latents
    pred = torch.zeros(b, t, 2, d, dtype=F64)
    pred[:, :-1, 0] = score * z[:, 1:]  # exact next-step predictions
    pred[:, :-2, 1] = score * z[:, 2:]  # exact two-step predictions
    pred[:, -1] = 1e3  # past the end for both offsets: ignored
    pred[:, -2, 1] = -1e3
    expected = math.log(1 + (b * t - 1) * math.exp(-score))
    assert cpc_loss(pred, z).item() == pytest.approx(expected, rel=1e-12)

    p, zz = rand(2, 4, 2, 3, seed=3).requires_grad_(), rand(2, 4, 3, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, c: cpc_loss(a, c, 0.5), (p, zz))


def test_cpc_loss_bad_inputs() -> None:
    with pytest.raises(ValueError, match="cpc_loss: targets: expected shape"):
        cpc_loss(torch.randn(2, 4, 1, 3), torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="needs K < T=4"):
        cpc_loss(torch.randn(2, 4, 4, 3), torch.randn(2, 4, 3))


# --- learning, not just running --------------------------------------------------------------------------------


def test_nt_xent_training_separates_pairs() -> None:
    """Free embeddings of two noisy views of 8 items, trained with NT-Xent, end up retrieving each item's partner."""
    g = torch.Generator().manual_seed(0)
    items = torch.randn(8, 6, generator=g)
    proj = torch.nn.Linear(6, 4)
    torch.nn.init.normal_(proj.weight, generator=g)
    opt = torch.optim.Adam(proj.parameters(), lr=0.05)
    views = [items + 0.5 * torch.randn(8, 6, generator=g) for _ in range(2)]
    first = nt_xent(proj(views[0]), proj(views[1])).item()
    for _ in range(60):
        opt.zero_grad()
        loss = nt_xent(proj(views[0]), proj(views[1]))
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5
    z1, z2 = (torch.nn.functional.normalize(proj(v), dim=1) for v in views)
    assert (z1 @ z2.T).argmax(dim=1).eq(torch.arange(8)).float().mean() > 0.5
