"""Dense contrastive learning between the feature cells of two augmented views of the same clip (PixContrast of
Xie et al., "Propagate Yourself: Exploring Pixel-Level Consistency for Unsupervised Visual Representation
Learning", CVPR 2021; in the family of DenseCL, Wang et al., CVPR 2021).

Two views of every clip are drawn with :class:`~stssl.transforms.gpu.GPUAugment` (random resized crop, flip,
colour; one draw per view, shared by its frames; both views keep the same frames). GPUAugment records, per view,
the ``(3, 3)`` matrix ``M`` mapping input pixels to view pixels (half-pixel convention, flip included), so the
centre of every feature cell of a view maps back into the original frame with ``M^{-1}``
(:func:`cell_correspondence`). A cell of view 1 and a cell of view 2 of the same clip are a *positive pair* when
their centres lie within ``max_distance`` of each other in the original image (in pixels, or in units of the
larger cell side, PixPro's normalisation, whose default threshold is 0.7). Each cell's embedding (a per-cell MLP on
the encoder's dense map, L2-normalised) must pick its positives among all cells of the other view in the batch
(:func:`dense_info_nce`: ``-log(sum_pos exp(s / tau) / sum_all exp(s / tau))``); negatives are the other cells of
the same clip and every cell of the other clips of the local batch (nothing is gathered across DDP processes). The
loss is symmetric in the two views. Memory: the similarity matrix is ``(B N) x (B N)`` for ``N`` cells per clip.

Time: with ``pool_time=True`` (default) the dense map ``(B, D, T', H', W')`` is averaged over ``T'`` and the cells
are spatial; with ``False`` a cell is ``(t', h', w')`` and positives must also share ``t'`` (both views hold the
same frames, so the same ``t'`` sees the same instant).
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
from stssl.transforms.gpu import GPUAugment, make_views
from stssl.types import EncoderSpec, TaskOutput

__all__ = [
    "DISTANCE_UNITS",
    "CellMatch",
    "DenseContrastTask",
    "DenseNCEOutput",
    "cell_centres",
    "cell_correspondence",
    "dense_info_nce",
]

DistanceUnit = Literal["pixels", "cells"]
#: Units of :func:`cell_correspondence`'s ``max_distance``.
DISTANCE_UNITS: tuple[str, ...] = ("pixels", "cells")


def cell_centres(
    grid: tuple[int, int],
    image_size: tuple[int, int],
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Centres of a ``grid`` of feature cells over an image, in its pixels (half-pixel convention).

    Cell ``(i, j)`` of an ``h x w`` grid over ``H x W`` pixels covers ``[j W/w, (j+1) W/w)`` horizontally, so its
    centre is ``x = (j + 0.5) W / w - 0.5`` (pixel ``k``'s centre is at ``x = k``), likewise ``y``. For a CNN
    with stride ``s`` and ``W = w s`` this is the centre of the ``s x s`` block of pixels the cell summarises.

    Args:
        grid: ``(h, w)`` cells.
        image_size: ``(H, W)`` pixels.

    Returns:
        ``(h * w, 2)`` ``(x, y)`` per cell, row-major (cell ``i * w + j``, as ``rearrange(.., "h w -> (h w)")``).

    Example:
        >>> cell_centres((1, 2), (4, 8)).tolist()
        [[1.5, 1.5], [5.5, 1.5]]
    """
    h, w = int(grid[0]), int(grid[1])
    H, W = int(image_size[0]), int(image_size[1])
    if min(h, w, H, W) < 1:
        raise ValueError(f"cell_centres: grid {grid} and image_size {image_size} must be positive")
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * (H / h) - 0.5
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * (W / w) - 0.5
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


