"""Filtered search: results restricted to allowed ids, as an index of only those items."""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from .test_index import check_contract


def without(index, allowed):
    """The reference: a copy of the index from which every other item is removed."""
    ix = copy.copy(index)
    ix.remove_ids(np.setdiff1d(index.ids, allowed))
    return ix


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(allowed=st.lists(st.integers(-5, 260), max_size=120), k=st.integers(1, 25),
       beam=st.one_of(st.none(), st.integers(25, 40)), as_mask=st.booleans())
def test_a_filter_searches_as_an_index_of_the_allowed_items(trained, data, allowed, k, beam,
                                                            as_mask):
    x = data[0][::13]
    if as_mask:
        selection = np.zeros(300, bool)
        selection[[a for a in allowed if a >= 0]] = True
        allowed = np.flatnonzero(selection)
    else:
        selection = np.array(allowed, np.int64)
    reference = without(trained, allowed)
    got = trained.search(x, k, beam_size=beam, filter=selection)
    want = reference.search(x, k, beam_size=beam)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    check_contract(reference, got, len(x), k)  # full rows whenever k items are allowed


def test_ids_and_masks_are_the_same_filter(trained, data):
    x = data[0][:10]
    ids = np.array([150, 3, 77, 3, 190, 42, 10**9])  # repeats and unknown ids are fine
    mask = np.zeros(200, bool)
    mask[[3, 42, 77, 150, 190]] = True
    a = trained.search(x, 4, filter=ids)
    b = trained.search(x, 4, filter=mask)
    c = trained.search(x, 4, filter=list(mask))
    for other in (b, c):
        np.testing.assert_array_equal(a.ids, other.ids)
    assert set(a.ids.ravel().tolist()) <= {3, 42, 77, 150, 190}


def test_nothing_allowed_gives_empty_rows(trained, data):
    D, I = trained.search(data[0][:3], 5, filter=[])
    assert (I == -1).all() and np.isneginf(D).all()
    D, I = trained.search(data[0][:3], 5, filter=np.zeros(200, bool))
    assert (I == -1).all()


def test_a_filter_follows_updates_of_the_index(trained, data):
    x = data[0][:6]
    index = copy.copy(trained)
    allowed = np.arange(0, 40)
    first = index.search(x, 5, filter=allowed)
    index.remove_ids(np.arange(0, 20))
    second = index.search(x, 5, filter=allowed)  # same filter, new items: no stale cache
    assert set(second.ids.ravel().tolist()) <= set(range(20, 40))
    index.add_with_ids(x, np.arange(30, 36) + 1000)
    third = index.search(x, 5, filter=np.r_[allowed, np.arange(1030, 1036)])
    assert np.isin(third.ids[:, 0], np.arange(1030, 1036)).mean() > 0.5
    np.testing.assert_array_equal(trained.search(x, 5, filter=allowed).ids, first.ids)
