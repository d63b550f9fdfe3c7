"""The frame-ordering pretext tasks: Shuffle&Learn, OPN, arrow of time, playback speed; their shared helpers
(:mod:`stssl.tasks.common`); and the learnability of all of them and VCOP.

Label generators are checked on "value videos" whose frame ``t`` is filled with ``t``, so every returned index can
be compared with the pixels actually placed.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import torch

from stssl.encoders.base import Encoder
from stssl.encoders.frame2d import resnet18_2d_tiny
from stssl.encoders.resnet3d import r3d_tiny
from stssl.tasks.arrow import ArrowTask, make_arrow_batch
from stssl.tasks.base import PretextTask
from stssl.tasks.common import (
    check_ordered_draw,
    classification_output,
    encode_frames,
    mlp_head,
    pair_relations,
    pool_cells,
    sample_ordered_frames,
)
from stssl.tasks.opn import OPNTask, make_opn_batch, opn_classes
from stssl.tasks.shuffle_learn import ShuffleLearnTask, make_shuffle_learn_batch
from stssl.tasks.speed import SpeedTask, make_speed_batch
from stssl.tasks.vcop import VCOPTask
from stssl.types import EncoderSpec


def value_video(batch: int, frames: int, size: int = 2) -> torch.Tensor:
    """``(B, 1, T, size, size)`` where every pixel of frame ``t`` equals ``t``."""
    return torch.arange(float(frames)).view(1, 1, frames, 1, 1).expand(batch, 1, frames, size, size).contiguous()


def shown_frames(frames: torch.Tensor) -> torch.Tensor:
    """Frame values of ``(B, n, C, H, W)`` frames, checking each frame is constant: ``(B, n)`` int64."""
    flat = frames.flatten(2)
    assert (flat == flat[..., :1]).all()
    return flat[..., 0].long()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These networks are tiny: a second intra-op thread only adds overhead (about 20x on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- shared helpers


def test_sample_ordered_frames_respects_gap_and_span_and_is_uniform() -> None:
    t = sample_ordered_frames(4000, 6, 3, min_gap=2, generator=gen(0))
    assert t.dtype == torch.long and t.shape == (4000, 3)
    assert (t.diff(dim=1) >= 2).all() and t.min() >= 0 and t.max() <= 5
    # T=6, 3 frames >= 2 apart: exactly four tuples exist, each should be drawn about 1/4 of the time
    counts = Counter(map(tuple, t.tolist()))
    assert set(counts) == {(0, 2, 4), (0, 2, 5), (0, 3, 5), (1, 3, 5)}
    assert all(850 < c < 1150 for c in counts.values()), counts
    spanned = sample_ordered_frames(500, 30, 4, min_gap=1, max_span=6, generator=gen(1))
    assert (spanned[:, -1] - spanned[:, 0] < 6).all() and spanned.max() > 20  # windows move across the clip
    with pytest.raises(ValueError, match="max_span=3 cannot hold 3 frames 2 apart"):
        sample_ordered_frames(1, 10, 3, min_gap=2, max_span=3)


def test_pool_cells_global_equals_mean_and_grid_keeps_cells() -> None:
    dense = torch.rand(2, 5, 3, 4, 6, generator=gen(0))
    torch.testing.assert_close(pool_cells(dense), dense.mean(dim=(2, 3, 4)))
    cells = pool_cells(dense, (2, 3), time_cells=3)
    assert cells.shape == (2, 5 * 3 * 2 * 3)
    torch.testing.assert_close(cells[:, 0], dense[:, 0, 0, :2, :2].mean(dim=(1, 2)))


def test_check_ordered_draw_names_the_caller_and_the_problem() -> None:
    assert check_ordered_draw("X", 5, min_gap=2, max_span=9) == 9
    with pytest.raises(ValueError, match="X: min_gap must be >= 1, got 0"):
        check_ordered_draw("X", 3, min_gap=0)
    with pytest.raises(ValueError, match=r"X: max_span=8 cannot hold 5 frames 2 apart \(needs 9\)"):
        check_ordered_draw("X", 5, min_gap=2, max_span=8)


def test_pair_relations_fuse_each_pair_in_order() -> None:
    feats = torch.rand(2, 3, 4, generator=gen(0))
    pairs = [(0, 1), (0, 2), (1, 2)]
    concat = pair_relations(feats, pairs, torch.nn.Identity(), "concat")
    assert concat.shape == (2, 3 * 8)
    torch.testing.assert_close(concat[:, 8:16], torch.cat([feats[:, 0], feats[:, 2]], dim=1), rtol=0, atol=0)
    diff = pair_relations(feats, pairs, torch.nn.Identity(), "diff")
    torch.testing.assert_close(diff[:, 8:], feats[:, 1] - feats[:, 2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown fusion 'sum'"):
        pair_relations(feats, pairs, torch.nn.Identity(), "sum")  # type: ignore[arg-type]


def test_classification_output_is_cross_entropy_and_top1() -> None:
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]], requires_grad=True)
    label = torch.tensor([0, 2, 0, 1])
    out = classification_output(logits, label)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(logits, label))
    assert float(out.logs["acc"]) == 0.5 and not out.logs["loss"].requires_grad
    with pytest.raises(ValueError, match="label"):
        classification_output(logits, label[:3])


def test_mlp_head_keeps_its_checkpoint_layout() -> None:
    """Saved heads load by position: ``0`` is the hidden layer, ``3`` the classifier."""
    assert list(mlp_head(4, 8, 2).state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]


class _RecordingEncoder(Encoder):
    """Records its input; needs 3 frames; the feature of a clip is its per-channel mean."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = EncoderSpec(channels=(1,), strides=((1, 1, 1),), in_channels=1, min_frames=3)
        self.seen: list[torch.Tensor] = []

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.seen.append(video)
        return (video,)


