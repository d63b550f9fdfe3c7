"""Future prediction: predict the next frames' pixels, or the next blocks' features.

Two pretext tasks share one pure, seeded generator (:func:`make_future_batch`: ``context`` past frames and the
``horizon`` frames that follow them, at a random start):

- :class:`FuturePixelTask` (``"future_pixels"``): video prediction as a pretext (Srivastava et al., "Unsupervised
  Learning of Video Representations using LSTMs", ICML 2015; Mathieu et al., "Deep multi-scale video prediction
  beyond mean square error", ICLR 2016). The encoder sees the past clip; a light U-Net decoder
  (:class:`FuturePixelDecoder`) turns its pyramid into the next ``horizon`` frames at full resolution, scored by
  the photometric error of :mod:`stssl.losses.photometric` (``alpha * (1 - SSIM) / 2 + (1 - alpha) * L1``). The
  logs carry the trivial "copy the last frame" baseline, so a user sees whether the model beats it.
- :class:`FutureFeatureTask` (``"future_features"``): feature prediction. The clip is cut into ``num_blocks``
  consecutive blocks; the online encoder embeds each context block, a predictor (:class:`BlockPredictor`)
  predicts the embeddings of the target blocks, and the targets come from an exponential-moving-average (EMA)
  copy of the encoder, without gradient. This is DPC's setting (Han et al., "Video Representation Learning by
  Dense Predictive Coding", ICCVW 2019: blocks, a coarse spatial grid, future steps) with V-JEPA's objective
  (Bardes et al., "Revisiting Feature Prediction for Learning Visual Representations from Video", 2024:
  regress layer-normalised EMA-target features with an L1-type loss) instead of DPC's contrastive loss. Nothing
  in the loss forbids a constant embedding; as in BYOL (Grill et al., NeurIPS 2020) the asymmetry (predictor +
  EMA target + stop-gradient) is what avoids collapse in practice, and the task logs ``target_std`` and
  ``pred_std`` to show it: a collapsed encoder gives the same embedding for every clip, so both fall to 0.

EMA target (:class:`FutureFeatureTask`): an :class:`~stssl.tasks.ema.EMATarget` (the submodule ``ema``) holds
``copy.deepcopy(encoder)``, made on the first forward (train or eval), frozen and saved in checkpoints with its
update count (``ema.ema_updates``: a resumed run continues the momentum ramp). The update ``target = m * target +
(1 - m) * online`` (buffers copied) is explicit: :meth:`FutureFeatureTask.on_optimizer_step`, which
:class:`~stssl.modules.SSLModule` calls once per real optimizer step (not per micro-batch under gradient
accumulation, not on an AMP step skipped for non-finite gradients) and a pure-PyTorch loop calls after
``optimizer.step()``; nothing is updated in eval mode or in :meth:`~FutureFeatureTask.forward`. Each task owns its
copy: two feature tasks on one encoder keep two copies, each updated once per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.heads.dense import PyramidDecoder
from stssl.losses.photometric import SSIM_WINDOWS, photometric_error
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import check_pool_grid, pool_cells
from stssl.tasks.ema import EMATarget, ema_momentum, ema_update_
from stssl.types import EncoderOutput, EncoderSpec, TaskOutput

__all__ = [
    "FEATURE_LOSSES",
    "PREDICTORS",
    "BlockPredictor",
    "FutureBatch",
    "FutureFeatureTask",
    "FuturePixelDecoder",
    "FuturePixelTask",
    "ema_momentum",
    "ema_update_",
    "make_future_batch",
    "psnr",
]

#: Predictor architectures of :class:`BlockPredictor` / :class:`FutureFeatureTask`.
PREDICTORS = ("mlp", "transformer")
#: Feature regression losses of :class:`FutureFeatureTask`.
FEATURE_LOSSES = ("smooth_l1", "cosine")


# ----------------------------------------------------------------------------------------------------------------
# Label generator
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FutureBatch:
    """Output of :func:`make_future_batch`.

    Attributes:
        past: ``(B, C, context, H, W)`` frames ``start .. start + context - 1``.
        future: ``(B, C, horizon, H, W)`` frames ``start + context .. start + context + horizon - 1``.
        start: ``(B,)`` int64 (CPU), the first past frame within the input's ``T`` axis.
    """

    past: torch.Tensor
    future: torch.Tensor
    start: torch.Tensor


def make_future_batch(
    video: torch.Tensor,
    context: int,
    horizon: int,
    *,
    generator: torch.Generator | None = None,
) -> FutureBatch:
    """Cut ``context`` past frames and the ``horizon`` frames that follow, at a random start per sample.

    Pure and seeded: the same ``generator`` state gives the same output. The draw happens on the CPU; the clips
    stay on ``video``'s device.

    Args:
        video: ``(B, C, T, H, W)`` with ``T >= context + horizon``.
        context: past frames the model sees (``>= 1``).
        horizon: future frames to predict (``>= 1``).
        generator: a CPU ``torch.Generator``.

    Returns:
        A :class:`FutureBatch`.

    Example:
        >>> video = torch.arange(10.0).view(1, 1, 10, 1, 1).expand(3, 1, 10, 1, 1)
        >>> fb = make_future_batch(video, 4, 2, generator=torch.Generator().manual_seed(0))
        >>> tuple(fb.past.shape), tuple(fb.future.shape)
        ((3, 1, 4, 1, 1), (3, 1, 2, 1, 1))
        >>> bool((fb.future[:, 0, 0, 0, 0] == fb.start + 4).all())
        True
    """
    sizes = check_shape(video, "B C T H W", name="video")
    if context < 1 or horizon < 1:
        raise ValueError(f"make_future_batch: context and horizon must be >= 1, got {context}, {horizon}")
    span = context + horizon
    if sizes["T"] < span:
        raise ValueError(f"make_future_batch: video has T={sizes['T']} frames, needs context + horizon = {span}")
    start = torch.randint(sizes["T"] - span + 1, (sizes["B"],), generator=generator)
    frames = (start[:, None] + torch.arange(span)[None, :]).to(video.device)  # (B, span)
    idx = rearrange(frames, "B S -> B 1 S 1 1").expand(-1, sizes["C"], -1, sizes["H"], sizes["W"])
    clip = torch.gather(video, 2, idx)
    return FutureBatch(past=clip[:, :, :context], future=clip[:, :, context:], start=start)


def psnr(pred: torch.Tensor, target: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per sample then averaged: ``mean_b 10 log10(max_val^2 / MSE_b)``.

    The MSE is clamped at ``1e-10`` (100 dB for ``max_val=1``), so identical inputs give a finite value.

    Args:
        pred: ``(B, ...)`` prediction.
        target: same shape as ``pred``.
        max_val: dynamic range of the values.

    Example:
        >>> x = torch.zeros(2, 3, 4, 4)
        >>> round(psnr(x + 0.1, x).item(), 3)
        20.0
    """
    if pred.shape != target.shape or pred.dim() < 1:
        raise ValueError(f"psnr: pred {tuple(pred.shape)} and target {tuple(target.shape)} must match")
    mse = (pred - target).pow(2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return (10.0 * torch.log10(max_val**2 / mse)).mean()


# ----------------------------------------------------------------------------------------------------------------
# Future pixels
# ----------------------------------------------------------------------------------------------------------------


class FuturePixelDecoder(nn.Module):
    """Decodes future frames from a video encoder's pyramid: a :class:`~stssl.heads.dense.PyramidDecoder` over the
    pyramid with its time axis collapsed.

    Each stage ``(B, C_i, T_i, H_i, W_i)`` loses its time axis by a learned temporal projection: the mean over
    ``T_i`` and the last time step are concatenated (``2 C_i`` channels, one time step) and the decoder's 1x1
    lateral convolution mixes them (any ``T_i`` works, and the most recent step keeps its own weights). The
    decoder's ``out_frames * out_channels`` outputs at the input size pass a sigmoid and become the frames. Stage
    sizes are read from the tensors, so any pyramid works (3D CNNs, per-frame 2D encoders).

    Args:
        enc_channels: channels ``C_i`` of the encoder stages, shallow to deep (``encoder.spec.channels``).
        dec_channels: decoder channels per stage (same length); ``None`` uses ``max(8, C_i // 2)``.
        out_frames: frames to predict (the horizon).
        out_channels: channels per frame (3 for RGB).

    Shape:
        - pyramid: ``(B, C_i, T_i, H_i, W_i)`` per stage.
        - output: ``(B, out_channels, out_frames, H, W)`` in ``(0, 1)`` for ``image_size=(H, W)``.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc = r3d_tiny(width=4)
        >>> dec = FuturePixelDecoder(enc.spec.channels, out_frames=2)
        >>> tuple(dec(enc(torch.rand(2, 3, 4, 32, 32)).pyramid, (32, 32)).shape)
        (2, 3, 2, 32, 32)
    """

    def __init__(
        self,
        enc_channels: Sequence[int],
        dec_channels: Sequence[int] | None = None,
        out_frames: int = 1,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        enc = tuple(int(c) for c in enc_channels)
        if not enc or any(c < 1 for c in enc):
            raise ValueError(f"FuturePixelDecoder: enc_channels must be positive channel counts, got {enc}")
        if out_frames < 1 or out_channels < 1:
            raise ValueError(f"FuturePixelDecoder: out_frames and out_channels must be >= 1, got {out_frames}, {out_channels}")
        self.enc_channels = enc
        self.out_frames = int(out_frames)
        self.out_channels = int(out_channels)
        default = tuple(max(8, c // 2) for c in enc)  # halves C_i, not the 2 C_i the decoder sees
        self.decoder = PyramidDecoder(
            [2 * c for c in enc], self.out_frames * self.out_channels, default if dec_channels is None else dec_channels
        )

    def forward(self, pyramid: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        if len(pyramid) != len(self.enc_channels):
            raise ValueError(
                f"FuturePixelDecoder: got {len(pyramid)} pyramid stages, built for {len(self.enc_channels)}"
            )
        sizes: dict[str, int] = {}
        collapsed = []
        for i, feat in enumerate(pyramid):
            check_shape(feat, f"B {self.enc_channels[i]} * * *", sizes, name=f"pyramid[{i}]")
            collapsed.append(torch.cat([feat.mean(dim=2), feat[:, :, -1]], dim=1)[:, :, None])
        out = self.decoder(collapsed, (1, int(image_size[0]), int(image_size[1])))[:, :, 0].sigmoid()
        return rearrange(out, "B (t c) H W -> B c t H W", t=self.out_frames)


class FuturePixelTask(PretextTask):
    """Predict the next ``horizon`` frames from ``context`` past frames (pixels, full resolution).

    Args:
        context: past frames given to the encoder.
        horizon: future frames decoded.
        alpha: weight of the SSIM term in the photometric error (``0`` is plain L1).
        ssim_window: ``"box3"`` or ``"gaussian"`` (see :func:`stssl.losses.photometric.ssim`).
        decoder_channels: :class:`FuturePixelDecoder` widths per encoder stage; ``None`` halves the encoder's.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Expects ``batch["video"]`` in ``[0, 1]`` (the decoder ends with a sigmoid). Logs ``loss``, ``l1`` and ``psnr``
    of the prediction, and ``copy_l1`` / ``copy_psnr`` of the baseline that repeats the last past frame.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc, task = r3d_tiny(width=4), FuturePixelTask(context=4, horizon=2)
        >>> task.build(enc.spec)
        >>> out = task({"video": torch.rand(2, 3, 8, 32, 32)}, enc)
        >>> sorted(out.logs)
        ['copy_l1', 'copy_psnr', 'l1', 'loss', 'psnr']
    """

    default_name = "future_pixels"

    def __init__(
        self,
        context: int = 4,
        horizon: int = 2,
        alpha: float = 0.85,
        ssim_window: str = "box3",
        decoder_channels: Sequence[int] | None = None,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        if context < 1 or horizon < 1:
            raise ValueError(f"FuturePixelTask: context and horizon must be >= 1, got {context}, {horizon}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"FuturePixelTask: alpha must be in [0, 1], got {alpha}")
        if ssim_window not in SSIM_WINDOWS:
            raise ValueError(f"FuturePixelTask: ssim_window must be one of {SSIM_WINDOWS}, got {ssim_window!r}")
        self.context = int(context)
        self.horizon = int(horizon)
        self.alpha = float(alpha)
        self.ssim_window = ssim_window
        self.decoder_channels = None if decoder_channels is None else tuple(int(c) for c in decoder_channels)
        self.decoder: FuturePixelDecoder | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.context + self.horizon)

    def build(self, spec: EncoderSpec) -> None:
        self.decoder = FuturePixelDecoder(spec.channels, self.decoder_channels, self.horizon, spec.in_channels)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.decoder is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        video = batch["video"]
        gen = generator if generator is not None else self.next_generator()
        fb = make_future_batch(video, self.context, self.horizon, generator=gen)
        pred = self.decoder(encoder(fb.past).pyramid, (video.shape[-2], video.shape[-1]))
        target = fb.future

        def frames(x: torch.Tensor) -> torch.Tensor:
            return rearrange(x, "B C t H W -> (B t) C H W")

        loss = photometric_error(frames(pred), frames(target), self.alpha, window=self.ssim_window).mean()
        with torch.no_grad():
            copy_last = fb.past[:, :, -1:].expand_as(target)
            logs = {
                "loss": loss.detach(),
                "l1": (pred - target).abs().mean(),
                "psnr": psnr(pred, target),
                "copy_l1": (copy_last - target).abs().mean(),
                "copy_psnr": psnr(copy_last, target),
            }
        return TaskOutput(loss=loss, logs=logs)


# ----------------------------------------------------------------------------------------------------------------
# Future features
# ----------------------------------------------------------------------------------------------------------------


class BlockPredictor(nn.Module):
    """Predict the embeddings of ``target_blocks`` future blocks from those of ``context_blocks`` past blocks.

    Each block is ``G`` tokens of dimension ``D`` (a ``gh x gw`` grid of cells, ``G = 1`` for pooled vectors).

    - ``"mlp"``: per cell, the context blocks' tokens are concatenated and projected to ``hidden``; a learned
      embedding of the cell and of the target step ``k`` is added; an MLP maps that to ``D``. Weights are shared
      across cells and steps; the step embedding is the "which future step" input.
    - ``"transformer"``: one pre-norm transformer layer over the context tokens (projected to ``hidden``, plus
      block-time and cell embeddings) and one query per (target step, cell) (a learned mask token plus the
      target's time and cell embeddings), as V-JEPA's predictor; the queries' outputs map to ``D``.

    Args:
        dim: token dimension ``D`` (the encoder's).
        context_blocks: ``n_c``.
        target_blocks: ``n_t``.
        cells: tokens per block ``G``.
        kind: ``"mlp"`` or ``"transformer"``.
        hidden: width of the predictor.
        heads: attention heads (``"transformer"``; must divide ``hidden``).

    Shape:
        - context: ``(B, n_c, G, D)``.
        - output: ``(B, n_t, G, D)``.

    Example:
        >>> pred = BlockPredictor(dim=8, context_blocks=2, target_blocks=3, cells=4, kind="transformer", hidden=16)
        >>> tuple(pred(torch.rand(5, 2, 4, 8)).shape)
        (5, 3, 4, 8)
    """

    def __init__(
        self,
        dim: int,
        context_blocks: int,
        target_blocks: int,
        cells: int = 1,
        kind: str = "mlp",
        hidden: int = 256,
        heads: int = 4,
    ) -> None:
        super().__init__()
        if kind not in PREDICTORS:
            raise ValueError(f"BlockPredictor: kind must be one of {PREDICTORS}, got {kind!r}")
        if min(dim, context_blocks, target_blocks, cells, hidden) < 1:
            raise ValueError(
                f"BlockPredictor: dim, context_blocks, target_blocks, cells and hidden must be >= 1, got "
                f"{dim}, {context_blocks}, {target_blocks}, {cells}, {hidden}"
            )
        if kind == "transformer" and (heads < 1 or hidden % heads):
            raise ValueError(f"BlockPredictor: heads={heads} must divide hidden={hidden}")
        self.kind = kind
        self.dim, self.context_blocks, self.target_blocks, self.cells = dim, context_blocks, target_blocks, cells
        self.step_embed = nn.Parameter(0.02 * torch.randn(target_blocks, hidden))
        self.cell_embed = nn.Parameter(0.02 * torch.randn(cells, hidden))
        if kind == "mlp":
            self.in_proj = nn.Linear(context_blocks * dim, hidden)
            self.body = nn.Sequential(
                nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, dim)
            )
        else:
            self.in_proj = nn.Linear(dim, hidden)
            self.context_embed = nn.Parameter(0.02 * torch.randn(context_blocks, hidden))
            self.mask_token = nn.Parameter(0.02 * torch.randn(hidden))
            self.layer = nn.TransformerEncoderLayer(
                hidden, heads, dim_feedforward=2 * hidden, dropout=0.0, activation="gelu", batch_first=True,
                norm_first=True,
            )
            self.body = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, dim))

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        sizes = check_shape(
            context, f"B {self.context_blocks} {self.cells} {self.dim}", name="BlockPredictor context"
        )
        step = rearrange(self.step_embed, "t h -> 1 t 1 h")
        cell = rearrange(self.cell_embed, "G h -> 1 1 G h")
        if self.kind == "mlp":
            x = self.in_proj(rearrange(context, "B n G D -> B 1 G (n D)"))
            return self.body(x + step + cell)
        ctx = self.in_proj(context) + rearrange(self.context_embed, "n h -> 1 n 1 h") + cell
        queries = (self.mask_token + step + cell).expand(sizes["B"], -1, -1, -1)
        tokens = torch.cat([rearrange(ctx, "B n G h -> B (n G) h"), rearrange(queries, "B t G h -> B (t G) h")], 1)
        out = self.layer(tokens)[:, ctx.shape[1] * self.cells :]
        return rearrange(self.body(out), "B (t G) D -> B t G D", t=self.target_blocks)


class FutureFeatureTask(PretextTask):
    """Predict the EMA-target embeddings of future blocks from the online embeddings of past blocks.

    A random window of ``num_blocks * block_len`` frames is cut (:func:`make_future_batch`) into ``num_blocks``
    blocks of ``block_len`` frames: the first ``context_blocks`` are encoded one by one by the online encoder, the
    rest by the EMA target encoder under ``torch.no_grad()``. Each block's ``dense`` map is average-pooled to a
    ``pool_grid`` of cells (``(1, 1)``: the pooled vector) and each cell's vector is a token; target tokens are
    layer-normalised (no affine), as in V-JEPA. A :class:`BlockPredictor` maps the context tokens to the target
    tokens; the loss is smooth-L1 (``beta=1``) or ``1 - cosine``. The EMA copy moves only in
    :meth:`on_optimizer_step` (once per optimizer step, never in eval mode); see the module docstring.

    Args:
        block_len: frames per block.
        num_blocks: blocks per window (``context_blocks`` past + the rest future).
        context_blocks: past blocks (``1 <= context_blocks < num_blocks``).
        pool_grid: ``(gh, gw)`` cells kept per block.
        predictor: ``"mlp"`` or ``"transformer"`` (:class:`BlockPredictor`).
        hidden: predictor width.
        heads: attention heads of the transformer predictor.
        loss: ``"smooth_l1"`` or ``"cosine"``.
        ema: EMA momentum (at the start of the ramp).
        ema_end: with ``total_steps``, ramp the momentum to this value on a cosine (BYOL); ``None``: constant.
        total_steps: updates over which the momentum ramps (e.g. ``trainer.estimated_stepping_batches``).
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss``, ``target_std`` and ``pred_std``: the mean over dimensions (and cells, steps) of the standard
    deviation across the batch of the layer-normalised target and predicted tokens. Healthy training keeps them
    well above 0 (about ``<= 1`` as tokens have unit variance over ``D``); a collapsed encoder gives ``0``. They
    are left out of batches of one sample. Also ``ema_momentum``, the momentum of the last update.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc, task = r3d_tiny(width=4), FutureFeatureTask(block_len=2, num_blocks=3, context_blocks=2, hidden=16)
        >>> task.build(enc.spec)
        >>> opt = torch.optim.SGD([*enc.parameters(), *task.parameters()], lr=0.1)
        >>> out = task({"video": torch.rand(2, 3, 8, 32, 32)}, enc)
        >>> out.loss.backward()
        >>> opt.step()
        >>> task.on_optimizer_step(enc)  # what SSLModule does after each optimizer step
        >>> sorted(out.logs), int(task.ema_updates)
        (['ema_momentum', 'loss', 'pred_std', 'target_std'], 1)
    """

    default_name = "future_features"

    def __init__(
        self,
        block_len: int = 4,
        num_blocks: int = 4,
        context_blocks: int = 2,
        pool_grid: tuple[int, int] = (1, 1),
        predictor: str = "mlp",
        hidden: int = 256,
        heads: int = 4,
        loss: str = "smooth_l1",
        ema: float = 0.996,
        ema_end: float | None = None,
        total_steps: int | None = None,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        if block_len < 1:
            raise ValueError(f"FutureFeatureTask: block_len must be >= 1, got {block_len}")
        if not 1 <= context_blocks < num_blocks:
            raise ValueError(
                f"FutureFeatureTask: need 1 <= context_blocks < num_blocks, got context_blocks={context_blocks}, "
                f"num_blocks={num_blocks}"
            )
        self.pool_grid = check_pool_grid("FutureFeatureTask", pool_grid)
        if predictor not in PREDICTORS:
            raise ValueError(f"FutureFeatureTask: predictor must be one of {PREDICTORS}, got {predictor!r}")
        if loss not in FEATURE_LOSSES:
            raise ValueError(f"FutureFeatureTask: loss must be one of {FEATURE_LOSSES}, got {loss!r}")
        self.block_len = int(block_len)
        self.num_blocks = int(num_blocks)
        self.context_blocks = int(context_blocks)
        self.target_blocks = self.num_blocks - self.context_blocks
        self.predictor_kind = predictor
        self.hidden = int(hidden)
        self.heads = int(heads)
        self.loss_kind = loss
        self.predictor: BlockPredictor | None = None
        self.ema = EMATarget(ema, ema_end, total_steps, owner="FutureFeatureTask")

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.num_blocks * self.block_len)

    def build(self, spec: EncoderSpec) -> None:
        self.predictor = BlockPredictor(
            spec.dim, self.context_blocks, self.target_blocks, self.pool_grid[0] * self.pool_grid[1],
            kind=self.predictor_kind, hidden=self.hidden, heads=self.heads,
        )

    # -- EMA target --------------------------------------------------------------------------------------------

    @property
    def target_encoder(self) -> Encoder | None:
        """The EMA copy of the encoder (``None`` before the first forward)."""
        return self.ema.module  # type: ignore[return-value]

    @property
    def ema_updates(self) -> torch.Tensor:
        """``()`` int64: EMA updates applied so far (checkpointed as ``ema.ema_updates``)."""
        return self.ema.ema_updates

    def update_target(self, encoder: Encoder) -> float:
        """Apply one EMA update of the copy towards ``encoder`` now (making the copy first if needed), whatever
        the mode; return the momentum used. :meth:`on_optimizer_step` is the usual way in."""
        return self.ema.update(encoder)

    def on_optimizer_step(self, encoder: Encoder) -> None:
        """One EMA update per optimizer step, in training mode only (see
        :meth:`~stssl.tasks.base.PretextTask.on_optimizer_step`)."""
        if self.training:
            self.update_target(encoder)

    # -- forward -----------------------------------------------------------------------------------------------

    def _tokens(self, out: EncoderOutput) -> torch.Tensor:
        """``(N, G, D)`` tokens: the dense map average-pooled over time and onto the ``pool_grid``."""
        cells = pool_cells(out.dense, self.pool_grid)  # (N, D * gh * gw), channel-major
        return rearrange(cells, "N (D G) -> N G D", G=self.pool_grid[0] * self.pool_grid[1])

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.predictor is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        video = batch["video"]
        gen = generator if generator is not None else self.next_generator()
        target_encoder = self.ema.ensure(encoder)
        L = self.block_len
        fb = make_future_batch(video, self.context_blocks * L, self.target_blocks * L, generator=gen)
        ctx = self._tokens(encoder(rearrange(fb.past, "B C (n L) H W -> (B n) C L H W", L=L)))
        ctx = rearrange(ctx, "(B n) G D -> B n G D", n=self.context_blocks)
        with torch.no_grad():
            tgt = self._tokens(target_encoder(rearrange(fb.future, "B C (n L) H W -> (B n) C L H W", L=L)))
            tgt = F.layer_norm(rearrange(tgt, "(B n) G D -> B n G D", n=self.target_blocks), tgt.shape[-1:])
        pred = self.predictor(ctx)
        if self.loss_kind == "smooth_l1":
            loss = F.smooth_l1_loss(pred, tgt, beta=1.0)
        else:
            loss = (1.0 - F.cosine_similarity(pred, tgt, dim=-1)).mean()
        with torch.no_grad():
            logs = {"loss": loss.detach(), "ema_momentum": video.new_tensor(self.ema.last_momentum)}
            if pred.shape[0] > 1:  # a spread across the batch needs two samples (B = 1 would read as collapse)
                pred_n = F.layer_norm(pred.detach().float(), pred.shape[-1:])
                logs["target_std"] = tgt.float().std(dim=0).mean()
                logs["pred_std"] = pred_n.std(dim=0).mean()
        return TaskOutput(loss=loss, logs=logs)
