"""How many candidates the metric and semantic orders rank, chosen on a validation split.

    python benchmarks/studies/k_factor.py --dataset emoji [--k-factors 1,2,4,10]
    python benchmarks/studies/k_factor.py --dataset emoji --split val --order semantic \\
        --beam-sizes 100,300,1000 --k-factors 1,3,10

The reported queries are never read. With ``--split heldout`` (the default) one
database item of every class (at most 2,000, drawn with seed 0) becomes a
validation query, the rest the validation database; with ``--split val`` the
data set's own validation split is used (emoji: Apple queries against a
Twitter + Facebook database, as ``run.py --split val``). One GenerativeIndex is
built there (the data set's tuned config, as ``run.py``) and searched in the
generative order and in ``--order`` (metric: exact L2; semantic: f_cls cosine)
at each beam size and ``k_factor``: the generative top ``k * k_factor`` items
of that beam, re-ranked. Printed: precision@1, precision@3, MAP@100 against the
class labels, recall@10 against exact L2 search on the same features, the mean
number of candidates asked for (``k * k_factor``;
fewer where the beam's leaves hold fewer items), and queries/s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import metrics  # noqa: E402
from benchmarks.common import prepare, prepare_arguments, validation_split  # noqa: E402
from genindex import GenerativeIndex  # noqa: E402

K = 100  # results per query: MAP@100, as the tables


def row(name: str, ids: np.ndarray, seconds: float, exact: np.ndarray, db_labels, q_labels,
        candidates: float):
    hits = metrics.relevance(ids, db_labels, q_labels)
    relevant = metrics.relevant_counts(db_labels, q_labels)
    summary = metrics.summary(hits, relevant, (1, 3), (8,), (K,))
    recall = np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(ids, exact)])
    print(f"| {name} | {summary.precision[1]:.3f} | {summary.precision[3]:.3f} | "
          f"{summary.map[K]:.3f} | {recall:.3f} | {candidates:.0f} | "
          f"{len(ids) / seconds:.0f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    prepare_arguments(parser, "as run.py's --config (one file)")
    parser.add_argument("--split", dest="validation", choices=("heldout", "val"),
                        default="heldout", help="heldout: database items as queries; val: "
                        "the data set's validation split")
    parser.add_argument("--order", choices=("metric", "semantic"), default="metric")
    parser.add_argument("--beam-sizes", default="100",
                        help="comma-separated beam sizes (100: the index's default at k 100)")
    parser.add_argument("--k-factors", default="1,2,4,10")
    args = parser.parse_args(argv)
    heldout = args.validation == "heldout"
    args.split = "test" if heldout else "val"  # what prepare loads; heldout reads its database
    setup = prepare(args)
    db, db_labels, queries, q_labels = validation_split(setup, args.validation)
    print(f"{args.dataset} validation split ({'database items as queries' if heldout else 'val'}"
          f"): {len(db)} database items, {len(queries)} queries (the reported queries are "
          f"not read); config {setup.config_name}", flush=True)
    started = time.perf_counter()
    index = GenerativeIndex.fit(db, db_labels, setup.config, device=args.device,
                                progress=not args.quiet)
    print(f"built in {time.perf_counter() - started:.1f} s", flush=True)
    import faiss

    flat = faiss.IndexFlatL2(db.shape[1])
    flat.add(db)
    exact = flat.search(queries, 10)[1]
    print("\n| order | P@1 | P@3 | MAP@100 | recall@10 vs exact | candidates | queries/s |\n"
          "|---|---|---|---|---|---|---|")
    for beam in (int(b) for b in args.beam_sizes.split(",")):
        runs = [(f"generative, beam {beam}", {"order": "generative"}, K)] + [
            (f"{args.order}, beam {beam}, k_factor {f}",
             {"order": args.order, "k_factor": float(f)}, K * float(f))
            for f in args.k_factors.split(",")]
        for name, query, candidates in runs:
            start = time.perf_counter()
            ids = index.search(queries, K, beam_size=beam, **query).ids
            row(name, ids, time.perf_counter() - start, exact, db_labels, q_labels,
                min(candidates, len(db)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
