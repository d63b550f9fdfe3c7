"""Helpers shared by the classification-style temporal tasks (VCOP, Shuffle&Learn, OPN, arrow of time, speed).

Each task draws its labels with its own ``make_<task>_batch``; what they have in common lives here:

- option checks: :func:`check_pool_grid`, :func:`check_clip_len`, :func:`check_ordered_draw` (the clip-length
  check itself is each ``make_<task>_batch``'s, which takes an ``owner`` to name the task in its errors);
- labels and frame draws: :func:`order_permutations`, :func:`ordered_min_frames`, :func:`sample_ordered_frames`,
  :func:`gather_frames`;
- features: :func:`pool_cells` (dense map to one flat feature, keeping a coarse grid of cells),
  :func:`pooled_dim`, :func:`encode_frames` (frames encoded one by one);
- heads: :func:`relu_layer`, :func:`dropout_linear`, :func:`mlp_head`, :func:`projection_mlp`,
  :func:`pair_relations`; :func:`stage_index` (which pyramid stage a head reads);
- memories indexed by dataset item: :func:`memory_index`;
- the output: :func:`classification_output` (cross-entropy loss and top-1 accuracy logs);
- monitors: :func:`embedding_std` / :func:`log_embedding_std` (collapse), :func:`cluster_occupancy` (clusters in
  use), :func:`cross_view_agreement`.

The view-based tasks (contrastive, distillation, clustering, dense) share these too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.types import EncoderSpec, TaskOutput

__all__ = [
    "PairFusion",
    "check_clip_len",
    "check_ordered_draw",
    "check_pool_grid",
    "classification_output",
    "cluster_occupancy",
    "cross_view_agreement",
    "dropout_linear",
    "embedding_std",
    "encode_frames",
    "gather_frames",
    "log_embedding_std",
    "memory_index",
    "mlp_head",
    "order_permutations",
    "ordered_min_frames",
    "pair_relations",
    "pool_cells",
    "pooled_dim",
    "projection_mlp",
    "relu_layer",
    "sample_ordered_frames",
    "stage_index",
]

PairFusion = Literal["diff", "concat"]

# ---------------------------------------------------------------------------------------------- option checks


def check_pool_grid(owner: str, pool_grid: tuple[int, int], time_cells: int = 1) -> tuple[int, int]:
    """Validate a task's ``pool_grid``/``time_cells`` options; return the grid as two ints.

    Raises:
        ValueError: naming ``owner`` and the offending values.

    Example:
        >>> check_pool_grid("MyTask", (2, 3))
        (2, 3)
    """
    if len(pool_grid) != 2 or min(int(g) for g in pool_grid) < 1 or time_cells < 1:
        raise ValueError(
            f"{owner}: pool_grid must be two positive ints and time_cells positive, got {pool_grid}, {time_cells}"
        )
    return int(pool_grid[0]), int(pool_grid[1])


def check_clip_len(owner: str, clip_len: int, minimum: int = 2) -> int:
    """Validate a ``clip_len`` option (at least ``minimum`` frames; 2 makes playback direction and speed defined).

    Raises:
        ValueError: naming ``owner`` and the offending value.

    Example:
        >>> check_clip_len("MyTask", 1)
        Traceback (most recent call last):
        ...
        ValueError: MyTask: clip_len must be >= 2, got 1
    """
    if clip_len < minimum:
        raise ValueError(f"{owner}: clip_len must be >= {minimum}, got {clip_len}")
    return int(clip_len)


def order_permutations(num_clips: int) -> torch.Tensor:
    """All ``num_clips!`` orders, in lexicographic order: ``(num_clips!, num_clips)`` int64; row 0 is identity.

    Example:
        >>> order_permutations(3)[:3].tolist()
        [[0, 1, 2], [0, 2, 1], [1, 0, 2]]
    """
    if not 2 <= num_clips <= 6:
        raise ValueError(f"order_permutations: num_clips must be in [2, 6], got {num_clips}")
    return torch.tensor(list(itertools.permutations(range(num_clips))), dtype=torch.long)


def ordered_min_frames(num: int, min_gap: int = 1) -> int:
    """Frames needed to draw ``num`` ordered frames ``min_gap`` apart: ``(num - 1) * min_gap + 1``.

    Example:
        >>> ordered_min_frames(5, 2)
        9
    """
    return (num - 1) * min_gap + 1


def check_ordered_draw(owner: str, num: int, min_gap: int = 1, max_span: int | None = None) -> int:
    """Validate the options of a draw of ``num`` ordered frames; return the frames it needs.

    Args:
        owner: how error messages name the caller.
        num: frames per tuple (>= 1).
        min_gap: smallest difference between consecutive indices (>= 1).
        max_span: the tuple must fit in this many consecutive frames (None: anywhere).

    Returns:
        :func:`ordered_min_frames` ``(num, min_gap)``.

    Raises:
        ValueError: naming ``owner`` and the offending values.

    Example:
        >>> check_ordered_draw("MyTask", 4, min_gap=2)
        7
        >>> check_ordered_draw("MyTask", 4, min_gap=2, max_span=6)
        Traceback (most recent call last):
        ...
        ValueError: MyTask: max_span=6 cannot hold 4 frames 2 apart (needs 7)
    """
    if num < 1:
        raise ValueError(f"{owner}: num must be >= 1, got {num}")
    if min_gap < 1:
        raise ValueError(f"{owner}: min_gap must be >= 1, got {min_gap}")
    need = ordered_min_frames(num, min_gap)
    if max_span is not None and max_span < need:
        raise ValueError(f"{owner}: max_span={max_span} cannot hold {num} frames {min_gap} apart (needs {need})")
    return need


# ---------------------------------------------------------------------------------------------- frame draws


def sample_ordered_frames(
    batch: int,
    frames: int,
    num: int,
    min_gap: int = 1,
    max_span: int | None = None,
    *,
    generator: torch.Generator | None = None,
    owner: str = "sample_ordered_frames",
) -> torch.Tensor:
    """Draw ``num`` increasing frame indices per sample, consecutive ones at least ``min_gap`` apart.

    Without ``max_span`` the draw is uniform over all such tuples in ``[0, frames)``. With ``max_span`` a window
    of ``min(frames, max_span)`` frames is placed uniformly first and the tuple drawn uniformly inside it, so
    ``last - first < max_span``.

    Args:
        batch: ``B``, tuples to draw.
        frames: ``T``, frames available.
        num: ``n``, frames per tuple.
        min_gap: smallest difference between consecutive indices (>= 1).
        max_span: the tuple fits in this many consecutive frames (None: anywhere).
        generator: a CPU ``torch.Generator``.
        owner: how error messages name the caller.

    Returns:
        ``(B, n)`` int64 on the CPU, strictly increasing along ``n``.

    Example:
        >>> t = sample_ordered_frames(3, 20, 4, min_gap=3, generator=torch.Generator().manual_seed(0))
        >>> bool((t.diff(dim=1) >= 3).all()) and int(t.max()) < 20
        True
    """
    need = check_ordered_draw(owner, num, min_gap, max_span)
    window = frames if max_span is None else min(frames, max_span)
    if frames < need:
        raise ValueError(
            f"{owner}: video has T={frames} frames, needs (num-1)*min_gap+1 = {need} "
            f"for {num} frames {min_gap} apart"
        )
    start = torch.randint(frames - window + 1, (batch,), generator=generator)
    # Draw n distinct sorted values from a compressed range, then spread them by (min_gap - 1) per step.
    room = window - (num - 1) * (min_gap - 1)
    picks = torch.rand(batch, room, generator=generator).argsort(dim=1)[:, :num].sort(dim=1).values
    return start[:, None] + picks + torch.arange(num)[None, :] * (min_gap - 1)


def gather_frames(video: torch.Tensor, frame_indices: torch.Tensor) -> torch.Tensor:
    """Pick frames per sample: ``out[b, i] = video[b, :, frame_indices[b, i]]``.

    Args:
        video: ``(B, C, T, H, W)``.
        frame_indices: ``(B, n)`` int64 in ``[0, T)`` (any device).

    Returns:
        ``(B, n, C, H, W)`` on ``video``'s device.

    Example:
        >>> video = torch.arange(6.0).view(1, 1, 6, 1, 1)
        >>> gather_frames(video, torch.tensor([[4, 1]])).flatten().tolist()
        [4.0, 1.0]
    """
    sizes = check_shape(video, "B C T H W", name="video")
    check_shape(frame_indices, "B n", sizes, name="frame_indices")
    idx = frame_indices.to(video.device)
    rows = torch.arange(sizes["B"], device=video.device)[:, None]
    return rearrange(video, "B C T H W -> B T C H W")[rows, idx]


# ---------------------------------------------------------------------------------------------- features


def pool_cells(dense: torch.Tensor, grid: tuple[int, int] = (1, 1), time_cells: int = 1) -> torch.Tensor:
    """Average a dense map into ``time_cells x h x w`` cells and flatten them into one feature per sample.

    ``grid=(1, 1), time_cells=1`` is global average pooling (:attr:`EncoderOutput.pooled`); a coarse grid keeps
    where things are, ``time_cells > 1`` keeps when. Cells are flattened channel-major: ``(D t h w)``.

    Args:
        dense: ``(B, D, T', H', W')`` encoder features.
        grid: ``(h, w)`` spatial cells.
        time_cells: ``t`` temporal cells.

    Returns:
        ``(B, D * t * h * w)``.

    Example:
        >>> dense = torch.arange(16.0).view(1, 1, 1, 4, 4)
        >>> pool_cells(dense).tolist(), pool_cells(dense, (2, 1)).tolist()  # top and bottom halves
        ([[7.5]], [[3.5, 11.5]])
    """
    check_shape(dense, "B D T' H' W'", name="pool_cells dense")
    if min(grid) < 1 or time_cells < 1:
        raise ValueError(f"pool_cells: grid and time_cells must be positive, got grid={grid}, time_cells={time_cells}")
    if tuple(grid) == (1, 1) and time_cells == 1:
        return dense.mean(dim=(2, 3, 4))
    cells = nn.functional.adaptive_avg_pool3d(dense, (time_cells, int(grid[0]), int(grid[1])))
    return rearrange(cells, "B D t h w -> B (D t h w)")


def pooled_dim(dim: int, grid: tuple[int, int] = (1, 1), time_cells: int = 1) -> int:
    """Width of :func:`pool_cells`' output for an encoder of width ``dim``: ``dim * t * h * w``.

    Example:
        >>> pooled_dim(16, (2, 3), time_cells=2)
        192
    """
    return dim * grid[0] * grid[1] * time_cells


def encode_frames(
    encoder: Encoder, frames: torch.Tensor, pool_grid: tuple[int, int] = (1, 1)
) -> torch.Tensor:
    """Encode every frame independently as a still clip of ``encoder.spec.min_frames`` copies; pool each.

    Args:
        encoder: any :class:`~stssl.encoders.base.Encoder`.
        frames: ``(B, n, C, H, W)``.
        pool_grid: ``(h, w)`` cells kept per frame (see :func:`pool_cells`).

    Returns:
        ``(B, n, D * h * w)``.
    """
    sizes = check_shape(frames, "B n C H W", name="frames")
    repeat = max(1, encoder.spec.min_frames)
    clips = rearrange(frames, "B n C H W -> (B n) C 1 H W").expand(-1, -1, repeat, -1, -1)
    feats = pool_cells(encoder(clips).dense, pool_grid)
    return rearrange(feats, "(B n) F -> B n F", n=sizes["n"])


# ---------------------------------------------------------------------------------------------- heads


def relu_layer(in_dim: int, out_dim: int) -> nn.Sequential:
    """``Linear(in_dim, out_dim) -> ReLU``: the per-frame or per-pair layer of the ordering tasks.

    Example:
        >>> relu_layer(8, 4)(-torch.ones(2, 8)).shape
        torch.Size([2, 4])
    """
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU(inplace=True))


def dropout_linear(in_dim: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``Dropout -> Linear(in_dim, out_dim)``: a classifier on already non-linear features.

    Example:
        >>> dropout_linear(8, 3, 0.5)(torch.zeros(2, 8)).shape
        torch.Size([2, 3])
    """
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))


