"""Video vision transformers: tubelet tokens, joint or divided space-time attention, dense output.

A clip ``(B, C, T, H, W)`` is cut into non-overlapping tubelets of ``tubelet_t x patch x patch`` pixels by a
Conv3d whose kernel equals its stride (ViViT's tubelet embedding, VideoMAE's patch embedding), giving a token
grid ``(T', H', W') = (T / tubelet_t, H / patch, W / patch)``; tokens are flattened in ``(t h w)`` order.
Pre-norm transformer blocks follow, with either

- ``attention="joint"``: every space-time token attends to every other (ViViT model 1, VideoMAE), or
- ``attention="divided"``: TimeSformer's divided space-time attention: temporal attention among the tokens at
  the same spatial location across the ``T'`` slots, then spatial attention within each slot, then the MLP.

Positions are separable learnable tables (a spatial ``H' x W'`` table plus a temporal ``T'`` table) created for a
reference clip size and interpolated (bilinear in space, linear in time) to other clip sizes at forward time.
There is no class token: every token is a dense feature.

A ViT is single-scale, so the "pyramid" is the output of ``len(out_indices)`` evenly spaced blocks (by default 4,
the last being the final block), each reshaped to ``(B, D, T', H', W')``; all share the stride
``(tubelet_t, patch, patch)``. The final LayerNorm is applied to the last one only.

For masked video modelling (:mod:`stssl.tasks.masked`), :meth:`VideoViT.forward_tokens` embeds the clip, adds
positions, keeps only the visible tokens and runs the blocks on them (joint attention only).

References: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021; Arnab et al., "ViViT", ICCV 2021;
Bertasius et al., "Is Space-Time Attention All You Need for Video Understanding?" (TimeSformer), ICML 2021;
Tong et al., "VideoMAE", NeurIPS 2022.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.types import EncoderSpec

__all__ = [
    "Attention",
    "Mlp",
    "SpaceTimeBlock",
    "VideoViT",
    "vit_tiny",
    "vit_small",
    "vit_base",
    "vit_micro",
    "vit_micro_divided",
]

AttentionKind = Literal["joint", "divided"]
_ATTENTIONS = ("joint", "divided")
Grid = tuple[int, int, int]


class Attention(nn.Module):
    """Multi-head self-attention over a token axis, with :func:`torch.nn.functional.scaled_dot_product_attention`.

    Args:
        dim: token width ``D``; must be divisible by ``heads``.
        heads: attention heads.
        qkv_bias: whether the query/key/value projection has a bias.

    Shape:
        ``(B, N, D) -> (B, N, D)``.
    """

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"Attention: dim={dim} is not divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = rearrange(self.qkv(x), "B N (three h d) -> three B h N d", three=3, h=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "B h N d -> B N (h d)"))


class Mlp(nn.Module):
    """The transformer MLP: ``Linear(D, hidden) -> GELU -> Linear(hidden, D)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SpaceTimeBlock(nn.Module):
    """A pre-norm transformer block over ``(t h w)``-ordered space-time tokens.

    ``joint``: ``x + attn(norm1(x))`` over all tokens, then ``x + mlp(norm2(x))``.
    ``divided``: ``x + attn_t(norm_t(x))`` within each spatial location across time, then ``x + attn(norm1(x))``
    within each time slot, then ``x + mlp(norm2(x))``. The joint block's module names are a subset of the
    divided block's, so joint weights load into a divided model with ``strict=False`` (only ``attn_t``/``norm_t``
    missing).

    Args:
        dim: token width ``D``.
        heads: attention heads.
        mlp_ratio: MLP hidden width over ``D``.
        attention: ``"joint"`` or ``"divided"``.
        qkv_bias: bias of the query/key/value projections.
        eps: LayerNorm epsilon.

    Shape:
        ``x`` ``(B, N, D)`` with ``N = T' H' W'`` tokens in ``(t h w)`` order; ``grid`` is ``(T', H', W')``
        (only the divided block needs it).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float = 4.0,
        attention: AttentionKind = "joint",
        qkv_bias: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if attention not in _ATTENTIONS:
            raise ValueError(f"SpaceTimeBlock: unknown attention {attention!r}; choose from {list(_ATTENTIONS)}")
        self.attention = attention
        if attention == "divided":
            self.norm_t = nn.LayerNorm(dim, eps=eps)
            self.attn_t = Attention(dim, heads, qkv_bias)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        if self.attention == "joint":
            x = x + self.attn(self.norm1(x))
        else:
            t, h, w = grid
            xt = rearrange(self.norm_t(x), "B (t s) D -> (B s) t D", t=t, s=h * w)
            x = x + rearrange(self.attn_t(xt), "(B s) t D -> B (t s) D", s=h * w)
            xs = rearrange(self.norm1(x), "B (t s) D -> (B t) s D", t=t, s=h * w)
            x = x + rearrange(self.attn(xs), "(B t) s D -> B (t s) D", t=t)
        return x + self.mlp(self.norm2(x))


def _even_out_indices(depth: int, levels: int) -> tuple[int, ...]:
    return tuple(depth * (i + 1) // levels - 1 for i in range(levels))


class VideoViT(Encoder):
    """A video ViT with tubelet tokens and dense, single-stride output (see the module docstring).

    Args:
        dim: token width ``D``.
        depth: transformer blocks.
        heads: attention heads (``dim % heads == 0``).
        mlp_ratio: MLP hidden width over ``D``.
        tubelet_t: frames per tubelet (temporal stride).
        patch: tubelet height and width in pixels (spatial stride).
        in_channels: input channels ``C``.
        attention: ``"joint"`` (all tokens attend to all) or ``"divided"`` (TimeSformer: time, then space).
        clip_size: ``(T, H, W)`` of the reference clip the position tables are made for; other sizes interpolate.
        out_indices: 0-based blocks whose outputs form the pyramid, increasing and ending at ``depth - 1``;
            default: ``min(4, depth)`` evenly spaced blocks (``(2, 5, 8, 11)`` for 12 blocks).
        qkv_bias: bias of the query/key/value projections.
        grad_checkpointing: recompute each block in the backward pass (saves activation memory when training).

    Shape:
        input ``(B, C, T, H, W)`` with ``T``, ``H``, ``W`` multiples of ``tubelet_t``, ``patch``, ``patch``;
        every pyramid stage is ``(B, D, T / tubelet_t, H / patch, W / patch)``.

    Example:
        >>> enc = VideoViT(dim=32, depth=2, heads=2, tubelet_t=2, patch=8, clip_size=(4, 32, 32))
        >>> out = enc(torch.zeros(2, 3, 4, 32, 48))
        >>> [tuple(p.shape) for p in out.pyramid], enc.spec.strides[-1]
        ([(2, 32, 2, 4, 6), (2, 32, 2, 4, 6)], (2, 8, 8))
        >>> enc.forward_tokens(torch.zeros(2, 3, 4, 32, 48), keep=torch.zeros(2, 5, dtype=torch.long)).shape
        torch.Size([2, 5, 32])
    """

    def __init__(
        self,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        tubelet_t: int = 2,
        patch: int = 16,
        in_channels: int = 3,
        attention: AttentionKind = "joint",
        clip_size: Sequence[int] = (16, 224, 224),
        out_indices: Sequence[int] | None = None,
        qkv_bias: bool = True,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if attention not in _ATTENTIONS:
            raise ValueError(f"VideoViT: unknown attention {attention!r}; choose from {list(_ATTENTIONS)}")
        if min(dim, depth, heads, tubelet_t, patch, in_channels) < 1:
            raise ValueError(
                f"VideoViT: dim, depth, heads, tubelet_t, patch, in_channels must be >= 1, got "
                f"{(dim, depth, heads, tubelet_t, patch, in_channels)}"
            )
        if dim % heads != 0:
            raise ValueError(f"VideoViT: dim={dim} is not divisible by heads={heads}")
        if len(clip_size) != 3:
            raise ValueError(f"VideoViT: clip_size must be (T, H, W), got {tuple(clip_size)}")
        self.dim = dim
        self.tubelet_t = tubelet_t
        self.patch = patch
        self.attention = attention
        self.grad_checkpointing = grad_checkpointing
        ref_grid = self.grid_size(*(int(s) for s in clip_size))
        self.ref_grid = ref_grid

        outs = _even_out_indices(depth, min(4, depth)) if out_indices is None else tuple(int(i) for i in out_indices)
        if (
            not outs
            or any(b <= a for a, b in zip(outs, outs[1:], strict=False))
            or outs[0] < 0
            or outs[-1] != depth - 1
        ):
            raise ValueError(
                f"VideoViT: out_indices must be increasing block indices ending at depth - 1 = {depth - 1}, got {outs}"
            )
        self.out_indices = outs

        self.patch_embed = nn.Conv3d(
            in_channels, dim, kernel_size=(tubelet_t, patch, patch), stride=(tubelet_t, patch, patch)
        )
        self.pos_spatial = nn.Parameter(torch.zeros(1, dim, ref_grid[1], ref_grid[2]))
        self.pos_temporal = nn.Parameter(torch.zeros(1, dim, ref_grid[0]))
        self.blocks = nn.ModuleList(
            [SpaceTimeBlock(dim, heads, mlp_ratio, attention, qkv_bias) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        stride = (tubelet_t, patch, patch)
        self.spec = EncoderSpec(
            channels=(dim,) * len(outs), strides=(stride,) * len(outs), in_channels=in_channels, min_frames=tubelet_t
        )
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_spatial, std=0.02)
        nn.init.trunc_normal_(self.pos_temporal, std=0.02)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer on the flattened tubelet
        nn.init.zeros_(self.patch_embed.bias)  # type: ignore[arg-type]
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def grid_size(self, frames: int, height: int, width: int) -> Grid:
        """The token grid ``(T', H', W')`` for a ``frames x height x width`` clip.

        Raises:
            ValueError: when a size is not a positive multiple of the tubelet.

        Example:
            >>> vit_micro().grid_size(8, 32, 48)
            (4, 4, 6)
        """
        t, p = self.tubelet_t, self.patch
        if frames < t or height < p or width < p or frames % t or height % p or width % p:
            raise ValueError(
                f"{type(self).__name__}: clip of T={frames}, H={height}, W={width} is not a positive multiple of the "
                f"tubelet {t}x{p}x{p} (T must divide by {t}, H and W by {p})"
            )
        return frames // t, height // p, width // p

    def pos_embed(self, grid: Grid) -> torch.Tensor:
        """Positions for a token grid: the tables interpolated to ``grid`` and summed; ``(T' H' W', D)``.

        At the reference grid the tables are used as they are (no interpolation).
        """
        t, h, w = grid
        spatial: torch.Tensor = self.pos_spatial
        if (h, w) != tuple(spatial.shape[2:]):
            spatial = F.interpolate(spatial, size=(h, w), mode="bilinear", align_corners=False)
        temporal: torch.Tensor = self.pos_temporal
        if t != temporal.shape[2]:
            temporal = F.interpolate(temporal, size=t, mode="linear", align_corners=False)
        pos = temporal[0, :, :, None, None] + spatial[0, :, None, :, :]  # (D, t, h, w)
        return rearrange(pos, "D t h w -> (t h w) D")

    def _embed(self, video: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        check_shape(video, f"B {self.spec.in_channels} T H W", name=f"{type(self).__name__} input")
        grid = self.grid_size(*video.shape[2:])
        x = rearrange(self.patch_embed(video), "B D t h w -> B (t h w) D")
        return x + self.pos_embed(grid).to(x.dtype), grid

    def _block(self, i: int, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        block = self.blocks[i]
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, grid, use_reentrant=False)  # type: ignore[return-value]
        return block(x, grid)

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, (t, h, w) = self._embed(video)
        feats = []
        last = len(self.blocks) - 1
        for i in range(len(self.blocks)):
            x = self._block(i, x, (t, h, w))
            if i in self.out_indices:
                y = self.norm(x) if i == last else x
                feats.append(rearrange(y, "B (t h w) D -> B D t h w", t=t, h=h, w=w))
        return tuple(feats)

    def forward_tokens(self, video: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode only the visible tokens (masked autoencoding); the final norm is applied.

        With ``keep=None`` (or every index in order) the result equals the last pyramid stage flattened:
        ``rearrange(self(video).dense, "B D t h w -> B (t h w) D")``.

        Args:
            video: ``(B, C, T, H, W)``.
            keep: ``(B, N_keep)`` int64 indices into the ``(t h w)``-flattened token grid of the visible tokens,
                the same count for every sample; None keeps all tokens.

        Returns:
            ``(B, N_keep, D)`` (``(B, T' H' W', D)`` with ``keep=None``).

        Raises:
            ValueError: for ``attention="divided"`` with a ``keep`` mask (divided attention needs the full grid).
        """
        if keep is not None and self.attention != "joint":
            raise ValueError(
                f"{type(self).__name__}(attention={self.attention!r}).forward_tokens: token masking (keep) needs "
                "attention='joint'; divided space-time attention needs the full token grid"
            )
        x, grid = self._embed(video)
        if keep is not None:
            sizes = check_shape(keep, "B N", {"B": video.shape[0]}, name="keep")
            if keep.dtype != torch.long:
                raise ValueError(f"keep: expected int64 token indices, got {keep.dtype}")
            if sizes["N"] < 1:
                raise ValueError("keep: expected at least one visible token per sample, got 0")
            x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        for i in range(len(self.blocks)):
            x = self._block(i, x, grid)
        return self.norm(x)


def vit_tiny(**kwargs) -> VideoViT:
    """ViT-Ti video encoder: D=192, 12 blocks, 3 heads, tubelet 2x16x16 (joint unless ``attention=``)."""
    return VideoViT(**{"dim": 192, "depth": 12, "heads": 3, **kwargs})


def vit_small(**kwargs) -> VideoViT:
    """ViT-S video encoder: D=384, 12 blocks, 6 heads, tubelet 2x16x16."""
    return VideoViT(**{"dim": 384, "depth": 12, "heads": 6, **kwargs})


def vit_base(**kwargs) -> VideoViT:
    """ViT-B video encoder: D=768, 12 blocks, 12 heads, tubelet 2x16x16 (86.4M parameters at 16x224x224)."""
    return VideoViT(**{"dim": 768, "depth": 12, "heads": 12, **kwargs})


def vit_micro(**kwargs) -> VideoViT:
    """A CPU-test ViT: D=64, 4 blocks, 4 heads, tubelet 2x8x8, positions made for 8x32x32 clips."""
    return VideoViT(
        **{"dim": 64, "depth": 4, "heads": 4, "tubelet_t": 2, "patch": 8, "clip_size": (8, 32, 32), **kwargs}
    )


def vit_micro_divided(**kwargs) -> VideoViT:
    """:func:`vit_micro` with TimeSformer divided space-time attention."""
    return vit_micro(**{"attention": "divided", **kwargs})
