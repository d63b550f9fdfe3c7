"""DeepCluster (Caron et al., "Deep Clustering for Unsupervised Learning of Visual Features", ECCV 2018), online
over a feature memory, on clips.

Every training call embeds an augmented sub-clip of each batch clip (:class:`~stssl.tasks.views.TemporalViews`
with one view), writes the L2-normalised embedding of the clip's clean view (its central sub-clip, unaugmented:
:meth:`~stssl.tasks.views.TemporalViews.centre`, embedded without gradient, as DeepCluster clusters features of
unaugmented images; ``cluster_on="view"``: of the augmented view itself) into a memory at the row
``batch["index"]`` (the dataset item), and trains a classifier head to predict from the augmented view the item's
k-means pseudo-label, the cross-entropy weighted
by :func:`~stssl.losses.clustering.inverse_size_weights` (every cluster weighs the same, DeepCluster's uniform
sampling over clusters). As in DeepCluster, the first clustering waits for the whole data set: the first epoch's
training calls only fill the memory (their loss is zero), and the call that completes the epoch clusters it. The
memory is then re-clustered with :func:`~stssl.losses.clustering.kmeans` (k-means++ seeding, empty-cluster
splitting) every ``recluster_every`` epochs' worth of calls, on DeepCluster's features: PCA-whitened
(:func:`~stssl.losses.clustering.pca_whitening`, fitted on the memory at each clustering) and L2-normalised
(``whiten=False``: the normalised embeddings as they are). After every re-clustering the classifier is drawn anew
(cluster indices carry no meaning across clusterings), in place: the optimizer keeps its parameters, and its moment
estimates for them, which DeepCluster would reset. Pseudo-labels are those of the last clustering; items written
after it (not yet clustered) take their nearest centroid in the whitened space.

Why the wait, the whitening and the clean views (measured on the driving world, 16 videos x 8 clips, 16 clusters,
20 epochs): clustering the first batch and labelling every later item by its own nearest centroid let the network
fit labels it set itself for a whole period (accuracy 0.88), during which the embeddings of all items converged to
one direction (mean cosine 0.94 between clips of different videos, as between clips of one video); the next
clustering then split noise, and the loss stayed at ln 16 for the rest of the run. Waiting for the epoch and
whitening keep the embeddings spread (per-dimension std 0.05-0.06 throughout instead of 0.007), but labels from
augmented views could still not be learned (loss at ln 16, also with one fixed clip per item); clustering clean
views of fixed clips (``ClipDataModule(train_clips="fixed")``) they are, slowly: accuracy 0.14 (chance 0.06) after
the fourth clustering.

k-means and the classifier re-draw use generators seeded from ``(seed, number of re-clusterings)``, not the batch
generator, so they do not depend on the step's label draw. The memory is per process (gathering it across ranks is
not implemented): under DDP with its default ``broadcast_buffers=True``, rank 0's memory, labels and centroids are
copied to every rank before each forward (so all ranks share rank 0's clustering, at the cost of sending the memory
every step); with ``broadcast_buffers=False`` each rank clusters the items it sees, and the shared classifier then
mixes unrelated label spaces. Single-process training is the tested setting.

In validation nothing is written or re-clustered: labels are the nearest centroid of each embedding (the memory's
rows are indexed by the training set's items, so ``batch["index"]`` is not read); before the first clustering a
k-means of the batch itself stands in (nothing stored).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stssl.encoders.base import Encoder
from stssl.losses.clustering import KMEANS_METRICS, inverse_size_weights, kmeans, pca_whitening
from stssl.seeding import seeded_generator
from stssl.tasks.base import PretextTask, TaskRequirements
from stssl.tasks.common import (
    check_pool_grid,
    cluster_occupancy,
    log_embedding_std,
    memory_index,
    mlp_head,
    pooled_dim,
)
from stssl.tasks.views import TemporalViews, encode_views
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["DeepClusterTask", "nearest_centroid"]


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Index of the nearest centroid of every row of ``x`` ``(N, D)`` among ``centroids`` ``(k, D)``.

    Example:
        >>> nearest_centroid(torch.tensor([[1.0, 0.1], [0.0, -2.0]]), torch.tensor([[0.0, -1.0], [1.0, 0.0]])).tolist()
        [1, 0]
    """
    if metric == "cosine":
        return (F.normalize(x, dim=1) @ F.normalize(centroids, dim=1).T).argmax(dim=1)
    return torch.cdist(x, centroids).argmin(dim=1)


