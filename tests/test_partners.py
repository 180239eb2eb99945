"""Neighbour mining for unlabelled training: exact for small n, clustered above."""

from __future__ import annotations

from unittest import mock

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genindex import partners
from genindex.partners import Neighbors, Partners, nearest_neighbors


def clustered(n: int, d: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)) * 4
    return torch.from_numpy((centres[rng.integers(0, 20, n)]
                             + rng.normal(size=(n, d))).astype(np.float32))


def recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / len(b)
                          for a, b in zip(found, exact)]))


def test_approximate_neighbours_match_exact_search_and_repeat(monkeypatch):
    monkeypatch.setattr(partners, "EXACT_NEIGHBORS", 200)
    monkeypatch.setattr(partners, "DISTANCE_BLOCK", 20_000)  # several blocks a list
    x, rows = clustered(2_000, 16), torch.arange(2_000)
    found = Neighbors(x, 5)
    assert found.knn is not None
    first = found(rows)
    exact = nearest_neighbors(x, rows, 5)
    assert first.shape == (2_000, 5)
    assert not (first == rows[:, None]).any() and ((first >= 0) & (first < 2_000)).all()
    assert recall(first, exact) >= 0.9
    assert torch.equal(Neighbors(x, 5)(rows), first)  # seeded k-means: the same graph


def test_rows_whose_visited_lists_hold_too_few_items_are_searched_exactly(monkeypatch):
    monkeypatch.setattr(partners, "EXACT_NEIGHBORS", 100)
    monkeypatch.setattr(partners, "NPROBE", 1)  # one list of ~17 items, 40 wanted
    x, rows = clustered(300, 4), torch.arange(300)
    found = Neighbors(x, 40)(rows)
    assert (found >= 0).all() and not (found == rows[:, None]).any()
    exact = nearest_neighbors(x, rows, 40)
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(found, exact))


@settings(max_examples=15, deadline=None)
@given(n=st.integers(101, 400), d=st.integers(1, 6), k=st.integers(1, 8),
       seed=st.integers(0, 3))
def test_unlabelled_partners_of_a_large_set_are_other_valid_rows(n, d, k, seed):
    x = clustered(n, d, seed)
    with mock.patch.object(partners, "EXACT_NEIGHBORS", 100):
        pairs = Partners(x, None, neighbors=k)
        assert pairs.neighbors.knn is not None
        drawn = pairs.sample(torch.Generator().manual_seed(seed))
        some = torch.arange(0, n, 7)
        batch = pairs.sample(torch.Generator().manual_seed(seed), some)
    assert drawn.shape == (n,) and ((drawn >= 0) & (drawn < n)).all()
    assert not (drawn == torch.arange(n)).any()
    assert ((batch >= 0) & (batch < n)).all() and not (batch == some).any()
