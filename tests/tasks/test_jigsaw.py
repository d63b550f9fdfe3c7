"""Jigsaw: the permutation set, the puzzle generator (re-ordering recovers the grid), options, gradients."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from stssl.encoders.frame2d import resnet18_2d_tiny
from stssl.encoders.resnet3d import r3d_tiny
from stssl.tasks.jigsaw import JigsawTask, hamming_stats, make_jigsaw_batch, max_hamming_permutations

ROOT = Path(__file__).resolve().parents[2]


def test_max_hamming_rows_are_distinct_permutations_deterministic_per_seed() -> None:
    perms = max_hamming_permutations(100)
    assert perms.shape == (100, 9) and perms.dtype == torch.int64
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 100
    avg, low = hamming_stats(perms)
    assert low >= 2
    assert avg > 8.05  # measured 8.08 (seed 0); a random set of 100 averages about 8.0
    random_set = torch.rand(100, 9, generator=torch.Generator().manual_seed(0)).argsort(dim=1)
    assert avg > hamming_stats(random_set)[0]  # the greedy beats a random set on average distance
    assert torch.equal(perms, max_hamming_permutations(100, seed=0))
    assert not torch.equal(perms, max_hamming_permutations(100, seed=1))


def test_greedy_follows_the_max_average_rule_on_a_small_case() -> None:
    """Each added permutation has the largest summed Hamming distance to those before it (reference loop)."""
    perms = max_hamming_permutations(8, num_tiles=4, seed=3)
    candidates = [tuple(p) for p in itertools.permutations(range(4))]
    chosen = [tuple(perms[0].tolist())]
    for _ in range(7):
        scores = {c: sum(sum(a != b for a, b in zip(c, s, strict=True)) for s in chosen)
                  for c in candidates if c not in chosen}
        best = max(scores.values())
        nxt = min(c for c, v in scores.items() if v == best)  # ties: lexicographically first
        chosen.append(nxt)
    assert [tuple(p) for p in perms.tolist()] == chosen
    full = max_hamming_permutations(math.factorial(4), num_tiles=4)
    assert len({tuple(p) for p in full.tolist()}) == 24


def test_max_hamming_errors() -> None:
    with pytest.raises(ValueError, match=r"n must be in \[1, 24\] for num_tiles=4, got 25"):
        max_hamming_permutations(25, num_tiles=4)
    with pytest.raises(ValueError, match=r"num_tiles must be in \[2, 10\]"):
        max_hamming_permutations(5, num_tiles=16)


@pytest.mark.parametrize("crop", ["random", "none"])
def test_reordering_tiles_by_the_permutation_recovers_the_grid(crop: str) -> None:
    video = torch.rand(3, 3, 4, 30, 36, generator=torch.Generator().manual_seed(0))
    perms = max_hamming_permutations(20)
    out = make_jigsaw_batch(video, perms, clip_len=2, crop=crop, channel_jitter=1,
                            generator=torch.Generator().manual_seed(1))
    assert torch.equal(perms[out.label], out.permutation)
    th, tw = out.tiles.shape[-2:]
    assert (th, tw) == ((8, 8) if crop == "random" else (8, 10))  # 0.85 of 10x10 (square) or 10x12 cells
    side = 30 if crop == "random" else 36
    for b in range(3):
        s, (ct, cl) = int(out.start[b]), out.corner[b].tolist()
        window = video[b, :, s : s + 2, ct : ct + 30, cl : cl + side]
        ordered = out.tiles[b, out.permutation[b].argsort()]  # undo the shuffle with the returned label
        for k in range(9):
            for c in range(3):
                t, lf = int(out.top[b, k, c]), int(out.left[b, k, c])
                assert torch.equal(ordered[k, c], window[c, :, t : t + th, lf : lf + tw]), (b, k, c)
        # cell order is row-major: tile k lies in cell (k // 3, k % 3), so tiles further down start lower
        tops = out.top[b, :, 0].view(3, 3).float().mean(dim=1)
        assert tops[0] < tops[1] < tops[2]


@pytest.mark.parametrize("gap", [0, 2])
def test_space_time_pieces_are_cells_of_time_segments(gap: int) -> None:
    video = torch.rand(2, 3, 9, 24, 24, generator=torch.Generator().manual_seed(0))
    perms = max_hamming_permutations(12, num_tiles=8)
    out = make_jigsaw_batch(video, perms, grid=2, clip_len=3, crop="none", time_segments=2, segment_gap=gap,
                            channel_jitter=1, generator=torch.Generator().manual_seed(1))
    assert out.tiles.shape[:4] == (2, 8, 3, 3) and out.top.shape == (2, 4, 3)
    assert torch.equal(perms[out.label], out.permutation)
    th, tw = out.tiles.shape[-2:]
    for b in range(2):
        start = int(out.start[b])
        assert 0 <= start <= 9 - (6 + gap)
        ordered = out.tiles[b, out.permutation[b].argsort()]
        for piece in range(8):
            seg, cell = divmod(piece, 4)
            first = start + seg * (3 + gap)
            for c in range(3):
                t, lf = int(out.top[b, cell, c]), int(out.left[b, cell, c])
                want = video[b, c, first : first + 3, t : t + th, lf : lf + tw]
                assert torch.equal(ordered[piece, c], want), (b, piece, c)
    with pytest.raises(ValueError, match="time_segments >= 1 and segment_gap >= 0"):
        make_jigsaw_batch(video, None, time_segments=0)
    with pytest.raises(ValueError, match=r"expected shape \(P 8\)"):
        make_jigsaw_batch(video, max_hamming_permutations(5), grid=2, time_segments=2)


def test_space_time_task_needs_its_window_and_fits_the_permutation_limit() -> None:
    enc = r3d_tiny(width=4)
    task = JigsawTask(num_permutations=24, grid=2, clip_len=2, time_segments=2, segment_gap=1, hidden=8)
    assert task.num_tiles == 8 and task.window == 5 and task.requires.min_frames == 5
    assert task.permutations.shape == (24, 8)
    task.build(enc.spec)
    out = task({"video": torch.rand(2, 3, 5, 32, 32)}, enc, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match=r"JigsawTask \(2 segments of 2 frames, gap 1\): video has T=4 frames"):
        task({"video": torch.rand(2, 3, 4, 32, 32)}, enc)
    with pytest.raises(ValueError, match="time_segments \\* grid\\*\\*2 <= 10"):
        JigsawTask(grid=3, time_segments=2)
    JigsawTask(num_permutations=None, predict="positions", grid=3, time_segments=2)  # no set: any size


def test_uniform_permutations_and_colour_handling() -> None:
    video = torch.rand(16, 3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    out = make_jigsaw_batch(video, None, gray_p=0.5, channel_drop_p=0.5, generator=torch.Generator().manual_seed(2))
    assert (out.label == -1).all()
    assert all(sorted(p) == list(range(9)) for p in out.permutation.tolist())
    assert len({tuple(p) for p in out.permutation.tolist()}) == 16
    modes = out.color_mode.flatten()
    assert (modes >= 1).all() and (modes == 1).any() and (modes >= 2).any()
    tiles = out.tiles.flatten(0, 1)
    grey = modes == 1
    assert torch.allclose(tiles[grey][:, 0], tiles[grey][:, 1]) and torch.allclose(tiles[grey][:, 1], tiles[grey][:, 2])
    dropped = (modes >= 2).nonzero().flatten()
    for i in dropped.tolist():
        others = [c for c in range(3) if c != int(modes[i]) - 2]
        assert (tiles[i, others] - 0.5).abs().max() < 0.05


def test_seeded_generator_gives_identical_output() -> None:
    video = torch.rand(4, 3, 3, 32, 40, generator=torch.Generator().manual_seed(0))
    perms = max_hamming_permutations(10)
    kw = dict(clip_len=2, gray_p=0.3, channel_drop_p=0.3, channel_jitter=2)
    a = make_jigsaw_batch(video, perms, generator=torch.Generator().manual_seed(4), **kw)
    b = make_jigsaw_batch(video, perms, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(a.tiles, b.tiles) and torch.equal(a.label, b.label) and torch.equal(a.top, b.top)
    c = make_jigsaw_batch(video, perms, generator=torch.Generator().manual_seed(5), **kw)
    assert not torch.equal(a.tiles, c.tiles)


def test_errors_name_the_input() -> None:
    with pytest.raises(ValueError, match=r"make_jigsaw_batch permutations: expected shape \(P 9\)"):
        make_jigsaw_batch(torch.rand(1, 3, 1, 30, 30), torch.zeros(5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="make_jigsaw_batch: a 2x30 frame is too small for a 3x3 grid"):
        make_jigsaw_batch(torch.rand(1, 3, 1, 2, 30), None, crop="none")
    with pytest.raises(ValueError, match="predict='permutation' needs a permutation set"):
        JigsawTask(num_permutations=None)
    with pytest.raises(ValueError, match="JigsawTask: unknown predict 'order'"):
        JigsawTask(predict="order")
    with pytest.raises(ValueError, match="JigsawTask: gray_p \\+ channel_drop_p must be <= 1"):
        JigsawTask(gray_p=0.6, channel_drop_p=0.6)
    with pytest.raises(ValueError, match="JigsawTask: video has T=1 frames, needs clip_len = 2"):
        enc = r3d_tiny(width=4)
        task = JigsawTask(num_permutations=5, clip_len=2)
        task.build(enc.spec)
        task({"video": torch.rand(1, 3, 1, 32, 32)}, enc)


@pytest.mark.parametrize("make_encoder", [lambda: r3d_tiny(width=8), resnet18_2d_tiny], ids=["r3d", "frame2d"])
@pytest.mark.parametrize("predict", ["permutation", "positions"])
def test_gradients_reach_every_parameter(make_encoder, predict: str) -> None:
    torch.manual_seed(0)
    enc = make_encoder()
    task = JigsawTask(num_permutations=10 if predict == "permutation" else None, predict=predict, hidden=16,
                      clip_len=2, channel_jitter=1, channel_drop_p=0.3, normalize_tiles=True)
    task.build(enc.spec)
    out = task({"video": torch.rand(2, 3, 3, 32, 48)}, enc, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    assert set(out.logs) == ({"loss", "acc", "solved"} if predict == "positions" else {"loss", "acc"})
    out.loss.backward()
    for name, p in list(task.named_parameters()) + list(enc.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_positions_loss_is_per_tile_cross_entropy() -> None:
    torch.manual_seed(0)
    enc = r3d_tiny(width=4)
    task = JigsawTask(num_permutations=None, predict="positions", hidden=8, dropout=0.0, gray_p=0.0)
    task.build(enc.spec)
    assert task.classifier is not None and task.tile_head is not None
    enc.eval()
    video = torch.rand(2, 3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    out = task({"video": video}, enc, torch.Generator().manual_seed(3))
    jb = make_jigsaw_batch(video, None, gray_p=0.0, generator=torch.Generator().manual_seed(3))
    feats = task.tile_head(enc(jb.tiles.flatten(0, 1)).pooled).view(2, -1)
    logits = task.classifier(feats).view(2, 9, 9)
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), jb.permutation.flatten())
    torch.testing.assert_close(out.loss, ref)
    assert task.permutations.shape == (0, 9) and "permutations" in task.state_dict()


def test_permutation_set_is_a_buffer_kept_in_checkpoints() -> None:
    task = JigsawTask(num_permutations=30, permutation_seed=2)
    assert torch.equal(task.state_dict()["permutations"], max_hamming_permutations(30, seed=2))
    assert task.num_classes == 30


def test_make_permutations_tool(tmp_path: Path, capsys: pytest.CaptureFixture[str], load_tool: Callable[[str], ModuleType]) -> None:
    tool = load_tool("make_permutations")
    assert tool.main(["--num", "24", "--num-tiles", "4", "--out", str(tmp_path / "p.npy")]) == 0
    stats = json.loads(capsys.readouterr().out)
    perms = np.load(tmp_path / "p.npy")
    assert perms.shape == (24, 4) and stats["num"] == 24 and stats["min_hamming"] == 2
    assert json.loads((tmp_path / "p.json").read_text())["avg_hamming"] == stats["avg_hamming"]
    assert np.array_equal(perms, max_hamming_permutations(24, 4).numpy())
    assert tool.main(["--num", "5", "--num-tiles", "4", "--out", str(tmp_path / "q.json")]) == 0
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["permutations"] == max_hamming_permutations(5, 4).tolist() and saved["stats"]["num"] == 5
    with pytest.raises(SystemExit):
        tool.main(["--out", str(tmp_path / "x.txt")])
    assert "--out must end in .npy or .json" in capsys.readouterr().err