@dataclass
class CellMatch:
    """Output of :func:`cell_correspondence`.

    Attributes:
        centres_1: ``(B, N, 2)`` view-1 cell centres ``(x, y)`` in input (original-image) pixels.
        centres_2: ``(B, N, 2)`` the same for view 2.
        distance: ``(B, N, N)`` ``distance[b, i, j]`` between view-1 cell ``i`` and view-2 cell ``j``, input pixels.
        cell_size: ``(B,)`` the largest side of a cell of either view, in input pixels.
        positive: ``(B, N, N)`` bool, ``distance <= threshold``.
    """

    centres_1: torch.Tensor
    centres_2: torch.Tensor
    distance: torch.Tensor
    cell_size: torch.Tensor
    positive: torch.Tensor


def _to_input(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """View pixels ``(N, 2)`` -> input pixels ``(B, N, 2)`` through ``transform^{-1}`` (``(B, 3, 3)``)."""
    homo = torch.cat([points, torch.ones_like(points[:, :1])], dim=1)  # (N, 3)
    back = torch.einsum("bij,nj->bni", torch.linalg.inv(transform), homo)
    return back[..., :2] / back[..., 2:]


def cell_correspondence(
    transform_1: torch.Tensor,
    transform_2: torch.Tensor,
    image_size: tuple[int, int],
    grid: tuple[int, int],
    max_distance: float,
    unit: DistanceUnit = "pixels",
) -> CellMatch:
    """Which feature cells of two views of the same image see the same image point.

    Each view ``v`` was made from the original image by ``transform_v`` (input pixels -> view pixels, as
    :class:`~stssl.transforms.gpu.GPUAugment`'s ``last_params["transform"]``, flips included). Cell centres
    (:func:`cell_centres` of ``grid`` over the ``image_size`` view) are mapped back to the original image and
    compared there.

    Args:
        transform_1: ``(B, 3, 3)`` view-1 matrix, invertible.
        transform_2: ``(B, 3, 3)`` view-2 matrix.
        image_size: ``(H', W')`` of both views.
        grid: ``(h, w)`` feature cells over a view.
        max_distance: positive pairs are at most this far apart; in input pixels (``unit="pixels"``) or in units
            of :attr:`CellMatch.cell_size` (``"cells"``; PixPro uses 0.7).
        unit: ``"pixels"`` or ``"cells"``.

    Returns:
        A :class:`CellMatch` (``N = h * w``).

    Example:
        >>> crop_right = torch.tensor([[1.0, 0, -4], [0, 1, 0], [0, 0, 1]])[None]  # x' = x - 4
        >>> m = cell_correspondence(torch.eye(3)[None], crop_right, (4, 8), (1, 2), 0.5)
        >>> m.positive[0].int().tolist()  # view 1's right cell is view 2's left cell
        [[0, 0], [1, 0]]
    """
    sizes = check_shape(transform_1, "B 3 3", name="cell_correspondence: transform_1")
    check_shape(transform_2, "B 3 3", sizes, name="cell_correspondence: transform_2")
    if unit not in DISTANCE_UNITS:
        raise ValueError(f"cell_correspondence: unknown unit {unit!r}; choose from {list(DISTANCE_UNITS)}")
    if not max_distance >= 0:
        raise ValueError(f"cell_correspondence: max_distance must be >= 0, got {max_distance}")
    dtype = torch.float64 if transform_1.dtype == torch.float64 else torch.float32
    m1, m2 = transform_1.to(dtype), transform_2.to(dtype)
    centres = cell_centres(grid, image_size, device=m1.device, dtype=dtype)
    c1, c2 = _to_input(m1, centres), _to_input(m2, centres)
    distance = torch.cdist(c1, c2)
    # One cell spans (W'/w, H'/h) view pixels; the columns of M^{-1}'s linear part scale them to input pixels.
    step = torch.tensor([image_size[1] / grid[1], image_size[0] / grid[0]], dtype=dtype, device=m1.device)
    sides = [
        (torch.linalg.inv(m)[:, :2, :2].norm(dim=1) * step).amax(dim=1) for m in (m1, m2)
    ]  # (B,) each: the larger side of a cell of that view
    cell_size = torch.maximum(*sides)
    threshold = max_distance * (cell_size if unit == "cells" else torch.ones_like(cell_size))
    positive = distance <= threshold[:, None, None]
    return CellMatch(centres_1=c1, centres_2=c2, distance=distance, cell_size=cell_size, positive=positive)


@dataclass
class DenseNCEOutput:
    """Output of :func:`dense_info_nce`.

    Attributes:
        loss: scalar mean over the anchors that have a positive (0, still attached to the graph, if none has).
        anchors: ``(Nq,)`` bool, which queries have at least one positive.
        acc: detached fraction of those anchors whose most similar key is a positive (0 if there are none).
    """

    loss: torch.Tensor
    anchors: torch.Tensor
    acc: torch.Tensor


def dense_info_nce(
    query: torch.Tensor, key: torch.Tensor, positive: torch.Tensor, temperature: float = 0.2
) -> DenseNCEOutput:
    """InfoNCE with several positives per query (PixContrast): ``-log(sum_{j in P_i} e^{s_ij / tau} / sum_j
    e^{s_ij / tau})``, ``s`` the cosine similarity; every key that is not a positive is a negative.

    Args:
        query: ``(Nq, D)``.
        key: ``(Nk, D)``.
        positive: ``(Nq, Nk)`` bool.
        temperature: ``tau > 0``.

    Returns:
        A :class:`DenseNCEOutput`; queries without a positive are left out of the mean.

    Example:
        >>> q = torch.eye(3)
        >>> out = dense_info_nce(q, q, torch.eye(3, dtype=torch.bool), temperature=1.0)
        >>> torch.allclose(out.loss, torch.log(1 + 2 * torch.exp(torch.tensor(-1.0)))), float(out.acc)
        (True, 1.0)
    """
    sizes = check_shape(query, "Nq D", name="dense_info_nce: query")
    check_shape(key, "Nk D", sizes, name="dense_info_nce: key")
    check_shape(positive, "Nq Nk", sizes, name="dense_info_nce: positive")
    if not temperature > 0:
        raise ValueError(f"dense_info_nce: temperature must be > 0, got {temperature}")
    if positive.dtype != torch.bool:
        raise TypeError(f"dense_info_nce: positive must be a bool mask, got dtype {positive.dtype}")
    upcast = (torch.float16, torch.bfloat16)
    q = F.normalize(query.float() if query.dtype in upcast else query, dim=1)
    k = F.normalize(key.float() if key.dtype in upcast else key, dim=1)
    logits = q @ k.T / temperature
    anchors = positive.any(dim=1)
    if not bool(anchors.any()):
        return DenseNCEOutput(loss=logits.sum() * 0.0, anchors=anchors, acc=logits.new_zeros(()))
    log_all = torch.logsumexp(logits[anchors], dim=1)
    log_pos = torch.logsumexp(logits[anchors].masked_fill(~positive[anchors], float("-inf")), dim=1)
    loss = (log_all - log_pos).mean()
    best = logits[anchors].argmax(dim=1, keepdim=True)
    acc = positive[anchors].gather(1, best).float().mean().detach()
    return DenseNCEOutput(loss=loss, anchors=anchors, acc=acc)


class DenseContrastTask(PretextTask):
    """Dense contrastive loss between the feature cells of two augmented views of each clip (module docstring).

    Args:
        size: ``(H', W')`` of the views; ``None`` keeps the input size.
        scale: GPUAugment crop area range (larger crops overlap more, so more cells match).
        ratio: GPUAugment crop aspect range (relative to the view's).
        hflip: flip probability.
        color_jitter: colour jitter strength (see :class:`~stssl.transforms.gpu.GPUAugment`).
        color_jitter_p: probability of the colour jitter.
        grayscale: probability of a gray view.
        blur: probability of a Gaussian blur.
        view_len: frames per view (a random window of the clip, the same for both views); ``None`` uses all.
        feature_stage: pyramid stage whose cells are contrasted (negative from the end). A stage other than the
            last leaves deeper stages without gradient (DDP then needs ``find_unused_parameters``).
        pool_time: average the stage over its time axis (spatial cells) or keep ``(t', h', w')`` cells.
        hidden: width of the per-cell projection MLP.
        proj_dim: embedding width.
        temperature: InfoNCE temperature.
        max_distance: positive threshold (see :func:`cell_correspondence`).
        distance_unit: ``"cells"`` (``max_distance`` in cell sides, PixPro's 0.7) or ``"pixels"`` (input pixels).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Shape:
        ``batch["video"]``: ``(B, C, T, H, W)`` in ``[0, 1]``; the views ``(B, C, view_len, H', W')``; cell
        embeddings ``(B, N, proj_dim)`` per view, ``N = (T') h w``.

    Logs ``loss``, ``acc`` (top-1: the most similar cell of the other view, among all cells of the batch, is a
    positive), ``matches`` (spatial positive pairs per clip, before the same-time rule of ``pool_time=False``),
    ``anchor_frac`` (fraction of view-1 cells with a positive),
    ``cells`` (``N``) and ``emb_std`` (collapse monitor over all cell embeddings).

    Example:
        >>> from stssl.encoders import build_encoder
        >>> enc = build_encoder("r3d_tiny", width=4)
        >>> task = DenseContrastTask(feature_stage=-2, hidden=16, proj_dim=8)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 4, 32, 32)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs)
        ['acc', 'anchor_frac', 'cells', 'emb_std', 'loss', 'matches']
    """

    default_name = "dense_contrast"

    def __init__(
        self,
        size: tuple[int, int] | None = None,
        scale: tuple[float, float] = (0.4, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        color_jitter_p: float = 0.8,
        grayscale: float = 0.2,
        blur: float = 0.0,
        view_len: int | None = None,
        feature_stage: int = -1,
        pool_time: bool = True,
        hidden: int = 512,
        proj_dim: int = 128,
        temperature: float = 0.2,
        max_distance: float = 0.7,
        distance_unit: DistanceUnit = "cells",
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        cls = type(self).__name__
        if size is not None and (len(size) != 2 or min(int(s) for s in size) < 1):
            raise ValueError(f"{cls}: size must be two positive ints or None, got {size}")
        if view_len is not None and view_len < 1:
            raise ValueError(f"{cls}: view_len must be >= 1 or None, got {view_len}")
        if hidden < 1 or proj_dim < 1:
            raise ValueError(f"{cls}: hidden and proj_dim must be >= 1, got {hidden}, {proj_dim}")
        if not temperature > 0:
            raise ValueError(f"{cls}: temperature must be > 0, got {temperature}")
        if not max_distance >= 0:
            raise ValueError(f"{cls}: max_distance must be >= 0, got {max_distance}")
        if distance_unit not in DISTANCE_UNITS:
            raise ValueError(f"{cls}: unknown distance_unit {distance_unit!r}; choose from {list(DISTANCE_UNITS)}")
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.augment_options = {
            "scale": (float(scale[0]), float(scale[1])),
            "ratio": (float(ratio[0]), float(ratio[1])),
            "hflip": float(hflip),
            "color_jitter": color_jitter,
            "color_jitter_p": float(color_jitter_p),
            "grayscale": float(grayscale),
            "blur": float(blur),
        }
        GPUAugment(self.size or 8, **self.augment_options)  # type: ignore[arg-type]  # validates the options now
        self.view_len = None if view_len is None else int(view_len)
        self.feature_stage = int(feature_stage)
        self.pool_time = bool(pool_time)
        self.hidden = int(hidden)
        self.proj_dim = int(proj_dim)
        self.temperature = float(temperature)
        self.max_distance = float(max_distance)
        self.distance_unit: DistanceUnit = distance_unit
        self.head: nn.Module | None = None
        self._stage: int | None = None
        self._augmenters: dict[tuple[int, int], GPUAugment] = {}  # no parameters: not registered as submodules

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.view_len or 1)

    def build(self, spec: EncoderSpec) -> None:
        self._stage = stage_index(type(self).__name__, spec, self.feature_stage)
        # PixPro's 1x1-conv projector without its batch norm, on the last axis: Linear -> ReLU -> Linear.
        self.head = projection_mlp(spec.channels[self._stage], self.hidden, self.proj_dim, batch_norm=False)

    def augmenter(self, size: Sequence[int]) -> GPUAugment:
        """The :class:`~stssl.transforms.gpu.GPUAugment` producing ``size`` views (made once per size)."""
        key = (int(size[0]), int(size[1]))
        if key not in self._augmenters:
            self._augmenters[key] = GPUAugment(key, **self.augment_options)  # type: ignore[arg-type]
        return self._augmenters[key]

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.head is None or self._stage is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        video = batch["video"]
        sizes = check_shape(video, "B C T H W", name=f"{type(self).__name__}: batch['video']")
        B = sizes["B"]
        gen = generator if generator is not None else self.next_generator()
        frames = sizes["T"] if self.view_len is None else self.view_len
        if frames > sizes["T"]:
            raise ValueError(f"{type(self).__name__}: video has T={sizes['T']} frames, needs view_len={frames}")
        if frames < sizes["T"]:  # one random window per clip, shared by its two views
            video, _ = sample_window(video, frames, generator=gen, owner=type(self).__name__)
        augment = self.augmenter(self.size or (sizes["H"], sizes["W"]))
        views = make_views(augment, video, None, 2, gen)
        transform = augment.last_params["transform"]  # (2B, 3, 3): row v * B + b is view v of clip b
        dense = encoder(torch.cat([views[0][0], views[1][0]])).pyramid[self._stage]  # (2B, D, T', h, w)
        if self.pool_time:
            dense = dense.mean(dim=2, keepdim=True)
        t, h, w = dense.shape[2:]
        emb = self.head(rearrange(dense, "(V B) D t h w -> V B (t h w) D", V=2))  # (2, B, N, proj_dim)
        match = cell_correspondence(
            transform[:B], transform[B:], augment.size, (h, w), self.max_distance, self.distance_unit
        )
        # (B, S, S) spatial -> (B, N, N) with N = t * S: same time step only -> (B N, B N): same clip only.
        same_t = torch.eye(t, dtype=torch.bool, device=dense.device)
        pos = rearrange(same_t[None, :, None, :, None] & match.positive[:, None, :, None, :],
                        "B t1 s1 t2 s2 -> B (t1 s1) (t2 s2)")
        same_clip = torch.eye(B, dtype=torch.bool, device=dense.device)
        full = rearrange(same_clip[:, None, :, None] & pos[:, :, None, :], "B1 N1 B2 N2 -> (B1 N1) (B2 N2)")
        q1, q2 = (rearrange(e, "B N D -> (B N) D") for e in emb)
        fwd = dense_info_nce(q1, q2, full, self.temperature)
        bwd = dense_info_nce(q2, q1, full.T, self.temperature)
        loss = (fwd.loss + bwd.loss) / 2
        logs = {
            "loss": loss.detach(),
            "acc": (fwd.acc + bwd.acc) / 2,
            "matches": match.positive.float().sum(dim=(1, 2)).mean(),
            "anchor_frac": fwd.anchors.float().mean(),
            "cells": torch.tensor(float(emb.shape[2]), device=dense.device),
            "emb_std": embedding_std(rearrange(emb, "V B N D -> (V B N) D")),
        }
        return TaskOutput(loss=loss, logs=logs)
