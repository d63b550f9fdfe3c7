from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stssl.encoders.resnet3d import r3d_tiny
from stssl.losses.clustering import inverse_size_weights, sinkhorn_knopp
from stssl.tasks.clustering import SeLaTask, SwAVTask, sela_pseudo_labels
from stssl.tasks.common import cluster_occupancy
from stssl.tasks.deepcluster import DeepClusterTask, nearest_centroid
from stssl.tasks.views import TemporalViews, encode_views

SMALL = {"dim": 8, "hidden": 16}


def _views(num_views: int = 2, view_len: int = 2, **kwargs) -> TemporalViews:
    """Small views: 16x16 crops (``augment=False``: the raw sub-clips)."""
    return TemporalViews(num_views, view_len, size=16, **kwargs)


def _enc() -> torch.nn.Module:
    torch.manual_seed(0)
    return r3d_tiny(width=4)


def _built(task):
    enc = _enc()
    task.build(enc.spec)
    return enc, task


def textures(n: int, frames: int, *, generator: torch.Generator) -> torch.Tensor:
    """``(n, 3, frames, 32, 32)``: a smooth random texture per clip sliding 1-3 px per frame."""
    base = F.interpolate(torch.rand(n, 3, 16, 16, generator=generator), size=(64, 96), mode="bilinear")
    speed = torch.randint(1, 4, (n,), generator=generator)
    clips = [torch.stack([base[i, :, :32, t * int(speed[i]) : t * int(speed[i]) + 32] for t in range(frames)], 1)
             for i in range(n)]
    return torch.stack(clips).clamp(0, 1)


def _train(task, enc, video: torch.Tensor, steps: int, batch: int, lr: float = 1e-3) -> list[dict[str, float]]:
    opt = torch.optim.Adam([*enc.parameters(), *task.parameters()], lr=lr)
    g = torch.Generator().manual_seed(0)
    history = []
    for step in range(steps):
        idx = torch.randperm(video.shape[0], generator=g)[:batch]
        out = task({"video": video[idx], "index": idx}, enc, torch.Generator().manual_seed(step))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        task.on_optimizer_step(enc)
        history.append({k: float(v) for k, v in out.logs.items()})
    return history


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[-1]}


# -- Sinkhorn pseudo-labels -----------------------------------------------------------------------------------------


def test_sela_codes_are_equipartitioned_over_the_batch() -> None:
    logits = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)) * 3
    logits[:, 0] += 8.0  # a head that prefers one cluster
    codes, labels = sela_pseudo_labels(logits, epsilon=0.5, iterations=200)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(64))
    torch.testing.assert_close(codes.sum(dim=0), torch.full((8,), 8.0), atol=1e-3, rtol=0)
    counts = torch.bincount(labels, minlength=8)
    assert int(counts.min()) >= 4 and int(counts.max()) <= 12, counts
    assert int(torch.bincount(logits.argmax(dim=1), minlength=8).max()) > 48  # the raw argmax: nearly all in one


def test_swav_codes_are_equipartitioned_and_queue_joins_them(tiny_video) -> None:
    enc, task = _built(SwAVTask(_views(), num_clusters=4, sinkhorn_iterations=50, epsilon=0.5, queue_size=6, **SMALL))
    scores = torch.randn(2, 8, 4, generator=torch.Generator().manual_seed(0))
    codes = task.codes(scores)
    torch.testing.assert_close(codes.sum(dim=1), torch.full((2, 4), 2.0), atol=1e-3, rtol=0)
    assert not task.queue_active
    for _ in range(3):  # 3 x B=2 clips fill the queue of 6
        task({"video": tiny_video}, enc)
    assert int(task.queue_filled) == 6 and task.queue_active
    with_queue = task.codes(scores)
    assert not torch.allclose(with_queue, codes)  # the queue's rows share the mass now
    torch.testing.assert_close(with_queue.sum(dim=-1), torch.ones(2, 8))


# -- SwAV -----------------------------------------------------------------------------------------------------------


