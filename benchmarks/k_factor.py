"""The metric order's candidates (``k_factor``), chosen on a validation split.

    python benchmarks/k_factor.py --dataset emoji [--k-factors 1,2,4,10]

The reported queries are never read: one database item of every class (at
most 2,000, drawn with seed 0) becomes a validation query, the rest the
validation database. One GenerativeIndex is built there (the data set's tuned
config, as ``run.py``) and searched in the generative order and in the metric
order at each ``k_factor``: the generative top ``k * k_factor`` items ranked by
exact L2 distance. Printed: precision@1, MAP@100 against the class labels,
recall@10 against exact L2 search on the same features, and queries/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import datasets, metrics  # noqa: E402
from benchmarks.run import prepare, prepare_arguments  # noqa: E402
from genindex import GenerativeIndex  # noqa: E402

K = 100  # results per query: MAP@100, as the tables


def row(name: str, ids: np.ndarray, seconds: float, exact: np.ndarray, db_labels, q_labels):
    hits = metrics.relevance(ids, db_labels, q_labels)
    relevant = metrics.relevant_counts(db_labels, q_labels)
    summary = metrics.summary(hits, relevant, (1,), (8,), (K,))
    recall = np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(ids, exact)])
    print(f"| {name} | {summary.precision[1]:.3f} | {summary.map[K]:.3f} | {recall:.3f} | "
          f"{len(ids) / seconds:.0f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    prepare_arguments(parser, "as run.py's --config (one file)")
    parser.add_argument("--k-factors", default="1,2,4,10")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    setup = prepare(args)
    labels = np.asarray(setup.data.db_labels)
    q_rows = datasets.held_out_rows(labels)
    db_rows = np.setdiff1d(np.arange(len(labels)), q_rows)
    db, queries = setup.db[db_rows], setup.db[q_rows]
    print(f"{args.dataset} validation split: {len(db)} database items, {len(queries)} "
          f"queries (from the database; the reported queries are not read); "
          f"config {setup.config_name}", flush=True)
    started = time.perf_counter()
    index = GenerativeIndex.fit(db, labels[db_rows], setup.config, device=args.device,
                                progress=not args.quiet)
    print(f"built in {time.perf_counter() - started:.1f} s", flush=True)
    import faiss

    flat = faiss.IndexFlatL2(db.shape[1])
    flat.add(db)
    exact = flat.search(queries, 10)[1]
    print("\n| order | P@1 | MAP@100 | recall@10 vs exact | queries/s |\n|---|---|---|---|---|")
    runs = [("generative", {"order": "generative"})] + [
        (f"metric, k_factor {f}", {"order": "metric", "k_factor": float(f)})
        for f in args.k_factors.split(",")]
    for name, query in runs:
        start = time.perf_counter()
        ids = index.search(queries, K, **query).ids
        row(name, ids, time.perf_counter() - start, exact, labels[db_rows], labels[q_rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
