"""Seeded Lloyd k-means in torch, used to place and refit codebooks."""

from __future__ import annotations

import torch

# Like Faiss, fit on at most this many points per centroid (a random sample).
MAX_POINTS_PER_CENTROID = 256
_CHUNK = 1 << 16  # rows per distance block: bounds memory to _CHUNK * k floats


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every row of ``x`` and the squared distance to it."""
    labels, dists = [], []
    c_norm = (centroids * centroids).sum(1)
    for chunk in x.split(_CHUNK):
        d = (chunk * chunk).sum(1, keepdim=True) - 2 * chunk @ centroids.T + c_norm
        dist, label = d.min(dim=1)
        labels.append(label)
        dists.append(dist.clamp_min(0))
    if not labels:
        return x.new_zeros(0, dtype=torch.long), x.new_zeros(0)
    return torch.cat(labels), torch.cat(dists)


def kmeans(x: torch.Tensor, k: int, iters: int, generator: torch.Generator) -> torch.Tensor:
    """``k`` centroids of the rows of ``x`` (n, d), n >= k.

    Initialised on k distinct random rows; an emptied cluster is re-seeded on
    the point that is currently worst served, so every centroid stays in use.
    """
    n = len(x)
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    if n > k * MAX_POINTS_PER_CENTROID:
        x = x[torch.randperm(n, generator=generator)[:k * MAX_POINTS_PER_CENTROID].to(x.device)]
    centroids = x[torch.randperm(len(x), generator=generator)[:k].to(x.device)].clone()
    for _ in range(iters):
        labels, dists = assign(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        empty = torch.nonzero(~filled).flatten()
        if len(empty):
            worst = dists.topk(len(empty)).indices
            centroids[empty] = x[worst]
    return centroids
