"""Frame exactness and error handling of stssl.data.readers.

Ground truth is a plain sequential PyAV decode; every backend must return bit-equal frames for any index list
on every container/codec in conftest.VIDEO_SPECS (FFmpeg's swscale does the YUV->RGB conversion in all three
backends, so no tolerance is needed on CPU).
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from PIL import Image

from stssl.data.readers import (
    READERS,
    TRUSTED_SEEK_FORMATS,
    FramesReader,
    PyAVReader,
    VideoReader,
    VideoReadError,
    available_backends,
    open_video,
    scan_video,
)

VIDEO_BACKENDS = ["pyav", "decord", "torchcodec"]


def _require(backend: str) -> None:
    if backend not in available_backends():  # imports, and for torchcodec FFmpeg's libraries load
        pytest.skip(f"backend {backend!r} cannot decode here (not installed, or torchcodec without FFmpeg)")


def _index_lists(n: int, gop: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lists = [
        [n - 1],  # last frame alone
        [0],
        [5, 2, 2, 9, 0, 5],  # unsorted with duplicates
        [gop - 1, gop, gop + 1, n - 1, gop],  # around a GOP boundary, last frame
        list(range(n - 4, n)),  # a clip at the very end
        [n - 1, 0, n // 2, n - 1],
    ]
    lists += [rng.integers(0, n, size=int(rng.integers(1, 10))).tolist() for _ in range(4)]
    starts = rng.integers(0, n - 4, size=3)
    lists += [list(range(int(s), int(s) + 4)) for s in starts]  # T=4 clips, as the dataset reads them
    return lists


# ---------------------------------------------------------------------------------------------------------
# fixtures are honest


def test_fixture_sequential_decode_has_every_marker(
    video_name: str,
    make_test_video: Callable[[str], Path],
    sequential_reference_cache: Callable[[Path], np.ndarray],
    read_frame_marker: Callable[[np.ndarray], int],
    test_video_specs: dict[str, Any],
) -> None:
    reference = sequential_reference_cache(make_test_video(video_name))
    assert [read_frame_marker(f) for f in reference] == list(range(test_video_specs[video_name].n_frames))


# ---------------------------------------------------------------------------------------------------------
# exactness


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_reads_equal_sequential_decode(
    video_name: str,
    backend: str,
    make_test_video: Callable[[str], Path],
    sequential_reference_cache: Callable[[Path], np.ndarray],
    read_frame_marker: Callable[[np.ndarray], int],
    test_video_specs: dict[str, Any],
) -> None:
    name = video_name
    _require(backend)
    path = make_test_video(name)
    reference = sequential_reference_cache(path)
    n = len(reference)
    spec = test_video_specs[name]
    with open_video(path, backend=backend) as reader:
        assert isinstance(reader, VideoReader)
        assert len(reader) == n
        assert reader.size == reference.shape[1:3]
        assert reader.fps == pytest.approx(spec.fps)
        # one reader, many calls: later calls go backwards and forwards across GOPs
        for indices in _index_lists(n, spec.gop or 48, seed=len(name)):
            frames = reader.read(indices)
            assert frames.dtype == torch.uint8 and tuple(frames.shape) == (len(indices), *reference.shape[1:])
            got = frames.numpy()
            if not np.array_equal(got, reference[indices]):
                markers = [read_frame_marker(f) for f in got]
                pytest.fail(f"{backend} on {name}: asked {indices}, got frames with markers {markers}")


@pytest.mark.parametrize("backend", ["decord", "torchcodec"])
def test_native_backends_fall_back_where_seeking_is_not_exact(
    backend: str, make_test_video: Callable[[str], Path]
) -> None:
    _require(backend)
    ps = open_video(make_test_video("mpeg2_ps"), backend=backend)
    assert ps.fallback is not None and "'mpeg'" in ps.fallback
    raw = open_video(make_test_video("h264_raw"), backend=backend)
    assert raw.fallback is not None and "pts" in raw.fallback
    mp4 = open_video(make_test_video("h264_mp4"), backend=backend)
    assert mp4.fallback is None and scan_video(mp4.path).format_name in TRUSTED_SEEK_FORMATS


def test_pyav_sequential_mode_matches_and_mismatch_falls_back(
    make_test_video: Callable[[str], Path], sequential_reference_cache: Callable[[Path], np.ndarray]
) -> None:
    path = make_test_video("h264_mkv")
    reference = sequential_reference_cache(path)
    assert scan_video(path).exact
    reader = PyAVReader(path)
    # force the sequential fallback: results must not change
    from dataclasses import replace

    reader.index = replace(reader.index, exact=False, reason="forced by the test")
    indices = [99, 3, 50, 50, 0]
    assert np.array_equal(reader.read(indices).numpy(), reference[indices])
    # a corrupted index (pts shifted by one frame) is detected by pts matching, not silently trusted
    bad = PyAVReader(path)
    shifted = np.concatenate([bad.index.pts[1:], bad.index.pts[-1:] + 1000])
    bad.index = replace(bad.index, pts=shifted)
    got = bad.read([10, 60])
    assert not bad.index.exact
    assert np.array_equal(got.numpy(), reference[[10, 60]])


def test_seeks_use_keyframes_not_full_decodes(make_test_video: Callable[[str], Path]) -> None:
    """Reading the last frames must not decode the file from the start (MPEG-PS seeks land late)."""
    for name in ("h264_mp4", "mpeg2_ps"):
        reader = PyAVReader(make_test_video(name))
        decoded: list[int] = []
        original = reader._decode_from

        def counting(target: int, original=original, decoded=decoded) -> object:  # noqa: ANN001
            for i, frame in original(target):
                decoded.append(i)
                yield i, frame

        reader._decode_from = counting  # type: ignore[method-assign]
        reader.read([97, 98, 99])
        assert min(decoded) >= 96, (name, min(decoded))  # started at the keyframe 96, not frame 0
        assert reader.index.exact


# ---------------------------------------------------------------------------------------------------------
# frames folders


def _write_frames(folder: Path, n: int, suffix: str, rng: np.random.Generator) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    frames = rng.integers(0, 256, size=(n, 20, 28, 3), dtype=np.uint8)
    for i in reversed(range(n)):  # written out of order: the reader must sort by name
        Image.fromarray(frames[i]).save(folder / f"{i:010d}{suffix}", quality=95)
    return frames


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_frames_folder_reads_sorted_frames(tmp_path: Path, suffix: str) -> None:
    written = _write_frames(tmp_path / "data", 7, suffix, np.random.default_rng(0))
    (tmp_path / "data" / "notes.txt").write_text("not a frame")
    reference = np.stack([np.asarray(Image.open(p).convert("RGB"))
                          for p in sorted((tmp_path / "data").glob(f"*{suffix}"))])
    if suffix == ".png":
        assert np.array_equal(reference, written)
    (tmp_path / "timestamps.txt").write_text(
        "\n".join(f"2011-09-26 13:02:25.{100_000_000 * i:09d}" for i in range(7))
    )
    reader = open_video(tmp_path / "data")
    assert isinstance(reader, FramesReader) and isinstance(reader, VideoReader)
    assert len(reader) == 7 and reader.size == (20, 28)
    assert reader.fps == pytest.approx(10.0)
    indices = [6, 0, 3, 3, 1]
    assert np.array_equal(reader.read(indices).numpy(), reference[indices])


def test_frames_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="no frames") as info:
        open_video(empty)
    assert str(empty) in str(info.value)
    mixed = tmp_path / "mixed"
    _write_frames(mixed, 3, ".png", np.random.default_rng(1))
    Image.new("RGB", (5, 5)).save(mixed / "0000000009.png")
    with pytest.raises(VideoReadError, match="0000000009.png"):
        open_video(mixed).read([3])
    broken = tmp_path / "broken"
    _write_frames(broken, 2, ".png", np.random.default_rng(2))
    (broken / "0000000005.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(VideoReadError, match="0000000005.png"):
        open_video(broken).read([2])
    with pytest.raises(VideoReadError, match="folder"):
        FramesReader(mixed / "0000000000.png")


# ---------------------------------------------------------------------------------------------------------
# bad inputs


def _bad_files(tmp_path: Path, make_test_video: Callable[[str], Path]) -> dict[str, Path]:
    good = make_test_video("h264_mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    truncated = tmp_path / "truncated.mp4"  # PyAV writes moov at the end: half a file has no index
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    corrupt = tmp_path / "corrupt.mkv"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    zero = tmp_path / "zero_frames.mkv"
    with av.open(str(zero), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.mux(stream.encode(None))
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    return {"missing": tmp_path / "missing.mp4", "text": text, "truncated": truncated, "corrupt": corrupt,
            "empty": empty, "zero_frames": zero, "audio_only": _audio_only(tmp_path)}


def _audio_only(tmp_path: Path) -> Path:
    path = tmp_path / "audio.mka"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_bad_files_raise_video_read_error(
    backend: str, tmp_path: Path, make_test_video: Callable[[str], Path]
) -> None:
    _require(backend)
    for problem, path in _bad_files(tmp_path, make_test_video).items():
        with pytest.raises(VideoReadError) as info:
            open_video(path, backend=backend).read([0])
        assert str(path) in str(info.value), (problem, str(info.value))


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_bad_indices_raise_video_read_error(backend: str, make_test_video: Callable[[str], Path]) -> None:
    _require(backend)
    path = make_test_video("h264_mkv")
    reader = open_video(path, backend=backend)
    for indices, pattern in (([100], "out of range"), ([3, -1], "out of range"), ([0.5], "integer"),
                             ([[1, 2]], "1-D")):
        with pytest.raises(VideoReadError, match=pattern) as info:
            reader.read(indices)  # type: ignore[arg-type]
        assert str(path) in str(info.value)
    assert tuple(reader.read([]).shape) == (0, 64, 96, 3)
    assert np.array_equal(reader.read(torch.tensor([4, 1])).numpy(), reader.read(np.array([4, 1])).numpy())


def test_open_video_argument_errors(tmp_path: Path, make_test_video: Callable[[str], Path]) -> None:
    path = make_test_video("h264_mp4")
    with pytest.raises(VideoReadError, match="unknown video backend 'opencv'") as info:
        open_video(path, backend="opencv")
    for name in READERS:
        assert repr(name) in str(info.value)
    assert str(path) in str(info.value)
    with pytest.raises(VideoReadError, match="directory"):
        open_video(tmp_path, backend="pyav")
    with pytest.raises(VideoReadError, match="CPU only"):
        open_video(path, backend="pyav", device="cuda")


def test_decord_gpu_without_cuda_build_is_a_clear_error(make_test_video: Callable[[str], Path]) -> None:
    _require("decord")
    import decord

    try:
        decord.VideoReader(str(make_test_video("h264_mp4")), ctx=decord.gpu(0))
    except Exception:  # noqa: BLE001 - expected for the CPU-only PyPI wheel
        pass
    else:
        pytest.skip("this decord build decodes on the GPU")
    with pytest.raises(VideoReadError, match="CUDA"):
        open_video(make_test_video("h264_mp4"), backend="decord", device="cuda")


# ---------------------------------------------------------------------------------------------------------
# registry, pickling, workers


def test_available_backends_and_auto(tmp_path: Path, make_test_video: Callable[[str], Path]) -> None:
    backends = available_backends()
    assert "pyav" in backends and backends[-1] == "frames"
    assert set(backends) <= set(READERS)
    reader = open_video(make_test_video("h264_mp4"))
    assert type(reader) is READERS[backends[0]]


def test_torchcodec_without_ffmpeg_is_not_available(
    make_test_video: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """torchcodec >= 0.10 imports without FFmpeg and fails only on decode: it must not count as available, and
    asking for it names the cause."""
    import types

    import stssl.data.readers as readers

    pytest.importorskip("torchcodec.decoders")
    monkeypatch.setattr(readers, "_AVAILABLE", {})
    monkeypatch.setitem(sys.modules, "torchcodec._core.ops", types.SimpleNamespace(_FFMPEG_AVAILABLE=False))
    assert "torchcodec" not in available_backends() and "pyav" in available_backends()
    with pytest.raises(VideoReadError, match="'torchcodec' cannot decode here.*FFmpeg"):
        open_video(make_test_video("h264_mp4"), backend="torchcodec")
    monkeypatch.setattr(readers, "_AVAILABLE", {})
    monkeypatch.setitem(sys.modules, "torchcodec._core.ops", types.SimpleNamespace(_FFMPEG_AVAILABLE=True))
    assert "torchcodec" in available_backends()


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_reader_pickles_and_reads_the_same(
    backend: str,
    make_test_video: Callable[[str], Path],
    sequential_reference_cache: Callable[[Path], np.ndarray],
) -> None:
    _require(backend)
    path = make_test_video("h264_mp4")
    reader = open_video(path, backend=backend)
    reader.read([10, 11])  # an open decoder mid-stream must not break pickling
    clone = pickle.loads(pickle.dumps(reader))
    assert len(clone) == len(reader)
    assert np.array_equal(clone.read([60, 12]).numpy(), sequential_reference_cache(path)[[60, 12]])
    reader.close()
    assert np.array_equal(reader.read([1]).numpy(), sequential_reference_cache(path)[[1]])  # reopens


@pytest.mark.parametrize("backend", VIDEO_BACKENDS)
def test_dataloader_workers_read_exact_frames(
    backend: str,
    make_test_video: Callable[[str], Path],
    sequential_reference_cache: Callable[[Path], np.ndarray],
) -> None:
    _require(backend)
    path = make_test_video("h264_mkv")
    reader = open_video(path, backend=backend)
    reader.read([30])  # the parent holds an open container before workers fork

    class Clips(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 6

        def __getitem__(self, i: int) -> torch.Tensor:
            return reader.read([i * 15, i * 15 + 1])

    # a timeout turns a deadlocked worker into a failure instead of a hung suite
    loader = torch.utils.data.DataLoader(Clips(), batch_size=None, num_workers=2, timeout=60)
    got = torch.stack(list(loader)).numpy()
    reference = sequential_reference_cache(path)
    expected = np.stack([reference[[i * 15, i * 15 + 1]] for i in range(6)])
    assert np.array_equal(got, expected)


def test_cached_index_is_invalidated_when_the_file_changes(
    tmp_path: Path, make_test_video: Callable[[str], Path], test_video_specs: dict[str, Any]
) -> None:
    path = tmp_path / "video.mkv"
    shutil.copy(make_test_video("h264_mkv"), path)
    assert len(scan_video(path)) == 100
    shutil.copy(make_test_video("h264_raw"), path)
    os.utime(path, ns=(1, 1))
    assert len(scan_video(path)) == test_video_specs["h264_raw"].n_frames


def test_native_decoder_failure_falls_back_to_pyav(tmp_path) -> None:
    """decord 0.6 fails on some frame widths (48 px wide: 'from_size == to_size'); the reader must fall back."""
    pytest.importorskip("decord")
    from stssl.data.readers import DecordReader, PyAVReader

    path = tmp_path / "narrow.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 48, "yuv420p"
        for t in range(12):
            img = np.full((48, 48, 3), 20 * t, dtype=np.uint8)
            img[: 4 + t, :8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    expected = PyAVReader(path).read([5, 0, 11])
    reader = DecordReader(path)
    got = reader.read([5, 0, 11])
    assert torch.equal(got, expected)
    if reader.fallback is None:
        pytest.skip("this decord build decodes 48-px-wide video natively; nothing to fall back from")
    assert "failed to decode" in reader.fallback
