"""Constrained beam search against exhaustive scoring of every valid identifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genindex.beam import Beams, beam_search, top_items
from genindex.config import DecoderConfig
from genindex.decoder import Decoder
from genindex.trie import Trie

CONFIG = DecoderConfig(n_layer=1, n_head=2, n_embd=16, n_memory=2, dropout=0.0)


def exhaustive(decoder: Decoder, x: torch.Tensor, codes: np.ndarray,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """log p(id | x) for every distinct identifier, the softmax at each step taken
    over the codes that some identifier with that prefix continues with; ``bias``
    (Q, M, L), if given, is added to each query's logits by the decoder's forward."""
    ids = np.unique(codes, axis=0)
    levels = ids.shape[1]
    logits, _ = decoder(x.repeat_interleave(len(ids), 0),
                        torch.as_tensor(ids[:, :-1]).repeat(len(x), 1),
                        bias=None if bias is None else bias.repeat_interleave(len(ids), 0))
    logits = logits.reshape(len(x), len(ids), levels, -1)
    scores = torch.zeros(len(x), len(ids))
    for t in range(levels):
        for j, row in enumerate(ids):
            allowed = sorted({r[t] for r in ids if tuple(r[:t]) == tuple(row[:t])})
            logp = logits[:, j, t, allowed].log_softmax(dim=-1)
            scores[:, j] += logp[:, allowed.index(row[t])]
    return torch.as_tensor(ids), scores


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 5), st.integers(1, 25), st.integers(0, 10**6))
def test_wide_beam_equals_exhaustive_scoring(levels, vocab, n, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, vocab, (n, levels))
    trie = Trie(codes, np.arange(n), vocab)
    torch.manual_seed(seed)
    decoder = Decoder.for_vectors(CONFIG, vocab, levels, 4).eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        ids, scores = exhaustive(decoder, x, codes)
        beams = beam_search(decoder, x, trie, beam_size=trie.num_leaves)
    best, order = scores.sort(dim=1, descending=True)
    assert torch.allclose(beams.scores, best, atol=1e-4)
    expected_leaves = torch.as_tensor(trie.lookup(ids.numpy()))[order]
    assert torch.equal(beams.leaves, expected_leaves)
    # probabilities over the valid identifiers sum to one
    assert torch.allclose(scores.exp().sum(dim=1), torch.ones(3), atol=1e-4)


@torch.no_grad()
def test_narrow_beam_returns_valid_leaves_in_score_order():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 6, (200, 3))
    trie = Trie(codes, np.arange(200), 6)
    decoder = Decoder.for_vectors(CONFIG, 6, 3, 4).eval()
    x = torch.randn(5, 4)
    _, scores = exhaustive(decoder, x, codes)
    beams = beam_search(decoder, x, trie, beam_size=4)
    assert beams.leaves.shape == (5, 4) and (beams.leaves >= 0).all()
    assert (beams.scores[:, :-1] >= beams.scores[:, 1:]).all()
    assert len(set(beams.leaves[0].tolist())) == 4
    # every beam's score is the exhaustive score of its identifier
    ids = np.unique(codes, axis=0)
    leaf_of = torch.as_tensor(trie.lookup(ids))
    for q in range(5):
        for leaf, score in zip(beams.leaves[q].tolist(), beams.scores[q].tolist()):
            assert score == pytest.approx(float(scores[q, leaf_of == leaf][0]), abs=1e-4)


@torch.no_grad()
def test_fewer_leaves_than_beams_pads_with_minus_one():
    trie = Trie(np.array([[0, 1], [2, 2]]), np.array([7, 9]), codebook_size=3)
    decoder = Decoder.for_vectors(CONFIG, 3, 2, 4).eval()
    beams = beam_search(decoder, torch.randn(2, 4), trie, beam_size=5)
    assert (beams.leaves[:, :2] >= 0).all() and (beams.leaves[:, 2:] == -1).all()
    assert torch.isinf(beams.scores[:, 2:]).all()


def test_top_items_expands_leaves_in_order_and_ranks_by_distance():
    # leaf (0, 0) holds ids 1, 2, 3; leaf (1, 1) holds id 4
    trie = Trie(np.array([[0, 0], [0, 0], [0, 0], [1, 1]]), np.array([1, 2, 3, 4]), 2)
    leaf_a, leaf_b = trie.lookup(np.array([[0, 0], [1, 1]])).tolist()
    beams = Beams(torch.tensor([[-0.1, -2.0]]), torch.tensor([[leaf_a, leaf_b]]))
    scores, ids = top_items(trie, beams, k=5)
    assert ids.tolist() == [[1, 2, 3, 4, -1]]
    assert scores[0, :4].tolist() == pytest.approx([-0.1, -0.1, -0.1, -2.0])
    assert scores[0, 4] == float("-inf")
    distance = {1: 5.0, 2: 1.0, 3: 3.0, 4: 0.0}
    _, ids = top_items(trie, beams, k=2, distance=lambda q, i: torch.tensor(
        [distance[v] for v in i.tolist()]))
    assert ids.tolist() == [[2, 3]]  # the nearest of the best leaf, never the other leaf


def test_search_in_bounded_batches_equals_one_batch_and_times_every_part(trained, data,
                                                                          monkeypatch):
    """The search pipeline cuts queries into batches of at most BEAMS_IN_FLIGHT beams;
    the results are those of one batch, and ``timings`` covers every part."""
    from genindex import beam

    x = data[0][:37]
    state = trained._state
    whole = beam.search(state, torch.from_numpy(x), 5, 10)
    monkeypatch.setattr(beam, "BEAMS_IN_FLIGHT", 30)  # 3 queries a batch
    timings: dict[str, float] = {}
    parts = beam.search(state, torch.from_numpy(x), 5, 10, timings=timings)
    np.testing.assert_array_equal(parts[1], whole[1])
    np.testing.assert_allclose(parts[0], whole[0], rtol=1e-6)
    np.testing.assert_array_equal(trained.search(x, 5, order="generative").ids, whole[1])
    metric = beam.search(state, torch.from_numpy(x), 5, 10, metric="l2")
    np.testing.assert_array_equal(trained.search(x, 5).ids, metric[1])
    assert set(timings) == set(beam.TIMED_PARTS) and all(t >= 0 for t in timings.values())


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.integers(1, 30), st.integers(1, 300), st.sampled_from(["l2", "ip"]),
       st.integers(0, 2**16))
def test_pair_values_equal_the_pairs_computed_one_at_a_time(items, queries, pairs, metric, seed):
    """Both of its paths (few items shared by many queries: matrix products; else
    gathered rows), with blocks far smaller than the data, against the definition."""
    from genindex import store

    g = torch.Generator().manual_seed(seed)
    vectors, q = torch.randn(items, 8, generator=g), torch.randn(queries, 8, generator=g)
    query_index = torch.randint(0, queries, (pairs,), generator=g)
    rows = torch.randint(0, items, (pairs,), generator=g)
    want = torch.stack([(vectors[r] * q[i]).sum() if metric == "ip"
                        else (vectors[r] - q[i]).square().sum()
                        for i, r in zip(query_index.tolist(), rows.tolist())])
    for chunk, dense in ((1 << 24, 16), (16, 16), (16, 10**9), (16, 0)):
        old = store.CHUNK, store.GATHER_CHUNK, store.DENSE
        store.CHUNK, store.GATHER_CHUNK, store.DENSE = chunk, chunk, dense
        try:
            got = store.pair_values(vectors, q, query_index, rows, metric)
            exact = store.pair_values(vectors, q, query_index, rows, metric, products=False)
        finally:
            store.CHUNK, store.GATHER_CHUNK, store.DENSE = old
        torch.testing.assert_close(exact, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.lists(st.integers(0, 60), min_size=1, max_size=6),
       st.integers(1, 4), st.integers(0, 2**16))
def test_first_k_equals_the_stable_full_sort(queries, k, counts, distinct, seed):
    """The partial selection per query (large leaves) against the full stable sort it
    replaces, with many tied keys (``distinct`` values) and uneven counts."""
    from genindex.beam import _first_k

    counts = (counts * queries)[:queries]
    query = torch.repeat_interleave(torch.arange(queries), torch.tensor(counts))
    if not len(query):
        return
    g = torch.Generator().manual_seed(seed)
    key = query.double() + 0.1 * torch.randint(0, distinct, (len(query),), generator=g)
    order = torch.argsort(key, stable=True)
    per_query = torch.bincount(query[order], minlength=queries)
    rank = torch.arange(len(order)) - (per_query.cumsum(0) - per_query)[query[order]]
    want = order[rank < k]
    assert _first_k(query, key, queries, k).tolist() == want.tolist()


@pytest.mark.parametrize("ids", [np.arange(6), np.array([2, 3, 5, 8, 13, 21])])
def test_store_distance_looks_up_ids_whether_or_not_they_are_rows(ids):
    """Ids 0..n-1 are read as rows directly, other ids through the sorted lookup; both
    give each (query, id) pair's value, whatever the metric and precision."""
    from genindex.store import VectorStore

    g = np.random.default_rng(0)
    vectors, queries = g.standard_normal((6, 5)), g.standard_normal((3, 5))
    store = VectorStore(ids[::-1].copy(), vectors[::-1].astype(np.float32))
    query_index, asked = torch.tensor([0, 2, 1, 1]), torch.as_tensor(ids[[4, 0, 5, 4]])
    for metric in ("l2", "ip"):
        want = [((vectors[r] - queries[q]) ** 2).sum() if metric == "l2"
                else vectors[r] @ queries[q] for q, r in zip([0, 2, 1, 1], [4, 0, 5, 4])]
        for exact in (True, False):
            got = store.distance(torch.device("cpu"), torch.as_tensor(queries, dtype=torch.float32),
                                 metric, exact)(query_index, asked)
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