def test_swav_gradients_prototype_normalisation_and_freezing(tiny_video) -> None:
    enc, task = _built(SwAVTask(_views(), num_clusters=4, freeze_prototypes_steps=1, **SMALL))
    assert task.prototypes is not None
    out = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(0))
    assert {"loss", "acc", "clusters_used", "max_cluster_frac", "z_std", "queue_active"} == set(out.logs)
    out.loss.backward()
    assert task.prototypes.weight.grad is None  # frozen for the first step
    for name, p in list(enc.named_parameters()) + list(task.named_parameters()):
        if "prototypes" not in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    with torch.no_grad():
        task.prototypes.weight.mul_(3.0)
    task.eval()
    task.on_optimizer_step(enc)  # eval: nothing changes
    assert int(task.steps) == 0 and task.prototypes.weight.norm(dim=1).allclose(torch.full((4,), 3.0))
    task.train()
    task.on_optimizer_step(enc)
    assert int(task.steps) == 1
    torch.testing.assert_close(task.prototypes.weight.norm(dim=1), torch.ones(4))
    task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(0)).loss.backward()
    assert task.prototypes.weight.grad is not None and task.prototypes.weight.grad.abs().sum() > 0


def test_swav_validation_leaves_the_queue_alone_and_is_seeded(tiny_video) -> None:
    enc, task = _built(SwAVTask(_views(), num_clusters=4, queue_size=4, **SMALL))
    task.eval()
    with torch.no_grad():
        a = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(1))
        b = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.loss, b.loss)
    assert int(task.queue_filled) == 0 and not task.queue.any()