def test_encode_frames_repeats_each_frame_to_the_encoders_min_frames() -> None:
    enc = _RecordingEncoder()
    frames = torch.rand(2, 4, 1, 8, 8, generator=gen(0))
    feats = encode_frames(enc, frames)
    (clips,) = enc.seen
    assert clips.shape == (8, 1, 3, 8, 8)
    for k in range(3):
        torch.testing.assert_close(clips[:, :, k], frames.flatten(0, 1))
    torch.testing.assert_close(feats, frames.mean(dim=(2, 3, 4))[..., None])


# ---------------------------------------------------------------------------------------------- Shuffle&Learn


def test_shuffle_learn_labels_match_the_frames_placed() -> None:
    out = make_shuffle_learn_batch(value_video(64, 14), min_gap=2, generator=gen(0))
    assert out.frames.shape == (64, 3, 1, 2, 2) and out.label.shape == (64,)
    shown = shown_frames(out.frames)
    assert torch.equal(shown, out.frame_indices)
    tup = out.tuple_indices
    assert (tup.diff(dim=1) >= 2).all()
    a, b, c, d, e = tup.unbind(dim=1)
    first, middle, last = shown.unbind(dim=1)
    # outer frames are always b and d (either way round); the middle is c for positives, a or e for negatives
    assert (((first == b) & (last == d)) | ((first == d) & (last == b))).all()
    pos = out.label == 1
    assert (middle[pos] == c[pos]).all()
    assert ((middle[~pos] == a[~pos]) | (middle[~pos] == e[~pos])).all()
    between = (middle - first).sign() == (last - middle).sign()
    assert torch.equal(between.long(), out.label)


def test_shuffle_learn_draws_are_balanced() -> None:
    out = make_shuffle_learn_batch(value_video(4000, 9), generator=gen(1))
    shown = out.frame_indices
    neg = out.label == 0
    assert 0.46 < out.label.float().mean() < 0.54
    reversed_ = shown[:, 0] > shown[:, 2]
    assert 0.46 < reversed_.float().mean() < 0.54
    takes_a = shown[neg, 1] == out.tuple_indices[neg, 0]
    assert 0.45 < takes_a.float().mean() < 0.55


