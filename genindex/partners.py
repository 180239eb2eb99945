"""Training pairs: for an item, the item whose identifier the decoder should write for it.

The decoder is trained on pairs ``(x_1, x_2)`` (paper section 3.2): it reads
``x_1`` and writes the identifier of ``x_2``. With labels, ``x_2`` is a random
other item of ``x_1``'s class, as in the paper. Without labels, one of
``x_1``'s ``neighbors`` nearest neighbours by L2 distance: mined exactly up to
:data:`EXACT_NEIGHBORS` items, above that by a clustered search in matrix
products (:func:`clustered_knn`: about ``NPROBE`` n^1.5 distances instead of
n^2). With ``ranking`` (``DecoderConfig.targets="f_cls"``: the tokenizer's
f_cls of every item), the partner is one of the item's ``neighbors`` nearest
other items by cosine of f_cls, drawn with probability softmax(cosine /
temperature): the embedding's ranking distilled into the decoder, labels or
not. Training draws a partner for every item once per epoch; a refresh draws
them for the items of each batch (:meth:`Partners.sample` with ``rows``).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .kmeans import assign, kmeans, squared_distances

DISTANCE_BLOCK = 1 << 25  # distances per block in the neighbour search (128 MiB)
EXACT_NEIGHBORS = 20_000  # items up to which neighbours are mined exactly (O(n^2))
NPROBE = 8  # lists each list's rows are searched in, of about sqrt(n) (its own included)
CENTROID_SAMPLE = 64  # rows per list the lists' k-means is fit on
KMEANS_ITERS = 10


class Partners:
    """Draws partners for the rows of ``x`` (n, d): same class, or nearest neighbours
    (of ``x``, or of ``ranking`` (n, D), L2-normalised rows, weighted by cosine)."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None, neighbors: int,
                 progress: bool = False, ranking: torch.Tensor | None = None,
                 temperature: float = 0.05) -> None:
        self.x, self.device = x, x.device
        self.k = min(neighbors, max(len(x) - 1, 1))
        self._knn: torch.Tensor | None = None  # every row's neighbours, once drawn for all
        self.weights: torch.Tensor | None = None  # (n, k) partner odds, with a ranking
        self.labelled = labels is not None and ranking is None
        if ranking is not None:
            ranking = torch.nn.functional.normalize(ranking.to(self.device), dim=1)
            self.neighbors = Neighbors(ranking, self.k, progress)
            self._knn = self.neighbors(torch.arange(len(x), device=self.device))
            cosine = torch.cat([torch.einsum("nd,nkd->nk", ranking[rows], ranking[knn])
                                for rows, knn in zip(
                                    torch.arange(len(x), device=self.device).split(4096),
                                    self._knn.split(4096))])  # (n, k) in blocks of rows
            self.weights = torch.softmax(cosine / temperature, dim=1)
            return
        if labels is None:
            self.neighbors = Neighbors(x, self.k, progress)
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
        if self.weights is not None:
            knn, odds = (self._knn, self.weights) if rows is None else \
                (self._knn[rows], self.weights[rows])
            pick = torch.multinomial(odds.cpu(), 1, generator=generator)[:, 0]
            return knn[torch.arange(len(knn), device=self.device), pick.to(self.device)]
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
    :data:`EXACT_NEIGHBORS` rows, above that by a clustered search (:func:`clustered_knn`)
    of every row at once, seeded, so a build gives the same neighbours every time."""

    def __init__(self, x: torch.Tensor, k: int, progress: bool = False) -> None:
        self.x, self.k = x, k
        self.knn = clustered_knn(x, k, progress=progress) if len(x) > EXACT_NEIGHBORS else None

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        """Indices (len(rows), k), never the row itself."""
        if self.knn is None:
            return nearest_neighbors(self.x, rows, self.k)
        return self.knn[rows.to(self.knn.device)]


def clustered_knn(x: torch.Tensor, k: int, seed: int = 0, progress: bool = False
                  ) -> torch.Tensor:
    """Approximate ``k`` nearest other rows (n, k) of every row of ``x``, in matrix products.

    The rows are cut into about sqrt(n) k-means lists; each list is searched
    exactly against the rows of the :data:`NPROBE` lists whose centroids are
    nearest its own (its own included): about ``NPROBE / sqrt(n)`` of an exact
    search's distances, computed as one blocked matrix product per list. A row
    whose visited lists hold fewer than ``k`` other rows is searched exactly.
    """
    generator = torch.Generator().manual_seed(seed)
    lists = max(1, int(math.sqrt(len(x))))
    sample = torch.randperm(len(x), generator=generator)[:lists * CENTROID_SAMPLE]
    centroids = kmeans(x[sample.to(x.device)], lists, KMEANS_ITERS, generator)
    owner, _ = assign(x, centroids)
    probe = squared_distances(centroids, centroids).topk(min(NPROBE + 1, lists), dim=1,
                                                         largest=False).indices
    order = torch.argsort(owner, stable=True)
    counts = torch.bincount(owner, minlength=lists)
    start = counts.cumsum(0) - counts
    members = [order[s:s + c] for s, c in zip(start.tolist(), counts.tolist())]
    out = torch.empty(len(x), k, dtype=torch.long, device=x.device)
    for i in tqdm(range(lists), desc="mine neighbours", unit="list", leave=False,
                  disable=not progress):
        if len(members[i]):
            near = [i] + [j for j in probe[i].tolist() if j != i][:NPROBE - 1]
            out[members[i]] = _search_list(x, torch.cat([members[j] for j in near]),
                                           len(members[i]), k)
    return out


def _search_list(x: torch.Tensor, candidates: torch.Tensor, rows: int,
                 k: int) -> torch.Tensor:
    """The ``k`` nearest other ``candidates`` to each of the first ``rows`` of them."""
    if len(candidates) <= k:  # too few others visited
        return nearest_neighbors(x, candidates[:rows], k)
    y = x[candidates]
    norms = (y * y).sum(1)
    found = []
    for chunk in torch.arange(rows, device=x.device).split(
            max(1, DISTANCE_BLOCK // len(candidates))):
        d = squared_distances(y[chunk], y, norms)
        d[torch.arange(len(chunk), device=x.device), chunk] = float("inf")
        found.append(candidates[d.topk(k, dim=1, largest=False).indices])
    return torch.cat(found)


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
