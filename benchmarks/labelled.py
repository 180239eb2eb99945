"""Baselines that use the labels, as genindex does: rank the classes, then their items.

Both answer a query the way class identifiers do: the query's most likely class
first, its items ranked by distance to the query, then the next class. They
differ in how the classes are ranked:

* ``ncm`` (nearest class mean, no training): by the distance from the query to
  each class's mean feature, in the run's metric.
* ``classifier``: by the logits of the FT baseline's classifier (a LayerNorm +
  linear head with a cosine classifier, :func:`genindex.finetune.finetune`),
  the items by cosine distance in that head's features.

Same interface as :mod:`benchmarks.methods`.
"""

from __future__ import annotations

import numpy as np

from .methods import Method, _prepare

QUERY_CHUNK = 256  # queries ranked at a time: a (chunk, n) distance matrix


def class_ranked(class_scores: np.ndarray, item_class: np.ndarray, item_distance: np.ndarray,
                 k: int) -> np.ndarray:
    """(nq, k) ids: items ordered by the rank of their class (``class_scores`` (nq, C),
    larger first), ties within a class by ``item_distance`` (nq, n), smaller first, then
    by id (two items tied at the k-th place: either may be kept, as in Faiss); -1 pads
    a row past the database's size. Linear in n per query: no full sort."""
    class_rank = np.argsort(np.argsort(-class_scores, axis=1, kind="stable"), axis=1)
    item_rank = np.take_along_axis(class_rank, np.broadcast_to(
        item_class, item_distance.shape), axis=1)
    # one float64 key per item: its class's rank, then its distance within [0, 1/2]
    low = item_distance.min(axis=1, keepdims=True).astype(np.float64)
    span = item_distance.max(axis=1, keepdims=True) - low
    key = item_rank + 0.5 * (item_distance - low) / np.where(span > 0, span, 1.0)
    top = min(k, key.shape[1])
    chosen = np.sort(np.argpartition(key, top - 1, axis=1)[:, :top], axis=1) if top else \
        np.zeros((len(key), 0), np.int64)
    order = np.take_along_axis(chosen, np.argsort(np.take_along_axis(key, chosen, axis=1),
                                                  axis=1, kind="stable"), axis=1)
    return np.pad(order, ((0, 0), (0, k - top)), constant_values=-1).astype(np.int64)


def _distances(queries: np.ndarray, db: np.ndarray, metric: str) -> np.ndarray:
    """(nq, n) distances, smaller nearer: squared L2, or 1 - cosine for unit rows."""
    if metric == "cosine":
        return 1.0 - queries @ db.T
    return (queries ** 2).sum(1)[:, None] - 2.0 * queries @ db.T + (db ** 2).sum(1)[None]


class _ClassRanked(Method):
    """Shared search: class scores per query chunk, then :func:`class_ranked`."""

    metric = "l2"

    def _fit_items(self, db, labels) -> None:
        self.db = _prepare(db, self.metric)
        self.classes, self.item_class = np.unique(np.asarray(labels), return_inverse=True)

    def class_scores(self, queries: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def search(self, queries, k, images=None):
        q = _prepare(queries, self.metric)
        return np.concatenate([
            class_ranked(self.class_scores(chunk), self.item_class,
                         _distances(chunk, self.db, self.metric), k)
            for chunk in np.array_split(q, max(1, -(-len(q) // QUERY_CHUNK)))])

    def nbytes(self):
        return int(self.db.nbytes + self.item_class.astype(np.int32).nbytes)


class NCM(_ClassRanked):
    """Nearest class mean: classes ranked by the distance of the query to their mean."""

    name = "ncm"

    def __init__(self, metric: str = "l2") -> None:
        self.metric = metric

    def fit(self, db, labels, images=None):
        self._fit_items(db, labels)
        sums = np.zeros((len(self.classes), self.db.shape[1]), np.float64)
        np.add.at(sums, self.item_class, self.db)
        means = (sums / np.bincount(self.item_class)[:, None]).astype(np.float32)
        self.means = _prepare(means, self.metric)

    def class_scores(self, queries):
        return -_distances(queries, self.means, self.metric)

    def nbytes(self):
        return super().nbytes() + int(self.means.nbytes)


class Classifier(_ClassRanked):
    """The FT baseline's classifier: classes ranked by its logits, items by cosine in
    its features. ``model``: a trained :class:`genindex.finetune.FineTunedFeatures`
    (None: ``fit`` trains one on the database with ``seed``)."""

    name = "classifier"
    metric = "cosine"

    def __init__(self, model=None, seed: int = 0, progress: bool = False) -> None:
        self.model, self.seed, self.progress = model, seed, progress

    def fit(self, db, labels, images=None):
        if self.model is None:
            from genindex.finetune import FineTuneConfig, finetune

            self.model = finetune(db, labels, config=FineTuneConfig(seed=self.seed),
                                  progress=self.progress)
        self._fit_items(self.model.embed(db), labels)
        weights = self.model.model.classifier.weight.detach().float().cpu().numpy()
        if len(weights) < len(self.classes):
            raise ValueError(f"the classifier knows {len(weights)} classes, the database "
                             f"has {len(self.classes)}")
        self.weights = _prepare(weights, "cosine")

    def class_scores(self, queries):
        return queries @ self.weights.T

    def search(self, queries, k, images=None):
        return super().search(self.model.embed(queries), k)

    def nbytes(self):
        return super().nbytes() + int(self.weights.nbytes)
