"""Jigsaw puzzles (Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", ECCV 2016), on single frames or on clips.

A (square-cropped) frame is split into a 3x3 grid of cells; one tile per cell is cut at a random place inside
its cell (so tiles are separated by random gaps, against matching continued edges), optionally with per-channel
jitter and per-tile greyscale / colour-channel dropping (against chromatic-aberration and colour shortcuts). The
tiles are shuffled by a permutation drawn from a fixed set, each tile is encoded *independently* by the shared
encoder (a single frame or a short clip: every frame of a clip is cut the same way), a shared per-tile layer maps
each feature, and the concatenation is classified into the permutation's index in the set (the context-free
network). With ``predict="positions"`` the head instead predicts every shuffled tile's original cell (9-way per
tile), a per-tile variant in the spirit of Jigsaw++ (with ``num_permutations=None`` the orders are then uniform
over all ``9!``). Noroozi et al.'s actual Jigsaw++ (2018) also swaps some tiles for tiles of other images; that is
not implemented.

Space-time puzzles (``time_segments > 1``, in the spirit of Kim et al., "Self-Supervised Video Representation
Learning with Space-Time Cubic Puzzles", AAAI 2019): the window is also cut into ``time_segments`` consecutive
segments of ``clip_len`` frames (``segment_gap`` frames dropped between them, against matching the frames either
side of a cut), and the ``time_segments * grid**2`` pieces are shuffled together, so solving the puzzle needs the
order of time as well as the layout of space (e.g. ``grid=2, time_segments=2``: 8 pieces). With one segment (the
default) every frame of a tile clip is cut alike and the label holds for all of them.

The permutation set is chosen by Noroozi & Favaro's greedy algorithm, :func:`max_hamming_permutations`: start from
a random permutation, then repeatedly add the remaining permutation with the largest *average* Hamming distance to
those chosen so far. In their ablation, sets with a larger average distance gave better transfer. Measured here
(seed 0, one CPU core):

==========  ==========================  =========
set size    avg / min Hamming           time
==========  ==========================  =========
100         8.08 / 2                    0.12 s
1000        8.008 / 2                   1.1-2 s
==========  ==========================  =========

(one shared, loaded 2-core AMD EPYC core; plus 0.23 s, once per process, to enumerate the ``9!`` candidates; seeds 1
and 3 gave the same statistics). Random sets of 100 permutations average about 8.00 with a minimum of 2-4:
maximising the *average* distance does not maximise the minimum. Noroozi & Favaro's permutation-set table (their
Table 3, quoted from memory: no copy of the paper is at hand here) lists 8.00 / 2 for their 1000-permutation set and
8.08 / 2 for 100, the same as these sets to two decimals. ``tools/make_permutations.py`` writes a set with its
statistics.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import (
    check_pool_grid,
    classification_output,
    mlp_head,
    pooled_dim,
    relu_layer,
)
from stssl.tasks.image_common import (
    CROP_MODES,
    PatchAppearance,
    begin_forward,
    check_choice,
    check_clip_len1,
    check_fraction,
    crop_regions,
    cut_grid_patches,
    recolor_patch_sets,
)
from stssl.types import EncoderSpec, TaskOutput

__all__ = [
    "PREDICT_MODES",
    "JigsawBatch",
    "JigsawTask",
    "hamming_stats",
    "make_jigsaw_batch",
    "max_hamming_permutations",
    "puzzle_window",
]

#: What :class:`JigsawTask` predicts: the permutation's index in the set, or every tile's original cell.
PREDICT_MODES = ("permutation", "positions")
_MAX_TILES = 10  # 10! = 3.6M candidates (36 MB as int8) is the largest exhaustive greedy we allow


@functools.lru_cache(maxsize=4)
def _all_permutations(num_tiles: int) -> np.ndarray:
    """All ``num_tiles!`` permutations in lexicographic order, ``(num_tiles!, num_tiles)`` int8 (read-only)."""
    perms = np.array(list(itertools.permutations(range(num_tiles))), dtype=np.int8)
    perms.setflags(write=False)
    return perms


@functools.lru_cache(maxsize=16)
def _greedy_indices(n: int, num_tiles: int, seed: int) -> tuple[int, ...]:
    perms = _all_permutations(num_tiles)
    columns = np.ascontiguousarray(perms.T)  # (num_tiles, total): one fast vector compare per position
    total = perms.shape[0]
    first = int(np.random.default_rng(seed).integers(total))
    chosen = [first]
    dist_sum = np.zeros(total, dtype=np.int32)  # sum of Hamming distances to the chosen set
    available = np.ones(total, dtype=bool)
    for _ in range(n - 1):
        newest = perms[chosen[-1]]
        for j in range(num_tiles):
            dist_sum += columns[j] != newest[j]
        available[chosen[-1]] = False
        chosen.append(int(np.argmax(np.where(available, dist_sum, -1))))  # ties: lexicographically first
    return tuple(chosen)


def max_hamming_permutations(n: int, num_tiles: int = 9, seed: int = 0) -> torch.Tensor:
    """A set of ``n`` permutations of ``num_tiles`` tiles with a large average Hamming distance (Noroozi & Favaro's
    greedy selection, their Algorithm 1).

    Start from a permutation drawn uniformly (seeded by ``seed``) among all ``num_tiles!``; then, ``n - 1`` times,
    add the not-yet-chosen permutation whose summed (equivalently, average) Hamming distance to the chosen set is
    largest, ties going to the lexicographically first. Vectorised over all candidates with a running sum, so
    the cost is ``O(n * num_tiles * num_tiles!)``: about 0.12 s for ``n=100`` and 1-2 s for ``n=1000`` with 9 tiles
    on one CPU core (see the module docstring for the resulting statistics). Results are cached per process.

    Args:
        n: set size, ``1 <= n <= num_tiles!``.
        num_tiles: tiles per puzzle (``grid * grid``), ``2 … 10``.
        seed: picks the first permutation.

    Returns:
        ``(n, num_tiles)`` int64; every row a permutation of ``range(num_tiles)``, rows distinct.

    Example:
        >>> perms = max_hamming_permutations(6, num_tiles=4)
        >>> perms.shape, sorted(perms[0].tolist())
        (torch.Size([6, 4]), [0, 1, 2, 3])
        >>> hamming_stats(perms)[1]  # any two rows differ in at least this many places
        2
    """
    if not 2 <= num_tiles <= _MAX_TILES:
        raise ValueError(f"max_hamming_permutations: num_tiles must be in [2, {_MAX_TILES}], got {num_tiles}")
    total = math.factorial(num_tiles)
    if not 1 <= n <= total:
        raise ValueError(f"max_hamming_permutations: n must be in [1, {total}] for num_tiles={num_tiles}, got {n}")
    chosen = _greedy_indices(int(n), int(num_tiles), int(seed))
    return torch.from_numpy(_all_permutations(num_tiles)[list(chosen)].astype(np.int64))


def hamming_stats(perms: torch.Tensor) -> tuple[float, int]:
    """Average and minimum pairwise Hamming distance of a permutation set (over pairs ``i < j``).

    Args:
        perms: ``(n, num_tiles)`` with ``n >= 2``.

    Example:
        >>> avg, low = hamming_stats(torch.tensor([[0, 1, 2], [1, 0, 2], [2, 1, 0]]))  # distances 2, 2, 3
        >>> round(avg, 3), low
        (2.333, 2)
    """
    check_shape(perms, "n K", name="hamming_stats perms")
    n = perms.shape[0]
    if n < 2:
        raise ValueError(f"hamming_stats: needs at least 2 permutations, got {n}")
    dist = (perms[:, None, :] != perms[None, :, :]).sum(dim=-1)
    pairs = dist[torch.triu_indices(n, n, offset=1).unbind(0)]
    return float(pairs.double().mean()), int(pairs.min())


@dataclass
class JigsawBatch:
    """Output of :func:`make_jigsaw_batch`. ``tiles`` and ``label`` are on the video's device, the rest on the CPU.

    Attributes:
        tiles: ``(B, K, C, L, h, w)`` the tiles in shuffled order: ``tiles[:, i]`` was cut from piece
            ``permutation[:, i]``, so ``tiles[b, argsort(permutation[b])]`` is the puzzle in order. Pieces are
            numbered segment-major: piece ``s * G**2 + c`` is spatial cell ``c`` (row-major) of time segment ``s``
            (with one segment, piece = cell).
        label: ``(B,)`` index of the permutation in the set (``-1`` when drawn from all orders).
        permutation: ``(B, K)`` the applied order, i.e. each shuffled tile's original piece (the position labels).
        top, left: ``(B, G**2, C)`` where each cell's channel was cut, in the (square-cropped) window, in cell
            order (the same place in every time segment).
        corner: ``(B, 2)`` ``(top, left)`` of the square crop in the frame.
        start: ``(B,)`` first frame of each window (segment ``s`` starts ``s * (L + segment_gap)`` frames later).
        color_mode: ``(B, K)`` per shuffled tile: 0 untouched, 1 grey, ``2 + c`` only channel ``c`` kept.
    """

    tiles: torch.Tensor
    label: torch.Tensor
    permutation: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    corner: torch.Tensor
    start: torch.Tensor
    color_mode: torch.Tensor


def puzzle_window(clip_len: int, time_segments: int = 1, segment_gap: int = 1, owner: str = "puzzle_window") -> int:
    """Frames a (space-time) puzzle spans: ``time_segments`` segments of ``clip_len`` frames with ``segment_gap``
    frames left out between two of them.

    Example:
        >>> puzzle_window(4, time_segments=2, segment_gap=1), puzzle_window(3)
        (9, 3)
    """
    if time_segments < 1 or segment_gap < 0:
        raise ValueError(f"{owner}: need time_segments >= 1 and segment_gap >= 0, got {time_segments}, {segment_gap}")
    return time_segments * clip_len + (time_segments - 1) * segment_gap


def make_jigsaw_batch(
    video: torch.Tensor,
    permutations: torch.Tensor | None,
    grid: int = 3,
    clip_len: int = 1,
    crop: str = "random",
    tile_frac: float = 0.85,
    jitter: float = 1.0,
    channel_jitter: int = 0,
    gray_p: float = 0.0,
    channel_drop_p: float = 0.0,
    *,
    time_segments: int = 1,
    segment_gap: int = 1,
    generator: torch.Generator | None = None,
) -> JigsawBatch:
    """Cut a ``grid x grid`` puzzle (``x time_segments`` in time) from a window of each video and shuffle its tiles.

    Pure and seeded: the same ``generator`` state gives the same output. Random draws happen on the CPU.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= time_segments * clip_len + (time_segments - 1) * segment_gap``.
        permutations: ``(P, K)`` the permutation set (``K = time_segments * grid**2`` pieces), or None for uniform
            over all ``K!`` orders.
        grid: cells per side.
        clip_len: frames per tile clip ``L`` (1: single frames); all frames of a piece are cut alike.
        crop: square crop before the grid: ``"random"`` (Noroozi & Favaro's random crop), ``"center"`` or
            ``"none"`` (rectangular cells on non-square frames).
        tile_frac: tile side over cell side (Noroozi & Favaro: 64 of 75 pixels, about 0.85).
        jitter: fraction of the free room in a cell over which a tile's place varies (see
            :func:`~stssl.tasks.image_common.grid_tile_boxes`).
        channel_jitter: per-channel extra shift in pixels (Noroozi & Favaro: 2).
        gray_p: probability of a grey tile; ``channel_drop_p``: of a tile keeping one colour channel.
        time_segments: consecutive time segments of ``clip_len`` frames the window is also cut into (1: a
            spatial puzzle).
        segment_gap: frames left out between two segments.
        generator: a CPU ``torch.Generator``.

    Returns:
        A :class:`JigsawBatch`.

    Example:
        >>> perms = max_hamming_permutations(10)
        >>> video = torch.rand(2, 3, 1, 30, 30)
        >>> out = make_jigsaw_batch(video, perms, generator=torch.Generator().manual_seed(0))
        >>> tuple(out.tiles.shape), bool((perms[out.label] == out.permutation).all())
        ((2, 9, 3, 1, 8, 8), True)
        >>> ordered = out.tiles[0, out.permutation[0].argsort()]  # undo the shuffle
        >>> t, l = int(out.top[0, 4, 0]), int(out.left[0, 4, 0])
        >>> torch.equal(ordered[4], video[0, :, :, t : t + 8, l : l + 8])  # the centre tile
        True
        >>> st = make_jigsaw_batch(torch.rand(2, 3, 5, 30, 30), None, grid=2, clip_len=2, time_segments=2,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> tuple(st.tiles.shape), sorted(st.permutation[0].tolist())  # 2 x 2 cells x 2 segments of 2 frames
        ((2, 8, 3, 2, 13, 13), [0, 1, 2, 3, 4, 5, 6, 7])
    """
    owner = "make_jigsaw_batch"
    B = check_shape(video, "B C T H W", name=f"{owner} video")["B"]
    window = puzzle_window(clip_len, time_segments, segment_gap, owner)
    cells = grid * grid
    K = cells * time_segments
    if permutations is not None:
        check_shape(permutations, f"P {K}", name=f"{owner} permutations")
    gp = cut_grid_patches(
        video, window, crop, grid, tile_frac, jitter, channel_jitter, generator=generator, owner=owner
    )
    if permutations is None:
        permutation = torch.rand(B, K, generator=generator).argsort(dim=1)
        label = torch.full((B,), -1, dtype=torch.long)
    else:
        label = torch.randint(permutations.shape[0], (B,), generator=generator)
        permutation = permutations.cpu()[label].long()
    rows = torch.arange(B)[:, None]
    cell = permutation % cells
    tiles = crop_regions(gp.clips, gp.top[rows, cell], gp.left[rows, cell], gp.size)  # shuffled order, whole window
    if time_segments > 1:  # keep each piece's own segment: frames s * (L + gap) + [0, L)
        first = (permutation // cells) * (clip_len + segment_gap)  # (B, K)
        frames = (first[..., None] + torch.arange(clip_len)).to(tiles.device)  # (B, K, L)
        index = frames[:, :, None, :, None, None].expand(-1, -1, tiles.shape[2], -1, *tiles.shape[-2:])
        tiles = tiles.gather(3, index)
    tiles, mode = recolor_patch_sets(tiles, gray_p, channel_drop_p, generator=generator)
    return JigsawBatch(
        tiles=tiles, label=label.to(video.device), permutation=permutation, top=gp.top, left=gp.left,
        corner=gp.corner, start=gp.start, color_mode=mode,
    )


class JigsawTask(PretextTask):
    """Solve jigsaw puzzles of ``grid x grid`` tiles encoded independently by the shared encoder.

    Args:
        num_permutations: size of the permutation set (classes; Noroozi & Favaro: 1000, chance ``1/P``), chosen by
            :func:`max_hamming_permutations`. ``None`` draws uniformly from all orders (``predict="positions"``
            only).
        permutation_seed: seed of the greedy selection (the set is stored in the ``permutations`` buffer, so
            checkpoints keep it).
        predict: ``"permutation"`` (classify the set index) or ``"positions"`` (each tile's original cell,
            ``grid**2``-way per tile).
        grid: cells per side (3: 9 tiles, ``9! = 362880`` possible orders).
        clip_len: frames per tile clip (1: single frames).
        time_segments: also cut the window into this many time segments of ``clip_len`` frames, shuffled with
            the cells (a space-time puzzle of ``time_segments * grid**2`` pieces; 1: spatial only).
        segment_gap: frames left out between segments.
        crop: ``"random"``, ``"center"`` or ``"none"`` square crop before the grid.
        tile_frac, jitter, channel_jitter: tile geometry, see :func:`make_jigsaw_batch`.
        gray_p, channel_drop_p: per-tile colour handling, see :func:`~stssl.tasks.image_common.recolor_patches`.
        normalize_tiles: standardise each tile per channel before encoding (Noroozi & Favaro).
        resize_to: resize every tile to this square size before encoding (e.g. a multiple of a ViT's patch size,
            or larger tiles for a deep CNN); None keeps the cut size.
        hidden: width of the shared per-tile layer and of the classifier's hidden layer.
        dropout: dropout before the classifier's last layer.
        pool_grid: ``(h, w)`` cells kept from each tile's dense map.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss`` and ``acc`` (``"permutation"``: set index; ``"positions"``: per tile), and ``solved`` (fraction of
    puzzles with every tile right) for ``"positions"``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc, task = r3d_tiny(width=4), JigsawTask(num_permutations=10, hidden=8)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 1, 32, 48)}, enc, torch.Generator().manual_seed(0))
        >>> sorted(out.logs), out.loss.dim()
        (['acc', 'loss'], 0)
    """

    default_name = "jigsaw"
    permutations: torch.Tensor

    def __init__(
        self,
        num_permutations: int | None = 100,
        permutation_seed: int = 0,
        predict: str = "permutation",
        grid: int = 3,
        clip_len: int = 1,
        time_segments: int = 1,
        segment_gap: int = 1,
        crop: str = "random",
        tile_frac: float = 0.85,
        jitter: float = 1.0,
        channel_jitter: int = 0,
        gray_p: float = 0.3,
        channel_drop_p: float = 0.0,
        normalize_tiles: bool = False,
        resize_to: int | None = None,
        hidden: int = 256,
        dropout: float = 0.5,
        pool_grid: tuple[int, int] = (1, 1),
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        owner = "JigsawTask"
        self.predict = check_choice(owner, "predict", predict, PREDICT_MODES)
        puzzle_window(clip_len, time_segments, segment_gap, owner)  # checks the time segments
        if grid < 2 or (grid * grid * time_segments > _MAX_TILES and num_permutations is not None):
            raise ValueError(
                f"{owner}: grid must be >= 2, and time_segments * grid**2 <= {_MAX_TILES} with a permutation set, "
                f"got grid={grid}, time_segments={time_segments}"
            )
        if num_permutations is None and predict == "permutation":
            raise ValueError(f"{owner}: predict='permutation' needs a permutation set; give num_permutations")
        self.grid = int(grid)
        self.time_segments, self.segment_gap = int(time_segments), int(segment_gap)
        self.num_tiles = self.grid * self.grid * self.time_segments
        self.num_permutations = None if num_permutations is None else int(num_permutations)
        perms = (
            torch.zeros(0, self.num_tiles, dtype=torch.long)
            if self.num_permutations is None
            else max_hamming_permutations(self.num_permutations, self.num_tiles, permutation_seed)
        )
        self.register_buffer("permutations", perms)
        self.clip_len = check_clip_len1(owner, clip_len)
        self.crop = check_choice(owner, "crop", crop, CROP_MODES)
        self.tile_frac = check_fraction(owner, "tile_frac", tile_frac, low_open=True)
        self.jitter = check_fraction(owner, "jitter", jitter)
        #: the validated tile options (``normalize`` is ``normalize_tiles``)
        self.appearance = PatchAppearance.checked(
            owner, channel_jitter, gray_p, channel_drop_p, normalize_tiles, resize_to
        )
        self.hidden = int(hidden)
        self.dropout = float(dropout)
        self.pool_grid = check_pool_grid(owner, pool_grid)
        self.tile_head: nn.Module | None = None
        self.classifier: nn.Module | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.window)

    @property
    def window(self) -> int:
        """Frames a puzzle spans: ``time_segments * clip_len`` plus the gaps between segments."""
        return puzzle_window(self.clip_len, self.time_segments, self.segment_gap)

    @property
    def num_classes(self) -> int:
        """Logits per puzzle: the set size, or ``K * K`` (``K`` per tile) for ``"positions"``."""
        if self.predict == "positions":
            return self.num_tiles * self.num_tiles
        return int(self.permutations.shape[0])

    def build(self, spec: EncoderSpec) -> None:
        self.tile_head = relu_layer(pooled_dim(spec.dim, self.pool_grid), self.hidden)
        self.classifier = mlp_head(self.num_tiles * self.hidden, self.hidden, self.num_classes, self.dropout)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        owner = "JigsawTask"
        if self.time_segments > 1:
            owner += f" ({self.time_segments} segments of {self.clip_len} frames, gap {self.segment_gap})"
        video, gen = begin_forward(owner, self, batch, self.window, generator, self.tile_head, self.classifier)
        assert self.tile_head is not None and self.classifier is not None  # checked by begin_forward
        app = self.appearance
        jb = make_jigsaw_batch(
            video, self.permutations if self.num_permutations is not None else None, self.grid, self.clip_len,
            self.crop, self.tile_frac, self.jitter, app.channel_jitter, app.gray_p, app.channel_drop_p,
            time_segments=self.time_segments, segment_gap=self.segment_gap, generator=gen,
        )
        logits = self.classifier(app.encode(encoder, jb.tiles, self.tile_head, self.pool_grid))
        if self.predict == "permutation":
            return classification_output(logits, jb.label)
        target = jb.permutation.to(video.device)
        out = classification_output(
            rearrange(logits, "B (K P) -> (B K) P", K=self.num_tiles), rearrange(target, "B K -> (B K)")
        )
        with torch.no_grad():
            right = logits.view(-1, self.num_tiles, self.num_tiles).argmax(dim=-1) == target
            out.logs["solved"] = right.all(dim=1).float().mean()
        return out
