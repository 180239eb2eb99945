"""Code written for Faiss runs unchanged with a GenerativeIndex swapped in."""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
from faiss.contrib.evaluation import knn_intersection_measure  # noqa: E402


def knn_graph(index, x: np.ndarray, k: int) -> np.ndarray:
    """Written against faiss.IndexFlatL2: each row's k nearest other rows.

    Uses only the Faiss index API: is_trained, reset, add, ntotal, d, search.
    """
    assert index.is_trained and index.d == x.shape[1]
    index.reset()
    index.add(x)
    assert index.ntotal == x.shape[0]
    _, I = index.search(x, k + 1)
    graph = np.full((len(x), k), -1, dtype="int64")
    for row, ids in enumerate(I):
        ids = ids[(ids != row) & (ids >= 0)][:k]
        graph[row, :len(ids)] = ids
    return graph


def test_knn_graph_code_runs_on_both_indexes(trained, data, tmp_path):
    x, labels = data
    trained.save(tmp_path / "ix")
    from genindex import GenerativeIndex

    generative = GenerativeIndex.load(tmp_path / "ix")
    exact = knn_graph(faiss.IndexFlatL2(x.shape[1]), x, 5)
    ours = knn_graph(generative, x, 5)
    assert ours.shape == exact.shape and ours.dtype == exact.dtype
    assert (ours >= 0).all()
    # faiss's own evaluation helper takes our I arrays as they are
    overlap = knn_intersection_measure(ours, exact)
    chance = 5 / len(x)
    assert overlap > 4 * chance, overlap
    # and the neighbours are of the same class far more often than chance
    assert (labels[ours] == labels[:, None]).mean() > 0.8

