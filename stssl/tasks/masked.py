"""Masked video modelling (VideoMAE; Tong et al., "VideoMAE: Masked Autoencoders are Data-Efficient Learners for
Self-Supervised Video Pre-Training", NeurIPS 2022).

A clip is cut into tubelet tokens; a very high ratio of them (90%) is hidden with *tube masking* (the same
spatial positions in every temporal slot, so a masked patch cannot be copied from its neighbour in time). The
encoder sees only the visible tokens; a light transformer decoder gets them back in their places among learned
mask tokens, with fixed sin-cos positions for the full grid, and predicts the pixels of the masked tubelets. The
loss is the mean squared error on the masked tubelets only, against per-patch normalised pixels (each tubelet's
pixels minus their mean over the tubelet, over their standard deviation, per channel, as VideoMAE).

Token order everywhere is ``(t h w)``, the order of :class:`stssl.encoders.vit.VideoViT`'s tokens, and a
tubelet's pixels are flattened ``(pt ph pw C)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.encoders.vit import SpaceTimeBlock
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.types import EncoderSpec, TaskOutput

__all__ = [
    "MaskedVideoTask",
    "TokenEncoder",
    "TubeMask",
    "make_tube_mask",
    "normalize_patches",
    "patchify",
    "sincos_pos_embed_3d",
    "unpatchify",
]

Grid = tuple[int, int, int]


@runtime_checkable
class TokenEncoder(Protocol):
    """What :class:`MaskedVideoTask` needs from an encoder (:class:`stssl.encoders.vit.VideoViT` has it)."""

    def grid_size(self, frames: int, height: int, width: int) -> Grid: ...

    def forward_tokens(self, video: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass
class TubeMask:
    """Output of :func:`make_tube_mask`: token indices into the ``(t h w)``-flattened grid, each row ascending.

    Attributes:
        keep: ``(B, N_keep)`` int64 visible tokens.
        masked: ``(B, N_mask)`` int64 hidden tokens; with ``keep`` a partition of ``range(T' H' W')`` per sample.
        grid: the token grid ``(T', H', W')``.
    """

    keep: torch.Tensor
    masked: torch.Tensor
    grid: Grid

    def as_bool(self) -> torch.Tensor:
        """``(B, T' H' W')`` bool, True where a token is masked."""
        t, h, w = self.grid
        out = torch.zeros(self.keep.shape[0], t * h * w, dtype=torch.bool, device=self.keep.device)
        return out.scatter(1, self.masked, True)


def make_tube_mask(
    batch_size: int, grid: Grid, ratio: float = 0.9, *, generator: torch.Generator | None = None
) -> TubeMask:
    """Draw a tube mask per sample: ``round(ratio * H' W')`` spatial positions hidden in every temporal slot.

    Pure and seeded: the same ``generator`` state gives the same mask. Draws happen on the CPU.

    Args:
        batch_size: ``B``.
        grid: token grid ``(T', H', W')``.
        ratio: fraction of spatial positions to hide, in ``(0, 1)``; at least one position is hidden and one kept.
        generator: a CPU ``torch.Generator``.

    Returns:
        A :class:`TubeMask` with ``N_mask = round(ratio * H' W') * T'`` and ``N_keep = T' H' W' - N_mask``.

    Example:
        >>> m = make_tube_mask(2, (2, 2, 2), 0.75, generator=torch.Generator().manual_seed(0))
        >>> m.keep.shape, m.masked.shape
        (torch.Size([2, 2]), torch.Size([2, 6]))
        >>> bool((m.keep[:, 1] - m.keep[:, 0] == 4).all())  # the same spatial position in both slots
        True
    """
    t, h, w = (int(g) for g in grid)
    if min(t, h, w) < 1 or batch_size < 1:
        raise ValueError(f"make_tube_mask: batch_size and grid must be positive, got {batch_size}, {tuple(grid)}")
    spatial = h * w
    n_mask = int(round(ratio * spatial))
    if not 0.0 < ratio < 1.0 or not 1 <= n_mask <= spatial - 1:
        raise ValueError(
            f"make_tube_mask: ratio={ratio} hides {n_mask} of {spatial} spatial positions; need at least one hidden "
            "and one visible (0 < ratio < 1)"
        )
    noise = torch.rand(batch_size, spatial, generator=generator)
    order = torch.argsort(noise, dim=1)
    masked_s = order[:, :n_mask].sort(dim=1).values  # (B, n_mask) spatial positions
    keep_s = order[:, n_mask:].sort(dim=1).values
    slots = torch.arange(t)[None, :, None] * spatial  # (1, T', 1)

    def tubes(pos: torch.Tensor) -> torch.Tensor:
        return rearrange(slots + pos[:, None, :], "B t s -> B (t s)")

    return TubeMask(keep=tubes(keep_s), masked=tubes(masked_s), grid=(t, h, w))



def patchify(video: torch.Tensor, tubelet_t: int, patch: int) -> torch.Tensor:
    """Cut a clip into flattened tubelets in ``(t h w)`` token order.

    Args:
        video: ``(B, C, T, H, W)`` with ``T``, ``H``, ``W`` multiples of ``tubelet_t``, ``patch``, ``patch``.
        tubelet_t: frames per tubelet.
        patch: tubelet height and width.

    Returns:
        ``(B, N, tubelet_t * patch * patch * C)``, pixels flattened ``(pt ph pw C)``.

    Example:
        >>> video = torch.rand(2, 3, 4, 16, 8)
        >>> patches = patchify(video, 2, 8)
        >>> patches.shape
        torch.Size([2, 4, 384])
        >>> torch.equal(unpatchify(patches, (2, 2, 1), 2, 8), video)
        True
    """
    sizes = check_shape(video, "B C T H W", name="video")
    if sizes["T"] % tubelet_t or sizes["H"] % patch or sizes["W"] % patch:
        raise ValueError(
            f"patchify: video of shape {tuple(video.shape)} is not a multiple of the tubelet {tubelet_t}x{patch}x{patch}"
        )
    return rearrange(video, "B C (t pt) (h ph) (w pw) -> B (t h w) (pt ph pw C)", pt=tubelet_t, ph=patch, pw=patch)


def unpatchify(patches: torch.Tensor, grid: Grid, tubelet_t: int, patch: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``(B, T' H' W', tubelet_t patch patch C) -> (B, C, T, H, W)``."""
    t, h, w = grid
    sizes = check_shape(patches, "B N P", {"N": t * h * w}, name="patches")
    if sizes["P"] % (tubelet_t * patch * patch):
        raise ValueError(
            f"unpatchify: patch length {sizes['P']} is not a multiple of tubelet_t*patch*patch={tubelet_t * patch * patch}"
        )
    return rearrange(
        patches, "B (t h w) (pt ph pw C) -> B C (t pt) (h ph) (w pw)", t=t, h=h, w=w, pt=tubelet_t, ph=patch, pw=patch
    )


def normalize_patches(
    patches: torch.Tensor, channels: int, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-patch, per-channel normalisation of flattened tubelets (VideoMAE's target).

    Args:
        patches: ``(B, N, P)`` from :func:`patchify` (pixels flattened ``(pt ph pw C)``).
        channels: ``C``.
        eps: added to the standard deviation.

    Returns:
        ``(normalised, mean, std)``: ``normalised`` ``(B, N, P)`` = ``(x - mean) / (std + eps)`` over each patch's
        pixels per channel (unbiased variance); ``mean`` and ``std`` ``(B, N, 1, C)``.
    """
    check_shape(patches, "B N P", name="patches")
    x = rearrange(patches, "B N (p C) -> B N p C", C=channels)
    mean = x.mean(dim=2, keepdim=True)
    std = x.var(dim=2, unbiased=True, keepdim=True).sqrt()
    normalised = rearrange((x - mean) / (std + eps), "B N p C -> B N (p C)")
    return normalised, mean, std


def sincos_pos_embed_3d(
    grid: Grid, dim: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed separable sin-cos positions for a ``(T', H', W')`` token grid: ``(T' H' W', dim)``.

    The channels are split into a temporal part and two equal spatial parts (each even); each part is the 1D
    transformer encoding ``[sin(p w_i), cos(p w_i)]`` with ``w_i = 10000^(-i / (d/2))`` of its coordinate.
    The table is computed once per ``(grid, dim)`` in float64 on the CPU and cached; each call returns a fresh
    copy converted to ``device`` and ``dtype`` (so float64-less devices such as MPS work).

    Example:
        >>> sincos_pos_embed_3d((2, 3, 4), 12).shape
        torch.Size([24, 12])
    """
    if dim < 6 or dim % 2:
        raise ValueError(f"sincos_pos_embed_3d: dim must be even and >= 6, got {dim}")
    t, h, w = (int(g) for g in grid)
    if min(t, h, w) < 1:
        raise ValueError(f"sincos_pos_embed_3d: grid must be three positive ints, got {tuple(grid)}")
    # convert on the CPU (a fresh tensor: the cached table stays untouched), then move: no float64 on ``device``
    return _sincos_table(t, h, w, int(dim)).to(dtype=dtype, copy=True).to(device)


@functools.lru_cache(maxsize=32)
def _sincos_table(t: int, h: int, w: int, dim: int) -> torch.Tensor:
    """The float64 CPU table of :func:`sincos_pos_embed_3d` (cached: treat it as read-only)."""
    d_s = 2 * (dim // 6)
    d_t = dim - 2 * d_s

    def encode(n: int, d: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64, device="cpu") / (d // 2))
        angle = torch.arange(n, dtype=torch.float64, device="cpu")[:, None] * omega[None, :]
        return torch.cat([angle.sin(), angle.cos()], dim=1)  # (n, d)

    et = encode(t, d_t)[:, None, None, :].expand(t, h, w, d_t)
    eh = encode(h, d_s)[None, :, None, :].expand(t, h, w, d_s)
    ew = encode(w, d_s)[None, None, :, :].expand(t, h, w, d_s)
    return rearrange(torch.cat([et, eh, ew], dim=-1), "t h w D -> (t h w) D").contiguous()


class MaskedVideoTask(PretextTask):
    """VideoMAE: reconstruct tube-masked tubelets from the visible ones.

    Needs a token encoder with ``forward_tokens(video, keep)`` and ``grid_size(T, H, W)``
    (:class:`stssl.encoders.vit.VideoViT` with joint attention).

    Args:
        mask_ratio: fraction of spatial positions hidden in every temporal slot (VideoMAE: 0.9).
        decoder_dim: decoder token width (VideoMAE ViT-B: 384).
        decoder_depth: decoder blocks (VideoMAE: 4).
        decoder_heads: decoder attention heads.
        norm_target: regress per-patch normalised pixels (VideoMAE) instead of raw pixels.
        eps: added to each patch's standard deviation when normalising.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss`` (MSE on the masked tubelets, in the target's units) and ``psnr`` (dB, pixels in ``[0, 1]``, on
    the masked tubelets; with ``norm_target`` the prediction is mapped back to pixels with each true patch's mean
    and standard deviation, as VideoMAE's visualisations do).
    """

    default_name = "mae"

    def __init__(
        self,
        mask_ratio: float = 0.9,
        decoder_dim: int = 384,
        decoder_depth: int = 4,
        decoder_heads: int = 6,
        norm_target: bool = True,
        eps: float = 1e-6,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"MaskedVideoTask: mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_depth < 1 or decoder_dim < 6 or decoder_dim % 2 or decoder_dim % decoder_heads:
            raise ValueError(
                f"MaskedVideoTask: need decoder_depth >= 1 and an even decoder_dim >= 6 divisible by decoder_heads, "
                f"got depth={decoder_depth}, dim={decoder_dim}, heads={decoder_heads}"
            )
        self.mask_ratio = float(mask_ratio)
        self.decoder_dim = decoder_dim
        self.decoder_depth = decoder_depth
        self.decoder_heads = decoder_heads
        self.norm_target = norm_target
        self.eps = float(eps)
        self.tubelet: tuple[int, int] | None = None  # (tubelet_t, patch) once built
        self.in_channels = 3
        self.encoder_to_decoder: nn.Module | None = None
        self.mask_token: nn.Parameter | None = None
        self.decoder: nn.ModuleList | None = None
        self.decoder_norm: nn.Module | None = None
        self.head: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.tubelet[0] if self.tubelet is not None else 1)

    def build(self, spec: EncoderSpec) -> None:
        st, sh, sw = spec.strides[-1]
        if sh != sw:
            raise ValueError(f"MaskedVideoTask: needs square tubelets, the encoder's stride is {spec.strides[-1]}")
        self.tubelet = (st, sh)
        self.in_channels = spec.in_channels
        self.encoder_to_decoder = nn.Linear(spec.dim, self.decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.decoder_dim))
        self.decoder = nn.ModuleList(
            [SpaceTimeBlock(self.decoder_dim, self.decoder_heads) for _ in range(self.decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(self.decoder_dim, eps=1e-6)
        self.head = nn.Linear(self.decoder_dim, st * sh * sw * spec.in_channels)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if (
            self.tubelet is None
            or self.encoder_to_decoder is None
            or self.mask_token is None
            or self.decoder is None
            or self.decoder_norm is None
            or self.head is None
        ):
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        if not isinstance(encoder, TokenEncoder):
            raise TypeError(
                f"{type(self).__name__}: encoder {type(encoder).__name__} has no forward_tokens(video, keep) / "
                "grid_size(T, H, W); use a token encoder such as stssl.encoders.vit.VideoViT (attention='joint')"
            )
        video = batch["video"]
        sizes = check_shape(video, f"B {self.in_channels} T H W", name="batch['video']")
        tubelet_t, patch = self.tubelet
        grid = encoder.grid_size(sizes["T"], sizes["H"], sizes["W"])
        gen = generator if generator is not None else self.next_generator()
        mask = make_tube_mask(sizes["B"], grid, self.mask_ratio, generator=gen)
        keep, masked = mask.keep.to(video.device), mask.masked.to(video.device)

        latent = encoder.forward_tokens(video, keep)  # (B, N_keep, D_enc)
        visible = self.encoder_to_decoder(latent)
        B, n_tokens, dd = sizes["B"], math.prod(grid), self.decoder_dim
        tokens = self.mask_token.to(visible.dtype).expand(B, n_tokens, dd)
        tokens = tokens.scatter(1, keep[..., None].expand(-1, -1, dd), visible)  # original (t h w) order
        x = tokens + sincos_pos_embed_3d(grid, dd, device=video.device, dtype=visible.dtype)
        for block in self.decoder:
            x = block(x, grid)
        x = torch.gather(self.decoder_norm(x), 1, masked[..., None].expand(-1, -1, dd))
        pred = self.head(x)  # (B, N_mask, P)

        patches = torch.gather(
            patchify(video, tubelet_t, patch), 1, masked[..., None].expand(-1, -1, tubelet_t * patch * patch * self.in_channels)
        )
        if self.norm_target:
            target, mean, std = normalize_patches(patches, self.in_channels, self.eps)
        else:
            target = patches
        loss = nn.functional.mse_loss(pred.float(), target.float())

        with torch.no_grad():
            if self.norm_target:
                p = rearrange(pred.float(), "B N (p C) -> B N p C", C=self.in_channels)
                pixels = rearrange(p * (std + self.eps) + mean, "B N p C -> B N (p C)")
            else:
                pixels = pred.float()
            mse_pix = (pixels.clamp(0, 1) - patches.float()).square().mean()
            psnr = -10.0 * torch.log10(mse_pix.clamp_min(1e-10))
        return TaskOutput(loss=loss, logs={"loss": loss.detach(), "psnr": psnr})
