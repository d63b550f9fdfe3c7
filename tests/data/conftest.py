"""Tiny test videos for the reader tests, encoded with PyAV's bundled FFmpeg.

Every frame carries its frame number as big black/white blocks (robust to lossy codecs) plus a moving random
texture, so codecs produce real P/B frames and every frame differs. ``make_test_video`` renders one container
/codec combination on demand (cached per session); ``sequential_decode_reference`` is the ground truth: PyAV
decoding every frame in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest

VIDEO_H, VIDEO_W = 64, 96
N_BITS = 8
BLOCK = 12  # marker blocks are BLOCK x BLOCK pixels, one per bit, along the top rows


@dataclass(frozen=True)
class VideoSpec:
    """One container/codec combination to test."""

    name: str
    suffix: str
    codec: str
    n_frames: int = 100
    fps: int = 25
    pix_fmt: str = "yuv420p"
    options: dict[str, str] = field(default_factory=dict)
    container_format: str | None = None
    gop: int | None = 48
    max_b_frames: int | None = 2


VIDEO_SPECS: dict[str, VideoSpec] = {
    "h264_mp4": VideoSpec("h264_mp4", ".mp4", "libx264", options={"preset": "ultrafast", "bf": "2", "g": "48"}),
    "h264_mkv": VideoSpec("h264_mkv", ".mkv", "libx264", options={"bf": "2", "g": "48", "crf": "23"}),
    "vp9_webm": VideoSpec("vp9_webm", ".webm", "libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"},
                          max_b_frames=None),
    "mpeg4_avi": VideoSpec("mpeg4_avi", ".avi", "mpeg4", max_b_frames=None),
    "mpeg2_ps": VideoSpec("mpeg2_ps", ".mpg", "mpeg2video", container_format="vob"),
    "mpeg1_ps": VideoSpec("mpeg1_ps", ".mpeg", "mpeg1video", container_format="mpeg"),
    "wmv2_asf": VideoSpec("wmv2_asf", ".wmv", "wmv2", max_b_frames=None),
    # raw Annex B stream: no timestamps at all, so readers must decode sequentially
    "h264_raw": VideoSpec("h264_raw", ".h264", "libx264", n_frames=60, container_format="h264",
                          options={"preset": "ultrafast", "bf": "2", "g": "24"}),
    "mjpeg_mov": VideoSpec("mjpeg_mov", ".mov", "mjpeg", pix_fmt="yuvj420p", max_b_frames=None, gop=None),
}


def marker_frame(index: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` frame whose top rows encode ``index`` in binary blocks over a texture."""
    yy, xx = np.mgrid[0:VIDEO_H, 0:VIDEO_W]
    base = (np.sin((xx + 3 * index) / 5.0) * 40 + np.cos((yy - 2 * index) / 7.0) * 40 + 128)[..., None]
    noise = rng.integers(-20, 21, size=(VIDEO_H, VIDEO_W, 3))
    frame = np.clip(base + noise, 0, 255).astype(np.uint8)
    frame[: BLOCK + 4] = 128
    for bit in range(N_BITS):
        value = 255 if (index >> bit) & 1 else 0
        frame[2 : 2 + BLOCK, 2 + bit * BLOCK : bit * BLOCK + BLOCK, :] = value
    return frame


def read_marker(frame: np.ndarray) -> int:
    """Decode the frame number written by :func:`marker_frame` from an RGB ``(H, W, 3)`` frame."""
    index = 0
    for bit in range(N_BITS):
        block = frame[5 : BLOCK - 1, 5 + bit * BLOCK : bit * BLOCK + BLOCK - 3].astype(np.float64)
        if block.mean() > 127:
            index |= 1 << bit
    return index


def encode_video(path: Path, spec: VideoSpec) -> None:
    """Encode ``spec.n_frames`` marker frames to ``path`` (raises ``av`` errors when an encoder is missing)."""
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w", format=spec.container_format) as container:
        stream = container.add_stream(spec.codec, rate=spec.fps, options=dict(spec.options))
        stream.width, stream.height, stream.pix_fmt = VIDEO_W, VIDEO_H, spec.pix_fmt
        if spec.gop is not None:
            stream.codec_context.gop_size = spec.gop
        if spec.max_b_frames is not None and spec.codec != "libx264":
            stream.codec_context.max_b_frames = spec.max_b_frames
        if spec.codec in ("mpeg4", "mpeg2video", "mpeg1video", "wmv2", "mjpeg"):
            stream.codec_context.bit_rate = 4_000_000
        for index in range(spec.n_frames):
            frame = av.VideoFrame.from_ndarray(marker_frame(index, rng), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def sequential_decode_reference(path: str | Path) -> np.ndarray:
    """Ground truth: PyAV decoding every frame in order, ``(N, H, W, 3)`` uint8."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return np.stack(frames)


@pytest.fixture(scope="session")
def make_test_video(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: ``make_test_video(name)`` returns the path of the cached video for ``VIDEO_SPECS[name]``.

    Skips the test with a reason when PyAV's FFmpeg lacks the encoder or muxer.
    """
    root = tmp_path_factory.mktemp("videos")
    cache: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name in cache:
            return cache[name]
        spec = VIDEO_SPECS[name]
        if spec.codec not in av.codecs_available:
            pytest.skip(f"PyAV's FFmpeg has no {spec.codec} encoder")
        path = root / f"{name}{spec.suffix}"
        try:
            encode_video(path, spec)
        except (av.FFmpegError, ValueError) as error:  # pragma: no cover - depends on the FFmpeg build
            pytest.skip(f"cannot encode {name} with PyAV: {error}")
        cache[name] = path
        return path

    return make


@pytest.fixture(scope="session")
def sequential_reference_cache() -> Callable[[Path], np.ndarray]:
    """Memoised :func:`sequential_decode_reference` (one decode per file per session)."""
    cache: dict[Path, np.ndarray] = {}

    def get(path: Path) -> np.ndarray:
        if path not in cache:
            cache[path] = sequential_decode_reference(path)
        return cache[path]

    return get


@pytest.fixture(scope="session")
def test_video_specs() -> dict[str, VideoSpec]:
    """The container/codec combinations of :data:`VIDEO_SPECS`."""
    return VIDEO_SPECS


@pytest.fixture(scope="session")
def read_frame_marker() -> Callable[[np.ndarray], int]:
    """:func:`read_marker`: the frame number encoded in a decoded RGB frame."""
    return read_marker


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests taking a ``video_name`` argument run once per entry of :data:`VIDEO_SPECS`."""
    if "video_name" in metafunc.fixturenames:
        metafunc.parametrize("video_name", list(VIDEO_SPECS))
