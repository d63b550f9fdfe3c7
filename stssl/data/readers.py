"""Frame-exact video readers: decord, torchcodec, PyAV and folders of frames behind one protocol.

Every reader returns uint8 ``(T, H, W, 3)`` RGB frames for the frame indices asked, in the order asked
(duplicates allowed). Frame ``i`` is defined as the ``i``-th frame of a plain sequential decode (PyAV decoding
every frame in order), and every backend returns exactly that frame:

- At open, the file is demuxed once without decoding (cheap) to build a :class:`FrameIndex`: the presentation
  timestamp (pts) of every frame, which packets are keyframes, and the demux order. The index is cached per
  ``(path, size, mtime)`` and travels with a pickled reader.
- ``pyav`` seeks to the last keyframe at or before the first wanted frame, drops packets until that keyframe's
  packet (so decoding never starts on a non-keyframe even where the container's seek is imprecise, as in
  MPEG-PS), decodes forward and matches decoded frames to indices by pts. Where pts are missing or not unique
  it decodes sequentially from the start (documented fallback; logged).
- ``decord`` and ``torchcodec`` use their own (faster) random access only where it was verified exact: a
  container whose seeking keeps keyframe flags (MP4/MOV, Matroska/WebM, AVI, ASF), the same frame count as the
  index and, for decord, the same timestamps. Otherwise (e.g. MPEG-PS/TS or raw streams, where both land on the
  wrong frame) the reader reads through the verified PyAV path and says so in ``reader.fallback``.
- Within one :meth:`~VideoReader.read` frames are decoded in ascending order (never seeking backwards) and
  reordered afterwards; a reader reuses its decoder position across calls, so sequential clips are cheap.

All three decode with FFmpeg and convert YUV to RGB with the same swscale settings, so CPU backends are
bit-equal. ``torchcodec`` on CUDA converts colours on the GPU (NVDEC + NPP) and may differ by rounding.

Example:
    >>> import tempfile, os
    >>> "pyav" in available_backends()
    True
    >>> open_video("/no/such/video.mp4")
    Traceback (most recent call last):
      ...
    stssl.data.readers.VideoReadError: /no/such/video.mp4: no such file or directory
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "VideoReadError",
    "VideoReader",
    "FrameIndex",
    "PyAVReader",
    "DecordReader",
    "TorchCodecReader",
    "FramesReader",
    "READERS",
    "available_backends",
    "open_video",
    "scan_video",
]

log = logging.getLogger(__name__)

#: Container formats (PyAV ``format.name``) where decord's and torchcodec's own seeking was verified exact.
TRUSTED_SEEK_FORMATS: frozenset[str] = frozenset(
    {"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "asf"}
)
#: Image files a frame folder may hold (PIL decodes them all); sources.py detects frame folders with the same set.
FRAME_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


class VideoReadError(RuntimeError):
    """The one error every reader raises for bad input; the message names the file and the problem."""


@runtime_checkable
class VideoReader(Protocol):
    """What every backend provides.

    Attributes:
        path: the file or frame folder read.
        fps: frames per second (``nan`` when unknown, e.g. a frame folder without timestamps).
        size: ``(H, W)`` of every frame.
    """

    path: str
    fps: float
    size: tuple[int, int]

    def __len__(self) -> int:
        """Exact number of frames (that of a sequential decode)."""
        ...

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` (any order, duplicates allowed) as uint8 ``(T, H, W, 3)``, ``T = len(indices)``."""
        ...

    def close(self) -> None:
        """Release the decoder (a later ``read`` reopens it)."""
        ...

    def __enter__(self) -> VideoReader: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


# ----------------------------------------------------------------------------------------------------------
# Index


