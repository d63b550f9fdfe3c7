"""Tests for stssl.eval.propagation: DAVIS J&F against naive loop references, and label propagation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stssl.eval.propagation import (
    DavisMeter,
    boundary_f_measure,
    boundary_map,
    davis_scores,
    dilate_disk,
    j_and_f,
    mask_to_onehot,
    propagate_labels,
    region_similarity,
    soft_labels_to_masks,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ naive references
def naive_seg2bmap(seg: np.ndarray) -> np.ndarray:
    """DAVIS's seg2bmap rule, pixel by pixel (out-of-image neighbours are background)."""
    H, W = seg.shape

    def at(y: int, x: int) -> bool:
        return bool(seg[y, x]) if y < H and x < W else False

    b = np.zeros((H, W), dtype=bool)
    for y in range(H):
        for x in range(W):
            v = at(y, x)
            if y == H - 1 and x == W - 1:
                b[y, x] = False
            elif y == H - 1:
                b[y, x] = v != at(y, x + 1)
            elif x == W - 1:
                b[y, x] = v != at(y + 1, x)
            else:
                b[y, x] = v != at(y, x + 1) or v != at(y + 1, x) or v != at(y + 1, x + 1)
    return b


def naive_dilate(x: np.ndarray, r: int) -> np.ndarray:
    H, W = x.shape
    out = np.zeros_like(x, dtype=bool)
    for y in range(H):
        for xx in range(W):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    if dx * dx + dy * dy <= r * r and 0 <= y + dy < H and 0 <= xx + dx < W and x[y + dy, xx + dx]:
                        out[y, xx] = True
    return out


