"""Retrieval metrics as pure functions over result id arrays (as Faiss's contrib.evaluation).

``I`` is an (n, K) int64 array of result ids (``-1`` = no result), ``db_labels``
maps an id to its class (indexed by id), ``query_labels`` holds each query's
class. The paper's definitions (section 4.1): precision@K is the share of the
top K that has the query's class; recall@K is 1 when any of the top K does.
"""

from __future__ import annotations

import numpy as np


def relevance(I: np.ndarray, db_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """Boolean (n, K): does result j of query i share the query's class? (-1: no)."""
    I = np.asarray(I, dtype=np.int64)
    db_labels = np.asarray(db_labels)
    if I.size and I.max() >= len(db_labels):
        raise ValueError(f"result id {I.max()} has no label (only {len(db_labels)} labels)")
    found = I >= 0
    labels = db_labels[np.where(found, I, 0)]
    return found & (labels == np.asarray(query_labels)[:, None])


def precision_at_k(hits: np.ndarray, k: int) -> float:
    """Mean share of relevant results among the first ``k``."""
    _check_k(hits, k)
    return float(hits[:, :k].mean())


def recall_at_k(hits: np.ndarray, k: int) -> float:
    """Share of queries with at least one relevant result among the first ``k``."""
    _check_k(hits, k)
    return float(hits[:, :k].any(axis=1).mean())


def _check_k(hits: np.ndarray, k: int) -> None:
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k={k} is outside 1..{hits.shape[1]} (the results' width)")
