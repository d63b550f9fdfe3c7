"""``ClipDataModule``: train/val clip loaders from video sources or from rendered worlds.

The constructor is the LightningCLI config schema (``data:`` section). With ``sources=None`` the module renders
(and caches) procedural worlds with :func:`stssl.worlds.ensure_world` in :meth:`prepare_data`.

Batches leave the workers as uint8; :meth:`ClipDataModule.on_after_batch_transfer` turns ``video`` into float32
in ``[0, 1]`` once, on the batch's device, and (``gpu_augment=True``, training only) applies
:class:`stssl.transforms.gpu.GPUAugment` there, updating ``K``. Ground truth (``depth``, ``world_from_camera``)
is float32 already and passes through untouched.

Validation ground truth: with ``val_gt=True`` (default) and every validation record in a scene folder that has
``depth.npz`` and ``poses.txt`` (rendered worlds always do), validation batches carry ``depth`` ``(B, 1, T, H, W)``
and ``world_from_camera`` ``(B, T, 4, 4)`` (:class:`ClipDataset` ``load_gt``); otherwise they carry none (logged
at INFO). :meth:`ClipDataModule.val_scene_dirs` lists the validation scenes for evaluators.

Worker start method: decoders run threads, and ``fork`` copies a process without its threads, so a child that
touches an inherited decoder can deadlock (the readers already abandon inherited handles, and a 60-fork stress
test with a parent decoding through decord concurrently did not hang here). By default (``worker_start_method=None``)
workers start with ``forkserver`` when the backend in use is decord and ``num_workers > 0`` -- a clean server
process forks the workers, so nothing decord did in the main process can leak into them -- and with the platform
default otherwise. ``forkserver`` (like ``spawn``) re-imports the main script in each worker: scripts must guard
their entry point with ``if __name__ == "__main__":`` (the ``stssl-*`` CLIs and notebooks are fine), and the
transform must be importable (not defined in a notebook); pass ``worker_start_method="fork"`` to opt out. The
forkserver is asked to preload ``torch`` and this package, so each worker forks ready instead of importing torch
again (first batch 0.3 s instead of 22 s per loader on a busy 2-core machine).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from stssl.data.dataset import ON_DECODE_ERROR, ClipDataset
from stssl.data.readers import available_backends
from stssl.data.sources import VideoRecord, load_sources, scene_records
from stssl.worlds.scene_io import DEPTH_FILE, POSES_FILE

__all__ = ["ClipDataModule", "EpochSampler", "OrderSampler", "default_world_root", "interleaved_order"]

#: Orders of the validation items (:class:`ClipDataModule` ``val_order``).
VAL_ORDERS = ("video", "interleave")

logger = logging.getLogger(__name__)


def default_world_root() -> str:
    """``$STSSL_CACHE`` if set, else ``~/.cache/stssl/worlds``."""
    return os.environ.get("STSSL_CACHE") or str(Path("~/.cache/stssl/worlds").expanduser())


class EpochSampler(DistributedSampler):
    """A (distributed) shuffling sampler whose ``set_epoch`` also selects the dataset's epoch.

    Lightning calls ``set_epoch`` on the loader's sampler every epoch and keeps a sampler that already is a
    ``DistributedSampler``, so the same object serves one process or many. The dataset's epoch lives in shared
    memory, so persistent workers see it.

    Args:
        dataset: a :class:`ClipDataset`.
        num_replicas: processes (world size); ``rank``: this process.
        shuffle: reshuffle every epoch (seeded by ``seed`` and the epoch).
        seed: shuffling seed.
        drop_last: drop the tail instead of padding to a multiple of ``num_replicas``.
    """

    def __init__(
        self,
        dataset: ClipDataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.clip_dataset = dataset
        dataset.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.clip_dataset.set_epoch(epoch)


def interleaved_order(num_videos: int, clips_per_video: int) -> list[int]:
    """Item indices of a video-major dataset (item ``v * clips_per_video + c`` is clip ``c`` of video ``v``) taken
    round-robin over the videos: clip 0 of every video, then clip 1 of every video, ...

    Example:
        >>> interleaved_order(3, 2)
        [0, 2, 4, 1, 3, 5]
    """
    if num_videos < 0 or clips_per_video < 1:
        raise ValueError(f"interleaved_order: need num_videos >= 0 and clips_per_video >= 1, got {num_videos}, {clips_per_video}")
    return [v * clips_per_video + c for c in range(clips_per_video) for v in range(num_videos)]


class OrderSampler(Sampler[int]):
    """Serves a fixed list of item indices in order (Lightning wraps it for distributed runs like any sampler)."""

    def __init__(self, order: list[int]) -> None:
        self.order = [int(i) for i in order]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class ClipDataModule(L.LightningDataModule):
    """Clip loaders for pretraining and evaluation.

    Args:
        sources: training paths for :func:`stssl.data.sources.load_sources` (manifests, scene folders, KITTI raw,
            class folders, videos); None renders the ``world`` instead.
        val_sources: validation paths; None uses the world's validation seeds (or no validation when
            ``sources`` is given).
        world: procedural world name for :func:`stssl.worlds.ensure_world` when ``sources`` is None.
        world_train_seeds: one training scene per seed.
        world_val_seeds: one validation scene per seed.
        world_frames: frames per rendered scene.
        world_size: ``(H, W)`` rendered resolution.
        world_root: cache folder for rendered scenes (default ``$STSSL_CACHE`` or ``~/.cache/stssl/worlds``).
        backend: reader backend (``auto``, ``decord``, ``torchcodec``, ``pyav``, ``frames``).
        clip_len: frames per clip (ignored when ``offsets`` is set).
        frame_stride: frames between sampled frames.
        offsets: relative frame offsets, e.g. ``[-1, 0, 1]`` (clips become ``[c - s, c, c + s]``).
        size: output ``(H, W)`` of every clip.
        batch_size: clips per batch (per process).
        num_workers: DataLoader workers (persistent when > 0).
        clips_per_video: training items per video per epoch (each a random clip).
        train_clips: ``"random"`` (each training item a new random clip of its video every epoch) or ``"fixed"``
            (``clips_per_video`` evenly spaced clips per video, the same every epoch; only the augmentation
            changes): what a task that stores something per item (DeepCluster's pseudo-labels, a memory bank)
            needs for item ``i`` to mean the same clip from one epoch to the next.
        val_clips_per_video: evenly spaced validation clips per video.
        val_order: ``"video"`` (every clip of the first video in time order, then the next video) or
            ``"interleave"`` (round-robin over the videos: each batch mixes videos). Per-sample validation metrics
            do not depend on it; in-batch ones do: a contrastive task's retrieval accuracy among clips of one scene
            measures little, so give such tasks several validation videos and ``"interleave"``.
        on_decode_error: ``"skip"`` (log, count, serve another video) or ``"raise"``.
        augment: CPU random resized crop / flip / colour jitter in the workers (training only).
        crop_scale: ``(min, max)`` area fraction of the random crop.
        crop_ratio: ``(min, max)`` crop aspect relative to ``size``.
        hflip: flip probability.
        color_jitter: colour-jitter strength (0 = none).
        gpu_augment: apply :class:`stssl.transforms.gpu.GPUAugment` (same knobs) on the device instead of or in
            addition to the CPU ``augment`` (training only).
        seed: base seed of sampling, augmentation and shuffling.
        max_open_readers: readers each worker keeps open.
        pin_memory: pin host memory for faster transfer to an accelerator.
        drop_last: drop the last incomplete training batch.
        worker_start_method: ``"fork"``, ``"forkserver"`` or ``"spawn"`` for DataLoader workers. None (default):
            ``"forkserver"`` when the backend in use is decord (``backend="decord"``, or ``"auto"`` with decord
            installed) and ``num_workers > 0``, else the platform default (see the module docstring).
        val_gt: validation samples carry ``depth`` and ``world_from_camera`` when every validation record has a
            scene folder with ``depth.npz`` and ``poses.txt`` (else no GT keys, logged at INFO).
    """

    def __init__(
        self,
        sources: list[str] | None = None,
        val_sources: list[str] | None = None,
        world: str | None = "driving",
        world_train_seeds: tuple[int, ...] = (0, 1, 2, 3),
        world_val_seeds: tuple[int, ...] = (1000,),
        world_frames: int = 64,
        world_size: tuple[int, int] = (96, 288),
        world_root: str | None = None,
        backend: str = "auto",
        clip_len: int = 8,
        frame_stride: int = 1,
        offsets: list[int] | None = None,
        size: tuple[int, int] = (64, 192),
        batch_size: int = 8,
        num_workers: int = 0,
        clips_per_video: int = 1,
        train_clips: str = "random",
        val_clips_per_video: int = 1,
        val_order: str = "video",
        on_decode_error: str = "skip",
        augment: bool = True,
        crop_scale: tuple[float, float] = (0.6, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.0,
        gpu_augment: bool = False,
        seed: int = 0,
        max_open_readers: int = 8,
        pin_memory: bool = False,
        drop_last: bool = True,
        worker_start_method: str | None = None,
        val_gt: bool = True,
    ) -> None:
        super().__init__()
        if sources is None and world is None:
            raise ValueError("ClipDataModule: give sources (paths) or a world name to render")
        if on_decode_error not in ON_DECODE_ERROR:
            raise ValueError(f"ClipDataModule: on_decode_error must be 'raise' or 'skip', got {on_decode_error!r}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"ClipDataModule: need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if train_clips not in ("random", "fixed"):
            raise ValueError(f"ClipDataModule: train_clips must be 'random' or 'fixed', got {train_clips!r}")
        if val_order not in VAL_ORDERS:
            raise ValueError(f"ClipDataModule: val_order must be one of {VAL_ORDERS}, got {val_order!r}")
        self.save_hyperparameters(logger=False)
        self.sources = None if sources is None else [str(s) for s in sources]
        self.val_sources = None if val_sources is None else [str(s) for s in val_sources]
        self.world = world
        self.world_train_seeds, self.world_val_seeds = tuple(world_train_seeds), tuple(world_val_seeds)
        self.world_frames, self.world_size = world_frames, (int(world_size[0]), int(world_size[1]))
        self.world_root = world_root or default_world_root()
        self.backend, self.clip_len, self.frame_stride = backend, clip_len, frame_stride
        self.offsets = None if offsets is None else [int(o) for o in offsets]
        self.size = (int(size[0]), int(size[1]))
        self.batch_size, self.num_workers = batch_size, num_workers
        self.clips_per_video, self.val_clips_per_video = clips_per_video, val_clips_per_video
        self.train_clips, self.val_order = train_clips, val_order
        self.on_decode_error = on_decode_error
        self.augment = augment
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.hflip, self.color_jitter, self.gpu_augment = hflip, color_jitter, gpu_augment
        self.seed, self.max_open_readers = seed, max_open_readers
        self.pin_memory, self.drop_last = pin_memory, drop_last
        if worker_start_method not in (None, "fork", "forkserver", "spawn"):
            raise ValueError(
                f"ClipDataModule: worker_start_method must be None, 'fork', 'forkserver' or 'spawn', got {worker_start_method!r}"
            )
        self.worker_start_method = worker_start_method
        self.val_gt = bool(val_gt)
        self.train_dataset: ClipDataset | None = None
        self.val_dataset: ClipDataset | None = None
        self._gpu_aug: torch.nn.Module | None = None
        self._reported: dict[str, int] = {}
        self._last_epoch = -1

    # ------------------------------------------------------------------ data preparation
    def _world_scenes(self, seeds: tuple[int, ...]) -> list[Path]:
        from stssl.worlds import ensure_world

        assert self.world is not None
        h, w = self.world_size
        return [
            Path(ensure_world(self.world, self.world_root, frames=self.world_frames, height=h, width=w, seed=s))
            for s in seeds
        ]

    def prepare_data(self) -> None:
        """Render (or find cached) world scenes when no sources are given (rank 0 only)."""
        if self.sources is None:
            self._world_scenes(self.world_train_seeds)
        if self.val_sources is None and self.sources is None:
            self._world_scenes(self.world_val_seeds)

    def _train_records(self) -> list[VideoRecord]:
        if self.sources is not None:
            return load_sources(self.sources)
        return [r for d in self._world_scenes(self.world_train_seeds) for r in scene_records(d)]

    def _val_records(self) -> list[VideoRecord] | None:
        if self.val_sources is not None:
            return load_sources(self.val_sources)
        if self.sources is None and self.world_val_seeds:
            return [r for d in self._world_scenes(self.world_val_seeds) for r in scene_records(d)]
        return None

    def _dataset(self, records: list[VideoRecord], train: bool, load_gt: bool = False) -> ClipDataset:
        transform = None
        if train and self.augment:
            from stssl.transforms.functional import ClipAugment

            transform = ClipAugment(
                self.size, scale=self.crop_scale, ratio=self.crop_ratio, hflip=self.hflip, color_jitter=self.color_jitter
            )
        return ClipDataset(
            records,
            clip_len=self.clip_len,
            frame_stride=self.frame_stride,
            offsets=self.offsets,
            size=self.size,
            mode="random" if train and self.train_clips == "random" else "uniform",
            clips_per_video=self.clips_per_video if train else self.val_clips_per_video,
            backend=self.backend,
            transform=transform,
            seed=self.seed,
            on_decode_error=self.on_decode_error,
            max_open_readers=self.max_open_readers,
            load_gt=load_gt,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (reads manifests and calibrations; opens no video)."""
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = self._dataset(self._train_records(), train=True)
        if stage in (None, "fit", "validate") and self.val_dataset is None:
            records = self._val_records()
            if records:
                self.val_dataset = self._dataset(records, train=False, load_gt=self.val_gt and _has_gt(records))

    def val_scene_dirs(self) -> list[str]:
        """The validation records' scene folders, unique, in order (``[]`` without validation or scene folders).

        Call after :meth:`prepare_data` (world scenes are rendered there); builds the validation dataset if
        :meth:`setup` has not. Folders are resolved paths as the records hold them (absolute for worlds).
        """
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        return list(dict.fromkeys(r.scene_dir for r in self.val_dataset.records if r.scene_dir))

    @property
    def val_has_gt(self) -> bool:
        """Whether validation batches carry ``depth`` and ``world_from_camera`` (after :meth:`setup`)."""
        return self.val_dataset is not None and self.val_dataset.load_gt

    # ------------------------------------------------------------------ loaders
    def _distributed(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def worker_context(self) -> str | None:
        """The start method the loaders use for their workers (None: no workers, or the platform default)."""
        if self.num_workers == 0:
            return None
        if self.worker_start_method is not None:
            return self.worker_start_method
        decord = self.backend == "decord" or (self.backend == "auto" and "decord" in available_backends())
        return "forkserver" if decord else None

    def _loader(self, dataset: ClipDataset, sampler: Any, drop_last: bool) -> DataLoader:
        context = self.worker_context()
        if context == "forkserver":
            _preload_forkserver()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            multiprocessing_context=context,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled random clips; reshuffled and resampled every epoch (:class:`EpochSampler`)."""
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        replicas, rank = self._distributed()
        sampler = EpochSampler(self.train_dataset, replicas, rank, shuffle=True, seed=self.seed)
        return self._loader(self.train_dataset, sampler, self.drop_last and len(sampler) >= self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        """Evenly spaced clips in ``val_order``, no random augmentation (an empty list when there is no
        validation)."""
        if self.val_dataset is None:
            self.setup("validate")
        if self.val_dataset is None:
            return []
        sampler = None
        if self.val_order == "interleave":
            sampler = OrderSampler(interleaved_order(len(self.val_dataset.records), self.val_dataset.clips_per_video))
        return self._loader(self.val_dataset, sampler, drop_last=False)

    # ------------------------------------------------------------------ device side
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``video`` -> float32 in ``[0, 1]`` on the batch's device; GPU augmentation when training.

        ``depth`` and ``world_from_camera`` (validation ground truth, float32 already) are left as they are.
        """
        video = batch["video"]
        if not video.is_floating_point():
            batch["video"] = video.to(torch.float32).div_(255.0)
        trainer = getattr(self, "trainer", None)
        training = trainer is not None and trainer.training
        if training:
            self._report_on_new_epoch(trainer)
        if self.gpu_augment and training:
            if "depth" in batch:
                raise ValueError(
                    "ClipDataModule: gpu_augment would crop/flip batch['video'] but not batch['depth']; "
                    "train without ground truth or set gpu_augment=False"
                )
            if self._gpu_aug is None:
                from stssl.transforms.gpu import GPUAugment

                self._gpu_aug = GPUAugment(
                    self.size, scale=self.crop_scale, ratio=self.crop_ratio, hflip=self.hflip,
                    color_jitter=self.color_jitter,
                )
            batch["video"], K = self._gpu_aug(batch["video"], batch.get("K"))
            if K is not None:
                batch["K"] = K
        return batch

    # ------------------------------------------------------------------ skipped files
    def skipped_counts(self) -> dict[str, int]:
        """Samples served from a replacement video because theirs was unreadable, per split (all workers)."""
        out = {}
        for split, ds in (("train", self.train_dataset), ("val", self.val_dataset)):
            if ds is not None:
                out[split] = ds.skipped
        return out

    def report_skipped(self) -> dict[str, int]:
        """Log (warning) the skip counts that grew since the last report; returns all counts."""
        counts = self.skipped_counts()
        for split, n in counts.items():
            if n > self._reported.get(split, 0):
                logger.warning(
                    "ClipDataModule: %d %s samples so far came from a replacement video (unreadable or too short "
                    "videos are logged by the worker that found them)", n, split,
                )
                self._reported[split] = n
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.logger is not None and counts:
            trainer.logger.log_metrics({f"data/skipped_{k}": float(v) for k, v in counts.items()}, step=trainer.global_step)
        return counts

    def _report_on_new_epoch(self, trainer: Any) -> None:
        epoch = int(trainer.current_epoch)
        if epoch != self._last_epoch:
            if self._last_epoch >= 0:
                self.report_skipped()
            self._last_epoch = epoch

    def teardown(self, stage: str | None = None) -> None:
        """Report skip counts at the end of a run."""
        self.report_skipped()


def _has_gt(records: list[VideoRecord]) -> bool:
    """Every record has a scene folder holding depth and poses (logs at INFO why not)."""
    for rec in records:
        if not rec.scene_dir:
            logger.info("ClipDataModule: validation without ground truth: %s has no scene_dir", rec.path)
            return False
        for name in (DEPTH_FILE, POSES_FILE):
            if not (Path(rec.scene_dir) / name).is_file():
                logger.info("ClipDataModule: validation without ground truth: %s is missing", Path(rec.scene_dir) / name)
                return False
    return True


def _preload_forkserver() -> None:
    """Have the forkserver import torch and the dataset module once, so workers fork from a warm process.

    Sets the process-wide forkserver preload list (``__main__``, CPython's default, plus ``torch`` and
    ``stssl.data.dataset``); it takes effect only if the server has not started yet. Importing these starts no
    decoder, so the server stays safe to fork.
    """
    import multiprocessing

    multiprocessing.get_context("forkserver").set_forkserver_preload(["__main__", "torch", "stssl.data.dataset"])
