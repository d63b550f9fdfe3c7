"""Online clustering with equipartitioned codes: SeLa (Asano et al., "Self-labelling via simultaneous clustering
and representation learning", ICLR 2020) and SwAV (Caron et al., "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS 2020), on temporal views of a clip.

Both take their views from :class:`~stssl.tasks.views.TemporalViews` (``num_views`` sub-clips of ``view_len``
frames of every batch clip, start times ``min_gap .. max_gap`` frames apart, each augmented with its own crop, flip
and colour draw, shared by its frames), as the contrastive tasks do (:class:`~stssl.tasks.instance.ViewTask`), and
encode each view (:func:`~stssl.tasks.views.encode_views`; a coarse ``pool_grid`` of cells can be kept). Codes come
from :func:`~stssl.losses.clustering.sinkhorn_knopp` over the batch, so every cluster gets an equal share of it,
and each view predicts the codes of the others.

- :class:`SeLaTask`: a linear clustering head (or several); pseudo-labels are the hard argmax of Sinkhorn codes
  of the head's log-probabilities (SeLa's ``P^lambda`` with ``epsilon = 1 / lambda``), computed per batch (online:
  cross-entropy of the other views' logits against them) or over a memory of the whole data set's items
  (``memory_size``: SeLa proper, labels fixed between relabellings).
- :class:`SwAVTask`: L2-normalised embeddings against L2-normalised prototypes (re-normalised after every optimizer
  step), soft Sinkhorn codes, :func:`~stssl.losses.clustering.swav_loss`; an optional queue of past embeddings
  joins the Sinkhorn problem (for small batches), and the prototypes can be frozen for the first steps.

The Sinkhorn problem is per process: under DDP the equipartition holds over each rank's batch (SwAV gathers the
scores of all ranks; not done here). SwAV's queue is a buffer filled per rank: under DDP set
``DDPStrategy(broadcast_buffers=False)``, or rank 0's queue overwrites the others' before every forward.

Logs, besides ``loss``: ``acc`` (how often a view's predicted cluster equals the other views' code), the collapse
monitors ``clusters_used`` (distinct clusters among the argmax predictions of the batch's views) and
``max_cluster_frac`` (the largest cluster's share of them; :func:`~stssl.tasks.common.cluster_occupancy`), and
``z_std`` (:func:`~stssl.tasks.common.embedding_std` of the embeddings across the batch, per view).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.losses.clustering import sinkhorn_knopp, swav_loss
from stssl.losses.contrastive import cross_view_cross_entropy
from stssl.tasks.base import TaskRequirements
from stssl.tasks.common import (
    check_pool_grid,
    cluster_occupancy,
    cross_view_agreement,
    log_embedding_std,
    memory_index,
    mlp_head,
    pooled_dim,
)
from stssl.tasks.instance import ViewTask
from stssl.tasks.views import TemporalViews, encode_views
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["SeLaTask", "SwAVTask", "sela_pseudo_labels"]


@torch.no_grad()
def sela_pseudo_labels(
    logits: torch.Tensor, epsilon: float = 0.05, iterations: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """SeLa's pseudo-labels for one batch: Sinkhorn-Knopp codes of the head's log-probabilities (``Q ~ P^(1/eps)``
    with equal cluster mass over the batch) and their hard argmax.

    Args:
        logits: ``(N, K)`` clustering-head logits.
        epsilon: ``1 / lambda`` of SeLa (smaller: the codes follow the head more closely).
        iterations: Sinkhorn rounds.

    Returns:
        ``(codes (N, K), labels (N,))``; rows of ``codes`` sum to 1, columns to about ``N / K``.

    Example:
        >>> logits = torch.tensor([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [2.0, 0.0]])  # all prefer cluster 0
        >>> codes, labels = sela_pseudo_labels(logits, epsilon=0.5, iterations=50)
        >>> codes.sum(dim=0).round().tolist(), labels.tolist()  # the least keen half goes to cluster 1
        ([2.0, 2.0], [0, 0, 1, 1])
    """
    check_shape(logits, "N K", name="sela_pseudo_labels logits")
    codes = sinkhorn_knopp(F.log_softmax(logits.detach().float(), dim=1), epsilon, iterations)
    return codes, codes.argmax(dim=1)


class _ViewClusterTask(ViewTask):
    """Shared parts of SeLa and SwAV: the views (:class:`~stssl.tasks.instance.ViewTask`), their pooled encoding,
    the projection MLP and the logs."""

    def __init__(
        self,
        views: TemporalViews | None,
        num_clusters: int,
        pool_grid: tuple[int, int],
        dim: int,
        hidden: int,
        weight: float,
        name: str | None,
        seed: int,
    ) -> None:
        super().__init__(views, weight=weight, name=name, seed=seed)
        owner = type(self).__name__
        if num_clusters < 2 or dim < 1 or hidden < 1:
            raise ValueError(
                f"{owner}: need num_clusters >= 2, dim >= 1 and hidden >= 1, got {num_clusters}, {dim}, {hidden}"
            )
        self.num_clusters = int(num_clusters)
        self.pool_grid = check_pool_grid(owner, pool_grid)
        self.dim = int(dim)
        self.hidden = int(hidden)
        self.projection: nn.Module | None = None

    def build(self, spec: EncoderSpec) -> None:
        super().build(spec)
        self.projection = mlp_head(pooled_dim(spec.dim, self.pool_grid), self.hidden, self.dim)

    def embed_views(self, batch: dict, encoder: Encoder, generator: torch.Generator | None) -> torch.Tensor:
        """``(V, B, dim)`` projected embeddings of the augmented temporal views of ``batch["video"]``."""
        self._check_built()
        assert self.projection is not None
        vb = self._cut(batch, generator)
        return self.projection(encode_views(encoder, vb.views, self.pool_grid))

    def _logs(self, loss: torch.Tensor, z: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> dict:
        """``scores`` ``(V, B, K)`` predictions, ``labels`` ``(V, B)`` the code of each view."""
        pred = scores.detach().argmax(dim=-1)  # (V, B)
        logs = {"loss": loss.detach(), "acc": cross_view_agreement(labels, pred),
                **cluster_occupancy(pred, self.num_clusters)}
        log_embedding_std(logs, "z_std", z)
        return logs


class SeLaTask(_ViewClusterTask):
    """SeLa: every view predicts equipartitioned pseudo-labels, per batch (online) or per item of the data set.

    Online (``memory_size=0``): per batch and per head, the logits of every view give Sinkhorn codes over the batch
    (:func:`sela_pseudo_labels`); the labels (hard argmax, or the soft codes with ``hard=False``) of view ``i`` are
    the cross-entropy targets of the logits of every view ``j != i``. With a batch not much larger than ``K`` the
    equipartition hands out nearly arbitrary labels, and the predictions drift towards a few clusters.

    Data set (``memory_size > 0``, SeLa proper; needs ``batch["index"]``): a memory holds each item's
    log-probabilities (per head, averaged over its views, written at ``batch["index"]`` in training); every
    ``relabel_every`` epochs' worth of training calls, and whenever the batch holds an item never labelled,
    :meth:`relabel` solves SeLa's label step over all written rows (Sinkhorn, equal mass per cluster over the data
    seen) and fixes the items' hard labels until the next relabelling; every view of an item is trained to predict
    its label. Validation uses the online rule (its items are not in the memory). Under DDP the memory is per rank
    (see :class:`~stssl.tasks.deepcluster.DeepClusterTask` for what broadcast buffers do).

    SeLa's multiple clustering heads (``num_heads``) are averaged.

    Args:
        views: the temporal views (see :class:`~stssl.tasks.instance.ViewTask`; ``None``: 2 views of 8 frames).
        num_clusters: ``K`` (keep the batch at least ``K`` clips so hard labels can spread over all clusters).
        num_heads: independent clustering heads.
        epsilon: Sinkhorn regularisation ``1 / lambda`` (SeLa: ``lambda = 25``).
        sinkhorn_iterations: Sinkhorn rounds.
        hard: hard pseudo-labels (SeLa) or the soft codes (online only).
        temperature: None: SeLa's linear head on ``relu(z)``; a float: a cosine classifier (L2-normalised ``z``
            and class weights, logits = cosine / temperature). On the world with batches of 16 clips and 16
            clusters, the linear head's predictions drifted to 2-3 clusters and cosine heads kept about 8 in use
            (``configs/pretrain/sela_tiny.yaml``).
        memory_size: rows of the data-set memory, at least the number of training items (0: online).
        relabel_every: epochs between relabellings of the memory.
        steps_per_epoch: training calls per epoch; None: ``ceil(memory_size / B)``.
        pool_grid: ``(h, w)`` cells kept from each view's dense map.
        dim: width of the features the heads see; ``hidden``: of the projection MLP.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs (besides those of the module docstring), with the memory: ``label_clusters_used`` and
    ``label_max_cluster_frac`` of the memory's labels (head 0) and ``relabels``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc = r3d_tiny(width=4)
        >>> task = SeLaTask(TemporalViews(view_len=2, size=16), num_clusters=4, dim=8, hidden=16)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(4, 3, 4, 32, 32)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs)
        ['acc', 'clusters_used', 'loss', 'max_cluster_frac', 'z_std']
    """

    default_name = "sela"
    memory: torch.Tensor
    seen: torch.Tensor
    labels: torch.Tensor
    steps: torch.Tensor
    last_relabel: torch.Tensor
    relabels: torch.Tensor

    def __init__(
        self,
        views: TemporalViews | None = None,
        num_clusters: int = 128,
        num_heads: int = 1,
        epsilon: float = 0.04,
        sinkhorn_iterations: int = 10,
        hard: bool = True,
        temperature: float | None = None,
        memory_size: int = 0,
        relabel_every: int = 1,
        steps_per_epoch: int | None = None,
        pool_grid: tuple[int, int] = (1, 1),
        dim: int = 128,
        hidden: int = 256,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(views, num_clusters, pool_grid, dim, hidden, weight, name, seed)
        if num_heads < 1 or not epsilon > 0 or sinkhorn_iterations < 1:
            raise ValueError(
                f"SeLaTask: need num_heads >= 1, epsilon > 0 and sinkhorn_iterations >= 1, got {num_heads}, "
                f"{epsilon}, {sinkhorn_iterations}"
            )
        if memory_size < 0 or relabel_every < 1 or (steps_per_epoch is not None and steps_per_epoch < 1):
            raise ValueError(
                f"SeLaTask: need memory_size >= 0, relabel_every >= 1 and steps_per_epoch >= 1 or None, got "
                f"{memory_size}, {relabel_every}, {steps_per_epoch}"
            )
        if temperature is not None and not temperature > 0:
            raise ValueError(f"SeLaTask: temperature must be > 0 (or None for a linear head), got {temperature}")
        if memory_size and not hard:
            raise ValueError("SeLaTask: the data-set labels (memory_size > 0) are hard; set hard=True or memory_size=0")
        self.num_heads = int(num_heads)
        self.epsilon = float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.hard = bool(hard)
        self.temperature = None if temperature is None else float(temperature)
        self.memory_size = int(memory_size)
        self.relabel_every = int(relabel_every)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        n, h = self.memory_size, self.num_heads
        self.register_buffer("memory", torch.zeros(n, h, self.num_clusters))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("labels", torch.full((n, h), -1, dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_relabel", torch.zeros((), dtype=torch.long))
        self.register_buffer("relabels", torch.zeros((), dtype=torch.long))
        self.heads: nn.ModuleList | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.views.min_frames, index=self.memory_size > 0)

    def build(self, spec: EncoderSpec) -> None:
        super().build(spec)
        if self.temperature is None:
            self.heads = nn.ModuleList(
                nn.Sequential(nn.ReLU(), nn.Linear(self.dim, self.num_clusters)) for _ in range(self.num_heads)
            )
        else:
            self.heads = nn.ModuleList(nn.Linear(self.dim, self.num_clusters, bias=False) for _ in range(self.num_heads))

    def head_logits(self, z: torch.Tensor) -> torch.Tensor:
        """``(H, ..., K)`` logits of every clustering head for embeddings ``(..., dim)``: a linear classifier on
        ``relu(z)``, or (``temperature``) cosines of ``z`` and each class weight over the temperature."""
        assert self.heads is not None
        if self.temperature is None:
            return torch.stack([head(z).float() for head in self.heads])
        zn = F.normalize(z.float(), dim=-1)
        weights = [F.normalize(cast(nn.Linear, head).weight.float(), dim=1) for head in self.heads]
        return torch.stack([zn @ w.T for w in weights]) / self.temperature

    def relabel_interval(self, batch_size: int) -> int:
        """Training calls between relabellings of the memory for batches of ``batch_size`` clips."""
        per_epoch = self.steps_per_epoch or math.ceil(self.memory_size / max(1, batch_size))
        return self.relabel_every * per_epoch

    @torch.no_grad()
    def relabel(self) -> None:
        """SeLa's label step over the memory: per head, the hard argmax of the Sinkhorn codes of every written row's
        log-probabilities (equal cluster mass over the rows)."""
        rows = torch.nonzero(self.seen).flatten()
        for h in range(self.num_heads):
            codes = sinkhorn_knopp(self.memory[rows, h], self.epsilon, self.sinkhorn_iterations)
            self.labels[rows, h] = codes.argmax(dim=1)
        self.relabels += 1
        self.last_relabel.copy_(self.steps)

    @torch.no_grad()
    def _memory_targets(self, batch: dict, logits: torch.Tensor) -> torch.Tensor:
        """Write the batch's log-probabilities ``(H, V, B, K)`` (averaged over views) at ``batch["index"]``, relabel
        when due, and return the items' labels ``(H, B)``."""
        index = memory_index("SeLaTask", batch, self.memory_size, logits.device)
        self.memory[index] = F.log_softmax(logits, dim=-1).mean(dim=1).transpose(0, 1).to(self.memory)
        self.seen[index] = True
        unlabelled = bool((self.labels[index, 0] < 0).any())
        if unlabelled or int(self.steps) - int(self.last_relabel) >= self.relabel_interval(logits.shape[2]):
            self.relabel()
        self.steps += 1
        return self.labels[index].transpose(0, 1)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.heads is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        z = self.embed_views(batch, encoder, generator)  # (V, B, D)
        logits = self.head_logits(z)  # (H, V, B, K)
        if self.memory_size and self.training:
            items = self._memory_targets(batch, logits.detach())  # (H, B)
            label_t = items[:, None].expand(-1, logits.shape[1], -1)  # (H, V, B): every view predicts its item's label
            log_p = F.log_softmax(logits, dim=-1)
            loss = -log_p.gather(-1, label_t[..., None]).mean()
            logs = self._logs(loss, z, logits[0], label_t[0])
            memory_occupancy = cluster_occupancy(self.labels[self.seen, 0], self.num_clusters)
            logs.update({f"label_{k}": v for k, v in memory_occupancy.items()})
            logs["relabels"] = self.relabels.float()
            return TaskOutput(loss=loss, logs=logs)
        losses, labels_first = [], None
        for head_logits in logits:  # (V, B, K)
            codes, labels = zip(*(sela_pseudo_labels(lv, self.epsilon, self.sinkhorn_iterations) for lv in head_logits),
                                strict=True)
            label_t = torch.stack(labels)  # (V, B)
            targets = F.one_hot(label_t, self.num_clusters).float() if self.hard else torch.stack(codes)
            losses.append(cross_view_cross_entropy(targets, F.log_softmax(head_logits, dim=-1)))
            labels_first = label_t if labels_first is None else labels_first
        loss = torch.stack(losses).mean()
        assert labels_first is not None
        return TaskOutput(loss=loss, logs=self._logs(loss, z, logits[0], labels_first))


