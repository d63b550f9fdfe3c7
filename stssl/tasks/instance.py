"""Instance discrimination with temporal views: SimCLR and MoCo, and the pieces every view-based task shares.

Two clips of the same video are a positive pair; clips of other videos are negatives. Views come from
:class:`~stssl.tasks.views.TemporalViews` (temporal cut ``min_gap..max_gap`` frames apart, then one augmentation
draw per view); the encoder's pooled vector goes through a projection MLP; the losses are the pure functions of
:mod:`stssl.losses.contrastive`.

- :class:`SimCLRTask` (``"simclr"``; Chen et al., "A Simple Framework for Contrastive Learning of Visual
  Representations", ICML 2020; CVRL for video): NT-Xent over every pair of views, in-batch negatives (gathered
  across processes under DDP).
- :class:`MoCoTask` (``"moco"``; He et al., "Momentum Contrast", CVPR 2020; Chen et al., MoCo v2 2020 and v3
  ICCV 2021): queries from the online encoder + projector (+ predictor, v3), keys from their EMA copy, negatives
  from a :class:`~stssl.losses.contrastive.MoCoQueue` (v2) or the batch (``queue_size=0``, v3).

Shared: :class:`ViewTask` (views, requirements, build check; also the base of SeLa and SwAV), :class:`EMAViewTask`
(an EMA copy of encoder + head that moves only in :meth:`~stssl.tasks.base.PretextTask.on_optimizer_step`, in
training), :func:`retrieval_accuracy`, and the DDP helpers :func:`gather_with_grad` / :func:`gather_no_grad`. The
projector (:func:`~stssl.tasks.common.projection_mlp`) and the collapse monitor
(:func:`~stssl.tasks.common.embedding_std`) live in :mod:`stssl.tasks.common`.

State (EMA copy, queue) changes only in :meth:`EMAViewTask.on_optimizer_step` and only in training mode: a forward
in training records the keys to enqueue, the step hook writes them. Validation forwards change nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.losses.contrastive import MoCoQueue, info_nce, nt_xent
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import log_embedding_std, projection_mlp
from stssl.tasks.ema import EMATarget
from stssl.tasks.views import TemporalViewBatch, TemporalViews, encode_views
from stssl.types import EncoderSpec, TaskOutput

__all__ = [
    "EMAViewTask",
    "MoCoTask",
    "SimCLRTask",
    "ViewTask",
    "gather_no_grad",
    "gather_with_grad",
    "project_views",
    "retrieval_accuracy",
    "view_pairs",
    "world_size",
]


# ---------------------------------------------------------------------------------------------- helpers


@torch.no_grad()
def retrieval_accuracy(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Top-1 positive-pair retrieval: the fraction of ``query[i]`` whose most cosine-similar key is ``keys[i]``.

    Chance is ``1 / N``.

    Args:
        query: ``(N, D)``.
        keys: ``(N, D)``.

    Example:
        >>> float(retrieval_accuracy(torch.eye(3), torch.eye(3)[[0, 2, 1]]))
        0.3333333432674408
    """
    sizes = check_shape(query, "N D", name="retrieval_accuracy: query")
    check_shape(keys, "N D", sizes, name="retrieval_accuracy: keys")
    sim = F.normalize(query.detach().float(), dim=1) @ F.normalize(keys.detach().float(), dim=1).T
    return (sim.argmax(dim=1) == torch.arange(sizes["N"], device=sim.device)).float().mean()