@dataclass(frozen=True)
class FrameIndex:
    """What one demux pass (no decoding) learns about a video's frames.

    Attributes:
        pts: int64 ``(N,)`` presentation timestamps in display order (frame ``i`` has ``pts[i]``).
        demux_pos: int64 ``(N,)`` position of frame ``i``'s packet in demux (decode) order.
        seek_ts: int64 ``(N,)`` ``min(pts, dts)`` of frame ``i``'s packet: the timestamp to seek to (some
            demuxers, e.g. MPEG-PS, seek by dts).
        packet_size: int64 ``(N,)`` bytes of frame ``i``'s packet (to reject partial packets after a seek).
        keyframes: int64 ``(K,)`` sorted frame indices whose packets are keyframes.
        time_base: seconds per pts tick.
        fps: frames per second.
        size: ``(H, W)``.
        format_name: PyAV's container format name (e.g. ``"matroska,webm"``).
        codec_name: the video codec (e.g. ``"h264"``).
        exact: whether pts are complete and unique, so frames can be found by seeking; if not, reads decode
            sequentially from the start and ``reason`` says why.
        reason: why ``exact`` is false (empty otherwise).
    """

    pts: np.ndarray
    demux_pos: np.ndarray
    seek_ts: np.ndarray
    packet_size: np.ndarray
    keyframes: np.ndarray
    time_base: Fraction
    fps: float
    size: tuple[int, int]
    format_name: str
    codec_name: str
    exact: bool
    reason: str = ""

    def __len__(self) -> int:
        return int(self.pts.shape[0])

    def keyframe_for(self, index: int) -> int:
        """The last keyframe at or before frame ``index`` (0 when none is)."""
        k = int(np.searchsorted(self.keyframes, index, side="right")) - 1
        return int(self.keyframes[k]) if k >= 0 else 0

    def seconds(self) -> np.ndarray:
        """float64 ``(N,)`` frame times in seconds from the first frame."""
        return (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)


_INDEX_CACHE: OrderedDict[tuple[str, int, int], FrameIndex] = OrderedDict()
_INDEX_CACHE_SIZE = 256


def _file_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _check_file(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        raise VideoReadError(f"{path}: is a directory; read frame folders with backend='frames'")
    if os.path.getsize(path) == 0:
        raise VideoReadError(f"{path}: empty file (0 bytes), not a video")
    return path


def scan_video(path: str | os.PathLike[str]) -> FrameIndex:
    """Demux ``path`` once (no decoding) and index its frames; cached per ``(path, size, mtime)``.

    Raises:
        VideoReadError: missing, empty, unreadable or non-video file, or a video without frames.
    """
    import av

    path = _check_file(path)
    key = _file_key(path)
    if key in _INDEX_CACHE:
        _INDEX_CACHE.move_to_end(key)
        return _INDEX_CACHE[key]
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: no video stream (format {container.format.name!r})")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            size = (int(ctx.height), int(ctx.width))
            rate = stream.average_rate or stream.guessed_rate
            time_base = stream.time_base
            pts_list: list[int | None] = []
            dts_list: list[int | None] = []
            size_list: list[int] = []
            key_list: list[bool] = []
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                pts_list.append(packet.pts)
                dts_list.append(packet.dts)
                size_list.append(int(packet.size))
                key_list.append(bool(packet.is_keyframe))
            format_name = str(container.format.name)
            codec_name = str(ctx.name)
    except VideoReadError:
        raise
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as error:
        raise VideoReadError(f"{path}: cannot open as a video ({type(error).__name__}: {error})") from error
    n = len(pts_list)
    if n == 0:
        raise VideoReadError(f"{path}: the video stream contains no frames")
    if size[0] <= 0 or size[1] <= 0:
        raise VideoReadError(f"{path}: the video stream has no valid frame size ({size[1]}x{size[0]})")
    if time_base is None:
        time_base = Fraction(1, 1)
    reason = ""
    if any(p is None for p in pts_list):
        reason = "some packets have no pts"
    elif len(set(pts_list)) != n:
        reason = "packet pts are not unique"
    elif not key_list[0]:
        reason = "the first packet is not a keyframe"
    if reason:
        pts = np.arange(n, dtype=np.int64)
        demux_pos = np.arange(n, dtype=np.int64)
        seek_ts = np.zeros(n, dtype=np.int64)
        packet_size = np.asarray(size_list, dtype=np.int64)
        keyframes = np.zeros(1, dtype=np.int64)
    else:
        raw = np.asarray(pts_list, dtype=np.int64)
        order = np.argsort(raw, kind="stable")  # display order -> demux position
        pts = raw[order]
        demux_pos = order.astype(np.int64)
        dts = np.asarray([d if d is not None else p for d, p in zip(dts_list, pts_list, strict=True)], dtype=np.int64)
        seek_ts = np.minimum(raw, dts)[order]
        packet_size = np.asarray(size_list, dtype=np.int64)[order]
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        keyframes = np.sort(rank[np.asarray(key_list, dtype=bool)])
        if keyframes[0] != 0:
            keyframes = np.concatenate([np.zeros(1, dtype=np.int64), keyframes])
    if rate:
        fps = float(rate)
    elif not reason and n > 1 and pts[-1] > pts[0]:
        fps = (n - 1) / (float(pts[-1] - pts[0]) * float(time_base))
    else:
        fps = float("nan")
    index = FrameIndex(
        pts=pts, demux_pos=demux_pos, seek_ts=seek_ts, packet_size=packet_size, keyframes=keyframes, time_base=Fraction(time_base), fps=fps,
        size=size, format_name=format_name, codec_name=codec_name, exact=not reason, reason=reason,
    )
    if reason:
        log.info("%s: %s; frames are read by sequential decoding", path, reason)
    _INDEX_CACHE[key] = index
    if len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
        _INDEX_CACHE.popitem(last=False)
    return index


def _prepare_indices(indices: Sequence[int] | torch.Tensor | np.ndarray, n: int, path: str) -> tuple[
    list[int], torch.Tensor
]:
    """Validate ``indices`` against ``n`` frames; return sorted unique indices and the inverse permutation."""
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.dim() != 1:
            raise VideoReadError(f"{path}: indices must be a 1-D integer sequence, got tensor {indices.dtype} "
                                 f"of shape {tuple(indices.shape)}")
        array = indices.cpu().numpy()
    else:
        try:
            array = np.asarray(indices)
        except (TypeError, ValueError) as error:
            raise VideoReadError(f"{path}: indices must be a 1-D integer sequence ({error})") from error
        if array.size == 0:
            array = array.astype(np.int64)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise VideoReadError(f"{path}: indices must be a 1-D integer sequence, got {array.dtype} "
                             f"of shape {array.shape}")
    array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= n)]
    if bad.size:
        raise VideoReadError(f"{path}: frame index {int(bad[0])} out of range; the video has {n} frames "
                             f"(valid 0..{n - 1})")
    unique, inverse = np.unique(array, return_inverse=True)
    return [int(i) for i in unique], torch.from_numpy(inverse.reshape(-1).astype(np.int64))


