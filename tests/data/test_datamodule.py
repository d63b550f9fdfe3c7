from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import av
import lightning as L
import numpy as np
import pytest
import torch

from stssl.data.datamodule import ClipDataModule, EpochSampler
from stssl.data.sampling import uniform_clips
from stssl.geometry.camera import scale_intrinsics
from stssl.worlds.scene_io import write_calib

H, W = 32, 64
K_SCENE = np.array([[50.0, 0.0, 31.5], [0.0, 50.0, 15.5], [0.0, 0.0, 1.0]])


def write_scene(d: Path, n: int = 12, seed: int = 0) -> Path:
    """A scene folder: ``video.mp4`` (PyAV, mpeg4; frame i flat grey 10 * i + seed) and ``calib.json``."""
    d.mkdir(parents=True, exist_ok=True)
    with av.open(str(d / "video.mp4"), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.bit_rate = 2_000_000
        for i in range(n):
            frame = np.full((H, W, 3), 10 * i + seed, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    write_calib(d, K_SCENE, width=W, height=H, fps=10)
    return d


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scenes")
    for i in range(3):
        write_scene(root / f"scene{i}", seed=i)
    return root


def small_dm(sources: list[str], **kw: object) -> ClipDataModule:
    args: dict = dict(sources=sources, val_sources=sources, world=None, size=(16, 32), clip_len=4, batch_size=2)
    args.update(kw)
    return ClipDataModule(**args)


def test_setup_and_one_batch_to_float_on_the_device(scenes: Path) -> None:
    dm = small_dm([str(scenes)], augment=True, hflip=0.5, crop_scale=(0.5, 1.0))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].dtype == torch.uint8 and batch["video"].shape == (2, 3, 4, 16, 32)
    assert batch["K"].shape == (2, 3, 3) and batch["frame_indices"].shape == (2, 4)
    raw = batch["video"].clone()
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["video"].dtype == torch.float32 and out["video"].device == raw.device
    torch.testing.assert_close(out["video"], raw.float() / 255)
    assert float(out["video"].min()) >= 0 and float(out["video"].max()) <= 1


def test_val_loader_is_uniform_and_unaugmented(scenes: Path) -> None:
    dm = small_dm([str(scenes)], val_clips_per_video=2, augment=True)
    dm.setup("fit")
    batches = list(dm.val_dataloader())
    assert sum(b["video"].shape[0] for b in batches) == 6  # 3 scenes x 2 clips, in order
    assert torch.cat([b["index"] for b in batches]).tolist() == list(range(6))
    expected_K = scale_intrinsics(torch.from_numpy(K_SCENE), 32 / W, 16 / H).float()
    for b in batches:
        torch.testing.assert_close(b["K"], expected_K.expand(b["K"].shape[0], 3, 3))  # no crop, no flip
        assert torch.equal(b["frame_indices"], uniform_clips(12, 4, 2))  # one scene's two clips per batch
    again = list(dm.val_dataloader())
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(batches, again, strict=True))


def test_world_is_rendered_in_prepare_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stssl.worlds

    calls: list[tuple] = []

    def fake_ensure_world(name: str, root: str, *, frames: int, height: int, width: int, seed: int) -> Path:
        calls.append((name, root, frames, height, width, seed))
        d = Path(root) / f"{name}-{seed}"
        if not d.exists():
            write_scene(d, n=frames, seed=seed)
        return d

    monkeypatch.setattr(stssl.worlds, "ensure_world", fake_ensure_world, raising=False)
    monkeypatch.setenv("STSSL_CACHE", str(tmp_path / "cache"))
    dm = ClipDataModule(world="driving", world_train_seeds=(1, 2), world_val_seeds=(7,), world_frames=9,
                        world_size=(H, W), size=(16, 32), clip_len=3, batch_size=2, augment=False)
    dm.prepare_data()
    assert calls == [("driving", str(tmp_path / "cache"), 9, H, W, s) for s in (1, 2, 7)]
    dm.setup("fit")
    assert dm.train_dataset is not None and dm.val_dataset is not None
    assert [Path(r.scene_dir).name for r in dm.train_dataset.records] == ["driving-1", "driving-2"]  # type: ignore[arg-type]
    assert [Path(r.scene_dir).name for r in dm.val_dataset.records] == ["driving-7"]  # type: ignore[arg-type]
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (2, 3, 3, 16, 32)