@pytest.mark.slow
def test_swav_learns_on_temporal_views_without_collapse() -> None:
    """8 sliding textures, temporal views (no appearance augmentation): 40 steps bring the swapped-prediction loss
    far below its start, the views agree on their clusters, the prototypes stay in use, the embeddings spread."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    task = SwAVTask(_views(view_len=4, augment=False), num_clusters=4, dim=16, hidden=32)
    task.build(enc.spec)
    video = textures(8, 8, generator=torch.Generator().manual_seed(0))
    history = _train(task, enc, video, steps=40, batch=8, lr=3e-3)
    first, last = _mean(history[:5]), _mean(history[-5:])
    assert last["loss"] < 0.3 * first["loss"] and last["acc"] > 0.8, (first, last)
    assert last["clusters_used"] >= 3 and last["max_cluster_frac"] <= 0.4 and last["z_std"] > 0.1, last


# -- SeLa -----------------------------------------------------------------------------------------------------------


def test_sela_gradients_heads_and_determinism(tiny_video) -> None:
    enc, task = _built(SeLaTask(_views(), num_clusters=4, num_heads=2, **SMALL))
    out = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    for name, p in list(enc.named_parameters()) + list(task.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    enc2, task2 = _built(SeLaTask(_views(), num_clusters=4, num_heads=2, **SMALL))
    again = task2({"video": tiny_video}, enc2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.loss, out.loss)
    task2.eval()
    with torch.no_grad():
        assert torch.isfinite(task2({"video": tiny_video}, enc2, generator=torch.Generator().manual_seed(0)).loss)
    with pytest.raises(ValueError, match="num_views >= 2"):
        SeLaTask(TemporalViews(num_views=1))


def test_sela_cosine_head_logits_are_scaled_cosines(tiny_video) -> None:
    enc, task = _built(SeLaTask(_views(), num_clusters=4, num_heads=2, temperature=0.5, **SMALL))
    z = torch.randn(3, 5, SMALL["dim"])
    logits = task.head_logits(z)
    assert logits.shape == (2, 3, 5, 4)
    for h, head in enumerate(task.heads):
        expected = F.cosine_similarity(z[..., None, :], head.weight[None, None], dim=-1) / 0.5
        torch.testing.assert_close(logits[h], expected)
    assert logits.abs().max() <= 2.0 + 1e-5  # |cosine| / temperature
    out = task({"video": tiny_video}, enc, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert all(p.grad is not None for p in task.heads.parameters())
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SeLaTask(temperature=0.0)


@pytest.mark.slow
def test_sela_learns_on_temporal_views_without_collapse() -> None:
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    task = SeLaTask(_views(view_len=4, augment=False), num_clusters=4, dim=16, hidden=32)
    task.build(enc.spec)
    video = textures(8, 8, generator=torch.Generator().manual_seed(0))
    history = _train(task, enc, video, steps=40, batch=8, lr=3e-3)
    first, last = _mean(history[:5]), _mean(history[-5:])
    assert last["loss"] < 0.3 * first["loss"] and last["acc"] > 0.8, (first, last)
    assert last["clusters_used"] >= 3 and last["max_cluster_frac"] <= 0.4 and last["z_std"] > 0.1, last


def _sela_memory(**kwargs):
    return _built(SeLaTask(_views(), **{"num_clusters": 2, "num_heads": 2, "memory_size": 6, "epsilon": 0.5,
                                        "sinkhorn_iterations": 50, **SMALL, **kwargs}))


def test_sela_memory_labels_are_the_sinkhorn_argmax_over_the_data_set(tiny_video) -> None:
    enc, task = _sela_memory(steps_per_epoch=3)
    assert task.requires.index and not SeLaTask().requires.index
    out = task({"video": tiny_video, "index": torch.tensor([0, 1])}, enc, torch.Generator().manual_seed(0))
    assert int(task.relabels) == 1 and task.seen.tolist() == [True, True, False, False, False, False]
    for h in range(2):  # the label step: Sinkhorn of the written rows' log-probabilities, argmax
        expected = sinkhorn_knopp(task.memory[:2, h], 0.5, 50).argmax(dim=1)
        assert task.labels[:2, h].tolist() == expected.tolist()
    assert (task.labels[2:] == -1).all()
    assert {"relabels", "label_clusters_used", "label_max_cluster_frac"} <= set(out.logs)
    out.loss.backward()
    for name, param in list(enc.named_parameters()) + list(task.named_parameters()):
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"


def test_sela_memory_relabels_on_schedule_and_for_new_items(tiny_video) -> None:
    enc, task = _sela_memory(steps_per_epoch=3, relabel_every=1)
    g = torch.Generator().manual_seed(0)
    task({"video": tiny_video, "index": torch.tensor([0, 1])}, enc, g)  # step 0: first labels
    task({"video": tiny_video, "index": torch.tensor([0, 1])}, enc, g)  # step 1: labelled items, not due
    assert int(task.relabels) == 1
    task({"video": tiny_video, "index": torch.tensor([2, 3])}, enc, g)  # step 2: new items are labelled at once
    assert int(task.relabels) == 2 and (task.labels[:4] >= 0).all()
    kept = task.labels.clone()
    with torch.no_grad():
        task.memory[:4] = torch.randn(4, 2, 2, generator=g)  # what the next relabelling will see
    task({"video": tiny_video, "index": torch.tensor([2, 3])}, enc, g)  # step 3: not due (1 step since)
    assert int(task.relabels) == 2 and torch.equal(task.labels[:2], kept[:2])  # items 0, 1 keep their labels
    task({"video": tiny_video, "index": torch.tensor([0, 1])}, enc, g)
    task({"video": tiny_video, "index": torch.tensor([0, 1])}, enc, g)  # step 5: 3 steps after the last: due
    assert int(task.relabels) == 3
    # validation writes nothing and uses the per-batch rule
    task.eval()
    before = task.memory.clone()
    with torch.no_grad():
        out = task({"video": tiny_video}, enc, torch.Generator().manual_seed(1))
    assert torch.equal(task.memory, before) and int(task.relabels) == 3 and torch.isfinite(out.loss)


def test_sela_memory_errors_name_the_problem(tiny_video) -> None:
    enc, task = _sela_memory()
    with pytest.raises(ValueError, match="SeLaTask"):
        task({"video": tiny_video, "index": torch.tensor([0, 6])}, enc)  # row 6 of a 6-row memory
    with pytest.raises(ValueError, match="set hard=True or memory_size=0"):
        SeLaTask(memory_size=4, hard=False)
    with pytest.raises(ValueError, match="memory_size >= 0, relabel_every >= 1"):
        SeLaTask(memory_size=4, relabel_every=0)


@pytest.mark.slow
def test_sela_memory_learns_the_data_set_labels_without_collapse() -> None:
    """8 sliding textures as 8 items, 4 clusters, relabelled every 4 steps: the labels stay equipartitioned over
    the data set (2 each), and the views learn to predict them (accuracy far above chance 1/4), spread over the
    clusters."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    task = SeLaTask(_views(view_len=4, augment=False), num_clusters=4, memory_size=8, steps_per_epoch=4, dim=16,
                    hidden=32, epsilon=0.1, sinkhorn_iterations=50)
    task.build(enc.spec)
    video = textures(8, 8, generator=torch.Generator().manual_seed(0))
    history = _train(task, enc, video, steps=60, batch=4, lr=3e-3)
    last = _mean(history[-8:])  # (seeds 0-2: acc 0.78, 2.9-3.6 of the 4 clusters predicted in a batch of 8 views)
    assert last["acc"] > 0.6 and last["clusters_used"] >= 2.5 and last["max_cluster_frac"] <= 0.6, last
    assert last["label_clusters_used"] == 4 and last["label_max_cluster_frac"] <= 0.375, last


# -- DeepCluster ----------------------------------------------------------------------------------------------------


