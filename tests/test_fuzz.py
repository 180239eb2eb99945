"""Random sequences of updates, searches and save/load against a reference model.

The reference is a dict from id to vector. After every step the index must
hold exactly the reference's ids, no removed id may come back, and searches
keep the contract; an exhaustive search (beams >= items) must return exactly
the reference's items, those sharing an identifier in order of their true
distance to the query (brute force over the reference).
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from genindex import GenerativeIndex

from .test_index import check_contract

rows = st.lists(st.integers(0, 399), min_size=1, max_size=4)
some_ids = st.lists(st.integers(0, 420), min_size=0, max_size=6)


class IndexMachine(RuleBasedStateMachine):
    base: GenerativeIndex  # set by the test: a trained index holding POOL[:200] as ids 0..199
    pool: np.ndarray  # (400, d) vectors to add
    folders: itertools.count
    tmp_path = None
    runs = 0

    def __init__(self) -> None:
        super().__init__()
        IndexMachine.runs += 1
        self.index = copy.copy(self.base)  # shares the immutable snapshot; updates are ours
        self.reference = {i: self.pool[i] for i in range(200)}
        self.next_id = 200
        self.fresh: set[int] = set()
        self.gone: set[int] = set()  # removed and not explicitly added back

    # ------------------------------------------------------------------ rules
    @rule(rows=rows)
    def add(self, rows):
        self.index.add(self.pool[rows])
        new = range(self.next_id, self.next_id + len(rows))
        assert not set(new) & self.gone, "add reused a removed id"
        self.reference.update(zip(new, self.pool[rows]))
        self.fresh.update(new)
        self.next_id += len(rows)

    @rule(rows=rows, ids=st.lists(st.integers(0, 420), min_size=4, max_size=4, unique=True))
    def add_with_ids(self, rows, ids):
        ids = ids[:len(rows)]
        if set(ids) & set(self.reference):
            with pytest.raises(ValueError, match="already in the index"):
                self.index.add_with_ids(self.pool[rows], ids)
            return
        self.index.add_with_ids(self.pool[rows], ids)
        self.reference.update(zip(ids, self.pool[rows]))
        self.fresh.update(ids)
        self.gone -= set(ids)
        self.next_id = max(self.next_id, max(ids) + 1)

    @rule(ids=some_ids)
    def remove_ids(self, ids):
        present = set(ids) & set(self.reference)
        assert self.index.remove_ids(ids) == len(present)
        for i in present:
            del self.reference[i]
        self.fresh -= present
        self.gone |= present

    @rule(rows=rows, k=st.integers(1, 30))
    def search(self, rows, k):
        check_contract(self.index, self.index.search(self.pool[rows], k), len(rows), k)

    @rule(rows=rows, k=st.integers(1, 12), allowed=st.lists(st.integers(0, 420), max_size=40),
          as_mask=st.booleans())
    def filtered_search(self, rows, k, allowed, as_mask):
        selection = np.zeros(421, bool) if as_mask else allowed
        if as_mask:
            selection[allowed] = True
        _, I = self.index.search(self.pool[rows], k, filter=selection)
        permitted = set(allowed) & set(self.reference)
        for row in I:
            found = row[row >= 0]
            assert set(found.tolist()) <= permitted
            assert len(found) == min(k, len(permitted))
            assert (row[len(found):] == -1).all()

    @rule(row=st.integers(0, 399))
    def exhaustive_search(self, row):
        n = len(self.reference)
        query = self.pool[row:row + 1]
        D, I = self.index.search(query, n + 3, beam_size=max(n, 1))
        found = I[0][I[0] >= 0]
        assert sorted(found.tolist()) == sorted(self.reference)
        if n:  # items of one identifier come in order of their distance to the query
            vectors = np.stack([self.reference[i] for i in found.tolist()])
            codes = self.index.encode(vectors)
            distance = ((vectors - query) ** 2).sum(1)
            same = (codes[1:] == codes[:-1]).all(1)
            assert (distance[1:][same] >= distance[:-1][same] - 1e-4).all()

    @rule()
    def save_and_load(self):
        queries = self.pool[:5]
        before = self.index.search(queries, 8)
        folder = self.tmp_path / f"ix{next(self.folders) % 3}"  # re-saving over old ones too
        self.index.save(folder)
        self.index = GenerativeIndex.load(folder, device="cpu")
        after = self.index.search(queries, 8)
        np.testing.assert_array_equal(before.ids, after.ids)
        np.testing.assert_array_equal(before.scores, after.scores)

    @rule()
    def refresh(self):
        self.index.refresh(steps=2)
        self.fresh.clear()

    @rule()
    def reset(self):  # a fresh start, as in Faiss: ids begin at 0 again
        self.index.reset()
        self.reference.clear()
        self.fresh.clear()
        self.gone.clear()
        self.next_id = 0

    # ------------------------------------------------------------- invariants
    @invariant()
    def same_items_as_the_reference(self):
        ids = self.index.ids
        assert self.index.ntotal == len(self.reference) == len(ids)
        assert sorted(ids.tolist()) == sorted(self.reference)
        assert not set(ids.tolist()) & self.gone
        assert self.index.fresh_ids.tolist() == sorted(self.fresh)


def test_random_update_sequences_match_the_reference(trained, data, tmp_path):
    x = data[0]
    rng = np.random.default_rng(0)
    IndexMachine.base = trained
    IndexMachine.pool = np.concatenate([x, x + 0.2 * rng.standard_normal(x.shape)]
                                       ).astype(np.float32)
    IndexMachine.tmp_path = tmp_path
    IndexMachine.folders = itertools.count()
    IndexMachine.runs = 0
    run_state_machine_as_test(IndexMachine, settings=settings(
        max_examples=200, stateful_step_count=12, deadline=None, derandomize=True,
        database=None, suppress_health_check=list(HealthCheck)))
    assert IndexMachine.runs >= 200