def test_gpu_augment_only_in_training(scenes: Path) -> None:
    pytest.importorskip("stssl.transforms.gpu")
    dm = small_dm([str(scenes)], augment=False, gpu_augment=True, crop_scale=(0.3, 0.5), hflip=1.0)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    K_in = batch["K"].clone()
    dm.trainer = SimpleNamespace(training=False, current_epoch=0)  # type: ignore[assignment]
    out = dm.on_after_batch_transfer(dict(batch), 0)
    torch.testing.assert_close(out["K"], K_in)
    batch = next(iter(dm.val_dataloader()))
    dm.trainer = SimpleNamespace(training=True, current_epoch=0, logger=None, global_step=0)  # type: ignore[assignment]
    torch.manual_seed(0)  # kornia draws from the global generator: the draw must not depend on test order
    out = dm.on_after_batch_transfer(dict(batch), 0)
    assert out["video"].shape == (2, 3, 4, 16, 32) and out["video"].dtype == torch.float32
    # a crop of <= 50% area with aspect within 4/3 of the output's keeps <= sqrt(0.5 * 4/3) = 0.82 of each side
    assert (out["K"][:, 0, 0] > K_in[:, 0, 0] * 1.2).all() and (out["K"][:, 1, 1] > K_in[:, 1, 1] * 1.2).all()


def test_skipped_files_are_counted_and_reported(
    scenes: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path\n{scenes / 'scene0' / 'video.mp4'}\n{bad}\n{scenes / 'scene1' / 'video.mp4'}\n")
    dm = small_dm([str(manifest)], val_sources=None, on_decode_error="skip", batch_size=3, augment=False)
    dm.setup("fit")
    assert dm.val_dataloader() == []
    batches = list(dm.train_dataloader())
    assert sum(b["video"].shape[0] for b in batches) == 3
    with caplog.at_level(logging.WARNING, logger="stssl.data.datamodule"):
        counts = dm.report_skipped()
    assert counts == {"train": 1}
    assert "1 train samples" in caplog.text
    with pytest.raises(Exception, match="broken.mp4"):
        dm2 = small_dm([str(manifest)], val_sources=None, on_decode_error="raise", batch_size=3)
        dm2.setup("fit")
        list(dm2.train_dataloader())


def test_epoch_sampler_reshuffles_and_resamples(scenes: Path) -> None:
    dm = small_dm([str(scenes)], clips_per_video=4, augment=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler)
    epoch0 = [b for b in loader]
    loader.sampler.set_epoch(1)
    assert dm.train_dataset is not None and dm.train_dataset.epoch == 1
    epoch1 = [b for b in loader]
    idx0, idx1 = torch.cat([b["index"] for b in epoch0]), torch.cat([b["index"] for b in epoch1])
    assert sorted(idx0.tolist()) == sorted(idx1.tolist()) == list(range(12)) and not torch.equal(idx0, idx1)
    # each served clip is the dataset's clip for (seed, epoch=1, index)
    fi1 = torch.cat([b["frame_indices"] for b in epoch1])
    ref = [dm.train_dataset[int(i)]["frame_indices"] for i in idx1]
    assert torch.equal(fi1, torch.stack(ref))


def test_fixed_train_clips_keep_each_item_on_its_clip(scenes: Path) -> None:
    dm = small_dm([str(scenes)], clips_per_video=3, train_clips="fixed", augment=False)
    dm.setup("fit")
    assert dm.train_dataset is not None
    ds = dm.train_dataset
    epoch0 = [ds[i]["frame_indices"] for i in range(len(ds))]
    ds.set_epoch(1)
    epoch1 = [ds[i]["frame_indices"] for i in range(len(ds))]
    assert len(ds) == 9 and all(torch.equal(a, b) for a, b in zip(epoch0, epoch1, strict=True))
    starts = [int(f[0]) for f in epoch0[:3]]  # one video's 3 clips: evenly spaced, distinct
    assert starts == sorted(starts) and len(set(starts)) == 3
    random_dm = small_dm([str(scenes)], clips_per_video=3, augment=False)  # the default draws anew each epoch
    random_dm.setup("fit")
    assert random_dm.train_dataset is not None
    first = [random_dm.train_dataset[i]["frame_indices"] for i in range(9)]
    random_dm.train_dataset.set_epoch(1)
    assert not all(torch.equal(a, random_dm.train_dataset[i]["frame_indices"]) for i, a in enumerate(first))
    with pytest.raises(ValueError, match="train_clips must be 'random' or 'fixed', got 'even'"):
        small_dm([str(scenes)], train_clips="even")


@pytest.mark.slow
def test_persistent_workers_see_the_epoch(scenes: Path) -> None:
    # spawn: the test process has used decord already, and forking it can deadlock the workers.
    dm = small_dm([str(scenes)], clips_per_video=4, augment=False, num_workers=1, on_decode_error="raise",
                  worker_start_method="spawn")
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    seen = {}
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)  # what Lightning does at every epoch start
        batches = list(loader)
        seen[epoch] = {int(i): f for b in batches for i, f in zip(b["index"], b["frame_indices"], strict=True)}
    assert dm.train_dataset is not None
    for epoch in range(2):
        dm.train_dataset.set_epoch(epoch)
        for i, f in seen[epoch].items():
            assert torch.equal(f, dm.train_dataset[i]["frame_indices"]), (epoch, i)
    assert any(not torch.equal(seen[0][i], seen[1][i]) for i in seen[0])


