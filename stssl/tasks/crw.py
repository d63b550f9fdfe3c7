"""Space-time correspondence as a contrastive random walk (CRW; Jabri, Owens and Efros, "Space-Time
Correspondence as a Contrastive Random Walk", NeurIPS 2020).

Every frame of a clip is encoded on its own into a dense feature map; the cells of the map are the nodes of a
graph, embedded (a small head) and L2-normalised. Consecutive frames are joined by row-stochastic transition
matrices ``A_{t -> t+1} = softmax(x_t x_{t+1}^T / tau)`` (:func:`stochastic_matrix`,
:func:`transition_matrices`). A *palindrome* walk ``0 -> 1 -> ... -> k -> k-1 -> ... -> 0`` multiplies the forward
matrices, then the backward ones (the softmax of the transposed affinities); a good embedding brings every walker
back to the node it started from. The loss (:func:`palindrome_walk_loss`) is the cross-entropy of returning to the
start node, averaged over the walk lengths ``k``; the cycle accuracy (the walk's most likely end node is its start)
is logged per length. Edge dropout (Jabri et al.'s regulariser) removes each edge of the graph with probability
``p`` before the softmax, so the walk cannot rely on a single path.

Per-frame features (:class:`CRWTask`, ``frame_mode``):

- ``"frames"`` (default, any encoder): every frame is folded into the batch as a still clip of
  ``encoder.spec.min_frames`` copies, and the chosen pyramid stage is averaged over its time axis. With
  :class:`~stssl.encoders.FrameEncoder2D` this is exactly the paper's per-frame 2D ResNet.
- ``"clip"``: the whole clip goes through the encoder once and the stage's ``(B, D, T', H', W')`` map is used as is;
  it needs ``T' == T`` (a per-frame encoder, or a video encoder without temporal stride at that stage, e.g. X3D).
  Features then see neighbouring frames through temporal convolutions or attention, which makes the task easier
  than the paper's; use it to train a video encoder's dense map directly.

Not reproduced from the paper: its patch-based node variant (each node a separately encoded, jittered patch) and
its walks from the last frame backwards; nodes here are the cells of the dense map (the paper's "no patches"
variant), optionally average-pooled to ``node_grid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import embedding_std, projection_mlp, stage_index
from stssl.tasks.image_common import sample_window
from stssl.types import EncoderSpec, TaskOutput

__all__ = [
    "FRAME_MODES",
    "CRWTask",
    "WalkOutput",
    "palindrome_walk_loss",
    "stochastic_matrix",
    "transition_matrices",
]

FrameMode = Literal["frames", "clip"]
#: How :class:`CRWTask` gets per-frame features from the encoder.
FRAME_MODES: tuple[str, ...] = ("frames", "clip")

_DROPPED = -1e20  # logit of a dropped edge (finite: a row with every edge dropped becomes uniform, not NaN)


def _uniform(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    """``U[0, 1)`` of ``shape`` on ``device``, drawn from ``generator`` (a CPU generator seeds a device-local one)."""
    if generator is None:
        return torch.rand(shape, device=device)
    if generator.device.type == device.type == "cpu" or generator.device == device:
        return torch.rand(shape, device=device, generator=generator)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    local = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, device=device, generator=local)


def stochastic_matrix(
    affinity: torch.Tensor,
    temperature: float = 0.07,
    edge_dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Row-stochastic transition matrix ``softmax(affinity / temperature)`` over the last axis, with edge dropout.

    Edge dropout removes each entry (edge) independently with probability ``edge_dropout`` before the softmax, so
    every row still sums to 1 over its remaining edges (a row with all edges dropped becomes uniform). Computed in
    float32 for half-precision inputs.

    Args:
        affinity: ``(..., N, M)`` similarities (cosines for L2-normalised embeddings).
        temperature: softmax temperature ``tau > 0``.
        edge_dropout: probability ``p`` in ``[0, 1)`` of dropping an edge.
        generator: draws the dropout mask (a CPU generator works for any device).

    Returns:
        ``(..., N, M)``, non-negative, rows summing to 1.

    Example:
        >>> A = stochastic_matrix(torch.eye(3), temperature=0.01)
        >>> torch.allclose(A, torch.eye(3), atol=1e-6)
        True
    """
    if not temperature > 0:
        raise ValueError(f"stochastic_matrix: temperature must be > 0, got {temperature}")
    if not 0.0 <= edge_dropout < 1.0:
        raise ValueError(f"stochastic_matrix: edge_dropout must be in [0, 1), got {edge_dropout}")
    if affinity.dim() < 2:
        raise ValueError(f"stochastic_matrix: affinity must be (..., N, M), got shape {tuple(affinity.shape)}")
    logits = affinity.float() if affinity.dtype in (torch.float16, torch.bfloat16) else affinity
    logits = logits / temperature
    if edge_dropout > 0:
        drop = _uniform(tuple(logits.shape), logits.device, generator) < edge_dropout
        logits = logits.masked_fill(drop, _DROPPED)
    return logits.softmax(dim=-1)


