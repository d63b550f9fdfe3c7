"""Self-supervised monocular depth and ego-motion from video (monodepth2 class; Godard et al., "Digging Into
Self-Supervised Monocular Depth Estimation", ICCV 2019).

A depth network (the shared per-frame encoder + :class:`~stssl.heads.dense.DisparityDecoder`) predicts the depth
of a target frame; a pose network predicts ``src_from_tgt`` for each neighbouring source frame. Each source is
warped into the target view through the predicted depth and pose (:func:`stssl.geometry.warp_frame`), and the
photometric error of the synthesised view, minimised per pixel over sources and auto-masked, trains both networks
(:func:`view_synthesis_loss`, a pure function that can be fed ground truth). An edge-aware smoothness term
regularises the disparity.

Multi-scale as monodepth2 v2: the disparity of every decoder scale ``s`` is upsampled (bilinear) to the input
resolution, and the photometric loss is computed there with the full-resolution images and ``K``; the smoothness
at scale ``s`` uses the disparity and the target image at that scale, weighted ``smoothness_weight / 2**s``; the
loss is the mean over scales.

Options beyond monodepth2 (all off by default):

- ``learn_intrinsics``: predict ``fx, fy, cx, cy`` per sample from the pose network's features (for video of an
  unknown camera, as Gordon et al., "Depth from Videos in the Wild", ICCV 2019).
- ``brightness``: predict an affine ``a * I + b`` per source frame from the pose features and apply it to the
  source (warped and unwarped) before comparing it with the target: a crude model of a light that moves with the
  camera (endoscopy).
- ``mask_moving``: a heuristic for independently moving objects: drop the pixels whose minimum reprojection
  error is in the top ``mask_moving`` quantile of each sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.eval.metrics import depth_metrics
from stssl.geometry.pose import invert_pose, pose_vec_to_matrix
from stssl.geometry.warp import warp_frame
from stssl.heads.dense import TINY_DEC_CHANNELS, DisparityDecoder, disp_to_depth, frames_from_pyramid
from stssl.heads.pose import PoseNet, posenet_18, posenet_tiny
from stssl.losses.photometric import SSIM_WINDOWS, min_reprojection_loss, photometric_error, smoothness_loss
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.types import EncoderSpec, TaskOutput

__all__ = [
    "DECODER_PRESETS",
    "POSE_NETS",
    "DepthMotionTask",
    "intrinsics_from_params",
    "view_synthesis_loss",
]

#: Pose network builders selectable by ``DepthMotionTask(pose_net=...)``.
POSE_NETS: dict[str, Callable[[], PoseNet]] = {"posenet_tiny": posenet_tiny, "posenet_18": posenet_18}

#: Named decoder widths for ``DepthMotionTask(decoder_channels=...)``.
DECODER_PRESETS: dict[str, tuple[int, ...]] = {"monodepth2": (16, 32, 64, 128, 256), "tiny": TINY_DEC_CHANNELS}

#: Sign changes of a pose vector ``(rx, ry, rz, tx, ty, tz)`` under the mirror ``X -> -X`` (``S T S``).
MIRROR_POSE_SIGNS = torch.tensor([1.0, -1.0, -1.0, -1.0, 1.0, 1.0])

#: Initial focal length of learned intrinsics, as a fraction of the image width (about 71 degrees of view).
FOCAL_INIT = 0.7


def intrinsics_from_params(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Intrinsics from unconstrained parameters, parameterised around the image size.

    ``fx = 0.7 W softplus(p0) / log 2`` and ``fy = 0.7 W softplus(p1) / log 2`` (positive; ``0.7 W`` at ``p = 0``,
    square pixels), ``cx = W sigmoid(p2) - 0.5`` and ``cy = H sigmoid(p3) - 0.5`` (inside the image; the image
    centre at ``p = 0``, pixel centres at integers as in :mod:`stssl.geometry.camera`).

    Args:
        params: ``(B, 4)`` raw outputs of a head.
        height: image height ``H`` in pixels.
        width: image width ``W`` in pixels.

    Returns:
        ``(B, 3, 3)`` intrinsics in pixels at ``H x W``.

    Example:
        >>> K = intrinsics_from_params(torch.zeros(1, 4), height=10, width=20)
        >>> K[0].tolist()
        [[14.0, 0.0, 9.5], [0.0, 14.0, 4.5], [0.0, 0.0, 1.0]]
    """
    check_shape(params, "B 4", name="intrinsics params")
    focal = FOCAL_INIT * width * F.softplus(params[:, :2]) / math.log(2.0)
    cx = width * torch.sigmoid(params[:, 2]) - 0.5
    cy = height * torch.sigmoid(params[:, 3]) - 0.5
    zero, one = torch.zeros_like(cx), torch.ones_like(cx)
    rows = [
        torch.stack([focal[:, 0], zero, cx], dim=1),
        torch.stack([zero, focal[:, 1], cy], dim=1),
        torch.stack([zero, zero, one], dim=1),
    ]
    return torch.stack(rows, dim=1)


