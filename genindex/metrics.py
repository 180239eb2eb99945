"""Retrieval quality of search results against class labels (paper section 4.1).

Pure functions over the ``I`` array that :meth:`GenerativeIndex.search`
returns: ``I`` is (n, K) int64 with ``-1`` for a missing result; the class of
item ``i`` is ``db_labels[i]``; ``query_labels`` holds each query's class.

* precision@K: the share of the first K results that have the query's class;
* recall@K: 1 for a query when any of its first K results has its class;
* MAP@K: the mean over queries of sum_k P@k rel_k / min(R, K), R being the
  number of items of the query's class in the database.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Quality(NamedTuple):
    """What :func:`evaluate` measures; one entry per requested K."""

    precision: dict[int, float]
    recall: dict[int, float]
    map: dict[int, float]


def relevance(I: np.ndarray, db_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Boolean (n, K): whether result j of query i has the query's class (never for -1)."""
    I = np.asarray(I, dtype=np.int64)
    db_labels, query_labels = np.asarray(db_labels), np.asarray(query_labels)
    if I.ndim != 2 or len(I) != len(query_labels):
        raise ValueError(f"I must have shape (len(query_labels)={len(query_labels)}, K), "
                         f"got {I.shape}")
    if I.size and I.max() >= len(db_labels):
        raise ValueError(f"result id {int(I.max())} has no label: db_labels holds "
                         f"{len(db_labels)} (the label of item i is db_labels[i])")
    found = I >= 0
    return found & (db_labels[np.where(found, I, 0)] == query_labels[:, None])


def precision_at(hits: np.ndarray, k: int) -> float:
    return float(hits[:, :_checked(hits, k)].mean())


def recall_at(hits: np.ndarray, k: int) -> float:
    return float(hits[:, :_checked(hits, k)].any(axis=1).mean())


def map_at(hits: np.ndarray, k: int, num_relevant: np.ndarray) -> float:
    top = hits[:, :_checked(hits, k)].astype(np.float64)
    precision = top.cumsum(axis=1) / np.arange(1, k + 1)
    denominator = np.minimum(np.asarray(num_relevant), k)
    ap = (precision * top).sum(axis=1) / np.maximum(denominator, 1)
    return float(np.where(denominator > 0, ap, 0.0).mean())


def class_sizes(db_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """R for each query: how many database items have its class."""
    classes, counts = np.unique(np.asarray(db_labels), return_counts=True)
    position = np.clip(np.searchsorted(classes, query_labels), 0, len(classes) - 1)
    return np.where(classes[position] == query_labels, counts[position], 0)


def evaluate(I: np.ndarray, db_labels: np.ndarray, query_labels: np.ndarray,
             ks: tuple[int, ...]) -> Quality:
    """precision@K, recall@K and MAP@K of results ``I`` for every K in ``ks``."""
    hits = relevance(I, db_labels, query_labels)
    sizes = class_sizes(db_labels, query_labels)
    return Quality({k: precision_at(hits, k) for k in ks}, {k: recall_at(hits, k) for k in ks},
                   {k: map_at(hits, k, sizes) for k in ks})


def _checked(hits: np.ndarray, k: int) -> int:
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"K={k} is outside 1..{hits.shape[1]} (the number of results)")
    return k
