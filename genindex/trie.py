"""An array-based prefix tree over fixed-length code sequences.

Every item is an ``(id, codes)`` pair, ``codes`` being its M-code identifier.
Items are kept sorted lexicographically by code (then id), so that

* the nodes at depth ``m`` are the distinct length-``m`` prefixes, numbered in
  sorted order, and the children of a node are a contiguous run of the nodes
  one level down (a CSR layout, no per-node objects);
* the leaves are the distinct identifiers, and the items of leaf ``j`` are the
  contiguous rows ``leaf_ptr[j]:leaf_ptr[j + 1]``: identifiers may collide;
* the leaves under any node are a contiguous run too (:meth:`Trie.leaf_range`).

A :class:`Trie` is an immutable value: :meth:`insert` and :meth:`remove`
return a new trie. A search that holds a trie therefore never sees a
half-applied update (copy-on-write).

The decoder never sees the trie. Beam search asks one question per step,
through :meth:`Trie.children`: for a batch of depth-``m`` nodes, which codes
may come next and which node each leads to. Small levels answer from a dense
``(nodes, L)`` table, the others from the CSR arrays; neither loops in Python
over beams or nodes, and neither costs more for a bigger trie.

Storage is compact: codes in the narrowest unsigned type (:func:`code_dtype`),
int64 ids, int32 offsets (int64 only past 2**31 items). On the CPU the lookup
tensors share memory with these arrays.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict

import numpy as np
import torch

# A level is answered from a dense (nodes, L) int32 table when it has at most
# this many entries (1 MiB); bigger levels use the CSR arrays, which answer as
# fast for a batch of beams and cost no memory beyond the trie itself.
DENSE_TABLE_LIMIT = 1 << 18


def code_dtype(codebook_size: int) -> np.dtype:
    """The narrowest unsigned integer dtype that holds codes below ``codebook_size``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if codebook_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"codebook_size={codebook_size} is too large")


def offset_dtype(n: int) -> np.dtype:
    """int32 for offsets into ``n`` rows while they fit, else int64."""
    return np.dtype(np.int32 if n < np.iinfo(np.int32).max else np.int64)


