from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from stssl.eval.world_tasks import (
    EGO_MOTION_CLASSES,
    clip_yaw_deg,
    ego_motion_dataset,
    ego_motion_labels,
    world_probe_dataset,
)
from stssl.worlds.scene_io import Scene, read_poses, write_scene

ROOT = Path(__file__).resolve().parents[2]
STRAIGHT, LEFT, RIGHT = (EGO_MOTION_CLASSES.index(c) for c in ("straight", "left", "right"))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/eval/conftest.py


def _drive(headings_deg: np.ndarray, step: float = 1.0) -> torch.Tensor:
    """``world_from_camera`` ``(T, 4, 4)`` of a camera driving on the ground plane (world ``y`` down).

    Heading 0 looks along world ``+z``; a heading increasing from 0 to 90 degrees turns towards world ``+x``, which
    is the camera's right at heading 0 (``x = y x z`` with ``y`` down): a right turn.
    """
    poses, pos = [], np.zeros(3)
    for h in np.radians(headings_deg):
        forward = np.array([math.sin(h), 0.0, math.cos(h)])
        down = np.array([0.0, 1.0, 0.0])
        right = np.cross(down, forward)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([right, down, forward], axis=1)
        pose[:3, 3] = pos
        poses.append(pose)
        pos = pos + step * forward
    return torch.tensor(np.stack(poses))


def test_straight_left_right_on_synthetic_drives() -> None:
    straight = _drive(np.zeros(8))
    right = _drive(np.linspace(0, 60, 8))
    left = _drive(np.linspace(0, -60, 8))
    assert ego_motion_labels(straight) == STRAIGHT
    assert ego_motion_labels(right) == RIGHT
    assert ego_motion_labels(left) == LEFT
    assert float(clip_yaw_deg(right)) == pytest.approx(60.0)
    assert float(clip_yaw_deg(left)) == pytest.approx(-60.0)
    # the camera's right really is where a right turn heads: the last position lies at +x in the first camera frame
    first_from_last = torch.linalg.inv(right[0]) @ right[-1]
    assert first_from_last[0, 3] > 0
    # below / above the threshold
    assert ego_motion_labels(_drive(np.linspace(0, 15, 8)), yaw_threshold_deg=20) == STRAIGHT
    assert ego_motion_labels(_drive(np.linspace(0, -25, 8)), yaw_threshold_deg=20) == LEFT


def test_yaw_is_relative_to_the_first_frame_and_batches() -> None:
    right = _drive(np.linspace(30, 80, 6))  # starts already turned: only the change counts
    c, s = math.cos(1.1), math.sin(1.1)
    world_change = torch.tensor([[c, 0, s, 5.0], [0, 1, 0, -2.0], [-s, 0, c, 3.0], [0, 0, 0, 1]], dtype=torch.float64)
    moved = world_change @ right  # another world frame: same relative motion
    assert float(clip_yaw_deg(moved)) == pytest.approx(50.0)
    yaws = clip_yaw_deg(torch.stack([right, _drive(np.linspace(0, -40, 6)), _drive(np.zeros(6))]))
    torch.testing.assert_close(yaws, torch.tensor([50.0, -40.0, 0.0], dtype=torch.float64), atol=1e-9, rtol=0)
    # straight but pitching / rolling (a bump) is still straight
    bump = _drive(np.zeros(6)).clone()
    c, s = math.cos(0.3), math.sin(0.3)
    bump[-1, :3, :3] = bump[-1, :3, :3] @ torch.tensor([[1, 0, 0], [0, c, -s], [0, s, c]], dtype=torch.float64)
    assert ego_motion_labels(bump) == STRAIGHT
    with pytest.raises(ValueError, match="world_from_camera"):
        ego_motion_labels(torch.eye(4))


def _fake_scene(out: Path, headings: np.ndarray, seed: int) -> Path:
    """A scene folder with random frames and the poses of the given heading sequence."""
    T, H, W = len(headings), 16, 32
    g = torch.Generator().manual_seed(seed)
    scene = Scene(
        frames=torch.randint(0, 256, (T, H, W, 3), generator=g, dtype=torch.uint8),
        K=torch.tensor([[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]], dtype=torch.float64),
        world_from_camera=_drive(headings),
        depth=torch.ones(T, H, W),
        semantic=torch.zeros(T, H, W, dtype=torch.uint8),
        classes=["thing"],
        boxes={"images": [], "annotations": [], "categories": []},
        fps=10.0,
    )
    return write_scene(scene, out)


def _turns(pattern: list[tuple[int, float]]) -> np.ndarray:
    """Headings from (frames, degrees per frame) segments."""
    rates = np.concatenate([np.full(n, r) for n, r in pattern])
    return np.concatenate([[0.0], np.cumsum(rates)])[:-1]


@pytest.fixture(scope="module")
def fake_scenes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("fake_scenes")
    a = _fake_scene(root / "a", _turns([(12, 0.0), (10, 9.0), (12, 0.0), (10, -9.0), (6, 0.0)]), 0)
    b = _fake_scene(root / "b", _turns([(20, 0.0), (10, -9.0), (10, 0.0)]), 1)
    c = _fake_scene(root / "c", _turns([(8, 0.0), (10, 9.0), (12, 0.0), (10, -9.0), (10, 0.0)]), 2)
    return [a, b, c]