def _as_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise VideoReadError(f"invalid device {device!r}: {error}") from error


#: Decoder handles inherited through fork(): kept referenced forever, as freeing them in the child can deadlock
#: (FFmpeg/decord decoders join worker threads that do not exist in the child).
_ABANDONED_AFTER_FORK: list[dict[str, Any]] = []
_LIVE_READERS: weakref.WeakSet[_BaseReader] = weakref.WeakSet()
_FORK_HOOK_REGISTERED = False


def _abandon_inherited_handles() -> None:
    """In a forked child: abandon the decoder handles of every reader alive (or garbage) in the parent."""
    for reader in list(_LIVE_READERS):
        reader._ensure_process()


def _track(reader: _BaseReader) -> None:
    global _FORK_HOOK_REGISTERED
    _LIVE_READERS.add(reader)
    if not _FORK_HOOK_REGISTERED and hasattr(os, "register_at_fork"):
        # before: free garbage decoders (cycles) while their threads exist; a collection in the child would
        # join threads fork() did not copy and hang. after_in_child: abandon live readers' handles.
        os.register_at_fork(before=gc.collect, after_in_child=_abandon_inherited_handles)
        _FORK_HOOK_REGISTERED = True


class _IndexMismatch(Exception):
    """Decoded frames did not match the demux index (internal; triggers the sequential fallback)."""


# ----------------------------------------------------------------------------------------------------------
# Base


