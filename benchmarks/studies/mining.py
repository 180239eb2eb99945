"""Neighbour mining for unlabelled training: exact search against the clustered search, one run.

    python benchmarks/studies/mining.py [--sizes 20000,100000] [--dim 256] [--neighbors 10]

Without labels, the decoder's training partners are each item's nearest
neighbours (``genindex.partners``). For each size, clustered vectors (a
deterministic mixture of Gaussians: 1,000 centres, unequal weights) are mined
both ways on the same data: the exact blocked search, O(n^2), and the clustered
search in matrix products that ``Neighbors`` runs above ``EXACT_NEIGHBORS``
items (``partners.clustered_knn``).
Printed: seconds of each, their ratio, and the approximate neighbours' recall
against the exact ones (the exact search is skipped above ``--exact-up-to``,
where it would take too long, and recall is then measured on 2,000 rows).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from genindex import partners  # noqa: E402
from genindex.partners import Neighbors, nearest_neighbors  # noqa: E402

SAMPLE = 2_000  # rows whose exact neighbours score recall when the full search is skipped


def clustered(n: int, d: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1_000, d)).astype(np.float32) * 2
    weights = rng.pareto(1.5, 1_000) + 1
    members = rng.choice(1_000, n, p=weights / weights.sum())
    return torch.from_numpy(centres[members] + rng.normal(size=(n, d)).astype(np.float32))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,100000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--neighbors", type=int, default=10)
    parser.add_argument("--exact-up-to", type=int, default=100_000)
    args = parser.parse_args(argv)
    k = args.neighbors
    print(f"{torch.get_num_threads()} threads, d {args.dim}, k {k}\n\n"
          "| items | exact s | clustered s | exact / clustered | recall@k |\n"
          "|---:|---:|---:|---:|---:|", flush=True)
    for n in (int(size) for size in args.sizes.split(",")):
        x, rows = clustered(n, args.dim), torch.arange(n)
        partners.EXACT_NEIGHBORS = 0  # the approximate path at every size
        start = time.perf_counter()
        found = Neighbors(x, k)(rows)
        approximate = time.perf_counter() - start
        full = n <= args.exact_up_to
        checked = rows if full else torch.from_numpy(
            np.random.default_rng(0).choice(n, SAMPLE, replace=False))
        start = time.perf_counter()
        exact = nearest_neighbors(x, checked, k)
        seconds = time.perf_counter() - start
        recall = np.mean([len(set(a.tolist()) & set(b.tolist())) / k
                          for a, b in zip(found[checked], exact)])
        exact_s = f"{seconds:.1f}" if full else f"({seconds:.1f} for {SAMPLE:,} rows)"
        ratio = f"{seconds / approximate:.1f}x" if full else "–"
        print(f"| {n:,} | {exact_s} | {approximate:.1f} | {ratio} | {recall:.3f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
