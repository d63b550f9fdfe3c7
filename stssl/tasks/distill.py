"""Self-distillation with temporal views: BYOL and DINO (no negatives; an EMA teacher and an asymmetry instead).

- :class:`BYOLTask` (``"byol"``; Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020; rhoBYOL for video,
  Feichtenhofer et al. CVPR 2021): the online encoder + projector + predictor regresses the EMA target's
  projection of another view of the same clip (:func:`~stssl.losses.contrastive.byol_loss`).
- :class:`DINOTask` (``"dino"``; Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV
  2021; SVT for video, Ranasinghe et al. CVPR 2022): the student's softmax over ``K`` prototypes matches the EMA
  teacher's centred, sharpened softmax of a *different* view (:func:`~stssl.losses.contrastive.dino_loss`).
  Global views go through both networks; optional local views (shorter, smaller crops) only through the student.

Nothing in either loss forbids a constant embedding: the predictor / centring + sharpening with the slowly moving
teacher are what avoid collapse in practice, so both tasks log ``std`` (:func:`~stssl.tasks.common.embedding_std`);
DINO adds the teacher's entropy and the number of prototypes in use. The EMA teacher, and DINO's centre, change
only in :meth:`~stssl.tasks.instance.EMAViewTask.on_optimizer_step`, in training mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.encoders.base import Encoder
from stssl.losses.contrastive import byol_loss, dino_loss, update_center
from stssl.tasks.base import TaskRequirements
from stssl.tasks.common import cluster_occupancy, cross_view_agreement, log_embedding_std, projection_mlp
from stssl.tasks.instance import EMAViewTask, project_views, retrieval_accuracy, view_pairs, world_size
from stssl.tasks.views import TemporalViews, encode_views
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["BYOLTask", "DINOHead", "DINOTask"]


# ---------------------------------------------------------------------------------------------- BYOL


class BYOLTask(EMAViewTask):
    """BYOL with temporal views: predict the EMA target's projection of view ``j`` from view ``i``.

    Online: encoder -> projector -> predictor (both :func:`~stssl.tasks.common.projection_mlp`). Target: the EMA
    copy of encoder + projector under ``no_grad``. The loss is ``2 - 2 cos(p_i, z_j)``, averaged over every ordered
    pair of different views (the symmetrised BYOL loss divided by the number of pairs; range ``[0, 4]``).

    Args:
        views: see :class:`~stssl.tasks.instance.ViewTask`.
        proj_hidden, proj_dim: projector width and embedding size.
        pred_hidden: predictor width.
        ema, ema_end, total_steps: the target's momentum (BYOL: 0.996 ramped to 1.0 over training).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss``, ``acc`` (top-1 retrieval of the target projection of the other view among the batch's),
    ``std`` (online projections), ``target_std`` (target projections), ``feat_std`` (pooled features),
    ``ema_momentum`` and ``view_gap``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc = r3d_tiny(width=4)
        >>> task = BYOLTask(TemporalViews(view_len=2, size=16), proj_hidden=16, proj_dim=8, pred_hidden=16)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(3, 3, 6, 16, 16)}, enc)
        >>> bool(0 <= out.loss <= 4), "target_std" in out.logs
        (True, True)
    """

    default_name = "byol"

    def __init__(
        self,
        views: TemporalViews | None = None,
        proj_hidden: int = 1024,
        proj_dim: int = 128,
        pred_hidden: int = 1024,
        ema: float = 0.99,
        ema_end: float | None = None,
        total_steps: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(views, ema=ema, ema_end=ema_end, total_steps=total_steps, weight=weight, name=name,
                         seed=seed)
        self.proj_hidden, self.proj_dim, self.pred_hidden = int(proj_hidden), int(proj_dim), int(pred_hidden)
        self.projector: nn.Module | None = None
        self.predictor: nn.Module | None = None

    def build(self, spec: EncoderSpec) -> None:
        super().build(spec)
        self.projector = projection_mlp(spec.dim, self.proj_hidden, self.proj_dim)
        self.predictor = projection_mlp(self.proj_dim, self.pred_hidden, self.proj_dim)

    def online_head(self) -> nn.Module:
        if self.projector is None:
            raise RuntimeError("BYOLTask: call build(encoder.spec) before forward")
        return self.projector

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        self._check_built()
        assert self.projector is not None and self.predictor is not None
        vb = self._cut(batch, generator)
        target = self.target(encoder)
        feats = encode_views(encoder, vb.views)
        z = project_views(self.projector, feats)
        p = project_views(self.predictor, z)
        with torch.no_grad():
            _, z_target = target(vb.views)
        pairs = view_pairs(p.shape[0])
        loss = torch.stack([byol_loss(p[i], z_target[j]) for i, j in pairs]).mean()
        logs = {
            "loss": loss.detach(),
            "acc": torch.stack([retrieval_accuracy(p[i], z_target[j]) for i, j in pairs]).mean(),
            "ema_momentum": p.new_tensor(self.ema.last_momentum).detach(),
            "view_gap": vb.gaps.float().mean().to(p.device),
        }
        log_embedding_std(logs, "std", z)
        log_embedding_std(logs, "target_std", z_target)
        log_embedding_std(logs, "feat_std", feats)
        return TaskOutput(loss=loss, logs=logs)


# ---------------------------------------------------------------------------------------------- DINO


class DINOHead(nn.Module):
    """DINO's projection head: an MLP to a ``bottleneck``, L2-normalised, then cosine scores to ``K`` prototypes.

    ``Linear -> GELU`` (``num_layers - 1`` times, width ``hidden``) ``-> Linear(bottleneck)``, normalised; the
    logits are ``normalize(x) @ normalize(prototypes).T`` in ``[-1, 1]``: DINO's weight-normalised last layer with
    its norm fixed to 1.

    Args:
        in_dim: encoder width ``D``.
        hidden: MLP width.
        bottleneck: embedding size before the prototypes.
        num_prototypes: ``K``.
        num_layers: MLP layers (>= 1).
        batch_norm: ``Linear -> BatchNorm1d -> GELU`` in the hidden layers (DINO's ``use_bn_in_head``).

    Shape:
        ``(N, D) -> (N, K)``; :meth:`embed` gives the normalised ``(N, bottleneck)``.

    Example:
        >>> head = DINOHead(8, 16, 4, 10)
        >>> logits = head(torch.rand(3, 8))
        >>> tuple(logits.shape), bool(logits.abs().max() <= 1 + 1e-6)
        ((3, 10), True)
    """

    def __init__(self, in_dim: int, hidden: int = 512, bottleneck: int = 64, num_prototypes: int = 1024,
                 num_layers: int = 3, batch_norm: bool = False) -> None:
        super().__init__()
        if min(in_dim, hidden, bottleneck, num_prototypes, num_layers) < 1:
            raise ValueError(
                f"DINOHead: in_dim, hidden, bottleneck, num_prototypes and num_layers must be >= 1, got {in_dim}, "
                f"{hidden}, {bottleneck}, {num_prototypes}, {num_layers}"
            )
        self.mlp = projection_mlp(in_dim, hidden, bottleneck, num_layers, batch_norm=batch_norm, activation=nn.GELU)
        self.prototypes = nn.Parameter(F.normalize(torch.randn(num_prototypes, bottleneck), dim=1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, bottleneck)`` L2-normalised embeddings."""
        return F.normalize(self.mlp(x), dim=-1)

    def score(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(N, K)`` cosine scores of :meth:`embed`'s output against the prototypes."""
        return embedding @ F.normalize(self.prototypes, dim=1).T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.embed(x))


class DINOTask(EMAViewTask):
    """DINO with temporal views: the student matches the EMA teacher's centred, sharpened prototype distribution.

    ``views`` gives ``V_g`` global views (through teacher and student); ``local_views`` (optional) gives ``V_l``
    more views, typically shorter and smaller crops (SVT's temporal + spatial local views), through the student
    only. The loss is :func:`~stssl.losses.contrastive.dino_loss` over every (teacher view, different student view)
    pair. The teacher is the EMA copy of encoder + :class:`DINOHead`; the centre (``center``, a checkpointed
    ``(K,)`` buffer) is the EMA (``center_momentum``) of the teacher logits' batch mean, applied by
    :meth:`on_optimizer_step` from the training forwards since the last step (all-reduced under DDP). The teacher
    temperature may warm up linearly from ``warmup_teacher_temp`` over ``teacher_temp_warmup_steps`` optimizer
    steps (counted by the EMA updates).

    Args:
        views: global views (see :class:`~stssl.tasks.instance.ViewTask`), ``num_views >= 2``.
        local_views: local views for the student only, or ``None``.
        head_hidden, bottleneck, num_prototypes, head_layers: the :class:`DINOHead`.
        head_batch_norm: BatchNorm in the head's MLP (DINO's ``use_bn_in_head``). On by default: with a small CNN
            the pooled features of all clips share a large common component, and without it the teacher's
            distribution is nearly the same for every clip, which the centring turns uniform (collapse; measured on
            tiny runs, where ``prototypes_used`` fell to 1-4 without it and stayed at 10-13 of 16 with it).
        student_temp: student softmax temperature.
        teacher_temp: teacher softmax temperature (after the warm-up).
        warmup_teacher_temp: teacher temperature at step 0 (``None``: no warm-up).
        teacher_temp_warmup_steps: steps of the linear warm-up.
        center_momentum: the centre's EMA momentum.
        ema, ema_end, total_steps: the teacher's momentum (DINO: 0.996 ramped to 1.0).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss``, ``acc`` (how often the student's top prototype on one view is the teacher's on another),
    ``std`` (:func:`~stssl.tasks.common.embedding_std` of the student's bottleneck embeddings of the global
    views), ``feat_std``, ``teacher_entropy`` (mean entropy of the teacher's distribution, in nats: ``log K``
    means uniform, 0 means one-hot), ``prototypes_used`` (distinct teacher top prototypes in the batch; 1 is
    collapse), ``teacher_temp``, ``ema_momentum`` and ``view_gap``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc = r3d_tiny(width=4)
        >>> task = DINOTask(TemporalViews(view_len=2, size=16), TemporalViews(2, 1, size=8), head_hidden=16,
        ...                 bottleneck=8, num_prototypes=32)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(3, 3, 6, 16, 16)}, enc)
        >>> task.on_optimizer_step(enc)  # EMA update, then the centre moves
        >>> bool(task.center.abs().sum() > 0), int(task.ema_updates)
        (True, 1)
    """

    default_name = "dino"
    center: torch.Tensor

    def __init__(
        self,
        views: TemporalViews | None = None,
        local_views: TemporalViews | None = None,
        head_hidden: int = 512,
        bottleneck: int = 64,
        num_prototypes: int = 1024,
        head_layers: int = 3,
        head_batch_norm: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float | None = None,
        teacher_temp_warmup_steps: int = 0,
        center_momentum: float = 0.9,
        ema: float = 0.996,
        ema_end: float | None = None,
        total_steps: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(views, ema=ema, ema_end=ema_end, total_steps=total_steps, weight=weight, name=name,
                         seed=seed)
        for label, value in (("student_temp", student_temp), ("teacher_temp", teacher_temp),
                             ("warmup_teacher_temp", warmup_teacher_temp)):
            if value is not None and not value > 0:
                raise ValueError(f"DINOTask: {label} must be > 0, got {value}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"DINOTask: center_momentum must be in [0, 1], got {center_momentum}")
        if teacher_temp_warmup_steps < 0:
            raise ValueError(f"DINOTask: teacher_temp_warmup_steps must be >= 0, got {teacher_temp_warmup_steps}")
        self.local_views = local_views
        self.head_hidden, self.bottleneck = int(head_hidden), int(bottleneck)
        self.num_prototypes, self.head_layers = int(num_prototypes), int(head_layers)
        self.head_batch_norm = bool(head_batch_norm)
        self.student_temp, self.teacher_temp = float(student_temp), float(teacher_temp)
        self.warmup_teacher_temp = None if warmup_teacher_temp is None else float(warmup_teacher_temp)
        self.teacher_temp_warmup_steps = int(teacher_temp_warmup_steps)
        self.center_momentum = float(center_momentum)
        self.head: DINOHead | None = None
        self.register_buffer("center", torch.zeros(self.num_prototypes))
        self._center_sum: torch.Tensor | None = None  # sum of teacher batch means since the last step
        self._center_count = 0

    @property
    def requires(self) -> TaskRequirements:
        need = self.views.min_frames
        if self.local_views is not None:
            need = max(need, self.local_views.min_frames)
        return TaskRequirements(min_frames=need)

    def build(self, spec: EncoderSpec) -> None:
        super().build(spec)
        if self.local_views is not None and self.local_views.view_len < spec.min_frames:
            raise ValueError(
                f"DINOTask: local_views.view_len={self.local_views.view_len} is shorter than the encoder's "
                f"min_frames={spec.min_frames}"
            )
        self.head = DINOHead(spec.dim, self.head_hidden, self.bottleneck, self.num_prototypes, self.head_layers,
                             batch_norm=self.head_batch_norm)

    def online_head(self) -> nn.Module:
        if self.head is None:
            raise RuntimeError("DINOTask: call build(encoder.spec) before forward")
        return self.head

    def current_teacher_temp(self) -> float:
        """The teacher temperature at the current step (linear warm-up, then ``teacher_temp``)."""
        steps = self.teacher_temp_warmup_steps
        if self.warmup_teacher_temp is None or steps == 0:
            return self.teacher_temp
        progress = min(int(self.ema.ema_updates) / steps, 1.0)
        return self.warmup_teacher_temp + progress * (self.teacher_temp - self.warmup_teacher_temp)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        self._check_built()
        assert self.head is not None
        gen = generator if generator is not None else self.next_generator()
        vb = self.views(batch["video"], generator=gen)
        teacher = self.target(encoder)
        feats = encode_views(encoder, vb.views)  # (V_g, B, D)
        embeddings = project_views(self.head.embed, feats)  # (V_g, B, bottleneck), normalised
        student = [project_views(self.head.score, embeddings)]
        if self.local_views is not None:
            local = self.local_views(batch["video"], generator=gen)
            student.append(project_views(self.head, encode_views(encoder, local.views)))
        student_logits = torch.cat(student)  # (V_s, B, K), global views first
        with torch.no_grad():
            _, teacher_logits = teacher(vb.views)  # (V_g, B, K)
        temp = self.current_teacher_temp()
        loss = dino_loss(student_logits, teacher_logits, self.center, self.student_temp, temp)
        if self.training:
            batch_mean = rearrange(teacher_logits.detach(), "V B K -> (V B) K").mean(dim=0)
            self._center_sum = batch_mean if self._center_sum is None else self._center_sum + batch_mean
            self._center_count += 1
        with torch.no_grad():
            probs = F.softmax((teacher_logits.float() - self.center) / temp, dim=-1)
            entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=-1).mean()
            top_t = teacher_logits.argmax(dim=-1)  # (V_g, B)
        logs = {
            "loss": loss.detach(),
            "acc": cross_view_agreement(top_t, student_logits.detach().argmax(dim=-1)),  # student (V_s, B)
            "teacher_entropy": entropy,
            "prototypes_used": cluster_occupancy(top_t, self.num_prototypes)["clusters_used"],
            "teacher_temp": loss.new_tensor(temp).detach(),
            "ema_momentum": loss.new_tensor(self.ema.last_momentum).detach(),
            "view_gap": vb.gaps.float().mean().to(loss.device),
        }
        log_embedding_std(logs, "std", embeddings)
        log_embedding_std(logs, "feat_std", feats)
        return TaskOutput(loss=loss, logs=logs)

    def _after_step(self) -> None:
        if self._center_sum is None:
            return
        total = torch.cat([self._center_sum.float(), self._center_sum.new_full((1,), self._center_count).float()])
        if world_size() > 1:
            torch.distributed.all_reduce(total)
        mean = (total[:-1] / total[-1]).to(self.center)
        self._center_sum, self._center_count = None, 0
        self.center.copy_(update_center(self.center, mean[None, None], self.center_momentum))