class DeepClusterTask(PretextTask):
    """DeepCluster over a memory of item embeddings: classify each clip into its k-means cluster.

    Args:
        views: the sub-clip embedded: a :class:`~stssl.tasks.views.TemporalViews` with ``num_views=1``
            (``None``: its defaults with one view, 8 frames).
        num_clusters: ``K`` (DeepCluster: 10x the number of classes).
        memory_size: rows of the memory, at least the number of training items (``len(train dataset)``); a larger
            ``batch["index"]`` is an error.
        recluster_every: epochs between re-clusterings.
        steps_per_epoch: training calls per epoch (the first epoch fills the memory); None: ``ceil(memory_size / B)``,
            the calls that write every row once.
        kmeans_iterations: Lloyd iterations per clustering.
        metric: k-means metric, ``"cosine"`` (spherical, on the normalised embeddings) or ``"euclidean"``.
        whiten: PCA-whiten the memory before clustering (DeepCluster); the transform fitted at each clustering also
            places fresh and validation items.
        cluster_on: ``"clean"`` (the memory holds each clip's unaugmented central view) or ``"view"`` (the
            augmented view the classifier sees).
        temperature: None: DeepCluster's linear classifier on ``relu(embedding)``; a float: a cosine classifier
            (L2-normalised embedding and class weights, logits = cosine / temperature), as
            :class:`~stssl.tasks.clustering.SeLaTask` offers for small CPU batches.
        pool_grid: ``(h, w)`` cells kept from the dense map.
        dim: width of the clustered embedding; ``hidden``: of the MLP producing it.
        weight, name, seed: see :class:`~stssl.tasks.base.PretextTask`.

    Logs ``loss``, ``acc`` (classifier top-1 on the pseudo-labels), the collapse monitors ``clusters_used`` and
    ``max_cluster_frac`` (of the last clustering's labels over the memory; of the batch's labels in validation),
    ``z_std`` and ``reclusters`` (clusterings so far); in the first epoch, before any clustering, ``loss`` (zero),
    ``z_std`` and ``reclusters`` only.

    Example:
        >>> from stssl.encoders.resnet3d import r3d_tiny
        >>> enc = r3d_tiny(width=4)
        >>> views = TemporalViews(num_views=1, view_len=2, size=16)
        >>> task = DeepClusterTask(views, num_clusters=3, memory_size=8, dim=8, hidden=16)
        >>> task.build(enc.spec)
        >>> video = torch.rand(4, 3, 4, 32, 32)
        >>> out = task({"video": video, "index": torch.tensor([0, 1, 2, 3])}, enc, torch.Generator().manual_seed(0))
        >>> int(task.reclusters), float(out.logs["loss"])  # an epoch is 2 calls of 4: the first only fills the memory
        (0, 0.0)
        >>> out = task({"video": video, "index": torch.tensor([4, 5, 6, 7])}, enc, torch.Generator().manual_seed(1))
        >>> int(task.reclusters), int(task.seen.sum()), int(out.logs["clusters_used"]) <= 3
        (1, 8, True)
    """

    default_name = "deepcluster"
    memory: torch.Tensor
    seen: torch.Tensor
    labels: torch.Tensor
    centroids: torch.Tensor
    white_mean: torch.Tensor
    white_proj: torch.Tensor
    cluster_weight: torch.Tensor
    active: torch.Tensor
    steps: torch.Tensor
    last_recluster: torch.Tensor
    reclusters: torch.Tensor

    def __init__(
        self,
        views: TemporalViews | None = None,
        num_clusters: int = 100,
        memory_size: int = 10000,
        recluster_every: int = 1,
        steps_per_epoch: int | None = None,
        kmeans_iterations: int = 20,
        metric: str = "cosine",
        whiten: bool = True,
        cluster_on: str = "clean",
        temperature: float | None = None,
        pool_grid: tuple[int, int] = (1, 1),
        dim: int = 128,
        hidden: int = 256,
        weight: float = 1.0,
        name: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(weight=weight, name=name, seed=seed)
        owner = "DeepClusterTask"
        if num_clusters < 2 or memory_size < 1 or recluster_every < 1 or kmeans_iterations < 0:
            raise ValueError(
                f"{owner}: need num_clusters >= 2, memory_size >= 1, recluster_every >= 1 and kmeans_iterations >= 0,"
                f" got {num_clusters}, {memory_size}, {recluster_every}, {kmeans_iterations}"
            )
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"{owner}: steps_per_epoch must be >= 1 or None, got {steps_per_epoch}")
        if metric not in KMEANS_METRICS:
            raise ValueError(f"{owner}: unknown metric {metric!r}; choose from {list(KMEANS_METRICS)}")
        if dim < 1 or hidden < 1:
            raise ValueError(f"{owner}: dim and hidden must be >= 1, got {dim}, {hidden}")
        self.num_clusters = int(num_clusters)
        self.memory_size = int(memory_size)
        self.recluster_every = int(recluster_every)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)
        self.kmeans_iterations = int(kmeans_iterations)
        self.metric = metric
        self.whiten = bool(whiten)
        if cluster_on not in ("clean", "view"):
            raise ValueError(f"{owner}: cluster_on must be 'clean' or 'view', got {cluster_on!r}")
        self.cluster_on = cluster_on
        if temperature is not None and not temperature > 0:
            raise ValueError(f"{owner}: temperature must be > 0 (or None for a linear head), got {temperature}")
        self.temperature = None if temperature is None else float(temperature)
        self.views = views if views is not None else TemporalViews(num_views=1)
        if self.views.num_views != 1:
            raise ValueError(f"{owner}: needs views.num_views == 1 (one embedding per item), got {self.views.num_views}")
        self.pool_grid = check_pool_grid(owner, pool_grid)
        self.dim = int(dim)
        self.hidden = int(hidden)
        K = self.num_clusters
        self.register_buffer("memory", torch.zeros(self.memory_size, self.dim))
        self.register_buffer("seen", torch.zeros(self.memory_size, dtype=torch.bool))
        self.register_buffer("labels", torch.full((self.memory_size,), -1, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(K, self.dim))
        # the clustering space: (z - white_mean) @ white_proj, L2-normalised (identity without whitening)
        self.register_buffer("white_mean", torch.zeros(self.dim))
        self.register_buffer("white_proj", torch.eye(self.dim))
        self.register_buffer("cluster_weight", torch.ones(K))
        self.register_buffer("active", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("last_recluster", torch.zeros((), dtype=torch.long))
        self.register_buffer("reclusters", torch.zeros((), dtype=torch.long))
        self.projection: nn.Module | None = None
        self.classifier: nn.Linear | None = None

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements(min_frames=self.views.min_frames, index=True)

    def build(self, spec: EncoderSpec) -> None:
        self.projection = mlp_head(pooled_dim(spec.dim, self.pool_grid), self.hidden, self.dim)
        self.classifier = nn.Linear(self.dim, self.num_clusters, bias=self.temperature is None)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` classifier logits of embeddings ``(B, dim)``: linear on ``relu``, or cosine / temperature."""
        assert self.classifier is not None
        if self.temperature is None:
            return self.classifier(F.relu(feats)).float()
        weight = F.normalize(self.classifier.weight.float(), dim=1)
        return F.normalize(feats.float(), dim=1) @ weight.T / self.temperature

    def epoch_calls(self, batch_size: int) -> int:
        """Training calls per epoch for batches of ``batch_size`` clips."""
        return self.steps_per_epoch or math.ceil(self.memory_size / max(1, batch_size))

    def recluster_interval(self, batch_size: int) -> int:
        """Training calls between re-clusterings for batches of ``batch_size`` clips."""
        return self.recluster_every * self.epoch_calls(batch_size)

    def recluster_due(self, batch_size: int) -> bool:
        """Whether the current training call (its items already written) re-clusters (see the module docstring)."""
        if int(self.active) == 0:
            return int(self.steps) + 1 >= self.epoch_calls(batch_size)
        return int(self.steps) - int(self.last_recluster) >= self.recluster_interval(batch_size)

    def cluster_space(self, z: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(N, dim)`` in the space of the last clustering (whitened with its fit, L2-normalised)."""
        if not self.whiten:
            return z
        return F.normalize((z - self.white_mean.to(z)) @ self.white_proj.to(z), dim=1)

    @torch.no_grad()
    def recluster(self) -> None:
        """k-means on the memory's written rows; reset labels, cluster weights and the classifier."""
        assert self.classifier is not None
        rows = torch.nonzero(self.seen).flatten()
        k = min(self.num_clusters, rows.numel())
        gen = seeded_generator(self.seed, int(self.reclusters))
        data = self.memory[rows]
        if self.whiten and rows.numel() >= 2:
            mean, proj = pca_whitening(data)  # the min(dim, N - 1) directions N rows span
            self.white_mean.copy_(mean)
            self.white_proj.zero_()
            self.white_proj[:, : proj.shape[1]] = proj  # unused directions stay 0
        data = self.cluster_space(data)
        centroids, assign = kmeans(data, k, self.kmeans_iterations, generator=gen, metric=self.metric)
        self.centroids.zero_()
        self.centroids[:k] = centroids
        self.active.fill_(k)
        self.labels.fill_(-1)
        self.labels[rows] = assign
        weights = inverse_size_weights(assign, self.num_clusters) * assign.numel()  # mean 1 over the memory
        self.cluster_weight.fill_(1.0)
        self.cluster_weight[assign] = weights.to(self.cluster_weight)
        for param in self.classifier.parameters():  # nn.Linear's default init, drawn from the seeded generator
            bound = 1.0 / math.sqrt(self.dim)
            fresh = (torch.rand(param.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound
            param.copy_(fresh.to(param))
            param.grad = None  # gradients accumulated for the old label space do not apply to the new one
        self.reclusters += 1
        self.last_recluster.copy_(self.steps)

    def forward(self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None) -> TaskOutput:
        if self.projection is None or self.classifier is None:
            raise RuntimeError(f"{type(self).__name__}: call build(encoder.spec) before forward")
        gen = generator if generator is not None else self.next_generator()
        views = self.views(batch["video"], generator=gen).views  # (B, 1, C, L, H, W)
        feats = self.projection(encode_views(encoder, views, self.pool_grid)[0])  # (B, dim)
        if self.cluster_on == "clean":
            with torch.no_grad():
                clean = self.projection(encode_views(encoder, self.views.centre(batch["video"]), self.pool_grid)[0])
            z = F.normalize(clean.float(), dim=1)
        else:
            z = F.normalize(feats.detach().float(), dim=1)
        B = z.shape[0]
        if self.training:
            index = memory_index("DeepClusterTask", batch, self.memory_size, z.device)
            with torch.no_grad():
                self.memory[index] = z.to(self.memory)
                self.seen[index] = True
                if self.recluster_due(B):
                    self.recluster()
                self.steps += 1
            if int(self.active) == 0:  # the first epoch fills the memory: nothing to predict yet
                loss = self.logits(feats).sum() * 0.0 + 0.0  # +0, with every parameter in the graph
                logs = {"loss": loss.detach(), "reclusters": self.reclusters.float()}
                log_embedding_std(logs, "z_std", feats)
                return TaskOutput(loss=loss, logs=logs)
            with torch.no_grad():
                target = self.labels[index]
                fresh = target < 0  # written after the last clustering
                if bool(fresh.any()):
                    k = int(self.active)
                    target[fresh] = nearest_centroid(self.cluster_space(z[fresh]), self.centroids[:k].to(z), self.metric)
            occupancy = cluster_occupancy(self.labels[self.seen & (self.labels >= 0)], self.num_clusters)
            weights = self.cluster_weight[target]
        else:
            with torch.no_grad():
                k = int(self.active)
                if k > 0:
                    target = nearest_centroid(self.cluster_space(z), self.centroids[:k].to(z), self.metric)
                    weights = self.cluster_weight[target]
                else:  # no clustering yet: a k-means of the batch stands in
                    kk = min(self.num_clusters, B)
                    _, target = kmeans(z, kk, self.kmeans_iterations, generator=gen, metric=self.metric)
                    weights = z.new_ones(B)
            occupancy = cluster_occupancy(target, self.num_clusters)
        logits = self.logits(feats)
        ce = F.cross_entropy(logits, target, reduction="none")
        weights = weights.to(ce)
        loss = (weights * ce).sum() / weights.sum().clamp(min=1e-12)
        with torch.no_grad():
            logs = {"loss": loss.detach(), "acc": (logits.argmax(dim=1) == target).float().mean(), **occupancy,
                    "reclusters": self.reclusters.float()}
            log_embedding_std(logs, "z_std", feats)
        return TaskOutput(loss=loss, logs=logs)
