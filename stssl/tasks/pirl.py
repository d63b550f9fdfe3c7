"""Pretext-invariant representation learning (PIRL; Misra & van der Maaten, "Self-Supervised Learning of
Pretext-Invariant Representations", CVPR 2020), with the jigsaw transform, on frames or clips.

From a window of ``clip_len`` frames of each clip (square-cropped), :func:`make_pirl_batch` returns the window
itself, ``I``, and its jigsaw transform ``J``: a ``grid x grid`` layout of jittered tiles (the tiling of
:func:`~stssl.tasks.image_common.cut_grid_patches`, as in :mod:`stssl.tasks.jigsaw`) shuffled by a permutation
drawn uniformly from all orders. The encoder embeds ``I`` (pooled, then a linear head ``f``) and every tile of ``J``
on its own (pooled, a shared linear tile head, concatenated in the shuffled order, then a linear head ``g``).

A memory bank holds one embedding per dataset item (``batch["index"]``), an exponential moving average of
``f(I)``: ``m <- normalise(momentum * m + (1 - momentum) * f(I))``, the first write copying ``f(I)``. It starts as
random unit vectors, is updated after the loss in training only, and never in validation. The loss is PIRL's
mixture ``lambda * NCE(m_i, g(J_i)) + (1 - lambda) * NCE(m_i, f(I_i))``, each an InfoNCE
(:func:`~stssl.losses.contrastive.info_nce`; the paper's binary NCE form is not used) with ``num_negatives`` bank
rows drawn per query (never the query's own row). A row not written yet has the current (detached) ``f(I)`` as its positive instead of its random start. In
validation the bank is indexed by training items, so ``batch["index"]`` is not read: the positive is ``f(I)`` and
the negatives are drawn from the whole bank.

Under DDP the bank is per process, and DDP's default ``broadcast_buffers=True`` copies rank 0's bank to every rank
before each forward (``memory_size * dim`` floats per step): prefer ``DDPStrategy(broadcast_buffers=False)`` with
large banks (each rank then keeps a bank of the items it sees).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.losses.contrastive import info_nce
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import check_pool_grid, log_embedding_std, memory_index, pooled_dim
from stssl.tasks.image_common import (
    CROP_MODES,
    PatchAppearance,
    check_choice,
    check_clip_len1,
    check_fraction,
    crop_regions,
    cut_grid_patches,
    encode_pooled,
    recolor_patch_sets,
)
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["PIRLBatch", "PIRLTask", "make_pirl_batch"]


@dataclass
class PIRLBatch:
    """Output of :func:`make_pirl_batch`; ``image`` and ``tiles`` on the video's device, the rest on the CPU.

    Attributes:
        image: ``(B, C, L, H', W')`` the (square-cropped) window: the untransformed view ``I``.
        tiles: ``(B, K, C, L, h, w)`` its jigsaw transform ``J``: ``tiles[:, i]`` was cut from cell
            ``permutation[:, i]`` (cells row-major).
        permutation: ``(B, K)`` each shuffled tile's original cell.
        top, left: ``(B, K, C)`` every cell's tile corner per channel in ``image``'s pixels, in cell order.
        start: ``(B,)`` first frame of each window.
    """

    image: torch.Tensor
    tiles: torch.Tensor
    permutation: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    start: torch.Tensor


def make_pirl_batch(
    video: torch.Tensor,
    grid: int = 3,
    clip_len: int = 1,
    crop: str = "random",
    tile_frac: float = 0.85,
    jitter: float = 1.0,
    channel_jitter: int = 0,
    gray_p: float = 0.0,
    channel_drop_p: float = 0.0,
    *,
    generator: torch.Generator | None = None,
) -> PIRLBatch:
    """A window of each clip and its jigsaw transform (tiles shuffled uniformly over all ``K!`` orders).

    Pure and seeded: the same ``generator`` state gives the same output; random draws happen on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= clip_len``.
        grid: cells per side (``K = grid**2`` tiles).
        clip_len: frames per window ``L`` (1: single frames).
        crop: ``"random"``, ``"center"`` or ``"none"`` square crop of the window.
        tile_frac, jitter, channel_jitter: tile geometry (:func:`~stssl.tasks.jigsaw.make_jigsaw_batch`).
        gray_p, channel_drop_p: per-tile colour handling (:func:`~stssl.tasks.image_common.recolor_patches`).
        generator: a CPU ``torch.Generator``.

    Returns:
        A :class:`PIRLBatch`.

    Example:
        >>> video = torch.rand(2, 3, 1, 30, 36)
        >>> pb = make_pirl_batch(video, generator=torch.Generator().manual_seed(0))
        >>> tuple(pb.image.shape), tuple(pb.tiles.shape)
        ((2, 3, 1, 30, 30), (2, 9, 3, 1, 8, 8))
        >>> ordered = pb.tiles[0, pb.permutation[0].argsort()]  # undo the shuffle
        >>> t, l = int(pb.top[0, 4, 0]), int(pb.left[0, 4, 0])
        >>> torch.equal(ordered[4], pb.image[0, :, :, t : t + 8, l : l + 8])  # the centre tile
        True
    """
    owner = "make_pirl_batch"
    B = check_shape(video, "B C T H W", name=f"{owner} video")["B"]
    if grid < 2:
        raise ValueError(f"{owner}: grid must be >= 2, got {grid}")
    K = grid * grid
    gp = cut_grid_patches(
        video, clip_len, crop, grid, tile_frac, jitter, channel_jitter, generator=generator, owner=owner
    )
    permutation = torch.rand(B, K, generator=generator).argsort(dim=1)
    rows = torch.arange(B)[:, None]
    tiles = crop_regions(gp.clips, gp.top[rows, permutation], gp.left[rows, permutation], gp.size)
    tiles, _ = recolor_patch_sets(tiles, gray_p, channel_drop_p, generator=generator)
    return PIRLBatch(image=gp.clips, tiles=tiles, permutation=permutation, top=gp.top, left=gp.left, start=gp.start)


class PIRLTask(PretextTask):
    """PIRL: embeddings invariant to the jigsaw transform, contrasted against a memory bank.

    Args:
        memory_size: rows of the memory bank, at least the number of training items (``len(train dataset)``); a
            larger ``batch["index"]`` is an error in training.
        num_negatives: bank rows drawn per query (PIRL: 32000); the negatives take ``B * num_negatives * dim``
            floats per step.
        temperature: of the InfoNCE softmax (PIRL: 0.07).
        memory_momentum: EMA momentum of the bank rows (PIRL: 0.5).
        jigsaw_weight: PIRL's ``lambda``, the weight of the jigsaw term (``1 - lambda`` goes to the image term).
        grid, clip_len, crop, tile_frac, jitter, channel_jitter, gray_p, channel_drop_p: the jigsaw transform
            (:func:`make_pirl_batch`).
        normalize_tiles, resize_to: per-tile standardisation and resizing before encoding (:class:`PatchAppearance`).
        pool_grid: ``(h, w)`` cells kept from each dense map (image and tiles).
        dim: embedding dimension of ``f``, ``g`` and the bank (PIRL: 128).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask` (``seed`` also draws the bank's start).

    Logs ``loss``, ``loss_jigsaw``, ``loss_image``, ``acc`` (how often ``g(J_i)`` is nearest to ``f(I_i)`` among the
    batch's ``f(I)``), ``z_std`` (:func:`~stssl.tasks.common.embedding_std` of ``f(I)``, the collapse monitor) and
    ``bank_filled`` (fraction of bank rows written).

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc, task = r3d_tiny(width=4), PIRLTask(memory_size=10, num_negatives=4, dim=8)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 1, 32, 32), "index": torch.tensor([3, 7])}, enc)
        >>> task.seen.nonzero().flatten().tolist(), sorted(out.logs)[:3]
        ([3, 7], ['acc', 'bank_filled', 'loss'])
    """

    default_name = "pirl"
    bank: torch.Tensor
    seen: torch.Tensor

    def __init__(
        self,
        memory_size: int = 10000,
        num_negatives: int = 1024,
        temperature: float = 0.07,
        memory_momentum: float = 0.5,
        jigsaw_weight: float = 0.5,
        grid: int = 3,
        clip_len: int = 1,
        crop: str = "random",
        tile_frac: float = 0.85,
        jitter: float = 1.0,
        channel_jitter: int = 0,
        gray_p: float = 0.0,
        channel_drop_p: float = 0.0,
        normalize_tiles: bool = False,
        resize_to: int | None = None,
        pool_grid: tuple[int, int] = (1, 1),
        dim: int = 128,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        owner = "PIRLTask"
        if memory_size < 2 or num_negatives < 1 or dim < 1:
            raise ValueError(
                f"{owner}: need memory_size >= 2, num_negatives >= 1 and dim >= 1, got {memory_size}, "
                f"{num_negatives}, {dim}"
            )
        if not temperature > 0:
            raise ValueError(f"{owner}: temperature must be > 0, got {temperature}")
        if grid < 2:
            raise ValueError(f"{owner}: grid must be >= 2, got {grid}")
        self.memory_size = int(memory_size)
        self.num_negatives = int(num_negatives)
        self.temperature = float(temperature)
        self.memory_momentum = check_fraction(owner, "memory_momentum", memory_momentum)
        self.jigsaw_weight = check_fraction(owner, "jigsaw_weight", jigsaw_weight)
        self.grid = int(grid)
        self.num_tiles = self.grid * self.grid
        self.clip_len = check_clip_len1(owner, clip_len)
        self.crop = check_choice(owner, "crop", crop, CROP_MODES)
        self.tile_frac = check_fraction(owner, "tile_frac", tile_frac, low_open=True)
        self.jitter = check_fraction(owner, "jitter", jitter)
        self.appearance = PatchAppearance.checked(
            owner, channel_jitter, gray_p, channel_drop_p, normalize_tiles, resize_to
        )
        self.pool_grid = check_pool_grid(owner, pool_grid)
        self.dim = int(dim)
        start = torch.randn(self.memory_size, self.dim, generator=torch.Generator().manual_seed(self.seed))
        self.register_buffer("bank", F.normalize(start, dim=1))
        self.register_buffer("seen", torch.zeros(self.memory_size, dtype=torch.bool))
        self.image_head: nn.Module | None = None
        self.tile_head: nn.Module | None = None
        self.jigsaw_head: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.clip_len, index=True)

    def build(self, spec: EncoderSpec) -> None:
        feat = pooled_dim(spec.dim, self.pool_grid)
        self.image_head = nn.Linear(feat, self.dim)
        self.tile_head = nn.Linear(feat, self.dim)
        self.jigsaw_head = nn.Linear(self.num_tiles * self.dim, self.dim)

    def draw_negatives(self, batch_size: int, index: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
        """``(B, M)`` bank rows (CPU int64), uniform over the bank without each query's own row when ``index``
        (``(B,)``) is given."""
        if index is None:
            return torch.randint(self.memory_size, (batch_size, self.num_negatives), generator=generator)
        rows = torch.randint(self.memory_size - 1, (batch_size, self.num_negatives), generator=generator)
        own = index.cpu()[:, None]
        return rows + (rows >= own).long()  # skip the own row

    @torch.no_grad()
    def update_bank(self, index: torch.Tensor, embedding: torch.Tensor) -> None:
        """EMA update of the bank rows ``index`` ``(B,)`` towards ``embedding`` ``(B, dim)`` (first write copies)."""
        new = F.normalize(embedding.detach().float(), dim=1).to(self.bank)
        old = self.bank[index]
        mixed = F.normalize(self.memory_momentum * old + (1 - self.memory_momentum) * new, dim=1)
        self.bank[index] = torch.where(self.seen[index][:, None], mixed, new)
        self.seen[index] = True

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.image_head is None or self.tile_head is None or self.jigsaw_head is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        video = batch["video"]
        gen = generator if generator is not None else self.next_generator()
        index: torch.Tensor | None = None
        if self.training:
            index = memory_index("PIRLTask", batch, self.memory_size, self.bank.device)
        app = self.appearance
        pb = make_pirl_batch(
            video, self.grid, self.clip_len, self.crop, self.tile_frac, self.jitter, app.channel_jitter, app.gray_p,
            app.channel_drop_p, generator=gen,
        )
        f_image = self.image_head(encode_pooled(encoder, pb.image, self.pool_grid))  # (B, D)
        g_jigsaw = self.jigsaw_head(app.encode(encoder, pb.tiles, self.tile_head, self.pool_grid))  # (B, D)
        B = f_image.shape[0]
        negatives = self.bank[self.draw_negatives(B, index, gen).to(self.bank.device)].to(f_image)  # (B, M, D)
        if index is not None:
            current = F.normalize(f_image.detach(), dim=1)
            positive = torch.where(self.seen[index][:, None], self.bank[index].to(current), current)
        else:
            positive = f_image
        loss_jigsaw = info_nce(g_jigsaw, positive, negatives, self.temperature)
        loss_image = info_nce(f_image, positive, negatives, self.temperature)
        loss = self.jigsaw_weight * loss_jigsaw + (1 - self.jigsaw_weight) * loss_image
        if index is not None:
            self.update_bank(index, f_image)
        with torch.no_grad():
            sim = F.normalize(g_jigsaw.float(), dim=1) @ F.normalize(f_image.float(), dim=1).T
            logs = {
                "loss": loss.detach(), "loss_jigsaw": loss_jigsaw.detach(), "loss_image": loss_image.detach(),
                "acc": (sim.argmax(dim=1) == torch.arange(B, device=sim.device)).float().mean(),
                "bank_filled": self.seen.float().mean(),
            }
            log_embedding_std(logs, "z_std", f_image)
        return TaskOutput(loss=loss, logs=logs)

    def extra_repr(self) -> str:
        return f"memory_size={self.memory_size}, num_negatives={self.num_negatives}, dim={self.dim}"