def transition_matrices(
    features: torch.Tensor,
    temperature: float = 0.07,
    edge_dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward transition matrices between consecutive frames' nodes.

    Nodes are L2-normalised here; ``S_t = x_t x_{t+1}^T`` (cosines). Forward ``A_{t -> t+1} = softmax_row(S_t /
    tau)``, backward ``A_{t+1 -> t} = softmax_row(S_t^T / tau)``, each with its own edge-dropout mask.

    Args:
        features: ``(B, T, N, D)`` node embeddings of ``T >= 2`` frames.
        temperature: softmax temperature.
        edge_dropout: probability of dropping an edge (see :func:`stochastic_matrix`).
        generator: draws the dropout masks.

    Returns:
        ``(forward, backward)``, each ``(B, T - 1, N, N)`` and row-stochastic: ``forward[:, t, i, j]`` is the
        probability of stepping from node ``i`` of frame ``t`` to node ``j`` of frame ``t + 1``;
        ``backward[:, t, i, j]`` from node ``i`` of frame ``t + 1`` to node ``j`` of frame ``t``.

    Example:
        >>> fwd, bwd = transition_matrices(torch.randn(2, 4, 5, 8))
        >>> tuple(fwd.shape), torch.allclose(bwd.sum(-1), torch.ones(2, 3, 5))
        ((2, 3, 5, 5), True)
    """
    sizes = check_shape(features, "B T N D", name="transition_matrices: features")
    if sizes["T"] < 2:
        raise ValueError(f"transition_matrices: features have T={sizes['T']} frames, need >= 2")
    x = F.normalize(features.float() if features.dtype in (torch.float16, torch.bfloat16) else features, dim=-1)
    affinity = torch.einsum("btnd,btmd->btnm", x[:, :-1], x[:, 1:])
    forward = stochastic_matrix(affinity, temperature, edge_dropout, generator)
    backward = stochastic_matrix(affinity.transpose(-1, -2), temperature, edge_dropout, generator)
    return forward, backward


@dataclass
class WalkOutput:
    """Output of :func:`palindrome_walk_loss`.

    Attributes:
        loss: scalar, the mean over walk lengths of the return cross-entropy.
        loss_per_length: walk length ``k`` -> scalar cross-entropy of the walk ``0 -> k -> 0``.
        acc_per_length: ``k`` -> detached cycle accuracy (fraction of start nodes whose most likely end is itself).
        walks: ``k`` -> ``(B, N, N)`` the palindrome's transition matrix (rows sum to 1).
    """

    loss: torch.Tensor
    loss_per_length: dict[int, torch.Tensor]
    acc_per_length: dict[int, torch.Tensor]
    walks: dict[int, torch.Tensor]


def palindrome_walk_loss(
    features: torch.Tensor,
    temperature: float = 0.07,
    walk_lengths: Sequence[int] | None = None,
    edge_dropout: float = 0.0,
    generator: torch.Generator | None = None,
    eps: float = 1e-20,
) -> WalkOutput:
    """The contrastive random walk's loss: walk ``0 -> 1 -> ... -> k -> ... -> 1 -> 0`` and return to the start.

    For each length ``k``, the palindrome's matrix is ``P_k = A_{0->1} ... A_{k-1->k} A_{k->k-1} ... A_{1->0}``
    (:func:`transition_matrices`), ``(B, N, N)`` and row-stochastic; the loss of length ``k`` is
    ``-mean_{b, i} log(P_k[b, i, i] + eps)`` (cross-entropy with the start node as target), and the total is the
    mean over lengths.

    Args:
        features: ``(B, T, N, D)`` node embeddings (L2-normalised here).
        temperature: softmax temperature of the transitions (the paper's 0.07).
        walk_lengths: lengths ``k`` in ``[1, T - 1]`` to average; ``None`` uses all of them.
        edge_dropout: probability of dropping an edge of the graph (the paper's 0.1 in training).
        generator: draws the edge-dropout masks.
        eps: added to probabilities before the log.

    Returns:
        A :class:`WalkOutput`.

    Example:
        >>> x = torch.randn(1, 1, 6, 32).expand(2, 5, 6, 32)  # five identical frames
        >>> out = palindrome_walk_loss(x, temperature=0.01)
        >>> float(out.loss) < 1e-3, sorted(out.acc_per_length), float(out.acc_per_length[4])
        (True, [1, 2, 3, 4], 1.0)
    """
    sizes = check_shape(features, "B T N D", name="palindrome_walk_loss: features")
    T = sizes["T"]
    if T < 2:
        raise ValueError(f"palindrome_walk_loss: features have T={T} frames, need >= 2 for a walk")
    lengths = list(range(1, T)) if walk_lengths is None else sorted({int(k) for k in walk_lengths})
    if not lengths or lengths[0] < 1 or lengths[-1] > T - 1:
        raise ValueError(f"palindrome_walk_loss: walk_lengths must be in [1, T-1] = [1, {T - 1}], got {walk_lengths}")
    forward, backward = transition_matrices(features[:, : lengths[-1] + 1], temperature, edge_dropout, generator)
    target = torch.arange(sizes["N"], device=features.device).expand(sizes["B"], -1)
    out_fwd = forward[:, 0]  # A_{0->1} ... A_{k-1->k}
    out_bwd = backward[:, 0]  # A_{k->k-1} ... A_{1->0}
    losses: dict[int, torch.Tensor] = {}
    accs: dict[int, torch.Tensor] = {}
    walks: dict[int, torch.Tensor] = {}
    for k in range(1, lengths[-1] + 1):
        if k > 1:
            out_fwd = out_fwd @ forward[:, k - 1]
            out_bwd = backward[:, k - 1] @ out_bwd
        if k not in lengths:
            continue
        walk = out_fwd @ out_bwd
        log_p = torch.log(walk + eps)
        losses[k] = F.nll_loss(rearrange(log_p, "B N M -> (B N) M"), target.reshape(-1))
        accs[k] = (walk.argmax(dim=-1) == target).float().mean().detach()
        walks[k] = walk
    loss = torch.stack(list(losses.values())).mean()
    return WalkOutput(loss=loss, loss_per_length=losses, acc_per_length=accs, walks=walks)


class CRWTask(PretextTask):
    """Contrastive random walk over the dense maps of a clip's frames (see the module docstring).

    A window of ``num_frames`` consecutive frames is drawn per clip (all ``T`` frames if ``None``); each frame's
    pyramid stage ``feature_stage`` becomes ``H' x W'`` nodes (or ``node_grid`` cells after average pooling), a
    per-node head embeds them, and :func:`palindrome_walk_loss` scores the walks ``0 -> k -> 0``.

    Args:
        num_frames: frames in the walk (``>= 2``); ``None`` uses the whole clip.
        temperature: transition softmax temperature (0.07 in the paper).
        edge_dropout: edge-dropout probability in training (0.1 in the paper); no dropout in eval mode.
        walk_lengths: lengths ``k`` to train on; ``None``: all of ``1 .. num_frames - 1``.
        feature_stage: pyramid stage (index into ``encoder.spec.channels``, negative from the end) giving the nodes.
            A stage other than the last leaves deeper stages without gradient (DDP then needs
            ``find_unused_parameters``).
        node_grid: ``(h, w)`` average-pool the map to this many nodes; ``None`` keeps every cell.
        frame_mode: ``"frames"`` (encode every frame alone) or ``"clip"`` (one pass, needs ``T' == T``).
        proj_dim: node embedding width.
        head_depth: ``-1`` no head (the encoder's channels), ``0`` a linear projection (the paper's), ``n`` adds
            ``n`` hidden ``Linear(D, D) -> ReLU`` layers first (:func:`~stssl.tasks.common.projection_mlp`).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Shape:
        ``batch["video"]``: ``(B, C, T, H, W)``; nodes ``(B, T_walk, N, proj_dim)``.

    Logs ``loss``, ``acc`` (mean cycle accuracy over the walk lengths), ``acc_len<k>`` per length (chance is about
    ``1 / N``), ``nodes`` (``N``) and ``emb_std`` (collapse monitor: std of the normalised node embeddings across
    the batch and nodes, averaged over dimensions).

    Example:
        >>> from stssl.encoders import FrameEncoder2D
        >>> enc = FrameEncoder2D(width=4, layers=(1, 1, 1, 1))
        >>> task = CRWTask(num_frames=4, feature_stage=2, proj_dim=8)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 6, 32, 32)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs)
        ['acc', 'acc_len1', 'acc_len2', 'acc_len3', 'emb_std', 'loss', 'nodes']
    """

    default_name = "crw"

    def __init__(
        self,
        num_frames: int | None = 8,
        temperature: float = 0.07,
        edge_dropout: float = 0.1,
        walk_lengths: list[int] | None = None,
        feature_stage: int = -1,
        node_grid: tuple[int, int] | None = None,
        frame_mode: FrameMode = "frames",
        proj_dim: int = 128,
        head_depth: int = 0,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        cls = type(self).__name__
        if num_frames is not None and num_frames < 2:
            raise ValueError(f"{cls}: num_frames must be >= 2 (or None for the whole clip), got {num_frames}")
        if not temperature > 0:
            raise ValueError(f"{cls}: temperature must be > 0, got {temperature}")
        if not 0.0 <= edge_dropout < 1.0:
            raise ValueError(f"{cls}: edge_dropout must be in [0, 1), got {edge_dropout}")
        if walk_lengths is not None:
            if not walk_lengths or min(walk_lengths) < 1:
                raise ValueError(f"{cls}: walk_lengths must be non-empty and >= 1, got {walk_lengths}")
            if num_frames is not None and max(walk_lengths) > num_frames - 1:
                raise ValueError(
                    f"{cls}: walk_lengths {walk_lengths} exceed num_frames - 1 = {num_frames - 1}"
                )
        if node_grid is not None and (len(node_grid) != 2 or min(int(g) for g in node_grid) < 1):
            raise ValueError(f"{cls}: node_grid must be two positive ints or None, got {node_grid}")
        if frame_mode not in FRAME_MODES:
            raise ValueError(f"{cls}: unknown frame_mode {frame_mode!r}; choose from {list(FRAME_MODES)}")
        if proj_dim < 1 or head_depth < -1:
            raise ValueError(f"{cls}: proj_dim must be >= 1 and head_depth >= -1, got {proj_dim}, {head_depth}")
        self.num_frames = None if num_frames is None else int(num_frames)
        self.temperature = float(temperature)
        self.edge_dropout = float(edge_dropout)
        self.walk_lengths = None if walk_lengths is None else sorted({int(k) for k in walk_lengths})
        self.feature_stage = int(feature_stage)
        self.node_grid = None if node_grid is None else (int(node_grid[0]), int(node_grid[1]))
        self.frame_mode = frame_mode
        self.proj_dim = int(proj_dim)
        self.head_depth = int(head_depth)
        self.head: nn.Module | None = None
        self._stage: int | None = None

    @property
    def requires(self) -> TaskRequirements:
        need = max(self.num_frames or 2, (self.walk_lengths or [1])[-1] + 1)
        return TaskRequirements(min_frames=need)

    def build(self, spec: EncoderSpec) -> None:
        self._stage = stage_index(type(self).__name__, spec, self.feature_stage)
        dim = spec.channels[self._stage]
        self.head = (nn.Identity() if self.head_depth < 0
                     else projection_mlp(dim, dim, self.proj_dim, self.head_depth + 1, batch_norm=False))

    def frame_features(self, video: torch.Tensor, encoder: Encoder) -> torch.Tensor:
        """Per-frame dense maps of pyramid stage ``feature_stage``: ``(B, C, T, H, W)`` -> ``(B, T, D, H', W')``."""
        if self._stage is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        sizes = check_shape(video, "B C T H W", name=f"{type(self).__name__}: video")
        if self.frame_mode == "frames":
            repeat = max(1, encoder.spec.min_frames)
            stills = rearrange(video, "B C T H W -> (B T) C 1 H W").expand(-1, -1, repeat, -1, -1)
            dense = encoder(stills).pyramid[self._stage].mean(dim=2)
            return rearrange(dense, "(B T) D h w -> B T D h w", B=sizes["B"])
        dense = encoder(video).pyramid[self._stage]
        if dense.shape[2] != sizes["T"]:
            raise ValueError(
                f"{type(self).__name__}: frame_mode='clip' needs pyramid stage {self._stage} to keep every frame "
                f"(T'=T={sizes['T']}), got T'={dense.shape[2]}; use frame_mode='frames'"
            )
        return rearrange(dense, "B D T h w -> B T D h w")

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.head is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        video = batch["video"]
        sizes = check_shape(video, "B C T H W", name=f"{type(self).__name__}: batch['video']")
        need = self.requires.min_frames
        if sizes["T"] < need:
            raise ValueError(f"{type(self).__name__}: video has T={sizes['T']} frames, needs {need}")
        gen = generator if generator is not None else self.next_generator()
        frames = sizes["T"] if self.num_frames is None else self.num_frames
        if frames < sizes["T"]:  # a random window per clip
            video, _ = sample_window(video, frames, generator=gen, owner=type(self).__name__)
        dense = self.frame_features(video, encoder)  # (B, T, D, h, w)
        if self.node_grid is not None:
            pooled = F.adaptive_avg_pool2d(rearrange(dense, "B T D h w -> (B T) D h w"), self.node_grid)
            dense = rearrange(pooled, "(B T) D h w -> B T D h w", B=sizes["B"])
        nodes = self.head(rearrange(dense, "B T D h w -> B T (h w) D"))
        walk = palindrome_walk_loss(
            nodes,
            self.temperature,
            self.walk_lengths,
            edge_dropout=self.edge_dropout if self.training else 0.0,
            generator=gen,
        )
        logs = {
            "loss": walk.loss.detach(),
            "acc": torch.stack(list(walk.acc_per_length.values())).mean(),
            **{f"acc_len{k}": acc for k, acc in walk.acc_per_length.items()},
            "nodes": torch.tensor(float(nodes.shape[2]), device=video.device),
            "emb_std": embedding_std(rearrange(nodes, "B T N D -> (B T N) D")),
        }
        return TaskOutput(loss=walk.loss, logs=logs)