class _Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.seen: list[tuple[torch.dtype, float, float, tuple]] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        v = batch["video"]
        self.seen.append((v.dtype, float(v.min()), float(v.max()), (v.shape[0], *batch["K"].shape)))
        return self.layer(v.mean(dim=(2, 3, 4))).mean()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        v = batch["video"]
        self.seen.append((v.dtype, float(v.min()), float(v.max()), (v.shape[0], *batch["K"].shape)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_lightning_fit_smoke(scenes: Path) -> None:
    dm = small_dm([str(scenes)], augment=True, clips_per_video=2)
    model = _Probe()
    trainer = L.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, datamodule=dm)
    assert len(model.seen) == 4  # 2 train + 2 val batches
    for dtype, lo, hi, k_shape in model.seen:
        assert dtype == torch.float32 and 0 <= lo <= hi <= 1 and k_shape[1:] == (k_shape[0], 3, 3)


# ---------------------------------------------------------------------------------------------- ground truth
def write_gt_scene(d: Path, n: int = 10, seed: int = 0) -> Path:
    """A full scene folder (video, calib, poses, depth, ...): depth ``seed + t + row / 100`` m, distinct poses."""
    from stssl.worlds.scene_io import Scene, write_scene

    frames = np.zeros((n, H, W, 3), np.uint8)
    frames[:] = (10 * np.arange(n) + seed).astype(np.uint8)[:, None, None, None]
    rows = np.arange(H, dtype=np.float32)[None, :, None] / 100
    depth = np.broadcast_to(seed + 1.0 + np.arange(n, dtype=np.float32)[:, None, None] + rows, (n, H, W)).copy()
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 2, 3] = 0.5 * np.arange(n) + seed  # driving forward
    poses[:, 0, 3] = 0.1 * seed
    scene = Scene(
        frames=torch.from_numpy(frames), K=torch.from_numpy(K_SCENE), world_from_camera=torch.from_numpy(poses),
        depth=torch.from_numpy(depth), semantic=torch.zeros(n, H, W, dtype=torch.uint8), classes=["x"],
        boxes={"images": [], "annotations": [], "categories": []}, fps=10.0,
    )
    return write_scene(scene, d)