class SwAVTask(_ViewClusterTask):
    """SwAV: swapped prediction of Sinkhorn codes between temporal views, against learned prototypes.

    Embeddings and prototypes are L2-normalised; scores are their cosines. Codes of every view come from
    :func:`~stssl.losses.clustering.sinkhorn_knopp` over the batch (and the queue, when in use); each view predicts
    the others' codes through ``softmax(scores / temperature)`` (:func:`~stssl.losses.clustering.swav_loss`). After
    every optimizer step (:meth:`on_optimizer_step`, training only) the prototypes are re-normalised and the step
    count advances; for the first ``freeze_prototypes_steps`` steps the prototypes get no gradient (SwAV freezes
    them for the first epoch).

    Queue (``queue_size > 0``): the last ``queue_size`` embeddings of each view (detached), used from step
    ``queue_start_step`` on once full: their scores join the batch's in the Sinkhorn problem, so small batches still
    get equipartitioned codes; only the batch's rows are used as targets. It is written in training only, after the
    codes are computed.

    Args:
        views: the temporal views (see :class:`~stssl.tasks.instance.ViewTask`; ``None``: 2 views of 8 frames).
        num_clusters: number of prototypes ``K``.
        temperature: of the predictions' softmax.
        epsilon, sinkhorn_iterations: Sinkhorn regularisation and rounds (SwAV: 0.05 and 3).
        queue_size, queue_start_step: the optional queue, see above.
        freeze_prototypes_steps: optimizer steps without prototype gradients.
        pool_grid: ``(h, w)`` cells kept from each view's dense map.
        dim: embedding (and prototype) dimension; ``hidden``: width of the projection MLP.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc = r3d_tiny(width=4)
        >>> task = SwAVTask(TemporalViews(view_len=2, size=16), num_clusters=4, dim=8, hidden=16)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(4, 3, 4, 32, 32)}, enc, torch.Generator().manual_seed(0))
        >>> out.loss.backward()
        >>> task.on_optimizer_step(enc)  # re-normalises the prototypes
        >>> round(float(task.prototypes.weight.detach().norm(dim=1).mean()), 4), int(task.steps)
        (1.0, 1)
    """

    default_name = "swav"
    queue: torch.Tensor
    queue_filled: torch.Tensor
    queue_ptr: torch.Tensor
    steps: torch.Tensor

    def __init__(
        self,
        views: TemporalViews | None = None,
        num_clusters: int = 300,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        queue_size: int = 0,
        queue_start_step: int = 0,
        freeze_prototypes_steps: int = 0,
        pool_grid: tuple[int, int] = (1, 1),
        dim: int = 128,
        hidden: int = 256,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(views, num_clusters, pool_grid, dim, hidden, weight, name, seed)
        if not temperature > 0 or not epsilon > 0 or sinkhorn_iterations < 1:
            raise ValueError(
                f"SwAVTask: need temperature > 0, epsilon > 0 and sinkhorn_iterations >= 1, got {temperature}, "
                f"{epsilon}, {sinkhorn_iterations}"
            )
        if queue_size < 0 or queue_start_step < 0 or freeze_prototypes_steps < 0:
            raise ValueError(
                f"SwAVTask: queue_size, queue_start_step and freeze_prototypes_steps must be >= 0, got {queue_size}, "
                f"{queue_start_step}, {freeze_prototypes_steps}"
            )
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.queue_size = int(queue_size)
        self.queue_start_step = int(queue_start_step)
        self.freeze_prototypes_steps = int(freeze_prototypes_steps)
        self.register_buffer("queue", torch.zeros(self.views.num_views, self.queue_size, self.dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.prototypes: nn.Linear | None = None

    def build(self, spec: EncoderSpec) -> None:
        super().build(spec)
        self.prototypes = nn.Linear(self.dim, self.num_clusters, bias=False)
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """L2-normalise every prototype in place."""
        if self.prototypes is not None:
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def on_optimizer_step(self, encoder: Encoder) -> None:
        """Re-normalise the prototypes and count the step (training mode only)."""
        if self.training:
            self.normalize_prototypes()
            self.steps += 1

    @property
    def queue_active(self) -> bool:
        """Whether the queue joins the Sinkhorn problem now: enabled, started and full."""
        return self.queue_size > 0 and int(self.steps) >= self.queue_start_step and int(self.queue_filled) >= self.queue_size

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        """Write ``(V, B, D)`` normalised embeddings over the oldest queue entries."""
        B = z.shape[1]
        index = (int(self.queue_ptr) + torch.arange(B, device=z.device)) % self.queue_size
        if B > self.queue_size:
            z, index = z[:, -self.queue_size :], index[-self.queue_size :]
        self.queue[:, index] = z.detach().to(self.queue)
        self.queue_ptr.fill_((int(self.queue_ptr) + B) % self.queue_size)
        self.queue_filled.fill_(min(int(self.queue_filled) + B, self.queue_size))

    def codes(self, scores: torch.Tensor) -> torch.Tensor:
        """Sinkhorn codes ``(V, B, K)`` of ``(V, B, K)`` scores (with the queue's scores when it is active)."""
        assert self.prototypes is not None
        out = []
        for v in range(scores.shape[0]):
            s = scores[v].detach()
            if self.queue_active:
                q_scores = self.queue[v] @ self.prototypes.weight.detach().T
                s = torch.cat([q_scores.to(s), s])
            out.append(sinkhorn_knopp(s, self.epsilon, self.sinkhorn_iterations)[-scores.shape[1] :])
        return torch.stack(out)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.prototypes is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        z = F.normalize(self.embed_views(batch, encoder, generator), dim=-1)  # (V, B, D)
        weight = self.prototypes.weight
        if int(self.steps) < self.freeze_prototypes_steps:
            weight = weight.detach()
        scores = z @ weight.T  # (V, B, K)
        codes = self.codes(scores)
        loss = swav_loss(scores, codes, self.temperature)
        if self.training and self.queue_size > 0:
            self._enqueue(z)
        logs = self._logs(loss, z, scores, codes.argmax(dim=-1))
        logs["queue_active"] = z.new_tensor(float(self.queue_active))
        return TaskOutput(loss=loss, logs=logs)
