"""The stored vectors of an index, looked up by item id.

Like :class:`~genindex.trie.Trie` it is an immutable value: updates return a
new store, so a running search keeps a consistent view.
"""

from __future__ import annotations

import threading

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
        self._tensors: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
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

    def distance(self, device: torch.device, queries: torch.Tensor, metric: str = "l2"):
        """A function ``(query_index, ids) -> value`` for beam search: the squared L2
        distance (``metric="l2"``) or the inner product (``"ip"``) of each pair."""
        with self._lock:
            if device not in self._tensors:
                self._tensors[device] = (torch.as_tensor(self.ids, device=device),
                                         torch.as_tensor(self.vectors, device=device))
            ids_sorted, vectors = self._tensors[device]

        def distance(query_index: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            rows = vectors[torch.searchsorted(ids_sorted, ids)]
            query = queries[query_index].float()
            if metric == "ip":
                return (rows * query).sum(dim=1)
            diff = rows - query
            return (diff * diff).sum(dim=1)

        return distance