def test_shuffle_learn_is_deterministic_per_seed() -> None:
    video = torch.rand(3, 3, 10, 8, 8, generator=gen(0))
    a = make_shuffle_learn_batch(video, generator=gen(7))
    b = make_shuffle_learn_batch(video, generator=gen(7))
    assert torch.equal(a.frames, b.frames) and torch.equal(a.label, b.label)
    assert torch.equal(a.frame_indices, b.frame_indices)
    draws = {tuple(make_shuffle_learn_batch(video, generator=gen(s)).frame_indices.flatten().tolist())
             for s in range(10)}
    assert len(draws) > 1


def test_shuffle_learn_too_short_clip_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"make_shuffle_learn_batch: video has T=8 frames, needs .* = 9"):
        make_shuffle_learn_batch(torch.rand(1, 3, 8, 4, 4), min_gap=2)
    enc, task = r3d_tiny(width=4), ShuffleLearnTask(min_gap=2, hidden=8)
    task.build(enc.spec)
    assert task.requires.min_frames == 9
    with pytest.raises(ValueError, match=r"ShuffleLearnTask: video has T=8 frames, needs .* = 9 for 5 frames 2 apart"):
        task({"video": torch.rand(1, 3, 8, 32, 32)}, enc, gen(0))
    with pytest.raises(ValueError, match="max_span=4"):
        ShuffleLearnTask(max_span=4)


