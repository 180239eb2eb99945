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

from collections.abc import Sequence

import numpy as np

# The paper's precision, recall and MAP live in the library (the CLI's `eval`
# uses them too); the benchmarks add MRR and the precision-recall curve.
from genindex.metrics import (
    _checked,
    relevance,  # noqa: F401
)
from genindex.metrics import class_sizes as relevant_counts  # noqa: F401
from genindex.metrics import map_at as map_at_k  # noqa: F401
from genindex.metrics import precision_at as precision_at_k  # noqa: F401
from genindex.metrics import recall_at as recall_at_k  # noqa: F401

from .rows import Metrics


def mrr_at_k(hits: np.ndarray, k: int) -> float:
    """Mean reciprocal rank of the first relevant result in the top ``k`` (0 if none)."""
    top = hits[:, :_checked(hits, k)]
    first = top.argmax(axis=1)
    return float(np.where(top.any(axis=1), 1.0 / (first + 1), 0.0).mean())


def pr_curve(hits: np.ndarray, num_relevant: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean precision and recall (true positive rate) after each rank 1..K."""
    found = hits.astype(np.float64).cumsum(axis=1)
    ranks = np.arange(1, hits.shape[1] + 1)
    precision = (found / ranks).mean(axis=0)
    recall = (found / np.maximum(np.asarray(num_relevant), 1)[:, None]).mean(axis=0)
    return precision, recall


def summary(hits: np.ndarray, num_relevant: np.ndarray, ks: Sequence[int],
            mrr_ks: Sequence[int] = (), map_ks: Sequence[int] = (100,)) -> Metrics:
    """Precision@K and recall@K at ``ks``, MRR@K at ``mrr_ks``, MAP@K at ``map_ks``."""
    return Metrics(precision={k: precision_at_k(hits, k) for k in ks},
                   recall={k: recall_at_k(hits, k) for k in ks},
                   mrr={k: mrr_at_k(hits, k) for k in mrr_ks},
                   map={k: map_at_k(hits, k, num_relevant) for k in map_ks})


def headline(ids: np.ndarray, db_labels: np.ndarray, query_labels: np.ndarray,
             k: int = 100) -> tuple[float, float, float]:
    """P@1, P@3 and MAP@``k`` in percent of the result ``ids`` (n, >= k): the three
    numbers issue 16's tables compare."""
    hits = relevance(ids, db_labels, query_labels)
    found = summary(hits, relevant_counts(db_labels, query_labels), (1, 3), (), (k,))
    return 100 * found.precision[1], 100 * found.precision[3], 100 * found.map[k]


def headline_row(name: str, ids: np.ndarray, db_labels: np.ndarray,
                 query_labels: np.ndarray, seconds: float) -> str:
    """A markdown row ``| name | P@1 | P@3 | MAP@100 | seconds |`` of :func:`headline`."""
    p1, p3, map_k = headline(ids, db_labels, query_labels)
    return f"| {name} | {p1:.1f} | {p3:.1f} | {map_k:.1f} | {seconds:.0f} |"
