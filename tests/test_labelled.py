"""The label-aware baselines (nearest class mean, the FT classifier) against a
one-query-at-a-time reference: classes in score order, each class's items by distance."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.labelled import NCM, Classifier, class_ranked

from .helpers import clustered


def split(num_classes, per_class, seed):
    """Database and queries of the same classes: every fifth item is a query."""
    x, labels = clustered(num_classes=num_classes, per_class=per_class, d=16, noise=0.8,
                          seed=seed)
    query = np.arange(len(x)) % 5 == 0
    return x[~query], labels[~query], x[query], labels[query]


def by_hand(class_score, item_class, item_distance, k):
    """One query: its classes from the best score down, each class's items nearest first."""
    order = sorted(range(len(item_class)),
                   key=lambda i: (-class_score[item_class[i]], item_distance[i], i))
    return (order + [-1] * k)[:k]


@pytest.mark.parametrize("k", [1, 7, 30, 45])
def test_class_ranked_orders_by_class_then_distance(k):
    rng = np.random.default_rng(k)
    scores = rng.standard_normal((6, 5))
    item_class = rng.integers(0, 5, 40)
    distance = rng.random((6, 40))
    ids = class_ranked(scores, item_class, distance, k)
    assert ids.shape == (6, k) and ids.dtype == np.int64
    for q in range(6):
        assert ids[q].tolist() == by_hand(scores[q], item_class, distance[q], k)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_ncm_ranks_classes_by_the_distance_to_their_mean(metric):
    x, labels, queries, q_labels = split(8, 15, seed=1)
    method = NCM(metric)
    method.fit(x, labels * 10)  # any comparable labels
    ids = method.search(queries, 30)
    xs, qs = x.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)
        qs = qs / np.linalg.norm(qs, axis=1, keepdims=True)
    means = np.stack([xs[labels == c].mean(0) for c in range(8)])
    if metric == "cosine":
        means = means / np.linalg.norm(means, axis=1, keepdims=True)
    for q, row in zip(qs, ids):
        distance = ((q - xs) ** 2).sum(1) if metric == "l2" else 1 - xs @ q
        centre = ((q - means) ** 2).sum(1) if metric == "l2" else 1 - means @ q
        assert row.tolist() == by_hand(-centre, labels, distance, 30)
    # the first 12 results are one whole class: the query's own, mostly
    assert (labels[ids[:, :12]] == labels[ids[:, :1]]).all()
    assert (labels[ids[:, 0]] == q_labels).mean() > 0.9


def test_classifier_ranks_classes_by_the_ft_heads_logits():
    from genindex.finetune import FineTuneConfig, finetune

    x, labels, queries, q_labels = split(6, 15, seed=3)
    model = finetune(x, labels, config=FineTuneConfig(dim=8, epochs=200, batch_size=32),
                     progress=False)
    method = Classifier(model)
    method.fit(x, labels)
    ids = method.search(queries, 25)
    db, q = model.embed(x).astype(np.float64), model.embed(queries).astype(np.float64)
    weights = model.model.classifier.weight.detach().double().numpy()
    logits = q @ (weights / np.linalg.norm(weights, axis=1, keepdims=True)).T
    for row, query, score in zip(ids, q, logits):
        assert row.tolist() == by_hand(score, labels, 1 - db @ query, 25)
    assert (labels[ids[:, 0]] == q_labels).mean() > 0.9
    assert method.nbytes() > db.nbytes / 2  # float32 features, the class of each, weights