def _deepcluster(**kwargs):
    return _built(DeepClusterTask(_views(1), **{"num_clusters": 3, "memory_size": 8, **SMALL, **kwargs}))


def test_deepcluster_reclusters_on_schedule(tiny_video) -> None:
    enc, task = _deepcluster()  # memory 8, batches of 2: an epoch is 4 calls
    assert task.recluster_interval(2) == 4
    counts, losses = [], []
    for step in range(10):
        index = torch.tensor([(2 * step) % 8, (2 * step + 1) % 8])
        out = task({"video": tiny_video, "index": index}, enc, generator=torch.Generator().manual_seed(step))
        counts.append(int(task.reclusters))
        losses.append(float(out.loss.detach()))
    # calls 0-3 fill the memory (zero loss until the data set is clustered); call 3 clusters it; then every 4 calls
    assert counts == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2], counts
    assert losses[:3] == [0.0, 0.0, 0.0] and all(loss > 0 for loss in losses[3:]), losses
    assert int(task.active) == 3 and bool(task.seen.all())


@pytest.mark.parametrize("whiten", [True, False])
def test_deepcluster_labels_are_the_kmeans_of_the_memory(tiny_video, whiten: bool) -> None:
    enc, task = _deepcluster(memory_size=4, whiten=whiten, cluster_on="view")  # 4 distinct rows from 2 clips
    for step in range(2):  # the second call completes the first epoch and clusters all 4 items
        index = torch.tensor([2 * step, 2 * step + 1])
        task({"video": tiny_video, "index": index}, enc, generator=torch.Generator().manual_seed(step))
    labels = task.labels
    assert (labels >= 0).all()
    white = task.cluster_space(task.memory)  # PCA-whitened (fitted on these 4 rows), L2-normalised
    torch.testing.assert_close(labels, nearest_centroid(white, task.centroids[: int(task.active)]))
    weights = inverse_size_weights(labels, 3) * 4
    torch.testing.assert_close(task.cluster_weight[labels], weights)
    assert task.memory.norm(dim=1).allclose(torch.ones(4))
    if not whiten:
        assert torch.equal(white, task.memory)
        return
    kept = (task.memory - task.white_mean) @ task.white_proj[:, :3]  # 4 rows span 3 directions; the rest are 0
    torch.testing.assert_close(kept.T @ kept / 3, torch.eye(3), atol=1e-3, rtol=0)
    assert not task.white_proj[:, 3:].any()


@pytest.mark.parametrize("cluster_on", ["clean", "view"])
def test_deepcluster_memory_holds_the_clean_view_or_the_augmented_one(tiny_video, cluster_on: str) -> None:
    enc, task = _deepcluster(memory_size=4, cluster_on=cluster_on)
    index = torch.tensor([0, 1])
    task({"video": tiny_video, "index": index}, enc, generator=torch.Generator().manual_seed(3))
    assert task.projection is not None
    with torch.no_grad():  # train mode: BatchNorm normalises with the batch, as in the task's call
        clean = F.normalize(task.projection(encode_views(enc, task.views.centre(tiny_video))[0]), dim=1)
        augmented = task.views(tiny_video, generator=torch.Generator().manual_seed(3)).views
        view = F.normalize(task.projection(encode_views(enc, augmented)[0]), dim=1)
    expected, other = (clean, view) if cluster_on == "clean" else (view, clean)
    torch.testing.assert_close(task.memory[index], expected)
    assert not torch.allclose(task.memory[index], other, atol=1e-3)
    with pytest.raises(ValueError, match="cluster_on must be 'clean' or 'view', got 'both'"):
        DeepClusterTask(_views(1), cluster_on="both")


def test_deepcluster_cosine_head_logits_are_scaled_cosines(tiny_video) -> None:
    enc, task = _deepcluster(temperature=0.2)
    assert task.classifier is not None and task.classifier.bias is None
    feats = torch.randn(5, 8)
    expected = F.cosine_similarity(feats[:, None], task.classifier.weight[None], dim=-1) / 0.2
    torch.testing.assert_close(task.logits(feats), expected)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DeepClusterTask(_views(1), temperature=0.0)