def test_dataset_labels_match_the_frames_read_and_split_by_scene(fake_scenes: list[Path]) -> None:
    train, test, info = ego_motion_dataset(fake_scenes[:2], fake_scenes[2:], clip_len=4, frame_stride=2, step=1,
                                           balance=False)
    assert set(train.scenes) == {"a", "b"} and set(test.scenes) == {"c"}
    assert not set(train.scenes) & set(test.scenes)
    assert info.counts == {"train": train.class_counts(), "test": test.class_counts()}
    assert all(n > 0 for n in info.counts["train"]), info.counts  # every class occurs
    poses = {d.name: torch.from_numpy(read_poses(d)) for d in fake_scenes}
    for ds in (train, test):
        for i in range(0, len(ds), 3):
            sample = ds[i]
            assert sample["video"].dtype == torch.uint8 and sample["video"].shape == (3, 4, 16, 32)
            # the label recomputed from the frames actually read
            clip_poses = poses[ds.scenes[i]][sample["frame_indices"]]
            assert sample["label"] == ego_motion_labels(clip_poses) == ds.labels[i]
            assert abs(abs(ds.yaw_deg[i]) - 20.0) >= 5.0  # ambiguous clips were dropped
    assert info.dropped_ambiguous["train"] > 0


def test_balance_keeps_turns_and_subsamples_straight(fake_scenes: list[Path]) -> None:
    kw = dict(clip_len=4, frame_stride=2, step=1)
    raw, _, info_raw = ego_motion_dataset(fake_scenes[:2], fake_scenes[2:], balance=False, **kw)
    bal, _, info = ego_motion_dataset(fake_scenes[:2], fake_scenes[2:], balance=True, **kw)
    straight, left, right = info_raw.counts["train"]
    assert info.counts["train"] == [round((left + right) / 2), left, right]
    assert straight > info.counts["train"][0]
    assert info.raw_counts == info_raw.counts
    assert set(zip(bal.scenes, bal.frame_indices[:, 0].tolist(), strict=True)) <= set(
        zip(raw.scenes, raw.frame_indices[:, 0].tolist(), strict=True)
    )


def test_dataset_refuses_leaks_and_bad_thresholds(fake_scenes: list[Path]) -> None:
    with pytest.raises(ValueError, match="in both splits"):
        ego_motion_dataset(fake_scenes[:2], fake_scenes[1:])
    with pytest.raises(ValueError, match="margin_deg"):
        ego_motion_dataset(fake_scenes[:1], fake_scenes[2:], yaw_threshold_deg=5.0, margin_deg=5.0)
    with pytest.raises(ValueError, match="in both train_seeds and test_seeds"):
        world_probe_dataset(fake_scenes[0].parent, train_seeds=[1, 2], test_seeds=[2])


# ------------------------------------------------------------------------------------- the rendered world
TINY = dict(frames=40, height=16, width=48)  # seeds 2 and 11 turn (right / left) between frames 22 and 38


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe_world")
    world_probe_dataset(root, train_seeds=[2], test_seeds=[11], clip_len=4, **TINY)  # renders both scenes
    return root


@pytest.mark.slow
def test_driving_world_turns_have_the_right_sign(tiny_world: Path) -> None:
    train, test, info = world_probe_dataset(tiny_world, train_seeds=[2], test_seeds=[11], clip_len=4, frame_stride=2,
                                            step=1, balance=False, **TINY)
    # seed 2 turns right at its first turn, seed 11 left (routes: heading north -> east is a right turn)
    assert info.counts["train"][RIGHT] > 0 and info.counts["train"][LEFT] == 0, info.counts
    assert info.counts["test"][LEFT] > 0 and info.counts["test"][RIGHT] == 0, info.counts
    assert info.train_scenes == ["driving_s2_40x16x48"] and info.test_scenes == ["driving_s11_40x16x48"]
    assert info.render_s == 0.0  # cached by the fixture
    assert train[0]["video"].shape == (3, 4, 16, 48)


@pytest.mark.slow
def test_probe_protocol_on_the_world(tiny_world: Path, tmp_path: Path) -> None:
    """``stssl-eval``'s probe protocol on the rendered world task (random init; the checkpoint path is tested in
    tests/eval/test_harness.py)."""
    from stssl.eval.cli import run_eval
    from stssl.eval.protocols import ProbeProtocol, WorldSplit

    split = WorldSplit("driving", train_seeds=[2], test_seeds=[11], root=str(tiny_world), **TINY)
    protocol = ProbeProtocol(split, clip_len=4, step=1, k=5, epochs=20, batch_size=8)
    result = run_eval(protocol, encoder_name="r3d_tiny", encoder_kwargs={"width": 4}, output_dir=tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(result))
    assert result["checkpoint"] is None and set(result) >= {"scratch", "chance", "class_counts"}
    for key in ("knn_acc", "linear_acc", "knn_mean_class_acc", "linear_mean_class_acc"):
        assert 0.0 <= result["scratch"][key] <= 1.0, key
    assert sum(result["class_counts"]["test"]) > 0 and result["class_names"] == list(EGO_MOTION_CLASSES)
