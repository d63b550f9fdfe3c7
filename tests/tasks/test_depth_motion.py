"""DepthMotionTask: the view-synthesis objective against ground truth, gradients, options, errors, learning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stssl.encoders.frame2d import resnet18_2d_tiny
from stssl.encoders.resnet3d import r3d_tiny
from stssl.eval.metrics import depth_metrics
from stssl.geometry.camera import scale_intrinsics
from stssl.geometry.pose import pose_vec_to_matrix, relative_pose
from stssl.geometry.warp import warp_frame
from stssl.losses.photometric import photometric_error
from stssl.tasks.base import TaskRequirements
from stssl.tasks.depth_motion import DepthMotionTask, intrinsics_from_params, view_synthesis_loss
from stssl.worlds import render_driving

H, W = 32, 64


def _K(batch: int = 2, height: int = H, width: int = W) -> torch.Tensor:
    K = torch.tensor([[0.58 * width, 0, (width - 1) / 2], [0, 1.92 * height, (height - 1) / 2], [0, 0, 1]])
    return K.expand(batch, 3, 3).clone()


def _batch(seed: int = 0, frames: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.rand(2, 3, frames, H, W, generator=g), "K": _K()}


def _task_and_encoder(**kwargs) -> tuple[DepthMotionTask, torch.nn.Module]:
    """A tiny encoder and task (two scales unless ``scales`` is given, to keep the tests fast)."""
    torch.manual_seed(0)
    encoder = resnet18_2d_tiny()
    task = DepthMotionTask(**{"decoder_channels": "tiny", "scales": (0, 1), **kwargs})
    task.build(encoder.spec)
    return task, encoder


# ----------------------------------------------------------------------------------------------- a small world
@pytest.fixture(scope="module")
def world() -> dict:
    """``render_driving(frames=5, 48x144)`` as tensors: ``video`` ``(3, T, H, W)``, ``depth`` ``(T, H, W)``,
    ``world_from_camera`` ``(T, 4, 4)`` float64, ``K`` ``(3, 3)``, ``semantic`` ``(T, H, W)``."""
    scene = render_driving(frames=5, height=48, width=144, seed=0)
    return {
        "video": scene.frames.permute(3, 0, 1, 2).float() / 255,
        "depth": torch.as_tensor(scene.depth).float(),
        "world_from_camera": torch.as_tensor(scene.world_from_camera, dtype=torch.float64),
        "K": torch.as_tensor(scene.K).float(),
        "semantic": torch.as_tensor(scene.semantic),
        "classes": scene.classes,
    }


def _gt_inputs(world: dict, tgt: int = 1, srcs: tuple[int, ...] = (0, 2)) -> tuple[torch.Tensor, ...]:
    video, poses = world["video"], world["world_from_camera"]
    image_tgt = video[:, tgt][None]
    images_src = torch.stack([video[:, s] for s in srcs])[None]
    depth = world["depth"][tgt].clone()
    depth[depth == 0] = 1000.0  # sky: far away, so only rotation moves it
    src_from_tgt = torch.stack([relative_pose(poses[s : s + 1], poses[tgt : tgt + 1])[0] for s in srcs])
    return image_tgt, images_src, depth[None, None], src_from_tgt[None].float(), world["K"][None]


@pytest.mark.slow
def test_ground_truth_depth_and_pose_synthesise_the_target(world: dict) -> None:
    image_tgt, images_src, depth, src_from_tgt, K = _gt_inputs(world)
    # The camera drives forward about 1 m per frame: the geometry the task relies on (src_from_tgt).
    assert src_from_tgt[0, 0, 2, 3] > 0.5 and src_from_tgt[0, 1, 2, 3] < -0.5
    loss, aux = view_synthesis_loss(image_tgt, images_src, depth, src_from_tgt, K)
    gt_error = aux["min_error"]
    identity_error = aux["identity_errors"].min(dim=1, keepdim=True).values
    # Far below the error of not warping at all: the median pixel is reproduced almost exactly.
    assert gt_error.median() < 0.2 * identity_error.median(), (gt_error.median(), identity_error.median())
    assert gt_error.median() < 0.01
    assert gt_error.mean() < 0.5 * identity_error.mean()
    # Static surfaces (buildings, road) are reproduced far better than by the identity; moving cars break it.
    sem = world["semantic"][1]
    for cls in ("building", "road"):
        m = sem == world["classes"].index(cls)
        assert gt_error[0, 0][m].mean() < 0.7 * identity_error[0, 0][m].mean(), cls
    # Any wrong geometry does worse than the truth (the loss can tell them apart).
    no_mask = {"automask": False}
    gt_loss = view_synthesis_loss(image_tgt, images_src, depth, src_from_tgt, K, **no_mask)[0]
    wrong = {
        "depth x2": (depth * 2, src_from_tgt),
        "depth x0.5": (depth * 0.5, src_from_tgt),
        "constant depth": (torch.full_like(depth, 10.0), src_from_tgt),
        "identity pose": (depth, torch.eye(4).expand_as(src_from_tgt)),
        "inverted pose": (depth, torch.linalg.inv(src_from_tgt)),
    }
    for name, (d, p) in wrong.items():
        other = view_synthesis_loss(image_tgt, images_src, d, p, K, **no_mask)[0]
        assert other > 1.3 * gt_loss, (name, other.item(), gt_loss.item())


@pytest.mark.slow
def test_view_synthesis_equals_a_naive_warp_loop_on_the_world(world: dict) -> None:
    """On rendered ground truth, the batched all-sources warp equals warping each source on its own."""
    image_tgt, images_src, depth, src_from_tgt, K = _gt_inputs(world)
    naive = []
    for s in range(2):
        warped, _ = warp_frame(images_src[:, s], depth, src_from_tgt[:, s], K)
        naive.append(photometric_error(warped, image_tgt))
    naive_min = torch.cat(naive, dim=1).min(dim=1, keepdim=True).values
    _, aux = view_synthesis_loss(image_tgt, images_src, depth, src_from_tgt, K, automask=False)
    torch.testing.assert_close(aux["min_error"], naive_min)


# ----------------------------------------------------------------------------------------------- pure function
def test_view_synthesis_loss_reference_loop_and_automask() -> None:
    g = torch.Generator().manual_seed(0)
    image_tgt, images_src = torch.rand(2, 3, 16, 24, generator=g), torch.rand(2, 2, 3, 16, 24, generator=g)
    depth = torch.rand(2, 1, 16, 24, generator=g) * 5 + 1
    vec = torch.randn(4, 6, generator=g) * 0.05
    src_from_tgt = pose_vec_to_matrix(vec).view(2, 2, 4, 4)
    K = _K(2, 16, 24)
    loss, aux = view_synthesis_loss(image_tgt, images_src, depth, src_from_tgt, K)
    # naive reference, sample by sample and source by source
    for b in range(2):
        errs, ids = [], []
        for s in range(2):
            warped, _ = warp_frame(images_src[b : b + 1, s], depth[b : b + 1], src_from_tgt[b : b + 1, s], K[b : b + 1])
            errs.append(photometric_error(warped, image_tgt[b : b + 1]))
            ids.append(photometric_error(images_src[b : b + 1, s], image_tgt[b : b + 1]))
        err, ident = torch.cat(errs, 1).min(1).values, torch.cat(ids, 1).min(1).values
        torch.testing.assert_close(aux["min_error"][b], err)
        torch.testing.assert_close(aux["mask"][b, 0], err[0] <= ident[0])
    kept = aux["mask"].float()
    torch.testing.assert_close(loss, (aux["min_error"] * kept).sum() / kept.sum())


def test_mask_moving_drops_the_top_quantile() -> None:
    g = torch.Generator().manual_seed(1)
    image_tgt, images_src = torch.rand(2, 3, 16, 24, generator=g), torch.rand(2, 1, 3, 16, 24, generator=g)
    args = (image_tgt, images_src, torch.full((2, 1, 16, 24), 3.0), torch.eye(4).expand(2, 1, 4, 4), _K(2, 16, 24))
    loss0, aux0 = view_synthesis_loss(*args, automask=False)
    loss, aux = view_synthesis_loss(*args, automask=False, mask_moving=0.25)
    dropped = 1 - aux["mask"].float().flatten(1).mean(1)
    assert torch.allclose(dropped, torch.full((2,), 0.25), atol=0.01), dropped
    assert loss < loss0
    for b in range(2):  # per sample: every dropped pixel has a larger error than every kept one
        err, mask = aux["min_error"][b], aux["mask"][b]
        assert err[mask].max() <= err[~mask].min()
    with pytest.raises(ValueError, match="mask_moving"):
        view_synthesis_loss(*args, mask_moving=1.0)


def test_brightness_affine_explains_a_global_light_change() -> None:
    g = torch.Generator().manual_seed(2)
    image_tgt = torch.rand(2, 3, 16, 24, generator=g) * 0.5 + 0.2
    images_src = (1.5 * image_tgt - 0.1)[:, None]  # the same view, brighter
    args = (image_tgt, images_src, torch.full((2, 1, 16, 24), 3.0), torch.eye(4).expand(2, 1, 4, 4), _K(2, 16, 24))
    plain = view_synthesis_loss(*args, automask=False)[0]
    corrected = view_synthesis_loss(*args, automask=False, brightness=torch.tensor([1 / 1.5, 0.1 / 1.5]).expand(2, 1, 2))[0]
    assert plain > 0.05 and corrected < 1e-5, (plain, corrected)


def test_brightness_head_predicts_the_change_in_time_for_sources_on_both_sides() -> None:
    """A light brightening by g per frame: one head output (log g, o) maps t-1 to t and, inverted, t+1 to t."""
    task, _ = _task_and_encoder(brightness=True)
    assert task.brightness_head is not None
    with torch.no_grad():
        task.brightness_head.weight.zero_()
        task.brightness_head.bias.copy_(torch.tensor([math.log(1.25), 0.05]))  # I_later = 1.25 I_earlier + 0.05
    before = torch.tensor([True, False])  # sources t-1 and t+1
    affine = task._source_brightness(torch.zeros(2, task.pose_net.encoder.spec.dim), before)
    image_tgt = torch.rand(1, 3, 4, 4) * 0.5 + 0.2
    image_prev, image_next = (image_tgt - 0.05) / 1.25, 1.25 * image_tgt + 0.05
    for (gain, offset), image_src in zip(affine, (image_prev, image_next), strict=True):
        torch.testing.assert_close(gain * image_src + offset, image_tgt)


def test_intrinsics_from_params_is_centred_and_positive() -> None:
    K = intrinsics_from_params(torch.zeros(3, 4), 32, 96)
    torch.testing.assert_close(K[:, :2, 2], torch.tensor([47.5, 15.5]).expand(3, 2))
    torch.testing.assert_close(K[:, 0, 0], torch.full((3,), 0.7 * 96))
    K = intrinsics_from_params(torch.tensor([[-50.0, -50.0, 50.0, -50.0]]), 32, 96)
    assert K[0, 0, 0] > 0 and K[0, 1, 1] > 0 and -0.5 <= K[0, 0, 2] <= 95.5 and -0.5 <= K[0, 1, 2] <= 31.5


# ----------------------------------------------------------------------------------------------- the task
def test_requires_follows_frame_offsets_and_intrinsics() -> None:
    assert DepthMotionTask().requires == TaskRequirements(min_frames=3, intrinsics=True)
    task = DepthMotionTask(offsets=(-2, 1), frame_offsets=(-2, -1, 0, 1), learn_intrinsics=True)
    assert task.requires == TaskRequirements(min_frames=4, intrinsics=False)
    assert task.target_index == 2 and task.source_indices == (0, 3)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"learn_intrinsics": True, "brightness": True, "mask_moving": 0.1, "ssim_window": "gaussian",
          "mirror_pose": True}],
    ids=["default", "all_options"],
)
def test_finite_loss_and_every_parameter_gets_a_gradient(kwargs: dict) -> None:
    task, encoder = _task_and_encoder(scales=(0, 1, 2, 3), **kwargs)
    batch = _batch()
    if kwargs.get("learn_intrinsics"):
        del batch["K"]
    out = task(batch, encoder)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert all(not v.requires_grad and torch.isfinite(v) for v in out.logs.values())
    assert {"loss", "photo", "smooth", "automask", "depth", "trans"} <= set(out.logs)
    out.loss.backward()
    for module in (encoder, task):
        missing = [n for n, p in module.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, missing
        assert any(p.grad.abs().sum() > 0 for p in module.parameters())


def test_sources_follow_the_data_offsets_order() -> None:
    """Offsets select frames by their position in frame_offsets: reordering the clip and the offsets together
    gives the same loss; a mismatching order does not."""
    task, encoder = _task_and_encoder()
    task.eval(), encoder.eval()
    batch = _batch(3)
    reordered = {"video": batch["video"][:, :, [1, 2, 0]], "K": batch["K"]}  # offsets [0, 1, -1]
    other, _ = _task_and_encoder(frame_offsets=(0, 1, -1))
    other.load_state_dict(task.state_dict())
    other.eval()
    with torch.no_grad():
        reference = task(batch, encoder).loss
        torch.testing.assert_close(other(reordered, encoder).loss, reference)
        assert not torch.allclose(task(reordered, encoder).loss, reference)


def test_pose_features_path_equals_the_pose_network() -> None:
    task, _ = _task_and_encoder(translation_scale=3.0)
    task.eval()
    a, b = torch.rand(2, 3, H, W), torch.rand(2, 3, H, W)
    with torch.no_grad():
        vec, _ = task._pose(a, b)
        reference = task.pose_net((a - 0.45) / 0.225, (b - 0.45) / 0.225)
        torch.testing.assert_close(vec, torch.cat([reference[:, :3], 3.0 * reference[:, 3:]], dim=1))
        pose = task.predict_pose(a, b)
    torch.testing.assert_close(pose, pose_vec_to_matrix(vec))
    assert pose.shape == (2, 4, 4)


@pytest.mark.parametrize("mirror", [False, True])
def test_mirror_pose_is_mirror_equivariant(mirror: bool) -> None:
    """With mirror_pose, the flipped pair's pose is the mirrored pose (S T S, S = diag(-1, 1, 1)) exactly."""
    task, _ = _task_and_encoder(mirror_pose=mirror)
    task.eval()
    a, b = torch.rand(2, 3, H, W), torch.rand(2, 3, H, W)
    S = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    with torch.no_grad():
        pose, pose_flipped = task.predict_pose(a, b), task.predict_pose(a.flip(-1), b.flip(-1))
    equivariant = torch.allclose(pose_flipped, S @ pose @ S, atol=1e-6)
    assert equivariant == mirror  # a plain pose network is not equivariant
    if mirror:  # so an input-independent (mirror-symmetric) pair cannot move sideways or yaw
        c = torch.rand(1, 3, H, W)
        c = 0.5 * (c + c.flip(-1))
        with torch.no_grad():
            vec, _ = task._pose(c, c)
        assert vec[0, [1, 2, 3]].abs().max() < 1e-6


