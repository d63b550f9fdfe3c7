"""``ClipDataset``: clips of frames (plus intrinsics and labels) from a list of :class:`VideoRecord`.

Each item is a :class:`stssl.types.ClipSample`: ``video`` uint8 ``(C, T, H, W)`` at ``size``, ``index``,
``frame_indices`` ``(T,)``, ``K`` float32 ``(3, 3)`` at the output resolution when the record has intrinsics,
and ``label`` when known. Samples are a pure function of ``(seed, epoch, index)``.

Decoding: each process (the main one or a DataLoader worker) keeps a small LRU of open readers, so a video is
opened once and read many times; frame counts come from the readers and are cached per record.

Corrupt inputs: with ``on_decode_error="skip"`` a record whose video cannot be read (or is too short for the
clip) is logged once per process, counted, and replaced by another record chosen deterministically from
``(seed, epoch, index)``. The counts live in shared memory so they survive worker processes
(:attr:`ClipDataset.skipped`). With ``"raise"`` the error is re-raised naming the record's path.

Ground truth (``load_gt=True``, for depth/pose validation): every record must have a ``scene_dir`` in the stssl
scene format (:mod:`stssl.worlds.scene_io`); a record without one is an error at construction naming it (so a
batch never mixes samples with and without GT, which collate could not stack). Samples gain ``depth`` float32
``(1, T, H, W)`` (z metres, 0 = invalid) and ``world_from_camera`` float32 ``(T, 4, 4)`` of the sampled frames.
Depth is resized with nearest neighbour (pixel centres, ``nearest-exact``) and follows the transform's crop and
flip: :class:`stssl.transforms.functional.ClipAugment` (through its ``last_params``) and
:class:`~stssl.transforms.functional.ClipResize` are supported, any other transform is refused. A flipped clip is
the image of the mirrored world (:func:`stssl.transforms.functional.hflip_intrinsics`), so its poses are
mirrored too: ``S @ world_from_camera @ S`` with ``S = diag(-1, 1, 1, 1)``. Each process keeps the ground truth
of at most ``max_cached_scenes`` scenes (an LRU), so ``depth.npz`` is read once per scene, not per sample.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from stssl.data.readers import VideoReadError, open_video
from stssl.data.sampling import (
    clip_pattern,
    num_valid_anchors,
    offset_pattern,
    place_pattern,
    random_anchor,
    sliding_anchors,
    uniform_anchors,
)
from stssl.data.sources import VideoRecord, load_sources
from stssl.geometry.camera import scale_intrinsics
from stssl.seeding import mix_seed
from stssl.transforms.functional import ClipAugment, ClipResize, crop_clip, hflip_clip, resize_clip
from stssl.types import ClipSample
from stssl.worlds.scene_io import DEPTH_FILE, POSES_FILE, SceneFormatError, read_depth, read_poses

__all__ = ["ClipDataset", "MODES", "ON_DECODE_ERROR", "Transform"]

logger = logging.getLogger(__name__)

MODES = ("random", "uniform", "sliding")
ON_DECODE_ERROR = ("raise", "skip")
#: ``transform(video (C, T, H, W) uint8, K (3, 3) or None, generator) -> (video, K)``, e.g. ``ClipAugment``.
Transform = Callable[[torch.Tensor, "torch.Tensor | None", torch.Generator], "tuple[torch.Tensor, torch.Tensor | None]"]

_MAX_SLOTS = 256  # shared counter slots: 0 = epoch, 1 = main process, 2 + worker id (mod) = workers


class _TooShort(ValueError):
    """A video has fewer frames than the sampling pattern spans."""


class _ProcessState:
    """What one process keeps: open readers (LRU), frame counts, records known to be bad, files logged."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.readers: OrderedDict[int, Any] = OrderedDict()
        self.gt: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()  # scene_dir -> (depth, poses)
        self.num_frames: dict[int, int] = {}
        self.bad: dict[int, str] = {}
        self.logged: set[str] = set()

    def close(self) -> None:
        self.gt.clear()
        while self.readers:
            _, reader = self.readers.popitem(last=False)
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - closing must never hide the real error
                pass