def naive_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS f_measure with explicit distance checks between boundary pixels."""
    H, W = gt.shape
    r = bound_th if bound_th >= 1 else math.ceil(bound_th * math.sqrt(H * H + W * W))
    pb, gb = naive_seg2bmap(pred), naive_seg2bmap(gt)
    p_pts, g_pts = np.argwhere(pb), np.argwhere(gb)

    def matched(a: np.ndarray, b: np.ndarray) -> int:
        return sum(any((y - v) ** 2 + (x - u) ** 2 <= r * r for v, u in b) for y, x in a)

    n_p, n_g = len(p_pts), len(g_pts)
    if n_p == 0 and n_g > 0:
        precision, recall = 1.0, 0.0
    elif n_p > 0 and n_g == 0:
        precision, recall = 0.0, 1.0
    elif n_p == 0 and n_g == 0:
        precision, recall = 1.0, 1.0
    else:
        precision, recall = matched(p_pts, g_pts) / n_p, matched(g_pts, p_pts) / n_g
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def naive_j(pred: np.ndarray, gt: np.ndarray) -> float:
    inter, union = int((pred & gt).sum()), int((pred | gt).sum())
    return 1.0 if union == 0 else inter / union


def naive_j_and_f(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """The davis2017-evaluation pipeline: objects 1..max(gt[0]), frames 1..T-2, per-object means, then mean."""
    gt = np.where(gt == 255, 0, gt)
    n_obj = int(gt[0].max())
    js, fs = [], []
    for obj in range(1, n_obj + 1):
        frames = range(1, gt.shape[0] - 1)
        js.append(np.mean([naive_j(pred[t] == obj, gt[t] == obj) for t in frames]))
        fs.append(np.mean([naive_f(pred[t] == obj, gt[t] == obj) for t in frames]))
    j, f = float(np.mean(js)), float(np.mean(fs))
    return {"J": j, "F": f, "JF": (j + f) / 2}


def random_blobs(seed: int, shape: tuple[int, int, int], n_obj: int) -> np.ndarray:
    """(T, H, W) ids: a few overlapping random rectangles per frame, plus speckle."""
    rng = np.random.default_rng(seed)
    T, H, W = shape
    out = np.zeros(shape, dtype=np.int64)
    for t in range(T):
        for obj in range(1, n_obj + 1):
            y0, x0 = rng.integers(0, H - 4), rng.integers(0, W - 4)
            out[t, y0 : y0 + rng.integers(3, H // 2), x0 : x0 + rng.integers(3, W // 2)] = obj
        speckle = rng.random((H, W)) < 0.03
        out[t][speckle] = rng.integers(0, n_obj + 1, size=int(speckle.sum()))
    return out


# --------------------------------------------------------------------------------- J and F vs references
@pytest.mark.parametrize("seed", [0, 1])
def test_boundary_map_matches_seg2bmap_rule(seed: int) -> None:
    seg = random_blobs(seed, (1, 13, 17), 1)[0] > 0
    assert np.array_equal(boundary_map(torch.from_numpy(seg)).numpy(), naive_seg2bmap(seg))


@pytest.mark.parametrize("radius", [0, 1, 2, 3, 5])
def test_dilate_disk_matches_naive_disk(radius: int) -> None:
    x = np.random.default_rng(radius).random((11, 14)) < 0.05
    x[0, 0] = x[10, 13] = True  # corners: no wrap-around
    got = dilate_disk(torch.from_numpy(x)[None], radius)[0].numpy()
    assert np.array_equal(got, naive_dilate(x, radius))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_region_and_boundary_scores_match_naive(seed: int) -> None:
    gt = random_blobs(seed, (3, 20, 24), 2)
    pred = random_blobs(seed + 10, (3, 20, 24), 2)
    pred[1] = gt[1]  # one exact frame
    for obj in (1, 2):
        for bound_th in (0.008, 0.05, 2):
            got = boundary_f_measure(torch.from_numpy(pred == obj), torch.from_numpy(gt == obj), bound_th)
            want = [naive_f(pred[t] == obj, gt[t] == obj, bound_th) for t in range(3)]
            np.testing.assert_allclose(got.numpy(), want, atol=1e-12)
        got_j = region_similarity(torch.from_numpy(pred == obj), torch.from_numpy(gt == obj))
        np.testing.assert_allclose(got_j.numpy(), [naive_j(pred[t] == obj, gt[t] == obj) for t in range(3)])


@pytest.mark.parametrize("seed", [0, 3])
def test_j_and_f_matches_naive_davis_pipeline(seed: int) -> None:
    gt = random_blobs(seed, (5, 24, 20), 3)
    gt[2, :2, :2] = 255  # void: background for the semi-supervised evaluation
    pred = np.where(np.random.default_rng(seed).random(gt.shape) < 0.8, np.where(gt == 255, 0, gt), 0)
    got = j_and_f(torch.from_numpy(pred), torch.from_numpy(gt))
    want = naive_j_and_f(pred, gt)
    assert got == pytest.approx(want, abs=1e-12)
    assert set(got) == {"J", "F", "JF"}
    assert j_and_f(pred, gt) == pytest.approx(want, abs=1e-12)  # numpy input too


# ------------------------------------------------------------------------------------ hand-made cases
def square_video(T: int = 4, size: int = 64, shift: int = 0) -> torch.Tensor:
    masks = torch.zeros(T, size, size, dtype=torch.long)
    masks[:, 16 : 40, 16 + shift : 40 + shift] = 1
    masks[:, 44:60, 4:20] = 2
    return masks


def test_perfect_masks_score_one_and_shifted_masks_less() -> None:
    gt = square_video()
    assert j_and_f(gt, gt) == {"J": 1.0, "F": 1.0, "JF": 1.0}
    shifted = gt.clone()
    shifted[1:] = square_video(shift=6)[1:]
    scores = j_and_f(shifted, gt)
    assert scores["J"] < 1 and scores["F"] < 1
    # object 2 is still perfect; object 1 has IoU 18/30 on every scored frame
    assert scores["J"] == pytest.approx((1 + 18 * 24 / (30 * 24)) / 2)


def test_boundary_tolerance_is_a_fraction_of_the_diagonal() -> None:
    size = 200  # diagonal 282.8 px -> tolerance ceil(2.26) = 3 px
    gt = square_video(size=size)
    within = square_video(size=size, shift=3)
    beyond = square_video(size=size, shift=5)
    assert j_and_f(within, gt)["F"] == 1.0 and j_and_f(within, gt)["J"] < 1
    assert j_and_f(beyond, gt)["F"] < 1
    assert j_and_f(beyond, gt, bound_th=5)["F"] == 1.0  # bound_th >= 1 is in pixels


def test_empty_frames_and_missing_objects() -> None:
    gt = square_video()
    gt[1][gt[1] == 2] = 0  # object 2 leaves in frame 1
    pred = gt.clone()
    J, F = davis_scores(pred, gt)
    assert J.shape == (2, 2) and torch.all(J == 1) and torch.all(F == 1)  # empty vs empty = 1
    pred[2][pred[2] == 2] = 0  # object 2 missed in frame 2
    J, F = davis_scores(pred, gt)
    assert J[1, 1] == 0 and F[1, 1] == 0 and J[0].eq(1).all()


def test_first_and_last_frames_are_not_scored() -> None:
    gt = square_video(T=5)
    pred = gt.clone()
    pred[0] = 0
    pred[4] = 0
    assert j_and_f(pred, gt)["JF"] == 1.0
    assert j_and_f(pred, gt, exclude_last=False)["JF"] < 1.0
    pred[2] = 0
    assert j_and_f(pred, gt)["JF"] < 1.0


def test_davis_meter_averages_over_objects_not_sequences() -> None:
    gt_a = square_video()
    gt_a[gt_a == 2] = 0  # one object
    gt_b = square_video()  # two objects, both missed
    meter = DavisMeter()
    meter.update(gt_a, gt_a, name="a")
    meter.update(torch.zeros_like(gt_b), gt_b, name="b")
    assert meter.compute()["J"] == pytest.approx(1 / 3)
    assert sorted(meter.per_object) == ["a_1", "b_1", "b_2"]


def test_davis_errors() -> None:
    gt = square_video()
    with pytest.raises(ValueError, match="ids in"):
        j_and_f(gt * 2, gt)
    with pytest.raises(ValueError, match="T=2 frames, need 3"):
        j_and_f(gt[:2], gt[:2])
    with pytest.raises(ValueError, match="no object"):
        j_and_f(torch.zeros_like(gt), torch.zeros_like(gt))
    with pytest.raises(ValueError, match="integer object ids"):
        j_and_f(gt.float(), gt)


# --------------------------------------------------------------------------------------- propagation
def naive_propagate(feats: torch.Tensor, first: torch.Tensor, topk: int, context: int, radius: float,
                    temperature: float) -> torch.Tensor:
    """Per-query loops over every candidate cell (videowalk: first frame free, padded recent frames in radius)."""
    T, D, h, w = feats.shape
    f = torch.nn.functional.normalize(feats.double(), dim=1)
    labels = [first.double()]
    for t in range(1, T):
        ctx = [(0, False)] + [(max(s, 0), True) for s in range(t - context, t)]
        pred = torch.zeros_like(first, dtype=torch.float64)
        for y in range(h):
            for x in range(w):
                cands = []
                for s, restricted in ctx:
                    for v in range(h):
                        for u in range(w):
                            if restricted and math.hypot(v - y, u - x) >= radius:
                                continue
                            cands.append((float(f[t, :, y, x] @ f[s, :, v, u]), labels[s][:, v, u]))
                cands.sort(key=lambda c: -c[0])
                top = cands[:topk]
                weights = torch.softmax(torch.tensor([a / temperature for a, _ in top], dtype=torch.float64), 0)
                pred[:, y, x] = sum(wt * lab for wt, lab in zip(weights, [lab for _, lab in top], strict=True))
        labels.append(pred)
    return torch.stack(labels)


@pytest.mark.parametrize("context,radius", [(2, 1.5), (3, 2.5), (1, 10.0), (0, 1.0)])
def test_propagation_matches_naive_loops(context: int, radius: float) -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 6, 6, 7, generator=g, dtype=torch.float64)
    first = mask_to_onehot(torch.randint(0, 3, (6, 7), generator=g)).double()
    want = naive_propagate(feats, first, topk=3, context=context, radius=radius, temperature=0.1)
    got = propagate_labels(feats, first, topk=3, context=context, radius=radius, temperature=0.1)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=0)
    for budget in (7, 600):  # one query at a time; blocks of a few queries that cross grid rows
        small = propagate_labels(feats, first, topk=3, context=context, radius=radius, temperature=0.1,
                                 max_affinity_elements=budget)
        torch.testing.assert_close(small, got)
    torch.testing.assert_close(got.sum(1), torch.ones(4, 6, 7))


def moving_objects_video(T: int = 8, cells: int = 16, stride: int = 4, seed: int = 0):
    """Features that follow two objects moving over a static background, and the pixel-level masks.

    Each cell's feature is a one-hot of what covers it (background / object 1 / object 2) plus a random
    texture that moves with it (static for the background): a perfect correspondence signal.
    """
    g = torch.Generator().manual_seed(seed)
    D = 12
    bg_tex = torch.randn(D, cells, cells, generator=g) * 0.2
    obj_tex = torch.randn(2, D, 5, 5, generator=g) * 0.2
    cell_ids = torch.zeros(T, cells, cells, dtype=torch.long)
    feats = torch.zeros(T, 3 + D, cells, cells)
    for t in range(T):
        feats[t, 0] = 1.0
        feats[t, 3:] = bg_tex
        for k, (y, x, vy, vx) in enumerate([(2, 1, 0, 1), (9, 10, 0, -1)], start=1):
            y0, x0 = y + vy * t, x + vx * t
            cell_ids[t, y0 : y0 + 5, x0 : x0 + 5] = k
            feats[t, :3, y0 : y0 + 5, x0 : x0 + 5] = torch.nn.functional.one_hot(torch.tensor(k), 3)[:, None, None]
            feats[t, 3:, y0 : y0 + 5, x0 : x0 + 5] = obj_tex[k - 1]
    masks = cell_ids.repeat_interleave(stride, 1).repeat_interleave(stride, 2)
    return feats, masks


def test_propagation_tracks_moving_objects_and_random_features_do_not() -> None:
    feats, masks = moving_objects_video()
    first = mask_to_onehot(masks[0], size=feats.shape[-2:])
    assert torch.equal(first.argmax(0), mask_to_onehot(masks[0]).argmax(0)[::4, ::4])
    soft = propagate_labels(feats, first)
    assert torch.equal(soft[0], first)
    pred = soft_labels_to_masks(soft, masks.shape[-2:])
    good = j_and_f(pred, masks)
    assert good["JF"] > 0.9, good
    noise = torch.randn(feats.shape, generator=torch.Generator().manual_seed(1))
    bad = j_and_f(soft_labels_to_masks(propagate_labels(noise, first), masks.shape[-2:]), masks)
    assert bad["JF"] < 0.6, bad
    # a static copy of the first mask (no tracking) is worse than propagation too
    static = j_and_f(masks[:1].expand_as(masks), masks)
    assert good["JF"] > static["JF"] + 0.2


def test_mask_to_onehot_and_back() -> None:
    mask = torch.zeros(8, 8, dtype=torch.long)
    mask[2:6, 2:6] = 2  # aligned with the 2x2 cells of a 4x4 grid
    mask[0, 0] = 255  # void -> background
    onehot = mask_to_onehot(mask)
    assert onehot.shape == (3, 8, 8) and onehot[0, 0, 0] == 1 and onehot[1].sum() == 0
    back = soft_labels_to_masks(mask_to_onehot(mask, size=(4, 4))[None], (8, 8))
    assert torch.equal(back[0], torch.where(mask == 255, 0, mask))
    shifted = torch.roll(torch.where(mask == 255, 0, mask), shifts=(1, 1), dims=(0, 1))  # 3:7 x 3:7
    area = mask_to_onehot(shifted, size=(4, 4), mode="area")
    torch.testing.assert_close(area.sum(0), torch.ones(4, 4))
    assert area[2, 1, 1] == 0.25 and area[2, 2, 2] == 1.0 and area[2, 3, 3] == 0.25
    nearest = mask_to_onehot(shifted, size=(4, 4))  # samples pixel centres 1, 3, 5, 7
    assert nearest[2].nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    with pytest.raises(ValueError, match="num_labels=2"):
        mask_to_onehot(mask, num_labels=2)


def test_propagation_errors() -> None:
    with pytest.raises(ValueError, match="first_labels"):
        propagate_labels(torch.zeros(3, 4, 5, 5), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="topk"):
        propagate_labels(torch.zeros(3, 4, 5, 5), torch.zeros(2, 5, 5), topk=0)
