from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest
from PIL import Image

from stssl.data.sources import (
    SourceError,
    VideoRecord,
    class_folder_records,
    kitti_raw_records,
    load_sources,
    read_manifest,
    scene_records,
    write_manifest,
)
from stssl.worlds.scene_io import write_calib

REPO = Path(__file__).resolve().parents[2]

# A real KITTI raw calib_cam_to_cam.txt (2011_09_26), cameras 00 and 02 only (the loader reads P_rect/S_rect).
KITTI_CALIB = """calib_time: 09-Jan-2012 13:57:47
corner_dist: 9.950000e-02
S_00: 1.392000e+03 5.120000e+02
K_00: 9.842439e+02 0.000000e+00 6.900000e+02 0.000000e+00 9.808141e+02 2.331966e+02 0.000000e+00 0.000000e+00 1.000000e+00
D_00: -3.728755e-01 2.037299e-01 2.219027e-03 1.383707e-03 -7.233722e-02
R_00: 1.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00
T_00: 2.573699e-16 -1.059758e-16 1.614870e-16
S_rect_00: 1.242000e+03 3.750000e+02
R_rect_00: 9.999239e-01 9.837760e-03 -7.445048e-03 -9.869795e-03 9.999421e-01 -4.278459e-03 7.402527e-03 4.351614e-03 9.999631e-01
P_rect_00: 7.215377e+02 0.000000e+00 6.095593e+02 0.000000e+00 0.000000e+00 7.215377e+02 1.728540e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
S_02: 1.392000e+03 5.120000e+02
K_02: 9.597910e+02 0.000000e+00 6.960217e+02 0.000000e+00 9.569251e+02 2.241806e+02 0.000000e+00 0.000000e+00 1.000000e+00
D_02: -3.691481e-01 1.968681e-01 1.353473e-03 5.677587e-04 -6.770705e-02
R_02: 9.999758e-01 -5.267463e-03 -4.552439e-03 5.251945e-03 9.999804e-01 -3.413835e-03 4.570332e-03 3.389843e-03 9.999838e-01
T_02: 5.956621e-02 2.900141e-04 2.577209e-03
S_rect_02: 1.242000e+03 3.750000e+02
R_rect_02: 9.998817e-01 1.511453e-02 -2.841595e-03 -1.511724e-02 9.998853e-01 -9.338510e-04 2.827154e-03 9.766976e-04 9.999958e-01
P_rect_02: 7.215377e+02 0.000000e+00 6.095593e+02 4.485728e+01 0.000000e+00 7.215377e+02 1.728540e+02 2.163791e-01 0.000000e+00 0.000000e+00 1.000000e+00 2.745884e-03
"""
KITTI_K = np.array([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])