def world_size() -> int:
    """Processes in the default group (1 when ``torch.distributed`` is not initialised)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``(world_size * N, ...)``: ``x`` from every process in rank order, gradients flowing back to each part.

    Returns ``x`` itself when not distributed. Every process must pass the same shape.
    """
    if world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` from every process concatenated in rank order (no gradient; first dimensions may differ)."""
    world = world_size()
    if world == 1:
        return x.detach()
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(world)]
    torch.distributed.all_gather(counts, n)
    m = int(max(int(c) for c in counts))
    padded = x.new_zeros(m, *x.shape[1:])
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[: int(c)] for p, c in zip(parts, counts, strict=True)], dim=0)


def _ddp_gather() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The ``gather`` argument of :func:`~stssl.losses.contrastive.nt_xent`: ``None`` on one process."""
    return gather_with_grad if world_size() > 1 else None


def project_views(head: Callable[[torch.Tensor], torch.Tensor], feats: torch.Tensor) -> torch.Tensor:
    """Run ``head`` on all views at once (one BatchNorm batch): ``(V, B, D) -> (V, B, P)``.

    Example:
        >>> tuple(project_views(nn.Linear(4, 2), torch.rand(3, 5, 4)).shape)
        (3, 5, 2)
    """
    check_shape(feats, "V B D", name="project_views: feats")
    out = head(rearrange(feats, "V B D -> (V B) D"))
    return rearrange(out, "(V B) P -> V B P", V=feats.shape[0])


# ---------------------------------------------------------------------------------------------- base classes


class ViewTask(PretextTask):
    """Base of the tasks that compare temporal views of each clip.

    Args:
        views: the :class:`~stssl.tasks.views.TemporalViews` (``None``: its defaults, 2 views of 8 frames, any
            gap). Needs ``num_views >= 2``.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.
    """

    def __init__(
        self, views: TemporalViews | None = None, weight: float = 1.0, name: str | None = None, seed: int = 0
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        self.views = views if views is not None else TemporalViews()
        if self.views.num_views < 2:
            raise ValueError(f"{type(self).__name__}: needs views.num_views >= 2, got {self.views.num_views}")
        self._built = False

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.views.min_frames)

    def build(self, spec: EncoderSpec) -> None:
        if self.views.view_len < spec.min_frames:
            raise ValueError(
                f"{type(self).__name__}: views.view_len={self.views.view_len} is shorter than the encoder's "
                f"min_frames={spec.min_frames}"
            )
        self._built = True

    def _check_built(self) -> None:
        if not self._built:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")

    def _cut(self, batch: dict, generator: torch.Generator | None) -> TemporalViewBatch:
        gen = generator if generator is not None else self.next_generator()
        return self.views(batch["video"], generator=gen)


class _Branch(nn.Module):
    """Encoder + head as one module, so that one :class:`~stssl.tasks.ema.EMATarget` copies and averages both."""

    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = encode_views(self.encoder, views)  # type: ignore[arg-type]
        return feats, project_views(self.head, feats)


class EMAViewTask(ViewTask):
    """A :class:`ViewTask` with an EMA target: a frozen copy of the encoder and of :meth:`online_head`.

    The copy (the submodule ``ema``, an :class:`~stssl.tasks.ema.EMATarget`; checkpointed with its update count)
    is made on the first forward and moves only in :meth:`on_optimizer_step`, once per optimizer step, in training
    mode; then :meth:`_after_step` applies the subclass's own per-step state (queue, centre).

    Args:
        views: see :class:`ViewTask`.
        ema: EMA momentum (at the start of the ramp).
        ema_end: with ``total_steps``, ramp the momentum to this value on a cosine (BYOL); ``None``: constant.
        total_steps: updates over which the momentum ramps.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.
    """

    def __init__(
        self,
        views: TemporalViews | None = None,
        ema: float = 0.99,
        ema_end: float | None = None,
        total_steps: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(views, weight=weight, name=name, seed=seed)
        self.ema = EMATarget(ema, ema_end, total_steps, owner=type(self).__name__)

    def online_head(self) -> nn.Module:
        """The online head whose EMA copy sits on the target encoder."""
        raise NotImplementedError

    def _branch(self, encoder: Encoder) -> _Branch:
        return _Branch(encoder, self.online_head())

    def target(self, encoder: Encoder) -> nn.Module:
        """The EMA copy of ``(encoder, head)`` (made now from the online ones if it does not exist yet): called on
        ``(B, V, C, L, H, W)`` views it returns ``(feats (V, B, D), head outputs (V, B, P))``; its train/eval mode
        follows this task's (:meth:`~stssl.tasks.ema.EMATarget.ensure`)."""
        return self.ema.ensure(self._branch(encoder))

    @property
    def target_encoder(self) -> Encoder | None:
        """The EMA copy of the encoder (``None`` before the first forward)."""
        return None if self.ema.module is None else self.ema.module.encoder  # type: ignore[return-value]

    @property
    def ema_updates(self) -> torch.Tensor:
        """``()`` int64: EMA updates applied so far."""
        return self.ema.ema_updates

    def on_optimizer_step(self, encoder: Encoder) -> None:
        """One EMA update of the target, then the subclass's per-step state; nothing in eval mode."""
        if not self.training:
            return
        self.ema.update(self._branch(encoder))
        self._after_step()

    def _after_step(self) -> None:
        """Per-step state updates of the subclass (queue, centre); called by :meth:`on_optimizer_step`."""


def view_pairs(num_views: int, symmetric: bool = True) -> list[tuple[int, int]]:
    """Ordered view pairs ``(i, j)``, ``i != j`` (all of them, or only ``(0, 1)``).

    Example:
        >>> view_pairs(3)
        [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]
    """
    if not symmetric:
        return [(0, 1)]
    return [(i, j) for i, j in itertools.permutations(range(num_views), 2)]


# ---------------------------------------------------------------------------------------------- SimCLR


class SimCLRTask(ViewTask):
    """SimCLR with temporal views: NT-Xent between the projections of every pair of views of each clip.

    Each view goes through the encoder (pooled vector) and a :func:`~stssl.tasks.common.projection_mlp`; the loss
    averages :func:`~stssl.losses.contrastive.nt_xent` over the ``V (V - 1) / 2`` view pairs. Under DDP the
    negatives are gathered from every process (in training).

    Args:
        views: see :class:`ViewTask`.
        proj_hidden: projector width.
        proj_dim: embedding size.
        proj_layers: projector layers (2: SimCLR v1, 3: v2).
        temperature: NT-Xent temperature.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss``, ``acc`` (top-1 retrieval of the positive view within the batch, chance ``1/B``), ``std`` and
    ``feat_std`` (:func:`~stssl.tasks.common.embedding_std` of the projections and of the encoder's pooled
    features), ``view_gap`` (mean frames between consecutive views' starts).

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc = r3d_tiny(width=4)
        >>> task = SimCLRTask(TemporalViews(view_len=2, size=16), proj_hidden=16, proj_dim=8)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(3, 3, 6, 16, 16)}, enc)
        >>> sorted(out.logs)
        ['acc', 'feat_std', 'loss', 'std', 'view_gap']
    """

    default_name = "simclr"

    def __init__(
        self,
        views: TemporalViews | None = None,
        proj_hidden: int = 512,
        proj_dim: int = 128,
        proj_layers: int = 2,
        temperature: float = 0.1,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(views, weight=weight, name=name, seed=seed)
        if not temperature > 0:
            raise ValueError(f"SimCLRTask: temperature must be > 0, got {temperature}")
        self.proj_hidden, self.proj_dim, self.proj_layers = int(proj_hidden), int(proj_dim), int(proj_layers)
        self.temperature = float(temperature)
        self.projector: nn.Module | None = None

    def build(self, spec: EncoderSpec) -> None:
        super().build(spec)
        self.projector = projection_mlp(spec.dim, self.proj_hidden, self.proj_dim, self.proj_layers)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        self._check_built()
        assert self.projector is not None
        vb = self._cut(batch, generator)
        feats = encode_views(encoder, vb.views)  # (V, B, D)
        z = project_views(self.projector, feats)  # (V, B, P)
        gather = _ddp_gather() if self.training else None
        pairs = list(itertools.combinations(range(z.shape[0]), 2))
        loss = torch.stack([nt_xent(z[i], z[j], self.temperature, gather=gather) for i, j in pairs]).mean()
        logs = {
            "loss": loss.detach(),
            "acc": torch.stack([retrieval_accuracy(z[i], z[j]) for i, j in view_pairs(z.shape[0])]).mean(),
            "view_gap": vb.gaps.float().mean().to(z.device),
        }
        log_embedding_std(logs, "std", z)
        log_embedding_std(logs, "feat_std", feats)
        return TaskOutput(loss=loss, logs=logs)


# ---------------------------------------------------------------------------------------------- MoCo


class MoCoTask(EMAViewTask):
    """MoCo with temporal views: online queries against EMA keys, negatives from a queue (v2) or the batch (v3).

    Queries: encoder -> :func:`~stssl.tasks.common.projection_mlp` (-> predictor MLP with ``predictor=True``, MoCo
    v3). Keys: the EMA copy of encoder + projector, under ``no_grad``. For each ordered pair of views ``(i, j)``
    (only ``(0, 1)`` with ``symmetric=False``) the loss is :func:`~stssl.losses.contrastive.info_nce` of ``q_i``
    against ``k_j`` with the queue as negatives (``queue_size > 0``) or the batch's other keys (``queue_size=0``);
    the pairs are averaged.

    The keys of a training forward are enqueued by :meth:`on_optimizer_step` (after the EMA update, gathered
    across processes under DDP), so the queue holds only earlier steps' keys and never changes in eval mode or in a
    forward.

    Args:
        views: see :class:`ViewTask`.
        proj_hidden, proj_dim, proj_layers: the projector (:func:`~stssl.tasks.common.projection_mlp`).
        predictor: add MoCo v3's predictor MLP (``proj_dim -> pred_hidden -> proj_dim``) on the query side.
        pred_hidden: predictor width.
        queue_size: keys in the :class:`~stssl.losses.contrastive.MoCoQueue`; 0 for in-batch negatives (per rank
            under DDP: MoCo v3 gathers them across ranks, not done here).
        temperature: InfoNCE temperature.
        symmetric: use every ordered pair of views (else only query view 0 against key view 1).
        ema, ema_end, total_steps: the key encoder's momentum (see :class:`EMAViewTask`).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`; ``seed`` also seeds the queue's initial
            random keys.

    Logs ``loss``, ``acc`` (top-1 retrieval of the positive key among the batch's keys), ``std`` (queries),
    ``feat_std`` (pooled features), ``ema_momentum``, ``view_gap`` and, with a queue, ``queue_filled`` (fraction of
    real keys in it).

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc = r3d_tiny(width=4)
        >>> task = MoCoTask(TemporalViews(view_len=2, size=16), proj_hidden=16, proj_dim=8, queue_size=16)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(3, 3, 6, 16, 16)}, enc)
        >>> task.on_optimizer_step(enc)  # EMA update, then the 6 keys of that forward enter the queue
        >>> int(task.queue.filled), int(task.ema_updates)
        (6, 1)
    """

    default_name = "moco"
    queue: MoCoQueue | None

    def __init__(
        self,
        views: TemporalViews | None = None,
        proj_hidden: int = 512,
        proj_dim: int = 128,
        proj_layers: int = 2,
        predictor: bool = False,
        pred_hidden: int = 512,
        queue_size: int = 4096,
        temperature: float = 0.2,
        symmetric: bool = True,
        ema: float = 0.99,
        ema_end: float | None = None,
        total_steps: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(views, ema=ema, ema_end=ema_end, total_steps=total_steps, weight=weight, name=name,
                         seed=seed)
        if not temperature > 0:
            raise ValueError(f"MoCoTask: temperature must be > 0, got {temperature}")
        if queue_size < 0:
            raise ValueError(f"MoCoTask: queue_size must be >= 0 (0: in-batch negatives), got {queue_size}")
        self.proj_hidden, self.proj_dim, self.proj_layers = int(proj_hidden), int(proj_dim), int(proj_layers)
        self.use_predictor, self.pred_hidden = bool(predictor), int(pred_hidden)
        self.queue_size = int(queue_size)
        self.temperature = float(temperature)
        self.symmetric = bool(symmetric)
        self.projector: nn.Module | None = None
        self.predictor: nn.Module | None = None
        self.queue = None
        self._pending: list[torch.Tensor] = []  # keys of training forwards since the last step

    def build(self, spec: EncoderSpec) -> None:
        super().build(spec)
        last_bn = self.use_predictor  # MoCo v3: BN at the end of projector and predictor
        self.projector = projection_mlp(spec.dim, self.proj_hidden, self.proj_dim, self.proj_layers,
                                        last_batch_norm=last_bn)
        if self.use_predictor:
            self.predictor = projection_mlp(self.proj_dim, self.pred_hidden, self.proj_dim, 2)
        if self.queue_size > 0:
            self.queue = MoCoQueue(self.proj_dim, self.queue_size, seed=self.seed)

    def online_head(self) -> nn.Module:
        if self.projector is None:
            raise RuntimeError("MoCoTask: call build(encoder.spec) before forward")
        return self.projector

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        self._check_built()
        assert self.projector is not None
        vb = self._cut(batch, generator)
        target = self.target(encoder)
        feats = encode_views(encoder, vb.views)
        z = project_views(self.projector, feats)
        q = project_views(self.predictor, z) if self.predictor is not None else z
        with torch.no_grad():
            _, k = target(vb.views)
        negatives = self.queue.keys if self.queue is not None else None
        pairs = view_pairs(q.shape[0], self.symmetric)
        loss = torch.stack([info_nce(q[i], k[j], negatives, self.temperature) for i, j in pairs]).mean()
        if self.training and self.queue is not None:
            keys = torch.cat([k[j] for j in sorted({j for _, j in pairs})]).detach()
            self._pending = [*self._pending, keys]
            while sum(p.shape[0] for p in self._pending) - self._pending[0].shape[0] >= self.queue_size:
                self._pending.pop(0)  # (steps that were never taken) keep at most what the queue holds
        logs = {
            "loss": loss.detach(),
            "acc": torch.stack([retrieval_accuracy(q[i], k[j]) for i, j in pairs]).mean(),
            "ema_momentum": q.new_tensor(self.ema.last_momentum).detach(),
            "view_gap": vb.gaps.float().mean().to(q.device),
        }
        if self.queue is not None:
            logs["queue_filled"] = (self.queue.filled.float() / self.queue_size).detach()
        log_embedding_std(logs, "std", q)
        log_embedding_std(logs, "feat_std", feats)
        return TaskOutput(loss=loss, logs=logs)

    def _after_step(self) -> None:
        if self.queue is None or not self._pending:
            return
        keys = gather_no_grad(torch.cat(self._pending))
        self._pending = []
        self.queue.enqueue(keys)
