"""Contrastive predictive coding over time steps (CPC, van den Oord et al. 2018; for video DPC, Han et al.,
"Video Representation Learning by Dense Predictive Coding", ICCVW 2019).

A window of ``num_blocks * block_len`` consecutive frames is cut from each clip (:func:`make_cpc_batch`) into
``num_blocks`` blocks of ``block_len`` frames. Every block is encoded independently by the shared encoder; its
dense map is average-pooled to one vector or to a coarse ``pool_grid`` of cells (flattened), and a projection MLP
maps that to the block latent ``z_t``. A GRU runs over the latents in time order, its state ``c_t`` summarising
blocks ``0 .. t``; one linear predictor per future step ``k = 1 .. pred_steps`` maps ``c_t`` to a prediction of
``z_{t+k}``. The loss is :func:`~stssl.losses.contrastive.cpc_loss`: each prediction must pick its true latent among
all ``B * num_blocks`` latents of the batch (other clips at every step, and the same clip at the other steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.losses.contrastive import cpc_loss
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import check_pool_grid, log_embedding_std, mlp_head, pooled_dim
from stssl.tasks.image_common import encode_pooled, sample_window
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["CPCBatch", "CPCTask", "cpc_step_accuracy", "make_cpc_batch"]


@dataclass
class CPCBatch:
    """Output of :func:`make_cpc_batch`.

    Attributes:
        blocks: ``(B, n, C, L, H, W)``: ``blocks[:, t]`` is block ``t``, frames ``start + t * L .. start + (t+1) L - 1``.
        start: ``(B,)`` int64 (CPU), the first frame of the window within the input's ``T`` axis.
    """

    blocks: torch.Tensor
    start: torch.Tensor


def make_cpc_batch(
    video: torch.Tensor, num_blocks: int, block_len: int, *, generator: torch.Generator | None = None
) -> CPCBatch:
    """Cut a random window of ``num_blocks`` consecutive blocks of ``block_len`` frames from each clip.

    Pure and seeded: the same ``generator`` state gives the same output; the draw happens on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= num_blocks * block_len``.
        num_blocks: ``n`` blocks per window (``>= 2``).
        block_len: ``L`` frames per block (``>= 1``).
        generator: a CPU ``torch.Generator``.

    Returns:
        A :class:`CPCBatch`.

    Example:
        >>> video = torch.arange(10.0).view(1, 1, 10, 1, 1)
        >>> out = make_cpc_batch(video, 3, 2, generator=torch.Generator().manual_seed(0))
        >>> s = int(out.start[0])
        >>> out.blocks[0, :, 0, :, 0, 0].tolist() == [[s + 0.0, s + 1.0], [s + 2.0, s + 3.0], [s + 4.0, s + 5.0]]
        True
    """
    sizes = check_shape(video, "B C T H W", name="make_cpc_batch video")
    if num_blocks < 2 or block_len < 1:
        raise ValueError(f"make_cpc_batch: need num_blocks >= 2 and block_len >= 1, got {num_blocks}, {block_len}")
    span = num_blocks * block_len
    if sizes["T"] < span:
        raise ValueError(
            f"make_cpc_batch: video has T={sizes['T']} frames, needs num_blocks * block_len = {span}"
        )
    window, start = sample_window(video, span, generator=generator, owner="make_cpc_batch")
    blocks = rearrange(window, "B C (n L) H W -> B n C L H W", n=num_blocks)
    return CPCBatch(blocks=blocks, start=start)


@torch.no_grad()
def cpc_step_accuracy(
    predictions: torch.Tensor, targets: torch.Tensor, *, normalize: bool = True
) -> torch.Tensor:
    """Top-1 accuracy of every prediction offset: how often ``predictions[b, t, k - 1]`` scores its true latent
    ``targets[b, t + k]`` highest among all ``B T`` latents (the candidates of
    :func:`~stssl.losses.contrastive.cpc_loss`; chance is ``1 / (B T)``).

    Args:
        predictions: ``(B, T, K, D)``; only ``t < T - k`` count for offset ``k``.
        targets: ``(B, T, D)``.
        normalize: score by cosine (as ``cpc_loss(normalize=True)``) instead of the dot product.

    Returns:
        ``(K,)`` float accuracies, offset ``k = 1`` first.

    Example:
        >>> z = torch.eye(6).view(2, 3, 6)
        >>> pred = torch.cat([z[:, 1:], z[:, :1]], dim=1).unsqueeze(2)  # exact next-step predictions
        >>> cpc_step_accuracy(pred, z).tolist()
        [1.0]
    """
    sizes = check_shape(predictions, "B T K D", name="cpc_step_accuracy predictions")
    check_shape(targets, "B T D", sizes, name="cpc_step_accuracy targets")
    b, t, k_max = sizes["B"], sizes["T"], sizes["K"]
    pred, tgt = predictions.float(), targets.float()
    if normalize:
        pred, tgt = F.normalize(pred, dim=-1), F.normalize(tgt, dim=-1)
    all_targets = rearrange(tgt, "B T D -> (B T) D")
    accs = []
    for k in range(1, k_max + 1):
        scores = rearrange(pred[:, : t - k, k - 1], "B T D -> (B T) D") @ all_targets.T
        label = (torch.arange(b, device=pred.device)[:, None] * t + torch.arange(k, t, device=pred.device)).flatten()
        accs.append((scores.argmax(dim=1) == label).float().mean())
    return torch.stack(accs)


class CPCTask(PretextTask):
    """CPC over time steps: a GRU over block latents predicts the latents of the next ``pred_steps`` blocks.

    Args:
        block_len: frames per block ``L``.
        num_blocks: blocks per window ``n`` (``pred_steps < n``).
        pred_steps: ``K``, future steps predicted from every context state (one linear predictor each).
        pool_grid: ``(h, w)`` cells kept from each block's dense map (``(1, 1)``: the pooled vector); the cells are
            flattened into one vector per block before the projection.
        dim: latent dimension ``D`` of ``z_t``.
        hidden: width of the projection MLP and of the GRU state ``c_t``.
        temperature: divides the scores of :func:`~stssl.losses.contrastive.cpc_loss`.
        normalize: cosine scores (L2-normalised predictions and latents) instead of CPC's plain dot product; the
            plain form tends to blow up the latents' norms without a small temperature.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss``, ``acc`` (mean top-1 over the offsets, among ``B n`` candidates), ``acc_k<k>`` per offset and
    ``z_std`` (:func:`~stssl.tasks.common.embedding_std` of the latents across the batch, per block: the collapse
    monitor, left out of batches of one sample).

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc, task = r3d_tiny(width=4), CPCTask(block_len=2, num_blocks=3, pred_steps=2, dim=8, hidden=16)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 6, 32, 32)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs)
        ['acc', 'acc_k1', 'acc_k2', 'loss', 'z_std']
    """

    default_name = "cpc"

    def __init__(
        self,
        block_len: int = 4,
        num_blocks: int = 4,
        pred_steps: int = 2,
        pool_grid: tuple[int, int] = (1, 1),
        dim: int = 128,
        hidden: int = 256,
        temperature: float = 0.1,
        normalize: bool = True,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        owner = "CPCTask"
        if block_len < 1:
            raise ValueError(f"{owner}: block_len must be >= 1, got {block_len}")
        if not 1 <= pred_steps < num_blocks:
            raise ValueError(
                f"{owner}: need 1 <= pred_steps < num_blocks, got pred_steps={pred_steps}, num_blocks={num_blocks}"
            )
        if dim < 1 or hidden < 1:
            raise ValueError(f"{owner}: dim and hidden must be >= 1, got {dim}, {hidden}")
        if not temperature > 0:
            raise ValueError(f"{owner}: temperature must be > 0, got {temperature}")
        self.block_len = int(block_len)
        self.num_blocks = int(num_blocks)
        self.pred_steps = int(pred_steps)
        self.pool_grid = check_pool_grid(owner, pool_grid)
        self.dim = int(dim)
        self.hidden = int(hidden)
        self.temperature = float(temperature)
        self.normalize = bool(normalize)
        self.projection: nn.Module | None = None
        self.context: nn.GRU | None = None
        self.predictors: nn.ModuleList | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.num_blocks * self.block_len)

    def build(self, spec: EncoderSpec) -> None:
        self.projection = mlp_head(pooled_dim(spec.dim, self.pool_grid), self.hidden, self.dim)
        self.context = nn.GRU(self.dim, self.hidden, batch_first=True)
        self.predictors = nn.ModuleList(nn.Linear(self.hidden, self.dim) for _ in range(self.pred_steps))

    def embed_blocks(self, blocks: torch.Tensor, encoder: Encoder) -> torch.Tensor:
        """Latents ``z``: ``(B, n, C, L, H, W)`` blocks -> ``(B, n, D)`` (each block encoded on its own)."""
        if self.projection is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        n = check_shape(blocks, "B n C L H W", name="CPCTask blocks")["n"]
        feats = encode_pooled(encoder, rearrange(blocks, "B n C L H W -> (B n) C L H W"), self.pool_grid)
        return rearrange(self.projection(feats), "(B n) D -> B n D", n=n)

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """Predictions ``(B, n, K, D)`` of ``z[:, t + k]`` from the GRU state after blocks ``0 .. t``."""
        if self.context is None or self.predictors is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        c, _ = self.context(z)  # (B, n, hidden)
        return torch.stack([p(c) for p in self.predictors], dim=2)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.projection is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        video = batch["video"]
        gen = generator if generator is not None else self.next_generator()
        cb = make_cpc_batch(video, self.num_blocks, self.block_len, generator=gen)
        z = self.embed_blocks(cb.blocks, encoder)
        pred = self.predict(z)
        loss = cpc_loss(pred, z, self.temperature, normalize=self.normalize)
        with torch.no_grad():
            accs = cpc_step_accuracy(pred, z, normalize=self.normalize)
            logs = {"loss": loss.detach(), "acc": accs.mean()}
            logs.update({f"acc_k{k + 1}": accs[k] for k in range(self.pred_steps)})
            log_embedding_std(logs, "z_std", rearrange(z, "B n D -> n B D"))
        return TaskOutput(loss=loss, logs=logs)
