"""Contrastive and non-contrastive self-supervised losses, as pure functions on embeddings.

- :func:`nt_xent`: SimCLR's normalised-temperature cross-entropy over ``2N`` views (``2N - 2`` negatives each).
- :func:`info_nce`: one-directional InfoNCE; in-batch negatives, a shared negative set (a MoCo queue) or
  per-query negatives.
- :class:`MoCoQueue`: the key queue of MoCo, a module with checkpointed buffers.
- :func:`byol_loss`: BYOL/SimSiam's ``2 - 2 cos(p, z)`` with the stop-gradient on the target done here.
- :func:`dino_loss` and :func:`update_center`: DINO's centred, sharpened teacher against the student, over all
  pairs of different views.
- :func:`cpc_loss`: CPC/DPC's InfoNCE over future time steps, negatives from other samples and time steps.

Similarities are cosine (inputs are L2-normalised here) except in :func:`cpc_loss`, whose log-bilinear score is a
plain dot product unless asked otherwise. Half-precision inputs (autocast) are upcast to float32 before the
similarities, so the softmaxes never run in bf16/fp16. Every loss is a scalar mean; none reduces across
processes itself: under DDP, callers gather what must be global (see :func:`nt_xent`, :class:`MoCoQueue` and
:func:`update_center`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.checks import check_shape

__all__ = [
    "nt_xent",
    "info_nce",
    "MoCoQueue",
    "byol_loss",
    "dino_loss",
    "update_center",
    "cpc_loss",
    "cross_view_cross_entropy",
]


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 -> float32 (so logits and softmaxes are computed in float32); other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_temperature(fn: str, name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{fn}: {name} must be > 0, got {value}")


def _default_rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    *,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rank: int | None = None,
) -> torch.Tensor:
    """SimCLR's NT-Xent loss (Chen et al. 2020): each of the ``2N`` views must pick its partner among the other
    ``2N - 1``.

    Embeddings are L2-normalised; the logits are cosine similarities over ``temperature``. Anchor ``z1[i]`` has
    positive ``z2[i]`` and negatives every other row of ``z1`` and ``z2`` (``2N - 2``), and symmetrically for
    ``z2[i]``; the loss is the cross-entropy averaged over all ``2N`` anchors, so both directions count equally.
    Any ``N >= 1`` works (``N = 1`` has no negatives and gives 0).

    Under DDP, pass ``gather``: a callable mapping a local ``(N, D)`` tensor to the ``(world_size * N, D)``
    concatenation over ranks in rank order, **with gradients** flowing back to every rank's part (it is called on
    the normalised ``z1``, then ``z2``), e.g. ``lambda x: torch.cat(torch.distributed.nn.functional.all_gather(x))``
    or, in a LightningModule, ``lambda x: self.all_gather(x, sync_grads=True).flatten(0, 1)``. The local anchors are then contrasted
    against all ``2 * world_size * N - 1`` other views; the mean of the per-rank losses (what DDP's gradient
    averaging optimises) equals the single-process loss on the whole global batch. ``rank`` locates the local
    rows (default: ``torch.distributed.get_rank()``, or 0 when not initialised). Every rank must pass the same
    ``N``.

    Args:
        z1: ``(N, D)`` embeddings of the first view.
        z2: ``(N, D)`` embeddings of the second view; ``z2[i]`` is the positive of ``z1[i]``.
        temperature: softmax temperature ``tau > 0``.
        gather: optional cross-process all-gather (see above).
        rank: this process's index among the gathered chunks.

    Returns:
        Scalar loss.

    Example:
        >>> z = torch.eye(4)
        >>> loss = nt_xent(z, z, temperature=0.5)  # aligned, orthogonal pairs: log(1 + (2N - 2) e^{-1/tau})
        >>> torch.allclose(loss, torch.log(1 + 6 * torch.exp(torch.tensor(-2.0))))
        True
    """
    sizes = check_shape(z1, "N D", name="nt_xent: z1")
    check_shape(z2, "N D", sizes, name="nt_xent: z2")
    _check_temperature("nt_xent", "temperature", temperature)
    n = sizes["N"]
    z1, z2 = F.normalize(_upcast(z1), dim=1), F.normalize(_upcast(z2), dim=1)
    anchors = torch.cat([z1, z2])  # (2N, D)
    if gather is None:
        m, offset = n, 0
        candidates = anchors
    else:
        z1_all, z2_all = gather(z1), gather(z2)
        m = z1_all.shape[0]
        if z1_all.shape != (m, sizes["D"]) or z2_all.shape != z1_all.shape or m % n:
            raise ValueError(
                f"nt_xent: gather must return (world_size * N, D) with N={n}, D={sizes['D']}, got "
                f"{tuple(z1_all.shape)} and {tuple(z2_all.shape)}"
            )
        offset = (_default_rank() if rank is None else rank) * n
        if not 0 <= offset <= m - n:
            raise ValueError(f"nt_xent: rank {offset // n} out of range for {m // n} gathered chunks")
        candidates = torch.cat([z1_all, z2_all])  # (2M, D)
    logits = anchors @ candidates.T / temperature  # (2N, 2M)
    local = torch.arange(n, device=z1.device) + offset
    self_index = torch.cat([local, local + m])
    positive = torch.cat([local + m, local])
    rows = torch.arange(2 * n, device=z1.device)
    logits = logits.index_put(
        (rows, self_index), torch.tensor(-math.inf, dtype=logits.dtype, device=logits.device)
    )
    return F.cross_entropy(logits, positive)


def info_nce(
    query: torch.Tensor,
    positive_key: torch.Tensor,
    negative_keys: torch.Tensor | None = None,
    temperature: float = 0.07,
) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018; MoCo's form, He et al. 2020): ``query[i]`` must pick ``positive_key[i]``
    among its negatives. Cosine similarities over ``temperature``; one direction only.

    Negatives:

    - ``negative_keys=None``: in-batch: the other ``N - 1`` positive keys (``F.cross_entropy`` over ``q k^T``).
    - ``(K, D)``: one shared set, e.g. :attr:`MoCoQueue.keys`; the logit of the positive comes first.
    - ``(N, M, D)``: ``M`` negatives per query.

    Gradients flow into every argument given; MoCo's keys come from a momentum encoder under ``no_grad`` and its
    queue holds no graph, so only the query branch learns there.

    Args:
        query: ``(N, D)``.
        positive_key: ``(N, D)``.
        negative_keys: ``None``, ``(K, D)`` or ``(N, M, D)``.
        temperature: softmax temperature ``tau > 0``.

    Returns:
        Scalar loss.

    Example:
        >>> q = torch.eye(3)
        >>> loss = info_nce(q, q, temperature=1.0)  # aligned, orthogonal: log(1 + (N - 1) e^{-1/tau})
        >>> torch.allclose(loss, torch.log(1 + 2 * torch.exp(torch.tensor(-1.0))))
        True
    """
    sizes = check_shape(query, "N D", name="info_nce: query")
    check_shape(positive_key, "N D", sizes, name="info_nce: positive_key")
    _check_temperature("info_nce", "temperature", temperature)
    q = F.normalize(_upcast(query), dim=1)
    k = F.normalize(_upcast(positive_key), dim=1)
    if negative_keys is None:
        logits = q @ k.T / temperature
        return F.cross_entropy(logits, torch.arange(sizes["N"], device=q.device))
    if negative_keys.dim() == 2:
        check_shape(negative_keys, "K D", sizes, name="info_nce: negative_keys")
        neg = q @ F.normalize(_upcast(negative_keys), dim=1).T  # (N, K)
    else:
        check_shape(negative_keys, "N M D", sizes, name="info_nce: negative_keys")
        neg = torch.einsum("nd,nmd->nm", q, F.normalize(_upcast(negative_keys), dim=2))
    pos = (q * k).sum(dim=1, keepdim=True)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(sizes["N"], dtype=torch.long, device=q.device))


