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
    assert (I == -1).all() and (D == np.finfo(np.float32).max).all()  # Faiss's padding
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


def _selectors(faiss):
    """Faiss selectors and the ids each holds (of 0..299), by Faiss's own is_member."""
    batch_ids = np.array([3, 42, 77, 150, 190, 10**9], np.int64)
    bits = np.zeros(300, bool)
    bits[[1, 8, 9, 64, 120, 199]] = True
    packed = np.packbits(bits, bitorder="little")  # Faiss's IDSelectorBitmap layout
    made = {"batch": faiss.IDSelectorBatch(batch_ids),
            "array": faiss.IDSelectorArray(batch_ids),
            "range": faiss.IDSelectorRange(20, 60),
            "bitmap": faiss.IDSelectorBitmap(len(packed), faiss.swig_ptr(packed))}
    made["not"] = faiss.IDSelectorNot(made["range"])
    made["and"] = faiss.IDSelectorAnd(made["not"], made["bitmap"])
    made["or"] = faiss.IDSelectorOr(made["range"], made["batch"])
    keep = [batch_ids, packed]  # the selectors point into these arrays
    return made, keep


def test_faiss_selectors_filter_and_remove_as_they_do_in_faiss(trained, data):
    import faiss

    x = data[0][:8]
    selectors, _keep = _selectors(faiss)
    for name, selector in selectors.items():
        members = np.array([i for i in range(300) if selector.is_member(i)], np.int64)
        want = trained.search(x, 6, filter=members)
        got = trained.search(x, 6, filter=selector)
        np.testing.assert_array_equal(got.ids, want.ids, err_msg=name)
        np.testing.assert_array_equal(got.scores, want.scores, err_msg=name)
        # remove_ids counts and removes what Faiss's IndexIDMap removes for it
        reference = faiss.IndexIDMap(faiss.IndexFlatL2(1))
        reference.add_with_ids(np.zeros((trained.ntotal, 1), np.float32), trained.ids)
        index = copy.copy(trained)
        assert index.remove_ids(selector) == reference.remove_ids(selector), name
        assert sorted(index.ids) == sorted(faiss.vector_to_array(reference.id_map)), name


def test_the_filter_rule_is_by_dtype_bool_masks_integer_ids(trained, data):
    x = data[0][:5]
    as_ids = trained.search(x, 3, filter=np.array([0, 1, 1, 0], np.uint8))  # ids 0 and 1
    assert set(as_ids.ids.ravel().tolist()) <= {0, 1, -1} and (as_ids.ids[:, :2] >= 0).all()
    as_mask = trained.search(x, 3, filter=np.array([0, 1, 1, 0], bool))  # ids 1 and 2
    assert set(as_mask.ids.ravel().tolist()) <= {1, 2, -1}


def test_float_ids_must_name_one_id_exactly(trained):
    import pytest

    index = copy.copy(trained)
    with pytest.raises(ValueError, match="2\\*\\*53"):
        index.remove_ids(np.array([2.0 ** 53 + 2]))
    with pytest.raises(TypeError, match="non-integral"):
        index.remove_ids(np.array([1.5]))
    assert index.remove_ids(np.array([3.0, 4.0])) == 2