# ---------------------------------------------------------------------------------------------- OPN


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_opn_classes_cover_every_order_once_up_to_reversal(n: int) -> None:
    classes = opn_classes(n)
    assert classes.dtype == torch.long and classes.shape == (math.factorial(n) // 2, n)
    assert classes[0].tolist() == list(range(n))
    owners: Counter[tuple[int, ...]] = Counter()
    for row in classes.tolist():
        owners[tuple(row)] += 1
        owners[tuple(reversed(row))] += 1
    assert set(owners) == set(itertools.permutations(range(n))) and set(owners.values()) == {1}


def test_opn_labels_match_the_frames_placed() -> None:
    out = make_opn_batch(value_video(64, 12), num_frames=4, min_gap=2, generator=gen(0))
    assert out.frames.shape == (64, 4, 1, 2, 2)
    shown = shown_frames(out.frames)
    assert torch.equal(shown, out.frame_indices)
    canon = opn_classes(4)[out.label]
    assert ((out.permutation == canon) | (out.permutation == canon.flip(1))).all(dim=1).all()
    # undoing the returned permutation puts the frames back in time order, min_gap apart
    restored = torch.gather(shown, 1, torch.argsort(out.permutation, dim=1))
    assert (restored.diff(dim=1) >= 2).all()
    # the label is a function of the relative order of the shown frames alone
    rank = torch.argsort(torch.argsort(shown, dim=1), dim=1)
    assert torch.equal(rank, out.permutation)


def test_opn_draws_are_balanced_over_classes_and_directions() -> None:
    out = make_opn_batch(value_video(4800, 4), generator=gen(2))
    counts = torch.bincount(out.label, minlength=12)
    assert counts.shape == (12,) and (counts > 320).all() and (counts < 480).all(), counts
    forward = (out.permutation == opn_classes(4)[out.label]).all(dim=1)
    assert 0.46 < forward.float().mean() < 0.54


def test_opn_is_deterministic_per_seed_and_errors_clearly() -> None:
    video = torch.rand(3, 3, 8, 8, 8, generator=gen(0))
    a, b = make_opn_batch(video, generator=gen(4)), make_opn_batch(video, generator=gen(4))
    assert torch.equal(a.frames, b.frames) and torch.equal(a.label, b.label)
    assert len({tuple(make_opn_batch(video, generator=gen(s)).label.tolist()) for s in range(10)}) > 1
    with pytest.raises(ValueError, match=r"make_opn_batch: video has T=6 frames, needs .* = 7"):
        make_opn_batch(torch.rand(1, 3, 6, 4, 4), num_frames=4, min_gap=2)
    enc, task = r3d_tiny(width=4), OPNTask(min_gap=2, hidden=8)
    task.build(enc.spec)
    with pytest.raises(ValueError, match="OPNTask: video has T=6 frames, needs .* = 7"):
        task({"video": torch.rand(1, 3, 6, 32, 32)}, enc, gen(0))
    with pytest.raises(ValueError, match="pair_fusion"):
        OPNTask(pair_fusion="sum")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_frames must be in"):
        OPNTask(num_frames=2)


# ---------------------------------------------------------------------------------------------- arrow of time


def test_arrow_labels_match_the_frames_placed() -> None:
    out = make_arrow_batch(value_video(64, 10), clip_len=5, generator=gen(0))
    assert out.clips.shape == (64, 1, 5, 2, 2)
    shown = shown_frames(out.clips.transpose(1, 2))
    assert torch.equal(shown, out.frame_indices)
    step = torch.where(out.label == 1, -1, 1)
    assert (shown.diff(dim=1) == step[:, None]).all()
    assert torch.equal(shown.min(dim=1).values, out.start) and (out.start <= 5).all()


def test_arrow_draws_are_balanced_and_deterministic() -> None:
    out = make_arrow_batch(value_video(4000, 8), clip_len=4, generator=gen(1))
    assert 0.46 < out.label.float().mean() < 0.54
    assert set(out.start.tolist()) == set(range(5))
    video = torch.rand(2, 3, 8, 8, 8, generator=gen(0))
    a, b = make_arrow_batch(video, 4, generator=gen(3)), make_arrow_batch(video, 4, generator=gen(3))
    assert torch.equal(a.clips, b.clips) and torch.equal(a.label, b.label)


def test_arrow_too_short_clip_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="make_arrow_batch: video has T=5 frames, needs clip_len = 8"):
        make_arrow_batch(torch.rand(1, 3, 5, 4, 4), clip_len=8)
    with pytest.raises(ValueError, match="clip_len must be >= 2"):
        ArrowTask(clip_len=1)
    assert ArrowTask(clip_len=6).requires.min_frames == 6
    # the task's errors name the task, not the label generator it calls
    enc, task = r3d_tiny(width=4), ArrowTask(clip_len=8, hidden=8)
    task.build(enc.spec)
    with pytest.raises(ValueError, match="ArrowTask: video has T=5 frames, needs clip_len = 8"):
        task({"video": torch.rand(1, 3, 5, 32, 32)}, enc, gen(0))
    with pytest.raises(ValueError, match=r"ArrowTask: video: expected shape \(B C T H W\)"):
        task({"video": torch.rand(3, 5, 32, 32)}, enc, gen(0))


# ---------------------------------------------------------------------------------------------- playback speed


def test_speed_labels_match_the_frames_placed() -> None:
    speeds = (1, 2, 4)
    out = make_speed_batch(value_video(64, 15), clip_len=4, speeds=speeds, generator=gen(0))
    assert out.clips.shape == (64, 1, 4, 2, 2)
    shown = shown_frames(out.clips.transpose(1, 2))
    assert torch.equal(shown, out.frame_indices)
    assert torch.equal(out.speed, torch.tensor(speeds)[out.label])
    assert (shown.diff(dim=1) == out.speed[:, None]).all()
    assert torch.equal(shown[:, 0], out.start) and (shown.max(dim=1).values < 15).all()