@pytest.fixture()
def fake_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``ensure_world`` replaced by a fast writer of full GT scenes under ``tmp_path/cache``."""
    import stssl.worlds

    def fake_ensure_world(name: str, root: str, *, frames: int, height: int, width: int, seed: int) -> Path:
        d = Path(root) / f"{name}-{seed}"
        if not d.exists():
            write_gt_scene(d, n=frames, seed=seed)
        return d

    monkeypatch.setattr(stssl.worlds, "ensure_world", fake_ensure_world, raising=False)
    return tmp_path / "cache"


def world_dm(root: Path, **kw: object) -> ClipDataModule:
    args: dict = dict(world="driving", world_train_seeds=(1,), world_val_seeds=(7, 8), world_frames=10,
                      world_size=(H, W), world_root=str(root), size=(16, 32), offsets=[-1, 0, 1], batch_size=2,
                      val_clips_per_video=2, augment=True, hflip=1.0)
    args.update(kw)
    return ClipDataModule(**args)


def test_val_batches_carry_gt_and_val_scene_dirs_lists_the_val_scenes(fake_world: Path) -> None:
    from stssl.worlds.scene_io import read_depth, read_poses

    dm = world_dm(fake_world)
    dm.prepare_data()
    dirs = dm.val_scene_dirs()
    assert dirs == [str(fake_world / "driving-7"), str(fake_world / "driving-8")]
    assert all(Path(d).is_dir() for d in dirs) and dm.val_has_gt
    batches = list(dm.val_dataloader())
    assert len(batches) == 2
    for b, d in zip(batches, dirs, strict=True):  # one scene's two clips per batch, in order
        assert b["depth"].shape == (2, 1, 3, 16, 32) and b["depth"].dtype == torch.float32
        assert b["world_from_camera"].shape == (2, 3, 4, 4) and b["world_from_camera"].dtype == torch.float32
        depth, poses = read_depth(d), read_poses(d)
        for i in range(2):
            fi = b["frame_indices"][i].numpy()
            rows = np.floor((np.arange(16) + 0.5) * H / 16).astype(int)  # nearest, pixel centres
            cols = np.floor((np.arange(32) + 0.5) * W / 32).astype(int)
            np.testing.assert_array_equal(b["depth"][i, 0].numpy(), depth[fi][:, rows][:, :, cols])
            np.testing.assert_allclose(b["world_from_camera"][i].numpy(), poses[fi], atol=1e-6)
    dm.setup("fit")
    train = next(iter(dm.train_dataloader()))
    assert "depth" not in train and "world_from_camera" not in train  # training batches carry no GT


def test_val_order_interleave_mixes_videos_in_each_batch(fake_world: Path) -> None:
    from stssl.data.datamodule import interleaved_order

    def scene_and_start(batch: dict) -> list[tuple[float, int]]:  # (x of the pose = 0.1 * seed, first frame)
        return [(round(float(p[0, 0, 3]), 1), int(f[0])) for p, f in zip(batch["world_from_camera"], batch["frame_indices"], strict=True)]

    by_video = [scene_and_start(b) for b in world_dm(fake_world).val_dataloader()]
    mixed = [scene_and_start(b) for b in world_dm(fake_world, val_order="interleave").val_dataloader()]
    assert [{s for s, _ in b} for b in by_video] == [{0.7}, {0.8}]  # one scene per batch
    assert [[s for s, _ in b] for b in mixed] == [[0.7, 0.8], [0.7, 0.8]]  # both scenes in every batch
    assert sorted(x for b in mixed for x in b) == sorted(x for b in by_video for x in b)  # the same items
    assert mixed[0][0][1] < mixed[1][0][1]  # each video's clips still in time order
    assert interleaved_order(2, 3) == [0, 3, 1, 4, 2, 5] and interleaved_order(0, 2) == []
    with pytest.raises(ValueError, match="val_order must be one of"):
        world_dm(fake_world, val_order="shuffle")


def test_val_gt_off_or_missing_gives_no_gt_keys(fake_world: Path, scenes: Path) -> None:
    dm = world_dm(fake_world, val_gt=False)
    dm.prepare_data()
    assert not dm.val_has_gt and "depth" not in next(iter(dm.val_dataloader()))
    assert len(dm.val_scene_dirs()) == 2  # still listed
    no_gt = small_dm([str(scenes)])  # scene folders without depth.npz / poses.txt
    assert no_gt.val_scene_dirs() == [str(scenes / f"scene{i}") for i in range(3)]
    assert not no_gt.val_has_gt and "depth" not in next(iter(no_gt.val_dataloader()))
    assert small_dm([str(scenes)], val_sources=None).val_scene_dirs() == []  # no validation at all


def test_batch_transfer_leaves_gt_untouched(fake_world: Path) -> None:
    dm = world_dm(fake_world)
    dm.prepare_data()
    batch = next(iter(dm.val_dataloader()))
    depth, poses = batch["depth"].clone(), batch["world_from_camera"].clone()
    out = dm.on_after_batch_transfer(dict(batch), 0)
    assert out["video"].dtype == torch.float32
    assert torch.equal(out["depth"], depth) and torch.equal(out["world_from_camera"], poses)
    dm.gpu_augment = True
    dm.trainer = SimpleNamespace(training=True, current_epoch=0, logger=None, global_step=0)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="gpu_augment would crop/flip batch\\['video'\\] but not batch\\['depth'\\]"):
        dm.on_after_batch_transfer(dict(batch), 0)


def test_worker_start_method_default(scenes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import stssl.data.datamodule as dm_module

    assert small_dm([str(scenes)], backend="decord", num_workers=2).worker_context() == "forkserver"
    assert small_dm([str(scenes)], backend="pyav", num_workers=2).worker_context() is None
    assert small_dm([str(scenes)], backend="decord", num_workers=0).worker_context() is None
    assert small_dm([str(scenes)], backend="decord", num_workers=2, worker_start_method="fork").worker_context() == "fork"
    monkeypatch.setattr(dm_module, "available_backends", lambda: ["decord", "pyav", "frames"])
    assert small_dm([str(scenes)], backend="auto", num_workers=1).worker_context() == "forkserver"
    monkeypatch.setattr(dm_module, "available_backends", lambda: ["torchcodec", "pyav", "frames"])
    assert small_dm([str(scenes)], backend="auto", num_workers=1).worker_context() is None
    dm = small_dm([str(scenes)], backend="pyav", num_workers=1, worker_start_method="spawn")
    dm.setup("fit")
    loader = dm.val_dataloader()
    assert loader.multiprocessing_context is not None
    assert loader.multiprocessing_context.get_start_method() == "spawn"


@pytest.mark.slow
def test_forkserver_workers_serve_gt(fake_world: Path) -> None:
    # the default for decord with workers: forkserver; GT batches equal the in-process ones
    dm = world_dm(fake_world, backend="decord", num_workers=1)
    dm.prepare_data()
    assert dm.worker_context() == "forkserver"
    served = list(dm.val_dataloader())
    reference = world_dm(fake_world, backend="decord", num_workers=0)
    expected = list(reference.val_dataloader())
    for a, b in zip(served, expected, strict=True):
        assert torch.equal(a["video"], b["video"]) and torch.equal(a["depth"], b["depth"])
        assert torch.equal(a["world_from_camera"], b["world_from_camera"])