def test_predict_depth_matches_the_training_path_and_range() -> None:
    task, encoder = _task_and_encoder(min_depth=0.5, max_depth=50.0)
    task.eval(), encoder.eval()
    batch = _batch(4)
    with torch.no_grad():
        depth = task.predict_depth(encoder, batch["video"][:, :, 1])
        logs = task(batch, encoder).logs
    assert depth.shape == (2, 1, H, W)
    assert depth.min() >= 0.5 and depth.max() <= 50.0
    torch.testing.assert_close(depth.mean(), logs["depth"])


def test_learned_intrinsics_start_at_the_prior_and_log_the_focal_ratio() -> None:
    task, encoder = _task_and_encoder(learn_intrinsics=True)
    image = torch.rand(2, 3, H, W)
    K = task.predict_intrinsics(image, torch.rand(2, 3, H, W))
    torch.testing.assert_close(K, intrinsics_from_params(torch.zeros(2, 4), H, W))
    logs = task(_batch(), encoder).logs  # K in the batch is not used for warping, only compared
    torch.testing.assert_close(logs["fx_ratio"], torch.tensor(0.7 * W / (0.58 * W)))
    with pytest.raises(RuntimeError, match="learn_intrinsics"):
        DepthMotionTask().predict_intrinsics(image)


