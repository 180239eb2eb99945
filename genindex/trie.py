"""An array-based prefix tree over fixed-length code sequences.

Every item is an ``(id, codes)`` pair, ``codes`` being its M-code identifier.
Items are kept sorted lexicographically by code (then id), so that

* the nodes at depth ``m`` are the distinct length-``m`` prefixes, numbered in
  sorted order, and the children of a node are a contiguous run of the nodes
  one level down (a CSR layout, no per-node objects);
* the leaves are the distinct identifiers, and the items of leaf ``j`` are the
  contiguous rows ``leaf_ptr[j]:leaf_ptr[j + 1]``: identifiers may collide.

A :class:`Trie` is an immutable value: :meth:`insert` and :meth:`remove`
return a new trie. A search that holds a trie therefore never sees a
half-applied update (copy-on-write).

The decoder never sees the trie. Beam search asks one question per step,
through :meth:`Trie.children`: for a batch of depth-``m`` nodes, which codes
may come next and which node each leads to. Shallow levels answer from a dense
``(nodes, L)`` table, deep ones from the CSR arrays; neither loops in Python
over beams or nodes.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

# A level is answered from a dense (nodes, L) table when it has at most this
# many entries (int32: 16 MiB); deeper, wider levels use the CSR arrays.
DENSE_TABLE_LIMIT = 1 << 22


def code_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer dtype that holds codes below ``vocab_size``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"vocab_size={vocab_size} is too large")


class Trie:
    """Prefix tree of M-code identifiers whose leaves hold lists of item ids."""

    def __init__(self, codes: np.ndarray, ids: np.ndarray, vocab_size: int) -> None:
        """Build from ``codes`` (n, M) and unique ``ids`` (n,). See :meth:`empty`."""
        codes = np.asarray(codes)
        ids = np.asarray(ids)
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise ValueError(f"codes must have shape (n, M) with M >= 1, got {codes.shape}")
        if ids.shape != (codes.shape[0],):
            raise ValueError(f"ids must have shape ({codes.shape[0]},), got {ids.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= vocab_size):
            raise ValueError(f"codes must lie in [0, {vocab_size})")
        if np.unique(ids).size != ids.size:
            raise ValueError("ids must be unique")
        order = np.lexsort((ids, *codes.T[::-1]))
        self.vocab_size = int(vocab_size)
        self.codes = np.ascontiguousarray(codes[order], dtype=code_dtype(vocab_size))
        self.ids = np.ascontiguousarray(ids[order], dtype=np.int64)
        self._build_levels()
        self._tables: dict[torch.device, _DeviceTables] = {}
        self._tables_lock = threading.Lock()

    @classmethod
    def empty(cls, num_levels: int, vocab_size: int) -> Trie:
        return cls(np.zeros((0, num_levels), np.int64), np.zeros(0, np.int64), vocab_size)

    # ------------------------------------------------------------------ shape
    @property
    def num_levels(self) -> int:
        return self.codes.shape[1]

    @property
    def num_leaves(self) -> int:
        return len(self.leaf_ptr) - 1

    def __len__(self) -> int:
        return len(self.ids)

    def num_nodes(self, depth: int) -> int:
        """Number of distinct prefixes of length ``depth`` (1 root at depth 0)."""
        return len(self.child_ptr[depth]) - 1 if depth < self.num_levels else self.num_leaves

    # ---------------------------------------------------------------- updates
    def insert(self, codes: np.ndarray, ids: np.ndarray) -> Trie:
        """A new trie holding these items too. ``ids`` must all be new."""
        ids, codes = np.asarray(ids, dtype=np.int64), np.asarray(codes)
        if codes.shape != (len(ids), self.num_levels) or codes.dtype.kind not in "iu":
            raise ValueError(f"codes must be integers of shape ({len(ids)}, {self.num_levels}), "
                             f"got {codes.dtype} {codes.shape}")
        present = self.contains(ids)
        if present.any():
            raise ValueError(f"ids already present: {ids[present][:10].tolist()}")
        return Trie(np.concatenate([self.codes.astype(np.int64), codes.astype(np.int64)]),
                    np.concatenate([self.ids, ids]), self.vocab_size)

    def remove(self, ids: np.ndarray) -> Trie:
        """A new trie without the given ids; ids not present are ignored."""
        keep = ~np.isin(self.ids, np.asarray(ids, dtype=np.int64))
        if keep.all():
            return self
        return Trie(self.codes[keep], self.ids[keep], self.vocab_size)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are in the trie."""
        return np.isin(np.asarray(ids, dtype=np.int64), self.ids)

    # ---------------------------------------------------------------- queries
    def children(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """Child node index for every next code, ``-1`` where a code is not allowed.

        ``nodes`` holds node indices at ``depth`` (0 <= depth < M), any shape;
        the result has that shape plus a trailing axis of size L.
        """
        tables = self.tables(nodes.device)
        flat = nodes.reshape(-1)
        dense = tables.dense[depth]
        if dense is not None:
            out = dense[flat].long()
        else:
            out = _csr_children(tables.child_ptr[depth], tables.child_code[depth + 1],
                                flat, self.vocab_size)
        return out.reshape(*nodes.shape, self.vocab_size)

    def leaf_items(self, leaves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(start, count)``: the rows of :attr:`ids` that each leaf holds."""
        tables = self.tables(leaves.device)
        start = tables.leaf_ptr[leaves]
        return start, tables.leaf_ptr[leaves + 1] - start

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """Leaf index of each identifier in ``codes`` (n, M), ``-1`` if absent."""
        codes = torch.as_tensor(np.asarray(codes, dtype=np.int64).reshape(-1, self.num_levels))
        nodes = torch.zeros(len(codes), dtype=torch.long)
        for depth in range(self.num_levels):
            child = self.children(depth, nodes.clamp(min=0))
            step = child.gather(1, codes[:, depth:depth + 1].clamp(0, self.vocab_size - 1))[:, 0]
            valid = (nodes >= 0) & (codes[:, depth] >= 0) & (codes[:, depth] < self.vocab_size)
            nodes = torch.where(valid, step, -1)
        return nodes.numpy()

    def tables(self, device: torch.device | str) -> _DeviceTables:
        """The lookup arrays as tensors on ``device``, built once and cached."""
        device = torch.device(device)
        with self._tables_lock:
            if device not in self._tables:
                self._tables[device] = _DeviceTables(self, device)
            return self._tables[device]

    # ---------------------------------------------------------------- private
    def _build_levels(self) -> None:
        """Derive the per-depth node arrays from the sorted code table."""
        n, num_levels = self.codes.shape
        codes = self.codes.astype(np.int64)
        # first column at which row i differs from row i - 1 (num_levels: same ID)
        diff = codes[1:] != codes[:-1]
        first_diff = np.where(diff.any(axis=1), diff.argmax(axis=1), num_levels)
        # child_code[m][j]: last code of depth-m node j; parent[m][j]: its parent
        self.child_code: list[np.ndarray] = [np.zeros(min(n, 1), np.int64)]
        self.child_ptr: list[np.ndarray] = []
        node_of_row = np.zeros(n, np.int64)  # depth-0: everything under the root
        for depth in range(1, num_levels + 1):
            is_new = np.ones(n, bool)
            is_new[1:] = first_diff < depth
            starts = np.flatnonzero(is_new)
            parent = node_of_row[starts]
            num_parents = int(node_of_row[-1]) + 1 if n else (1 if depth == 1 else 0)
            counts = np.bincount(parent, minlength=num_parents)
            self.child_ptr.append(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
            self.child_code.append(codes[starts, depth - 1])
            node_of_row = np.cumsum(is_new) - 1
        self.leaf_ptr = np.append(starts, n).astype(np.int64) if n else np.zeros(1, np.int64)

    def nbytes(self) -> int:
        """Bytes held by the trie's arrays (codes, ids and the node arrays)."""
        arrays = [self.codes, self.ids, self.leaf_ptr, *self.child_ptr, *self.child_code]
        return int(sum(a.nbytes for a in arrays))


class _DeviceTables:
    """The trie's lookup arrays as tensors on one device."""

    def __init__(self, trie: Trie, device: torch.device) -> None:
        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(array, dtype=np.int64), device=device)

        vocab = trie.vocab_size
        self.ids = tensor(trie.ids)
        self.leaf_ptr = tensor(trie.leaf_ptr)
        self.child_ptr = [tensor(p) for p in trie.child_ptr]
        self.child_code = [tensor(c) for c in trie.child_code]
        self.dense: list[torch.Tensor | None] = []
        for depth, ptr in enumerate(trie.child_ptr):
            num_parents = len(ptr) - 1
            if num_parents * vocab > DENSE_TABLE_LIMIT:
                self.dense.append(None)
                continue
            table = torch.full((max(num_parents, 1), vocab), -1, dtype=torch.int32, device=device)
            counts = self.child_ptr[depth].diff()
            parent = torch.repeat_interleave(torch.arange(num_parents, device=device), counts)
            child = torch.arange(len(parent), device=device, dtype=torch.int32)
            table[parent, self.child_code[depth + 1]] = child
            self.dense.append(table)


def _csr_children(ptr: torch.Tensor, child_code: torch.Tensor, nodes: torch.Tensor,
                  vocab: int) -> torch.Tensor:
    """Scatter each node's run of children into a dense (len(nodes), vocab) row."""
    start = ptr[nodes]
    counts = ptr[nodes + 1] - start
    out = torch.full((len(nodes), vocab), -1, dtype=torch.long, device=nodes.device)
    total = int(counts.sum())
    if total == 0:
        return out
    row = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), counts)
    offset = torch.arange(total, device=nodes.device) - torch.repeat_interleave(
        counts.cumsum(0) - counts, counts)
    child = start[row] + offset
    out[row, child_code[child]] = child
    return out