class Trie:
    """Prefix tree of M-code identifiers whose leaves hold lists of item ids."""

    def __init__(self, codes: np.ndarray, ids: np.ndarray, codebook_size: int) -> None:
        """Build from ``codes`` (n, M) and unique ``ids`` (n,). See :meth:`empty`."""
        codes = np.asarray(codes)
        ids = np.asarray(ids)
        if codes.ndim != 2 or codes.shape[1] < 1:
            raise ValueError(f"codes must have shape (n, M) with M >= 1, got {codes.shape}")
        if ids.shape != (codes.shape[0],):
            raise ValueError(f"ids must have shape ({codes.shape[0]},), got {ids.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
            raise ValueError(f"codes must lie in [0, {codebook_size})")
        ids = ids.astype(np.int64, copy=False)
        order = _sort_order(codes, ids, codebook_size)
        ids = ids[order]
        if ids.size > 1 and _has_duplicates(ids):
            raise ValueError("ids must be unique")
        self.codebook_size = int(codebook_size)
        self.codes = np.ascontiguousarray(codes[order], dtype=code_dtype(codebook_size))
        self.ids = np.ascontiguousarray(ids)
        self._build_levels()
        self._tables: dict[torch.device, _DeviceTables] = {}
        self._tables_lock = threading.Lock()

    @classmethod
    def empty(cls, num_codebooks: int, codebook_size: int) -> Trie:
        return cls(np.zeros((0, num_codebooks), np.int64), np.zeros(0, np.int64), codebook_size)

    # ------------------------------------------------------------------ shape
    @property
    def num_codebooks(self) -> int:
        return self.codes.shape[1]

    @property
    def num_leaves(self) -> int:
        return len(self.leaf_ptr) - 1

    def __len__(self) -> int:
        return len(self.ids)

    def num_nodes(self, depth: int) -> int:
        """Number of distinct prefixes of length ``depth`` (1 root at depth 0)."""
        return len(self.child_ptr[depth]) - 1 if depth < self.num_codebooks else self.num_leaves

    # ---------------------------------------------------------------- updates
    def insert(self, codes: np.ndarray, ids: np.ndarray) -> Trie:
        """A new trie holding these items too. ``ids`` must all be new."""
        ids, codes = np.asarray(ids, dtype=np.int64), np.asarray(codes)
        if codes.shape != (len(ids), self.num_codebooks) or codes.dtype.kind not in "iu":
            raise ValueError(f"codes must be integers of shape ({len(ids)}, "
                             f"{self.num_codebooks}), got {codes.dtype} {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        present = self.contains(ids)
        if present.any():
            raise ValueError(f"ids already present: {ids[present][:10].tolist()}")
        return Trie(np.concatenate([self.codes, codes.astype(self.codes.dtype)]),
                    np.concatenate([self.ids, ids]), self.codebook_size)

    def remove(self, ids: np.ndarray) -> Trie:
        """A new trie without the given ids; ids not present are ignored."""
        keep = ~np.isin(self.ids, np.asarray(ids, dtype=np.int64))
        if keep.all():
            return self
        return Trie(self.codes[keep], self.ids[keep], self.codebook_size)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are in the trie."""
        return np.isin(np.asarray(ids, dtype=np.int64), self.ids)

    # ---------------------------------------------------------------- queries
    def children(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """Child node index for every next code, ``-1`` where a code is not allowed.

        ``nodes`` holds node indices at ``depth`` (0 <= depth < M), or ``-1`` for
        no node (which has no children), any shape; the result (int32, int64 past
        2**31 nodes) has that shape plus a trailing axis of size L.
        """
        tables = self.tables(nodes.device)
        flat = nodes.reshape(-1)
        dense = tables.dense[depth]
        if dense is not None:
            out = dense[flat]  # row -1 is the table's last row: no children
        else:
            out = _csr_children(tables.child_ptr[depth], tables.child_code[depth + 1],
                                flat, self.codebook_size)
        return out.reshape(*nodes.shape, self.codebook_size)

    def child_list(self, depth: int, nodes: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The children of ``nodes`` (n,) at ``depth`` as one flat list, node after node
        in code order: ``(row, code, child)`` (int64), the position in ``nodes`` each
        belongs to, its code and its node one level down. Node -1 has none. What
        :meth:`children` holds, without the (n, L) table of the codes not allowed."""
        tables = self.tables(nodes.device)
        row, child = _expand(tables.child_ptr[depth], nodes)
        return row, tables.child_code[depth + 1][child].long(), child

    def child_counts(self, depth: int, nodes: torch.Tensor) -> torch.Tensor:
        """(n,) int64: how many children each of ``nodes`` (n,) at ``depth`` has (-1: 0)."""
        ptr = self.tables(nodes.device).child_ptr[depth]
        return (ptr[nodes + 1].long() - ptr[nodes].long()).clamp(min=0)

    def leaf_range(self, depth: int, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(first, count)`` (int64): the leaves under each depth-``depth`` node."""
        tables = self.tables(nodes.device)
        first, end = nodes, nodes + 1
        for level in range(depth, self.num_codebooks):
            ptr = tables.child_ptr[level]
            first, end = ptr[first], ptr[end]
        return first.long(), (end - first).long()

    def leaf_items(self, leaves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(start, count)`` (int64): the rows of :attr:`ids` that each leaf holds."""
        tables = self.tables(leaves.device)
        start = tables.leaf_ptr[leaves].long()
        return start, tables.leaf_ptr[leaves + 1].long() - start

    def codes_of(self, ids: np.ndarray) -> np.ndarray:
        """The identifiers (n, M) of ``ids`` (all present)."""
        order = np.argsort(self.ids, kind="stable")
        return self.codes[order[np.searchsorted(self.ids[order], ids)]]

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """Leaf index of each identifier in ``codes`` (n, M), ``-1`` if absent."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1, self.num_codebooks)
        codes = torch.as_tensor(codes)
        nodes = torch.zeros(len(codes), dtype=torch.long)
        for depth in range(self.num_codebooks):
            _, nodes = self._descend(depth, nodes, codes[:, depth])
        return nodes.numpy()

    def allowed(self, codes: torch.Tensor) -> torch.Tensor:
        """(n, M, L) bool: the codes allowed after every prefix of ``codes`` (n, M).

        Row ``i``, level ``m`` marks the codes that follow ``codes[i, :m]`` in
        the trie: what beam search chooses among at that step. Every identifier
        in ``codes`` must be in the trie.
        """
        nodes = torch.zeros(len(codes), dtype=torch.long, device=codes.device)
        masks = []
        for depth in range(self.num_codebooks):
            child, nodes = self._descend(depth, nodes, codes[:, depth])
            masks.append(child >= 0)
        if (nodes < 0).any():
            raise ValueError("codes: an identifier is not in the trie")
        return torch.stack(masks, dim=1)

    def _descend(self, depth: int, nodes: torch.Tensor,
                 code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step down from depth-``depth`` ``nodes`` (n,) along ``code`` (n,): their
        children (n, L) and the node each code leads to (-1: none, or a code outside
        [0, L))."""
        child = self.children(depth, nodes)
        step = child.gather(1, code.clamp(0, self.codebook_size - 1)[:, None])[:, 0].long()
        return child, torch.where((code >= 0) & (code < self.codebook_size), step, -1)

    def tables(self, device: torch.device | str) -> _DeviceTables:
        """The lookup arrays as tensors on ``device``, built once and cached."""
        device = torch.device(device)
        with self._tables_lock:
            if device not in self._tables:
                self._tables[device] = _DeviceTables(self, device)
            return self._tables[device]

    def nbytes(self) -> int:
        """Bytes held by the trie: its arrays and the dense tables built so far."""
        arrays = [self.codes, self.ids, self.leaf_ptr, *self.child_ptr, *self.child_code]
        with self._tables_lock:
            extra = sum(tables.extra_bytes for tables in self._tables.values())
        return int(sum(a.nbytes for a in arrays)) + extra

    # ---------------------------------------------------------------- private
    def _build_levels(self) -> None:
        """Derive the per-depth node arrays from the sorted code table."""
        n, m = self.codes.shape
        offsets, codes = offset_dtype(n + 1), self.codes
        # first column at which row i differs from row i - 1 (m: the same identifier)
        first_diff = np.full(max(n - 1, 0), m, np.int8 if m < 127 else np.int64)
        for depth in range(m - 1, -1, -1):
            first_diff[codes[1:, depth] != codes[:-1, depth]] = depth
        # child_code[m][j]: last code of depth-m node j; child_ptr[m]: CSR of its children
        self.child_code: list[np.ndarray] = [np.zeros(min(n, 1), codes.dtype)]
        self.child_ptr: list[np.ndarray] = []
        if not n:  # the root alone, without children
            self.child_ptr = [np.zeros(1 + (depth == 0), offsets) for depth in range(m)]
            self.child_code += [np.zeros(0, codes.dtype) for _ in range(m)]
            self.leaf_ptr = np.zeros(1, offsets)
            return
        starts = np.zeros(1, np.int64)  # first row of each node of the current depth
        for depth in range(1, m + 1):
            is_new = np.ones(n, bool)
            is_new[1:] = first_diff < depth
            new_starts = np.flatnonzero(is_new)
            # a node's children begin at the first deeper node starting at its row
            ptr = np.searchsorted(new_starts, starts)
            self.child_ptr.append(np.append(ptr, len(new_starts)).astype(offsets))
            self.child_code.append(np.ascontiguousarray(codes[new_starts, depth - 1]))
            starts = new_starts
        self.leaf_ptr = np.append(starts, n).astype(offsets)


class _DeviceTables:
    """The trie's lookup arrays as tensors on one device (zero-copy on the CPU)."""

    def __init__(self, trie: Trie, device: torch.device) -> None:
        def tensor(array: np.ndarray) -> torch.Tensor:
            if array.dtype not in (np.uint8, np.int32, np.int64):
                array = array.astype(np.int64)
            if not array.flags.writeable:  # torch wants writable memory; nobody writes it
                array = array.copy()
            return torch.from_numpy(np.ascontiguousarray(array)).to(device)

        size = trie.codebook_size  # L
        self.ids = tensor(trie.ids)
        self.leaf_ptr = tensor(trie.leaf_ptr)
        self.child_ptr = [tensor(p) for p in trie.child_ptr]
        self.child_code = [tensor(c) for c in trie.child_code]
        self.dense: list[torch.Tensor | None] = []
        for depth, ptr in enumerate(trie.child_ptr):
            num_parents = len(ptr) - 1
            if num_parents * size > DENSE_TABLE_LIMIT:
                self.dense.append(None)
                continue
            # one row per node, and a last row of -1 that node -1 (no node) reads
            parents = torch.arange(-1, num_parents, device=device).roll(-1)
            self.dense.append(_csr_children(self.child_ptr[depth], self.child_code[depth + 1],
                                            parents, size))
        self.extra_bytes = sum(t.numel() * t.element_size() for t in self.dense if t is not None)
        if device.type != "cpu":
            self.extra_bytes += sum(t.numel() * t.element_size() for t in
                                    [self.ids, self.leaf_ptr, *self.child_ptr, *self.child_code])


def _csr_children(ptr: torch.Tensor, child_code: torch.Tensor, nodes: torch.Tensor,
                  size: int) -> torch.Tensor:
    """Scatter each node's run of children into a dense (len(nodes), size) row; node -1
    has none. Child indices have ``ptr``'s dtype (int32 below 2**31 nodes)."""
    out = torch.full((len(nodes), size), -1, dtype=ptr.dtype, device=nodes.device)
    row, child = _expand(ptr, nodes)
    out[row, child_code[child].long()] = child.to(out.dtype)
    return out


def _expand(ptr: torch.Tensor, nodes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(row, child)`` (int64): every child of ``nodes`` under the CSR offsets ``ptr``,
    node after node, and the position in ``nodes`` it comes from; node -1 has none."""
    empty = torch.zeros(0, dtype=torch.long, device=nodes.device)
    if len(ptr) < 2:  # no nodes at this depth
        return empty, empty
    start = ptr[nodes].long()
    counts = (ptr[nodes + 1].long() - start).clamp(min=0)  # node -1: ptr[0] - ptr[-1] <= 0
    total = int(counts.sum())
    if total == 0:
        return empty, empty
    row = torch.repeat_interleave(torch.arange(len(nodes), device=nodes.device), counts)
    child = torch.arange(total, device=nodes.device) + torch.repeat_interleave(
        start - (counts.cumsum(0) - counts), counts)
    return row, child


def _sort_order(codes: np.ndarray, ids: np.ndarray, codebook_size: int) -> np.ndarray:
    """Row order by code, then id: one packed key when the codes fit in 63 bits."""
    bits = max(int(codebook_size - 1).bit_length(), 1)
    if codes.shape[1] * bits > 63 or not len(codes):
        return np.lexsort((ids, *codes.T[::-1]))
    key = np.zeros(len(codes), np.int64)
    for column in codes.T:
        key <<= bits
        key |= column.astype(np.int64)
    return np.lexsort((ids, key))


def _has_duplicates(sorted_by_code: np.ndarray) -> bool:
    ids = np.sort(sorted_by_code)
    return bool((ids[1:] == ids[:-1]).any())


class FilterCache:
    """Tries restricted to the allowed ids of a search filter, the last few kept.

    An entry holds its source trie weakly: once an update replaces that trie,
    the entry is dropped at the next filtered search.
    """

    def __init__(self, size: int = 4) -> None:
        self._entries: OrderedDict[tuple, tuple[weakref.ref, Trie]] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def restrict(self, trie: Trie, allowed: np.ndarray) -> Trie:
        """``trie`` without the items whose ids are not in ``allowed`` (sorted ids)."""
        key = (id(trie), len(allowed), hashlib.sha256(allowed.tobytes()).digest())
        with self._lock:
            for stale in [k for k, (source, _) in self._entries.items() if source() is None]:
                del self._entries[stale]
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is trie:
                self._entries.move_to_end(key)
                return hit[1]
        restricted = trie.remove(trie.ids[~np.isin(trie.ids, allowed)])
        with self._lock:
            self._entries[key] = (weakref.ref(trie), restricted)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return restricted
