"""Seeded Lloyd k-means in torch, used to place and refit codebooks, and the one
squared-L2 distance matrix every nearest-point search here computes."""

from __future__ import annotations

import torch

# Like Faiss, fit on at most this many points per centroid (a random sample).
MAX_POINTS_PER_CENTROID = 256
_CHUNK = 1 << 16  # rows per distance block: bounds memory to _CHUNK * k floats


def squared_distances(a: torch.Tensor, b: torch.Tensor,
                      b_norms: torch.Tensor | None = None) -> torch.Tensor:
    """(len(a), len(b)) squared L2 distances ``|a|^2 - 2 a.b + |b|^2``; ``b_norms``
    is ``|b|^2`` when the caller already has it."""
    if b_norms is None:
        b_norms = (b * b).sum(1)
    return _shifted_distances(a, b, b_norms).add_((a * a).sum(1, keepdim=True))


def _shifted_distances(a: torch.Tensor, b: torch.Tensor, b_norms: torch.Tensor) -> torch.Tensor:
    """``|b|^2 - 2 a.b``: the squared distances less ``|a|^2``, which is the same along
    a row (so the nearest ``b`` of a row is the same), in one matrix product."""
    return torch.addmm(b_norms, a, b.T, alpha=-2)


def assign(x: torch.Tensor, centroids: torch.Tensor, dtype: torch.dtype | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(codes, distances)``: the nearest centroid of every row of ``x`` and the
    squared distance to it. ``dtype``: the precision of the distance product (None:
    that of ``x``); bfloat16 is faster where the CPU computes it natively, picks
    another centroid only where two are at almost the same distance, and gives the
    distance as rounded."""
    codes, dists = [], []
    c_norm = (centroids * centroids).sum(1)
    low = centroids if dtype is None else centroids.to(dtype)
    for chunk in x.split(_CHUNK):
        rows = chunk if dtype is None else chunk.to(dtype)
        dist, code = _shifted_distances(rows, low, c_norm.to(low.dtype)).min(dim=1)
        codes.append(code)
        dists.append(dist.to(x.dtype).add_((chunk * chunk).sum(1)).clamp_min(0))
    if not codes:
        return x.new_zeros(0, dtype=torch.long), x.new_zeros(0)
    return torch.cat(codes), torch.cat(dists)


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator,
           init: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``k`` centroids of the rows of ``x`` (n, d), n >= k.

    Initialised on ``init`` (k, d) when given (a warm start), else on k distinct
    random rows; an emptied cluster is re-seeded on the point that is currently
    worst served, so every centroid stays in use. It stops early at a fixed point
    (as Faiss does): when no point changes cluster, the further iterations would
    give the same centroids. ``dtype``: that of the assignments' distance products
    (:func:`assign`); the means are in ``x``'s.
    """
    n = len(x)
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    if n > k * MAX_POINTS_PER_CENTROID:
        x = x[torch.randperm(n, generator=generator)[:k * MAX_POINTS_PER_CENTROID].to(x.device)]
    centroids = (x[torch.randperm(len(x), generator=generator)[:k].to(x.device)].clone()
                 if init is None else init.detach().to(x.dtype).clone())
    previous = None  # the last iteration's codes, if it re-seeded no cluster
    for _ in range(iters):
        codes, dists = assign(x, centroids, dtype)
        if previous is not None and torch.equal(codes, previous):
            break  # the centroids are already the means of these clusters
        sums = torch.zeros_like(centroids).index_add_(0, codes, x)
        counts = torch.bincount(codes, minlength=k).to(x.dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        empty = torch.nonzero(~filled).flatten()
        if len(empty):
            worst = dists.topk(len(empty)).indices
            centroids[empty] = x[worst]
        previous = None if len(empty) else codes
    return centroids