@pytest.mark.parametrize("layout", ["B1THW", "BTHW"])
def test_ground_truth_depth_logs_match_depth_metrics(layout: str) -> None:
    task, encoder = _task_and_encoder()
    task.eval(), encoder.eval()
    batch = _batch(5)
    gt = torch.rand(2, 3, H, W) * 40 + 2
    gt[:, :, :4] = 0  # invalid rows
    batch["depth"] = gt[:, None] if layout == "B1THW" else gt
    with torch.no_grad():
        logs = task(batch, encoder).logs
        pred = task.predict_depth(encoder, batch["video"][:, :, 1])
    expected = depth_metrics(pred[:, 0], gt[:, 1], min_depth=0.1, max_depth=100.0)
    for key in ("abs_rel", "a1", "rmse"):
        assert math.isclose(logs[key].item(), expected[key], rel_tol=1e-5), key


# ----------------------------------------------------------------------------------------------- errors
def test_wrong_number_of_frames_is_a_clear_error() -> None:
    task, encoder = _task_and_encoder()
    with pytest.raises(ValueError, match=r"batch\['video'\].*T=4.*frame_offsets=\[-1, 0, 1\]"):
        task(_batch(frames=4), encoder)


def test_missing_intrinsics_is_a_clear_error() -> None:
    task, encoder = _task_and_encoder()
    batch = _batch()
    del batch["K"]
    with pytest.raises(ValueError, match="no 'K'.*learn_intrinsics"):
        task(batch, encoder)
    batch["K"] = torch.eye(3).expand(3, 3, 3)
    with pytest.raises(ValueError, match=r"batch\['K'\]"):
        task(batch, encoder)