def mlp_head(in_dim: int, hidden: int, out_dim: int, dropout: float = 0.0) -> nn.Sequential:
    """``Linear(in_dim, hidden) -> ReLU -> Dropout -> Linear(hidden, out_dim)``.

    Example:
        >>> mlp_head(8, 16, 3)(torch.zeros(2, 8)).shape
        torch.Size([2, 3])
    """
    return nn.Sequential(*relu_layer(in_dim, hidden), *dropout_linear(hidden, out_dim, dropout))


def projection_mlp(
    in_dim: int,
    hidden: int,
    out_dim: int,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """Projector MLP: ``num_layers - 1`` times ``Linear -> [BatchNorm1d] -> activation``, then ``Linear``.

    SimCLR/BYOL/MoCo projectors and predictors (``batch_norm=True``), DINO's head MLP (``activation=nn.GELU``),
    per-node / per-cell heads of the dense tasks (``batch_norm=False``, on the last axis of any shape). Linear
    layers followed by BatchNorm have no bias (the norm would cancel it). ``last_batch_norm`` adds an affine-free
    ``BatchNorm1d`` at the end (MoCo v3, SimCLR v2). ``num_layers=1`` is a single ``Linear``.

    Shape:
        ``(..., in_dim) -> (..., out_dim)``; with batch norm, ``(N, in_dim)`` and, in training, ``N >= 2``.

    Example:
        >>> head = projection_mlp(8, 16, 4)
        >>> tuple(head(torch.rand(3, 8)).shape), len(head)
        ((3, 4), 4)
        >>> [type(m).__name__ for m in projection_mlp(8, 16, 4, batch_norm=False, activation=nn.GELU)]
        ['Linear', 'GELU', 'Linear']
    """
    if min(in_dim, hidden, out_dim, num_layers) < 1:
        raise ValueError(
            f"projection_mlp: in_dim, hidden, out_dim and num_layers must be >= 1, got {in_dim}, {hidden}, "
            f"{out_dim}, {num_layers}"
        )
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(activation())
        dim = hidden
    layers.append(nn.Linear(dim, out_dim, bias=not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


def stage_index(owner: str, spec: EncoderSpec, stage: int) -> int:
    """Resolve a (possibly negative) pyramid stage index against an encoder spec; return it in ``[0, n)``.

    Raises:
        ValueError: naming ``owner``, the stage and how many stages the encoder has.

    Example:
        >>> spec = EncoderSpec(channels=(4, 8), strides=((1, 2, 2), (1, 4, 4)))
        >>> stage_index("MyTask", spec, -1)
        1
    """
    n = len(spec.channels)
    if not -n <= stage < n:
        raise ValueError(f"{owner}: feature_stage={stage} is out of range for an encoder with {n} pyramid stages")
    return stage % n


def pair_relations(
    feats: torch.Tensor, pairs: list[tuple[int, int]], pair_head: nn.Module, fusion: PairFusion = "concat"
) -> torch.Tensor:
    """Run ``pair_head`` on every pair of per-item features and concatenate the results.

    Args:
        feats: ``(B, n, F)`` one feature per frame or clip.
        pairs: ``(i, j)`` index pairs into ``n`` (e.g. ``itertools.combinations(range(n), 2)``).
        pair_head: maps a fused pair ``(B, 2F)`` (``"concat"``: ``[f_i, f_j]``) or ``(B, F)`` (``"diff"``:
            ``f_i - f_j``) to ``(B, R)``.
        fusion: how a pair is fed to ``pair_head``.

    Returns:
        ``(B, len(pairs) * R)``, pair-major.

    Example:
        >>> feats = torch.arange(6.0).view(1, 3, 2)
        >>> pair_relations(feats, [(0, 1), (1, 2)], nn.Identity(), "diff").tolist()
        [[-2.0, -2.0, -2.0, -2.0]]
    """
    check_shape(feats, "B n F", name="feats")
    if fusion == "diff":
        inputs = [feats[:, i] - feats[:, j] for i, j in pairs]
    elif fusion == "concat":
        inputs = [torch.cat([feats[:, i], feats[:, j]], dim=1) for i, j in pairs]
    else:
        raise ValueError(f"pair_relations: unknown fusion {fusion!r}; choose from ['diff', 'concat']")
    return torch.cat([pair_head(x) for x in inputs], dim=1)


# ---------------------------------------------------------------------------------------------- output


def classification_output(logits: torch.Tensor, label: torch.Tensor) -> TaskOutput:
    """Cross-entropy loss and detached ``loss``/``acc`` (top-1 accuracy) logs for a classification pretext task.

    Args:
        logits: ``(B, K)``.
        label: ``(B,)`` int64 in ``[0, K)``.

    Example:
        >>> out = classification_output(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]))
        >>> sorted(out.logs), float(out.logs["acc"])
        (['acc', 'loss'], 0.5)
    """
    check_shape(logits, "B K", name="logits")
    check_shape(label, "B", {"B": logits.shape[0]}, name="label")
    loss = nn.functional.cross_entropy(logits, label)
    acc = (logits.argmax(dim=1) == label).float().mean()
    return TaskOutput(loss=loss, logs={"loss": loss.detach(), "acc": acc.detach()})


# ---------------------------------------------------------------------------------------------- memories


def memory_index(owner: str, batch: dict, memory_size: int, device: torch.device | None = None) -> torch.Tensor:
    """``batch["index"]`` (the dataset item of each clip), checked against a memory of ``memory_size`` rows.

    Returns:
        ``(B,)`` int64 on ``device`` (``None``: where it is).

    Raises:
        ValueError: naming ``owner`` when the batch has no ``"index"``, it is not a ``(B,)`` integer tensor, or a
            value lies outside ``[0, memory_size)``.

    Example:
        >>> memory_index("MyTask", {"index": torch.tensor([3, 12])}, 10)
        Traceback (most recent call last):
        ...
        ValueError: MyTask: batch['index'] has values in [3, 12] but memory_size=10; set memory_size >= the number of training items
    """
    if "index" not in batch:
        raise ValueError(f"{owner}: the batch has no 'index' (the dataset item of each clip)")
    index = batch["index"] if device is None else batch["index"].to(device)
    if index.dim() != 1 or index.dtype.is_floating_point:
        raise ValueError(f"{owner}: batch['index'] must be a (B,) integer tensor, got {index.dtype} {tuple(index.shape)}")
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= memory_size:
        raise ValueError(
            f"{owner}: batch['index'] has values in [{low}, {high}] but memory_size={memory_size}; set memory_size "
            ">= the number of training items"
        )
    return index.long()


# ---------------------------------------------------------------------------------------------- monitors


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor: std across samples of the L2-normalised embeddings, averaged over dimensions.

    Rows are the second-to-last axis ``N`` (the samples, usually the batch); any leading axes are groups (views,
    time steps) whose values are averaged: ``normalize(z).std(dim=-2).mean()``. Put the batch axis second to last
    (``rearrange(z, "B n D -> n B D")``), or flatten everything into it (``"... D -> (...) D"``) to count every
    vector as a sample. About ``1 / sqrt(D)`` for embeddings spread over the sphere, 0 for a collapsed encoder
    (every sample the same).

    Args:
        z: ``(..., N, D)`` with ``N >= 2``.

    Returns:
        Scalar, detached, float32.

    Example:
        >>> float(embedding_std(torch.ones(4, 3)))
        0.0
        >>> round(float(embedding_std(torch.eye(4))), 3)  # one-hot rows: std of (1, 0, 0, 0) per dimension
        0.5
        >>> float(embedding_std(torch.stack([torch.eye(4), torch.ones(4, 4)])))  # two groups: (0.5 + 0) / 2
        0.25
    """
    if z.dim() < 2 or z.shape[-2] < 2:
        raise ValueError(f"embedding_std: needs at least 2 samples on the second-to-last axis, got z of shape "
                         f"{tuple(z.shape)}")
    return F.normalize(z.detach().float(), dim=-1).std(dim=-2).mean()


def log_embedding_std(logs: dict[str, torch.Tensor], key: str, z: torch.Tensor) -> None:
    """Add ``logs[key] =`` :func:`embedding_std` ``(z)`` when ``z`` ``(..., N, D)`` has ``N >= 2`` samples.

    Example:
        >>> logs: dict = {}
        >>> log_embedding_std(logs, "std", torch.ones(1, 8)); log_embedding_std(logs, "z_std", torch.eye(4))
        >>> {k: round(float(v), 3) for k, v in logs.items()}
        {'z_std': 0.5}
    """
    if z.dim() >= 2 and z.shape[-2] > 1:
        logs[key] = embedding_std(z)


@torch.no_grad()
def cluster_occupancy(assignments: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The clustering collapse monitor: ``clusters_used`` (non-empty clusters, float) and ``max_cluster_frac`` (the
    largest cluster's share) of integer assignments in ``[0, k)``, any shape.

    Example:
        >>> logs = cluster_occupancy(torch.tensor([0, 0, 0, 2]), 4)
        >>> int(logs["clusters_used"]), float(logs["max_cluster_frac"])
        (2, 0.75)
    """
    counts = torch.bincount(assignments.flatten().long(), minlength=k).float()
    total = counts.sum().clamp(min=1.0)
    return {"clusters_used": (counts > 0).sum().float(), "max_cluster_frac": counts.max() / total}


@torch.no_grad()
def cross_view_agreement(targets: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
    """How often a view's prediction equals another view's target: the mean over ``i != j`` of
    ``(targets[i] == preds[j]).mean()``.

    Args:
        targets: ``(Vt, B)`` integer labels per view (codes, teacher top prototypes).
        preds: ``(Vs, B)`` integer predictions per view; view ``j < Vt`` is the same view as ``targets[j]``.

    Example:
        >>> cross_view_agreement(torch.tensor([[0, 1], [0, 2]]), torch.tensor([[0, 1], [0, 1], [3, 3]])).item()  # (1 + 0 + 0.5 + 0) / 4
        0.375
    """
    sizes = check_shape(targets, "Vt B", name="cross_view_agreement: targets")
    check_shape(preds, "Vs B", sizes, name="cross_view_agreement: preds")
    pairs = [(i, j) for i in range(targets.shape[0]) for j in range(preds.shape[0]) if i != j]
    return torch.stack([(targets[i] == preds[j]).float().mean() for i, j in pairs]).mean()
