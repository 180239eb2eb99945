"""Training pairs: for an item, the item whose identifier the decoder should write for it.

The decoder is trained on pairs ``(x_1, x_2)`` (paper section 3.2): it reads
``x_1`` and writes the identifier of ``x_2``. With labels, ``x_2`` is a random
other item of ``x_1``'s class, as in the paper. Without labels, one of
``x_1``'s ``neighbors`` nearest neighbours by L2 distance: mined exactly up to
:data:`EXACT_NEIGHBORS` items, above that through a Faiss IVF-Flat index
(about n^1.5 distances instead of n^2). Training draws a partner for every
item once per epoch; a refresh draws them for the items of each batch
(:meth:`Partners.sample` with ``rows``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from .kmeans import squared_distances

log = logging.getLogger(__name__)

DISTANCE_BLOCK = 1 << 25  # distances per block in the neighbour search (128 MiB)
EXACT_NEIGHBORS = 20_000  # items up to which neighbours are mined exactly (O(n^2))
NPROBE = 16  # lists the approximate neighbour search visits, of about sqrt(n)
SEARCH_BLOCK = 1 << 16  # rows per approximate search call (bounds the copies)


class Partners:
    """Draws partners for the rows of ``x`` (n, d): same class, or nearest neighbours."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None, neighbors: int) -> None:
        self.x, self.device = x, x.device
        self.k = min(neighbors, max(len(x) - 1, 1))
        self._knn: torch.Tensor | None = None  # every row's neighbours, once drawn for all
        self.labelled = labels is not None
        if labels is None:
            self.neighbors = Neighbors(x, self.k)
            return
        labels = self.labels = labels.to(self.device)
        self.order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        self.start = (counts.cumsum(0) - counts)[labels]
        self.count = counts[labels]
        rank = torch.empty_like(self.order)
        rank[self.order] = torch.arange(len(self.order), device=self.device)
        self.position = rank - self.start  # place of each item inside its class

    def sample(self, generator: torch.Generator,
               rows: torch.Tensor | None = None) -> torch.Tensor:
        """A partner row (on ``x``'s device) for each of ``rows`` (default: every row)."""
        if rows is not None:
            rows = rows.to(self.device)
        if not self.labelled:
            knn = self._all_neighbors() if rows is None else self.neighbors(rows)
            pick = torch.randint(knn.shape[1], (len(knn),), generator=generator)
            return knn[torch.arange(len(knn), device=self.device), pick.to(self.device)]
        count, start, position = self.count, self.start, self.position
        if rows is not None:
            count, start, position = count[rows], start[rows], position[rows]
        r = (torch.rand(len(count), generator=generator).to(self.device)
             * (count - 1).clamp(min=1)).long()
        r = r + ((r >= position) & (count > 1)).long()  # never the item itself, unless alone
        return self.order[start + r]

    def is_partner_code(self, rows: torch.Tensor, decoded: torch.Tensor,
                        codes: torch.Tensor) -> torch.Tensor:
        """Bool (len(rows),): whether ``decoded[i]`` (an identifier, (M,)) is the code
        (``codes`` (n, M)) of a possible partner of ``rows[i]`` or of the row itself."""
        rows = rows.to(self.device)
        both = torch.cat([codes.to(self.device), decoded.to(self.device)])
        _, ids = torch.unique(both, dim=0, return_inverse=True)  # one id per identifier
        item_id, decoded_id = ids[:len(codes)], ids[len(codes):]
        if self.labelled:  # any item of the row's class
            width = len(both)
            return torch.isin(self.labels[rows] * width + decoded_id,
                              self.labels * width + item_id)
        allowed = torch.cat([rows[:, None], self._all_neighbors()[rows]], dim=1)
        return (item_id[allowed] == decoded_id[:, None]).any(dim=1)

    def _all_neighbors(self) -> torch.Tensor:
        if self._knn is None:
            self._knn = self.neighbors(torch.arange(len(self.x), device=self.device))
        return self._knn


class Neighbors:
    """The ``k`` nearest other rows of ``x`` (n, d) to any of its rows: exact up to
    :data:`EXACT_NEIGHBORS` rows (or off the CPU, or without Faiss); above, through a
    Faiss IVF-Flat index of ``x`` built once (about sqrt(n) lists, :data:`NPROBE`
    visited; k-means seeded, so a build gives the same neighbours every time)."""

    def __init__(self, x: torch.Tensor, k: int) -> None:
        self.x, self.k = x, k
        large = len(x) > EXACT_NEIGHBORS and x.device.type == "cpu"
        self.ivf = _ivf_flat(x) if large else None

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """Indices (len(rows), k), never the row itself."""
        if self.ivf is None:
            return nearest_neighbors(self.x, rows, self.k)
        return torch.cat([self._approximate(rows[start:start + SEARCH_BLOCK])
                          for start in range(0, len(rows), SEARCH_BLOCK)])

    def _approximate(self, rows: torch.Tensor) -> torch.Tensor:
        queries = np.ascontiguousarray(self.x[rows].float().numpy(), dtype="float32")
        found = torch.from_numpy(self.ivf.search(queries, self.k + 1)[1])
        own = (found == rows[:, None]).to(torch.int8)  # the row itself, moved last
        out = found.gather(1, torch.argsort(own, dim=1, stable=True))[:, :self.k]
        short = (out < 0).any(dim=1)  # fewer than k found in the visited lists
        if short.any():
            out[short] = nearest_neighbors(self.x, rows[short], self.k)
        return out


def _ivf_flat(x: torch.Tensor):
    """A Faiss IVF-Flat index of ``x``, or None (with a warning) without Faiss."""
    try:
        import faiss
    except ImportError:
        log.warning("mining the neighbours of %d items exactly (O(n^2)): pip install "
                    "faiss-cpu for an approximate search", len(x))
        return None
    data = np.ascontiguousarray(x.float().numpy(), dtype="float32")
    lists = max(1, int(math.sqrt(len(data))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(data.shape[1]), data.shape[1], lists)
    index.cp.max_points_per_centroid = 64  # k-means on at most 64 points a list
    index.train(data)
    index.add(data)
    index.nprobe = min(NPROBE, lists)
    return index


def nearest_neighbors(x: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (len(rows), k) of the k nearest other rows of ``x`` to each of ``rows``
    (exact, in blocks of at most :data:`DISTANCE_BLOCK` distances)."""
    if len(x) == 1:
        return torch.zeros(len(rows), 1, dtype=torch.long, device=x.device)
    norms = (x * x).sum(1)
    block_rows = max(1, DISTANCE_BLOCK // len(x))
    out = []
    for start in range(0, len(rows), block_rows):
        chunk = rows[start:start + block_rows]
        d = squared_distances(x[chunk], x, norms)
        d[torch.arange(len(chunk), device=x.device), chunk] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)