class _BaseReader:
    """Shared bookkeeping: index, len/fps/size, context manager, pickling, fork safety."""

    backend: str = ""
    path: str
    fps: float
    size: tuple[int, int]

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> None:
        self.path = os.fspath(path)
        self.device = _as_device(device)
        self._pid = os.getpid()
        _track(self)

    def __len__(self) -> int:
        raise NotImplementedError

    def __enter__(self) -> _BaseReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._release()

    def _release(self) -> None:
        """Drop open handles (subclasses)."""

    def _ensure_process(self) -> None:
        """After a fork, handles copied from the parent share file offsets and decoder threads that do not
        exist in the child: abandon them (never close or free them, which can deadlock) and reopen."""
        if os.getpid() != self._pid:
            _ABANDONED_AFTER_FORK.append({key: getattr(self, key, None) for key in self._handle_keys()})
            for key in self._handle_keys():
                setattr(self, key, None)
            self._after_fork()
            self._pid = os.getpid()

    def _after_fork(self) -> None:
        """Reset per-process state once inherited handles are abandoned (subclasses)."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in self._handle_keys():
            state[key] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()
        _track(self)

    def _handle_keys(self) -> tuple[str, ...]:
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, frames={len(self)}, size={self.size}, fps={self.fps:g})"

    def _empty(self) -> torch.Tensor:
        return torch.empty((0, *self.size, 3), dtype=torch.uint8, device=self.device)


def _require_cpu(path: str, backend: str, device: torch.device) -> None:
    if device.type != "cpu":
        raise VideoReadError(
            f"{path}: backend {backend!r} decodes on the CPU only (device {str(device)!r} asked); "
            "use backend='torchcodec' or a CUDA build of decord for GPU decoding"
        )


# ----------------------------------------------------------------------------------------------------------
# PyAV


class PyAVReader(_BaseReader):
    """PyAV (FFmpeg) reader with verified keyframe seeking; the reference every other backend must match.

    Args:
        path: a video file.
        device: only ``"cpu"``.
        threads: decoder threads (0 lets FFmpeg choose). Threading does not change the decoded pixels.

    Example:
        >>> import av, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "tiny.mkv")
        >>> with av.open(path, "w") as out:
        ...     stream = out.add_stream("mpeg4", rate=10)
        ...     stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        ...     for i in range(12):
        ...         frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
        ...         out.mux(stream.encode(frame))
        ...     out.mux(stream.encode(None))
        >>> with PyAVReader(path) as reader:
        ...     clip = reader.read([11, 0, 0, 5])
        >>> len(reader), tuple(clip.shape), clip.dtype
        (12, (4, 32, 32, 3), torch.uint8)
        >>> [round(int(v) / 20) for v in clip[:, 16, 16, 1]]  # grey level 20 * i identifies frame i
        [11, 0, 0, 5]
    """

    backend = "pyav"

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu", threads: int = 0) -> None:
        super().__init__(path, device)
        _require_cpu(self.path, self.backend, self.device)
        self.index = scan_video(self.path)
        self.fps = self.index.fps
        self.size = self.index.size
        self.threads = threads
        self._container: Any = None
        self._stream: Any = None
        self._frames: Iterator[tuple[int, Any]] | None = None
        self._last = -1  # index of the last frame the current decode session yielded

    def __len__(self) -> int:
        return len(self.index)

    def _handle_keys(self) -> tuple[str, ...]:
        return ("_container", "_stream", "_frames")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._last = -1

    def _after_fork(self) -> None:
        self._last = -1

    def _release(self) -> None:
        self._frames = None
        self._last = -1
        self._close_container()

    def _close_container(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None
                self._stream = None

    def _open(self) -> None:
        """(Re)open the container at its start; the decode session state is left to the caller."""
        import av

        self._close_container()
        try:
            self._container = av.open(self.path)
        except (av.FFmpegError, OSError) as error:
            raise VideoReadError(f"{self.path}: cannot reopen ({error})") from error
        self._stream = self._container.streams.video[0]
        self._stream.thread_count = self.threads
        if self.threads != 1:
            self._stream.thread_type = "AUTO"

    # -- decoding sessions ---------------------------------------------------------------------------------

    def _packets_from_keyframe(self, keyframe: int) -> Iterator[Any]:
        """Packets in demux order starting exactly at ``keyframe``'s packet, then ``None`` (flush)."""
        index = self.index
        target_pos = int(index.demux_pos[keyframe])
        target_size = int(index.packet_size[keyframe])
        pos_of_pts = self._pos_of_pts()
        # Seek to the keyframe, else to the keyframe before it (a demuxer seeking by dts or by byte position
        # may land a little late), else demux from the start. Packets before the keyframe's are dropped.
        previous = self.index.keyframe_for(keyframe - 1) if keyframe > 0 else 0
        attempts: list[int | None] = [int(index.seek_ts[keyframe])]
        if previous < keyframe:
            attempts.append(int(index.seek_ts[previous]))
        attempts.append(None)
        for seek_ts in attempts:
            if seek_ts is None:
                self._open()
            else:
                self._container.seek(seek_ts, stream=self._stream, backward=True, any_frame=False)
            self._stream.codec_context.flush_buffers()
            packets = self._container.demux(self._stream)
            found = False
            for packet in packets:
                if packet.size == 0 or packet.is_discard or packet.pts is None:
                    continue
                pos = pos_of_pts.get(int(packet.pts))
                if pos is None:
                    continue
                if pos == target_pos and packet.is_keyframe and packet.size == target_size:
                    found = True
                    yield packet
                    break
                if pos >= target_pos:
                    break  # the seek landed after the keyframe (or on a partial packet): go further back
            if found:
                for packet in packets:
                    if packet.size == 0:
                        continue
                    yield packet
                yield None
                return
        raise _IndexMismatch(f"keyframe {keyframe} not found in the packet stream")

    def _pos_of_pts(self) -> dict[int, int]:
        cached = getattr(self, "_pos_map", None)
        if cached is None:
            cached = {int(p): int(d) for p, d in zip(self.index.pts, self.index.demux_pos, strict=True)}
            self._pos_map = cached
        return cached

    def _frame_of_pts(self) -> dict[int, int]:
        cached = getattr(self, "_frame_map", None)
        if cached is None:
            cached = {int(p): i for i, p in enumerate(self.index.pts)}
            self._frame_map = cached
        return cached

    def _decode_from(self, target: int) -> Iterator[tuple[int, Any]]:
        """Decoded ``(frame index, av.VideoFrame)`` in display order, starting at or before ``target``."""
        if not self.index.exact:
            self._open()
            count = 0
            for frame in self._container.decode(self._stream):
                yield count, frame
                count += 1
            return
        if self._container is None:
            self._open()
        keyframe = self.index.keyframe_for(target)
        start_pts = int(self.index.pts[keyframe])
        frame_of_pts = self._frame_of_pts()
        for packet in self._packets_from_keyframe(keyframe):
            for frame in self._stream.codec_context.decode(packet):
                if frame.pts is None:
                    raise _IndexMismatch("a decoded frame has no pts")
                if frame.pts < start_pts:
                    continue  # leading frames of an open GOP: not decodable from this keyframe
                i = frame_of_pts.get(int(frame.pts))
                if i is None:
                    raise _IndexMismatch(f"decoded pts {frame.pts} is not in the index")
                yield i, frame

    def _frame_at(self, target: int) -> Any:
        if self._frames is None or self._last >= target or (
            self.index.exact and self.index.keyframe_for(target) > self._last + 1
        ):
            self._frames = self._decode_from(target)
            self._last = -1
        for i, frame in self._frames:
            if i <= self._last:
                raise _IndexMismatch(f"frame {i} decoded twice or out of order")
            self._last = i
            if i == target:
                return frame
            if i > target:
                raise _IndexMismatch(f"frame {target} was skipped by the decoder")
        self._frames = None
        if not self.index.exact:
            raise VideoReadError(f"{self.path}: frame {target} could not be decoded (the file has "
                                 f"{len(self)} packets but only {self._last + 1} decodable frames)")
        raise _IndexMismatch(f"frame {target} not reached before the end of the stream")

    def _read_sorted(self, unique: list[int]) -> np.ndarray:
        import av

        out = np.empty((len(unique), *self.size, 3), dtype=np.uint8)
        for j, target in enumerate(unique):
            try:
                frame = self._frame_at(target)
                rgb = frame.to_ndarray(format="rgb24")
            except av.FFmpegError as error:
                self._release()
                raise VideoReadError(f"{self.path}: failed to decode frame {target} ({error})") from error
            if rgb.shape != out.shape[1:]:
                raise VideoReadError(f"{self.path}: frame {target} has size {rgb.shape[:2]}, expected "
                                     f"{self.size} (the frame size changes mid-stream)")
            out[j] = rgb
        return out

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` as uint8 ``(T, H, W, 3)`` (see :class:`VideoReader`)."""
        self._ensure_process()
        unique, inverse = _prepare_indices(indices, len(self), self.path)
        if not unique:
            return self._empty()
        try:
            frames = self._read_sorted(unique)
        except _IndexMismatch as error:
            log.warning("%s: %s; falling back to sequential decoding for this file", self.path, error)
            self.index = replace(self.index, exact=False, reason=str(error))
            _INDEX_CACHE[_file_key(self.path)] = self.index  # later opens of this file skip the failed seek path
            self._release()
            frames = self._read_sorted(unique)
        return torch.from_numpy(frames)[inverse]


# ----------------------------------------------------------------------------------------------------------
# decord and torchcodec: native random access where verified, else the PyAV path


def _import_backend(module: str, backend: str, path: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as error:  # ImportError, or OSError when shared libraries are missing
        raise VideoReadError(
            f"{path}: backend {backend!r} is not available ({type(error).__name__}: {error}); "
            f"installed backends: {', '.join(available_backends())}"
        ) from error


class _NativeReader(_BaseReader):
    """A backend with its own decoder, verified against the demux index; falls back to :class:`PyAVReader`."""

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> None:
        super().__init__(path, device)
        self.index = scan_video(self.path)
        self.fps = self.index.fps
        self.size = self.index.size
        self.fallback: str | None = None
        self._decoder: Any = None
        self._pyav: PyAVReader | None = None
        if not self.index.exact:
            self.fallback = f"inexact index ({self.index.reason})"
        elif self.index.format_name not in TRUSTED_SEEK_FORMATS:
            self.fallback = f"{self.backend} seeking is not exact for format {self.index.format_name!r}"
        if self.fallback is None or self.device.type != "cpu":
            self._open_decoder()  # also surfaces a missing backend or a decord build without CUDA
        if self.fallback is None:
            self.fallback = self._verify()
        if self.fallback is not None:
            log.info("%s: %s; reading through PyAV", self.path, self.fallback)
            self._decoder = None

    def __len__(self) -> int:
        return len(self.index)

    def _handle_keys(self) -> tuple[str, ...]:
        return ("_decoder", "_pyav")

    def _release(self) -> None:
        self._decoder = None
        if self._pyav is not None:
            self._pyav.close()

    def _open_decoder(self) -> None:
        raise NotImplementedError

    def _verify(self) -> str | None:
        """Why the native decoder cannot be trusted for this file, or None."""
        raise NotImplementedError

    def _native_read(self, unique: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` as uint8 ``(T, H, W, 3)`` on ``device`` (see :class:`VideoReader`)."""
        self._ensure_process()
        unique, inverse = _prepare_indices(indices, len(self), self.path)
        if not unique:
            return self._empty()
        if self.fallback is None:
            if self._decoder is None:
                self._open_decoder()
            try:
                frames = self._native_read(unique)
            except VideoReadError as error:
                if self.device.type != "cpu":
                    raise
                # The demux index is sound, so the file is readable: the native decoder fails on it (e.g. decord 0.6
                # on some frame widths, "from_size == to_size"). Read through PyAV from now on; a truly corrupt file
                # raises there too.
                self.fallback = f"{self.backend} failed to decode ({error})"
                log.warning("%s: %s; reading through PyAV", self.path, self.fallback)
                self._decoder = None
        if self.fallback is not None:
            if self._pyav is None:
                self._pyav = PyAVReader(self.path)
            frames = self._pyav.read(unique).to(self.device)
        if tuple(frames.shape[1:]) != (*self.size, 3):
            raise VideoReadError(f"{self.path}: {self.backend} returned frames of shape {tuple(frames.shape)}, "
                                 f"expected (T, {self.size[0]}, {self.size[1]}, 3)")
        return frames[inverse.to(frames.device)]


class DecordReader(_NativeReader):
    """decord reader (CPU, or decord's GPU context for a CUDA build of decord and a CUDA ``device``).

    Uses decord's ``get_batch`` on sorted unique indices where verified exact (see the module docstring), else
    the PyAV path (``self.fallback`` says why).
    """

    backend = "decord"

    def _open_decoder(self) -> None:
        decord = _import_backend("decord", self.backend, self.path)
        if self.device.type == "cuda":
            try:
                ctx = decord.gpu(self.device.index or 0)
                self._decoder = decord.VideoReader(self.path, ctx=ctx)
            except Exception as error:  # decord.DECORDError when built without CUDA
                raise VideoReadError(
                    f"{self.path}: decord cannot decode on {self.device} ({error}); this decord build probably "
                    "lacks CUDA (the PyPI wheels do): use device='cpu' or backend='torchcodec'"
                ) from error
        elif self.device.type == "cpu":
            try:
                self._decoder = decord.VideoReader(self.path, ctx=decord.cpu(0))
            except Exception as error:
                raise VideoReadError(f"{self.path}: decord cannot open the file ({error})") from error
        else:
            raise VideoReadError(f"{self.path}: decord decodes on cpu or cuda, not {self.device}")

    def _verify(self) -> str | None:
        n = len(self._decoder)
        if n != len(self.index):
            return f"decord counts {n} frames, a sequential decode {len(self.index)}"
        stamps = np.asarray(self._decoder.get_frame_timestamp(np.arange(n)))[:, 0].astype(np.float64)
        expected = self.index.seconds()
        frame_time = 1.0 / self.fps if self.fps == self.fps and self.fps > 0 else 1e-3
        if np.abs((stamps - stamps[0]) - expected).max() > 0.25 * frame_time:
            return "decord's frame timestamps disagree with the demux index"
        return None

    def _native_read(self, unique: list[int]) -> torch.Tensor:
        try:
            batch = self._decoder.get_batch(unique)
        except Exception as error:
            raise VideoReadError(f"{self.path}: decord failed to decode frames {unique} ({error})") from error
        if self.device.type == "cuda":
            return torch.utils.dlpack.from_dlpack(batch.to_dlpack())
        return torch.from_numpy(batch.asnumpy())


class TorchCodecReader(_NativeReader):
    """torchcodec reader (CPU, or NVDEC for a CUDA ``device``), exact-seek mode.

    Uses ``VideoDecoder.get_frames_at`` on sorted unique indices where verified exact (and checks the returned
    pts on every read), else the PyAV path (``self.fallback`` says why).
    """

    backend = "torchcodec"

    def _open_decoder(self) -> None:
        decoders = _import_backend("torchcodec.decoders", self.backend, self.path)
        try:
            self._decoder = decoders.VideoDecoder(
                self.path, seek_mode="exact", dimension_order="NHWC", device=str(self.device)
            )
        except Exception as error:
            raise VideoReadError(f"{self.path}: torchcodec cannot open the file on {self.device} ({error})") from error

    def _verify(self) -> str | None:
        n = len(self._decoder)
        if n != len(self.index):
            return f"torchcodec counts {n} frames, a sequential decode {len(self.index)}"
        return None

    def _native_read(self, unique: list[int]) -> torch.Tensor:
        try:
            batch = self._decoder.get_frames_at(indices=unique)
        except Exception as error:
            raise VideoReadError(f"{self.path}: torchcodec failed to decode frames {unique} ({error})") from error
        expected = self.index.pts[unique].astype(np.float64) * float(self.index.time_base)
        got = batch.pts_seconds.double().cpu().numpy()
        tol = 0.25 / self.fps if self.fps == self.fps and self.fps > 0 else 1e-3
        if np.abs(got - expected).max() > tol:
            raise VideoReadError(f"{self.path}: torchcodec returned frames at {got.tolist()} s for "
                                 f"indices {unique}, expected {expected.tolist()} s")
        return batch.data


# ----------------------------------------------------------------------------------------------------------
# Folders of frames


class FramesReader(_BaseReader):
    """A folder of PNG/JPEG frames sorted by file name (as KITTI raw stores ``image_02/data``).

    Args:
        path: the folder.
        device: only ``"cpu"``.
        fps: frames per second; when None, derived from a KITTI ``timestamps.txt`` in the folder or its
            parent, else ``nan``.

    Example:
        >>> import tempfile, os
        >>> from PIL import Image
        >>> folder = tempfile.mkdtemp()
        >>> for i in range(3):
        ...     Image.new("RGB", (8, 6), (i, 0, 0)).save(os.path.join(folder, f"{i:010d}.png"))
        >>> reader = FramesReader(folder, fps=10.0)
        >>> len(reader), reader.size, reader.read([2, 0])[:, 0, 0, 0].tolist()
        (3, (6, 8), [2, 0])
    """

    backend = "frames"

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu", fps: float | None = None
                 ) -> None:
        super().__init__(path, device)
        _require_cpu(self.path, self.backend, self.device)
        if not os.path.exists(self.path):
            raise VideoReadError(f"{self.path}: no such file or directory")
        if not os.path.isdir(self.path):
            raise VideoReadError(f"{self.path}: backend 'frames' reads a folder of PNG/JPEG frames, "
                                 "this is a file")
        self.files = sorted(
            str(p) for p in Path(self.path).iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES
        )
        if not self.files:
            raise VideoReadError(f"{self.path}: the folder contains no frames ("
                                 + ", ".join(f"*{s}" for s in sorted(FRAME_SUFFIXES)) + ")")
        self.size = self._frame_size(0)
        self.fps = float(fps) if fps is not None else self._fps_from_timestamps()

    def __len__(self) -> int:
        return len(self.files)

    def _fps_from_timestamps(self) -> float:
        import datetime as dt

        for candidate in (Path(self.path) / "timestamps.txt", Path(self.path).parent / "timestamps.txt"):
            if not candidate.is_file():
                continue
            try:
                times = [
                    dt.datetime.fromisoformat(line.strip()[:26]).timestamp()
                    for line in candidate.read_text().splitlines() if line.strip()
                ]
            except ValueError:
                continue
            if len(times) > 1:
                step = float(np.median(np.diff(times)))
                if step > 0:
                    return 1.0 / step
        return float("nan")

    def _frame_size(self, i: int) -> tuple[int, int]:
        """``(H, W)`` of frame ``i`` from its header (no pixel decode)."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as image:
                return image.size[1], image.size[0]
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise VideoReadError(f"{self.path}: cannot decode frame {i} ({self.files[i]}): {error}") from error

    def _decode(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        file = self.files[i]
        try:
            with Image.open(file) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise VideoReadError(f"{self.path}: cannot decode frame {i} ({file}): {error}") from error

    def read(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``indices`` as uint8 ``(T, H, W, 3)`` (see :class:`VideoReader`)."""
        unique, inverse = _prepare_indices(indices, len(self), self.path)
        if not unique:
            return self._empty()
        out = np.empty((len(unique), *self.size, 3), dtype=np.uint8)
        for j, i in enumerate(unique):
            frame = self._decode(i)
            if frame.shape[:2] != self.size:
                raise VideoReadError(f"{self.path}: frame {i} ({self.files[i]}) has size {frame.shape[:2]}, "
                                     f"expected {self.size} like the first frame")
            out[j] = frame
        return torch.from_numpy(out)[inverse]


# ----------------------------------------------------------------------------------------------------------
# Registry


READERS: dict[str, type[_BaseReader]] = {
    "decord": DecordReader,
    "torchcodec": TorchCodecReader,
    "pyav": PyAVReader,
    "frames": FramesReader,
}

#: auto preference for video files, fastest first (measured by tools/bench_decode.py).
_AUTO_ORDER = ("decord", "torchcodec", "pyav")
_AUTO_ORDER_CUDA = ("torchcodec", "decord")
_BACKEND_MODULES = {"decord": "decord", "torchcodec": "torchcodec.decoders", "pyav": "av", "frames": "PIL.Image"}
_AVAILABLE: dict[str, bool] = {}


def _is_available(backend: str) -> bool:
    """Whether ``backend`` can decode here: its module imports and, for torchcodec, FFmpeg's libraries load.

    torchcodec >= 0.10 imports without FFmpeg and fails only when a video is decoded; it records the outcome of
    loading FFmpeg in ``torchcodec._core.ops._FFMPEG_AVAILABLE`` (older releases fail at import instead).
    """
    if backend not in _AVAILABLE:
        try:
            importlib.import_module(_BACKEND_MODULES[backend])
            ok = True
            if backend == "torchcodec":
                ok = bool(getattr(sys.modules.get("torchcodec._core.ops"), "_FFMPEG_AVAILABLE", True))
            _AVAILABLE[backend] = ok
        except Exception:  # ImportError, or OSError/RuntimeError when native libraries fail to load
            _AVAILABLE[backend] = False
    return _AVAILABLE[backend]


def available_backends() -> list[str]:
    """Installed backends, video backends in ``auto`` preference order, then ``frames``."""
    return [b for b in (*_AUTO_ORDER, "frames") if _is_available(b)]


def open_video(
    path: str | os.PathLike[str], backend: str = "auto", device: str | torch.device = "cpu"
) -> VideoReader:
    """Open a video file or a frame folder.

    Args:
        path: a video file, or a folder of PNG/JPEG frames.
        backend: ``"auto"`` or one of :data:`READERS`. ``auto`` picks ``frames`` for a folder, else the
            fastest installed backend (for a CUDA ``device``, one that decodes on the GPU).
        device: where frames are decoded and returned (``"cpu"``, or ``"cuda[:i]"`` for torchcodec or a CUDA
            build of decord).

    Returns:
        A :class:`VideoReader`.

    Raises:
        VideoReadError: unknown backend (naming the valid ones), backend not installed, or any bad file.
    """
    path = os.fspath(path)
    if backend != "auto" and backend not in READERS:
        raise VideoReadError(f"{path}: unknown video backend {backend!r}; choose from 'auto', "
                             + ", ".join(repr(b) for b in READERS))
    dev = _as_device(device)
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: no such file or directory")
    if backend == "auto":
        if os.path.isdir(path):
            backend = "frames"
        else:
            order = _AUTO_ORDER_CUDA if dev.type == "cuda" else _AUTO_ORDER
            candidates = [b for b in order if _is_available(b)]
            if not candidates:
                raise VideoReadError(f"{path}: no video backend for device {dev} is installed "
                                     f"(install av, decord or torchcodec)")
            last: VideoReadError | None = None
            for name in candidates:
                try:
                    return READERS[name](path, device=dev)  # type: ignore[return-value]
                except VideoReadError as error:
                    if dev.type != "cuda":
                        raise
                    last = error  # e.g. decord without CUDA: try the next GPU backend
            assert last is not None
            raise last
    if backend != "frames" and os.path.isdir(path):
        raise VideoReadError(f"{path}: is a directory; read frame folders with backend='frames'")
    if not _is_available(backend):
        why = "not installed, or FFmpeg's shared libraries missing" if backend == "torchcodec" else "not installed"
        raise VideoReadError(f"{path}: backend {backend!r} cannot decode here ({why}); usable: "
                             + ", ".join(available_backends()))
    return READERS[backend](path, device=dev)  # type: ignore[return-value]
