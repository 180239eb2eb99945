"""Synthetic check of the core engine against exact linear scan.

500 classes x 10 items in 64 dimensions: each class is a Gaussian around its
own centre, noise chosen so that exact linear scan gets precision@1 between
0.6 and 0.9. 8 items per class form the database, the other 2 are held-out
queries. A default-config GenerativeIndex is trained on the database (with its
labels) and both methods answer the same queries.

    python benchmarks/studies/synthetic.py [--threads 2] [--seed 0] [--device cpu] [--config C.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.metrics import precision_at_k, recall_at_k, relevance  # noqa: E402
from genindex import GenerativeIndex, IndexConfig  # noqa: E402

NUM_CLASSES, PER_CLASS, DB_PER_CLASS, DIM, NOISE = 500, 10, 8, 64, 1.2


def make_data(seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((NUM_CLASSES, DIM)).astype(np.float32)
    noise = rng.standard_normal((NUM_CLASSES, PER_CLASS, DIM)).astype(np.float32)
    x = centres[:, None, :] + NOISE * noise
    labels = np.repeat(np.arange(NUM_CLASSES), PER_CLASS).reshape(NUM_CLASSES, PER_CLASS)
    db, queries = x[:, :DB_PER_CLASS].reshape(-1, DIM), x[:, DB_PER_CLASS:].reshape(-1, DIM)
    return (np.ascontiguousarray(db), labels[:, :DB_PER_CLASS].reshape(-1),
            np.ascontiguousarray(queries), labels[:, DB_PER_CLASS:].reshape(-1))


def linear_scan(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact L2 k-nearest neighbours (ids = database rows)."""
    d = (queries ** 2).sum(1)[:, None] - 2 * queries @ db.T + (db ** 2).sum(1)[None]
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, ...")
    parser.add_argument("--config", type=Path, help="IndexConfig as JSON (default: defaults)")
    parser.add_argument("--no-labels", action="store_true",
                        help="train without labels (neighbours stand in for classes)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    db, db_labels, queries, query_labels = make_data(args.seed)
    k = DB_PER_CLASS

    start = time.perf_counter()
    scan_ids = linear_scan(db, queries, k)
    scan_seconds = time.perf_counter() - start

    start = time.perf_counter()
    config = IndexConfig.from_json(args.config.read_text()) if args.config else IndexConfig()
    index = GenerativeIndex.fit(db, None if args.no_labels else db_labels, config,
                                device=args.device, progress=not args.quiet)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    _, gen_ids = index.search(queries, k, order="generative")  # what docs/benchmarks.md measured
    search_seconds = time.perf_counter() - start

    rows = [("linear scan (exact L2)", scan_ids, 0.0, scan_seconds),
            ("GenerativeIndex", gen_ids, train_seconds, search_seconds)]
    print(f"synthetic: {NUM_CLASSES} classes, {len(db)} database items, {len(queries)} "
          f"queries, d={DIM}, noise={NOISE}, threads={args.threads}, device={args.device}"
          f"{', no labels' if args.no_labels else ''}")
    print(f"{'method':24s} {'P@1':>6s} {'P@8':>6s} {'R@8':>6s} {'train s':>8s} {'search s':>9s}")
    results = {}
    for name, ids, train_s, search_s in rows:
        hits = relevance(ids, db_labels, query_labels)
        results[name] = (precision_at_k(hits, 1), precision_at_k(hits, k))
        print(f"{name:24s} {results[name][0]:6.3f} {results[name][1]:6.3f} "
              f"{recall_at_k(hits, k):6.3f} {train_s:8.1f} {search_s:9.2f}")
    (scan_p1, scan_p8), (gen_p1, gen_p8) = results.values()
    checks = [("linear scan P@1 in [0.6, 0.9]", 0.6 <= scan_p1 <= 0.9),
              ("GenerativeIndex P@1 >= linear scan P@1 - 0.05", gen_p1 >= scan_p1 - 0.05),
              ("GenerativeIndex P@8 >= linear scan P@8", gen_p8 >= scan_p8),
              ("training took under 5 minutes", train_seconds < 300)]
    for name, ok in checks:
        print(f"[{'ok' if ok else 'FAIL'}] {name}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
