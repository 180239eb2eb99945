"""The ablation that removes the decoder: the tokenizer's own f_cls, searched without it.

A genindex build trains a tokenizer whose head maps each feature to f_cls (eq. 1-4);
the decoder and the trie then learn to generate identifiers of those f_cls codes. These
rows search the same f_cls of the same build (same tokenizer, same seed) directly:

* ``f_cls exact scan``: exact cosine search of every item's f_cls;
* ``f_cls HNSW``: Faiss HNSW over the f_cls, its efSearch the smallest of
  ``EF_SEARCH`` whose recall@10 against the exact scan reaches ``TARGET_RECALL`` on
  database items used as queries (no reported query chooses it);
* ``ncm on f_cls``: nearest class mean in f_cls, the label-aware baseline on the
  embedding the decoder reads.

A row's build time is the tokenizer's training plus its own build.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .baselines import HNSW
from .labelled import NCM
from .methods import GenIndex, Linear, Method

EF_SEARCH = (128, 256, 512, 1024)  # Faiss searches with max(efSearch, k): k = 100 here
TARGET_RECALL = 0.99
CHOICE_QUERIES = 1000  # database items that choose efSearch
CHOICE_K = 100  # the tables' search depth
RECALL_K = 10


class OnFcls(Method):
    """A method run on the f_cls of a built genindex (frozen features)."""

    def __init__(self, name: str, inner: Method, genindex: GenIndex) -> None:
        self.name, self.inner, self.genindex = name, inner, genindex
        self.note = None

    def fit(self, db, labels, images=None):
        self.inner.fit(self.genindex.f_cls(db), labels)

    def set_query_arguments(self, **arguments: Any) -> None:
        self.inner.set_query_arguments(**arguments)

    def search(self, queries, k, images=None):
        return self.inner.search(self.genindex.f_cls(queries), k)

    def nbytes(self):
        return self.inner.nbytes()


def methods(genindex: GenIndex, suffix: str = "") -> list[OnFcls]:
    """The three f_cls rows of one built genindex, unfitted. ``suffix`` tells the rows of
    two genindex configs apart."""
    return [OnFcls(f"f_cls exact scan{suffix}", Linear("cosine"), genindex),
            OnFcls(f"f_cls HNSW{suffix}", HNSW("cosine"), genindex),
            OnFcls(f"ncm on f_cls{suffix}", NCM("cosine"), genindex)]


def choose_ef_search(method: OnFcls, db: np.ndarray, seed: int = 0) -> int:
    """Set and return the smallest ``EF_SEARCH`` value whose recall@10 against exact
    search reaches ``TARGET_RECALL`` on up to ``CHOICE_QUERIES`` database items (the
    largest if none does); the fitted HNSW ``method`` is searched, nothing else."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(db), min(CHOICE_QUERIES, len(db)), replace=False)
    queries = db[np.sort(chosen)]
    exact = Linear("cosine")
    exact.fit(method.genindex.f_cls(db), None)
    truth = exact.search(method.genindex.f_cls(queries), RECALL_K)
    for ef in EF_SEARCH:
        method.set_query_arguments(ef_search=ef)
        found = method.search(queries, CHOICE_K)[:, :RECALL_K]
        recall = np.mean([len(set(a) & set(b)) / RECALL_K for a, b in zip(found, truth)])
        if recall >= TARGET_RECALL:
            break
    method.note = (f"efSearch {ef}: recall@{RECALL_K} {recall:.3f} on {len(queries)} "
                   "database items")
    return ef
