"""The trie against a brute-force set of identifiers."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genindex import trie as trie_module
from genindex.trie import Trie


@st.composite
def items(draw, max_levels=4, max_vocab=6, max_items=40):
    levels = draw(st.integers(1, max_levels))
    vocab = draw(st.integers(1, max_vocab))
    n = draw(st.integers(0, max_items))
    codes = draw(st.lists(st.lists(st.integers(0, vocab - 1), min_size=levels,
                                   max_size=levels), min_size=n, max_size=n))
    ids = draw(st.lists(st.integers(-10**12, 10**12), min_size=n, max_size=n, unique=True))
    return np.array(codes, np.int64).reshape(n, levels), np.array(ids, np.int64), vocab


def brute_children(codes: np.ndarray) -> dict[tuple, set]:
    """Every prefix present -> the set of codes that follow it."""
    out: dict[tuple, set] = defaultdict(set)
    for row in codes.tolist():
        for depth in range(len(row)):
            out[tuple(row[:depth])].add(row[depth])
    return out


def walk(trie: Trie) -> dict[tuple, set]:
    """Every prefix reachable through Trie.children -> its allowed codes."""
    out, frontier = {}, {(): 0}
    for depth in range(trie.num_codebooks):
        prefixes = list(frontier)
        if not prefixes:
            break
        child = trie.children(depth, torch.tensor([frontier[p] for p in prefixes]))
        nxt = {}
        for prefix, row in zip(prefixes, child.tolist()):
            allowed = {code for code, node in enumerate(row) if node >= 0}
            if allowed:
                out[prefix] = allowed
            for code in allowed:
                nxt[prefix + (code,)] = row[code]
        frontier = nxt
    return out


def check_against_brute_force(trie: Trie, codes: np.ndarray, ids: np.ndarray) -> None:
    assert len(trie) == len(ids)
    assert walk(trie) == dict(brute_children(codes))
    by_code = defaultdict(set)
    for row, i in zip(codes.tolist(), ids.tolist()):
        by_code[tuple(row)].add(i)
    assert trie.num_leaves == len(by_code)
    if len(codes):
        leaves = trie.lookup(codes)
        start, count = trie.leaf_items(torch.as_tensor(leaves))
        for row, s, c in zip(codes.tolist(), start.tolist(), count.tolist()):
            assert set(trie.ids[s:s + c].tolist()) == by_code[tuple(row)]


@settings(max_examples=150, deadline=None)
@given(items())
def test_trie_matches_brute_force(case):
    codes, ids, vocab = case
    check_against_brute_force(Trie(codes, ids, vocab), codes, ids)


@settings(max_examples=60, deadline=None)
@given(items())
def test_csr_levels_agree_with_dense_levels(case):
    codes, ids, vocab = case
    dense = Trie(codes, ids, vocab)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trie_module, "DENSE_TABLE_LIMIT", 0)
        sparse = Trie(codes, ids, vocab)
        tables = sparse.tables("cpu").dense
        assert all(table is None for depth, table in enumerate(tables) if sparse.num_nodes(depth))
        assert walk(sparse) == walk(dense)


@settings(max_examples=100, deadline=None)
@given(items(), st.data())
def test_insert_and_remove_match_brute_force(case, data):
    codes, ids, vocab = case
    split = data.draw(st.integers(0, len(ids)))
    trie = Trie(codes[:split], ids[:split], vocab).insert(codes[split:], ids[split:])
    check_against_brute_force(trie, codes, ids)
    gone = data.draw(st.lists(st.sampled_from(ids.tolist()), unique=True)) if len(ids) else []
    keep = ~np.isin(ids, gone)
    smaller = trie.remove(np.array(gone, np.int64))
    check_against_brute_force(smaller, codes[keep], ids[keep])
    # the original is untouched (copy-on-write)
    check_against_brute_force(trie, codes, ids)


@settings(max_examples=100, deadline=None)
@given(items())
def test_allowed_codes_along_each_identifier_match_brute_force(case):
    codes, ids, vocab = case
    allowed = Trie(codes, ids, vocab).allowed(torch.as_tensor(codes))
    assert allowed.shape == (*codes.shape, vocab) and allowed.dtype == torch.bool
    children = brute_children(codes)
    for row, mask in zip(codes.tolist(), allowed.tolist()):
        for depth in range(len(row)):
            expected = children[tuple(row[:depth])]
            assert {code for code, ok in enumerate(mask[depth]) if ok} == expected


def test_allowed_refuses_an_absent_identifier():
    trie = Trie(np.array([[0, 1], [0, 2]]), np.array([5, 6]), codebook_size=4)
    with pytest.raises(ValueError, match="not in the trie"):
        trie.allowed(torch.tensor([[0, 1], [0, 3]]))


def test_lookup_of_absent_identifier_is_minus_one():
    trie = Trie(np.array([[0, 1], [0, 2], [3, 1]]), np.array([5, 6, 7]), codebook_size=4)
    assert trie.lookup(np.array([[0, 1], [0, 3], [1, 1], [3, 1]])).tolist()[1:3] == [-1, -1]
    assert (trie.lookup(np.array([[0, 1], [3, 1]])) >= 0).all()


def test_colliding_identifiers_share_a_leaf():
    trie = Trie(np.array([[1, 1], [1, 1], [0, 2]]), np.array([10, 11, 12]), codebook_size=3)
    assert trie.num_leaves == 2
    start, count = trie.leaf_items(torch.as_tensor(trie.lookup(np.array([[1, 1]]))))
    assert count.tolist() == [2]
    assert sorted(trie.ids[int(start):int(start) + 2].tolist()) == [10, 11]


def test_insert_refuses_present_ids_and_bad_codes():
    trie = Trie(np.array([[0, 1]]), np.array([3]), codebook_size=2)
    with pytest.raises(ValueError, match="already present"):
        trie.insert(np.array([[1, 1]]), np.array([3]))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 2\)"):
        trie.insert(np.array([[1, 2]]), np.array([4]))
    with pytest.raises(ValueError, match="unique"):
        Trie(np.array([[0, 0], [1, 1]]), np.array([1, 1]), codebook_size=2)


def test_empty_trie_allows_nothing():
    trie = Trie.empty(3, 5)
    assert len(trie) == 0 and trie.num_leaves == 0
    assert (trie.children(0, torch.zeros(4, dtype=torch.long)) == -1).all()
