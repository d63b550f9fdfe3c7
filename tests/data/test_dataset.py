from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

import stssl.data.dataset as dataset_module
from stssl.data.dataset import ClipDataset
from stssl.data.readers import VideoReadError
from stssl.data.sampling import sliding_windows, uniform_clips
from stssl.data.sources import VideoRecord
from stssl.geometry.camera import scale_intrinsics
from stssl.transforms.functional import ClipAugment

H, W = 32, 64  # decord 0.6 fails on 48-pixel-wide mpeg4 (row alignment); see report


def write_video(path: Path, n: int = 20, h: int = H, w: int = W, base: int = 0) -> Path:
    """A tiny real video (PyAV, mpeg4, high bitrate): frame i is flat grey ``base + 8 * i``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.bit_rate = 2_000_000
        for i in range(n):
            frame = np.full((h, w, 3), base + 8 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def frame_ids(video: torch.Tensor, base: int = 0) -> list[int]:
    """Recover the frame numbers from flat grey frames ``(C, T, H, W)``."""
    return [round((float(video[:, t].float().mean()) - base) / 8) for t in range(video.shape[1])]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    good = [write_video(root / f"good{i}.mp4", n=20 + 4 * i) for i in range(3)]
    truncated = root / "truncated.mp4"
    data = write_video(root / "full.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    notvideo = root / "notvideo.mp4"
    notvideo.write_text("this is not a video\n" * 10)
    short = write_video(root / "short.mp4", n=2)
    return {"good0": good[0], "good1": good[1], "good2": good[2], "truncated": truncated, "notvideo": notvideo,
            "short": short}


K0 = np.array([[40.0, 0.0, 23.5], [0.0, 42.0, 15.5], [0.0, 0.0, 1.0]])


def test_sample_matches_the_frames_read(corpus: dict[str, Path]) -> None:
    ds = ClipDataset([VideoRecord(str(corpus["good1"]), label=5)], clip_len=4, frame_stride=2, clips_per_video=3)
    assert len(ds) == 3
    for i in range(3):
        s = ds[i]
        assert s["video"].dtype == torch.uint8 and s["video"].shape == (3, 4, H, W)
        assert s["index"] == i and s["label"] == 5 and "K" not in s
        fi = s["frame_indices"]
        assert fi.dtype == torch.int64 and (fi.diff() == 2).all() and 0 <= int(fi[0]) and int(fi[-1]) < 24
        assert frame_ids(s["video"]) == fi.tolist()  # the pixels are the frames the indices name


def test_resize_and_intrinsics_follow_the_output_size(corpus: dict[str, Path]) -> None:
    # K is given at twice the video's size: it is brought to the video's size, then to the output size.
    rec = VideoRecord(str(corpus["good0"]), K=K0 * np.array([[2, 1, 1], [1, 2, 1], [1, 1, 1]]), calib_size=(2 * H, 2 * W))
    rec.K[0, 2], rec.K[1, 2] = 2 * (K0[0, 2] + 0.5) - 0.5, 2 * (K0[1, 2] + 0.5) - 0.5  # type: ignore[index]
    ds = ClipDataset([rec], clip_len=3, size=(16, 40))
    s = ds[0]
    assert s["video"].shape == (3, 3, 16, 40) and s["K"].dtype == torch.float32
    expected = scale_intrinsics(torch.from_numpy(K0), 40 / W, 16 / H)
    torch.testing.assert_close(s["K"], expected.float())
    assert frame_ids(s["video"]) == s["frame_indices"].tolist()  # flat frames survive the resize


def test_collate_mixes_cameras_with_per_sample_K(corpus: dict[str, Path]) -> None:
    K1 = np.array([[10.0, 0.0, 5.0], [0.0, 11.0, 6.0], [0.0, 0.0, 1.0]])
    recs = [VideoRecord(str(corpus["good0"]), K=K0), VideoRecord(str(corpus["good2"]), K=K1, calib_size=(H // 2, W // 2))]
    ds = ClipDataset(recs, clip_len=4, size=(16, 32))
    batch = default_collate([ds[0], ds[1]])
    assert batch["video"].shape == (2, 3, 4, 16, 32) and batch["K"].shape == (2, 3, 3)
    assert batch["frame_indices"].shape == (2, 4) and batch["index"].tolist() == [0, 1]
    torch.testing.assert_close(batch["K"][0], scale_intrinsics(torch.from_numpy(K0), 0.5, 0.5).float())
    torch.testing.assert_close(batch["K"][1], scale_intrinsics(torch.from_numpy(K1), 1.0, 1.0).float())


def test_samples_are_a_function_of_seed_epoch_and_index(corpus: dict[str, Path]) -> None:
    recs = [VideoRecord(str(corpus[k]), K=K0) for k in ("good0", "good1", "good2")]
    aug = ClipAugment((16, 16), scale=(0.3, 1.0), hflip=0.5, color_jitter=0.3)

    def make(seed: int) -> ClipDataset:
        return ClipDataset(recs, clip_len=3, clips_per_video=4, size=(16, 16), transform=aug, seed=seed)

    a, b = make(0), make(0)
    order = list(range(len(a)))
    samples_a = [a[i] for i in order]
    samples_b = [b[i] for i in reversed(order)][::-1]  # order of access does not matter
    for x, y in zip(samples_a, samples_b, strict=True):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["K"], y["K"])
        assert torch.equal(x["frame_indices"], y["frame_indices"])
    a.set_epoch(1)
    assert a.epoch == 1
    moved = [not torch.equal(a[i]["frame_indices"], samples_a[i]["frame_indices"]) for i in order]
    assert sum(moved) >= len(order) // 2  # a new epoch draws new clips
    a.set_epoch(0)
    assert all(torch.equal(a[i]["video"], samples_a[i]["video"]) for i in order)
    other = make(1)
    assert any(not torch.equal(other[i]["frame_indices"], samples_a[i]["frame_indices"]) for i in order)


def test_offsets_mode_reads_a_tuple_around_a_centre(corpus: dict[str, Path]) -> None:
    ds = ClipDataset([VideoRecord(str(corpus["good0"]))], offsets=(-1, 0, 1), frame_stride=3, clips_per_video=8)
    assert ds.num_frames_per_clip == 3
    for i in range(len(ds)):
        s = ds[i]
        fi = s["frame_indices"]
        assert (fi - fi[1]).tolist() == [-3, 0, 3] and int(fi[0]) >= 0 and int(fi[2]) <= 19
        assert frame_ids(s["video"]) == fi.tolist()


def test_uniform_and_sliding_modes_match_the_samplers(corpus: dict[str, Path]) -> None:
    recs = [VideoRecord(str(corpus["good0"])), VideoRecord(str(corpus["good1"]))]  # 20 and 24 frames
    uni = ClipDataset(recs, clip_len=4, frame_stride=2, mode="uniform", clips_per_video=3)
    expected = [c for n in (20, 24) for c in uniform_clips(n, 4, 3, 2).tolist()]
    assert [uni[i]["frame_indices"].tolist() for i in range(len(uni))] == expected
    sl = ClipDataset(recs, clip_len=5, mode="sliding", sliding_step=3)
    expected = [c for n in (20, 24) for c in sliding_windows(n, 5, 1, 3).tolist()]
    assert len(sl) == len(expected)
    assert [sl[i]["frame_indices"].tolist() for i in range(len(sl))] == expected


def test_readers_are_opened_once_and_kept_in_an_lru(corpus: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real = dataset_module.open_video

    def counting(path: str, **kw: object) -> object:
        opened.append(Path(path).name)
        return real(path, **kw)

    monkeypatch.setattr(dataset_module, "open_video", counting)
    recs = [VideoRecord(str(corpus["good0"])), VideoRecord(str(corpus["good1"]))]
    ds = ClipDataset(recs, clip_len=2, clips_per_video=3, max_open_readers=8)
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert opened == ["good0.mp4", "good1.mp4"]  # 12 reads, 2 opens
    opened.clear()
    tiny = ClipDataset(recs, clip_len=2, clips_per_video=1, max_open_readers=1)
    for i in [0, 1, 0, 1]:
        tiny[i]
    assert opened == ["good0.mp4", "good1.mp4", "good0.mp4", "good1.mp4"]  # evicted each time


def test_raise_names_the_record(corpus: dict[str, Path]) -> None:
    for key in ("truncated", "notvideo"):
        ds = ClipDataset([VideoRecord(str(corpus[key]))], clip_len=4)
        with pytest.raises(VideoReadError, match=key):
            ds[0]
    ds = ClipDataset([VideoRecord(str(corpus["short"]))], clip_len=4)
    with pytest.raises(ValueError, match=r"short\.mp4: video too short: clip_len=4 with frame_stride=1 needs 4"):
        ds[0]


def test_skip_serves_good_videos_logs_once_and_counts(
    corpus: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    keys = ["good0", "truncated", "good1", "notvideo", "short"]
    recs = [VideoRecord(str(corpus[k]), label=i) for i, k in enumerate(keys)]
    ds = ClipDataset(recs, clip_len=4, clips_per_video=2, on_decode_error="skip", seed=3)
    with caplog.at_level(logging.WARNING, logger="stssl.data.dataset"):
        first = [ds[i] for i in range(len(ds))]
        second = [ds[i] for i in range(len(ds))]
    good_labels = {0, 2}
    assert {s["label"] for s in first} <= good_labels and {s["label"] for s in second} <= good_labels
    bad_items = [i for i in range(len(ds)) if i // 2 in (1, 3, 4)]
    assert ds.skipped == 2 * len(bad_items)  # every replaced sample is counted, both passes
    assert set(ds.skipped_files) == {str(corpus[k]) for k in ("truncated", "notvideo", "short")}
    for k in ("truncated", "notvideo", "short"):  # logged once per file although served twice
        assert sum(str(corpus[k]) in r.getMessage() for r in caplog.records) == 1
    # The replacement is deterministic: a fresh dataset (no knowledge of bad files) serves the same.
    fresh = ClipDataset(recs, clip_len=4, clips_per_video=2, on_decode_error="skip", seed=3)
    for i in reversed(range(len(ds))):
        s = fresh[i]
        assert s["label"] == first[i]["label"] and torch.equal(s["video"], first[i]["video"])
        assert s["index"] == i


def test_skip_gives_up_when_everything_is_unreadable(corpus: dict[str, Path]) -> None:
    recs = [VideoRecord(str(corpus[k])) for k in ("truncated", "notvideo")]
    ds = ClipDataset(recs, clip_len=4, on_decode_error="skip")
    with pytest.raises(RuntimeError, match="all 2 records are unreadable"):
        ds[0]


@pytest.mark.slow
def test_skip_counts_survive_worker_processes(corpus: dict[str, Path]) -> None:
    recs = [VideoRecord(str(corpus[k])) for k in ("good0", "truncated", "good1", "notvideo")]
    ds = ClipDataset(recs, clip_len=4, clips_per_video=2, size=(16, 16), on_decode_error="skip")
    loader = DataLoader(ds, batch_size=2, num_workers=2, multiprocessing_context="spawn")  # spawn: see datamodule
    batches = list(loader)
    assert sum(b["video"].shape[0] for b in batches) == 8
    assert ds.skipped == 4  # counted in the workers, read in the main process


def test_constructor_errors_name_the_argument(corpus: dict[str, Path]) -> None:
    recs = [VideoRecord(str(corpus["good0"]))]
    with pytest.raises(ValueError, match="mode must be one of"):
        ClipDataset(recs, mode="bogus")
    with pytest.raises(ValueError, match="on_decode_error"):
        ClipDataset(recs, on_decode_error="ignore")
    with pytest.raises(ValueError, match="records is empty"):
        ClipDataset([])
    with pytest.raises(ValueError, match="size"):
        ClipDataset(recs, size=(0, 4))
    with pytest.raises(ValueError, match="clip_len"):
        ClipDataset(recs, clip_len=0)
    with pytest.raises(IndexError, match="out of range"):
        ClipDataset(recs)[5]


# ---------------------------------------------------------------------------------------------- ground truth
GT_T, GT_H, GT_W = 8, 32, 64
GT_K = np.array([[40.0, 0.0, 31.5], [0.0, 40.0, 15.5], [0.0, 0.0, 1.0]])


def gt_box(t: int) -> tuple[int, int, int, int]:
    """An off-centre bright box ``(top, left, bottom, right)`` that moves with the frame (asymmetric: flips show)."""
    return 6, 6 + 3 * t, 22, 26 + 3 * t


def write_gt_scene(d: Path, n: int = GT_T, seed: int = 0) -> Path:
    """A scene folder with exact GT: a bright box (depth 4 m) on a dark background (depth 20 + seed + t m),
    the top 4 rows invalid (depth 0), and distinct random rigid poses."""
    from stssl.worlds.scene_io import Scene, write_scene

    rng = np.random.default_rng(seed)
    frames = np.full((n, GT_H, GT_W, 3), 30, np.uint8)
    depth = np.zeros((n, GT_H, GT_W), np.float32)
    for t in range(n):
        depth[t, 4:] = 20.0 + seed + t
        top, left, bottom, right = gt_box(t)
        frames[t, top:bottom, left:right] = 220
        depth[t, top:bottom, left:right] = 4.0
    poses = np.tile(np.eye(4), (n, 1, 1))
    for t in range(n):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        poses[t, :3, :3] = q * np.sign(np.linalg.det(q))
        poses[t, :3, 3] = rng.normal(scale=5.0, size=3)
    scene = Scene(
        frames=torch.from_numpy(frames), K=torch.from_numpy(GT_K), world_from_camera=torch.from_numpy(poses),
        depth=torch.from_numpy(depth), semantic=torch.zeros(n, GT_H, GT_W, dtype=torch.uint8), classes=["thing"],
        boxes={"images": [], "annotations": [], "categories": []}, fps=10.0,
    )
    return write_scene(scene, d)


def poses_txt(scene_dir: Path) -> np.ndarray:
    """Naive reader of ``poses.txt``: ``(N, 4, 4)`` from 12 numbers per line."""
    rows = [[float(v) for v in line.split()] for line in (scene_dir / "poses.txt").read_text().splitlines()]
    out = np.tile(np.eye(4), (len(rows), 1, 1))
    out[:, :3, :] = np.asarray(rows).reshape(-1, 3, 4)
    return out


def nearest_resize(depth: np.ndarray, h: int, w: int) -> np.ndarray:
    """Reference nearest-neighbour resize with pixel centres: output (i, j) reads ``floor((i + 0.5) * H / h)``."""
    H, W = depth.shape[-2:]
    rows = np.floor((np.arange(h) + 0.5) * H / h).astype(int)
    cols = np.floor((np.arange(w) + 0.5) * W / w).astype(int)
    return depth[..., rows[:, None], cols[None, :]]


def interior(mask: np.ndarray) -> np.ndarray:
    """Pixels whose 3x3 neighbourhood (in the frame) is constant in ``mask`` ``(..., H, W)``."""
    pad = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)], mode="edge")
    same = np.ones_like(mask, dtype=bool)
    H, W = mask.shape[-2:]
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= pad[..., dy : dy + H, dx : dx + W] == mask
    return same


def image_depth_disagreement(sample: dict) -> int:
    """Interior pixels where the bright box of the image and the near (4 m) region of the depth disagree."""
    bright = sample["video"].float().mean(0).numpy() > 125  # (T, H, W)
    near = (sample["depth"][0].numpy() > 0) & (sample["depth"][0].numpy() < 10)
    keep = interior(near)
    return int((bright != near)[keep].sum())


@pytest.fixture(scope="module")
def gt_scenes(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("gt_scenes")
    return [write_gt_scene(root / f"scene{i}", seed=i) for i in range(2)]


def gt_records(scenes: list[Path]) -> list[VideoRecord]:
    from stssl.data.sources import scene_records

    return [r for d in scenes for r in scene_records(d)]


def test_gt_depth_and_poses_equal_the_scene_files(gt_scenes: list[Path]) -> None:
    from stssl.worlds.scene_io import read_depth

    ds = ClipDataset(gt_records(gt_scenes), offsets=(-1, 0, 1), frame_stride=2, mode="uniform", clips_per_video=3,
                     load_gt=True)
    for i in range(len(ds)):
        s = ds[i]
        scene = gt_scenes[i // 3]
        fi = s["frame_indices"].numpy()
        assert s["depth"].dtype == torch.float32 and s["depth"].shape == (1, 3, GT_H, GT_W)
        assert s["world_from_camera"].dtype == torch.float32 and s["world_from_camera"].shape == (3, 4, 4)
        np.testing.assert_array_equal(s["depth"][0].numpy(), read_depth(scene)[fi])
        np.testing.assert_allclose(s["world_from_camera"].numpy(), poses_txt(scene)[fi], rtol=1e-6, atol=1e-6)
        assert image_depth_disagreement(s) == 0
    plain = ClipDataset(gt_records(gt_scenes), clip_len=3)
    assert "depth" not in plain[0] and "world_from_camera" not in plain[0]  # off by default


def test_gt_depth_is_nearest_resized_with_the_video(gt_scenes: list[Path]) -> None:
    from stssl.worlds.scene_io import read_depth

    ds = ClipDataset(gt_records(gt_scenes[:1]), clip_len=4, size=(12, 40), mode="uniform", clips_per_video=2,
                     load_gt=True)
    full = read_depth(gt_scenes[0])
    for i in range(len(ds)):
        s = ds[i]
        assert s["video"].shape == (3, 4, 12, 40) and s["depth"].shape == (1, 4, 12, 40)
        expected = nearest_resize(full[s["frame_indices"].numpy()], 12, 40)
        np.testing.assert_array_equal(s["depth"][0].numpy(), expected)  # values are never blended
        assert set(np.unique(s["depth"].numpy())) <= set(np.unique(full).tolist())


def test_gt_follows_random_crops_and_flips(gt_scenes: list[Path]) -> None:
    from stssl.worlds.scene_io import read_depth

    aug = ClipAugment((16, 32), scale=(0.3, 0.8), ratio=(0.8, 1.25), hflip=0.5)
    ds = ClipDataset(gt_records(gt_scenes), clip_len=3, clips_per_video=8, size=(16, 32), transform=aug,
                     load_gt=True, seed=5)
    S = np.diag([-1.0, 1.0, 1.0, 1.0])
    flips = []
    for i in range(len(ds)):
        s = ds[i]
        (top, left, h, w), flipped = aug.last_params["crop"], aug.last_params["flipped"]
        assert (h, w) != (GT_H, GT_W)  # a real crop
        flips.append(flipped)
        scene = gt_scenes[i // 8]
        fi = s["frame_indices"].numpy()
        expected = nearest_resize(read_depth(scene)[fi][:, top : top + h, left : left + w], 16, 32)
        poses = poses_txt(scene)[fi]
        if flipped:
            expected, poses = expected[..., ::-1], S @ poses @ S
        np.testing.assert_array_equal(s["depth"][0].numpy(), expected)
        np.testing.assert_allclose(s["world_from_camera"].numpy(), poses, rtol=1e-6, atol=1e-6)
        assert image_depth_disagreement(s) == 0  # the box edges of image and depth line up
        if flipped:  # and the check would catch a depth that missed the flip
            assert image_depth_disagreement({**s, "depth": s["depth"].flip(-1)}) > 0
    assert any(flips) and not all(flips)


def test_gt_follows_a_center_crop_resize(gt_scenes: list[Path]) -> None:
    from stssl.transforms.functional import ClipResize

    ds = ClipDataset(gt_records(gt_scenes), clip_len=4, transform=ClipResize((24, 24), center_crop=True),
                     load_gt=True)
    for i in range(len(ds)):
        s = ds[i]
        assert s["video"].shape == (3, 4, 24, 24) and s["depth"].shape == (1, 4, 24, 24)
        assert image_depth_disagreement(s) == 0
        assert (s["depth"][0, :, 0] == 0).all()  # the invalid top rows survive (scale 0.75: rows 0-2)


def test_gt_collates_into_a_batch(gt_scenes: list[Path]) -> None:
    ds = ClipDataset(gt_records(gt_scenes), clip_len=4, size=(16, 32), load_gt=True)
    batch = default_collate([ds[0], ds[1]])
    assert batch["depth"].shape == (2, 1, 4, 16, 32) and batch["world_from_camera"].shape == (2, 4, 4, 4)
    for b in range(2):
        torch.testing.assert_close(batch["depth"][b], ds[b]["depth"])
    loader = DataLoader(ds, batch_size=2)
    assert next(iter(loader))["depth"].shape == (2, 1, 4, 16, 32)


def test_gt_is_read_once_per_scene_per_process(gt_scenes: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real = dataset_module.read_depth

    def counting(scene_dir: str) -> np.ndarray:
        reads.append(Path(scene_dir).name)
        return real(scene_dir)

    monkeypatch.setattr(dataset_module, "read_depth", counting)
    ds = ClipDataset(gt_records(gt_scenes), clip_len=2, clips_per_video=3, load_gt=True)
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert reads == ["scene0", "scene1"]  # 12 samples, 2 reads
    reads.clear()
    tiny = ClipDataset(gt_records(gt_scenes), clip_len=2, load_gt=True, max_cached_scenes=1)
    for i in [0, 1, 0, 1]:
        tiny[i]
    assert reads == ["scene0", "scene1", "scene0", "scene1"]  # LRU of one: evicted each time


def test_gt_of_a_replacement_record_is_its_own(gt_scenes: list[Path], tmp_path: Path) -> None:
    from stssl.worlds.scene_io import read_depth

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("calib.json", "poses.txt", "depth.npz"):
        (broken / name).write_bytes((gt_scenes[0] / name).read_bytes())
    (broken / "video.mp4").write_bytes(b"\x00" * 64)
    recs = [*gt_records(gt_scenes[1:]), *gt_records([broken])]
    ds = ClipDataset(recs, clip_len=3, clips_per_video=2, load_gt=True, on_decode_error="skip")
    for i in range(len(ds)):
        s = ds[i]
        np.testing.assert_array_equal(s["depth"][0].numpy(), read_depth(gt_scenes[1])[s["frame_indices"].numpy()])
    assert ds.skipped == 2


def test_gt_errors_name_the_record_or_file(gt_scenes: list[Path], corpus: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"load_gt=True needs a scene_dir .* 1 of 2 have none.*good0\.mp4"):
        ClipDataset([*gt_records(gt_scenes[:1]), VideoRecord(str(corpus["good0"]))], load_gt=True)
    no_depth = tmp_path / "nodepth"
    no_depth.mkdir()
    (no_depth / "poses.txt").write_text((gt_scenes[0] / "poses.txt").read_text())
    with pytest.raises(ValueError, match=r"nodepth/depth\.npz: missing"):
        ClipDataset([VideoRecord(str(gt_scenes[0] / "video.mp4"), scene_dir=str(no_depth))], load_gt=True)
    with pytest.raises(TypeError, match="ClipAugment and ClipResize only"):
        ClipDataset(gt_records(gt_scenes), load_gt=True, transform=lambda v, K, g: (v.flip(-1), K))
    short = tmp_path / "short"  # GT for 3 frames, video of 8
    short.mkdir()
    np.savez_compressed(short / "depth.npz", depth=np.ones((3, GT_H, GT_W), np.float32))
    (short / "poses.txt").write_text("\n".join((gt_scenes[0] / "poses.txt").read_text().splitlines()[:3]))
    ds = ClipDataset([VideoRecord(str(gt_scenes[0] / "video.mp4"), scene_dir=str(short))], clip_len=2,
                     mode="uniform", clips_per_video=4, load_gt=True)
    with pytest.raises(ValueError, match=r"short/depth\.npz: has 3 frames but .*video\.mp4 was sampled at frame"):
        [ds[i] for i in range(len(ds))]
    with pytest.raises(ValueError, match="max_cached_scenes"):
        ClipDataset(gt_records(gt_scenes), max_cached_scenes=-1)


@pytest.mark.slow
def test_gt_warps_one_rendered_frame_onto_the_next(tmp_path: Path) -> None:
    """On a rendered world, after a random crop and flip, GT depth + GT poses + K warp frame c-1 onto frame c
    (monodepth2's view synthesis) better than no motion and better than the inverse motion."""
    from stssl.data.sources import scene_records
    from stssl.geometry.pose import relative_pose
    from stssl.geometry.warp import warp_frame
    from stssl.worlds import ensure_world

    scene = ensure_world("driving", tmp_path, frames=6, height=32, width=96, seed=1000)
    aug = ClipAugment((24, 72), scale=(0.5, 0.8), hflip=0.5)
    ds = ClipDataset(scene_records(scene), offsets=(-1, 0), clips_per_video=6, transform=aug, load_gt=True, seed=1)
    flips = []
    for i in range(len(ds)):
        s = ds[i]
        flips.append(aug.last_params["flipped"])
        video, poses = s["video"].float()[None] / 255, s["world_from_camera"].double()[None]
        src, tgt, depth = video[:, :, 0], video[:, :, 1], s["depth"][None, :, 1]
        src_from_tgt = relative_pose(poses[:, 0], poses[:, 1]).float()
        warped, valid = warp_frame(src, depth, src_from_tgt, s["K"][None])
        inverse, _ = warp_frame(src, depth, torch.linalg.inv(src_from_tgt), s["K"][None])
        mask = (valid & (depth > 0))[:, 0]
        assert float(mask.float().mean()) > 0.5

        def err(image: torch.Tensor, mask: torch.Tensor = mask, tgt: torch.Tensor = tgt) -> float:
            return float((image - tgt).abs().mean(1)[mask].mean())

        assert err(warped) < 0.75 * err(src) and err(warped) < err(inverse), (i, err(warped), err(src))
    assert any(flips) and not all(flips)