def test_speed_draws_are_balanced_and_starts_cover_the_clip() -> None:
    out = make_speed_batch(value_video(3000, 13), clip_len=4, speeds=(1, 2, 4), generator=gen(1))
    counts = torch.bincount(out.label, minlength=3)
    assert (counts > 900).all() and (counts < 1100).all(), counts
    # at speed 4 the clip fills T=13 exactly; at speed 1 every start in [0, 9] occurs
    assert set(out.start[out.speed == 4].tolist()) == {0}
    assert set(out.start[out.speed == 1].tolist()) == set(range(10))
    video = torch.rand(2, 3, 13, 8, 8, generator=gen(0))
    a, b = make_speed_batch(video, 4, generator=gen(5)), make_speed_batch(video, 4, generator=gen(5))
    assert torch.equal(a.clips, b.clips) and torch.equal(a.label, b.label)


def test_speed_too_short_clip_is_a_clear_error() -> None:
    task = SpeedTask(clip_len=8, speeds=(1, 2, 4))
    assert task.requires.min_frames == (8 - 1) * 4 + 1
    with pytest.raises(ValueError, match=r"make_speed_batch: video has T=28 frames, needs .* = 29"):
        make_speed_batch(torch.rand(1, 3, 28, 4, 4), clip_len=8)
    enc = r3d_tiny(width=4)
    task.build(enc.spec)
    with pytest.raises(ValueError, match=r"SpeedTask: video has T=28 frames, needs .* = 29"):
        task({"video": torch.rand(1, 3, 28, 32, 32)}, enc, gen(0))
    for bad in [(1,), (1, 1), (0, 2), (1, 2.5)]:
        with pytest.raises(ValueError, match="speeds must be"):
            SpeedTask(speeds=bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- task contract

TASK_CASES: dict[str, tuple[Callable[[], PretextTask], Callable[[], Encoder], int]] = {
    "shuffle_learn_2d": (lambda: ShuffleLearnTask(hidden=8, pool_grid=(2, 2)), lambda: resnet18_2d_tiny(width=4), 5),
    "shuffle_learn_3d": (lambda: ShuffleLearnTask(hidden=8), lambda: r3d_tiny(width=4), 5),
    "opn_diff": (lambda: OPNTask(hidden=8), lambda: resnet18_2d_tiny(width=4), 4),
    "opn_concat": (lambda: OPNTask(hidden=8, pair_fusion="concat", num_frames=3), lambda: r3d_tiny(width=4), 3),
    "arrow": (lambda: ArrowTask(clip_len=4, hidden=8, pool_grid=(2, 2), time_cells=2), lambda: r3d_tiny(width=4), 5),
    "speed": (lambda: SpeedTask(clip_len=3, speeds=(1, 2), hidden=8), lambda: r3d_tiny(width=4), 5),
}


@pytest.mark.parametrize("case", sorted(TASK_CASES))
def test_task_gives_finite_loss_and_gradients_to_every_parameter(case: str) -> None:
    make_task, make_encoder, frames = TASK_CASES[case]
    torch.manual_seed(0)
    enc, task = make_encoder(), make_task()
    with pytest.raises(RuntimeError, match="call build"):
        task({"video": torch.rand(2, 3, frames, 32, 32)}, enc, gen(0))
    task.build(enc.spec)
    assert task.requires.min_frames <= frames
    out = task({"video": torch.rand(4, 3, frames, 32, 32, generator=gen(1))}, enc, gen(0))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert set(out.logs) == {"loss", "acc"} and 0 <= float(out.logs["acc"]) <= 1
    out.loss.backward()
    head_params = list(task.named_parameters())
    assert head_params
    for name, p in head_params + list(enc.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{case}: {name} got no gradient"
    for name, p in head_params:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{case}: {name} got a zero gradient"


def test_default_names() -> None:
    assert [t.default_name for t in (ShuffleLearnTask, OPNTask, ArrowTask, SpeedTask)] == [
        "shuffle_learn", "opn", "arrow", "speed"]


# ---------------------------------------------------------------------------------------------- learnability


def moving_square(batch: int, frames: int, step: int, g: torch.Generator, size: int = 32, side: int = 6) -> torch.Tensor:
    """``(B, 3, T, size, size)``: a bright square on a dark background, moving ``step`` pixels right per frame
    from a random start, so its position encodes ``t``."""
    travel = step * (frames - 1)
    x0 = torch.randint(0, size - side - travel + 1, (batch,), generator=g)
    y0 = torch.randint(0, size - side + 1, (batch,), generator=g)
    xs = torch.arange(size)
    t = torch.arange(frames)
    left = x0[:, None] + step * t[None, :]  # (B, T)
    in_x = (xs[None, None, :] >= left[..., None]) & (xs[None, None, :] < left[..., None] + side)  # (B, T, W)
    in_y = (xs[None, :] >= y0[:, None]) & (xs[None, :] < y0[:, None] + side)  # (B, H)
    square = in_y[:, None, :, None] & in_x[:, :, None, :]  # (B, T, H, W)
    return (0.1 + 0.9 * square.float())[:, None].expand(-1, 3, -1, -1, -1)


def test_moving_square_moves() -> None:
    video = moving_square(2, 4, 2, gen(0))
    column = video[:, 0].sum(dim=2).argmax(dim=-1)  # (B, T): leftmost brightest column
    assert (column.diff(dim=1) == 2).all()


def fading_texture(batch: int, frames: int, g: torch.Generator, size: int = 32) -> torch.Tensor:
    """``(B, 3, T, size, size)``: a random still texture that brightens linearly over time, so order is observable."""
    texture = torch.rand(batch, 3, 1, size, size, generator=g)
    return texture * (0.2 + 0.06 * torch.arange(float(frames)).view(1, 1, frames, 1, 1))


def _train_and_eval(task: PretextTask, enc: Encoder, make_video: Callable[[int, torch.Generator], torch.Tensor],
                    steps: int) -> float:
    task.build(enc.spec)
    opt = torch.optim.Adam(list(enc.parameters()) + list(task.parameters()), lr=3e-3)
    g = gen(5)
    for _ in range(steps):
        out = task({"video": make_video(8, g)}, enc)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    enc.eval()
    task.eval()
    with torch.no_grad():
        accs = [task({"video": make_video(16, g)}, enc, gen(100 + i)).logs["acc"] for i in range(8)]
    return float(torch.stack(accs).mean())


def _square(frames: int, step: int) -> Callable[[int, torch.Generator], torch.Tensor]:
    return lambda batch, g: moving_square(batch, frames, step, g)


# (task, video maker, train steps, threshold, chance): a label/frame mismatch in a generator keeps accuracy at chance.
LEARN_CASES: dict[str, tuple[Callable[[], PretextTask], Callable[[int, torch.Generator], torch.Tensor], int, float,
                             float]] = {
    "shuffle_learn": (lambda: ShuffleLearnTask(hidden=32, dropout=0.0, pool_grid=(2, 2)), _square(10, 2), 50, 0.65,
                      1 / 2),
    "opn": (lambda: OPNTask(hidden=32, dropout=0.0, pool_grid=(2, 2)), _square(10, 2), 50, 0.25, 1 / 12),
    "arrow": (lambda: ArrowTask(clip_len=6, hidden=32, dropout=0.0), _square(8, 2), 25, 0.8, 1 / 2),
    "speed": (lambda: SpeedTask(clip_len=4, speeds=(1, 2, 4), hidden=32, dropout=0.0), _square(13, 1), 50, 0.55,
              1 / 3),
    # VCOP on whole-frame brightness: the clip order is the brightness order
    "vcop": (lambda: VCOPTask(num_clips=3, clip_len=4, hidden=64, dropout=0.0),
             lambda batch, g: fading_texture(batch, 12, g), 80, 0.5, 1 / 6),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(LEARN_CASES))
def test_task_learns_above_chance(case: str) -> None:
    make_task, make_video, steps, threshold, chance = LEARN_CASES[case]
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    acc = _train_and_eval(make_task(), enc, make_video, steps)
    assert acc > threshold, f"{case}: accuracy {acc:.2f} not clearly above chance {chance:.2f}"