def write_video(path: Path, n: int = 6, h: int = 16, w: int = 24) -> Path:
    """A tiny real video (PyAV, mpeg4); frame i is flat grey 10 * i."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(n):
            frame = np.full((h, w, 3), 10 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_kitti(root: Path, drives: int = 2, frames: int = 3) -> Path:
    date = root / "2011_09_26"
    touch(date / "calib_cam_to_cam.txt", KITTI_CALIB)
    for d in range(drives):
        data = date / f"2011_09_26_drive_{d + 1:04d}_sync" / "image_02" / "data"
        data.mkdir(parents=True)
        for i in range(frames):
            Image.fromarray(np.full((8, 12, 3), i, np.uint8)).save(data / f"{i:010d}.png")
    return date


def make_scene(d: Path, K: np.ndarray | None = None, size: tuple[int, int] = (16, 24)) -> Path:
    touch(d / "video.mp4")
    K = np.array([[20.0, 0, 11.5], [0, 20.0, 7.5], [0, 0, 1]]) if K is None else K
    write_calib(d, K, width=size[1], height=size[0], fps=10)
    return d


# ------------------------------------------------------------------ manifests
def test_csv_manifest_resolves_paths_labels_and_intrinsics(tmp_path: Path) -> None:
    m = tmp_path / "lists" / "m.csv"
    touch(m, (
        "path,label,K,fx,fy,cx,cy,width,height,num_frames,extra\n"
        "../v/a.mp4,3,100 0 50 0 110 40 0 0 1,,,,,100,80,12,ignored\n"
        f"{tmp_path}/v/b.mp4,,,200,210,60.5,30.5,120,64,,\n"
        "c.mp4,,,,,,,,,,\n"
    ))
    a, b, c = read_manifest(m)
    assert Path(a.path).resolve() == (tmp_path / "v" / "a.mp4").resolve()
    assert a.label == 3 and a.num_frames == 12 and a.calib_size == (80, 100)
    np.testing.assert_allclose(a.K, [[100, 0, 50], [0, 110, 40], [0, 0, 1]])
    assert Path(b.path) == tmp_path / "v" / "b.mp4" and b.label is None and b.calib_size == (64, 120)
    np.testing.assert_allclose(b.K, [[200, 0, 60.5], [0, 210, 30.5], [0, 0, 1]])
    assert Path(c.path) == (tmp_path / "lists" / "c.mp4").resolve() and c.K is None and c.calib_size is None


def test_jsonl_manifest_accepts_nested_K(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    rows = [{"path": "a.mp4", "label": 1, "K": [[5, 0, 2], [0, 6, 3], [0, 0, 1]], "width": 8, "height": 4},
            {"path": "b.mp4", "backend": "pyav"}]
    m.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    a, b = read_manifest(m)
    np.testing.assert_allclose(a.K, [[5, 0, 2], [0, 6, 3], [0, 0, 1]])
    assert a.label == 1 and a.calib_size == (4, 8) and b.backend == "pyav" and b.K is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("path,label\na.mp4,1\nb.mp4,cat\n", r"m\.csv, line 3, column 'label': expected an integer, got 'cat'"),
        ("path,K\na.mp4,1 2 3\n", r"line 2, column 'K': expected 9 numbers, got 3"),
        ("path,fx,fy,cx\na.mp4,1,2,3\n", r"line 2: intrinsics need all of fx, fy, cx, cy; missing \['cy'\]"),
        ("path,width\na.mp4,4\n", r"line 2, columns 'width'/'height': give both or neither"),
        ("video,label\na.mp4,1\n", r"line 1: CSV header must contain a 'path' column"),
        ("path,label\n,1\n", r"line 2, column 'path': missing or empty"),
        ("path,label\na.mp4,-1\n", r"column 'label': expected an integer >= 0"),
    ],
)
def test_csv_errors_name_file_line_and_column(tmp_path: Path, content: str, match: str) -> None:
    m = touch(tmp_path / "m.csv", content)
    with pytest.raises(SourceError, match=match):
        read_manifest(m)


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    m = touch(tmp_path / "m.jsonl", '{"path": "a.mp4"}\n{"path": "b.mp4", "label": 2.5}\n')
    with pytest.raises(SourceError, match=r"m\.jsonl, line 2, column 'label'"):
        read_manifest(m)
    touch(m, '{"path": "a.mp4"}\n{oops\n')
    with pytest.raises(SourceError, match=r"line 2: not valid JSON"):
        read_manifest(m)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_write_then_read_manifest_round_trips(tmp_path: Path, suffix: str) -> None:
    K = np.array([[7.25, 0, 3.5], [0, 8.5, 2.25], [0, 0, 1]])
    recs = [VideoRecord(str(tmp_path / "v" / "a.mp4"), label=2, K=K, calib_size=(5, 9), num_frames=11,
                        scene_dir=str(tmp_path / "v")),
            VideoRecord(str(tmp_path / "b.mp4"), backend="frames")]
    out = write_manifest(recs, tmp_path / f"m{suffix}")
    back = read_manifest(out)
    assert [Path(r.path) for r in back] == [Path(r.path) for r in recs]
    assert back[0].label == 2 and back[0].num_frames == 11 and back[0].calib_size == (5, 9)
    np.testing.assert_array_equal(back[0].K, K)
    assert back[1].backend == "frames" and back[1].K is None and back[1].label is None
    assert Path(back[0].scene_dir) == tmp_path / "v" and back[1].scene_dir is None


# ------------------------------------------------------------------ layouts
def test_scene_records_single_and_folder(tmp_path: Path) -> None:
    K = np.array([[30.0, 0, 15.5], [0, 31.0, 7.5], [0, 0, 1]])
    make_scene(tmp_path / "s1", K, (16, 32))
    make_scene(tmp_path / "s0")
    (tmp_path / "not_a_scene").mkdir()
    recs = scene_records(tmp_path)
    assert [Path(r.scene_dir).name for r in recs] == ["s0", "s1"]  # type: ignore[arg-type]
    assert Path(recs[1].path) == tmp_path / "s1" / "video.mp4" and recs[1].calib_size == (16, 32)
    np.testing.assert_allclose(recs[1].K, K)
    assert len(scene_records(tmp_path / "s1")) == 1
    with pytest.raises(SourceError, match="no scene folders"):
        scene_records(tmp_path / "not_a_scene")


def test_kitti_raw_records_read_p_rect_and_s_rect(tmp_path: Path) -> None:
    make_kitti(tmp_path)
    for root in (tmp_path, tmp_path / "2011_09_26"):
        recs = kitti_raw_records(root)
        assert len(recs) == 2
        for i, r in enumerate(recs):
            assert Path(r.path) == tmp_path / "2011_09_26" / f"2011_09_26_drive_{i + 1:04d}_sync" / "image_02" / "data"
            assert r.backend == "frames" and r.calib_size == (375, 1242)
            np.testing.assert_allclose(r.K, KITTI_K)
    with pytest.raises(SourceError, match="missing 'P_rect_03'"):
        kitti_raw_records(tmp_path, camera="image_03")


def test_kitti_calib_with_a_short_p_rect_names_the_key(tmp_path: Path) -> None:
    date = make_kitti(tmp_path, drives=1)
    text = KITTI_CALIB.replace("P_rect_02: 7.215377e+02 ", "P_rect_02: ")
    (date / "calib_cam_to_cam.txt").write_text(text)
    with pytest.raises(SourceError, match=r"column 'P_rect_02': expected 12 numbers, got 11"):
        kitti_raw_records(tmp_path)


def test_class_folder_records_label_by_sorted_class(tmp_path: Path) -> None:
    for cls, names in {"walk": ["b.avi", "a.mp4"], "Jump": ["x.mkv"], "run": ["c.mp4"], "empty": []}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            touch(tmp_path / cls / n)
    touch(tmp_path / "run" / "notes.txt")
    recs, classes = class_folder_records(tmp_path)
    assert classes == ["Jump", "run", "walk"]
    assert [(Path(r.path).name, r.label) for r in recs] == [("x.mkv", 0), ("c.mp4", 1), ("a.mp4", 2), ("b.avi", 2)]


def test_load_sources_detects_every_layout(tmp_path: Path) -> None:
    make_scene(tmp_path / "scene")
    make_scene(tmp_path / "scenes" / "a")
    make_scene(tmp_path / "scenes" / "b")
    make_kitti(tmp_path / "kitti", drives=1)
    touch(tmp_path / "ucf" / "A" / "1.mp4")
    touch(tmp_path / "ucf" / "B" / "2.mp4")
    touch(tmp_path / "flat" / "1.mp4")
    touch(tmp_path / "flat" / "2.webm")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(touch(tmp_path / "frames" / "0.png"))
    touch(tmp_path / "m.csv", "path,label\nflat/1.mp4,4\n")
    single = touch(tmp_path / "one.mov")

    assert load_sources(tmp_path / "scene")[0].scene_dir == str(tmp_path / "scene")
    assert len(load_sources(str(tmp_path / "scenes"))) == 2
    assert load_sources(tmp_path / "kitti")[0].calib_size == (375, 1242)
    assert [r.label for r in load_sources(tmp_path / "ucf")] == [0, 1]
    assert [r.label for r in load_sources(tmp_path / "flat")] == [None, None]
    assert load_sources(tmp_path / "frames")[0].backend == "frames"
    assert load_sources(tmp_path / "m.csv")[0].label == 4
    assert load_sources(single)[0].path == str(single)
    both = load_sources([tmp_path / "scene", tmp_path / "m.csv"])
    assert len(both) == 2


def test_load_sources_errors_list_the_layouts(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"empty: layout not recognised; recognised layouts:(.|\n)*KITTI raw"):
        load_sources(tmp_path / "empty")
    with pytest.raises(SourceError, match="no such file or folder"):
        load_sources(tmp_path / "missing")
    with pytest.raises(SourceError, match="neither a manifest nor a video"):
        load_sources(touch(tmp_path / "a.txt"))
    with pytest.raises(SourceError, match="no paths given"):
        load_sources([])


# ------------------------------------------------------------------ tools/make_manifest.py
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_make_manifest_labels_from_folders(tmp_path: Path, suffix: str, load_tool: Callable[[str], ModuleType]) -> None:
    for p in ("data/b_cls/2.mp4", "data/a_cls/1.avi", "data/a_cls/sub/3.mp4", "data/top.mp4", "data/a_cls/x.txt"):
        touch(tmp_path / p)
    out = tmp_path / "out" / f"m{suffix}"
    assert load_tool("make_manifest").main([str(tmp_path / "data"), "--out", str(out), "--labels-from-folders"]) == 0
    recs = read_manifest(out)
    got = [(Path(r.path).resolve().relative_to((tmp_path / "data").resolve()).as_posix(), r.label) for r in recs]
    assert got == [("a_cls/1.avi", 0), ("a_cls/sub/3.mp4", 0), ("b_cls/2.mp4", 1)]


def test_make_manifest_probe_skips_unreadable_videos(tmp_path: Path, capsys: pytest.CaptureFixture, load_tool: Callable[[str], ModuleType]) -> None:
    pytest.importorskip("stssl.data.readers")
    write_video(tmp_path / "data" / "good.mp4", n=7)
    touch(tmp_path / "data" / "bad.mp4", "not a video at all")
    out = tmp_path / "m.csv"
    assert load_tool("make_manifest").main([str(tmp_path / "data"), "--out", str(out), "--probe"]) == 0
    recs = read_manifest(out)
    assert [Path(r.path).name for r in recs] == ["good.mp4"] and recs[0].num_frames == 7
    assert "bad.mp4" in capsys.readouterr().err