def view_synthesis_loss(
    image_tgt: torch.Tensor,
    images_src: torch.Tensor,
    depth_tgt: torch.Tensor,
    src_from_tgt: torch.Tensor,
    K: torch.Tensor,
    *,
    alpha: float = 0.85,
    ssim_window: str = "box3",
    automask: bool = True,
    mask_moving: float = 0.0,
    brightness: torch.Tensor | None = None,
    identity_errors: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Photometric loss of synthesising the target view from ``S`` source views through depth and poses.

    Every source is inverse-warped into the target (:func:`~stssl.geometry.warp_frame`, bilinear, border padding)
    and compared with the target by :func:`~stssl.losses.photometric.photometric_error`; the per-pixel minimum over
    sources is the loss (:func:`~stssl.losses.photometric.min_reprojection_loss`, masked mean). With ``automask``
    the unwarped sources' errors mask out pixels that no motion explains better than none (static camera, objects
    moving with it). With ``mask_moving = q > 0``, of the pixels kept, those whose minimum error is above the
    ``1 - q`` quantile of their sample are dropped too: a heuristic for independently moving objects (a large
    error can also be an occlusion or a wrong depth), not a motion model.

    Pure: feed ground-truth depth and poses to check the geometry (the error is then near zero on static
    scenes), or network predictions to train.

    Args:
        image_tgt: ``(B, C, H, W)`` target image, values in ``[0, 1]``.
        images_src: ``(B, S, C, H, W)`` source images.
        depth_tgt: ``(B, 1, H, W)`` target depth ``z`` (the unit of the poses' translations, e.g. metres).
        src_from_tgt: ``(B, S, 4, 4)`` maps target-camera points into each source camera.
        K: ``(B, 3, 3)`` intrinsics in pixels at ``H x W`` (shared by target and sources).
        alpha: SSIM weight of the photometric error.
        ssim_window: ``"box3"`` or ``"gaussian"``.
        automask: monodepth2's auto-masking.
        mask_moving: quantile ``q`` in ``[0, 1)`` of high-error pixels to ignore (0 = off).
        brightness: ``(B, S, 2)`` affine ``(a, b)`` applied to each source as ``a * I + b`` (warped and unwarped)
            before comparison, or ``None``.
        identity_errors: ``(B, S, H, W)`` the unwarped sources' errors from an earlier call with the same images
            (they do not depend on depth or pose: multi-scale callers compute them once), or ``None``.

    Returns:
        ``loss`` (scalar) and ``aux``: ``warped`` ``(B, S, C, H, W)``, ``errors`` ``(B, S, H, W)`` of the warped
        sources, ``identity_errors`` ``(B, S, H, W)`` of the unwarped ones (with ``automask``), ``min_error`` ``(B, 1, H, W)``,
        ``mask`` ``(B, 1, H, W)`` bool (pixels in the loss), ``automask`` ``(B, 1, H, W)`` bool and ``valid``
        ``(B, S, H, W)`` bool (the point projects inside the source, in front of it).

    Example:
        >>> image = torch.rand(2, 3, 8, 8)
        >>> K = torch.tensor([[4.0, 0, 3.5], [0, 4.0, 3.5], [0, 0, 1]]).expand(2, 3, 3)
        >>> identity = torch.eye(4).expand(2, 1, 4, 4)
        >>> loss, aux = view_synthesis_loss(image, image[:, None], torch.ones(2, 1, 8, 8), identity, K)
        >>> round(loss.item(), 6), aux["errors"].shape
        (0.0, torch.Size([2, 1, 8, 8]))
    """
    sizes = check_shape(image_tgt, "B C H W", name="image_tgt")
    check_shape(images_src, "B S C H W", sizes, name="images_src")
    check_shape(depth_tgt, "B 1 H W", sizes, name="depth_tgt")
    check_shape(src_from_tgt, "B S 4 4", sizes, name="src_from_tgt")
    check_shape(K, "B 3 3", sizes, name="K")
    if not 0.0 <= mask_moving < 1.0:
        raise ValueError(f"view_synthesis_loss: mask_moving must be in [0, 1), got {mask_moving}")
    num_src = images_src.shape[1]
    if brightness is not None:
        check_shape(brightness, "B S 2", sizes, name="brightness")
        gain = brightness[..., 0, None, None, None]
        images_src = gain * images_src + brightness[..., 1, None, None, None]
    # All sources in one warp: fold S into the batch.
    sources = rearrange(images_src, "b s c h w -> (b s) c h w")
    warped, valid = warp_frame(
        sources,
        depth_tgt.repeat_interleave(num_src, dim=0),
        rearrange(src_from_tgt, "b s i j -> (b s) i j"),
        K.repeat_interleave(num_src, dim=0),
    )
    target = image_tgt.repeat_interleave(num_src, dim=0)
    errors = rearrange(photometric_error(warped, target, alpha, window=ssim_window), "(b s) 1 h w -> b s h w",
                       s=num_src)
    if not automask:
        identity_errors = None
    elif identity_errors is None:
        identity_errors = rearrange(
            photometric_error(sources, target, alpha, window=ssim_window), "(b s) 1 h w -> b s h w", s=num_src
        )
    else:
        check_shape(identity_errors, "B S H W", sizes, name="identity_errors")
    loss, aux = min_reprojection_loss(errors, identity_errors)
    min_error, mask = aux["min_error"], aux["automask"]
    if mask_moving > 0:
        with torch.no_grad():
            kept_errors = torch.where(mask, min_error, torch.full_like(min_error, float("nan"))).flatten(1)
            threshold = torch.nanquantile(kept_errors.float(), 1.0 - mask_moving, dim=1)  # NaN if none kept
            mask = mask & (min_error <= threshold.to(min_error.dtype).view(-1, 1, 1, 1))
        kept = mask.to(min_error.dtype)
        loss = (min_error * kept).sum() / kept.sum().clamp(min=1.0)
    out = {
        "warped": rearrange(warped, "(b s) c h w -> b s c h w", s=num_src),
        "errors": errors,
        "min_error": min_error,
        "mask": mask,
        "automask": aux["automask"],
        "valid": rearrange(valid, "(b s) 1 h w -> b s h w", s=num_src),
    }
    if identity_errors is not None:
        out["identity_errors"] = identity_errors
    return loss, out


class DepthMotionTask(PretextTask):
    """Self-supervised depth and ego-motion by view synthesis (monodepth2 class).

    The shared encoder is the depth encoder: a per-frame encoder (temporal stride 1 at every stage, e.g.
    :class:`~stssl.encoders.frame2d.FrameEncoder2D`) whose pyramid feeds a :class:`DisparityDecoder`. An encoder
    with ``spec.min_frames == 1`` sees the target frame alone; one that needs more frames sees the whole clip and
    the target's time step of its pyramid is decoded. The pose network (with its own encoder) is part of the task.

    Args:
        offsets: source frames, as offsets relative to the target (monodepth2: ``(-1, 1)``).
        frame_offsets: the offsets of the batch's ``T`` axis, in order; must equal the data module's ``offsets``
            (e.g. ``[-1, 0, 1]``), contain 0 (the target) and every entry of ``offsets``.
        scales: decoder scales ``s`` (``1/2^s`` of the input) that enter the loss; must contain 0.
        min_depth: nearest depth the network can predict, in scene units (metres; mm for SCARED-style data).
        max_depth: farthest depth, same unit.
        ssim_window: ``"box3"`` (monodepth2) or ``"gaussian"``.
        alpha: SSIM weight of the photometric error.
        smoothness_weight: weight of the edge-aware smoothness at scale 0; scale ``s`` uses ``/ 2**s``.
        automask: monodepth2's auto-masking of pixels that look static.
        pose_net: pose network, one of :data:`POSE_NETS` (``"posenet_tiny"``, ``"posenet_18"``).
        decoder_channels: disparity decoder widths: a preset name from :data:`DECODER_PRESETS` (``"monodepth2"``,
            ``"tiny"``) or one width per encoder stage.
        learn_intrinsics: predict ``K`` per sample from the pose features (see :func:`intrinsics_from_params`)
            instead of reading ``batch["K"]``; initialised to ``fx = fy = 0.7 W`` and the image centre.
        brightness: predict an affine ``a * I + b`` per source frame from the pose features (``a = exp(.)``,
            initialised to the identity ``a = 1, b = 0``) and apply it to the source before comparison.
        mask_moving: ignore the pixels whose minimum reprojection error is in the top ``mask_moving`` quantile of
            each sample (0 = off). A heuristic for moving objects, see :func:`view_synthesis_loss`.
        normalize: ``(mean, std)`` applied to images in ``[0, 1]`` before the depth encoder and the pose network
            (monodepth2: ``(0.45, 0.225)``), or ``None``.
        translation_scale: factor on the pose network's translations (1 = monodepth2). An untrained pose net
            predicts tiny translations (``posenet_tiny``: about 0.002; ``posenet_18``: 0.001), an untrained depth
            net about ``2 * min_depth``; when their ratio is far below the true motion/depth ratio of the video
            (about 0.05 for driving at 10 fps), the depth first shrinks to ``min_depth`` and its sigmoid saturates
            (logs: ``depth`` at ``min_depth``, ``smooth`` near 0). Raising this (e.g. 5 for short CPU runs) starts
            from a balanced ratio. It rescales the pose network's output unit, nothing else.
        mirror_pose: make the pose estimate mirror-equivariant by construction: average the pose network's
            output for the pair with the mirrored output for the horizontally flipped pair (a flipped video is the
            video of the mirrored world ``X -> -X``, whose camera motion is ``S T S``, ``S = diag(-1, 1, 1)``:
            ``tx``, ``ry`` and ``rz`` change sign). An input-independent pose then cannot move sideways or yaw,
            which removes the sideways-motion solution short runs can fall into. Costs a second pose-net pass. (Exact
            for any intrinsics: the flipped video is the mirrored world seen by a camera with ``cx' = W - 1 - cx``,
            which still moves by ``S T S``.)
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Batch: ``video`` ``(B, 3, T, H, W)`` in ``[0, 1]`` with ``T == len(frame_offsets)``; ``K`` ``(B, 3, 3)`` at
    ``H x W`` unless ``learn_intrinsics``; optional ground truth ``depth`` ``(B, 1, T, H, W)`` or ``(B, T, H, W)``
    (0 = invalid), which adds ``abs_rel``, ``a1`` and ``rmse`` of the target frame (median scaled) to the logs.

    Logs: ``loss``, ``photo`` and ``smooth`` (means over scales), ``automask`` (fraction of target pixels in the
    loss at scale 0), ``depth`` (mean predicted depth), ``trans`` (mean predicted translation norm), and
    ``fx_ratio`` (learned over true ``fx``) when ``learn_intrinsics`` and the batch has ``K``.

    Example:
        >>> from stssl.encoders.frame2d import resnet18_2d_tiny
        >>> encoder, task = resnet18_2d_tiny(), DepthMotionTask(decoder_channels="tiny", scales=(0, 1))
        >>> task.build(encoder.spec)
        >>> K = torch.tensor([[40.0, 0, 47.5], [0, 40.0, 15.5], [0, 0, 1]]).expand(2, 3, 3)
        >>> out = task({"video": torch.rand(2, 3, 3, 32, 96), "K": K}, encoder)
        >>> sorted(out.logs)
        ['automask', 'depth', 'loss', 'photo', 'smooth', 'trans']
        >>> tuple(task.predict_depth(encoder, torch.rand(2, 3, 32, 96)).shape)
        (2, 1, 32, 96)
    """

    default_name = "depth_motion"

    def __init__(
        self,
        offsets: Sequence[int] = (-1, 1),
        frame_offsets: Sequence[int] = (-1, 0, 1),
        scales: Sequence[int] = (0, 1, 2, 3),
        min_depth: float = 0.1,
        max_depth: float = 100.0,
        ssim_window: str = "box3",
        alpha: float = 0.85,
        smoothness_weight: float = 1e-3,
        automask: bool = True,
        pose_net: str = "posenet_tiny",
        decoder_channels: str | Sequence[int] = "monodepth2",
        learn_intrinsics: bool = False,
        brightness: bool = False,
        mask_moving: float = 0.0,
        normalize: tuple[float, float] | None = (0.45, 0.225),
        translation_scale: float = 1.0,
        mirror_pose: bool = False,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        cls = type(self).__name__
        self.offsets = tuple(int(o) for o in offsets)
        self.frame_offsets = tuple(int(o) for o in frame_offsets)
        if not self.offsets or 0 in self.offsets or len(set(self.offsets)) != len(self.offsets):
            raise ValueError(f"{cls}: offsets must be distinct non-zero source offsets, got {list(self.offsets)}")
        if len(set(self.frame_offsets)) != len(self.frame_offsets) or 0 not in self.frame_offsets:
            raise ValueError(
                f"{cls}: frame_offsets must be distinct and contain 0 (the target), got {list(self.frame_offsets)}; "
                "set it to the data module's offsets, e.g. [-1, 0, 1]"
            )
        missing = [o for o in self.offsets if o not in self.frame_offsets]
        if missing:
            raise ValueError(
                f"{cls}: source offsets {missing} are not in frame_offsets={list(self.frame_offsets)}; the data "
                "module's offsets (and frame_offsets) must include every source offset"
            )
        self.target_index = self.frame_offsets.index(0)
        self.source_indices = tuple(self.frame_offsets.index(o) for o in self.offsets)
        self.scales = tuple(sorted({int(s) for s in scales}))
        if 0 not in self.scales or any(s < 0 for s in self.scales):
            raise ValueError(f"{cls}: scales must be >= 0 and contain 0 (full resolution), got {list(scales)}")
        if not 0 < min_depth < max_depth:
            raise ValueError(f"{cls}: need 0 < min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        if ssim_window not in SSIM_WINDOWS:
            raise ValueError(f"{cls}: ssim_window must be one of {SSIM_WINDOWS}, got {ssim_window!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{cls}: alpha must be in [0, 1], got {alpha}")
        if smoothness_weight < 0:
            raise ValueError(f"{cls}: smoothness_weight must be >= 0, got {smoothness_weight}")
        if not 0.0 <= mask_moving < 1.0:
            raise ValueError(f"{cls}: mask_moving must be in [0, 1) (0 = off), got {mask_moving}")
        if pose_net not in POSE_NETS:
            raise ValueError(f"{cls}: unknown pose_net {pose_net!r}; choose from {sorted(POSE_NETS)}")
        if isinstance(decoder_channels, str):
            if decoder_channels not in DECODER_PRESETS:
                raise ValueError(
                    f"{cls}: unknown decoder_channels preset {decoder_channels!r}; choose from "
                    f"{sorted(DECODER_PRESETS)} or give one width per encoder stage"
                )
            self.decoder_channels = DECODER_PRESETS[decoder_channels]
        else:
            self.decoder_channels = tuple(int(c) for c in decoder_channels)
        if normalize is not None and (len(normalize) != 2 or float(normalize[1]) <= 0):
            raise ValueError(f"{cls}: normalize must be (mean, std) with std > 0, or None; got {normalize}")
        self.normalize = None if normalize is None else (float(normalize[0]), float(normalize[1]))
        self.ssim_window, self.alpha = ssim_window, float(alpha)
        self.smoothness_weight, self.automask = float(smoothness_weight), bool(automask)
        self.learn_intrinsics, self.brightness = bool(learn_intrinsics), bool(brightness)
        self.mask_moving = float(mask_moving)
        if translation_scale <= 0:
            raise ValueError(f"{cls}: translation_scale must be > 0, got {translation_scale}")
        self.translation_scale = float(translation_scale)
        self.mirror_pose = bool(mirror_pose)
        self.pose_net_name = pose_net
        self.pose_net = POSE_NETS[pose_net]()
        pose_dim = self.pose_net.encoder.spec.dim
        self.intrinsics_head = nn.Linear(pose_dim, 4) if self.learn_intrinsics else None
        self.brightness_head = nn.Linear(pose_dim, 2) if self.brightness else None
        for head in (self.intrinsics_head, self.brightness_head):
            if head is not None:  # start at the prior: image-centred K, identity brightness
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)
        self.decoder: DisparityDecoder | None = None
        self._frames_needed = 1

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=len(self.frame_offsets), intrinsics=not self.learn_intrinsics)

    def build(self, spec: EncoderSpec) -> None:
        bad = [i for i, stride in enumerate(spec.strides) if stride[0] != 1]
        if bad:
            raise ValueError(
                f"{type(self).__name__}: the depth encoder must keep every frame (temporal stride 1 at every "
                f"stage), got strides {spec.strides} (stages {bad} downsample time); use a per-frame encoder "
                "such as stssl.encoders.FrameEncoder2D"
            )
        self.decoder = DisparityDecoder.from_spec(spec, num_ch_dec=self.decoder_channels, scales=self.scales)
        self._frames_needed = spec.min_frames

    # ----------------------------------------------------------------------------------------- networks
    def _norm(self, images: torch.Tensor) -> torch.Tensor:
        if self.normalize is None:
            return images
        mean, std = self.normalize
        return (images - mean) / std

    def _disparities(self, encoder: Encoder, video: torch.Tensor, index: int) -> dict[int, torch.Tensor]:
        """Sigmoid disparities ``{s: (B, 1, H_s, W_s)}`` of frame ``index`` of ``video`` ``(B, 3, T, H, W)``."""
        if self.decoder is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        if self._frames_needed <= 1:
            video, index = video[:, :, index : index + 1], 0
        pyramid = encoder(self._norm(video)).pyramid
        stages, _ = frames_from_pyramid([p[:, :, index : index + 1] for p in pyramid])
        return self.decoder(stages, image_size=(video.shape[-2], video.shape[-1]))

    def _pose(self, image_a: torch.Tensor, image_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``b_from_a`` pose vectors ``(N, 6)`` and the pose encoder's pooled features ``(N, D)``.

        ``self.pose_net`` on the normalised images with the translation times ``translation_scale``, and the
        features kept for the intrinsics and brightness heads; with ``mirror_pose`` the mean of the pair's vector
        and the mirrored vector of the flipped pair (the heads keep the unflipped pair's features).
        """
        vec, features = self.pose_net.forward_with_features(self._norm(image_a), self._norm(image_b))
        if self.mirror_pose:
            flipped = self.pose_net(self._norm(image_a).flip(-1), self._norm(image_b).flip(-1))
            vec = 0.5 * (vec + flipped * MIRROR_POSE_SIGNS.to(vec))
        if self.translation_scale != 1.0:
            vec = torch.cat([vec[:, :3], self.translation_scale * vec[:, 3:]], dim=1)
        return vec, features

    def _source_brightness(self, features: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
        """``(N, 2)`` affine ``(a, b)`` with ``a * I_src + b ~ I_tgt`` for pose features of (earlier, later) pairs.

        The head sees the pair in temporal order, so it predicts the earlier-to-later change
        ``I_later ~ g * I_earlier + o`` (``g = exp(.)``); a past source (``before``) takes ``(g, o)``, a future one
        the inverse ``(1 / g, -o / g)``, as the poses do.
        """
        assert self.brightness_head is not None
        log_gain, offset = self.brightness_head(features).unbind(dim=-1)
        sign = torch.where(before, 1.0, -1.0).to(log_gain.dtype)
        gain = (sign * log_gain).exp()
        return torch.stack([gain, torch.where(before, offset, -offset * gain)], dim=-1)

    def predict_depth(self, encoder: Encoder, image: torch.Tensor) -> torch.Tensor:
        """Depth of single images at scale 0.

        Args:
            encoder: the depth encoder this task was trained with.
            image: ``(B, 3, H, W)`` float in ``[0, 1]``.

        Returns:
            ``(B, 1, H, W)`` depth in scene units (metres), in ``[min_depth, max_depth]``.
        """
        check_shape(image, "B 3 H W", name="image")
        disp = self._disparities(encoder, image[:, :, None], 0)[0]
        return disp_to_depth(disp, self.min_depth, self.max_depth)[1]

    def predict_pose(self, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        """Relative pose ``b_from_a`` of two frames (maps points in ``a``'s camera to ``b``'s; metres).

        Args:
            image_a: ``(B, 3, H, W)`` float in ``[0, 1]``.
            image_b: ``(B, 3, H, W)``.

        Returns:
            ``(B, 4, 4)`` rigid transforms.
        """
        sizes = check_shape(image_a, "B 3 H W", name="image_a")
        check_shape(image_b, "B 3 H W", sizes, name="image_b")
        return pose_vec_to_matrix(self._pose(image_a, image_b)[0])

    def predict_intrinsics(self, image: torch.Tensor, image_b: torch.Tensor | None = None) -> torch.Tensor:
        """Learned intrinsics (``learn_intrinsics=True`` only), from the pose features of a frame pair.

        Training averages the estimates of the (target, source) pairs; pass a neighbouring frame as ``image_b``
        for the same input distribution (by default the pair ``(image, image)``).

        Args:
            image: ``(B, 3, H, W)`` float in ``[0, 1]``.
            image_b: ``(B, 3, H, W)`` a neighbouring frame, or ``None``.

        Returns:
            ``(B, 3, 3)`` intrinsics in pixels at ``H x W``.
        """
        if self.intrinsics_head is None:
            raise RuntimeError(f"{type(self).__name__}: predict_intrinsics needs learn_intrinsics=True")
        sizes = check_shape(image, "B 3 H W", name="image")
        image_b = image if image_b is None else image_b
        check_shape(image_b, "B 3 H W", sizes, name="image_b")
        features = self._pose(image, image_b)[1]
        return intrinsics_from_params(self.intrinsics_head(features), sizes["H"], sizes["W"])

    # ----------------------------------------------------------------------------------------- objective
    def _gt_depth(self, batch: dict, sizes: dict[str, int]) -> torch.Tensor | None:
        """The target frame's ground-truth depth ``(B, H', W')``, or ``None`` when the batch has none."""
        if "depth" not in batch:
            return None
        gt = batch["depth"]
        if not isinstance(gt, torch.Tensor) or gt.dim() not in (4, 5):
            shape = tuple(gt.shape) if isinstance(gt, torch.Tensor) else type(gt).__name__
            raise ValueError(f"batch['depth']: expected shape (B, 1, T, H, W) or (B, T, H, W), got {shape}")
        if gt.dim() == 5:
            check_shape(gt, "B 1 T * *", sizes, name="batch['depth']")
            return gt[:, 0, self.target_index]
        check_shape(gt, "B T * *", sizes, name="batch['depth']")
        return gt[:, self.target_index]

    def _depth_logs(self, depth: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
        """``abs_rel``, ``a1``, ``rmse`` (median scaled) over the samples with valid ground truth."""
        valid = ((gt > self.min_depth) & (gt < self.max_depth)).flatten(1).any(dim=1)
        if not bool(valid.any()):
            return {}
        metrics = depth_metrics(
            depth[valid, 0], gt[valid], min_depth=self.min_depth, max_depth=self.max_depth,
            median_scaling=True, resize_pred="inverse_depth",
        )
        return {k: torch.tensor(metrics[k], device=depth.device) for k in ("abs_rel", "a1", "rmse")}

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        """Depth of the target frame and poses of the sources, trained by view synthesis.

        ``generator`` is accepted for the task contract and unused: the objective draws no random numbers.
        """
        video = batch["video"]
        sizes = check_shape(video, "B 3 T H W", name="batch['video']")
        if sizes["T"] != len(self.frame_offsets):
            raise ValueError(
                f"batch['video']: has T={sizes['T']} frames (shape {tuple(video.shape)}) but frame_offsets="
                f"{list(self.frame_offsets)} expects {len(self.frame_offsets)}; set the data module's offsets to "
                f"{list(self.frame_offsets)} (or frame_offsets to match them)"
            )
        height, width = sizes["H"], sizes["W"]
        image_tgt = video[:, :, self.target_index]
        images_src = torch.stack([video[:, :, i] for i in self.source_indices], dim=1)  # (B, S, 3, H, W)
        num_src = images_src.shape[1]

        # Pose of every source in one batched call, frames fed in temporal order as monodepth2 does: the pose net
        # always sees (earlier, later) and predicts later_from_earlier; a source before the target takes the
        # inverse. Fed (tgt, src) for every source instead, a net that has learnt only "the camera moves forward"
        # (a constant) is wrong for one side, and the per-pixel minimum lets it ignore that side.
        flat_src = rearrange(images_src, "b s c h w -> (b s) c h w")
        flat_tgt = image_tgt.repeat_interleave(num_src, dim=0)
        before = torch.tensor([o < 0 for o in self.offsets], device=video.device).repeat(sizes["B"])  # (B*S,)
        pick = before.view(-1, 1, 1, 1)
        vec, features = self._pose(torch.where(pick, flat_src, flat_tgt), torch.where(pick, flat_tgt, flat_src))
        later_from_earlier = pose_vec_to_matrix(vec)
        src_from_tgt = torch.where(before.view(-1, 1, 1), invert_pose(later_from_earlier), later_from_earlier)
        src_from_tgt = rearrange(src_from_tgt, "(b s) i j -> b s i j", s=num_src)
        brightness = None
        if self.brightness_head is not None:
            brightness = rearrange(self._source_brightness(features, before), "(b s) k -> b s k", s=num_src)
        if self.intrinsics_head is not None:
            params = rearrange(self.intrinsics_head(features), "(b s) k -> b s k", s=num_src).mean(dim=1)
            K = intrinsics_from_params(params, height, width)
        else:
            if "K" not in batch:
                raise ValueError(
                    f"{type(self).__name__}: batch has no 'K' intrinsics (B, 3, 3); use sources with calibration "
                    "or set learn_intrinsics=True"
                )
            K = batch["K"].to(video.dtype)
            check_shape(K, "B 3 3", sizes, name="batch['K']")

        disps = self._disparities(encoder, video, self.target_index)
        photo_terms, smooth_terms = [], []
        aux0: dict[str, torch.Tensor] = {}
        depth0 = image_tgt.new_zeros(())
        identity_errors = None  # the unwarped sources' errors: the same at every scale
        for s in self.scales:
            disp = disps[s]
            disp_full = disp if s == 0 else F.interpolate(disp, size=(height, width), mode="bilinear",
                                                          align_corners=False)
            depth = disp_to_depth(disp_full, self.min_depth, self.max_depth)[1]
            photo, aux = view_synthesis_loss(
                image_tgt, images_src, depth, src_from_tgt, K, alpha=self.alpha, ssim_window=self.ssim_window,
                automask=self.automask, mask_moving=self.mask_moving, brightness=brightness,
                identity_errors=identity_errors,
            )
            identity_errors = aux.get("identity_errors")
            image_s = image_tgt if s == 0 else F.interpolate(
                image_tgt, size=disp.shape[-2:], mode="bilinear", align_corners=False, antialias=True
            )
            photo_terms.append(photo)
            smooth_terms.append(smoothness_loss(disp, image_s) / 2**s)
            if s == 0:
                aux0, depth0 = aux, depth
        photo_loss = torch.stack(photo_terms).mean()
        smooth_loss = torch.stack(smooth_terms).mean()
        loss = photo_loss + self.smoothness_weight * smooth_loss

        logs = {
            "loss": loss.detach(),
            "photo": photo_loss.detach(),
            "smooth": smooth_loss.detach(),
            "automask": aux0["mask"].float().mean().detach(),
            "depth": depth0.detach().mean(),
            "trans": src_from_tgt[..., :3, 3].detach().norm(dim=-1).mean(),
        }
        if self.intrinsics_head is not None and "K" in batch:
            logs["fx_ratio"] = (K[:, 0, 0] / batch["K"][:, 0, 0].to(K.dtype)).detach().mean()
        gt = self._gt_depth(batch, sizes)
        if gt is not None:
            with torch.no_grad():
                logs.update(self._depth_logs(depth0.detach(), gt.to(depth0.dtype)))
        return TaskOutput(loss=loss, logs=logs)