class MoCoQueue(nn.Module):
    """MoCo's first-in-first-out queue of ``size`` L2-normalised keys, as checkpointed buffers.

    Starts filled with random unit vectors (seeded by ``seed``), as in MoCo; ``filled`` counts how many real keys
    have been written (at most ``size``). :meth:`enqueue` writes after the oldest entry and wraps around; a batch
    larger than the space left wraps, and one larger than the whole queue keeps its last ``size`` keys, exactly as
    if the keys had been pushed one at a time. The buffers (``queue``, ``ptr``, ``filled``) follow the module's
    device and are saved in its ``state_dict``.

    Order of use in a step: ``loss = info_nce(q, k, queue.keys)`` then ``queue.enqueue(k)``. :attr:`keys` is a
    copy, so enqueuing before ``backward`` is safe. Under DDP, enqueue the keys gathered from all ranks (the same
    on every rank, keeping the queues identical); no gradient is needed.

    Args:
        dim: key dimension ``D``.
        size: number of keys ``K`` the queue holds.
        seed: seed of the random initial keys.

    Example:
        >>> queue = MoCoQueue(dim=2, size=3)
        >>> queue.enqueue(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
        >>> queue.keys[:2]
        tensor([[0.6000, 0.8000],
                [0.0000, 1.0000]])
        >>> queue.enqueue(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))  # wraps around
        >>> queue.keys, int(queue.ptr), int(queue.filled)
        (tensor([[-1.,  0.],
                [ 0.,  1.],
                [ 1.,  0.]]), 1, 3)
    """

    queue: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor

    def __init__(self, dim: int, size: int, seed: int = 0) -> None:
        super().__init__()
        if dim < 1 or size < 1:
            raise ValueError(f"MoCoQueue: dim and size must be >= 1, got dim={dim}, size={size}")
        self.dim = dim
        self.size = size
        init = torch.randn(size, dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("queue", F.normalize(init, dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def keys(self) -> torch.Tensor:
        """``(K, D)`` a detached copy of the queue (oldest entry at ``ptr``)."""
        return self.queue.detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Normalise ``keys`` ``(B, D)`` and write them over the oldest entries (no gradient)."""
        check_shape(keys, f"B {self.dim}", name="MoCoQueue.enqueue: keys")
        b = keys.shape[0]
        if b == 0:
            return
        keys = F.normalize(keys.detach().to(self.queue), dim=1)
        start = int(self.ptr)
        index = (start + torch.arange(b, device=self.queue.device)) % self.size
        if b > self.size:  # only the last `size` keys survive
            keys, index = keys[-self.size :], index[-self.size :]
        self.queue[index] = keys
        self.ptr.fill_((start + b) % self.size)
        self.filled.fill_(min(int(self.filled) + b, self.size))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.size}"


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss ``2 - 2 cos(p, z)`` (Grill et al. 2020), averaged over the batch; SimSiam's negative
    cosine up to ``2 - 2 x``.

    The stop-gradient is applied here: ``z`` is detached, so the target branch never receives a gradient from this
    loss even if the caller computed it with grad (SimSiam computes both branches with one encoder). Symmetrise
    by calling it twice with the views swapped: ``byol_loss(p1, z2) + byol_loss(p2, z1)``.

    Args:
        p: ``(N, D)`` online predictions.
        z: ``(N, D)`` target projections.

    Returns:
        Scalar in ``[0, 4]``.

    Example:
        >>> p = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
        >>> byol_loss(p, torch.tensor([[2.0, 0.0], [1.0, 0.0]]))  # cos 1 and cos 0
        tensor(1.)
    """
    check_shape(z, "N D", check_shape(p, "N D", name="byol_loss: p"), name="byol_loss: z")
    p = F.normalize(_upcast(p), dim=1)
    z = F.normalize(_upcast(z.detach()), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


def cross_view_cross_entropy(targets: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy ``-sum_K targets[i] * log_probs[j]`` over samples and over all view pairs ``i != j``.

    The shared core of :func:`dino_loss` and :func:`~stssl.losses.clustering.swav_loss`: view ``i`` of
    ``targets`` and view ``i`` of ``log_probs`` are the same augmented view, so they are not paired; with
    ``V_t <= V_s``, the ``V_t`` target views are the first ``V_t`` prediction views (DINO/SwAV's global crops).

    Args:
        targets: ``(V_t, B, K)`` target distributions (rows sum to 1).
        log_probs: ``(V_s, B, K)`` log-probabilities.

    Returns:
        Scalar: the mean over the ``V_t V_s - min(V_t, V_s)`` pairs of the batch-mean cross-entropy.
    """
    sizes = check_shape(targets, "V_t B K", name="cross_view_cross_entropy: targets")
    check_shape(log_probs, "V_s B K", sizes, name="cross_view_cross_entropy: log_probs")
    v_t, v_s = targets.shape[0], log_probs.shape[0]
    pairs = torch.ones(v_t, v_s, dtype=torch.bool, device=targets.device)
    pairs.fill_diagonal_(False)
    if not pairs.any():
        raise ValueError(
            "cross_view_cross_entropy: needs at least two views (one target and one other prediction)"
        )
    ce = (
        -torch.einsum("tbk,sbk->ts", targets, log_probs) / sizes["B"]
    )  # (V_t, V_s) batch-mean cross-entropies
    return ce[pairs].mean()


def dino_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    center: torch.Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> torch.Tensor:
    """DINO's self-distillation loss (Caron et al. 2021).

    The teacher's distribution is centred and sharpened, ``softmax((t - center) / teacher_temp)``, and detached;
    the student's is ``log_softmax(s / student_temp)``. The loss is the batch-mean cross-entropy averaged over
    every (teacher view ``i``, student view ``j``) pair with ``i != j``. Teacher views are the global crops, which
    must be the first ``V_t`` student views, in the same order (DINO's convention).

    Args:
        student_logits: ``(V_s, B, K)``, all views through the student.
        teacher_logits: ``(V_t, B, K)``, the global views through the teacher (``V_t <= V_s`` is usual; any
            sizes with at least one pair of different views work).
        center: ``(K,)`` running mean of teacher logits, from :func:`update_center`.
        student_temp: student temperature.
        teacher_temp: teacher temperature (lower: sharper targets).

    Returns:
        Scalar loss.

    Example:
        >>> loss = dino_loss(torch.zeros(4, 2, 8), torch.randn(2, 2, 8), torch.zeros(8))
        >>> torch.allclose(loss, torch.log(torch.tensor(8.0)))  # a uniform student pays log K whatever the teacher
        True
    """
    sizes = check_shape(student_logits, "V_s B K", name="dino_loss: student_logits")
    check_shape(teacher_logits, "V_t B K", sizes, name="dino_loss: teacher_logits")
    check_shape(center, "K", sizes, name="dino_loss: center")
    _check_temperature("dino_loss", "student_temp", student_temp)
    _check_temperature("dino_loss", "teacher_temp", teacher_temp)
    teacher = F.softmax((_upcast(teacher_logits.detach()) - _upcast(center.detach())) / teacher_temp, dim=-1)
    student = F.log_softmax(_upcast(student_logits) / student_temp, dim=-1)
    return cross_view_cross_entropy(teacher, student)


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """DINO's center EMA: ``momentum * center + (1 - momentum) * mean of teacher_logits over views and batch``.

    Pure: returns a new tensor and leaves ``center`` as it was (no gradient). Under DDP, pass logits gathered from
    all ranks (or all-reduce the batch mean yourself) so that the centers stay identical.

    Args:
        center: ``(K,)``.
        teacher_logits: ``(V_t, B, K)``.
        momentum: in ``[0, 1]``; 1 keeps the old center.

    Returns:
        ``(K,)`` the new center, in ``center``'s dtype.

    Example:
        >>> update_center(torch.zeros(2), torch.tensor([[[1.0, 3.0], [3.0, 5.0]]]), momentum=0.5)
        tensor([1., 2.])
    """
    sizes = check_shape(center, "K", name="update_center: center")
    check_shape(teacher_logits, "V B K", sizes, name="update_center: teacher_logits")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"update_center: momentum must be in [0, 1], got {momentum}")
    batch_mean = rearrange(teacher_logits.detach(), "V B K -> (V B) K").mean(dim=0)
    return (momentum * center.detach() + (1 - momentum) * batch_mean.to(center)).to(center.dtype)


def cpc_loss(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    *,
    normalize: bool = False,
) -> torch.Tensor:
    """CPC's InfoNCE over future steps (van den Oord et al. 2018; DPC, Han et al. 2019, for video).

    ``predictions[b, t, k - 1]`` is the prediction ``W_k c_t`` of the future latent ``targets[b, t + k]`` made from
    the context at step ``t`` (``k = 1 .. K``); predictions whose target lies past the end (``t + k >= T``) are
    ignored, so the ``T - k`` steps ``t < T - k`` count for offset ``k``. Each valid prediction must pick its true
    target among all ``B T`` targets of the batch: the ``B T - 1`` negatives are the other samples' latents at
    every step and the same sample's latents at the other steps. Scores are dot products over ``temperature``
    (CPC's log-bilinear ``z^T W_k c``), or cosines with ``normalize=True``. The loss is the mean over ``k`` of the
    mean cross-entropy over that offset's valid predictions, so every offset weighs the same.

    Args:
        predictions: ``(B, T, K, D)``, the predictor's outputs for offsets ``1 .. K``; ``K < T``.
        targets: ``(B, T, D)``, the encoder's latents ``z`` (not detached here: CPC trains both sides).
        temperature: divides the scores.
        normalize: L2-normalise both sides (cosine scores).

    Returns:
        Scalar loss.

    Example:
        >>> z = torch.eye(6).view(2, 3, 6)  # B T = 6 orthonormal latents
        >>> pred = 4 * z[:, 1:].unsqueeze(2)  # K = 1: exact predictions of the next step, score 4
        >>> pred = torch.cat([pred, torch.zeros(2, 1, 1, 6)], dim=1)  # the last step predicts nothing
        >>> torch.allclose(cpc_loss(pred, z), torch.log(1 + 5 * torch.exp(torch.tensor(-4.0))))
        True
    """
    sizes = check_shape(predictions, "B T K D", name="cpc_loss: predictions")
    check_shape(targets, "B T D", sizes, name="cpc_loss: targets")
    _check_temperature("cpc_loss", "temperature", temperature)
    b, t, k_max = sizes["B"], sizes["T"], sizes["K"]
    if k_max >= t:
        raise ValueError(f"cpc_loss: predictions has K={k_max} offsets, needs K < T={t}")
    predictions, targets = _upcast(predictions), _upcast(targets)
    if normalize:
        predictions, targets = F.normalize(predictions, dim=-1), F.normalize(targets, dim=-1)
    all_targets = rearrange(targets, "B T D -> (B T) D")
    losses = []
    for k in range(1, k_max + 1):
        pred = rearrange(predictions[:, : t - k, k - 1], "B T D -> (B T) D")  # valid steps t < T - k
        logits = pred @ all_targets.T / temperature  # (B (T-k), B T)
        # the target of (b, t) is row b * T + t + k of all_targets
        label = (
            torch.arange(b, device=pred.device)[:, None] * t + torch.arange(k, t, device=pred.device)
        ).flatten()
        losses.append(F.cross_entropy(logits, label))
    return torch.stack(losses).mean()
