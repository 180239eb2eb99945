"""The stored vectors of an index, looked up by item id.

Like :class:`~genindex.trie.Trie` it is an immutable value: updates return a
new store, so a running search keeps a consistent view.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
import torch


class VectorStore:
    """Vectors (n, d) float32 keyed by distinct int64 ids, kept sorted by id."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids)
        if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():  # sorted input stays as it is
            order = np.argsort(ids, kind="stable")
            ids, vectors = ids[order], vectors[order]
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        # ids 0..n-1 (the usual case): an id is its row, no lookup needed
        self._ids_are_rows = bool(len(self.ids) == 0 or (
            self.ids[0] == 0 and self.ids[-1] == len(self.ids) - 1))
        self._tensors: dict[torch.device, _DeviceCopy] = {}
        self._lock = threading.Lock()

    @classmethod
    def empty(cls, d: int) -> VectorStore:
        return cls(np.zeros(0, np.int64), np.zeros((0, d), np.float32))

    def __len__(self) -> int:
        return len(self.ids)

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> VectorStore:
        """A new store with these items too; new ids above all old ones (``add``)
        are appended without re-sorting the old items."""
        order = np.argsort(ids, kind="stable")
        ids, vectors = np.asarray(ids)[order], np.asarray(vectors)[order]
        return VectorStore(np.concatenate([self.ids, ids]),
                           np.concatenate([self.vectors, vectors]))

    def remove(self, ids: np.ndarray) -> VectorStore:
        keep = ~np.isin(self.ids, ids)
        return self if keep.all() else VectorStore(self.ids[keep], self.vectors[keep])

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of ``ids`` (all present), in the order given."""
        return self.vectors[np.searchsorted(self.ids, ids)]

    def distance(self, device: torch.device, queries: torch.Tensor, metric: str = "l2",
                 exact: bool = True):
        """A function ``(query_index, ids) -> value`` for beam search: the squared L2
        distance (``metric="l2"``) or the inner product (``"ip"``) of each pair.
        ``exact`` False (ranking a leaf's items): :func:`pair_values` may use matrix
        products, whose squared L2 (||q||^2 - 2 q.x + ||x||^2) differs in the last
        float32 bits; True (the values returned as ``D``): never."""
        copy = self._on(device)
        queries = queries.float()

        def distance(query_index: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            return pair_values(copy.vectors, queries, query_index, self._rows(copy, ids),
                               metric, products=not exact, norms=copy.norms)

        return distance

    def lookup(self, device: torch.device, ids: torch.Tensor) -> torch.Tensor:
        """The vectors (len(ids), d) of the items ``ids`` (all present), on ``device``."""
        copy = self._on(device)
        return copy.vectors[self._rows(copy, ids)]

    def _rows(self, copy: _DeviceCopy, ids: torch.Tensor) -> torch.Tensor:
        """The rows of ``copy`` holding the items ``ids`` (all present)."""
        return ids if self._ids_are_rows else torch.searchsorted(copy.ids, ids)

    def _on(self, device: torch.device) -> _DeviceCopy:
        """The store's tensors on ``device``, made on first use and kept."""
        with self._lock:
            if device not in self._tensors:
                vectors = torch.as_tensor(self.vectors, device=device)
                self._tensors[device] = _DeviceCopy(
                    torch.as_tensor(self.ids, device=device), vectors,
                    vectors.square().sum(dim=1))
            return self._tensors[device]


class _DeviceCopy(NamedTuple):
    ids: torch.Tensor  # (n,) sorted
    vectors: torch.Tensor  # (n, d)
    norms: torch.Tensor  # (n,) squared L2 norms of the vectors


CHUNK = 1 << 24  # floats of a query-by-store block at a time
GATHER_CHUNK = 1 << 20  # floats of gathered vectors at a time: 4 MiB, in cache
DENSE = 16  # a query-by-store product this many times the pairs is still cheaper (BLAS)


def pair_values(vectors: torch.Tensor, queries: torch.Tensor, query_index: torch.Tensor,
                rows: torch.Tensor, metric: str = "l2", products: bool = True,
                norms: torch.Tensor | None = None) -> torch.Tensor:
    """Squared L2 distance (or inner product) of each pair ``(queries[query_index[j]],
    vectors[rows[j]])``, with memory bounded by :data:`CHUNK` (:data:`GATHER_CHUNK`
    when gathered) however many pairs.

    With ``products``, when the pairs cover much of the store for each query (a
    large leaf read by many queries, as with class identifiers), the values
    come from query-by-store matrix products; otherwise from one chunk of
    gathered vectors at a time. ``norms``: the squared norms of ``vectors`` where the
    caller keeps them (else computed when needed).
    """
    if not len(rows):
        return torch.empty(0, device=vectors.device)
    order = None
    if len(rows) > 1 and bool((query_index[1:] < query_index[:-1]).any()):
        order = torch.argsort(query_index)
        query_index, rows = query_index[order], rows[order]
    asked = int((query_index[1:] != query_index[:-1]).sum()) + 1
    if products and asked * len(vectors) <= DENSE * len(rows):
        values = _dense_values(vectors, queries, query_index, rows, metric, norms)
    else:
        values = torch.empty(len(rows), device=vectors.device)
        step = max(1, GATHER_CHUNK // max(vectors.shape[1], 1))
        for start in range(0, len(rows), step):
            part = slice(start, start + step)
            found = torch.index_select(vectors, 0, rows[part])  # new tensors
            query = torch.index_select(queries, 0, query_index[part])
            values[part] = (found.mul_(query) if metric == "ip"
                            else found.sub_(query).square_()).sum(dim=1)
    if order is None:
        return values
    return torch.empty_like(values).index_copy_(0, order, values)  # back in the caller's order


def _dense_values(vectors: torch.Tensor, queries: torch.Tensor, query_index: torch.Tensor,
                  rows: torch.Tensor, metric: str, norms: torch.Tensor | None) -> torch.Tensor:
    """:func:`pair_values` for pairs sorted by query: a block of queries against the
    whole store at a time, the pairs read out of the product."""
    out = torch.empty(len(rows), device=vectors.device)
    first, last = int(query_index[0]), int(query_index[-1]) + 1
    step = max(1, CHUNK // max(len(vectors), 1))
    bounds = torch.searchsorted(query_index, torch.arange(
        first, last + step, step, device=query_index.device)).tolist()
    if metric == "l2" and norms is None:
        norms = vectors.square().sum(dim=1)
    for block, low in enumerate(range(first, last, step)):
        pairs = slice(bounds[block], bounds[block + 1])
        if pairs.start == pairs.stop:
            continue
        asked = queries[low:low + step]
        q, r = query_index[pairs] - low, rows[pairs]
        dots = (asked @ vectors.T)[q, r]
        out[pairs] = dots if metric == "ip" else (
            asked.square().sum(dim=1)[q] - 2 * dots + norms[r]).clamp(min=0)
    return out
