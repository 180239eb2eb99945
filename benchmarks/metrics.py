"""Retrieval metrics as pure functions over result id arrays (as Faiss's contrib.evaluation).

``I`` is an (n, K) int64 array of result ids (``-1`` = no result), ``db_labels``
maps an id to its class (indexed by id), ``query_labels`` holds each query's
class. The paper's definitions (section 4.1): precision@K is the share of the
top K that has the query's class; recall@K is 1 when any of the top K does;
MRR@K is the mean of 1 / rank of the first relevant result (0 if none in the
top K); MAP@K is the mean over queries of AP@K = sum_k P@k rel_k / min(R, K),
R being the number of relevant items in the database.
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


def relevant_counts(db_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """R for every query: how many database items share its class."""
    classes, counts = np.unique(np.asarray(db_labels), return_counts=True)
    position = np.searchsorted(classes, query_labels)
    position = np.clip(position, 0, len(classes) - 1)
    return np.where(classes[position] == query_labels, counts[position], 0)


def precision_at_k(hits: np.ndarray, k: int) -> float:
    """Mean share of relevant results among the first ``k``."""
    _check_k(hits, k)
    return float(hits[:, :k].mean())


def recall_at_k(hits: np.ndarray, k: int) -> float:
    """Share of queries with at least one relevant result among the first ``k``."""
    _check_k(hits, k)
    return float(hits[:, :k].any(axis=1).mean())


def mrr_at_k(hits: np.ndarray, k: int) -> float:
    """Mean reciprocal rank of the first relevant result in the top ``k`` (0 if none)."""
    _check_k(hits, k)
    top = hits[:, :k]
    first = top.argmax(axis=1)
    return float(np.where(top.any(axis=1), 1.0 / (first + 1), 0.0).mean())


def map_at_k(hits: np.ndarray, k: int, num_relevant: np.ndarray) -> float:
    """Mean average precision over the top ``k`` (AP@k normalised by min(R, k))."""
    _check_k(hits, k)
    top = hits[:, :k].astype(np.float64)
    precision = top.cumsum(axis=1) / np.arange(1, k + 1)
    denominator = np.minimum(np.asarray(num_relevant), k)
    ap = np.where(denominator > 0, (precision * top).sum(axis=1) / np.maximum(denominator, 1),
                  0.0)
    return float(ap.mean())


def pr_curve(hits: np.ndarray, num_relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision and recall (true positive rate) after each rank 1..K."""
    found = hits.astype(np.float64).cumsum(axis=1)
    ranks = np.arange(1, hits.shape[1] + 1)
    precision = (found / ranks).mean(axis=0)
    recall = (found / np.maximum(np.asarray(num_relevant), 1)[:, None]).mean(axis=0)
    return precision, recall


def _check_k(hits: np.ndarray, k: int) -> None:
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k={k} is outside 1..{hits.shape[1]} (the results' width)")