def test_encoder_with_temporal_stride_is_rejected() -> None:
    encoder = r3d_tiny()
    assert any(s[0] != 1 for s in encoder.spec.strides)
    with pytest.raises(ValueError, match="temporal stride 1.*FrameEncoder2D"):
        DepthMotionTask().build(encoder.spec)


def test_forward_before_build_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="build"):
        DepthMotionTask(decoder_channels="tiny")(_batch(), resnet18_2d_tiny())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"offsets": (-1, 2)}, r"source offsets \[2\] are not in frame_offsets"),
        ({"offsets": (0, 1)}, "non-zero"),
        ({"frame_offsets": (-1, 1)}, "contain 0"),
        ({"scales": (1, 2)}, "contain 0"),
        ({"min_depth": 10.0, "max_depth": 1.0}, "min_depth"),
        ({"pose_net": "posenet_huge"}, "choose from"),
        ({"decoder_channels": "huge"}, "choose from"),
        ({"ssim_window": "box5"}, "ssim_window"),
        ({"mask_moving": 1.0}, "mask_moving"),
        ({"normalize": (0.45, 0.0)}, "normalize"),
        ({"translation_scale": 0.0}, "translation_scale"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DepthMotionTask(**kwargs)


# ----------------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_training_reduces_photometric_loss_and_depth_error(world: dict) -> None:
    """A few dozen Adam steps on the rendered world's clips (at half resolution) lower the photometric loss and
    the ground-truth abs_rel of the untrained network, and the pose net learns the direction of travel.

    Measured (seed 0, 40 steps): photo 0.111 -> about 0.05, abs_rel 0.77 -> about 0.42 (median scaled, GT < 100 m).
    BatchNorm runs on batch statistics (train mode) throughout, as the depth logs are read during training."""
    video = F.avg_pool3d(world["video"], (1, 2, 2))  # (3, T, 24, 72)
    depth = world["depth"][:, 1::2, 1::2]
    K = scale_intrinsics(world["K"][None], 0.5, 0.5)
    clips = torch.stack([video[:, t - 1 : t + 2] for t in range(1, video.shape[1] - 1)])  # (3, 3, 3, 24, 72)
    gts = torch.stack([depth[t - 1 : t + 2] for t in range(1, video.shape[1] - 1)])
    batch = {"video": clips, "K": K.expand(len(clips), 3, 3), "depth": gts}
    task, encoder = _task_and_encoder(scales=(0, 1), translation_scale=5.0)
    optimizer = torch.optim.Adam([*encoder.parameters(), *task.parameters()], lr=LEARNING_RATE)

    def evaluate() -> dict[str, float]:
        with torch.no_grad():
            return {k: v.item() for k, v in task(batch, encoder).logs.items()}

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # speed only: on a shared 2-core machine one thread is the faster
    try:
        before = evaluate()
        for _ in range(LEARNING_STEPS):
            loss = task({"video": clips, "K": batch["K"]}, encoder).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        after = evaluate()
    finally:
        torch.set_num_threads(threads)
    print(f"before {before}\nafter  {after}")
    assert after["photo"] < 0.85 * before["photo"]
    assert after["abs_rel"] < before["abs_rel"] - 0.05
    with torch.no_grad():  # pairs in temporal order: the camera advances, so later_from_earlier moves points to -z
        tz_first = task._pose(clips[:, :, 0], clips[:, :, 1])[0][:, 5]
        tz_second = task._pose(clips[:, :, 1], clips[:, :, 2])[0][:, 5]
    assert tz_first.mean() < 0 and tz_second.mean() < 0, (tz_first, tz_second)


def test_pose_pairs_are_fed_in_temporal_order_and_inverted_for_past_sources(monkeypatch) -> None:
    """monodepth2's convention: the pose net sees (earlier, later); a source before the target gets the inverse."""
    task, encoder = _task_and_encoder(offsets=(-1, 1), frame_offsets=(-1, 0, 1), scales=(0,))
    video = torch.rand(2, 3, 3, 16, 48)
    K = torch.tensor([[20.0, 0, 23.5], [0, 20.0, 7.5], [0, 0, 1]]).expand(2, 3, 3)
    forward = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, -1.0])  # later_from_earlier: the camera advanced 1 along +z
    calls = []

    def fake_pose(image_a, image_b):
        calls.append((image_a, image_b))
        return forward.expand(len(image_a), 6), torch.zeros(len(image_a), 4)

    seen = {}

    def spy(image_tgt, images_src, depth, src_from_tgt, K, **kwargs):
        seen["src_from_tgt"] = src_from_tgt
        return real(image_tgt, images_src, depth, src_from_tgt, K, **kwargs)

    import stssl.tasks.depth_motion as dm

    real = dm.view_synthesis_loss
    monkeypatch.setattr(task, "_pose", fake_pose)
    monkeypatch.setattr(dm, "view_synthesis_loss", spy)
    task({"video": video, "K": K}, encoder)
    image_a, image_b = calls[0]  # rows (b, s): s = 0 is offset -1, s = 1 is offset +1
    torch.testing.assert_close(image_a[0::2], video[:, :, 0])  # (t-1, t)
    torch.testing.assert_close(image_b[0::2], video[:, :, 1])
    torch.testing.assert_close(image_a[1::2], video[:, :, 1])  # (t, t+1)
    torch.testing.assert_close(image_b[1::2], video[:, :, 2])
    tz = seen["src_from_tgt"][..., 2, 3]  # (B, S): t-1 is behind the target (+1), t+1 ahead (-1)
    torch.testing.assert_close(tz, torch.tensor([[1.0, -1.0], [1.0, -1.0]]))


LEARNING_RATE = 1e-3
LEARNING_STEPS = 40
