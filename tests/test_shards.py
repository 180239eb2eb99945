"""Shards that share one trained model, merged by distance (docs/scaling.md's recipe)."""

from __future__ import annotations

import copy

import numpy as np
import pytest


def shard(trained, x: np.ndarray, ids: np.ndarray):
    """A copy of ``trained``'s model holding only ``x`` (with global ``ids``)."""
    part = copy.copy(trained)
    part.reset()
    part.add_with_ids(x, ids)
    return part


def test_shards_merged_by_metric_distance_answer_as_one_index(data, trained):
    faiss = pytest.importorskip("faiss")
    x, _ = data
    rng = np.random.default_rng(0)
    ids = rng.permutation(10 * len(x))[:len(x)].astype(np.int64)  # global ids, any order
    queries = x[:25] + np.float32(0.1) * rng.standard_normal(x[:25].shape, dtype=np.float32)
    k, everything = 5, {"beam_size": len(x), "k_factor": len(x) / 5}  # every item ranked
    halves = np.array_split(rng.permutation(len(x)), 3)
    heap = faiss.ResultHeap(len(queries), k)
    for rows in halves:
        D, I = shard(trained, x[rows], ids[rows]).search(queries, k, **everything)
        heap.add_result(D, I)
    heap.finalize()
    whole = shard(trained, x, ids).search(queries, k, **everything)
    flat = faiss.IndexFlatL2(x.shape[1])
    flat.add(x)
    D_exact, rows_exact = flat.search(queries, k)
    np.testing.assert_array_equal(heap.I, ids[rows_exact])
    np.testing.assert_array_equal(whole.ids, ids[rows_exact])
    np.testing.assert_allclose(heap.D, D_exact, rtol=1e-4, atol=1e-4)
    # the shards left the trained index as it was
    assert trained.ntotal == len(x)


def test_a_shard_at_the_default_beam_returns_its_own_ids_in_distance_order(data, trained):
    x, _ = data
    rows = np.arange(0, len(x), 2)
    part = shard(trained, x[rows], 1000 + rows)
    D, I = part.search(x[:10], 5)
    assert set(I[I >= 0].ravel()) <= set((1000 + rows).tolist())
    assert (np.diff(D, axis=1) >= 0).all()  # squared L2, ascending: mergeable as Faiss's