def test_deepcluster_reinitialises_the_classifier_and_labels_unseen_items(tiny_video) -> None:
    enc, task = _deepcluster(memory_size=8, steps_per_epoch=2, recluster_every=50)
    for step in range(2):
        task({"video": tiny_video, "index": torch.tensor([2 * step, 2 * step + 1])}, enc)
    assert task.classifier is not None
    with torch.no_grad():
        task.classifier.weight.fill_(0.5)
    assert int(task.reclusters) == 1 and int(task.active) == 3  # a 2-call epoch of 4 items, clustered
    task({"video": tiny_video, "index": torch.tensor([4, 5])}, enc)  # not due: items 4, 5 take their nearest centroid
    assert int(task.reclusters) == 1 and bool((task.labels[4:] == -1).all())
    assert bool((task.classifier.weight == 0.5).all())
    task.recluster()
    assert not bool((task.classifier.weight == 0.5).any())  # drawn anew
    assert (task.labels[:6] >= 0).all() and (task.labels[6:] == -1).all()


def test_deepcluster_validation_changes_nothing_and_index_errors(tiny_video) -> None:
    enc, task = _deepcluster()
    task.eval()
    with torch.no_grad():  # before any clustering: a k-means of the batch stands in
        out = task({"video": tiny_video, "index": torch.tensor([100, 200])}, enc)
    assert torch.isfinite(out.loss) and int(task.reclusters) == 0 and not task.seen.any()
    task.train()
    task({"video": tiny_video, "index": torch.tensor([0, 1])}, enc)
    state = {k: v.clone() for k, v in task.state_dict().items()}
    task.eval()
    with torch.no_grad():
        out = task({"video": tiny_video, "index": torch.tensor([0, 1])}, enc)
    assert torch.isfinite(out.loss)
    assert all(torch.equal(state[k], v) for k, v in task.state_dict().items())
    task.train()
    with pytest.raises(ValueError, match=r"DeepClusterTask: batch\['index'\] has values in \[0, 8\] but memory_size=8"):
        task({"video": tiny_video, "index": torch.tensor([0, 8])}, enc)
    with pytest.raises(ValueError, match="no 'index'"):
        task({"video": tiny_video}, enc)
    with pytest.raises(ValueError, match=r"needs views.num_views == 1"):
        DeepClusterTask(_views(2))


@pytest.mark.parametrize("temperature", [None, 0.1])
def test_deepcluster_gradients(tiny_video, temperature: float | None) -> None:
    enc, task = _deepcluster(pool_grid=(2, 2), steps_per_epoch=1, temperature=temperature)  # clusters at once
    out = task({"video": tiny_video, "index": torch.tensor([0, 1])}, enc, generator=torch.Generator().manual_seed(0))
    assert {"loss", "acc", "clusters_used", "max_cluster_frac", "reclusters", "z_std"} == set(out.logs)
    out.loss.backward()
    for name, p in list(enc.named_parameters()) + list(task.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


@pytest.mark.slow
def test_deepcluster_classifier_learns_the_pseudo_labels_without_collapse() -> None:
    """Within one clustering period (40 calls) the classifier fits the k-means labels of 16 textures; the
    clusters stay occupied."""
    torch.manual_seed(0)
    enc = r3d_tiny(width=8)
    task = DeepClusterTask(_views(1, view_len=4, augment=False), num_clusters=4, memory_size=16, steps_per_epoch=2,
                           recluster_every=20, dim=16, hidden=32)  # clustered after the first 2 calls, not again
    task.build(enc.spec)
    video = textures(16, 8, generator=torch.Generator().manual_seed(0))
    history = _train(task, enc, video, steps=40, batch=8, lr=3e-3)
    first, last = _mean(history[1:6]), _mean(history[-8:])
    assert history[-1]["reclusters"] == 1.0
    assert last["loss"] < 0.6 * first["loss"] and last["acc"] > 0.6, (first, last)
    assert last["clusters_used"] == 4 and last["max_cluster_frac"] <= 0.5, last


def test_cluster_occupancy_counts() -> None:
    logs = cluster_occupancy(torch.tensor([[1, 1], [1, 3]]), 5)
    assert int(logs["clusters_used"]) == 2 and float(logs["max_cluster_frac"]) == pytest.approx(0.75)


@pytest.mark.parametrize("encoder_name", ["resnet18_2d_tiny", "vit_micro"])
def test_other_encoders(encoder_name: str, tiny_video) -> None:
    from stssl.encoders import build_encoder

    for task in (SwAVTask(_views(), num_clusters=4, **SMALL),
                 DeepClusterTask(_views(1), num_clusters=2, memory_size=4, **SMALL)):
        torch.manual_seed(0)
        enc = build_encoder(encoder_name)
        task.build(enc.spec)
        out = task({"video": tiny_video, "index": torch.tensor([0, 1])}, enc, torch.Generator().manual_seed(0))
        out.loss.backward()
        assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.logs.values())