class ClipDataset(Dataset):
    """Clips sampled from videos, with intrinsics that follow every resize and crop.

    Args:
        records: :class:`VideoRecord` objects, or paths for :func:`stssl.data.sources.load_sources`.
        clip_len: ``T``, frames per clip (ignored when ``offsets`` is given).
        frame_stride: frames between consecutive samples (per unit offset with ``offsets``).
        offsets: relative frame offsets, e.g. ``(-1, 0, 1)``: the clip is ``[c - s, c, c + s]`` around a centre
            ``c`` (``T = len(offsets)``).
        size: output ``(H, W)``; None keeps each video's size (then a batch needs equal sizes).
        mode: ``"random"`` (a random clip per item; training), ``"uniform"`` (``clips_per_video`` evenly spaced
            clips; evaluation) or ``"sliding"`` (every window of every video, ``sliding_step`` apart).
        clips_per_video: items per video in ``random``/``uniform`` mode.
        backend: reader backend for :func:`stssl.data.readers.open_video` (a record's own hint wins).
        transform: ``transform(video, K, generator) -> (video, K)`` on the uint8 ``(C, T, H, W)`` clip at the
            video's resolution (e.g. :class:`stssl.transforms.functional.ClipAugment`); the result is resized to
            ``size`` if it is not already.
        seed: base seed; items are a function of ``(seed, epoch, index)``.
        on_decode_error: ``"raise"`` or ``"skip"`` (serve another record, log and count).
        max_open_readers: readers kept open per process (0 opens and closes on every read).
        sliding_step: frames between window starts in ``sliding`` mode (default: the window's span).
        load_gt: add ``depth`` and ``world_from_camera`` from each record's ``scene_dir`` (see the module
            docstring); every record needs a ``scene_dir`` with ``depth.npz`` and ``poses.txt``, and
            ``transform`` must be None, a ``ClipAugment`` or a ``ClipResize``.
        max_cached_scenes: scenes whose ground truth each process keeps in memory (0 rereads every sample).

    Shape:
        ``sample["video"]``: uint8 ``(C, T, H, W)`` (a strided view when no resize or transform ran);
        ``sample["frame_indices"]``: int64 ``(T,)``; ``sample["K"]``: float32 ``(3, 3)``;
        ``sample["depth"]``: float32 ``(1, T, H, W)``; ``sample["world_from_camera"]``: float32 ``(T, 4, 4)``.

    Example:
        >>> ds = ClipDataset([VideoRecord("a.mp4"), VideoRecord("b.mp4")], clip_len=4, clips_per_video=3)
        >>> len(ds), ds.num_frames_per_clip
        (6, 4)
    """

    def __init__(
        self,
        records: Sequence[VideoRecord] | Sequence[str] | str,
        *,
        clip_len: int = 8,
        frame_stride: int = 1,
        offsets: Sequence[int] | None = None,
        size: tuple[int, int] | None = None,
        mode: str = "random",
        clips_per_video: int = 1,
        backend: str = "auto",
        transform: Transform | None = None,
        seed: int = 0,
        on_decode_error: str = "raise",
        max_open_readers: int = 8,
        sliding_step: int | None = None,
        load_gt: bool = False,
        max_cached_scenes: int = 8,
    ) -> None:
        if isinstance(records, (str, Path)) or (records and not isinstance(records[0], VideoRecord)):
            records = load_sources(records)  # type: ignore[arg-type]
        self.records: list[VideoRecord] = list(records)  # type: ignore[arg-type]
        if not self.records:
            raise ValueError("ClipDataset: records is empty; give at least one video")
        if mode not in MODES:
            raise ValueError(f"ClipDataset: mode must be one of {MODES}, got {mode!r}")
        if on_decode_error not in ON_DECODE_ERROR:
            raise ValueError(f"ClipDataset: on_decode_error must be one of {ON_DECODE_ERROR}, got {on_decode_error!r}")
        if not isinstance(clips_per_video, int) or clips_per_video < 1:
            raise ValueError(f"ClipDataset: clips_per_video must be a positive int, got {clips_per_video!r}")
        if not isinstance(max_open_readers, int) or max_open_readers < 0:
            raise ValueError(f"ClipDataset: max_open_readers must be an int >= 0, got {max_open_readers!r}")
        if size is not None:
            if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
                raise ValueError(f"ClipDataset: size must be (H, W) positive ints or None, got {size!r}")
            size = (int(size[0]), int(size[1]))
        if transform is not None and not callable(transform):
            raise TypeError(f"ClipDataset: transform must be callable (video, K, generator), got {transform!r}")
        if not isinstance(max_cached_scenes, int) or max_cached_scenes < 0:
            raise ValueError(f"ClipDataset: max_cached_scenes must be an int >= 0, got {max_cached_scenes!r}")
        self.load_gt, self.max_cached_scenes = bool(load_gt), max_cached_scenes
        if self.load_gt:
            self._check_gt_sources(transform)
        self.pattern = offset_pattern(offsets, frame_stride) if offsets is not None else clip_pattern(clip_len, frame_stride)
        self.clip_len, self.frame_stride = clip_len, frame_stride
        self.offsets = None if offsets is None else tuple(offsets)
        self.size, self.mode, self.clips_per_video = size, mode, clips_per_video
        self.backend, self.transform, self.seed = backend, transform, int(seed)
        self.on_decode_error, self.max_open_readers = on_decode_error, max_open_readers
        span = max(self.pattern) - min(self.pattern) + 1
        self.sliding_step = span if sliding_step is None else int(sliding_step)
        if self.sliding_step < 1:
            raise ValueError(f"ClipDataset: sliding_step must be >= 1, got {sliding_step!r}")
        self._what = (
            f"offsets={self.offsets} with frame_stride={frame_stride}"
            if offsets is not None
            else f"clip_len={clip_len} with frame_stride={frame_stride}"
        )
        # Shared across DataLoader workers (torch shares the storage when pickling for a worker).
        self._shared = torch.zeros(_MAX_SLOTS + 2, dtype=torch.int64).share_memory_()
        self._state = _ProcessState()
        self._cum_windows: list[int] = []
        if mode == "sliding":
            self._build_windows()
            self.close()  # never fork DataLoader workers with open decoders (decord's threads deadlock on fork)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def num_frames_per_clip(self) -> int:
        """``T``: frames in every clip."""
        return len(self.pattern)

    @property
    def epoch(self) -> int:
        return int(self._shared[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: items are a function of ``(seed, epoch, index)``; visible to running workers."""
        self._shared[0] = int(epoch)

    @property
    def skipped(self) -> int:
        """Samples served from a replacement record because their own could not be read (all processes)."""
        return int(self._shared[1:].sum())

    @property
    def skipped_files(self) -> dict[str, str]:
        """Paths found unreadable by *this* process, with the reason (workers keep their own)."""
        return {self.records[i].path: why for i, why in self._proc().bad.items()}

    def _count_skip(self) -> None:
        info = get_worker_info()
        slot = 1 if info is None else 2 + info.id % _MAX_SLOTS
        self._shared[slot] += 1

    def _proc(self) -> _ProcessState:
        if self._state.pid != os.getpid():  # forked into a worker: never share the parent's open files
            self._state = _ProcessState()
        return self._state

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_state"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._state = _ProcessState()

    def close(self) -> None:
        """Close this process's open readers."""
        self._proc().close()

    # ------------------------------------------------------------------ ground truth
    def _check_gt_sources(self, transform: Any) -> None:
        """``load_gt``: every record has a scene folder with depth and poses; the transform can be followed."""
        missing = [r.path for r in self.records if not r.scene_dir]
        if missing:
            raise ValueError(
                f"ClipDataset: load_gt=True needs a scene_dir (stssl scene format) for every record, but "
                f"{len(missing)} of {len(self.records)} have none, e.g. {missing[:3]}; give scene folders "
                "(or a manifest with a scene_dir column) or set load_gt=False"
            )
        for rec in self.records:
            for name in (DEPTH_FILE, POSES_FILE):
                path = Path(rec.scene_dir) / name  # type: ignore[arg-type]
                if not path.is_file():
                    raise SceneFormatError(
                        f"{path}: missing; load_gt=True reads {DEPTH_FILE} and {POSES_FILE} from the scene_dir of "
                        f"record {rec.path}"
                    )
        if transform is not None and not isinstance(transform, (ClipAugment, ClipResize)):
            raise TypeError(
                f"ClipDataset: load_gt=True can make depth follow the crops and flips of ClipAugment and ClipResize "
                f"only, not {transform!r}; use one of those (or none) for ground-truth datasets"
            )

    def _scene_gt(self, rec_idx: int) -> tuple[np.ndarray, np.ndarray]:
        """``(depth (N, H, W) float32, world_from_camera (N, 4, 4) float64)`` of a record's scene (LRU cached)."""
        scene_dir = str(self.records[rec_idx].scene_dir)
        cache = self._proc().gt
        if scene_dir in cache:
            cache.move_to_end(scene_dir)
            return cache[scene_dir]
        depth, poses = read_depth(scene_dir), read_poses(scene_dir)
        if len(poses) != len(depth):
            raise SceneFormatError(
                f"{Path(scene_dir) / POSES_FILE}: {len(poses)} poses but {DEPTH_FILE} has {len(depth)} frames"
            )
        if self.max_cached_scenes > 0:
            cache[scene_dir] = (depth, poses)
            while len(cache) > self.max_cached_scenes:
                cache.popitem(last=False)
        return depth, poses

    def _gt_clip(
        self, rec_idx: int, frame_indices: torch.Tensor, native: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth ``(1, T, H, W)`` at the video's native size and poses ``(T, 4, 4)`` of the sampled frames."""
        depth_all, poses_all = self._scene_gt(rec_idx)
        idx = frame_indices.numpy()
        if int(idx.max()) >= len(depth_all):
            raise SceneFormatError(
                f"{Path(str(self.records[rec_idx].scene_dir)) / DEPTH_FILE}: has {len(depth_all)} frames but "
                f"{self.records[rec_idx].path} was sampled at frame {int(idx.max())}; video and ground truth disagree"
            )
        depth = torch.from_numpy(depth_all[idx])[None]  # fancy indexing copies: (1, T, Hd, Wd)
        if tuple(depth.shape[-2:]) != native:  # GT at the calibration size, video re-encoded at another
            depth, _ = resize_clip(depth, native, interpolation="nearest-exact")
        return depth, torch.from_numpy(poses_all[idx])

    def _follow_transform(
        self, depth: torch.Tensor, poses: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the geometry of the transform's last call (crop, resize, flip) to depth, mirror flipped poses."""
        transform = self.transform
        if isinstance(transform, ClipAugment):
            params = transform.last_params
            depth, _ = crop_clip(depth, *params["crop"])
            depth, _ = resize_clip(depth, transform.size, interpolation="nearest-exact")
            if params["flipped"]:
                depth, _ = hflip_clip(depth)
                S = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=poses.dtype))
                poses = S @ poses @ S
        elif isinstance(transform, ClipResize):  # the same steps as ClipResize.__call__
            out_h, out_w = transform.size
            if transform.center_crop:
                H, W = depth.shape[-2:]
                scale = max(out_h / H, out_w / W)
                mid = (max(out_h, round(H * scale)), max(out_w, round(W * scale)))
                depth, _ = resize_clip(depth, mid, interpolation="nearest-exact")
                top, left = int(round((mid[0] - out_h) / 2.0)), int(round((mid[1] - out_w) / 2.0))
                depth, _ = crop_clip(depth, top, left, out_h, out_w)
            else:
                depth, _ = resize_clip(depth, transform.size, interpolation="nearest-exact")
        return depth, poses

    # ------------------------------------------------------------------ readers
    def _reader(self, rec_idx: int) -> Any:
        proc = self._proc()
        reader = proc.readers.get(rec_idx)
        if reader is not None:
            proc.readers.move_to_end(rec_idx)
            return reader
        rec = self.records[rec_idx]
        reader = open_video(rec.path, backend=rec.backend or self.backend)
        proc.num_frames[rec_idx] = len(reader)
        if self.max_open_readers > 0:
            proc.readers[rec_idx] = reader
            while len(proc.readers) > self.max_open_readers:
                _, old = proc.readers.popitem(last=False)
                old.close()
        return reader

    def _release(self, rec_idx: int, reader: Any) -> None:
        if self.max_open_readers == 0:
            reader.close()

    def num_frames(self, rec_idx: int) -> int:
        """Frames in record ``rec_idx`` (asks its reader once per process)."""
        proc = self._proc()
        if rec_idx not in proc.num_frames:
            self._release(rec_idx, self._reader(rec_idx))
        return proc.num_frames[rec_idx]

    def _build_windows(self) -> None:
        counts = []
        for i, rec in enumerate(self.records):
            try:
                n = rec.num_frames if rec.num_frames is not None else self.num_frames(i)
            except VideoReadError as err:
                if self.on_decode_error == "raise":
                    raise VideoReadError(f"{rec.path}: {err}") from err
                self._mark_bad(i, str(err))
                n = 0
            valid = num_valid_anchors(n, self.pattern) > 0
            counts.append(len(sliding_anchors(n, self.pattern, self.sliding_step, what=self._what)) if valid else 0)
            if counts[-1] == 0 and i not in self._proc().bad:
                self._mark_bad(i, f"too short for {self._what} ({n} frames)")
        self._cum_windows = np.cumsum([0, *counts]).tolist()
        if self._cum_windows[-1] == 0:
            raise ValueError(f"ClipDataset: no video has enough frames for {self._what} ({len(self.records)} records)")

    # ------------------------------------------------------------------ items
    def __len__(self) -> int:
        if self.mode == "sliding":
            return self._cum_windows[-1]
        return len(self.records) * self.clips_per_video

    def _locate(self, index: int) -> tuple[int, int]:
        if self.mode == "sliding":
            rec_idx = bisect_right(self._cum_windows, index) - 1
            return rec_idx, index - self._cum_windows[rec_idx]
        return divmod(index, self.clips_per_video)

    def _frame_indices(self, rec_idx: int, clip_idx: int, generator: torch.Generator) -> torch.Tensor:
        n = self.num_frames(rec_idx)
        if num_valid_anchors(n, self.pattern) == 0:
            raise _TooShort(f"{self.records[rec_idx].path}: video too short: {self._what} needs "
                            f"{max(self.pattern) - min(self.pattern) + 1} frames but num_frames={n}")
        if self.mode == "random":
            anchor = random_anchor(n, self.pattern, generator=generator, what=self._what)
        elif self.mode == "uniform":
            anchor = uniform_anchors(n, self.pattern, self.clips_per_video, what=self._what)[clip_idx]
        else:
            anchors = sliding_anchors(n, self.pattern, self.sliding_step, what=self._what)
            anchor = anchors[clip_idx % len(anchors)]
        return place_pattern([anchor], self.pattern)[0]

    def _load(self, index: int, rec_idx: int, clip_idx: int, generator: torch.Generator) -> ClipSample:
        rec = self.records[rec_idx]
        reader = self._reader(rec_idx)
        try:
            frame_indices = self._frame_indices(rec_idx, clip_idx, generator)
            frames = torch.as_tensor(reader.read(frame_indices.tolist()))  # (T, H, W, C) uint8
            native = (int(frames.shape[1]), int(frames.shape[2]))
        finally:
            self._release(rec_idx, reader)
        if frames.ndim != 4 or frames.dtype != torch.uint8 or frames.shape[0] != len(frame_indices):
            raise VideoReadError(f"{rec.path}: reader returned {tuple(frames.shape)} {frames.dtype}, "
                                 f"expected uint8 ({len(frame_indices)}, H, W, C)")
        video = frames.permute(3, 0, 1, 2)  # (C, T, H, W), a view
        K = None
        if rec.K is not None:
            K = torch.tensor(rec.K, dtype=torch.float64)  # a copy: transforms may work in place
            ch, cw = rec.calib_size or native
            if (ch, cw) != native:
                K = scale_intrinsics(K, native[1] / cw, native[0] / ch)
        gt = self._gt_clip(rec_idx, frame_indices, native) if self.load_gt else None
        if self.transform is not None:
            video, K = self.transform(video, K, generator)
            if gt is not None:
                gt = self._follow_transform(*gt)
        if self.size is not None and tuple(video.shape[-2:]) != self.size:
            video, K = resize_clip(video, self.size, K)
        if gt is not None and tuple(gt[0].shape[-2:]) != tuple(video.shape[-2:]):
            gt = (resize_clip(gt[0], tuple(video.shape[-2:]), interpolation="nearest-exact")[0], gt[1])
        sample: ClipSample = {
            # Possibly a strided view of the reader's (T, H, W, C) frames: collate's stack copies it once anyway.
            "video": video,
            "index": index,
            "frame_indices": frame_indices,
        }
        if K is not None:
            sample["K"] = K.to(torch.float32)
        if rec.label is not None:
            sample["label"] = rec.label
        if gt is not None:
            sample["depth"] = gt[0].contiguous()
            sample["world_from_camera"] = gt[1].to(torch.float32)
        return sample

    def _mark_bad(self, rec_idx: int, why: str) -> None:
        proc = self._proc()
        proc.bad[rec_idx] = why
        reader = proc.readers.pop(rec_idx, None)
        if reader is not None:
            reader.close()
        path = self.records[rec_idx].path
        if path not in proc.logged:
            proc.logged.add(path)
            logger.warning("ClipDataset: skipping unreadable video %s (%s)", path, why)

    def __getitem__(self, index: int) -> ClipSample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"ClipDataset: index {index} out of range for {n} items")
        index = index % n
        epoch = self.epoch
        rec_idx, clip_idx = self._locate(index)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index))
        proc = self._proc()
        if rec_idx not in proc.bad:
            try:
                return self._load(index, rec_idx, clip_idx, generator)
            except (VideoReadError, _TooShort) as err:
                if self.on_decode_error == "raise":
                    path = self.records[rec_idx].path
                    msg = str(err) if path in str(err) else f"{path}: {err}"
                    raise type(err)(msg) from err
                self._mark_bad(rec_idx, str(err))
        # Skip: serve another record, chosen from (seed, epoch, index) alone, so every process agrees.
        self._count_skip()
        order = torch.randperm(len(self.records), generator=torch.Generator().manual_seed(
            mix_seed(self.seed, epoch, index, 1)))
        last = proc.bad.get(rec_idx, "")
        for other in order.tolist():
            if other in proc.bad:
                continue
            generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index, 2))
            try:
                return self._load(index, other, clip_idx, generator)
            except (VideoReadError, _TooShort) as err:
                self._mark_bad(other, str(err))
                last = str(err)
        raise RuntimeError(
            f"ClipDataset: all {len(self.records)} records are unreadable or too short for {self._what} "
            f"(last error: {last})"
        )

    def __repr__(self) -> str:
        return (
            f"ClipDataset({len(self.records)} records, {len(self)} items, mode={self.mode!r}, T={len(self.pattern)}, "
            f"pattern={self.pattern}, size={self.size}, on_decode_error={self.on_decode_error!r}, "
            f"load_gt={self.load_gt})"
        )
